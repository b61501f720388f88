"""Large federations (issue 12), one command each:

    .venv/bin/python benchmarks/large_federations.py idle     # what an idle client costs
    .venv/bin/python benchmarks/large_federations.py secagg   # a 1,000-client SecAgg+ round, ~1M parameters
    .venv/bin/python benchmarks/large_federations.py plain    # a 10,000-client plain round

``idle``: the resident memory a federation of 1,000 and of 10,000 enrolled, never-sampled
clients adds, per client (the slope between the two sizes), for plain FedAvg, secure aggregation
and DP-SGD clients, with client programs built up front and kept with their own copy of their
shard (``eager``: what ``build_programs`` did before issue 12) and with the pool
(:mod:`securefl.fl.client_pool`: a client is its shard rows until it is sampled).  Each
measurement runs in a fresh process, RSS read after ``gc`` and ``malloc_trim``.

``secagg``: one round of 1,000 clients, all sampled, under SecAgg+ with ``--secagg-neighbors
auto`` (choose_parameters at the default assumed rates, 10% dropout and 10% colluders) and 10% of
the clients dropping out at a random protocol step (``secagg.dropout_rate`` 0.1): wall time of the
round (training, masking, unmasking, the server's evaluation), the process's peak RSS beside its
RSS before the round, and the bytes per client.  ``plain``: one round of 10,000 clients, all
sampled, plain FedAvg: wall time and peak RSS.  Both run every client in this process
(``workers`` 1).

The data (nothing is downloaded): the offline data sets are small, so

- ``secagg`` upscales mnist-sample's 5,000 real digits bilinearly to 1x126x126, which makes the
  ``mlp`` (126·126 -> 64 -> 32 -> 10) 1,018,538 parameters; 1,000 IID clients hold 4 training
  images each;
- ``plain`` and ``idle`` need more rows than clients: mnist-sample's 4,000 real training images
  and copies of them shifted right by 1 and 2 pixels (12,000 rows, so 10,000 clients hold one or
  two each), ``cnn`` (21,840 parameters).  The run's configuration names ``mnist`` only so that
  10,000 clients pass its check against the registry's size: the shape, the classes and the
  training defaults are mnist-sample's, and the data passed is the stand-in above.
"""

from __future__ import annotations

import argparse
import copy
import ctypes
import dataclasses
import gc
import json
import os
import resource
import subprocess
import sys
import time
import warnings

import torch
import torch.nn.functional as F

from securefl.config import DPConfig, RunConfig, SecAggConfig
from securefl.data import load_dataset
from securefl.data.datasets import Dataset
from securefl.federation import Federation, build_federation, build_programs, client_program, run_simulation
from securefl.fl.client import FederatedClient
from securefl.fl.types import ClientShard
from securefl.transports.inprocess import InProcessTransport

UPSCALED_SIDE = 126
SHIFTS = 3  # the 4,000 images and copies shifted by 1 and 2 pixels


def upscaled_digits(side: int = UPSCALED_SIDE) -> Dataset:
    """mnist-sample with every image resized bilinearly to 1 x side x side."""
    data = load_dataset("mnist-sample")

    def resize(x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, size=(side, side), mode="bilinear", align_corners=False).contiguous()

    info = dataclasses.replace(data.info, name=f"mnist-sample at {side}x{side}", input_shape=(1, side, side))
    return Dataset(
        info=info,
        train_x=resize(data.train_x),
        train_y=data.train_y,
        test_x=resize(data.test_x),
        test_y=data.test_y,
    )


def shifted_digits(copies: int = SHIFTS) -> Dataset:
    """mnist-sample's training images and ``copies - 1`` copies shifted right by 1, 2, ... pixels."""
    data = load_dataset("mnist-sample")
    train_x = torch.cat([torch.roll(data.train_x, shifts=k, dims=-1) for k in range(copies)])
    info = dataclasses.replace(
        data.info, name=f"mnist-sample and {copies - 1} shifted copies", train_samples=len(train_x)
    )
    return Dataset(
        info=info,
        train_x=train_x,
        train_y=data.train_y.repeat(copies),
        test_x=data.test_x,
        test_y=data.test_y,
    )


