"""``securefl train``: a federated run from flags and/or a TOML file, rendered with rich."""

from __future__ import annotations

import datetime as dt
from functools import partial
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from securefl.cli.flags import render
from securefl.cli.progress import round_progress
from securefl.config import RunConfig
from securefl.data import plot_label_histograms
from securefl.federation import Federation, build_federation, run_simulation
from securefl.fl.history import History, check_output_dir, write_run
from securefl.fl.record import RoundRecord, RoundStatus
from securefl.fl.secure_channel import in_config_text
from securefl.protocols.secagg import assess_parameters

Opt = typer.Option


def train(
    dataset: Annotated[
        str | None, Opt(help="Data set (see `securefl datasets`). (default mnist-sample)")
    ] = None,
    model: Annotated[
        str | None, Opt(help="cnn | resnet18 | mlp (lenet is the attacks' model). (default cnn)")
    ] = None,
    clients: Annotated[int | None, Opt(help="Number of clients N. (default 10)")] = None,
    clients_per_round: Annotated[int | None, Opt(help="Clients sampled per round K. (default all)")] = None,
    fraction: Annotated[float | None, Opt(help="Fraction C of clients per round, instead of K.")] = None,
    rounds: Annotated[int | None, Opt(help="Rounds R. (default 10)")] = None,
    local_epochs: Annotated[int | None, Opt(help="Local epochs E. (default: the data set's)")] = None,
    batch_size: Annotated[int | None, Opt(help="Local batch size B. (default: the data set's)")] = None,
    lr: Annotated[float | None, Opt(help="Client learning rate. (default: the data set's)")] = None,
    momentum: Annotated[float | None, Opt(help="Client SGD momentum. (default: the data set's)")] = None,
    weight_decay: Annotated[float | None, Opt(help="Client weight decay. (default 0)")] = None,
    partition: Annotated[str | None, Opt(help="iid | dirichlet | shards. (default iid)")] = None,
    alpha: Annotated[
        float | None, Opt(help="Dirichlet concentration (smaller = more skew). (default 0.5)")
    ] = None,
    seed: Annotated[int | None, Opt(help="Seed of partition, sampling and training. (default 0)")] = None,
    algorithm: Annotated[str | None, Opt(help="fedavg | fedsgd. (default fedavg)")] = None,
    data_dir: Annotated[Path | None, Opt(help="Directory holding mnist / cifar10 files.")] = None,
    download: Annotated[
        bool | None, Opt("--download/--no-download", help="Allow torchvision to download.")
    ] = None,
    threads: Annotated[int | None, Opt(help="torch intra-op threads. (default 1)")] = None,
    workers: Annotated[
        int | None,
        Opt(
            help="Processes running the clients, one torch thread each; same results. "
            "(default: one per core, 1 on a GPU)"
        ),
    ] = None,
    device: Annotated[
        str | None,
        Opt(help="auto | cpu | cuda: where clients train and the model is evaluated. (default auto)"),
    ] = None,
    backend: Annotated[
        str | None,
        Opt(help="local | ray: clients on Ray actors (--workers of them; securefl[ray]). (default local)"),
    ] = None,
    ray_address: Annotated[
        str | None,
        Opt(help="Ray cluster for --backend ray: auto | HOST:PORT | ray://HOST:PORT. (default a local one)"),
    ] = None,
    dp: Annotated[
        bool | None, Opt("--dp/--no-dp", help="Sample-level DP-SGD on every client (Opacus).")
    ] = None,
    noise_multiplier: Annotated[float | None, Opt(help="DP-SGD noise multiplier. (default 1.0)")] = None,
    max_grad_norm: Annotated[float | None, Opt(help="DP-SGD per-sample clip norm. (default 1.0)")] = None,
    delta: Annotated[float | None, Opt(help="DP-SGD δ, below 1/samples per client. (default 1e-5)")] = None,
    accountant: Annotated[str | None, Opt(help="rdp | prv | gdp. (default rdp)")] = None,
    target_epsilon: Annotated[
        float | None, Opt(help="Pick the noise so a client in every round ends at this ε; enforce it.")
    ] = None,
    central_dp: Annotated[
        bool | None, Opt("--central-dp/--no-central-dp", help="User-level DP-FedAvg at the server.")
    ] = None,
    distributed_dp: Annotated[
        bool | None,
        Opt(
            "--distributed-dp/--no-distributed-dp",
            help="User-level DP with the noise added by the clients under --secagg (Skellam); "
            "takes the --central-dp knobs.",
        ),
    ] = None,
    central_noise_multiplier: Annotated[float | None, Opt(help="DP-FedAvg noise z. (default 1.0)")] = None,
    clip_norm: Annotated[float | None, Opt(help="DP-FedAvg client update clip. (default 1.0)")] = None,
    central_delta: Annotated[float | None, Opt(help="User-level δ, below 1/clients. (default 1e-5)")] = None,
    client_sampling: Annotated[str | None, Opt(help="poisson | fixed. (default poisson)")] = None,
    central_accountant: Annotated[
        str | None, Opt(help="User-level ε: rdp | prv | gdp. (default rdp)")
    ] = None,
    secagg: Annotated[
        bool | None, Opt("--secagg/--no-secagg", help="Sum updates by secure aggregation.")
    ] = None,
    secagg_threshold: Annotated[
        float | None,
        Opt(help="Shamir threshold: a fraction in (0, 1) or a count. (default majority, active 2/3 + 1)"),
    ] = None,
    secagg_neighbors: Annotated[
        str | None,
        Opt(
            help="SecAgg+ neighbours per client (even), or auto: degree and threshold from "
            "choose_parameters for each round's size at the assumed rates below. (default all clients)"
        ),
    ] = None,
    secagg_assumed_dropout_rate: Annotated[
        float | None,
        Opt(help="With --secagg-neighbors auto: the dropout rate the parameters tolerate. (default 0.1)"),
    ] = None,
    secagg_assumed_colluder_rate: Annotated[
        float | None,
        Opt(
            help="With --secagg-neighbors auto: the fraction of a round's clients that may collude "
            "with the server. (default 0.1)"
        ),
    ] = None,
    secagg_bits: Annotated[int | None, Opt(help="Ring size in bits, 8..62. (default 32)")] = None,
    secagg_clip: Annotated[float | None, Opt(help="Per-coordinate update clip. (default 1.0)")] = None,
    dropout_rate: Annotated[
        float | None,
        Opt(
            help="Simulated dropout per client and round (what happens; what the parameters assume "
            "is --secagg-assumed-dropout-rate). (default 0)"
        ),
    ] = None,
    active_adversary: Annotated[
        bool | None,
        Opt(
            "--active-adversary/--no-active-adversary",
            help="Signed consistency check against a lying server. (default off)",
        ),
    ] = None,
    secagg_colluders: Annotated[
        int | None,
        Opt(help="Clients that may collude with the server. (default the most the threshold tolerates)"),
    ] = None,
    out: Annotated[Path | None, Opt(help="Run directory. (default runs/<timestamp>)")] = None,
    overwrite: Annotated[bool, Opt(help="Replace a non-empty --out directory.")] = False,
    config: Annotated[Path | None, Opt(help="TOML file with the same keys as these flags.")] = None,
) -> None:
    """Train a model with federated averaging on a simulated federation."""
    flags = {k: v for k, v in locals().items() if k not in {"out", "overwrite", "config"} and v is not None}
    if "data_dir" in flags:
        flags["data_dir"] = str(flags["data_dir"])
    if "secagg_neighbors" in flags:
        flags["secagg_neighbors"] = _count_or_name(flags["secagg_neighbors"])
    run_config = RunConfig.from_toml(config, flags) if config else RunConfig.from_mapping(flags)
    out_dir = out or Path("runs") / dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    check_output_dir(out_dir, overwrite=overwrite)
    console = Console()
    federation = build_federation(run_config)
    if run_config.secagg is not None:
        console.print(escape(render(_collusion_bound(run_config, federation))), highlight=False)
    if run_config.central_dp is not None and run_config.central_dp.distributed:
        console.print(_noise_shares(run_config, federation))
    history = _run_with_progress(run_config, federation, console)
    data = federation.dataset
    partition_figure = partial(
        plot_label_histograms, federation.parts, data.train_y, num_classes=data.num_outputs
    )
    write_run(
        history,
        out_dir,
        overwrite=overwrite,
        figures={"partition.png": lambda path: partition_figure(path=path)},
    )
    console.print(summary_table(history))
    if history.stopped_early:
        console.print(f"[yellow]stopped early:[/] {history.stopped_early}")
    console.print(f"results written to [bold]{out_dir}[/]")
    if history.diverged:  # the rounds before are kept, the run directory says "diverged"
        Console(stderr=True).print(
            f"[bold red]error:[/] {escape(render(history.diverged))}", highlight=False, soft_wrap=True
        )
        raise typer.Exit(code=2)


