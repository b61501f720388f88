"""``securefl attack`` and ``securefl attack compare``: gradient-inversion demos, rendered with rich.

Thin: flags become an :class:`~securefl.attacks.experiment.ExperimentConfig`, validated before any
work; the library runs the attack and writes the files; this module draws the progress bar and
the tables.
"""

from __future__ import annotations

import datetime as dt
import inspect
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import fields
from pathlib import Path
from typing import Annotated, Any

import torch
import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

from securefl.attacks.defences import DEFENCES, Defence
from securefl.attacks.experiment import (
    AttackOutcome,
    ExperimentConfig,
    ExperimentProgress,
    prepare,
    run_attack,
    run_comparison,
)
from securefl.attacks.inversion import AttackProgress
from securefl.attacks.malicious import (
    DEFAULT_BINS,
    MALICIOUS_ATTACKS,
    ClientDefences,
    MaliciousConfig,
    MaliciousOutcome,
    prepare_malicious,
    run_malicious,
    run_malicious_comparison,
)
from securefl.attacks.report import (
    write_comparison,
    write_malicious_comparison,
    write_malicious_outcome,
    write_outcome,
)
from securefl.config import THREADS_LIMIT
from securefl.errors import ConfigError
from securefl.fl.history import check_output_dir
from securefl.validation import require, require_at_least

Opt = typer.Option

attack_app = typer.Typer(
    help="Gradient inversion (DLG, iDLG, Inverting Gradients) against what the server observes.",
    no_args_is_help=False,
    add_completion=False,
    pretty_exceptions_enable=False,
)

AttackOpt = Annotated[
    str, Opt(help="dlg | idlg | ig; malicious server: imprint | inconsistency (secagg or none).")
]
DatasetOpt = Annotated[str, Opt(help="mnist-sample | images | cifar10 (needs --data-dir) | mnist.")]
ModelOpt = Annotated[str, Opt(help="lenet (sigmoid) | cnn | resnet18 | mlp; DLG/iDLG need lenet.")]
GradientModelOpt = Annotated[
    str | None,
    Opt(help="dlg/idlg/ig: lenet (sigmoid) | cnn | resnet18 | mlp; DLG/iDLG need lenet. (default lenet)"),
]
BatchOpt = Annotated[int, Opt(help="Images per client in the attacked round.")]
StepsOpt = Annotated[int, Opt(help="Local full-batch SGD steps (1 = FedSGD gradient).")]
LrOpt = Annotated[float, Opt("--lr", help="Client learning rate (public).")]
SeedOpt = Annotated[int, Opt(help="Seed of victims, server model and attack.")]
RestartsOpt = Annotated[int | None, Opt(help="Attack restarts. (default 8 for dlg/idlg, 2 for ig)")]
IterationsOpt = Annotated[
    int | None, Opt(help="Iterations per restart. (default 300 L-BFGS for dlg/idlg, 1000 Adam for ig)")
]
InitOpt = Annotated[
    str, Opt(help="Model the server sends: auto | uniform (DLG's U(-0.5, 0.5)) | default (PyTorch).")
]
DataDirOpt = Annotated[Path | None, Opt(help="Directory holding mnist / cifar10 files.")]
ThreadsOpt = Annotated[int, Opt(help="torch intra-op threads.")]
DeviceOpt = Annotated[
    str | None,
    Opt(help="dlg/idlg/ig: where the attacker optimises: auto | cpu | cuda. (default auto: cuda if any)"),
]
OverwriteOpt = Annotated[bool, Opt(help="Replace a non-empty --out directory.")]

_BACKTICKED = re.compile(r"`([A-Za-z_][A-Za-z0-9_]*)`")