def rss_bytes() -> int:
    """This process's resident memory now, after the collector and malloc have given back what they can."""
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


# ---- idle clients ------------------------------------------------------------------------------


def idle_config(kind: str, clients: int) -> RunConfig:
    settings: dict = dict(
        dataset="mnist", model="cnn", clients=clients, clients_per_round=100, workers=1, device="cpu"
    )
    if kind == "secagg":
        settings["secagg"] = SecAggConfig()
    elif kind == "dp":
        settings.update(dp=DPConfig(noise_multiplier=1.0), batch_size=1)
    return RunConfig(**settings)


def eager_clients(fed: Federation) -> dict[int, FederatedClient]:
    """Every client program built up front with its own copy of its shard, as before issue 12."""
    architecture = copy.deepcopy(fed.eval_model)
    x, y = fed.dataset.train_x, fed.dataset.train_y
    return {
        client_id: client_program(
            fed.config,
            shard=ClientShard(client_id, x[rows].contiguous(), y[rows].contiguous()),
            trainer=fed.trainers[client_id],
            transform=fed.transform,
            aggregation=fed.channel,
            architecture=architecture,
        )
        for client_id, rows in enumerate(fed.parts)
    }


def measure_idle(kind: str, layout: str, clients: int) -> dict:
    """Resident memory added by building and enrolling ``clients`` clients (in this process)."""
    data = shifted_digits()
    torch.set_num_threads(1)
    warm_up = build_programs(build_federation(idle_config(kind, 200), dataset=data))  # imports, caches
    InProcessTransport().enrol(warm_up.server, warm_up.clients)
    del warm_up
    before = rss_bytes()
    fed = build_federation(idle_config(kind, clients), dataset=data)
    programs = build_programs(fed)
    held = eager_clients(fed) if layout == "eager" else programs.clients
    InProcessTransport().enrol(programs.server, held)
    after = rss_bytes()
    return {"kind": kind, "layout": layout, "clients": clients, "added_bytes": after - before}


def idle(args: argparse.Namespace) -> None:
    data = shifted_digits()
    print(f"data: {data.info.name}, {len(data.train_x):,} rows of {data.train_x[0].numel() * 4:,} bytes")
    print("resident memory added by N enrolled clients that have not been sampled (fresh process each):")
    for kind in ("plain", "secagg", "dp"):
        added = {}
        for layout in ("eager", "pool"):
            for clients in args.sizes:
                command = [sys.executable, __file__, "idle-one", kind, layout, str(clients)]
                result = subprocess.run(command, check=True, capture_output=True, text=True)
                measured = json.loads(result.stdout.strip().splitlines()[-1])
                added[layout, clients] = measured["added_bytes"]
        small, large = args.sizes
        for layout in ("eager", "pool"):
            slope = (added[layout, large] - added[layout, small]) / (large - small)
            print(
                f"  {kind:6} {layout:5}  {small:,} clients +{added[layout, small] / 2**20:6.1f} MiB   "
                f"{large:,} clients +{added[layout, large] / 2**20:6.1f} MiB   "
                f"per client {slope:7,.0f} bytes"
            )
    average = len(data.train_x) * data.train_x[0].numel() * 4 / args.sizes[1]
    print(f"  (a client's examples: {average:,.0f} bytes on average among {args.sizes[1]:,})")


# ---- one large round ---------------------------------------------------------------------------


def secagg_config(args: argparse.Namespace) -> RunConfig:
    return RunConfig(
        dataset="mnist-sample",
        model="mlp",
        clients=args.clients,
        rounds=1,
        workers=1,
        device="cpu",
        secagg=SecAggConfig(neighbors="auto", dropout_rate=args.dropout_rate),
    )


