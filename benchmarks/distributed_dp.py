"""Distributed DP (issue 13): accuracy at equal user-level ε, dropouts, and client-side cost.

Three measurements, each printed as a table (and written to ``--out`` as JSON):

- ``accuracy``: mnist-sample, CNN, 100 clients, 20 per round, ``--rounds`` rounds, δ = 1e-5, at
  each target ε: ``train --distributed-dp --secagg`` at ``--bits`` vs ``train --central-dp``
  (trusted server) with fixed-size sampling (both accounted without amplification), and central
  DP with Poisson sampling (amplified; the trusted server keeps the sample secret).  The noise
  multiplier of each is the one whose accountant reaches the target after ``--rounds`` rounds.
- ``dropouts``: 20 clients per round, each dropping with probability ``--dropout`` at a random
  protocol step, through the real channel and protocol (a small vector; the accounting does not
  depend on its length), at the z whose target ε after ``--rounds`` rounds is the first of
  ``--epsilons``: realised ε ÷ target ε (target: exactly ``(z·c)²`` per round), and the ε of
  naive shares sized for all sampled clients (``μ/m``).
- ``cost``: one client's rotate + scale + round + Skellam noise of a ``--dim`` vector ÷ the same
  client's masking step of secure aggregation (``masked_input``) for that vector with 20 clients.

    .venv/bin/python benchmarks/distributed_dp.py [--part accuracy|dropouts|cost|all]
        [--rounds 10] [--epsilons 5 10] [--bits 16 ...] [--repeats 3] [--dropout 0.2] [--dim 1000000]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from securefl.config import CentralDPConfig, RunConfig, SecAggConfig
from securefl.errors import RoundAbortedError
from securefl.federation import run_simulation
from securefl.fl.secure_channel import SecureAggregationChannel
from securefl.fl.types import Aggregate, Contribution
from securefl.privacy.central import DPFedAvgServerUpdate
from securefl.privacy.distributed import (
    DistributedDPChannel,
    DistributedDPServerUpdate,
    conditional_round,
    skellam_noise,
)
from securefl.protocols.secagg import SecAggParams, Step, run_secure_aggregation

CLIENTS, PER_ROUND, DELTA, CLIP = 100, 20, 1e-5, 1.0
COLLUDERS = 0
"""``--secagg-colluders 0``: an honest-but-curious server colluding with no client, the setting
that compares with central DP's trusted server (with c colluders each share grows to μ/(t − c))."""


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", choices=["accuracy", "dropouts", "cost", "all"], default="all")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--epsilons", type=float, nargs="+", default=[5.0, 10.0])
    parser.add_argument("--bits", type=int, nargs="+", default=[16], help="ring sizes tried (accuracy)")
    parser.add_argument("--repeats", type=int, default=3, help="training runs (seeds) per cell")
    parser.add_argument("--dropout", type=float, default=0.2)
    parser.add_argument("--dim", type=int, default=1_000_000)
    parser.add_argument("--out", type=Path, default=None)
    return parser.parse_args()


def _channel(z: float, *, bits: int, dim: int, dropout: float = 0.0, clients: int = PER_ROUND):
    secure = SecureAggregationChannel(
        config=SecAggConfig(bits=bits, dropout_rate=dropout, max_colluders=COLLUDERS),
        num_params=dim,
        weight_bound=1,
        clients_per_round=clients,
        seed=0,
    )
    return DistributedDPChannel(
        secure=secure,
        num_params=dim,
        clip_norm=CLIP,
        noise_multiplier=z,
        delta=DELTA,
        max_clients=clients,
        seed=0,
    )


def _solve(epsilon_of, target: float) -> float:
    """The noise multiplier whose ε is ``target`` (ε decreases in z), by bisection in log space."""
    low, high = 0.05, 200.0
    for _ in range(60):
        middle = (low * high) ** 0.5
        low, high = (middle, high) if epsilon_of(middle) > target else (low, middle)
    return high


def distributed_epsilon(z: float, *, rounds: int, bits: int, dim: int) -> float:
    channel = _channel(z, bits=bits, dim=dim)
    share = channel.share_variance(channel.secure.params_for(PER_ROUND, None)) / channel.scale**2
    return channel.epsilon_of([(PER_ROUND - COLLUDERS) * share] * rounds)


