"""``securefl audit``: one training run with canaries, an ε lower bound beside the accountant's ε.

Thin: flags become an :class:`~securefl.audit.run.AuditConfig` (validated before any work), the
library runs the audit and writes the files, this module draws the progress bar and the table.
"""

from __future__ import annotations

import datetime as dt
import math
import warnings
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from securefl.audit import AuditConfig, AuditResult, Break, run_audit
from securefl.audit.report import FIGURE_FILE, write_audit
from securefl.cli.progress import round_progress
from securefl.config import RunConfig
from securefl.errors import ConfigError
from securefl.fl.history import check_output_dir
from securefl.fl.record import RoundRecord

Opt = typer.Option


def audit(
    dp: Annotated[bool, Opt("--dp", help="Audit sample-level DP-SGD: canary examples in client 0.")] = False,
    central_dp: Annotated[
        bool, Opt("--central-dp", help="Audit user-level DP-FedAvg: canary clients.")
    ] = False,
    weakness: Annotated[
        str | None, Opt("--break", help="Research: weaken the mechanism: noise | clip | sample-rate.")
    ] = None,
    break_factor: Annotated[
        float | None, Opt(help="--break noise / sample-rate: the factor in (0, 1) applied. (default 0.1)")
    ] = None,
    canaries: Annotated[int, Opt(help="Canaries m, each included with probability 1/2.")] = 1000,
    confidence: Annotated[float, Opt(help="Confidence 1-β of the lower bound.")] = 0.95,
    canary_scale: Annotated[float, Opt(help="Crafted canary norm before clipping, in clip norms.")] = 10.0,
    full_batch: Annotated[
        bool, Opt("--full-batch", help="One Poisson batch of rate 1 per local epoch (needs --clients 1).")
    ] = False,
    black_box: Annotated[
        bool, Opt("--black-box", help="Mislabelled examples scored by the final model's loss (weaker).")
    ] = False,
    dataset: Annotated[str, Opt(help="Data set (see `securefl datasets`).")] = "digits",
    model: Annotated[str, Opt(help="cnn | resnet18 | mlp (lenet is the attacks' model).")] = "mlp",
    clients: Annotated[int, Opt(help="Real clients N (central DP adds m canary clients).")] = 1,
    clients_per_round: Annotated[
        int | None, Opt(help="Real clients sampled per round. (default all)")
    ] = None,
    rounds: Annotated[int, Opt(help="Rounds R.")] = 5,
    local_epochs: Annotated[int, Opt(help="Local epochs E.")] = 1,
    batch_size: Annotated[int, Opt(help="Local (expected) batch size B.")] = 64,
    lr: Annotated[float, Opt(help="Client learning rate.")] = 0.1,
    momentum: Annotated[float, Opt(help="Client SGD momentum.")] = 0.0,
    seed: Annotated[int, Opt(help="Seed of model, partition and client sampling (not of canaries).")] = 0,
    noise_multiplier: Annotated[float | None, Opt(help="DP-SGD noise multiplier. (default 1.0)")] = None,
    max_grad_norm: Annotated[float | None, Opt(help="DP-SGD per-sample clip norm. (default 1.0)")] = None,
    delta: Annotated[float | None, Opt(help="DP-SGD δ. (default 1e-5)")] = None,
    accountant: Annotated[str | None, Opt(help="rdp | prv | gdp. (default rdp)")] = None,
    target_epsilon: Annotated[float | None, Opt(help="DP-SGD: pick the noise to end at this ε.")] = None,
    central_noise_multiplier: Annotated[float | None, Opt(help="DP-FedAvg noise z. (default 1.0)")] = None,
    clip_norm: Annotated[float | None, Opt(help="DP-FedAvg client update clip. (default 1.0)")] = None,
    central_delta: Annotated[float | None, Opt(help="User-level δ, below 1/(N + m). (default 1e-5)")] = None,
    client_sampling: Annotated[str | None, Opt(help="poisson | fixed. (default poisson)")] = None,
    central_accountant: Annotated[
        str | None, Opt(help="User-level ε: rdp | prv | gdp. (default rdp)")
    ] = None,
    data_dir: Annotated[Path | None, Opt(help="Directory holding mnist / cifar10 files.")] = None,
    threads: Annotated[int, Opt(help="torch intra-op threads.")] = 1,
    out: Annotated[Path | None, Opt(help="Run directory. (default runs/audit-<timestamp>)")] = None,
    overwrite: Annotated[bool, Opt(help="Replace a non-empty --out directory.")] = False,
) -> None:
    """Audit a DP mode: one run with canaries, the empirical ε lower bound next to the accountant's ε."""
    flags: dict[str, Any] = {
        "dataset": dataset,
        "model": model,
        "clients": clients,
        "clients_per_round": clients_per_round,
        "rounds": rounds,
        "local_epochs": local_epochs,
        "batch_size": batch_size,
        "lr": lr,
        "momentum": momentum,
        "seed": seed,
        "threads": threads,
        "data_dir": None if data_dir is None else str(data_dir),
        # A mode's knobs given without the mode are refused (as `securefl train` does), not ignored.
        "dp": dp,
        "noise_multiplier": noise_multiplier,
        "max_grad_norm": max_grad_norm,
        "delta": delta,
        "accountant": accountant,
        "target_epsilon": target_epsilon,
        "central_dp": central_dp,
        "central_noise_multiplier": central_noise_multiplier,
        "clip_norm": clip_norm,
        "central_delta": central_delta,
        "client_sampling": client_sampling,
        "central_accountant": central_accountant,
    }
    run = RunConfig.from_mapping({k: v for k, v in flags.items() if v is not None})
    if weakness is None and break_factor is not None:
        raise ConfigError("`weakness.factor` given without `weakness`: set `weakness` or drop it")
    broken = None
    if weakness is not None:
        broken = Break(weakness) if break_factor is None else Break(weakness, break_factor)
    config = AuditConfig(
        run=run,
        canaries=canaries,
        confidence=confidence,
        weakness=broken,
        canary_scale=canary_scale,
        full_batch=full_batch,
        black_box=black_box,
    )
    out_dir = out or Path("runs") / dt.datetime.now().strftime("audit-%Y%m%d-%H%M%S")
    check_output_dir(out_dir, overwrite=overwrite)
    console = Console()
    with warnings.catch_warnings():
        # Opacus' RDP notes that a larger order range could tighten *its* ε; irrelevant to a lower bound.
        warnings.filterwarnings("ignore", message="Optimal order", category=UserWarning)
        result = _run_with_progress(config, console)
    write_audit(result, out_dir, overwrite=overwrite)
    console.print(_summary(result))
    console.print(f"results written to [bold]{out_dir}[/] ({FIGURE_FILE}, audit.json)")


