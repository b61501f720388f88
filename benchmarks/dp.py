"""DP-SGD round time ÷ plain round time, measured side by side in one process.

One round = every one of the 10 clients (mnist-sample, IID) trains locally from the same global
model with the run defaults (CNN, 2 local epochs, batch 16, lr 0.05, momentum 0.5): once with
the plain :class:`~securefl.fl.training.LocalSGDTrainer`, once with
:class:`~securefl.privacy.DPSGDTrainer` (Opacus DP-SGD, including the per-client budget check
and ε accounting a round costs).  Plain and DP rounds alternate, on one thread, so both see the
same machine load; the ratio of the medians is printed (and the ratio of the minima, which is the
least disturbed by other processes).

    .venv/bin/python benchmarks/dp.py [--repeats 5] [--grad-sample-mode ew|hooks|both] [--batch-size 16]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from securefl.config import DPConfig
from securefl.data import load_dataset, partition
from securefl.fl.training import LocalSGDTrainer
from securefl.fl.types import ClientShard
from securefl.fl.vectors import to_vector
from securefl.models import build_model
from securefl.privacy import DPSGDTrainer

CLIENTS = 10
EPOCHS = 2
BATCH = 16
LR = 0.05
MOMENTUM = 0.5


def one_round(trainer, shards: list[ClientShard], params: torch.Tensor, round_index: int) -> float:
    started = time.perf_counter()
    for shard in shards:
        if not trainer.can_train(shard.client_id):
            raise RuntimeError("the benchmark's budget ran out")
        trainer.train(
            global_params=params,
            shard=shard,
            round_index=round_index,
            generator=torch.Generator().manual_seed(1000 * round_index + shard.client_id),
        )
    if hasattr(trainer, "round_metrics"):
        trainer.round_metrics()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="rounds timed per trainer")
    parser.add_argument("--grad-sample-mode", choices=("ew", "hooks", "both"), default="both")
    parser.add_argument("--batch-size", type=int, default=BATCH, help="local batch size B")
    args = parser.parse_args()
    torch.set_num_threads(1)

    dataset = load_dataset("mnist-sample")
    parts = partition(dataset.train_y, scheme="iid", num_clients=CLIENTS, seed=0)
    shards = [
        ClientShard(client_id=i, x=dataset.train_x[idx].contiguous(), y=dataset.train_y[idx].contiguous())
        for i, idx in enumerate(parts)
    ]

    def model() -> torch.nn.Module:
        return build_model("cnn", input_shape=dataset.input_shape, num_outputs=dataset.num_outputs, seed=0)

    params = to_vector(model().parameters())
    trainers = {
        "plain": LocalSGDTrainer(
            model=model(),
            task=dataset.task,
            local_epochs=EPOCHS,
            batch_size=args.batch_size,
            lr=LR,
            momentum=MOMENTUM,
        )
    }
    modes = ("ew", "hooks") if args.grad_sample_mode == "both" else (args.grad_sample_mode,)
    for mode in modes:
        trainers[f"dp-{mode}"] = DPSGDTrainer(
            model=model(),
            task=dataset.task,
            config=DPConfig(noise_multiplier=1.0, max_grad_norm=1.0),
            client_sizes={s.client_id: len(s) for s in shards},
            rounds=args.repeats + 1,
            local_epochs=EPOCHS,
            batch_size=args.batch_size,
            lr=LR,
            momentum=MOMENTUM,
            grad_sample_mode=mode,
        )

    times: dict[str, list[float]] = {name: [] for name in trainers}
    for trainer in trainers.values():  # warm-up round, not timed
        one_round(trainer, shards, params, 0)
    for repeat in range(1, args.repeats + 1):
        for name, trainer in trainers.items():
            times[name].append(one_round(trainer, shards, params, repeat))

    sizes = sorted({len(s) for s in shards})
    print(
        f"mnist-sample, cnn, {CLIENTS} clients x {sizes} examples, E={EPOCHS}, B={args.batch_size}, "
        f"threads={torch.get_num_threads()}, {args.repeats} timed rounds each (alternating)"
    )
    plain_median, plain_min = statistics.median(times["plain"]), min(times["plain"])
    for name, values in times.items():
        median, fastest = statistics.median(values), min(values)
        line = f"{name:9s} round median {median:6.3f} s  min {fastest:6.3f} s"
        if name != "plain":
            line += f"  ratio (DP / plain): median {median / plain_median:.2f}  min {fastest / plain_min:.2f}"
        print(line)


if __name__ == "__main__":
    main()