def plain_config(args: argparse.Namespace) -> RunConfig:
    return RunConfig(
        dataset="mnist",
        model="cnn",
        clients=args.clients,
        clients_per_round=args.clients_per_round,
        rounds=1,
        workers=1,
        device="cpu",
    )


def one_round(config: RunConfig, data: Dataset) -> None:
    torch.set_num_threads(1)
    started = time.perf_counter()
    fed = build_federation(config, dataset=data)
    built = time.perf_counter() - started
    before = rss_bytes()
    params = sum(p.numel() for p in fed.eval_model.parameters())
    print(f"data: {data.info.name}, {len(data.train_x):,} training rows")
    print(f"model: {config.model}, {params:,} parameters")
    if config.secagg is not None:
        chosen = config.secagg.chosen_parameters(config.sampled_clients)
        graph = "complete graph" if chosen.neighbors is None else f"{chosen.neighbors} neighbours"
        print(
            f"secagg auto for {config.sampled_clients} clients: {graph}, threshold {chosen.threshold}, "
            f"{chosen.max_colluders} colluders; simulated dropout {config.secagg.dropout_rate}, "
            f"{config.secagg.bits}-bit ring"
        )
    started = time.perf_counter()
    history = run_simulation(config, federation=fed)
    wall = time.perf_counter() - started
    record = history.records[-1]
    peak = peak_rss_bytes()
    print(f"clients {config.clients:,}, sampled {record.clients:,}, summed {record.survivors:,}")
    print(f"status {record.status.value}; federation built in {built:.1f} s")
    print(f"the round (enrolment, training, aggregation, evaluation): {wall:.1f} s")
    print(f"RSS before the round {before / 2**30:.2f} GiB, peak {peak / 2**30:.2f} GiB")
    sampled = max(record.clients, 1)
    aggregation = record.aggregation
    print(
        f"bytes per sampled client: up {record.bytes_up / sampled:,.0f} (max "
        f"{aggregation.get('bytes_up_per_client', 0):,}), down {record.bytes_down / sampled:,.0f}; "
        f"the float32 model is {aggregation.get('model_bytes', 0):,}"
    )
    if "dropouts" in aggregation:
        print(f"dropouts per step: {dict(aggregation['dropouts'])}")
    print(
        f"mean client compute {aggregation.get('client_seconds', 0):.3f} s per client (all turns), "
        f"server {aggregation.get('server_seconds', 0):.1f} s"
    )
    if record.evaluation is not None and record.evaluation.accuracy is not None:
        print(f"test accuracy after the round {record.evaluation.accuracy:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    modes = parser.add_subparsers(dest="mode", required=True)
    idle_mode = modes.add_parser("idle", help="memory of idle clients, eager vs pool")
    idle_mode.add_argument("--sizes", type=int, nargs=2, default=[1_000, 10_000])
    one = modes.add_parser("idle-one", help="(internal) one idle measurement, as JSON")
    one.add_argument("kind", choices=["plain", "secagg", "dp"])
    one.add_argument("layout", choices=["eager", "pool"])
    one.add_argument("clients", type=int)
    secagg = modes.add_parser("secagg", help="a 1,000-client SecAgg+ round")
    secagg.add_argument("--clients", type=int, default=1_000)
    secagg.add_argument("--dropout-rate", type=float, default=0.1)
    plain = modes.add_parser("plain", help="a 10,000-client plain round")
    plain.add_argument("--clients", type=int, default=10_000)
    plain.add_argument("--clients-per-round", type=int, default=None, help="(default: all)")
    args = parser.parse_args()
    warnings.simplefilter("ignore")  # Opacus' and torch's notices; the figures are the output
    if args.mode == "idle":
        idle(args)
    elif args.mode == "idle-one":
        print(json.dumps(measure_idle(args.kind, args.layout, args.clients)))
    elif args.mode == "secagg":
        one_round(secagg_config(args), upscaled_digits())
    else:
        one_round(plain_config(args), shifted_digits())


if __name__ == "__main__":
    main()
