"""Rényi DP of the Skellam mechanism (Agarwal, Kairouz & Liu, "The Skellam Mechanism for
Differentially Private Federated Learning", NeurIPS 2021), converted to (ε, δ) by Opacus.

Pure math, no state (as Opacus' ``accountants/analysis``).  The symmetric Skellam distribution of
variance ``μ`` is ``Poisson(μ/2) − Poisson(μ/2)``; sums of independent Skellams are Skellam, so
the noise shares of the clients that survive a secure-aggregation round add up to one Skellam of
the summed variance.

For integer vectors whose difference between neighbours has L1 norm at most ``Δ1`` and L2 norm at
most ``Δ2``, adding independent Skellam noise of variance ``μ`` to every coordinate is
``(α, ε(α))``-RDP for every integer ``α > 1`` with (the paper's Theorem 3.5 / Corollary 3.6)

    ε(α) <= α·Δ2²/(2μ) + min( ((2α − 1)·Δ2² + 6·Δ1) / (4μ²),  3·Δ1/(2μ) ).

The first term is the Gaussian mechanism's RDP at the same variance; the second vanishes as
``μ`` grows.  Neither Opacus nor Google's ``dp-accounting`` implements the Skellam mechanism, so
this one formula is ours; composition (RDP adds up) and the RDP-to-(ε, δ) conversion are Opacus'
(``opacus.accountants.analysis.rdp.get_privacy_spent``, Balle et al. 2020).  The tests check the
bound against the Rényi divergence computed from ``scipy.stats.skellam`` directly.

No amplification by subsampling is applied here: see :mod:`securefl.privacy.distributed` for why
it does not hold against the server under distributed DP.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np
from opacus.accountants.analysis.rdp import get_privacy_spent

ORDERS: tuple[int, ...] = tuple(range(2, 257)) + (320, 384, 512, 768, 1024)
"""Integer Rényi orders (the theorem holds for integer ``α > 1``)."""


def skellam_rdp(orders: Sequence[int], *, l1: float, l2: float, variance: float) -> np.ndarray:
    """``ε(α)`` of one Skellam release at each order (Agarwal et al. 2021, Theorem 3.5)."""
    if not (variance > 0 and math.isfinite(variance)):
        return np.full(len(orders), math.inf)
    a = np.asarray(orders, dtype=np.float64)
    if bool((a <= 1).any()) or not bool((a == np.floor(a)).all()):
        raise ValueError("the Skellam RDP bound holds for integer orders > 1 only")
    gaussian = a * l2**2 / (2 * variance)
    correction = np.minimum(((2 * a - 1) * l2**2 + 6 * l1) / (4 * variance**2), 3 * l1 / (2 * variance))
    return gaussian + correction


def skellam_epsilon(
    variances: Sequence[float], *, l1: float, l2: float, delta: float, orders: Sequence[int] = ORDERS
) -> float:
    """(ε at ``delta``) of the composition of Skellam releases, one per entry of ``variances``.

    A release with variance 0 has no finite guarantee (ε = inf); an empty sequence costs 0.
    """
    if not variances:
        return 0.0
    rdp = sum(skellam_rdp(orders, l1=l1, l2=l2, variance=v) for v in variances)
    if not bool(np.isfinite(rdp).any()):
        return math.inf
    with warnings.catch_warnings():  # the theorem starts at order 2; Opacus warns when that is best
        warnings.filterwarnings("ignore", message="Optimal order is the smallest alpha")
        epsilon, _ = get_privacy_spent(orders=list(orders), rdp=rdp, delta=delta)
    return float(epsilon)


__all__ = ["ORDERS", "skellam_epsilon", "skellam_rdp"]
