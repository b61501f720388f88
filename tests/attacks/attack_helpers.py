"""Shared test helpers: one victim round played through securefl's client code."""

from __future__ import annotations

import torch

from securefl.attacks.defences import Defence, NoDefence
from securefl.attacks.observation import Observation, PublicKnowledge
from securefl.fl.types import ClientShard
from securefl.models import build_model


def server_model(name: str, input_shape, num_classes: int, *, seed: int, uniform: bool, dtype=torch.float64):
    model = build_model(name, input_shape=input_shape, num_outputs=num_classes, seed=seed)
    if uniform:  # the DLG paper's initialisation, which a curious server may choose
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.copy_(torch.rand(parameter.shape, generator=generator) - 0.5)
    return model.to(dtype)


def observe(
    model_name: str,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    num_classes: int = 10,
    seed: int = 0,
    uniform: bool = True,
    dtype=torch.float64,
    local_steps: int = 1,
    learning_rate: float = 0.1,
    defence: Defence | None = None,
    others: tuple[ClientShard, ...] = (),
) -> Observation:
    public = PublicKnowledge(
        model_name=model_name,
        input_shape=tuple(x.shape[1:]),
        num_classes=num_classes,
        batch_size=x.shape[0],
        local_steps=local_steps,
        learning_rate=learning_rate,
    )
    observation, _ = (defence or NoDefence()).observe(
        public=public,
        server_model=server_model(
            model_name, tuple(x.shape[1:]), num_classes, seed=seed, uniform=uniform, dtype=dtype
        ),
        victim=ClientShard(0, x, y),
        others=others,
        seed=seed,
    )
    return observation
