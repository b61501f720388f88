"""Architecture pinning: the federation fixes the model; a client refuses any other.

Fowl et al.'s imprint block (ICLR 2022) and most malicious-server attacks add or reshape layers.
A client that knows the architecture the federation agreed on -- the model's name and every
parameter's name and shape, built from the config (:func:`pin_for`) -- refuses a model that
differs before training on it, with :class:`~securefl.errors.ModelRefusedError` and a log line
that names the first difference.  What remains possible is malicious *weights* in the pinned
architecture (the ``mlp`` placement of :mod:`securefl.attacks.imprint`): that is what
:mod:`securefl.defences.checks` is for.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from torch import nn

from securefl.errors import ModelRefusedError
from securefl.models import build_model

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ArchitecturePin:
    """The agreed model: its name and ``(parameter name, shape)`` in order."""

    model_name: str
    shapes: tuple[tuple[str, tuple[int, ...]], ...]

    @classmethod
    def of(cls, model_name: str, model: nn.Module) -> ArchitecturePin:
        return cls(model_name, tuple((n, tuple(p.shape)) for n, p in model.named_parameters()))

    def check(self, model: nn.Module, *, client_id: int | None = None) -> None:
        """Raise :class:`ModelRefusedError` (and log why) unless ``model`` has exactly these
        parameters, by name and shape, in this order.

        Only names and shapes are compared: a module's code, hooks and buffers are not looked at.
        So the module a client *runs* must be one it built itself from the config, loaded with
        nothing but the server's flat parameter vector (as ``securefl train`` and the attack
        path of :mod:`securefl.attacks.malicious` do); passing the server's own module object
        here and then training it would run whatever code came with it."""
        received = tuple((n, tuple(p.shape)) for n, p in model.named_parameters())
        if received == self.shapes:
            return
        expected_names = [name for name, _ in self.shapes]
        received_names = [name for name, _ in received]
        if received_names != expected_names:
            extra = [n for n in received_names if n not in expected_names]
            missing = [n for n in expected_names if n not in received_names]
            difference = f"parameters added {extra[:3]}, missing {missing[:3]}"
        else:
            name, shape = next((n, s) for (n, s), (_, e) in zip(received, self.shapes, strict=True) if s != e)
            difference = f"{name} has shape {shape}, the pinned {dict(self.shapes)[name]}"
        who = "a client" if client_id is None else f"client {client_id}"
        log.warning("%s refuses the global model: not the pinned %r (%s)", who, self.model_name, difference)
        raise ModelRefusedError(
            f"the server sent a model that is not the pinned {self.model_name!r} architecture "
            f"({difference}): refused"
        )


def pin_for(model_name: str, *, input_shape: tuple[int, ...], num_outputs: int) -> ArchitecturePin:
    """The pin of the federation's model, built from its config (the weights do not matter)."""
    return ArchitecturePin.of(
        model_name, build_model(model_name, input_shape=input_shape, num_outputs=num_outputs)
    )


__all__ = ["ArchitecturePin", "pin_for"]
