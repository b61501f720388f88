"""FedAvg round cost versus centralized training of the same samples, measured side by side.

A FedAvg round with every client sampled trains each client for E local epochs on its shard: the
same sample-epochs as E centralized epochs over the union of the shards.  This script times both in
one process, interleaved (central, federated, central, ...), and prints the median ratio, plus the
start-up cost (data loading, partitioning, model building) before the first client trains, and
centralized training with two intra-op threads beside it (the thread policy's evidence).

A federated round is the server program and the client programs of ``securefl train`` exchanging
encoded messages over the in-process transport, every round from the same global model; it
includes the server's evaluation of the new model on the test split, which the ratio is also
given without (each round's own evaluation time subtracted).

    .venv/bin/python benchmarks/fedavg.py --threads 1 --repeats 5
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch.nn.utils import parameters_to_vector

from securefl.config import RunConfig
from securefl.federation import build_federation, build_programs, client_generator
from securefl.fl.training import LocalSGDTrainer
from securefl.fl.types import ClientShard
from securefl.transports.inprocess import InProcessTransport


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="mnist-sample")
    parser.add_argument("--model", default="cnn")
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--local-epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    started = time.perf_counter()
    config = RunConfig(
        dataset=args.dataset,
        model=args.model,
        clients=args.clients,
        local_epochs=args.local_epochs,
        batch_size=args.batch_size,
        threads=args.threads,
    )
    federation = build_federation(config)
    startup = time.perf_counter() - started
    dataset = federation.dataset
    params = parameters_to_vector(federation.eval_model.parameters()).detach().clone()

    programs = build_programs(federation)
    server, clients = programs.server, programs.clients
    transport = InProcessTransport()
    transport.enrol(server, clients)
    assert config.sampled_clients == len(clients)  # every client trains in every round
    evaluate = server.evaluate
    evaluation_times: list[float] = []

    def timed_evaluate(global_params: torch.Tensor):
        t0 = time.perf_counter()
        evaluation = evaluate(global_params)
        evaluation_times.append(time.perf_counter() - t0)
        return evaluation

    server.evaluate = timed_evaluate

    def federated_round(round_index: int) -> None:
        server.params = params.clone()  # every round from the same global model, as centralized
        transport.run_round(server, clients)

    central_trainer = LocalSGDTrainer(
        model=federation.trainers[0].model,  # type: ignore[attr-defined]
        task=dataset.task,
        local_epochs=args.local_epochs,
        batch_size=args.batch_size,
        lr=config.training.lr,
        momentum=config.training.momentum,
    )
    union = ClientShard(
        -1, torch.cat([s.x for s in federation.shards]), torch.cat([s.y for s in federation.shards])
    )

    def centralized(round_index: int) -> None:
        central_trainer.train(
            global_params=params,
            shard=union,
            round_index=round_index,
            generator=client_generator(config.seed, round_index, -1 % 2**31),
        )

    def centralized_two_threads(round_index: int) -> None:
        torch.set_num_threads(2)
        try:
            centralized(round_index)
        finally:
            torch.set_num_threads(args.threads)

    federated_round(0)  # warm-up every path once
    centralized(0)
    centralized_two_threads(0)
    central_times, federated_times, two_thread_times = [], [], []
    evaluation_times.clear()
    for repeat in range(1, args.repeats + 1):
        for target, times in (
            (centralized, central_times),
            (federated_round, federated_times),
            (centralized_two_threads, two_thread_times),
        ):
            t0 = time.perf_counter()
            target(repeat)
            times.append(time.perf_counter() - t0)
    central, federated = statistics.median(central_times), statistics.median(federated_times)
    assert len(evaluation_times) == len(federated_times)
    without_evaluation = statistics.median(
        t - e for t, e in zip(federated_times, evaluation_times, strict=True)
    )
    two_threads = statistics.median(two_thread_times)
    samples = sum(len(s) for s in federation.shards) * args.local_epochs
    print(
        f"dataset={args.dataset} model={args.model} clients={args.clients} E={args.local_epochs} "
        f"B={args.batch_size} threads={args.threads} sample-epochs/round={samples}"
    )
    print(f"start-up before the first client trains: {startup:.2f} s")
    print(
        f"centralized, same sample-epochs: median {central:.3f} s  (runs: "
        + ", ".join(f"{t:.3f}" for t in central_times)
        + ")"
    )
    print(
        f"federated round:                 median {federated:.3f} s  (runs: "
        + ", ".join(f"{t:.3f}" for t in federated_times)
        + ")"
    )
    print(
        f"centralized with 2 threads:      median {two_threads:.3f} s  (runs: "
        + ", ".join(f"{t:.3f}" for t in two_thread_times)
        + ")"
    )
    print(f"  of which the server's evaluation: median {statistics.median(evaluation_times):.3f} s")
    print(f"ratio federated / centralized: {federated / central:.3f}")
    print(f"ratio federated without its evaluation / centralized: {without_evaluation / central:.3f}")
    print(f"thread policy: centralized 2 threads / {args.threads} thread(s): {two_threads / central:.3f}")


if __name__ == "__main__":
    main()
