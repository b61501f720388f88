"""The field-to-flag table: which ``securefl train`` flag sets which :class:`RunConfig` field.

Library errors name a run parameter by its field path in backticks (`` `secagg.bits` ``, see
:mod:`securefl.errors`); :func:`render` turns each such path into the flag that sets it before the
CLI prints the message, so the library never needs to know its flags.

A flag is its setting name (:data:`securefl.config.SETTINGS`, the TOML key) with dashes: the table
is derived from that one list, and a test checks it against the options ``securefl train`` has.
"""

from __future__ import annotations

import re

from securefl.config import SETTINGS

FIELD_TO_FLAG: dict[str, str] = {path: "--" + name.replace("_", "-") for name, path in SETTINGS.items()}
"""Field path of :class:`~securefl.config.RunConfig` -> ``securefl train`` flag, e.g.
``secagg.bits`` -> ``--secagg-bits``, ``central_dp.noise_multiplier`` ->
``--central-noise-multiplier``, ``dp`` -> ``--dp``."""

_BACKTICKED = re.compile(r"`([A-Za-z_][A-Za-z0-9_.]*)`")


def render(message: str) -> str:
    """``message`` with every backticked field path replaced by its flag.

    Backticked text that is not a field path (`` `securefl datasets` ``) is left as it is.
    """
    return _BACKTICKED.sub(lambda match: FIELD_TO_FLAG.get(match.group(1), match.group(0)), message)


__all__ = ["FIELD_TO_FLAG", "render"]
