"""The federation's PKI: certificates that a standard X.509 path validator accepts for exactly the
roles they are for, private keys only their owner can read, a PKI never overwritten, and an
enrolment list that identifies clients by certificate fingerprint and changes atomically."""

from __future__ import annotations

import base64
import datetime
import hashlib
import ipaddress
import json
import re
import stat
import threading
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from securefl.deploy.pki import (
    Enrolment,
    create_pki,
    load_identity,
    revoke,
    write_enrolment,
)
from securefl.errors import ConfigError, OutputExistsError
from securefl.protocols.crypto import keys


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return create_pki(
        tmp_path_factory.mktemp("pki") / "federation", clients=3, hosts=["127.0.0.1", "::1", "fl.example.org"]
    )


@pytest.fixture(scope="module")
def other_pki(tmp_path_factory):
    return create_pki(tmp_path_factory.mktemp("other") / "federation", clients=1)


def _certificate(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _store(pki) -> Store:
    return Store([_certificate(pki.ca_certificate)])


def test_the_server_certificate_verifies_for_every_host_it_was_made_for_and_no_other(pki):
    server = _certificate(pki.server.certificate)
    for name in (
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        x509.IPAddress(ipaddress.ip_address("::1")),
    ):
        chain = PolicyBuilder().store(_store(pki)).build_server_verifier(name).verify(server, [])
        assert chain[0] == server and chain[-1] == _certificate(pki.ca_certificate)
    PolicyBuilder().store(_store(pki)).build_server_verifier(x509.DNSName("fl.example.org")).verify(
        server, []
    )
    for wrong in (x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("10.0.0.1"))):
        with pytest.raises(VerificationError):
            PolicyBuilder().store(_store(pki)).build_server_verifier(wrong).verify(server, [])


def test_client_certificates_verify_as_clients_only_and_under_their_own_ca_only(pki, other_pki):
    verifier = PolicyBuilder().store(_store(pki)).build_client_verifier()
    for identity in pki.clients:
        verified = verifier.verify(_certificate(identity.certificate), [])
        assert verified.subjects == [x509.DNSName(identity.name)]
    with pytest.raises(VerificationError):  # serverAuth only: not a client certificate
        verifier.verify(_certificate(pki.server.certificate), [])
    with pytest.raises(VerificationError):  # clientAuth only: not a server certificate
        name = x509.DNSName("client-0")
        PolicyBuilder().store(_store(pki)).build_server_verifier(name).verify(
            _certificate(pki.clients[0].certificate), []
        )
    with pytest.raises(VerificationError):  # another federation's CA
        verifier.verify(_certificate(other_pki.clients[0].certificate), [])


def test_each_certificate_is_signed_by_the_ca_key_and_says_what_it_is_for(pki):
    ca = _certificate(pki.ca_certificate)
    ca_public = ca.public_key()
    assert isinstance(ca_public, ec.EllipticCurvePublicKey)
    constraints = ca.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical and constraints.value.ca and constraints.value.path_length == 0
    usage = ca.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.key_cert_sign and usage.crl_sign and not usage.digital_signature
    leaves = {pki.server.certificate: ExtendedKeyUsageOID.SERVER_AUTH}
    leaves.update({identity.certificate: ExtendedKeyUsageOID.CLIENT_AUTH for identity in pki.clients})
    for path, purpose in leaves.items():
        cert = _certificate(path)
        assert cert.signature_hash_algorithm is not None
        ca_public.verify(cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(cert.signature_hash_algorithm))
        assert cert.issuer == ca.subject
        key = cert.public_key()
        assert isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name == "secp256r1"
        assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
        leaf_usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
        assert leaf_usage.digital_signature and not leaf_usage.key_cert_sign
        assert list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [purpose]
        lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
        assert datetime.timedelta(days=300) < lifetime <= datetime.timedelta(days=366)
        assert cert.not_valid_before_utc <= datetime.datetime.now(datetime.UTC) < cert.not_valid_after_utc
    sans = _certificate(pki.server.certificate).extensions.get_extension_for_class(
        x509.SubjectAlternativeName
    )
    assert sans.value.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("::1"),
    ]
    assert sans.value.get_values_for_type(x509.DNSName) == ["fl.example.org"]
    names = [
        _certificate(i.certificate).subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
        for i in pki.clients
    ]
    assert names == ["client-0", "client-1", "client-2"]


