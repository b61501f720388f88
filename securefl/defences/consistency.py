"""Model consistency: every client binds the model it received into the secure-aggregation session.

The attack it stops is Pasquini, Francati & Ateniese, "Eluding Secure Aggregation in Federated
Learning via Model Inconsistency" (CCS 2022): the server sends the target one model and everyone
else a model whose gradients vanish on the parameters it reads, so the secure sum equals the
target's update.  Secure aggregation alone cannot see this: the protocol sums vectors, whatever
model produced them.

The defence: each client hashes what it received -- the architecture, the parameter bytes and the
round's settings -- with :func:`model_context` and runs its side of the protocol only in a
:class:`~securefl.protocols.secagg.RoundSetup` whose ``context`` is that hash
(``ClientProtocol(expected_context=...)`` refuses any other setup; in the simulation:
``run_secure_aggregation(client_contexts=...)`` through
:class:`~securefl.fl.secure_channel.SecureAggregationChannel`).  The context enters the
session hash (:func:`~securefl.protocols.secagg.session_hash`), which every signature covers and
which salts the derivation of every pairwise mask
(:func:`~securefl.protocols.crypto.keys.derive_key`).

Claim (active mode, ``2 · signature_threshold > n + c``).  Let ``s`` be the signature threshold
and ``u`` an honest client.  If fewer than ``s − c`` honest clients received exactly ``u``'s
model and settings, the server learns nothing about ``u``'s input; otherwise ``u``'s input is only
ever revealed inside a sum over a survivor set holding at least ``s − c`` honest clients that
trained on ``u``'s model -- the guarantee of an honest round of that size.

Proof.  (1) ``u``'s masked input hides ``x_u`` under ``PRG(b_u)``; removing it needs ``t`` shares
of ``b_u``, which only ``u``'s share holders have (sealed to them) and which colluders (at most
``c < t``) cannot supply alone.  (2) An honest holder ``v`` accepted ``u``'s advertised keys only
under a valid signature of ``u`` over ``session(v)``; ``u`` signs only ``session(u)``; the session
hash is an injective encoding under SHA-256 and contains the context, itself SHA-256 of the
model, so (barring collisions) ``session(v) = session(u)``: ``v`` received ``u``'s model and
settings.  (3) ``v`` reveals a share of ``b_u`` only after verifying ``s`` signatures over
(``session(v)``, keys digest, survivor set ``S``) with ``u`` in ``S``; at most ``c`` come from
colluders, so at least ``s − c`` honest clients signed in ``session(u)``, i.e. received ``u``'s
model, and each of them signed only after sending its masked input.  (4) By
:attr:`~securefl.protocols.secagg.SecAggParams.signature_threshold`'s proof no two honest clients
are shown different survivor sets, so every honest holder reveals for the same ``S``, and the
protocol's privacy argument (the package docstring of :mod:`securefl.protocols.secagg`) applies
to the session of ``u``: the server learns ``sum_S x``, in which those ``s − c`` honest inputs
computed on ``u``'s model stand beside ``x_u``.  In particular no honest client unmasks when
fewer than ``s`` survivors (counting colluders as having received any model) received its model.
Model inconsistency needs the target's session to hold only the target (and colluders), so it is
refused.  Passive mode makes no claim against a deviating server; there the mask salting still
turns the plain attack's sum into pseudorandom words (measured in ``benchmarks/malicious.py``).
What this does not stop: sending the *same* malicious model to everyone (imprint: see
:mod:`securefl.defences.pinning` and :mod:`securefl.defences.checks`), and Sybils beyond ``c``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping

import torch
from torch import nn

CONTEXT_LABEL = b"securefl/model-context/v1\x00"


def model_context(
    *,
    model: nn.Module,
    settings: Mapping[str, int | float | str],
    params: torch.Tensor | None = None,
) -> bytes:
    """SHA-256 over the architecture (each parameter's name, shape and dtype), the parameters'
    bytes and the round's ``settings`` (canonical JSON): the context a client binds into its
    secure-aggregation session. Two clients get the same context iff (barring SHA-256 collisions)
    they received the same model and settings.

    ``params``: the flat parameter vector (``parameters_to_vector`` order) the client received for
    ``model``'s architecture, hashed instead of the values ``model`` holds now; the result equals
    ``model_context`` of ``model`` loaded with ``params``."""
    shapes = [(name, parameter) for name, parameter in model.named_parameters()]
    if params is not None and params.numel() != sum(p.numel() for _, p in shapes):
        raise ValueError(
            f"a vector of {params.numel()} values does not fit the "
            f"{sum(p.numel() for _, p in shapes)} parameters of the model"
        )
    digest = hashlib.sha256(CONTEXT_LABEL)
    offset = 0
    for name, parameter in shapes:
        tensor = parameter.detach().cpu()
        if params is not None:
            flat = params.detach().cpu()[offset : offset + tensor.numel()]
            tensor = flat.to(tensor.dtype).reshape(tensor.shape)
            offset += tensor.numel()
        header = json.dumps([name, list(tensor.shape), str(tensor.dtype)]).encode()
        digest.update(len(header).to_bytes(4, "big") + header)
        data = tensor.reshape(-1).contiguous().view(torch.uint8).numpy().tobytes()
        digest.update(len(data).to_bytes(8, "big") + data)
    encoded = json.dumps(dict(settings), sort_keys=True).encode()
    digest.update(len(encoded).to_bytes(4, "big") + encoded)
    return digest.digest()


__all__ = ["model_context"]
