"""A FedAvg round with the clients in every core's worker process ÷ the same round with
``--workers 1``, and a centralized pass over the same samples with one and with every thread.

Both transports carry the same server and client programs (the workers inherit theirs at the
fork); each round starts from the same global model, and the four are timed interleaved (round in
this process, round in the workers, centralized on one thread, centralized on every thread).  The
server's evaluation is part of every round.  Centralized training is the round's work without
federation: E epochs over the union of the clients' shards, batches of B.

    .venv/bin/python benchmarks/workers.py --repeats 5
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

import torch

from securefl.config import RunConfig
from securefl.federation import Programs, build_federation, build_programs, client_generator
from securefl.fl.training import LocalSGDTrainer
from securefl.fl.types import ClientShard
from securefl.models import build_model
from securefl.transports.inprocess import InProcessTransport
from securefl.transports.processes import ProcessTransport


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="mnist-sample")
    parser.add_argument("--model", default="cnn")
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--workers", type=int, default=None, help="(default: RunConfig's, every core)")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    config = RunConfig(
        dataset=args.dataset, model=args.model, clients=args.clients, workers=args.workers, device="cpu"
    )
    workers, cores = config.worker_processes, len(os.sched_getaffinity(0))
    fed = build_federation(config)
    sequential, parallel = build_programs(fed), build_programs(fed)
    start = sequential.server.params.clone()
    training = config.training
    union = ClientShard(-1, torch.cat([s.x for s in fed.shards]), torch.cat([s.y for s in fed.shards]))
    central = LocalSGDTrainer(
        model=build_model(
            config.model, input_shape=fed.dataset.input_shape, num_outputs=fed.dataset.num_outputs, seed=0
        ),
        task=fed.dataset.task,
        local_epochs=training.local_epochs,
        batch_size=training.batch_size,
        lr=training.lr,
        momentum=training.momentum,
    )

    def centralized(threads: int) -> Callable[[int], object]:
        def run(repeat: int) -> object:
            torch.set_num_threads(threads)
            try:
                generator = client_generator(config.seed, repeat, 2**31 - 1)
                return central.train(
                    global_params=start, shard=union, round_index=repeat, generator=generator
                )
            finally:
                torch.set_num_threads(1)

        return run

    in_process, in_workers = "round, --workers 1", f"round, {workers} workers"
    epochs = f"centralized {training.local_epochs} epochs"  # the round's sample-epochs
    one_thread, all_threads = f"{epochs}, 1 thread", f"{epochs}, {cores} threads"
    with InProcessTransport() as one, ProcessTransport(workers=workers) as many:
        one.enrol(sequential.server, sequential.clients)
        many.enrol(parallel.server, parallel.clients)

        def round_with(
            transport: InProcessTransport | ProcessTransport, programs: Programs
        ) -> Callable[[int], object]:
            def run(repeat: int) -> object:
                programs.server.params = start.clone()
                return transport.run_round(programs.server, programs.clients)

            return run

        targets = {
            in_process: round_with(one, sequential),
            in_workers: round_with(many, parallel),
            one_thread: centralized(1),
            all_threads: centralized(cores),
        }
        times: dict[str, list[float]] = {label: [] for label in targets}
        for repeat in range(args.repeats + 1):  # the first repeat is warm-up
            for label, target in targets.items():
                started = time.perf_counter()
                target(repeat)
                if repeat:
                    times[label].append(time.perf_counter() - started)
    same = torch.equal(sequential.server.params, parallel.server.params)
    medians = {label: statistics.median(runs) for label, runs in times.items()}
    print(
        f"dataset={args.dataset} model={args.model} clients={args.clients} E={training.local_epochs} "
        f"B={training.batch_size} cores={cores} workers={workers} torch {torch.__version__}"
    )
    for label, runs in times.items():
        listed = ", ".join(f"{t:.3f}" for t in runs)
        print(f"{label:>24}: median {medians[label]:.3f} s  (runs: {listed})")
    print(
        f"ratio {workers} workers / --workers 1: {medians[in_workers] / medians[in_process]:.3f}   "
        f"final weights identical: {same}"
    )
    print(f"ratio centralized {cores} threads / 1 thread: {medians[all_threads] / medians[one_thread]:.3f}")
    print(
        f"ratio round with {workers} workers / centralized on {cores} threads: "
        f"{medians[in_workers] / medians[all_threads]:.3f}"
    )


if __name__ == "__main__":
    main()
