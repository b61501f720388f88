"""Round time of this checkout against another one (e.g. main before a redesign), side by side.

Runs the same configuration with this tree's securefl and with the one at ``--base`` (a checkout,
e.g. ``git worktree add /tmp/base <commit>``), alternating the two in fresh processes, and prints
the median round time of each and their ratio for a plain FedAvg run and a ``--secagg`` run.
Round times are the runs' own per-round ``seconds`` (training, aggregation, server update and
evaluation; the first round is warm-up and left out).  The configuration sets every training
setting explicitly, so data-set defaults that differ between the checkouts do not matter.

    git worktree add /tmp/base 5fcc0e2
    .venv/bin/python benchmarks/against_checkout.py --base /tmp/base --repeats 5
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]

RUN = """
import json, sys, torch
from securefl import RunConfig, run_simulation
from securefl.config import SecAggConfig
settings = json.loads(sys.argv[1])
secagg = settings.pop("secagg")
config = RunConfig(**settings, secagg=SecAggConfig() if secagg else None)
history = run_simulation(config)
seconds = [r["seconds"] if isinstance(r, dict) else r.seconds for r in history.records]
print(json.dumps(seconds[1:]))
"""


def run_once(tree: Path, settings: dict) -> list[float]:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    result = subprocess.run(
        [sys.executable, "-c", RUN, json.dumps(settings)],
        env=env,
        cwd=tree,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", type=Path, required=True, help="a checkout to compare against")
    parser.add_argument("--dataset", default="mnist-sample")
    parser.add_argument("--model", default="cnn")
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    base = args.base.resolve()
    common = dict(
        dataset=args.dataset,
        model=args.model,
        clients=args.clients,
        rounds=args.rounds,
        local_epochs=2,
        batch_size=16,
        lr=0.05,
        momentum=0.5,
        weight_decay=0.0,
        seed=0,
        threads=1,
    )
    print(f"this tree: {HERE}\nbase:      {base}")
    for name, secagg in (("plain FedAvg", False), ("--secagg", True)):
        times: dict[str, list[float]] = {"base": [], "this": []}
        for _ in range(args.repeats):
            for label, tree in (("base", base), ("this", HERE)):
                times[label] += run_once(tree, {**common, "secagg": secagg})
        base_median, this_median = statistics.median(times["base"]), statistics.median(times["this"])
        print(
            f"{name:>13}: round {this_median:.3f} s here, {base_median:.3f} s at base "
            f"(median of {len(times['this'])} rounds each): ratio {this_median / base_median:.3f}"
        )


if __name__ == "__main__":
    main()