def _run_with_progress(config: AuditConfig, console: Console) -> AuditResult:
    with round_progress(console, rounds=config.run.rounds, status=_test_metric) as on_round:
        return run_audit(config, on_round=on_round)


def _test_metric(record: RoundRecord) -> str:
    evaluation = record.evaluation
    if evaluation is None:
        return ""
    metric = evaluation.accuracy if evaluation.accuracy is not None else evaluation.loss
    return f"test {metric:.4f}"


def _epsilon(value: float) -> str:
    return "∞ (no DP)" if not math.isfinite(value) else f"{value:.3g}"


def _summary(result: AuditResult) -> Table:
    config, outcome = result.config, result.outcome
    title = f"securefl audit: {config.mode}" + (
        f", break {config.weakness.variant}" if config.weakness is not None else ""
    )
    table = Table(title=title, show_header=False)
    table.add_column("", justify="left")
    table.add_column("", justify="right")
    if not math.isfinite(result.accountant_epsilon):
        verdict = "no DP, nothing claimed: the bound is what the run leaks, up to the ceiling"
    elif result.violation:
        verdict = (
            f"[bold red]bound > accountant ε: the guarantee is false ({config.confidence:.0%} confidence)[/]"
        )
    else:
        verdict = "no violation found (a bound below the claim does not prove the claim)"
    rows = [
        ("accountant ε", _epsilon(result.accountant_epsilon)),
        (f"ε lower bound ({config.confidence:.0%})", f"{outcome.epsilon:.3g}"),
        ("δ", f"{config.delta:g}"),
        ("canaries m (included)", f"{len(result.scores)} ({int(result.included.sum())})"),
        ("guesses r / correct v", f"{outcome.guesses} / {outcome.correct}"),
        ("ceiling for m canaries", f"{result.ceiling:.3g}"),
        ("rounds observed", str(result.rounds_observed)),
        ("seconds", f"{result.seconds:.1f}"),
        ("verdict", verdict),
    ]
    for row in rows:
        table.add_row(*row)
    return table
