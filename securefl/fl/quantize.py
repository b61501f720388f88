"""Floats to ring elements and back, with headroom for the sum of n clients.

Secure aggregation adds vectors over Z_{2^bits}.  A client's float vector ``v`` with a public
per-coordinate bound ``|v_i| <= b_i`` becomes integers in ``[0, 2L]``:

    q_i = R(v_i / b_i · L) + L,        R = unbiased stochastic rounding (Gupta et al. 2015)

with one level ``L`` shared by every coordinate, chosen as large as the ring allows for ``n``
clients: ``n · 2L < 2^bits``, so the sum of ``n`` encodings never wraps (the parameter proof of
:func:`level_for`).  Decoding the sum of ``m <= n`` encodings subtracts the ``m · L`` offset and
rescales.  Each client's rounding error is below one step ``b_i / L`` per coordinate, and zero in
expectation.

The rounding draws its uniforms from a ``torch.Generator``: it needs unbiasedness, not secrecy.
That is why this module lives in ``fl/`` beside the training integration and not in ``protocols/``,
which holds no non-cryptographic randomness at all (a test enforces it).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from securefl.errors import ConfigError, NonFiniteUpdateError


def level_for(*, bits: int, num_clients: int) -> int:
    """The largest ``L`` with ``num_clients · 2L < 2^bits``; refuses a ring too small for n."""
    level = ((2**bits - 1) // num_clients) // 2
    if level < 1:
        raise ConfigError(
            f"a {bits}-bit ring cannot hold the sum of {num_clients} clients: raise `secagg.bits`"
        )
    return level


@dataclass(frozen=True)
class FixedPointCodec:
    """Encode float vectors with per-coordinate bounds ``bounds`` into ``[0, 2·level]``."""

    bounds: torch.Tensor
    level: int

    @classmethod
    def for_ring(cls, bounds: torch.Tensor, *, bits: int, num_clients: int) -> FixedPointCodec:
        if bool((bounds <= 0).any()):
            raise ConfigError("every quantization bound must be positive")
        return cls(bounds=bounds.to(torch.float64), level=level_for(bits=bits, num_clients=num_clients))

    @property
    def max_value(self) -> int:
        """Every encoded value lies in ``[0, max_value]`` (the protocol's ``input_bound``)."""
        return 2 * self.level

    @property
    def step(self) -> torch.Tensor:
        """One quantization step per coordinate: the largest rounding error of one client."""
        return self.bounds / self.level

    def encode(self, values: torch.Tensor, *, generator: torch.Generator) -> np.ndarray:
        """Clip to the bounds, stochastically round, shift by ``level``: uint64 in ``[0, 2L]``.

        Raises :class:`~securefl.errors.NonFiniteUpdateError` for NaN or inf entries: NaN has no
        place on the grid (cast to an integer it becomes ``-2^63`` and clamps to ``-L``, i.e. a
        silent ``-bound`` in the sum), and an infinite entry is a diverged update, not a value
        that clipping can make meaningful.
        """
        finite = torch.isfinite(values)
        if not bool(finite.all()):
            raise NonFiniteUpdateError(
                f"{int((~finite).sum())} of {values.numel()} entries are NaN or inf, so the update "
                "has no fixed-point encoding: the client's training diverged (lower `lr`); leave "
                "this client out of the sum"
            )
        scaled = values.to(torch.float64).clamp(-self.bounds, self.bounds) / self.bounds * self.level
        floor = torch.floor(scaled)
        uniforms = torch.rand(scaled.shape, generator=generator, dtype=torch.float64)
        rounded = (floor + (uniforms < (scaled - floor)).to(torch.float64)).to(torch.int64)
        # Clamp as integers: above 2^53 the float64 value of ±L is not L itself.
        shifted = rounded.clamp_(-self.level, self.level) + self.level
        return shifted.numpy().astype(np.uint64)

    def decode_sum(self, total: np.ndarray, *, count: int) -> torch.Tensor:
        """The float sum of ``count`` encoded vectors whose ring sum is ``total``."""
        centred = torch.from_numpy(total.astype(np.int64)) - count * self.level
        return centred.to(torch.float64) * self.bounds / self.level
