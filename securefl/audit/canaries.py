"""White-box gradient canaries: each canary owns one model coordinate and pushes only it.

Dirac canaries (Nasr, Hayes, Steinke, Balle, Tramèr, Jagielski, Carlini, Terzis, "Tight Auditing
of Differentially Private Machine Learning", USENIX Security 2023): the strongest examples for an
audit of DP-SGD have a gradient that is zero on every coordinate but one, so the noise on that
coordinate is all that hides them.  We build them without touching the trainer:

- the audited model is the run's model wrapped in a :class:`CanaryModel`, which adds ``m`` canary
  coordinates (``Linear(m, 1)`` initialised to zero, at the end of the parameter vector) and
  reads a flat input ``[x, real flag, one-hot canary slot]``;
- a real example (flag 1, empty slot) goes through the original model and never touches a canary
  coordinate; canary ``j`` (flag 0, slot ``j`` set) has a per-example gradient of exactly
  ``-norm · e_j`` on canary coordinate ``j`` and zero everywhere else; its loss value is that of
  zero logits, and its gradient is ``s - s.detach()``, constant whatever the weights are;
- a *blank* row (flag 0, empty slot) has gradient zero everywhere.

Black-box canaries (:meth:`CanaryLayout.mislabelled_rows`) are ordinary examples of the canary
client with a wrong label, scored from the final model's loss alone; they are much weaker
(Steinke et al. 2023, black-box experiments) and exist to show what an observer of the model alone learns.

An excluded canary is a blank row rather than a missing one, and an excluded canary client sends a
zero update: with Poisson sampling at a fixed rate and a fixed expected batch (or client count)
in the denominator, a zero-gradient row is exactly the "remove one" neighbour DP-SGD and DP-FedAvg
are analysed for, and the shard size (which sets the sample rate and is public) does not reveal
the inclusion bits.

Canary gradients are crafted with norm ``scale × clip``: correct clipping brings them to exactly
the clip norm, the worst case the accountant allows; a clipping bug lets the full size through.
"""

from __future__ import annotations

import math
import secrets

import numpy as np
import torch
from torch import nn

from securefl.data import Dataset
from securefl.data.datasets import DatasetInfo
from securefl.fl.types import ClientShard, ClientTrainer, Update


def draw_inclusion(canaries: int) -> np.ndarray:
    """Each canary in with probability 1/2, from the operating system's randomness (never seeded,
    so no configuration value lets anyone recompute the bits the audit is scored against)."""
    rng = secrets.SystemRandom()
    return np.array([rng.random() < 0.5 for _ in range(canaries)], dtype=bool)


class CanaryModel(nn.Module):
    """``base`` plus ``canaries`` Dirac coordinates; input rows are ``[x flat, flag, slot]``."""

    def __init__(self, base: nn.Module, *, input_shape: tuple[int, ...], canaries: int, num_outputs: int):
        super().__init__()
        self.base = base
        self.input_shape = tuple(input_shape)
        self.input_size = math.prod(self.input_shape)
        self.num_outputs = num_outputs
        self.canary = nn.Linear(canaries, 1, bias=False)
        nn.init.zeros_(self.canary.weight)

    def forward(self, rows: torch.Tensor) -> torch.Tensor:
        x = rows[:, : self.input_size].reshape(-1, *self.input_shape)
        flag = rows[:, self.input_size : self.input_size + 1]
        slots = rows[:, self.input_size + 1 :]
        push = self.canary(slots)
        # Value 0, gradient 1: the canary's loss gradient does not depend on the weights.
        push = nn.functional.pad(push - push.detach(), (0, self.num_outputs - 1))
        return self.base(x) * flag + push


