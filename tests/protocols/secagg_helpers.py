"""Test helpers for the secure-aggregation tests (not a test module)."""

from __future__ import annotations

import hashlib

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes


class DeterministicRandom:
    """Test-only reproducible byte source: the AES-256-CTR keystream under SHA-256(label).

    Stands in for ``os.urandom`` where a test needs the same bytes on every run (frozen vectors,
    statistical tests with a fixed outcome).  Never used by the library.
    """

    def __init__(self, label: str) -> None:
        key = hashlib.sha256(b"securefl test randomness/" + label.encode()).digest()
        self._encryptor = Cipher(algorithms.AES(key), modes.CTR(bytes(16))).encryptor()

    def __call__(self, num_bytes: int) -> bytes:
        return self._encryptor.update(bytes(num_bytes))


def random_inputs(n: int, length: int, bits: int, seed: int, ids=None) -> dict[int, np.ndarray]:
    """Uniform inputs in Z_{2^bits} for clients ``ids`` (default 0..n-1), from a numpy seed."""
    rng = np.random.default_rng(seed)
    ids = list(range(n)) if ids is None else list(ids)
    dtype = np.uint32 if bits <= 32 else np.uint64
    return {c: rng.integers(0, 2**bits, size=length, dtype=np.uint64).astype(dtype) for c in ids}


def plain_sum(inputs: dict[int, np.ndarray], clients, bits: int) -> np.ndarray:
    """The reference: sum of the clients' inputs modulo 2**bits, with Python integers."""
    clients = sorted(clients)
    length = len(next(iter(inputs.values())))
    totals = [sum(int(inputs[c][i]) for c in clients) % 2**bits for i in range(length)]
    return np.array(totals, dtype=np.uint64)
