"""The federation's public-key infrastructure: a CA, a server certificate, one identity per client
and the enrolment list the server checks every client against.

:func:`create_pki` plays the federation operator: it makes a certificate authority (X.509 v3,
RFC 5280) and issues, with ECDSA P-256 keys (SHA-256 signatures), a server certificate whose
SubjectAltNames list every address clients dial (IP addresses as ``iPAddress``, names as
``dNSName``, RFC 6125) for TLS server authentication, and one client certificate per client
(common name ``client-<i>``) for TLS client authentication.  Each client also gets an Ed25519
signing key (RFC 8032), its identity in secure aggregation against an active server
(:mod:`securefl.protocols.crypto.keys`).  Private keys are written readable by their owner only
(0600); certificates are valid for a bounded period (:data:`VALIDITY`); the CA may sign leaves
only (``pathLenConstraint`` 0) and a leaf cannot sign anything.

The enrolment list (``enrolment.json``) is what the server trusts, not the CA alone: a client is
known by the SHA-256 fingerprint of its DER certificate (not by its common name, which anyone the
CA ever signed could carry) and brings the raw Ed25519 public key secure aggregation verifies its
signatures with.  Removing an entry (:func:`revoke`) revokes a client; a running server re-reads
the file (:meth:`Enrolment.refresh`) and ends that client's connection.

TLS versions.  grpcio has no setting for the lowest TLS version a server accepts (gRPC core has
one; the Python binding does not pass it on, up to grpcio 1.85): a client capped at TLS 1.2
completes a TLS 1.2 handshake with the server.  The server does learn each connection's version
(``ssl_tls_version`` in the call's auth context), so
:class:`~securefl.transports.grpc_server.NetworkServer` refuses every call made over anything
older than TLS 1.3 (``UNAUTHENTICATED``) before it reads a message of it, and a grpcio client
negotiates TLS 1.3 with it; ``tests/transports/test_grpc.py`` checks all three.
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import json
import os
import re
import tempfile
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from securefl.atomic import write_atomically
from securefl.errors import ConfigError, OutputExistsError
from securefl.protocols.crypto import keys

VALIDITY = datetime.timedelta(days=365)
"""How long every certificate of a federation is valid: re-create the PKI within a year."""

CLOCK_SKEW = datetime.timedelta(minutes=5)
"""Certificates are valid from this long before they were made (machines' clocks differ)."""

ORGANIZATION = "securefl federation"
CA_NAME = "securefl federation CA"
SERVER_NAME = "server"
DEFAULT_HOSTS = ("127.0.0.1", "::1", "localhost")

CERTIFICATE_FILE = "cert.pem"
KEY_FILE = "key.pem"
CA_FILE = "ca.pem"
SIGNING_KEY_FILE = "signing-key.pem"
ENROLMENT_FILE = "enrolment.json"

_CLIENT_NAME = re.compile(r"client-(0|[1-9][0-9]{0,9})")
_FINGERPRINT = re.compile(r"[0-9a-f]{64}")
_MAX_CLIENT_ID = 2**32 - 1


def client_name(client_id: int) -> str:
    """The common name (and directory name) of client ``client_id``."""
    return f"client-{client_id}"


@dataclass(frozen=True)
class TlsFiles:
    """What one side of a mutual-TLS connection presents and trusts: the PEM files of its
    certificate, its private key and the federation CA's certificate (read when it connects)."""

    certificate: Path
    private_key: Path
    ca_certificate: Path


@dataclass(frozen=True)
class Identity:
    """One party's files: its TLS certificate and key, the federation CA's certificate and (a
    client's) Ed25519 signing key.  ``client_id`` is ``None`` for the server."""

    name: str
    client_id: int | None
    certificate: Path
    private_key: Path
    ca_certificate: Path
    signing_key: Path | None

    @property
    def tls(self) -> TlsFiles:
        """This identity's certificate, key and CA certificate, for a transport."""
        return TlsFiles(self.certificate, self.private_key, self.ca_certificate)

    def load_signing_key(self) -> Ed25519PrivateKey:
        """This client's Ed25519 signing key."""
        if self.signing_key is None:
            raise ConfigError(f"{self.name} has no signing key ({SIGNING_KEY_FILE}): only clients sign")
        key = serialization.load_pem_private_key(self.signing_key.read_bytes(), password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise ConfigError(f"{self.signing_key} is not an Ed25519 private key: re-create the identity")
        return key


@dataclass(frozen=True)
class Pki:
    """The files :func:`create_pki` wrote."""

    directory: Path
    ca_certificate: Path
    ca_key: Path
    server: Identity
    clients: tuple[Identity, ...]
    enrolment: Path


def create_pki(directory: Path, *, clients: int, hosts: Sequence[str] = DEFAULT_HOSTS) -> Pki:
    """Create a federation's CA, server identity, ``clients`` client identities and enrolment list
    in ``directory`` (absent or empty), all at once: the files appear together or not at all."""
    directory = Path(directory)
    if isinstance(clients, bool) or not isinstance(clients, int) or not 1 <= clients <= _MAX_CLIENT_ID:
        raise ConfigError(f"clients {clients!r}: a federation needs 1 or more clients")
    names = _subject_alt_names(hosts)
    if directory.exists() and (not directory.is_dir() or any(directory.iterdir())):
        raise OutputExistsError(
            f"{directory} already exists and is not empty: a federation's PKI is never overwritten "
            "(its clients hold certificates from its CA); choose a new directory"
        )
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}-", dir=directory.parent))
    try:
        _write_pki(staging, clients=clients, names=names)
        try:
            os.replace(staging, directory)  # replaces an empty directory, atomically
        except OSError as error:
            raise OutputExistsError(
                f"cannot create the PKI in {directory} ({error.strerror}): choose a new directory"
            ) from None
    except BaseException:
        _remove_tree(staging)
        raise
    client_identities = tuple(load_identity(directory / client_name(i)) for i in range(clients))
    return Pki(
        directory=directory,
        ca_certificate=directory / "ca" / "ca.pem",
        ca_key=directory / "ca" / "ca-key.pem",
        server=load_identity(directory / SERVER_NAME),
        clients=client_identities,
        enrolment=directory / ENROLMENT_FILE,
    )


def _write_pki(root: Path, *, clients: int, names: list[x509.GeneralName]) -> None:
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = _ca_certificate(ca_key, now)
    ca_pem = ca_cert.public_bytes(serialization.Encoding.PEM)
    (root / "ca").mkdir(mode=0o700)
    _write(root / "ca" / "ca.pem", ca_pem)
    _write(root / "ca" / "ca-key.pem", _private_pem(ca_key), private=True)

    def issue(
        where: Path, common_name: str, usage: x509.ObjectIdentifier, sans: list[x509.GeneralName]
    ) -> bytes:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _leaf_certificate(ca_key, ca_cert, key, common_name, usage, sans, now)
        where.mkdir(mode=0o700)
        _write(where / CERTIFICATE_FILE, cert.public_bytes(serialization.Encoding.PEM))
        _write(where / KEY_FILE, _private_pem(key), private=True)
        _write(where / CA_FILE, ca_pem)
        return cert.public_bytes(serialization.Encoding.DER)

    issue(root / SERVER_NAME, SERVER_NAME, ExtendedKeyUsageOID.SERVER_AUTH, names)
    enrolled: dict[int, EnrolledClient] = {}
    for client_id in range(clients):
        name = client_name(client_id)
        der = issue(root / name, name, ExtendedKeyUsageOID.CLIENT_AUTH, [x509.DNSName(name)])
        signing_key = keys.generate_signing_key()
        _write(root / name / SIGNING_KEY_FILE, _private_pem(signing_key), private=True)
        enrolled[client_id] = EnrolledClient(
            name=name,
            certificate_sha256=hashlib.sha256(der).hexdigest(),
            verify_key=keys.public_bytes(signing_key),
        )
    _write(root / ENROLMENT_FILE, _enrolment_bytes(enrolled))


def _subject_alt_names(hosts: Sequence[str]) -> list[x509.GeneralName]:
    if isinstance(hosts, str) or not hosts:
        raise ConfigError("the server certificate needs at least one host (an IP address or a DNS name)")
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            if not isinstance(host, str) or not re.fullmatch(
                r"[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?", host
            ):
                raise ConfigError(
                    f"host {host!r} is neither an IP address nor a DNS name: give the address clients dial"
                ) from None
            names.append(x509.DNSName(host.lower()))
    return names


def _ca_certificate(key: ec.EllipticCurvePrivateKey, now: datetime.datetime) -> x509.Certificate:
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANIZATION),
            x509.NameAttribute(NameOID.COMMON_NAME, CA_NAME),
        ]
    )
    public = key.public_key()
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(signs_certificates=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )


