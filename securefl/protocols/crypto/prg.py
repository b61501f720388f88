"""The mask generator: AES-256-CTR keystreams added into ring vectors in place.

Bonawitz et al. (CCS 2017) expand every agreed secret ``s_uv`` and every self-mask seed ``b_u``
with a pseudorandom generator into a mask as long as the input vector.  Ours is AES-256-CTR keyed
with a 256-bit key derived (HKDF-SHA256, :mod:`.keys`) from the full agreed secret, counter block
starting at zero, keystream read as little-endian words of the ring's word size (uint32 for
``bits <= 32``, uint64 above); reducing modulo ``2**bits`` at the end keeps every residue
uniform because ``2**bits`` divides the word modulus.

Speed is the whole game here (one keystream per neighbour per client), so :func:`apply_masks`
streams every mask in cache-sized chunks: all keystreams of one chunk are written by
``update_into`` into one preallocated scratch buffer and added (or subtracted) in place with numpy
before the next chunk, so the vector chunk stays in cache across masks and nothing of size D is
ever allocated.  numpy does ring arithmetic only; every random byte comes from AES.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, CipherContext, algorithms, modes

from securefl.protocols.crypto.keys import KEY_BYTES

ZERO_COUNTER_BLOCK = bytes(16)
BLOCK_BYTES = 16
CHUNK_BYTES = 256 * 1024
_ZEROS = bytes(CHUNK_BYTES)


def _encryptor(key: bytes, initial_counter_block: bytes = ZERO_COUNTER_BLOCK) -> CipherContext:
    if len(key) != KEY_BYTES:
        raise ValueError(f"the mask PRG is AES-256: it needs a {KEY_BYTES}-byte key")
    return Cipher(algorithms.AES(key), modes.CTR(initial_counter_block)).encryptor()


def keystream_buffer(num_bytes: int) -> bytearray:
    """A buffer that :func:`keystream_into` can fill with ``num_bytes`` of keystream."""
    return bytearray(num_bytes + BLOCK_BYTES - 1)


def keystream_into(
    key: bytes,
    out: bytearray,
    num_bytes: int,
    *,
    zeros: bytes | None = None,
    initial_counter_block: bytes = ZERO_COUNTER_BLOCK,
) -> None:
    """Write ``num_bytes`` of AES-256-CTR keystream into the front of ``out`` in one call.

    ``out`` comes from :func:`keystream_buffer`; ``zeros`` (``num_bytes`` zero bytes) can be
    passed to reuse one allocation.  This is the physical floor the benchmark compares against.
    """
    data = zeros if zeros is not None else bytes(num_bytes)
    _encryptor(key, initial_counter_block).update_into(memoryview(data)[:num_bytes], out)


def keystream(key: bytes, num_bytes: int, *, initial_counter_block: bytes = ZERO_COUNTER_BLOCK) -> bytes:
    """``num_bytes`` of AES-256-CTR keystream (the encryption of zeros)."""
    out = keystream_buffer(num_bytes)
    keystream_into(key, out, num_bytes, initial_counter_block=initial_counter_block)
    return bytes(out[:num_bytes])


def expand_mask(key: bytes, *, length: int, dtype: np.dtype | type) -> np.ndarray:
    """The full mask for ``key``: ``length`` little-endian words of ``dtype`` (uint32/uint64)."""
    dtype = np.dtype(dtype)
    raw = keystream(key, length * dtype.itemsize)
    return np.frombuffer(raw, dtype=dtype.newbyteorder("<")).astype(dtype)


def apply_masks(
    vector: np.ndarray, masks: Sequence[tuple[bytes, int]], *, base: np.ndarray | None = None
) -> None:
    """In place, ``vector += sign * PRG(key)`` modulo the word size for every ``(key, sign)``.

    ``vector`` is a C-contiguous 1-D uint32 or uint64 array; ``sign`` is +1 or -1.  With ``base``
    (an unsigned vector of the same length), ``vector`` is first set to ``base`` in the same pass,
    saving a full copy.  Results are exact modulo 2**32 / 2**64 and so modulo ``2**bits`` for any
    ``bits`` up to the word size.
    """
    if vector.ndim != 1 or not vector.flags.c_contiguous:
        raise ValueError("apply_masks needs a C-contiguous 1-D vector")
    if vector.dtype not in (np.dtype(np.uint32), np.dtype(np.uint64)):
        raise ValueError(f"apply_masks works on uint32/uint64 vectors, not {vector.dtype}")
    if base is not None and (base.shape != vector.shape or base.dtype.kind != "u"):
        raise ValueError("base must be an unsigned vector of the same length")
    for _, sign in masks:
        if sign not in (1, -1):
            raise ValueError(f"mask sign must be +1 or -1, not {sign}")
    if not masks:
        if base is not None:
            np.copyto(vector, base, casting="same_kind")
        return
    itemsize = vector.dtype.itemsize
    little_endian = vector.dtype.newbyteorder("<")
    chunk_words = CHUNK_BYTES // itemsize
    scratch = keystream_buffer(CHUNK_BYTES)
    scratch_words = np.frombuffer(scratch, dtype=little_endian, count=chunk_words)
    zeros = memoryview(_ZEROS)
    # Bound methods and ufuncs hoisted out of the hot loop: per chunk and mask, one keystream
    # call into the cached scratch buffer and one in-place add or subtract.
    streams = [(_encryptor(key).update_into, np.add if sign == 1 else np.subtract) for key, sign in masks]
    first_update, first_combine = streams[0]
    length = vector.shape[0]
    for start in range(0, length, chunk_words):
        stop = min(start + chunk_words, length)
        count = stop - start
        target = vector[start:stop]
        words = scratch_words if count == chunk_words else scratch_words[:count]
        data = zeros if count == chunk_words else zeros[: count * itemsize]
        first_update(data, scratch)
        if base is None:
            first_combine(target, words, out=target)
        else:
            first_combine(base[start:stop], words, out=target, casting="same_kind")
        for update_into, combine in streams[1:]:
            update_into(data, scratch)
            combine(target, words, out=target)
