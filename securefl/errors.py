"""One exception tree for securefl.

Every error a user can cause derives from :class:`ConfigError` (the CLI maps it to exit code 2 with
its message and no traceback).  Protocol errors follow h11's split: a :class:`LocalProtocolError`
means *we* were asked to break the protocol, a :class:`RemoteProtocolError` means a peer did.
Messages say what to do, not just what went wrong.

Messages name parameters in the library's own terms, never as CLI flags: a run parameter is its
:class:`~securefl.config.RunConfig` field path in backticks — "raise `secagg.bits`", "set
`dp.delta` below 1/n", "lower `lr`", "use a positive `central_dp.noise_multiplier`", "`dp` needs
..." for a section.  The CLI prints a :class:`ConfigError` through
:func:`securefl.cli.flags.render`, which turns each such path into its flag (``--secagg-bits``,
``--delta``, ``--lr``, ``--central-noise-multiplier``, ``--dp``); backticked text that is not a
field path is printed as it is.  Parameters of a command other than ``train`` (``securefl attack``
/ ``audit``) are named by their own parameter names in backticks, and that command maps them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class SecureFLError(Exception):
    """Base class of every error securefl raises on purpose."""


class ConfigError(SecureFLError, ValueError):
    """Bad user input: an unknown name, a value out of range, a file that cannot be read."""


class DataError(ConfigError):
    """A data set cannot be found or read where the user pointed us."""


class LedgerError(ConfigError):
    """A privacy ledger that cannot be taken over: malformed, kept for another client or under
    other privacy settings, or one that has spent less than the ledger held (a privacy ledger never
    goes backwards)."""


class OutputExistsError(ConfigError):
    """The output directory already holds files and overwriting was not asked for."""


class ProtocolError(SecureFLError):
    """Something went wrong inside the secure-aggregation protocol."""


class LocalProtocolError(ProtocolError):
    """We were asked to do something the protocol forbids (e.g. reveal both shares of a peer)."""


class RemoteProtocolError(ProtocolError):
    """A peer sent something invalid: malformed, tampered, replayed or from the wrong round."""


class DecodeError(RemoteProtocolError):
    """Bytes that do not decode to a valid protocol message."""


class ThresholdNotMetError(ProtocolError):
    """Fewer than the threshold of clients are left: the round aborts and reveals nothing."""


class RoundAbortedError(ThresholdNotMetError):
    """A round ended without releasing a sum (too few clients left at some step, or a round that
    cannot run at its size): the one "round aborted" error of securefl.

    ``step`` is where it aborted (a secure-aggregation :class:`~securefl.protocols.secagg.Step`,
    or ``None`` before any protocol step); ``details`` what the server observed until then
    (dropouts, traffic), merged into the round's record; ``stats`` and ``transcript`` are the
    secure-aggregation driver's statistics and transcript when it raised it.
    """

    def __init__(
        self,
        message: str,
        *,
        step: Any = None,
        details: Mapping[str, Any] | None = None,
        stats: Any = None,
        transcript: tuple[Any, ...] = (),
    ) -> None:
        super().__init__(message)
        self.step = step
        self.details = dict(details or {})
        self.stats = stats
        self.transcript = transcript


class TrainingDivergedError(ConfigError):
    """A run's model or loss became NaN or infinite: its settings (learning rate, ...) do not train
    this model.  ``securefl train`` keeps the rounds before it and exits 2; a result that needs the
    whole run (``securefl audit``) raises this instead of reporting on a run that did not happen."""


class CheckpointError(ConfigError):
    """A server checkpoint that cannot be resumed from: missing, truncated or corrupt (its digest
    does not match), of another federation, or contradicting its round marker.  Nothing is
    deleted or overwritten: the message says which file and what to do."""


class NonFiniteUpdateError(SecureFLError, ValueError):
    """A client's update holds NaN or inf (its training diverged): it has no fixed-point encoding.

    Secure aggregation treats that client as dropped for the round; elsewhere, lower the learning
    rate or clip the update before it is encoded.
    """


class PrivacyBudgetExceeded(SecureFLError):
    """A client's next round would push its privacy loss past the budget."""


class ModelRefusedError(SecureFLError):
    """A client refused the global model the server sent (another architecture, or weights with the
    structure of a known malicious-server attack): it does not train on it or send anything.

    Deliberate in a federation whose config pins the model; to study the attacks anyway, turn the
    client-side check off (``securefl attack --no-pinning`` / ``--no-parameter-checks``).
    """


class AccessRefusedError(ConfigError):
    """A federation will not let this party in, or this party does not trust the other side: a
    client certificate from another CA, not enrolled or revoked, a server certificate the client's
    CA did not issue (or not for the address dialled), a TLS version older than 1.3.  Retrying
    cannot help; the message says what to fix."""


class ServerUnreachableError(SecureFLError):
    """A client kept failing to reach its server, retrying with backoff, for longer than it was
    told to keep trying."""


class ClientsUnavailableError(SecureFLError):
    """A deployed server waited its join timeout and too few clients came to run a round, while
    enrolled clients were still missing: it stops with its checkpoint kept, to be resumed when
    they are back."""
