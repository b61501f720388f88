"""The Ray backend on one machine: start-up to the first round trained, and a steady FedAvg round
on Ray actors ÷ the same round in the process-pool transport's workers.

Both carry the same server and client programs (the pool's workers inherit theirs at the fork, the
actors build theirs from the configuration and their shards).  Start-up is timed from nothing
running (for Ray: importing and starting a local instance, starting the actors, building their
clients) to every client enrolled, then the first round; the pool starts first, so its fork never
copies Ray's threads.  Steady rounds start from the same global model and alternate between the
two; the medians and their ratio are printed with the machine's load, and whether both gave the
same weights.  The server's evaluation is part of every round in both.

    .venv/bin/python benchmarks/ray_backend.py --repeats 5
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import platform
import statistics
import time

import torch

from securefl.config import RunConfig
from securefl.federation import build_federation, build_programs
from securefl.transports.processes import ProcessTransport
from securefl.transports.ray_actors import RayTransport


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="mnist-sample")
    parser.add_argument("--model", default="cnn")
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    config = RunConfig(
        dataset=args.dataset, model=args.model, clients=args.clients, threads=1, workers=args.workers
    )
    fed = build_federation(config)
    pool_programs, ray_programs = build_programs(fed), build_programs(fed)
    start = pool_programs.server.params.clone()
    load_before = os.getloadavg()

    times: dict[str, list[float]] = {"pool": [], "ray": []}
    same = True
    with contextlib.ExitStack() as running:
        started = time.perf_counter()
        pool = running.enter_context(ProcessTransport(workers=args.workers))
        pool.enrol(pool_programs.server, pool_programs.clients)
        pool_start = time.perf_counter() - started
        pool.run_round(pool_programs.server, pool_programs.clients)
        pool_first = time.perf_counter() - started

        started = time.perf_counter()
        on_ray = running.enter_context(
            RayTransport(dataclasses.replace(config, backend="ray"), shards=fed.shards, actors=args.workers)
        )
        on_ray.enrol(ray_programs.server, ray_programs.clients)
        ray_start = time.perf_counter() - started
        on_ray.run_round(ray_programs.server, ray_programs.clients)
        ray_first = time.perf_counter() - started

        for _ in range(args.repeats):
            for label, transport, programs in (
                ("pool", pool, pool_programs),
                ("ray", on_ray, ray_programs),
            ):
                programs.server.params = start.clone()
                began = time.perf_counter()
                transport.run_round(programs.server, programs.clients)
                times[label].append(time.perf_counter() - began)
            same = same and torch.equal(pool_programs.server.params, ray_programs.server.params)

    print(
        f"dataset={args.dataset} model={args.model} clients={args.clients} workers/actors={args.workers} "
        f"cores={len(os.sched_getaffinity(0))} ({_cpu()}) python={platform.python_version()} "
        f"torch={torch.__version__} ray={on_ray.ray.__version__}"
    )
    print(f"load average before {load_before[0]:.1f}, after {os.getloadavg()[0]:.1f}")
    print(f"start-up to clients enrolled: pool {pool_start:.2f} s, ray {ray_start:.2f} s")
    print(f"start-up to first round trained: pool {pool_first:.2f} s, ray {ray_first:.2f} s")
    for label, runs in times.items():
        listed = ", ".join(f"{t:.3f}" for t in runs)
        print(f"steady round, {label:>4}: median {statistics.median(runs):.3f} s  (runs: {listed})")
    ratio = statistics.median(times["ray"]) / statistics.median(times["pool"])
    print(f"ratio steady round ray / pool: {ratio:.3f}   same weights every round: {same}")


def _cpu() -> str:
    """The processor's model name (Linux), or what Python knows of it."""
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


if __name__ == "__main__":
    main()