@attack_app.callback(invoke_without_command=True)
def attack(
    ctx: typer.Context,
    attack: AttackOpt = "dlg",
    dataset: DatasetOpt = "mnist-sample",
    model: GradientModelOpt = None,
    batch_size: BatchOpt = 1,
    local_steps: Annotated[
        int | None, Opt(help="dlg/idlg/ig: local full-batch SGD steps (1 = FedSGD gradient). (default 1)")
    ] = None,
    lr: LrOpt = 0.1,
    defence: Annotated[str, Opt(help=f"{' | '.join(DEFENCES)}.")] = "none",
    noise_multiplier: Annotated[
        float | None, Opt(help="dp, distributed-dp: noise multiplier. (default 1.0)")
    ] = None,
    max_grad_norm: Annotated[
        float | None,
        Opt(help="dp: per-example clip; clip, distributed-dp: update L2 bound. (default 1.0)"),
    ] = None,
    clients: Annotated[
        int | None,
        Opt(help="secagg, distributed-dp: clients N summed, the victim among them. (default 16)"),
    ] = None,
    prune_ratio: Annotated[
        float | None, Opt(help="prune: fraction of each layer zeroed. (default 0.9)")
    ] = None,
    noise_std: Annotated[
        float | None, Opt(help="noise: Gaussian std added to the update. (default 0.01)")
    ] = None,
    images: Annotated[int | None, Opt(help="dlg/idlg/ig: victim images K attacked. (default 4)")] = None,
    seed: SeedOpt = 0,
    restarts: RestartsOpt = None,
    iterations: IterationsOpt = None,
    server_init: Annotated[
        str | None,
        Opt(
            help="dlg/idlg/ig: model the server sends: auto | uniform (DLG's U(-0.5, 0.5)) | default "
            "(PyTorch). (default auto)"
        ),
    ] = None,
    data_dir: DataDirOpt = None,
    threads: ThreadsOpt = 1,
    device: DeviceOpt = None,
    out: Annotated[Path | None, Opt(help="Output directory. (default runs/attack-<timestamp>)")] = None,
    overwrite: OverwriteOpt = False,
    placement: Annotated[
        str | None,
        Opt(
            help="imprint/inconsistency: front (block before the mlp) | mlp (its first layer). "
            "(default front)"
        ),
    ] = None,
    bins: Annotated[
        int | None,
        Opt(help=f"imprint/inconsistency: bins. (default {DEFAULT_BINS['front']} front, the mlp's 64)"),
    ] = None,
    trials: Annotated[
        int | None, Opt(help="imprint/inconsistency: attacked rounds, disjoint clients. (default 1)")
    ] = None,
    active_secagg: Annotated[
        bool | None,
        Opt(
            "--active-secagg/--passive-secagg",
            help="imprint/inconsistency: SecAgg in active-adversary mode (signatures). "
            "(default active with --consistency: in passive mode nothing authenticates the peers)",
        ),
    ] = None,
    consistency: Annotated[
        bool | None,
        Opt(
            "--consistency/--no-consistency",
            help="imprint/inconsistency: clients bind the model's hash into SecAgg.",
        ),
    ] = None,
    pinning: Annotated[
        bool | None,
        Opt(
            "--pinning/--no-pinning", help="imprint/inconsistency: clients refuse a model not the pinned mlp."
        ),
    ] = None,
    parameter_checks: Annotated[
        bool | None,
        Opt(
            "--parameter-checks/--no-parameter-checks",
            help="imprint/inconsistency: clients check the received weights on their own batch.",
        ),
    ] = None,
) -> None:
    """Attack K victim images and write reconstruction.png, metrics.json and arrays.npz."""
    if ctx.invoked_subcommand is not None:
        return
    if attack in MALICIOUS_ATTACKS:
        _refuse_flags(
            attack,
            {
                "--model": model,
                "--local-steps": local_steps,
                "--images": images,
                "--noise-multiplier": noise_multiplier,
                "--max-grad-norm": max_grad_norm,
                "--prune-ratio": prune_ratio,
                "--noise-std": noise_std,
                "--restarts": restarts,
                "--iterations": iterations,
                "--server-init": server_init,
                "--device": device,
            },
        )
        if defence not in ("secagg", "none"):
            raise ConfigError(f"--attack {attack} runs with --defence secagg or none, not {defence!r}")
        defences = ClientDefences(
            consistency=consistency is not False,
            pinning=pinning is not False,
            parameter_checks=parameter_checks is not False,
        )
        malicious = MaliciousConfig(
            attack=attack,
            dataset=dataset,
            placement=placement or "front",
            bins=bins,
            clients=clients if clients is not None else (16 if defence == "secagg" else 1),
            batch_size=batch_size,
            learning_rate=lr,
            trials=trials if trials is not None else 1,
            secagg=defence == "secagg",
            active=(
                active_secagg if active_secagg is not None else defence == "secagg" and defences.consistency
            ),
            defences=defences,
            seed=seed,
            data_dir=data_dir,
        )
        _execute(
            malicious,
            run_malicious,
            write_malicious_outcome,
            _malicious_table,
            out=out,
            name="attack",
            overwrite=overwrite,
            threads=threads,
            prepare_with=prepare_malicious,
            bar=_trials_bar,
        )
        return
    _refuse_flags(
        attack,
        {
            "--placement": placement,
            "--bins": bins,
            "--trials": trials,
            "--active-secagg/--passive-secagg": active_secagg,
            "--consistency/--no-consistency": consistency,
            "--pinning/--no-pinning": pinning,
            "--parameter-checks/--no-parameter-checks": parameter_checks,
        },
    )
    chosen = _defence(
        defence,
        {
            "--max-grad-norm": max_grad_norm,
            "--prune-ratio": prune_ratio,
            "--noise-std": noise_std,
            "--noise-multiplier": noise_multiplier,
            "--clients": clients,
        },
    )
    config = ExperimentConfig(
        attack=attack,
        dataset=dataset,
        model=model or "lenet",
        batch_size=batch_size,
        local_steps=local_steps if local_steps is not None else 1,
        learning_rate=lr,
        images=images if images is not None else 4,
        seed=seed,
        defence=chosen,
        restarts=restarts,
        iterations=iterations,
        server_init=server_init or "auto",
        data_dir=data_dir,
        device=device or "auto",
    )
    _execute(
        config,
        run_attack,
        write_outcome,
        _outcome_table,
        out=out,
        name="attack",
        overwrite=overwrite,
        threads=threads,
    )


