"""The messages of a federated round: everything the server program and a client program say.

The server and its clients talk only through these frozen values, encoded to bytes by
:mod:`securefl.fl.codec` (even in one process, so a simulation carries the exact bytes a network
would):

- :class:`Availability` (client -> server): whether the client can take part in rounds; sent when
  it joins and again when that changes (its privacy budget is spent).
- :class:`TrainRequest` (server -> client): the round's global model, training settings and the
  aggregation's setup for this client.
- :class:`AggregationMessage` (both ways): one message of the aggregation protocol (the client's
  contribution for a plain sum; a secure-aggregation message otherwise), as opaque bytes.
- :class:`Decline` (client -> server): the client will not take part in this round, and why.
- :class:`PlainContribution`: the payload of a plain sum's :class:`AggregationMessage` (what
  leaves a client that does not use secure aggregation).
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

import torch

from securefl.errors import LocalProtocolError

Setting = int | float | str | bool
"""A value of the round's training settings (learning rate, batch size, ...)."""

MAX_CLIENT_ID = 2**32 - 1


def _check_id(value: int, what: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_CLIENT_ID:
        raise LocalProtocolError(f"{what} {value!r} must be an integer in [0, 2^32)")


def _check_round(value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**64:
        raise LocalProtocolError(f"round index {value!r} must be an integer in [0, 2^64)")


def _check_vector(value: torch.Tensor, what: str) -> None:
    if not isinstance(value, torch.Tensor) or value.dim() != 1 or value.dtype != torch.float32:
        raise LocalProtocolError(f"{what} must be a one-dimensional float32 tensor")


@dataclass(frozen=True)
class Availability:
    """A client joins (or updates): ``can_train`` False takes it out of sampling for good."""

    client_id: int
    can_train: bool

    def __post_init__(self) -> None:
        _check_id(self.client_id, "client id")
        if not isinstance(self.can_train, bool):
            raise LocalProtocolError(f"can_train {self.can_train!r} must be a bool")


@dataclass(frozen=True, eq=False)
class TrainRequest:
    """The server asks ``client_id`` to train round ``round_index`` from ``params``.

    ``settings`` are sorted ``(name, value)`` pairs; ``aggregation`` is the aggregation's setup
    for this client (empty for a plain sum, the encoded round setup for secure aggregation).
    """

    round_index: int
    client_id: int
    params: torch.Tensor
    settings: tuple[tuple[str, Setting], ...]
    aggregation: bytes

    def __post_init__(self) -> None:
        _check_round(self.round_index)
        _check_id(self.client_id, "client id")
        _check_vector(self.params, "the global parameters")
        names = [name for name, _ in self.settings]
        if names != sorted(set(names)):
            raise LocalProtocolError("settings must be sorted by name, each name once")

    @property
    def settings_dict(self) -> dict[str, Setting]:
        return dict(self.settings)


@dataclass(frozen=True)
class AggregationMessage:
    """One aggregation-protocol message for or from ``client_id`` in round ``round_index``."""

    round_index: int
    client_id: int
    payload: bytes

    def __post_init__(self) -> None:
        _check_round(self.round_index)
        _check_id(self.client_id, "client id")


class DeclineReason(enum.StrEnum):
    """Why a client does not take part in a round it was asked to train."""

    BUDGET_SPENT = "budget_spent"
    """Its next round would exceed its privacy budget."""
    NON_FINITE_UPDATE = "non_finite_update"
    """Its update holds NaN or inf (training diverged): it has no fixed-point encoding."""
    REFUSED = "refused"
    """It refused what the server sent (the round setup, the model)."""


@dataclass(frozen=True)
class Decline:
    """``client_id`` does not take part in round ``round_index``; ``detail`` says why, in words."""

    round_index: int
    client_id: int
    reason: DeclineReason
    detail: str = ""

    def __post_init__(self) -> None:
        _check_round(self.round_index)
        _check_id(self.client_id, "client id")
        object.__setattr__(self, "reason", DeclineReason(self.reason))


@dataclass(frozen=True, eq=False)
class PlainContribution:
    """A plain sum's payload: ``weight · delta``, the weight and the training loss, in clear."""

    weighted_delta: torch.Tensor
    weight: float
    train_loss: float

    def __post_init__(self) -> None:
        _check_vector(self.weighted_delta, "the weighted update")
        if not (math.isfinite(self.weight) and self.weight >= 0):
            raise LocalProtocolError(f"weight {self.weight!r} must be a finite number >= 0")


Message = Availability | TrainRequest | AggregationMessage | Decline | PlainContribution