class CanaryLayout:
    """Where the canaries live: the flat input rows and the canary coordinates of the vector."""

    def __init__(self, info: DatasetInfo, *, canaries: int, norm: float):
        if canaries < 2:
            raise ValueError(f"an audit needs at least 2 canaries, got {canaries}")
        self.info = info
        self.canaries = canaries
        self.input_size = math.prod(info.input_shape)
        self.width = self.input_size + 1 + canaries
        # |dL/ds| of one canary row: zero logits with label 0 (cross-entropy), or output 0 with
        # target 1 (squared error); the slot value scales it to the crafted norm.
        slope = 1 - 1 / info.num_outputs if info.task == "classification" else 2.0
        self.slot_value = norm / slope
        self.target = 0 if info.task == "classification" else 1.0

    def wrap(self, base: nn.Module) -> CanaryModel:
        return CanaryModel(
            base, input_shape=self.info.input_shape, canaries=self.canaries, num_outputs=self.info.num_outputs
        )

    def real_rows(self, x: torch.Tensor) -> torch.Tensor:
        rows = torch.zeros(len(x), self.width, dtype=torch.float32)
        rows[:, : self.input_size] = x.reshape(len(x), -1)
        rows[:, self.input_size] = 1.0
        return rows

    def canary_rows(self, included: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """One row per canary: canary ``j`` if included, a blank (zero-gradient) row if not."""
        rows = torch.zeros(self.canaries, self.width, dtype=torch.float32)
        chosen = torch.as_tensor(np.flatnonzero(included), dtype=torch.long)
        rows[chosen, self.input_size + 1 + chosen] = self.slot_value
        dtype = torch.int64 if self.info.task == "classification" else torch.float32
        return rows, torch.full((self.canaries,), self.target, dtype=dtype)

    def mislabelled_rows(
        self, x: torch.Tensor, y: torch.Tensor, included: np.ndarray, *, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Black-box canaries: the examples ``x`` with a wrong label each (Steinke et al. 2023,
        black box), as real rows if included and blank rows if not.

        Returns the training rows, the wrong labels and the probe rows (every canary as a real
        row), on which the final model's loss scores each canary.
        """
        if self.info.task != "classification":
            raise ValueError("mislabelled canaries need a classification task")
        shift = torch.randint(1, self.info.num_outputs, (len(y),), generator=generator)
        labels = (y + shift) % self.info.num_outputs
        probe = self.real_rows(x)
        rows = probe * torch.as_tensor(included, dtype=torch.float32)[:, None]
        return rows, labels, probe

    def augment(self, dataset: Dataset) -> Dataset:
        """The data set with every input as a real row (the test split evaluates the base model)."""
        info = DatasetInfo(
            name=dataset.info.name,
            description=f"{dataset.info.description} (audit rows with {self.canaries} canary slots)",
            task=dataset.info.task,
            input_shape=(self.width,),
            num_outputs=dataset.info.num_outputs,
            train_samples=dataset.info.train_samples,
            test_samples=dataset.info.test_samples,
            needs_data_dir=dataset.info.needs_data_dir,
            training=dataset.info.training,
            training_by_model=dataset.info.training_by_model,
        )
        return Dataset(
            info=info,
            train_x=self.real_rows(dataset.train_x),
            train_y=dataset.train_y,
            test_x=self.real_rows(dataset.test_x),
            test_y=dataset.test_y,
        )


class CanaryClientTrainer:
    """User-level canaries: clients ``first, first + 1, ...`` send a crafted update, the rest train.

    Canary client ``first + j`` sends ``norm`` on canary coordinate ``j`` if it is included and a
    zero update if not (see the module docstring); every other client trains with ``inner``.
    Implements :class:`~securefl.fl.types.ClientTrainer`.
    """

    def __init__(
        self, inner: ClientTrainer, *, first: int, included: np.ndarray, num_params: int, norm: float
    ) -> None:
        self.inner = inner
        self.first = first
        self.included = np.asarray(included, dtype=bool)
        self.num_params = num_params
        self.norm = norm

    def can_train(self, client_id: int) -> bool:
        return True if client_id >= self.first else self.inner.can_train(client_id)

    def train(
        self, *, global_params: torch.Tensor, shard: ClientShard, round_index: int, generator: torch.Generator
    ) -> Update:
        if shard.client_id < self.first:
            return self.inner.train(
                global_params=global_params, shard=shard, round_index=round_index, generator=generator
            )
        slot = shard.client_id - self.first
        delta = torch.zeros(self.num_params, dtype=global_params.dtype)
        if self.included[slot]:
            delta[self.num_params - len(self.included) + slot] = self.norm
        return Update(client_id=shard.client_id, delta=delta, num_samples=len(shard), train_loss=0.0)


__all__ = ["CanaryClientTrainer", "CanaryLayout", "CanaryModel", "draw_inclusion"]