def central_epsilon(z: float, *, rounds: int, sampling: str) -> float:
    reference = DPFedAvgServerUpdate(
        noise_multiplier=z,
        clip_norm=CLIP,
        delta=DELTA,
        clients=CLIENTS,
        clients_per_round=PER_ROUND,
        client_sampling=sampling,
    )
    return reference.epsilon_after(rounds)


def train(z: float | None, *, rounds: int, sampling: str, distributed: bool, bits: int, seed: int) -> dict:
    """One run of the simulation (``z=None``: no DP); test accuracy and ε after the last round."""
    central = None
    if z is not None:
        central = CentralDPConfig(
            noise_multiplier=z, clip_norm=CLIP, delta=DELTA, client_sampling=sampling, distributed=distributed
        )
    config = RunConfig(
        clients=CLIENTS,
        clients_per_round=PER_ROUND,
        rounds=rounds,
        seed=seed,
        central_dp=central,
        secagg=SecAggConfig(bits=bits, max_colluders=COLLUDERS) if distributed else None,
    )
    started = time.perf_counter()
    last = run_simulation(config).final
    return {
        "accuracy": last.evaluation.accuracy,
        "epsilon": last.privacy.get("user_epsilon"),
        "seconds": time.perf_counter() - started,
    }


def repeated(z: float | None, *, args: argparse.Namespace, **settings) -> dict:
    runs = [train(z, rounds=args.rounds, seed=seed, **settings) for seed in range(args.repeats)]
    accuracies = [r["accuracy"] for r in runs]
    return {
        "accuracy_mean": statistics.mean(accuracies),
        "accuracy_sd": statistics.stdev(accuracies) if len(runs) > 1 else 0.0,
        "accuracies": accuracies,
        "epsilon": runs[0]["epsilon"],
        "seconds_per_run": statistics.mean(r["seconds"] for r in runs),
    }


def accuracy(args: argparse.Namespace) -> list[dict]:
    dim = 21840  # the mnist-sample CNN
    baseline = repeated(None, args=args, sampling="fixed", distributed=False, bits=32)
    rows = [{"target_epsilon": None, "mode": "no DP", "noise_multiplier": None, **baseline}]
    _print(rows[-1])
    for target in args.epsilons:
        cells = [
            (
                f"distributed {bits} bits, fixed",
                "fixed",
                True,
                bits,
                distributed_epsilon,
                {"bits": bits, "dim": dim},
            )
            for bits in args.bits
        ]
        cells += [
            ("central, fixed", "fixed", False, 32, central_epsilon, {"sampling": "fixed"}),
            ("central, poisson", "poisson", False, 32, central_epsilon, {"sampling": "poisson"}),
        ]
        for name, sampling, distributed, bits, epsilon_of, knobs in cells:
            z = _solve(lambda z, f=epsilon_of, k=knobs: f(z, rounds=args.rounds, **k), target)
            result = repeated(z, args=args, sampling=sampling, distributed=distributed, bits=bits)
            rows.append({"target_epsilon": target, "mode": name, "noise_multiplier": z, **result})
            _print(rows[-1])
    return rows


def _print(row: dict) -> None:
    target = "-" if row["target_epsilon"] is None else f"{row['target_epsilon']:g}"
    z = "-" if row["noise_multiplier"] is None else f"{row['noise_multiplier']:.3f}"
    epsilon = "-" if row["epsilon"] is None else f"{row['epsilon']:.2f}"
    print(
        f"ε target {target:>5}  {row['mode']:28s} z={z:>6}  ε={epsilon:>6}  "
        f"acc={row['accuracy_mean']:.3f} ± {row['accuracy_sd']:.3f}  ({row['seconds_per_run']:.0f} s/run)",
        flush=True,
    )


