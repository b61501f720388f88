"""White-box one-run audits of securefl's DP modes: ε lower bound ÷ accountant ε, breaks, cost.

Every audit is one :func:`securefl.audit.run_audit` (Steinke, Nasr, Jagielski 2023 with Dirac
gradient canaries, Nasr et al. 2023) on scikit-learn's digits with the ``mlp`` model:

- ``--dp`` at accountant ε ≈ 2, 8, 32 (``target_epsilon``, RDP, δ = 1e-5): one client, full batch
  (Poisson rate 1), 5 rounds of one local step, so the server sees every DP-SGD step;
- the same at ε ≈ 8 with mini-batches of 64 (rate 64 / (1437 + m)): the server sees only
  each round's sum, the FL threat model, where the accountant's amplification is not observable;
- ``--central-dp`` at ε ≈ 8 (1 real client + m canary clients, all sampled);
- no DP, and every ``--break`` variant of both modes at a claimed ε ≈ 2;
- for each ε, the *ideal* one-run bound of the same Gaussian mechanism (μ = √R / z, m canaries),
  from simulated scores: what no implementation of this audit can beat;
- black box: 200 mislabelled examples, 40 local epochs, scored by the final model's loss, with and
  without DP;
- wall time of an audit ÷ the same training without canaries (full batch of the real shard).

    .venv/bin/python benchmarks/audit.py [--repeats 3] [--canaries 1000] [--figure docs/images/audit.png]
        [--epsilons 2 8 32] [--accountant rdp|prv] [--json FILE]

Prints one line per configuration and writes the figure (bound vs accountant ε).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import statistics
import time
import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from opacus.accountants.utils import get_noise_multiplier  # noqa: E402

from securefl.audit import AuditConfig, Break, run_audit  # noqa: E402
from securefl.audit.guesses import best_bound  # noqa: E402
from securefl.config import CentralDPConfig, DPConfig, RunConfig  # noqa: E402
from securefl.data import load_dataset  # noqa: E402
from securefl.federation import run_simulation  # noqa: E402

ROUNDS = 5
DELTA = 1e-5
BASE = {"dataset": "digits", "model": "mlp", "clients": 1, "rounds": ROUNDS, "local_epochs": 1}
BASE.update(lr=1.0, momentum=0.0)


def ideal_bounds(noise: float, canaries: int, repeats: int, seed: int = 0) -> list[float]:
    """The one-run bound of R full-batch Gaussian steps with Dirac canaries, from simulated scores."""
    rng = np.random.default_rng(seed)
    mu = math.sqrt(ROUNDS) / noise
    bounds = []
    for _ in range(repeats):
        included = rng.random(canaries) < 0.5
        bounds.append(
            best_bound(rng.normal(size=canaries) + mu * included, included, delta=DELTA, beta=0.05).epsilon
        )
    return bounds


def audit(config: AuditConfig, dataset, repeats: int) -> dict:
    results = [run_audit(config, dataset=dataset) for _ in range(repeats)]
    bounds = [r.epsilon_lower_bound for r in results]
    claim = results[0].accountant_epsilon
    return {
        "claim": claim,
        "bounds": bounds,
        "median_ratio": statistics.median(bounds) / claim if math.isfinite(claim) else None,
        "violations": sum(r.violation for r in results),
        "ceiling": results[0].ceiling,
        "seconds": statistics.median(r.seconds for r in results),
        "accuracy": statistics.median(r.history.final.evaluation.accuracy for r in results),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--canaries", type=int, default=1000)
    parser.add_argument("--epsilons", type=float, nargs="+", default=[2.0, 8.0, 32.0])
    parser.add_argument("--figure", type=Path, default=Path("docs/images/audit.png"))
    parser.add_argument("--json", type=Path, default=None, help="Also write every number here.")
    parser.add_argument("--accountant", default="rdp", help="Accountant of the --dp full-batch runs.")
    args = parser.parse_args()
    warnings.filterwarnings("ignore", message="Optimal order", category=UserWarning)
    torch.set_num_threads(1)
    dataset = load_dataset("digits", seed=0)
    m = args.canaries
    rows: dict[str, dict] = {}

    def report(name: str, row: dict) -> None:
        rows[name] = row
        ratio = "" if row["median_ratio"] is None else f" ratio {row['median_ratio']:.2f}"
        if "ideal" in row:
            ratio += f" (ideal median {statistics.median(row['ideal']):.2f})"
        print(
            f"{name:34s} claim {row['claim']:.3g}  bounds {[round(b, 2) for b in row['bounds']]}{ratio}"
            f"  violations {row['violations']}/{len(row['bounds'])}  ceiling {row['ceiling']:.2f}"
            f"  acc {row['accuracy']:.3f}  {row['seconds']:.1f} s",
            flush=True,
        )

    sample_size = len(dataset.train_y) + m
    for epsilon in args.epsilons:
        dp = DPConfig(target_epsilon=epsilon, delta=DELTA, accountant=args.accountant)
        run = RunConfig(**BASE, batch_size=64, dp=dp)
        row = audit(AuditConfig(run=run, canaries=m, full_batch=True), dataset, args.repeats)
        noise = get_noise_multiplier(
            target_epsilon=epsilon,
            target_delta=DELTA,
            sample_rate=1.0,
            steps=ROUNDS,
            accountant=args.accountant,
            epsilon_tolerance=max(1e-4, 1e-3 * epsilon),
        )
        row["noise_multiplier"] = noise
        row["ideal"] = ideal_bounds(noise, m, 20)
        report(f"dp full batch eps~{epsilon:g}", row)
    run = RunConfig(**BASE, batch_size=64, dp=DPConfig(target_epsilon=8.0, delta=DELTA))
    report("dp batch 64 eps~8", audit(AuditConfig(run=run, canaries=m), dataset, args.repeats))
    central_noise = get_noise_multiplier(
        target_epsilon=8.0, target_delta=DELTA, sample_rate=1.0, steps=ROUNDS, accountant="rdp"
    )
    central = RunConfig(
        **BASE, batch_size=64, central_dp=CentralDPConfig(noise_multiplier=central_noise, delta=DELTA)
    )
    report("central-dp eps~8", audit(AuditConfig(run=central, canaries=m), dataset, args.repeats))
    plain = RunConfig(**BASE, batch_size=64)
    report("no DP", audit(AuditConfig(run=plain, canaries=m, full_batch=True), dataset, args.repeats))
    dp2 = RunConfig(**BASE, batch_size=64, dp=DPConfig(target_epsilon=2.0, delta=DELTA))
    central2_noise = get_noise_multiplier(
        target_epsilon=2.0, target_delta=DELTA, sample_rate=1.0, steps=ROUNDS, accountant="rdp"
    )
    central2 = dataclasses.replace(
        central, central_dp=CentralDPConfig(noise_multiplier=central2_noise, delta=DELTA)
    )
    for variant in ("noise", "clip", "sample-rate"):
        weakness = Break(variant)
        report(
            f"dp eps~2 --break {variant}",
            audit(
                AuditConfig(run=dp2, canaries=m, full_batch=True, weakness=weakness), dataset, args.repeats
            ),
        )
        report(
            f"central-dp eps~2 --break {variant}",
            audit(AuditConfig(run=central2, canaries=m, weakness=weakness), dataset, args.repeats),
        )

    # Black box: 200 of client 0's examples mislabelled, 40 local epochs in one round, final-model loss.
    memorise = {**BASE, "rounds": 1, "local_epochs": 40, "batch_size": 32, "lr": 0.1, "momentum": 0.5}
    report(
        "black box, no DP",
        audit(AuditConfig(run=RunConfig(**memorise), canaries=200, black_box=True), dataset, args.repeats),
    )
    private = RunConfig(**memorise, dp=DPConfig(target_epsilon=8.0, delta=DELTA))
    report(
        "black box, dp eps~8",
        audit(AuditConfig(run=private, canaries=200, black_box=True), dataset, args.repeats),
    )

    # Cost: the audit (canaries in the shard, observer, bound) ÷ the same training without canaries.
    run = RunConfig(**BASE, batch_size=len(dataset.train_y), dp=DPConfig(target_epsilon=8.0, delta=DELTA))
    plain_times, audit_times = [], []
    for _ in range(args.repeats):
        started = time.perf_counter()
        run_simulation(run)
        plain_times.append(time.perf_counter() - started)
        started = time.perf_counter()
        run_audit(AuditConfig(run=run, canaries=m, full_batch=True), dataset=dataset)
        audit_times.append(time.perf_counter() - started)
    cost = statistics.median(audit_times) / statistics.median(plain_times)
    print(
        f"wall time: audit {statistics.median(audit_times):.2f} s / training without canaries "
        f"{statistics.median(plain_times):.2f} s = {cost:.2f}x (full batch {len(dataset.train_y)} + {m} rows)"
    )
    rows["cost"] = {"audit_s": audit_times, "plain_s": plain_times, "ratio": cost, "rows": sample_size}

    figure, axes = plt.subplots(figsize=(6.5, 4.2), constrained_layout=True)
    claims = [rows[f"dp full batch eps~{e:g}"]["claim"] for e in args.epsilons]
    measured = [rows[f"dp full batch eps~{e:g}"]["bounds"] for e in args.epsilons]
    ideal = [rows[f"dp full batch eps~{e:g}"]["ideal"] for e in args.epsilons]
    line = [0.1, 2 * max(claims)]
    axes.plot(line, line, "k:", label="bound = accountant ε")
    axes.axhline(rows["no DP"]["ceiling"], color="gray", linestyle="--", label=f"ceiling for m={m}")
    axes.errorbar(
        claims,
        [statistics.median(b) for b in ideal],
        yerr=[[statistics.median(b) - min(b) for b in ideal], [max(b) - statistics.median(b) for b in ideal]],
        fmt="s",
        color="tab:gray",
        markerfacecolor="none",
        markersize=9,
        capsize=3,
        label="ideal one-run bound (simulated Gaussian)",
    )
    for claim, bounds in zip(claims, measured, strict=True):
        axes.scatter([claim] * len(bounds), bounds, color="tab:blue", zorder=3)
    axes.scatter([], [], color="tab:blue", label="securefl audit --dp --full-batch")
    for variant, marker in (("noise", "v"), ("clip", "^"), ("sample-rate", "D")):
        row = rows[f"dp eps~2 --break {variant}"]
        axes.scatter([row["claim"]] * len(row["bounds"]), row["bounds"], marker=marker, color="tab:red")
        axes.scatter([], [], marker=marker, color="tab:red", label=f"--break {variant}")
    axes.set_xscale("log")
    axes.set_yscale("log")
    axes.set_xlabel(f"accountant ε ({args.accountant.upper()} for the --dp runs, δ = 1e-5)")
    axes.set_ylabel(f"ε lower bound (95%, {m} canaries)")
    axes.set_title("White-box one-run audit of DP-SGD (digits, mlp, 5 rounds)")
    axes.legend(fontsize=7)
    args.figure.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(args.figure, dpi=110)
    print(f"figure written to {args.figure}")
    if args.json is not None:
        args.json.write_text(json.dumps(rows, indent=2, default=float) + "\n")


if __name__ == "__main__":
    main()