def _leaf_certificate(
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    key: ec.EllipticCurvePrivateKey,
    common_name: str,
    usage: x509.ObjectIdentifier,
    sans: list[x509.GeneralName],
    now: datetime.datetime,
) -> x509.Certificate:
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANIZATION),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + VALIDITY)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(signs_certificates=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False)
        .sign(ca_key, hashes.SHA256())
    )


def _key_usage(*, signs_certificates: bool) -> x509.KeyUsage:
    """A CA signs certificates (and would sign revocation lists); a TLS 1.3 leaf with an ECDSA key
    signs the handshake (digitalSignature) and nothing else."""
    return x509.KeyUsage(
        digital_signature=not signs_certificates,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=signs_certificates,
        crl_sign=signs_certificates,
        encipher_only=False,
        decipher_only=False,
    )


def _private_pem(key: ec.EllipticCurvePrivateKey | Ed25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _write(path: Path, data: bytes, *, private: bool = False) -> None:
    """A new file (never an existing one), readable by its owner only when ``private``."""
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600 if private else 0o644)
    with os.fdopen(descriptor, "wb") as file:
        file.write(data)
        file.flush()
        os.fsync(file.fileno())


def _remove_tree(path: Path) -> None:
    for inner in sorted(path.rglob("*"), key=lambda p: len(p.parts), reverse=True):
        inner.rmdir() if inner.is_dir() else inner.unlink()
    path.rmdir()