def dropouts(args: argparse.Namespace) -> dict:
    rounds, dim, bits = args.rounds, 64, args.bits[0]

    def target_epsilon(z: float) -> float:  # exactly (z·c)² in every round
        return _channel(z, bits=bits, dim=dim).epsilon_of([(z * CLIP) ** 2] * rounds)

    z = _solve(target_epsilon, args.epsilons[0])
    channel = _channel(z, bits=bits, dim=dim, dropout=args.dropout)
    generator = torch.Generator().manual_seed(0)
    updates = []
    for i in range(PER_ROUND):
        delta = torch.randn(dim, generator=generator)
        updates.append(Contribution(i, delta / delta.norm() * 0.9, 1.0, 0.0))
    server = DistributedDPServerUpdate(channel=channel, expected_clients=PER_ROUND)
    params = torch.zeros(dim)
    for round_index in range(1, rounds + 1):
        aggregate = Aggregate.empty(params)
        with contextlib.suppress(RoundAbortedError):  # an aborted round is counted too
            aggregate = channel.aggregate(updates, round_index=round_index)
        params = server(params, aggregate)
    ledger = server.ledger()["user_level"]
    survivors = [s for s in ledger["survivors_each_round"] if s]
    mu = channel.target_variance / channel.scale**2  # (z·c)² in parameter units
    target = channel.epsilon_of([mu] * len(survivors))
    realised = ledger["epsilon"]
    naive = channel.epsilon_of([s / PER_ROUND * mu for s in survivors])
    threshold = channel.secure.config.threshold_count(PER_ROUND)
    result = {
        "dropout_rate": args.dropout,
        "noise_multiplier": z,
        "rounds": rounds,
        "aborted_rounds": rounds - len(survivors),
        "mean_survivors": statistics.mean(survivors) if survivors else 0,
        "threshold": threshold,
        "target_epsilon": target,
        "realised_epsilon": realised,
        "realised_over_target": realised / target,
        "naive_epsilon": naive,
        "naive_over_target": naive / target,
        "noise_variance_over_target": statistics.mean(s / threshold for s in survivors),
    }
    print(json.dumps(result, indent=2), flush=True)
    return result


def _median_seconds(work, repeats: int = 5) -> float:
    """Median wall time of ``work()`` (wall time, as the protocol's step timings)."""
    seconds = []
    for _ in range(repeats):
        started = time.perf_counter()
        work()
        seconds.append(time.perf_counter() - started)
    return statistics.median(seconds)


def cost(args: argparse.Namespace) -> dict:
    bits = args.bits[0]
    channel = _channel(1.0, bits=bits, dim=args.dim)
    rotation = channel.rotation(1)
    share = channel.share_variance(channel.secure.params_for(PER_ROUND, None))
    delta = torch.randn(args.dim, generator=torch.Generator().manual_seed(0))
    contribution = Contribution(0, delta / delta.norm(), 1.0, 0.0)
    encode = _median_seconds(lambda: channel.encode(contribution, rotation=rotation, share_variance=share))
    rotated = rotation.rotate(contribution.weighted_delta).numpy() * channel.scale
    rng = np.random.default_rng(0)
    parts = {
        "rotate_seconds": _median_seconds(lambda: rotation.rotate(contribution.weighted_delta)),
        "round_seconds": _median_seconds(
            lambda: conditional_round(rotated, l2_bound=channel.l2_bound, rng=rng)
        ),
        "noise_seconds": _median_seconds(lambda: skellam_noise(rotation.padded, share, rng)),
    }
    inputs = {c: rng.integers(0, 2**bits, args.dim, dtype=np.uint64) for c in range(PER_ROUND)}
    params = SecAggParams(num_clients=PER_ROUND, threshold=PER_ROUND // 2 + 1, bits=bits)
    stats = run_secure_aggregation(inputs, params=params, record_transcript=False).stats
    masking = statistics.median(stats.client_seconds[c][Step.MASKED_INPUT] for c in range(PER_ROUND))
    result = {
        "dim": args.dim,
        "padded": rotation.padded,
        "clients": PER_ROUND,
        "bits": bits,
        "encode_seconds": encode,
        **parts,
        "masking_seconds": masking,
        "ratio": encode / masking,
    }
    print(json.dumps(result, indent=2), flush=True)
    return result


def main() -> None:
    args = parse_args()
    torch.set_num_threads(1)
    results: dict = {}
    if args.part in ("cost", "all"):
        results["cost"] = cost(args)
    if args.part in ("dropouts", "all"):
        results["dropouts"] = dropouts(args)
    if args.part in ("accuracy", "all"):
        results["accuracy"] = accuracy(args)
    if args.out is not None:
        args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