def _count_or_name(value: str) -> int | str:
    """A flag that takes a count or a word (``--secagg-neighbors 4`` or ``auto``): the count as an
    integer, anything else as given (the configuration says what it accepts)."""
    return int(value) if value.strip().isdigit() else value


def _collusion_bound(config: RunConfig, federation: Federation) -> str:
    """One line: the adversary every round that can run is secure against.

    Under Poisson sampling rounds can be smaller than planned and run with their own threshold,
    so the bound printed is the smallest over every round size the channel can run (a fixed-size
    round keeps its size: dropouts and clients left out for non-finite updates are dropouts inside
    it); if some size breaks a rule of ``choose_parameters`` (passive
    SecAgg+ at the configured dropout rate) the line says it is not secure for that ``c``.
    """
    clients = config.sampled_clients
    secure: Any = getattr(federation.channel, "secure", federation.channel)  # distributed DP wraps it
    rounds = secure.round_params()
    params = next((p for p in rounds if p.num_clients == clients), rounds[-1])
    graph = "complete graph" if params.complete_graph else f"SecAgg+ with {params.neighbors} neighbours"
    head = f"secure aggregation: {graph}, threshold {params.threshold} for {clients} clients per round; "
    if len(rounds) == 1:
        sizes = f"every round has {clients} clients"
        where = f"in every round of {clients} clients"
    else:
        sizes = f"rounds of {rounds[0].num_clients} to {rounds[-1].num_clients} clients can run"
        where = f"in every round ({sizes}; {params.colluders_tolerated} in a round of {params.num_clients})"
    for round_params in sorted(rounds, key=lambda p: p.num_clients != clients):  # planned first
        broken = assess_parameters(round_params, dropout_rate=secure.config.dropout_rate)
        if broken:
            return (
                f"{head}not secure for c = {round_params.colluders_tolerated} colluding client(s) "
                f"in a round of {round_params.num_clients} ({sizes}): {in_config_text(broken[0])}"
            )
    weakest = min(rounds, key=lambda p: p.colluders_tolerated)
    if params.active_adversary:
        server = f"an active server ({params.signature_threshold} survivor-set signatures needed)"
    else:
        server = "an honest-but-curious server"
    caveat = "" if params.complete_graph or params.active_adversary else " (w.h.p. over the random graph)"
    return (
        f"{head}secure against {server} colluding with up to {weakest.colluders_tolerated} client(s) "
        f"{where}{caveat}"
    )


