"""Benchmark one secure-aggregation round against the raw AES-CTR keystream it needs.

    .venv/bin/python benchmarks/secagg.py --clients 100 --dim 1000000 --neighbors 20 --dropout 0.1

Runs one round in-process (all clients and the server, one core), then, in the same run, times the
physical floor: one AES-256-CTR keystream of ``dim`` words written by ``update_into`` into a
preallocated buffer for every mask expansion the round needed (each masking client: one per
neighbour it masked with plus its self mask; the server: one self mask per survivor plus one per
(dropped client, surviving neighbour) pair).  Prints per-client and server time by step, bytes up
and down per client, and the ratios the issue aims at: client masking <= 1.5x the raw keystream of
its masks, whole round <= 2.5x the raw keystream of all expansions.

``--repeat R`` runs the round R times on the same inputs (fresh keys and masks each time) and
prints the median wall time and the median CPU time of this process, which a loaded machine
disturbs less; the per-step figures are those of the last round.

Dropouts: ``round(dropout * clients)`` clients chosen at random leave at ``--dropout-step``
(default: before uploading their masked input, the most expensive case since the server must then
rebuild their pairwise masks).
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

from securefl.config import SecAggConfig
from securefl.protocols.crypto import prg
from securefl.protocols.secagg import (
    Dropout,
    DropoutPlan,
    RoundSetup,
    SecAggParams,
    Step,
    run_secure_aggregation,
)
from securefl.protocols.secagg.graph import neighbourhoods


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--dim", type=int, default=1_000_000)
    parser.add_argument(
        "--neighbors", type=int, default=0, help="SecAgg+ degree k (even); 0 = complete graph"
    )
    parser.add_argument("--dropout", type=float, default=0.0, help="fraction of clients dropping")
    parser.add_argument("--dropout-step", choices=[s.label for s in Step], default="masked_input")
    parser.add_argument(
        "--threshold",
        type=int,
        default=0,
        help="Shamir threshold t (default: securefl train's, a majority of each "
        "client's share holders, floor(2h/3) + 1 of them with --active)",
    )
    parser.add_argument("--bits", type=int, default=32)
    parser.add_argument("--active", action="store_true", help="active-adversary mode")
    parser.add_argument("--seed", type=int, default=0, help="seed of inputs and dropout choice")
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="run the round this many times; report the median wall and CPU time",
    )
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    n, dim = args.clients, args.dim
    neighbors = args.neighbors or None
    threshold = args.threshold or SecAggConfig(
        neighbors=neighbors, active_adversary=args.active
    ).threshold_count(n)
    params = SecAggParams(
        num_clients=n, threshold=threshold, bits=args.bits, neighbors=neighbors, active_adversary=args.active
    )
    rng = np.random.default_rng(args.seed)
    dtype = params.word_dtype
    inputs = {c: rng.integers(0, 2**args.bits, size=dim, dtype=np.uint64).astype(dtype) for c in range(n)}
    step = Step[args.dropout_step.upper()]
    dropped = sorted(rng.choice(n, size=round(args.dropout * n), replace=False).tolist())
    plan = DropoutPlan({c: Dropout(step) for c in dropped})
    graph_seed = os.urandom(32)
    expansion_bytes = dim * dtype.itemsize
    warm_buffer, warm_zeros = prg.keystream_buffer(expansion_bytes), bytes(expansion_bytes)
    started = time.perf_counter()
    for _ in range(n * 2):  # a first raw measurement (one per client and neighbour pair)
        prg.keystream_into(os.urandom(32), warm_buffer, expansion_bytes, zeros=warm_zeros)
    raw_before_per = (time.perf_counter() - started) / (n * 2)
    del warm_buffer, warm_zeros

    walls, cpus = [], []
    for _ in range(args.repeat):  # the same inputs and plan each time, fresh keys and masks
        started, started_cpu = time.perf_counter(), time.process_time()
        result = run_secure_aggregation(
            inputs, params=params, dropouts=plan, graph_seed=graph_seed, record_transcript=False
        )
        walls.append(time.perf_counter() - started)
        cpus.append(time.process_time() - started_cpu)
    wall = float(np.median(walls))
    expected = np.zeros(dim, dtype=np.uint64)
    for c in result.survivors:
        expected += inputs[c]
    expected &= np.uint64(params.modulus - 1)
    assert np.array_equal(result.sum, expected), "wrong sum"

    # Which mask expansions did the round need?
    graph = neighbourhoods(params, RoundSetup(0, tuple(range(n)), dim, graph_seed))

    def sends(client: int, at: Step) -> bool:
        dropout = plan.dropouts.get(client)
        return dropout is None or dropout.step > at or (dropout.step == at and dropout.after_sending)

    shared = {c for c in range(n) if sends(c, Step.SHARE_KEYS)}
    maskers = [c for c in sorted(shared) if sends(c, Step.MASKED_INPUT)]
    client_expansions = {c: 1 + len(graph[c] & shared) for c in maskers}
    survivors = result.survivors
    server_expansions = len(survivors) + sum(len(graph[v] & survivors) for v in shared - survivors)
    total_expansions = sum(client_expansions.values()) + server_expansions
    raw_before = raw_before_per * total_expansions

    # The physical floor, measured in the same run: one update_into keystream per expansion.
    # Timed before and after the round and averaged, since the machine's load can change.
    num_bytes = dim * dtype.itemsize
    buffer, zeros = prg.keystream_buffer(num_bytes), bytes(num_bytes)
    keys = [os.urandom(32) for _ in range(total_expansions)]

    def time_raw_keystreams() -> float:
        started = time.perf_counter()
        for key in keys:
            prg.keystream_into(key, buffer, num_bytes, zeros=zeros)
        return time.perf_counter() - started

    raw_timings = [raw_before, time_raw_keystreams()]
    raw_total = sum(raw_timings) / 2
    raw_per_expansion = raw_total / total_expansions

    stats = result.stats
    mean_client = stats.mean_client_seconds()
    steps = [s for s in Step if s in mean_client or s in stats.server_seconds]
    print(
        f"securefl secagg benchmark: n={n} D={dim:,} bits={args.bits} "
        f"graph={'complete' if neighbors is None else f'harary k={neighbors}'} t={threshold} "
        f"active={args.active} dropped={len(dropped)} at {step.label}"
    )
    print(
        f"secure against {params.colluders_tolerated} colluding client(s)"
        + (f", {params.signature_threshold} survivor-set signatures needed" if args.active else "")
    )
    print(
        f"survivors {len(survivors)}; wall time of the round {wall:.2f} s (one process), "
        f"CPU time {float(np.median(cpus)):.2f} s (medians of {args.repeat}; wall "
        f"{min(walls):.2f}-{max(walls):.2f} s)"
    )
    print(f"{'step':<20}{'client mean s':>15}{'server s':>12}")
    for s in steps:
        print(f"{s.label:<20}{mean_client.get(s, 0.0):>15.4f}{stats.server_seconds.get(s, 0.0):>12.4f}")
    up = np.array(list(stats.bytes_up.values()))
    down = np.array(list(stats.bytes_down.values()))
    print(f"bytes up per client:   mean {up.mean():,.0f}  max {up.max():,}")
    print(f"bytes down per client: mean {down.mean():,.0f}  max {down.max():,}")
    print(
        f"mask expansions: clients {sum(client_expansions.values())}, server {server_expansions}; "
        f"raw AES-CTR keystream {raw_per_expansion * 1e3:.3f} ms each "
        f"({num_bytes / raw_per_expansion / 1e9:.2f} GB/s; before the round "
        f"{num_bytes * total_expansions / raw_timings[0] / 1e9:.2f}, after "
        f"{num_bytes * total_expansions / raw_timings[1] / 1e9:.2f})"
    )

    masking = [stats.client_seconds[c][Step.MASKED_INPUT] for c in maskers]
    raw_client = [client_expansions[c] * raw_per_expansion for c in maskers]
    client_ratio = float(np.mean(masking) / np.mean(raw_client))
    round_seconds = sum(sum(v.values()) for v in stats.client_seconds.values()) + sum(
        stats.server_seconds.values()
    )
    round_ratio = round_seconds / raw_total
    server_unmask = stats.server_seconds.get(Step.UNMASKING, 0.0)
    server_raw = server_expansions * raw_per_expansion
    print(f"client masking / raw keystream of its masks: {client_ratio:.2f}x  (aim <= 1.5x)")
    print(
        f"server unmasking / raw keystream of its masks: "
        f"{server_unmask / server_raw if server_raw else float('nan'):.2f}x"
    )
    print(
        f"whole round (all clients + server) / raw keystream of all expansions: "
        f"{round_ratio:.2f}x  (aim <= 2.5x); protocol CPU time {round_seconds:.2f} s"
    )


if __name__ == "__main__":
    main()