# ---- identities ---------------------------------------------------------------------------------


def load_identity(directory: Path) -> Identity:
    """The identity in ``directory`` (``cert.pem``, ``key.pem``, ``ca.pem``, and a client's
    ``signing-key.pem``), checked: the certificate is issued by the CA and matches the key."""
    directory = Path(directory)
    if not directory.is_dir():
        raise ConfigError(
            f"identity directory {directory} does not exist: give the directory the federation "
            "operator made for this party (`securefl federation init` writes server/ and client-<i>/)"
        )
    paths = {name: directory / name for name in (CERTIFICATE_FILE, KEY_FILE, CA_FILE)}
    missing = [name for name, path in paths.items() if not path.is_file()]
    if missing:
        raise ConfigError(
            f"identity {directory} lacks {', '.join(missing)}: copy the whole identity directory "
            "from the federation operator"
        )
    certificate = _load_certificate(paths[CERTIFICATE_FILE])
    ca = _load_certificate(paths[CA_FILE])
    try:
        certificate.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        raise ConfigError(
            f"{paths[CERTIFICATE_FILE]} was not issued by the CA in {paths[CA_FILE]}: the identity "
            "belongs to another federation"
        ) from None
    try:
        key = serialization.load_pem_private_key(paths[KEY_FILE].read_bytes(), password=None)
    except (ValueError, TypeError):
        raise ConfigError(f"{paths[KEY_FILE]} is not an unencrypted PEM private key") from None
    if key.public_key() != certificate.public_key():
        raise ConfigError(f"{paths[KEY_FILE]} is not the key of {paths[CERTIFICATE_FILE]}")
    common_names = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    name = str(common_names[0].value) if common_names else ""
    match = _CLIENT_NAME.fullmatch(name)
    client_id = int(match.group(1)) if match else None
    signing_key = directory / SIGNING_KEY_FILE
    if client_id is not None and not signing_key.is_file():
        raise ConfigError(f"client identity {directory} lacks {SIGNING_KEY_FILE}: copy it from the operator")
    return Identity(
        name=name,
        client_id=client_id,
        certificate=paths[CERTIFICATE_FILE],
        private_key=paths[KEY_FILE],
        ca_certificate=paths[CA_FILE],
        signing_key=signing_key if client_id is not None else None,
    )