@attack_app.command("compare")
def compare(
    attack: AttackOpt = "dlg",
    dataset: DatasetOpt = "mnist-sample",
    model: ModelOpt = "lenet",
    batch_size: BatchOpt = 1,
    local_steps: StepsOpt = 1,
    lr: LrOpt = 0.1,
    images: Annotated[int, Opt(help="Victim images K, the same for every defence.")] = 4,
    seed: SeedOpt = 0,
    restarts: Annotated[int, Opt(help="Attack restarts per round.")] = 2,
    iterations: IterationsOpt = None,
    server_init: InitOpt = "auto",
    data_dir: DataDirOpt = None,
    threads: ThreadsOpt = 1,
    device: DeviceOpt = None,
    out: Annotated[Path | None, Opt(help="Output directory. (default runs/compare-<timestamp>)")] = None,
    overwrite: OverwriteOpt = False,
    clients: Annotated[int, Opt(help="imprint/inconsistency: clients N under secure aggregation.")] = 16,
    bins: Annotated[int | None, Opt(help="imprint/inconsistency: bins of the front block.")] = None,
) -> None:
    """Run the same victims through every defence; write compare.png and compare.json.

    With ``--attack imprint|inconsistency``: the same target unprotected, under secure
    aggregation, and against each client-side defence."""
    if attack in MALICIOUS_ATTACKS:
        _refuse_flags(attack, {"--device": device})
        base = MaliciousConfig(
            attack=attack,
            dataset=dataset,
            bins=bins,
            clients=clients,
            batch_size=batch_size,
            learning_rate=lr,
            seed=seed,
            data_dir=data_dir,
        )
        _execute(
            base,
            run_malicious_comparison,
            write_malicious_comparison,
            _malicious_comparison_table,
            out=out,
            name="compare",
            overwrite=overwrite,
            threads=threads,
            prepare_with=prepare_malicious,
            bar=_trials_bar,
        )
        return
    config = ExperimentConfig(
        attack=attack,
        dataset=dataset,
        model=model,
        batch_size=batch_size,
        local_steps=local_steps,
        learning_rate=lr,
        images=images,
        seed=seed,
        restarts=restarts,
        iterations=iterations,
        server_init=server_init,
        data_dir=data_dir,
        device=device or "auto",
    )
    _execute(
        config,
        run_comparison,
        write_comparison,
        _comparison_table,
        out=out,
        name="compare",
        overwrite=overwrite,
        threads=threads,
    )