def test_private_keys_are_readable_by_their_owner_only(pki):
    private = [pki.ca_key, pki.server.private_key]
    for identity in pki.clients:
        private += [identity.private_key, identity.signing_key]
    for path in private:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    for path in [pki.ca_certificate, pki.server.certificate, pki.enrolment]:
        assert stat.S_IMODE(path.stat().st_mode) & 0o077 in (0o044, 0o000)  # public: no write for others


def test_identities_load_with_their_ids_and_signing_keys(pki):
    assert pki.server.client_id is None and pki.server.signing_key is None
    enrolment = Enrolment.load(pki.enrolment)
    verify_keys = enrolment.verify_keys()
    for client_id, identity in enumerate(pki.clients):
        assert identity == load_identity(identity.certificate.parent)
        assert identity.client_id == client_id
        assert keys.public_bytes(identity.load_signing_key()) == keys.public_bytes(verify_keys[client_id])
    with pytest.raises(ConfigError, match="only clients sign"):
        pki.server.load_signing_key()


def test_a_pki_is_never_overwritten(pki, tmp_path):
    before = {p: p.read_bytes() for p in pki.directory.rglob("*") if p.is_file()}
    with pytest.raises(OutputExistsError, match=re.escape(str(pki.directory))):
        create_pki(pki.directory, clients=2)
    assert {p: p.read_bytes() for p in pki.directory.rglob("*") if p.is_file()} == before
    (tmp_path / "empty").mkdir()
    assert create_pki(tmp_path / "empty", clients=1).clients[0].client_id == 0  # an empty directory is fine
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(OutputExistsError, match="busy"):
        create_pki(tmp_path / "busy", clients=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["busy", "empty"]  # no staging left behind


@pytest.mark.parametrize(
    ("clients", "hosts", "match"),
    [
        (0, ["127.0.0.1"], "1 or more clients"),
        (2, [], "at least one host"),
        (2, ["bad host!"], "neither an IP"),
    ],
)
def test_bad_requests_are_refused_before_anything_is_written(tmp_path, clients, hosts, match):
    with pytest.raises(ConfigError, match=match):
        create_pki(tmp_path / "pki", clients=clients, hosts=hosts)
    assert list(tmp_path.iterdir()) == []


def _pem_der(path: Path) -> bytes:
    """DER from PEM by hand (base64 between the armour lines), independent of cryptography."""
    body = "".join(line for line in path.read_text().splitlines() if not line.startswith("-----"))
    return base64.b64decode(body)


def test_the_enrolment_list_knows_clients_by_certificate_fingerprint_not_by_name(pki, other_pki):
    enrolment = Enrolment.load(pki.enrolment)
    document = json.loads(pki.enrolment.read_text())
    for identity in pki.clients:
        der = _pem_der(identity.certificate)
        assert (
            document["clients"][str(identity.client_id)]["certificate_sha256"]
            == hashlib.sha256(der).hexdigest()
        )
        assert enrolment.client_id_of(identity.certificate.read_bytes()) == identity.client_id
        assert enrolment.client_id_of(der) == identity.client_id
    impostor = other_pki.clients[0]  # also named client-0, by another CA
    assert _certificate(impostor.certificate).subject.rfc4514_string().startswith("CN=client-0")
    assert enrolment.client_id_of(impostor.certificate.read_bytes()) is None
    assert enrolment.client_id_of(pki.server.certificate.read_bytes()) is None


def test_revoke_rewrites_the_list_atomically_and_refresh_reports_the_revoked(pki, tmp_path):
    path = tmp_path / "enrolment.json"
    path.write_bytes(pki.enrolment.read_bytes())
    enrolment = Enrolment.load(path)
    original = enrolment.clients
    assert enrolment.refresh() == frozenset()  # unchanged
    seen_errors: list[Exception] = []
    done = threading.Event()

    def read_while_writing() -> None:
        while not done.is_set():
            try:
                ids = Enrolment.load(path).ids
                assert ids in ({0, 1, 2}, {0, 2}), ids
            except Exception as error:  # a torn read would show up here
                seen_errors.append(error)

    reader = threading.Thread(target=read_while_writing)
    reader.start()
    try:
        for _ in range(40):
            revoke(path, 1)
            write_enrolment(path, original)
    finally:
        done.set()
        reader.join(timeout=30)
    assert not reader.is_alive() and seen_errors == []
    revoke(path, 1)
    assert enrolment.refresh() == frozenset({1})
    assert enrolment.ids == {0, 2}
    assert enrolment.client_id_of(pki.clients[1].certificate.read_bytes()) is None
    assert enrolment.refresh() == frozenset()
    with pytest.raises(ConfigError, match="not enrolled"):
        revoke(path, 1)
    # re-keyed: the same id with another certificate counts as revoked (its old certificate is)
    changed = enrolment.clients
    changed[2] = type(changed[2])(changed[2].name, "0" * 64, changed[2].verify_key)
    write_enrolment(path, changed)
    assert enrolment.refresh() == frozenset({2})
    assert [p.name for p in tmp_path.iterdir()] == ["enrolment.json"]  # no temporary files left


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda d: "not json", "not JSON"),
        (lambda d: {"clients": d["clients"], "extra": 1}, "one object"),
        (lambda d: {"clients": {"01": d["clients"]["0"]}}, "not an integer"),
        (
            lambda d: {"clients": {"0": {**d["clients"]["0"], "certificate_sha256": "AB" * 32}}},
            "64 lowercase hex",
        ),
        (lambda d: {"clients": {"0": d["clients"]["0"], "1": d["clients"]["0"]}}, "enrolled twice"),
        (lambda d: {"clients": {"0": {**d["clients"]["0"], "verify_key": "00" * 31}}}, "raw Ed25519 key"),
        (lambda d: {"clients": {"0": {"name": "client-0"}}}, "needs exactly"),
    ],
)
def test_a_malformed_enrolment_list_is_refused_and_a_refresh_keeps_the_last_good_one(
    pki, tmp_path, edit, match
):
    path = tmp_path / "enrolment.json"
    path.write_bytes(pki.enrolment.read_bytes())
    enrolment = Enrolment.load(path)
    edited = edit(json.loads(path.read_text()))
    path.write_text(edited if isinstance(edited, str) else json.dumps(edited))
    with pytest.raises(ConfigError, match=match):
        Enrolment.load(path)
    with pytest.raises(ConfigError, match=match):
        enrolment.refresh()
    assert enrolment.ids == {0, 1, 2}


def test_missing_or_mismatched_identity_files_are_named(pki, other_pki, tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_identity(tmp_path / "nowhere")
    copy = tmp_path / "client-0"
    copy.mkdir()
    source = pki.clients[0].certificate.parent
    for name in ("cert.pem", "ca.pem"):
        (copy / name).write_bytes((source / name).read_bytes())
    with pytest.raises(ConfigError, match="lacks key.pem"):
        load_identity(copy)
    (copy / "key.pem").write_bytes(pki.clients[1].private_key.read_bytes())
    with pytest.raises(ConfigError, match="is not the key of"):
        load_identity(copy)
    (copy / "key.pem").write_bytes((source / "key.pem").read_bytes())
    with pytest.raises(ConfigError, match="lacks signing-key.pem"):
        load_identity(copy)
    (copy / "signing-key.pem").write_bytes((source / "signing-key.pem").read_bytes())
    assert load_identity(copy).client_id == 0
    (copy / "ca.pem").write_bytes(other_pki.ca_certificate.read_bytes())
    with pytest.raises(ConfigError, match="another federation"):
        load_identity(copy)