def _load_certificate(path: Path) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except ValueError:
        raise ConfigError(f"{path} is not a PEM certificate") from None


def certificate_fingerprint(certificate: bytes | str | x509.Certificate) -> str:
    """The SHA-256 fingerprint (lowercase hex) of a certificate's DER encoding; ``certificate``
    as PEM (bytes or text), DER bytes, or a loaded certificate."""
    if isinstance(certificate, str):
        certificate = certificate.encode("ascii")
    if isinstance(certificate, bytes):
        if certificate.lstrip().startswith(b"-----BEGIN"):
            certificate = x509.load_pem_x509_certificate(certificate)
        else:
            certificate = x509.load_der_x509_certificate(certificate)
    return hashlib.sha256(certificate.public_bytes(serialization.Encoding.DER)).hexdigest()


# ---- the enrolment list -------------------------------------------------------------------------


@dataclass(frozen=True)
class EnrolledClient:
    """One entry of the enrolment list: a client's name, the fingerprint of its certificate and
    its raw Ed25519 verify key."""

    name: str
    certificate_sha256: str
    verify_key: bytes


class Enrolment:
    """The enrolment list, ``{"clients": {"<id>": {"name", "certificate_sha256", "verify_key"}}}``.

    Safe to share between threads: :meth:`refresh` swaps the whole list under a lock.
    """

    def __init__(
        self, path: Path, clients: Mapping[int, EnrolledClient], stamp: tuple[int, int, int]
    ) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._clients = dict(clients)
        self._by_fingerprint = {entry.certificate_sha256: c for c, entry in clients.items()}
        self._stamp = stamp

    @classmethod
    def load(cls, path: Path) -> Enrolment:
        """Read and check the enrolment list at ``path``."""
        path = Path(path)
        clients, stamp = _read_enrolment(path)
        return cls(path, clients, stamp)

    @property
    def ids(self) -> frozenset[int]:
        """The client ids enrolled now."""
        with self._lock:
            return frozenset(self._clients)

    @property
    def clients(self) -> dict[int, EnrolledClient]:
        with self._lock:
            return dict(self._clients)

    def client_id_of(self, certificate: bytes | str) -> int | None:
        """The id of the client enrolled with ``certificate`` (PEM or DER), or ``None``."""
        fingerprint = certificate_fingerprint(certificate)
        with self._lock:
            return self._by_fingerprint.get(fingerprint)

    def verify_keys(self) -> dict[int, Ed25519PublicKey]:
        """Every enrolled client's Ed25519 public key (secure aggregation's ``verify_keys``)."""
        with self._lock:
            return {c: Ed25519PublicKey.from_public_bytes(e.verify_key) for c, e in self._clients.items()}

    def refresh(self) -> frozenset[int]:
        """Re-read the file if it changed since it was read (inode, modification time or size);
        the ids revoked since: removed, or enrolled with another certificate or key.  A file that
        no longer checks out raises :class:`ConfigError` and leaves the list as it was."""
        try:
            stamp = _stamp(self.path)
        except FileNotFoundError:
            raise ConfigError(
                f"the enrolment list {self.path} is gone: restore it (`securefl federation init` wrote it)"
            ) from None
        with self._lock:
            if stamp == self._stamp:
                return frozenset()
        clients, stamp = _read_enrolment(self.path)
        with self._lock:
            revoked = frozenset(c for c, entry in self._clients.items() if clients.get(c) != entry)
            self._clients = clients
            self._by_fingerprint = {entry.certificate_sha256: c for c, entry in clients.items()}
            self._stamp = stamp
        return revoked