def _execute(
    config: Any,
    run: Callable[..., Any],
    write: Callable[[Any, Path], Any],
    table: Callable[[Any], Table],
    *,
    out: Path | None,
    name: str,
    overwrite: bool,
    threads: int,
    prepare_with: Callable[[Any], Any] = prepare,
    bar: Callable[[Console], Any] | None = None,
) -> None:
    """Validate everything, run with a progress bar, write the files, print the table."""
    out_dir = out or Path("runs") / dt.datetime.now().strftime(f"{name}-%Y%m%d-%H%M%S")
    try:
        require_at_least(threads, 1, "`threads`", "threads")  # the same checks as RunConfig's
        require(
            threads < THREADS_LIMIT, f"`threads` {threads} >= 2**31: use a `threads` below {THREADS_LIMIT}"
        )
        check_output_dir(out_dir, overwrite=overwrite)
        prepared = prepare_with(config)
    except ConfigError as error:  # the library names its parameters (`images`), here flags
        raise type(error)(render_attack(str(error))) from None
    torch.set_num_threads(threads)
    console = Console()
    with (bar or _progress_bar)(console) as on_progress:
        result = run(prepared, progress=on_progress)
    write(result, out_dir)
    console.print(table(result))
    console.print(f"results written to [bold]{out_dir}[/]")


def _defence(name: str, knobs: dict[str, float | int | None]) -> Defence:
    """The defence ``--defence name`` with the knob flags given; a flag of another defence is
    refused (exit 2) instead of ignored. Each flag ``--x-y`` sets the parameter ``x_y``."""
    if name not in DEFENCES:
        raise ConfigError(f"unknown defence {name!r}: choose --defence {' | '.join(DEFENCES)}")
    given = {}
    for flag, value in knobs.items():
        if value is None:
            continue
        parameter = flag.removeprefix("--").replace("-", "_")
        owners = [n for n, kind in DEFENCES.items() if parameter in {f.name for f in fields(kind)}]
        if name not in owners:
            raise ConfigError(
                f"{flag} belongs to --defence {' or '.join(owners)}, not --defence {name}: "
                f"drop {flag} or choose --defence {owners[0]}"
            )
        given[parameter] = value
    try:
        return DEFENCES[name](**given)
    except ConfigError as error:  # the library names its parameters (`max_grad_norm`), here flags
        raise ConfigError(render_attack(str(error))) from None


ATTACK_FIELD_FLAGS = {"learning_rate": "--lr", "secagg": "--defence secagg"}
"""Parameters of the attack library whose flag is not their name with dashes: the configs'
``learning_rate`` (``--lr``) and ``MaliciousConfig.secagg`` (``--defence secagg``)."""


def attack_flags() -> dict[str, str]:
    """Attack parameter -> flag: every option of ``securefl attack`` and ``attack compare`` (the
    parameter ``x_y`` is set by ``--x-y``, a defence's knobs included), and
    :data:`ATTACK_FIELD_FLAGS`."""
    names = {name for command in (attack, compare) for name in inspect.signature(command).parameters}
    table = {name: "--" + name.replace("_", "-") for name in sorted(names - {"ctx"})}
    return {**table, **ATTACK_FIELD_FLAGS}


def render_attack(message: str) -> str:
    """``message`` with every backticked attack parameter (`` `images` ``, `` `learning_rate` ``)
    replaced by its flag; other backticked text is left to :func:`securefl.cli.flags.render`."""
    flags = attack_flags()
    return _BACKTICKED.sub(lambda match: flags.get(match.group(1), match.group(0)), message)


def _refuse_flags(attack: str, given: dict[str, object]) -> None:
    """Exit 2 on flags that do not apply to ``attack`` instead of ignoring them."""
    stray = [flag for flag, value in given.items() if value is not None]
    if stray:
        verb, pronoun = ("does", "it") if len(stray) == 1 else ("do", "them")
        raise ConfigError(f"{', '.join(stray)} {verb} not apply to --attack {attack}: leave {pronoun} out")


class _progress_bar:
    """A rich bar per attacked round: iterations over all restarts and the current objective."""

    def __init__(self, console: Console) -> None:
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("it {task.completed:.0f}/{task.total:.0f}"),
            TextColumn("loss {task.fields[objective]}"),
            TimeElapsedColumn(),
            console=console,
            transient=False,
        )
        self.tasks: dict[str, TaskID] = {}

    def __enter__(self) -> ExperimentProgress:
        self.progress.__enter__()

        def on_progress(label: str, event: AttackProgress) -> None:
            total = event.restarts * event.iterations
            if label not in self.tasks:
                self.tasks[label] = self.progress.add_task(label, total=total, objective="-")
            done = event.restart * event.iterations + event.iteration
            self.progress.update(self.tasks[label], completed=done, objective=f"{event.objective:.3e}")

        return on_progress

    def __exit__(self, *exc: Any) -> None:
        for task in self.tasks.values():
            self.progress.update(task, completed=self.progress.tasks[task].total)
        self.progress.__exit__(*exc)


