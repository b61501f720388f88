"""The field-to-flag table: which ``securefl train`` flag sets which :class:`RunConfig` field.

Library errors name a run parameter by its field path in backticks (`` `secagg.bits` ``, see
:mod:`securefl.errors`); :func:`render` turns each such path into the flag that sets it before the
CLI prints the message, so the library never needs to know its flags.

A flag is its setting name (:data:`securefl.config.SETTINGS`, the TOML key) with dashes: the table
is derived from that one list, and a test checks it against the options ``securefl train`` has.
``securefl audit``'s own parameters are the fields of :class:`~securefl.audit.AuditConfig`
(:data:`AUDIT_FIELD_TO_FLAG`, checked against the audit command's options), and the output
directory's are ``out`` and ``overwrite`` (:data:`OUTPUT_FLAGS`); the three tables share no name,
so :func:`render` uses them all.  ``securefl attack`` maps its parameters itself
(:func:`securefl.cli.attack.render_attack`).
"""

from __future__ import annotations

import dataclasses
import re

from securefl.audit import AuditConfig
from securefl.config import SETTINGS

FIELD_TO_FLAG: dict[str, str] = {path: "--" + name.replace("_", "-") for name, path in SETTINGS.items()}
"""Field path of :class:`~securefl.config.RunConfig` -> ``securefl train`` flag, e.g.
``secagg.bits`` -> ``--secagg-bits``, ``central_dp.noise_multiplier`` ->
``--central-noise-multiplier``, ``dp`` -> ``--dp``."""

AUDIT_FIELD_TO_FLAG: dict[str, str] = {
    **{f.name: "--" + f.name.replace("_", "-") for f in dataclasses.fields(AuditConfig) if f.name != "run"},
    "weakness": "--break",
    "weakness.variant": "--break",
    "weakness.factor": "--break-factor",
}
"""Field path of :class:`~securefl.audit.AuditConfig` (its ``run`` aside: those are
:data:`FIELD_TO_FLAG`'s) -> ``securefl audit`` flag, e.g. ``canary_scale`` -> ``--canary-scale``,
``weakness`` (a :class:`~securefl.audit.Break`) -> ``--break``."""

OUTPUT_FLAGS: dict[str, str] = {"out": "--out", "overwrite": "--overwrite"}
"""The parameters of :func:`securefl.fl.history.check_output_dir`: the same flags in every command."""

_TABLE = {**FIELD_TO_FLAG, **AUDIT_FIELD_TO_FLAG, **OUTPUT_FLAGS}

_BACKTICKED = re.compile(r"`([A-Za-z_][A-Za-z0-9_.]*)`")


def render(message: str) -> str:
    """``message`` with every backticked field path (of a run, an audit or the output directory)
    replaced by its flag.

    Backticked text that is not a field path (`` `securefl datasets` ``) is left as it is.
    """
    return _BACKTICKED.sub(lambda match: _TABLE.get(match.group(1), match.group(0)), message)


__all__ = ["AUDIT_FIELD_TO_FLAG", "FIELD_TO_FLAG", "OUTPUT_FLAGS", "render"]
