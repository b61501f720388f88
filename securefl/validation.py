"""The one set of value checks behind every configuration of securefl.

Each helper raises :class:`~securefl.errors.ConfigError` in the message convention of
:mod:`securefl.errors`: ``what`` is how the message names the value (``"noise multiplier"``, or a
backticked parameter name), ``path`` the parameter that sets it, in backticks in the remedy (a
:class:`~securefl.config.RunConfig` field path, or a command's own parameter name, which that
command maps to its flag).  :mod:`securefl.config` and the attacks' configurations
(:mod:`securefl.attacks`) validate with these, once, on construction; library classes keep only
the invariants a configuration cannot know.
"""

from __future__ import annotations

import math

from securefl.errors import ConfigError


def require(condition: bool, message: str) -> None:
    """Raise :class:`ConfigError` with ``message`` unless ``condition``."""
    if not condition:
        raise ConfigError(message)


def require_finite(value: float, what: str, remedy: str) -> None:
    """Refuse NaN and ±inf before any comparison (``nan < 0`` and ``inf > 0`` would mislead)."""
    require(math.isfinite(value), f"{what} {value} is not a finite number: {remedy}")


def require_positive(value: float, what: str, path: str) -> None:
    """A finite ``value > 0``."""
    remedy = f"use a positive `{path}`"
    require_finite(value, what, remedy)
    require(value > 0, f"{what} {value} <= 0: {remedy}")


def require_non_negative(value: float, what: str, path: str) -> None:
    """A finite ``value >= 0``."""
    remedy = f"use `{path}` 0 or more"
    require_finite(value, what, remedy)
    require(value >= 0, f"{what} {value} < 0: {remedy}")


def require_at_least(value: int, least: int, what: str, path: str) -> None:
    """``value >= least`` (counts: clients, rounds, threads, ...)."""
    require(value >= least, f"{what} {value} < {least}: use `{path}` {least} or more")


def require_at_most(value: float, most: float, what: str, path: str) -> None:
    """``value <= most``."""
    require(value <= most, f"{what} {value:g} > {most:g}: use a smaller `{path}`")


__all__ = [
    "require",
    "require_at_least",
    "require_at_most",
    "require_finite",
    "require_non_negative",
    "require_positive",
]