class _trials_bar:
    """One rich bar over the attacked rounds of a malicious-server run."""

    def __init__(self, console: Console) -> None:
        self.progress = Progress(
            TextColumn("malicious server"),
            BarColumn(),
            TextColumn("round {task.completed:.0f}/{task.total:.0f}"),
            TimeElapsedColumn(),
            console=console,
        )
        self.task: TaskID | None = None

    def __enter__(self) -> Callable[[int, int], None]:
        self.progress.__enter__()

        def on_progress(done: int, total: int) -> None:
            if self.task is None:
                self.task = self.progress.add_task("rounds", total=total)
            self.progress.update(self.task, completed=done)

        return on_progress

    def __exit__(self, *exc: Any) -> None:
        self.progress.__exit__(*exc)


def _malicious_table(outcome: MaliciousOutcome) -> Table:
    table = Table(title=f"securefl attack: {outcome.config.label}")
    for column in ("round", "refused", "aborted", "candidates", "target ≥30 dB", "all ≥30 dB", "attack s"):
        table.add_column(column, justify="right")
    for index, trial in enumerate(outcome.trials):
        table.add_row(
            str(index + 1),
            str(len(trial.refused)),
            "-" if trial.aborted is None else trial.aborted[:40],
            str(trial.candidates),
            f"{trial.target_recovered:.0%}",
            f"{trial.everyone_recovered:.0%}",
            f"{trial.attack_seconds:.3f}",
        )
    whose = "all clients'" if outcome.config.attack == "imprint" else "the target's"
    table.caption = (
        f"recovered {outcome.recovered_share:.0%} of "
        f"{whose} images; "
        f"target refused the model in {outcome.refused_share:.0%} of rounds; {outcome.seconds:.1f} s"
    )
    return table


def _malicious_comparison_table(outcomes: Sequence[MaliciousOutcome]) -> Table:
    table = Table(title="securefl attack compare: a malicious server")
    for column in ("row", "target refused", "target's ≥30 dB", "all ≥30 dB", "s"):
        table.add_column(column, justify="right")
    for outcome in outcomes:
        trial = outcome.trials[0]
        table.add_row(
            outcome.config.label,
            "yes" if 0 in trial.refused else "no",
            f"{trial.target_recovered:.0%}",
            f"{trial.everyone_recovered:.0%}",
            f"{outcome.seconds:.1f}",
        )
    return table


def _db(value: float) -> str:
    return "∞" if not math.isfinite(value) else f"{value:.1f}"


def _outcome_table(outcome: AttackOutcome) -> Table:
    config = outcome.config
    table = Table(
        title=f"securefl attack: {config.attack} on {config.model} / {config.dataset}, "
        f"{outcome.defence_label}"
    )
    for column in ("image", "label", "recovered", "PSNR dB", "SSIM", "baseline dB"):
        table.add_column(column, justify="right")
    for image in outcome.images:
        table.add_row(
            str(image.test_index),
            str(image.label),
            str(image.recovered_label),
            _db(image.psnr),
            f"{image.ssim:.3f}",
            f"{image.baseline_psnr:.1f}",
        )
    table.caption = (
        f"median PSNR {_db(outcome.median_psnr)} dB vs baseline {outcome.median_baseline_psnr:.1f} dB, "
        f"labels {outcome.label_accuracy:.0%}, {outcome.seconds:.1f} s"
        + (f", ε={outcome.epsilon:.3g}" if outcome.epsilon is not None else "")
    )
    return table


def _comparison_table(outcomes: Sequence[AttackOutcome]) -> Table:
    config = outcomes[0].config
    table = Table(title=f"securefl attack compare: {config.attack} on {config.model} / {config.dataset}")
    for column in ("defence", "median PSNR dB", "baseline dB", "median SSIM", "labels", "ε", "s"):
        table.add_column(column, justify="right")
    for outcome in outcomes:
        table.add_row(
            outcome.defence_label,
            _db(outcome.median_psnr),
            f"{outcome.median_baseline_psnr:.1f}",
            f"{outcome.median_ssim:.3f}",
            f"{outcome.label_accuracy:.0%}",
            "-" if outcome.epsilon is None else f"{outcome.epsilon:.3g}",
            f"{outcome.seconds:.0f}",
        )
    return table
