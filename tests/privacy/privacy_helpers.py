"""Small, seeded federations for the privacy tests (fast enough for CI: a few ms per step)."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
from opacus.accountants import create_accountant

from securefl.config import DPConfig
from securefl.fl.types import ClientShard
from securefl.fl.vectors import to_vector
from securefl.models import build_model
from securefl.privacy import DPSGDTrainer

FEATURES = 13
CLASSES = 3


def make_shards(sizes: Sequence[int], *, seed: int = 0) -> list[ClientShard]:
    generator = torch.Generator().manual_seed(seed)
    return [
        ClientShard(
            client_id=client_id,
            x=torch.randn(size, FEATURES, generator=generator),
            y=torch.randint(0, CLASSES, (size,), generator=generator),
        )
        for client_id, size in enumerate(sizes)
    ]


def make_model(seed: int = 0) -> torch.nn.Module:
    return build_model("mlp", input_shape=(FEATURES,), num_outputs=CLASSES, seed=seed)


def make_trainer(
    shards: Sequence[ClientShard],
    *,
    config: DPConfig,
    rounds: int = 5,
    local_epochs: int = 1,
    batch_size: int = 8,
    lr: float = 0.1,
    momentum: float = 0.0,
    model: torch.nn.Module | None = None,
    task: str = "classification",
    grad_sample_mode: str = "ew",
    seed: int | None = 0,
) -> DPSGDTrainer:
    """A trainer whose DP randomness is fixed by ``seed`` (None: the OS-seeded default)."""
    return DPSGDTrainer(
        model=model if model is not None else make_model(),
        task=task,
        config=config,
        client_sizes={shard.client_id: len(shard) for shard in shards},
        rounds=rounds,
        local_epochs=local_epochs,
        batch_size=batch_size,
        lr=lr,
        momentum=momentum,
        grad_sample_mode=grad_sample_mode,
        seed=seed,
    )


def train(trainer: DPSGDTrainer, shard: ClientShard, round_index: int, params: torch.Tensor | None = None):
    """One round; the simulation's generator passed in is seeded, and DP-SGD must not use it."""
    if params is None:
        params = to_vector(make_model().parameters())
    return trainer.train(
        global_params=params,
        shard=shard,
        round_index=round_index,
        generator=torch.Generator().manual_seed(100 * round_index + shard.client_id),
    )


def opacus_epsilon(*, accountant: str, noise: float, sample_rate: float, steps: int, delta: float) -> float:
    """ε from an Opacus accountant stepped the way PrivacyEngine's optimizer hook steps it."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = create_accountant(mechanism=accountant)
    for _ in range(steps):
        reference.step(noise_multiplier=noise, sample_rate=sample_rate)
    return reference.get_epsilon(delta=delta)
