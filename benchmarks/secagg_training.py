"""Secure-aggregation overhead in training: protocol time versus a plain FedAvg round.

Builds the federation of a `securefl train` run, trains one round of clients once, then sums the
same contributions through the plain channel and through the secure-aggregation channel
(quantization, masking, dropout recovery, decoding), interleaved. Prints the time of local
training, of each aggregation, and the overhead ratio

    (secure aggregation time) / (plain round time = training + plain sum)

    .venv/bin/python benchmarks/secagg_training.py                       # the default demo
    .venv/bin/python benchmarks/secagg_training.py --clients 100 --dropout-rate 0.1
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from securefl.config import RunConfig, SecAggConfig
from securefl.federation import build_federation, client_generator
from securefl.fl.fedavg import PlainSum
from securefl.fl.vectors import to_vector


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="mnist-sample")
    parser.add_argument("--model", default="cnn")
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--dropout-rate", type=float, default=0.0)
    parser.add_argument("--neighbors", type=int, default=None)
    parser.add_argument("--bits", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)

    secagg = SecAggConfig(dropout_rate=args.dropout_rate, neighbors=args.neighbors, bits=args.bits)
    config = RunConfig(dataset=args.dataset, model=args.model, clients=args.clients, secagg=secagg)
    federation = build_federation(config)
    params = to_vector(federation.eval_model.parameters())

    started = time.perf_counter()
    contributions = [
        federation.transform(
            federation.trainers[shard.client_id].train(
                global_params=params,
                shard=shard,
                round_index=1,
                generator=client_generator(config.seed, 1, shard.client_id),
            )
        )
        for shard in federation.shards
    ]
    training = time.perf_counter() - started

    plain_times, secure_times = [], []
    details = {}
    for repeat in range(1, args.repeats + 1):
        t0 = time.perf_counter()
        PlainSum().aggregate(contributions, round_index=repeat)
        plain_times.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        details = federation.channel.aggregate(contributions, round_index=repeat).details
        secure_times.append(time.perf_counter() - t0)
    plain, secure = statistics.median(plain_times), statistics.median(secure_times)
    print(
        f"dataset={args.dataset} model={args.model} clients={args.clients} params={params.numel()} "
        f"dropout={args.dropout_rate} neighbors={args.neighbors or 'all'} bits={args.bits}"
    )
    print(f"local training of the round (all clients): {training:.3f} s")
    print(f"plain sum: median {plain * 1e3:.2f} ms;  secure aggregation: median {secure * 1e3:.1f} ms")
    print(
        f"  last run: server {details['server_seconds'] * 1e3:.1f} ms, mean client "
        f"{details['client_seconds'] * 1e3:.1f} ms (summed over the protocol's steps); "
        f"dropouts seen by the server: {details['dropouts'] or 'none'}"
    )
    print(
        f"  bytes up per client: {details['bytes_up_per_client']:,} "
        f"(plain float32 update: {4 * (params.numel() + 1):,})"
    )
    print(f"overhead: secure aggregation / plain round time = {secure / (training + plain):.3f}")


if __name__ == "__main__":
    main()
