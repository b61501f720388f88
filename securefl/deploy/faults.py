"""The one fault-injection hook of the deployed programs: a process that signals itself at a
chosen point, so a test can crash a client or the server exactly where it wants.

``SECUREFL_FAULT=<SIGNAL>@<n>`` (e.g. ``SIGKILL@3``, ``SIGSTOP@1``) in a program's environment:

- ``securefl client`` raises ``SIGNAL`` on itself just before its ``n``-th batch of replies
  leaves, i.e. after it computed its answer to the ``n``-th message it answers (counting from 1)
  and after its privacy ledger is on disk, before a byte of the answer is sent.  Under secure
  aggregation (Bonawitz et al., CCS 2017) a client answers each of a round's steps once (four
  steps in passive mode, five with the consistency check), so with every client in every round
  ``n = 4·(round − 1) + step + 1``.  ``SIGKILL`` is a crash at that step; ``SIGSTOP`` a machine
  that freezes there: a straggler, until someone sends it ``SIGCONT``.
- ``securefl server`` raises ``SIGNAL`` on itself right after the checkpoint of round ``n`` is
  written: a coordinator that crashes between rounds.

Nothing else reads the variable; an unset or empty one changes nothing, and a malformed one is a
:class:`~securefl.errors.ConfigError` at start-up (a test that meant to inject a fault and did
not would pass for the wrong reason).
"""

from __future__ import annotations

import os
import re
import signal
from collections.abc import Mapping
from dataclasses import dataclass

from securefl.errors import ConfigError

FAULT_VARIABLE = "SECUREFL_FAULT"

_FAULT = re.compile(r"(SIG[A-Z0-9]+)@([1-9][0-9]{0,8})")


@dataclass(frozen=True)
class Fault:
    """Raise ``signal`` on this process at point ``at`` (what counts as a point is the program's)."""

    signal: signal.Signals
    at: int

    def strike(self, point: int) -> None:
        """At ``point``: signal this process if it is the chosen one (``SIGKILL`` never returns)."""
        if point == self.at:
            os.kill(os.getpid(), self.signal)


def fault_from_environment(environment: Mapping[str, str] | None = None) -> Fault | None:
    """The fault :data:`FAULT_VARIABLE` asks for, or ``None`` when it is unset or empty."""
    value = (os.environ if environment is None else environment).get(FAULT_VARIABLE, "")
    if not value:
        return None
    match = _FAULT.fullmatch(value)
    names = {member.name: member for member in signal.Signals}
    if match is None or match.group(1) not in names:
        raise ConfigError(
            f"{FAULT_VARIABLE}={value!r} is not <SIGNAL>@<n> (e.g. SIGKILL@3): unset it, or name a "
            "signal and a positive count"
        )
    return Fault(names[match.group(1)], int(match.group(2)))


__all__ = ["FAULT_VARIABLE", "Fault", "fault_from_environment"]
