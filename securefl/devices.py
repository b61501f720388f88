"""Where a run trains and evaluates: ``auto`` (a CUDA GPU when torch sees one, else the CPU),
``cpu`` or ``cuda``.

Only the model's computation moves: local training (plain SGD and Opacus' DP-SGD engine),
evaluation and the attacks.  Secure aggregation, the message codec, DP noise for the server and the
server update stay on the CPU, and parameter vectors travel between the two programs as CPU
tensors, so a message is the same bytes whatever the device.
"""

from __future__ import annotations

import torch

from securefl.errors import ConfigError

DEVICES = ("auto", "cpu", "cuda")


def resolve_device(name: str, *, path: str = "device") -> torch.device:
    """The device ``name`` stands for on this machine; :class:`~securefl.errors.ConfigError` for a
    name not in :data:`DEVICES` and for ``cuda`` where torch sees no CUDA GPU.  ``path`` names the
    parameter in the message (a :class:`~securefl.config.RunConfig` field, or a command's own)."""
    if name not in DEVICES:
        raise ConfigError(f"unknown device {name!r}: set `{path}` to one of {', '.join(DEVICES)}")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            f"`{path}` cuda, but torch sees no CUDA GPU on this machine (torch {torch.__version__}, "
            f"built for CUDA {torch.version.cuda or 'none'}): use `{path}` cpu or auto"
        )
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


__all__ = ["DEVICES", "resolve_device"]
