"""Cryptographic protocols of securefl.

``securefl.protocols.crypto`` holds the primitives (bytes in, bytes out: X25519 + HKDF key
agreement, AEAD, the mask PRG, Shamir sharing) and ``securefl.protocols.secagg`` the secure
aggregation protocol of Bonawitz et al. (CCS 2017) with the sparse SecAgg+ graphs of Bell et al.
(CCS 2020), written sans-IO.
"""