def revoke(path: Path, client_id: int) -> None:
    """Remove ``client_id`` from the enrolment list at ``path`` (rewritten atomically); a running
    server ends that client's connection at its next refresh."""
    path = Path(path)
    clients, _ = _read_enrolment(path)
    if client_id not in clients:
        raise ConfigError(f"client {client_id} is not enrolled in {path}: nothing to revoke")
    del clients[client_id]
    write_enrolment(path, clients)


def write_enrolment(path: Path, clients: Mapping[int, EnrolledClient]) -> None:
    """Write the enrolment list atomically: a reader sees the old list or the new one, never half
    of one (:func:`securefl.atomic.write_atomically`)."""
    write_atomically(Path(path), _enrolment_bytes(clients))


def _enrolment_bytes(clients: Mapping[int, EnrolledClient]) -> bytes:
    document = {
        "clients": {
            str(c): {
                "name": entry.name,
                "certificate_sha256": entry.certificate_sha256,
                "verify_key": entry.verify_key.hex(),
            }
            for c, entry in sorted(clients.items())
        }
    }
    return (json.dumps(document, indent=2) + "\n").encode("utf-8")


def _stamp(path: Path) -> tuple[int, int, int]:
    status = path.stat()
    return status.st_ino, status.st_mtime_ns, status.st_size


def _read_enrolment(path: Path) -> tuple[dict[int, EnrolledClient], tuple[int, int, int]]:
    """The checked entries of the enrolment list at ``path`` and the file's stamp when read."""

    def invalid(why: str) -> ConfigError:
        return ConfigError(f"enrolment list {path}: {why}; fix the file or re-create the federation")

    try:
        stamp = _stamp(path)
        text = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(
            f"enrolment list {path} not found: give the enrolment.json `securefl federation init` wrote"
        ) from None
    try:
        document = json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise invalid(f"not JSON ({error})") from None
    if (
        not isinstance(document, dict)
        or set(document) != {"clients"}
        or not isinstance(document["clients"], dict)
    ):
        raise invalid('expected one object {"clients": {...}}')
    clients: dict[int, EnrolledClient] = {}
    seen: set[str] = set()
    for key, entry in document["clients"].items():
        if not re.fullmatch(r"0|[1-9][0-9]{0,9}", key) or int(key) > _MAX_CLIENT_ID:
            raise invalid(f"client id {key!r} is not an integer in [0, 2^32)")
        if not isinstance(entry, dict) or set(entry) != {"name", "certificate_sha256", "verify_key"}:
            raise invalid(f"client {key} needs exactly name, certificate_sha256 and verify_key")
        name, fingerprint, verify_key = entry["name"], entry["certificate_sha256"], entry["verify_key"]
        if not isinstance(name, str) or not name:
            raise invalid(f"client {key}: name must be a non-empty string")
        if not isinstance(fingerprint, str) or not _FINGERPRINT.fullmatch(fingerprint):
            raise invalid(f"client {key}: certificate_sha256 must be 64 lowercase hex digits")
        if fingerprint in seen:
            raise invalid(f"client {key}: its certificate is enrolled twice")
        seen.add(fingerprint)
        if not isinstance(verify_key, str) or not re.fullmatch(r"[0-9a-f]{64}", verify_key):
            raise invalid(f"client {key}: verify_key must be 64 lowercase hex digits (a raw Ed25519 key)")
        try:
            Ed25519PublicKey.from_public_bytes(bytes.fromhex(verify_key))
        except ValueError:
            raise invalid(f"client {key}: verify_key is not an Ed25519 public key") from None
        clients[int(key)] = EnrolledClient(name, fingerprint, bytes.fromhex(verify_key))
    return clients, stamp