def _noise_shares(config: RunConfig, federation: Federation) -> str:
    """One line: how the planned round's noise shares are sized (issue 13, approach (a))."""
    from securefl.privacy.distributed import DistributedDPChannel  # only under distributed DP

    clients = config.sampled_clients
    channel = federation.channel
    assert isinstance(channel, DistributedDPChannel)  # build_federation's under `central_dp.distributed`
    params = channel.round_parameters(clients)
    honest = params.threshold - params.colluders_tolerated
    return (
        f"distributed DP: each client adds 1/{honest} of the target noise, so the honest ones among "
        f"any {params.threshold} survivors carry it whatever {params.colluders_tolerated} colluder(s) "
        f"subtract; a round of {clients} without dropouts carries {clients / honest:.3g}x the target "
        "variance (set --secagg-colluders to what you assume)"
    )


def _run_with_progress(config: RunConfig, federation: Federation, console: Console) -> History:
    with round_progress(console, rounds=config.rounds, status=round_status) as on_round:
        return run_simulation(config, federation=federation, on_round=on_round)


def round_status(record: RoundRecord) -> str:
    """One round in a few words: its test metric, ε so far, and how it ended if not ok."""
    evaluation = record.evaluation
    text = ""
    if evaluation is not None and evaluation.accuracy is not None:
        text = f"acc {evaluation.accuracy:.4f}  loss {evaluation.loss:.4f}"
    elif evaluation is not None:
        text = f"mse {evaluation.loss:.4f}  r2 {evaluation.r2:.4f}"
    for name, label in (("epsilon_max", "ε"), ("user_epsilon", "user ε")):
        if name in record.privacy:
            text += f"  {label} {record.privacy[name]:.2f}"
    if record.status is not RoundStatus.OK:
        text += f"  {record.status.value}"
    return text


SUMMARY_COLUMNS = {
    "round": "round",
    "clients": "clients",
    "survivors": "summed",
    "status": "status",
    "train_loss": "train loss",
    "test_accuracy": "test acc",
    "test_loss": "test loss",
    "test_mse": "test mse",
    "test_r2": "test r2",
    "epsilon_max": "ε max",
    "epsilon_median": "ε median",
    "user_epsilon": "user ε",
    "user_epsilon_at_target_noise": "user ε at target noise",
    "central_epsilon_at_target_noise": "central ε at target noise",
    "released_noise_variance": "noise var",
    "bytes_up_per_client": "up/client",
    "seconds": "s",
}


def summary_table(history: History, *, title: str = "securefl train") -> Table:
    """One row per round; a column appears when some round has that figure."""
    table = Table(title=title)
    records = [record.to_json() for record in history.records]
    columns = [c for c in SUMMARY_COLUMNS if any(c in r for r in records)]
    if all(r.status is RoundStatus.OK for r in history.records):
        columns.remove("status")
    if history.config.secagg is None:
        columns = [c for c in columns if c not in ("survivors", "bytes_up_per_client")]
    for column in columns:
        table.add_column(SUMMARY_COLUMNS[column], justify="right")
    for record in records:
        table.add_row(*(_cell(record.get(c)) for c in columns))
    return table


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 1000 else f"{value:.3g}"
    return str(value)
