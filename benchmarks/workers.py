"""A FedAvg round with the clients in worker processes ÷ the same round in this process.

Both transports carry the same server and client programs (the workers inherit theirs at the
fork); each round starts from the same global model, and the two are timed interleaved.  The
server's evaluation is part of every round in both.

    .venv/bin/python benchmarks/workers.py --workers 2 --repeats 5
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from securefl.config import RunConfig
from securefl.federation import build_federation, build_programs
from securefl.transports.inprocess import InProcessTransport
from securefl.transports.processes import ProcessTransport


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="mnist-sample")
    parser.add_argument("--model", default="cnn")
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    config = RunConfig(dataset=args.dataset, model=args.model, clients=args.clients, threads=1)
    fed = build_federation(config)
    sequential, parallel = build_programs(fed), build_programs(fed)
    start = sequential.server.params.clone()
    times: dict[str, list[float]] = {"in-process": [], f"{args.workers} workers": []}
    with InProcessTransport() as one, ProcessTransport(workers=args.workers) as many:
        one.enrol(sequential.server, sequential.clients)
        many.enrol(parallel.server, parallel.clients)
        for repeat in range(args.repeats + 1):  # the first repeat is warm-up
            for label, transport, programs in (
                ("in-process", one, sequential),
                (f"{args.workers} workers", many, parallel),
            ):
                programs.server.params = start.clone()
                started = time.perf_counter()
                transport.run_round(programs.server, programs.clients)
                if repeat:
                    times[label].append(time.perf_counter() - started)
    same = torch.equal(sequential.server.params, parallel.server.params)
    print(f"dataset={args.dataset} model={args.model} clients={args.clients} cores={os.cpu_count()}")
    for label, runs in times.items():
        listed = ", ".join(f"{t:.3f}" for t in runs)
        print(f"{label:>14}: median {statistics.median(runs):.3f} s  (runs: {listed})")
    ratio = statistics.median(times[f"{args.workers} workers"]) / statistics.median(times["in-process"])
    print(f"ratio {args.workers} workers / in-process: {ratio:.3f}   final weights identical: {same}")


if __name__ == "__main__":
    main()
