"""`securefl federation init`: the PKI and federation.toml written together, checked with
`cryptography`'s own X.509 verification; bad input exits 2 and leaves nothing behind."""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path

from cryptography import x509

from securefl.cli.app import main
from securefl.config import RunConfig
from securefl.deploy.federation_file import FederationFile


def test_init_writes_certificates_and_a_federation_file_that_names_them(tmp_path: Path, capsys) -> None:
    directory = tmp_path / "fed"
    code = main(
        ["federation", "init", str(directory), "--clients", "3", "--address", "127.0.0.2:50123"]
        + ["--dataset", "digits", "--model", "mlp", "--rounds", "4", "--secagg", "--step-deadline", "7.5"]
    )
    assert code == 0
    federation = FederationFile.load(directory / "federation.toml")
    assert (
        federation.run.to_dict()
        == RunConfig.from_mapping(
            {"dataset": "digits", "model": "mlp", "clients": 3, "rounds": 4, "secagg": True}
        ).to_dict()
    )
    assert federation.run.secagg is not None and federation.run.dp is None
    assert (federation.address, federation.step_deadline_seconds, federation.insecure) == (
        "127.0.0.2:50123",
        7.5,
        False,
    )
    assert federation.min_clients == 3 and federation.max_client_samples == 1_438  # digits' train split

    ca = x509.load_pem_x509_certificate(federation.path("ca").read_bytes())
    server = x509.load_pem_x509_certificate(federation.path("server_cert").read_bytes())
    server.verify_directly_issued_by(ca)  # raises unless the CA signed it
    names = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert ipaddress.ip_address("127.0.0.2") in names.get_values_for_type(x509.IPAddress)
    assert federation.path("server_key").is_file()
    enrolment = json.loads(federation.path("enrolment").read_text())
    assert len(enrolment["clients"]) == 3
    for i in range(3):
        client = x509.load_pem_x509_certificate((directory / f"client-{i}" / "cert.pem").read_bytes())
        client.verify_directly_issued_by(ca)

    out = capsys.readouterr().out
    assert "securefl server --federation" in out and "securefl client --federation" in out
    assert "client-0" in out and "[run]" in out


def test_init_refuses_a_non_empty_directory_and_leaves_it_alone(tmp_path: Path, capsys) -> None:
    directory = tmp_path / "fed"
    directory.mkdir()
    (directory / "precious.txt").write_text("keep me")
    assert main(["federation", "init", str(directory), "--clients", "2"]) == 2
    assert "not empty" in capsys.readouterr().err
    assert [p.name for p in directory.iterdir()] == ["precious.txt"]


def test_bad_flags_exit_2_naming_the_flag_and_create_nothing(tmp_path: Path, capsys) -> None:
    directory = tmp_path / "fed"
    cases = [
        (["--clients", "2", "--address", "nowhere"], "--address"),
        (["--clients", "2", "--step-deadline", "0"], "--step-deadline"),
        (["--clients", "2", "--secagg", "--min-clients", "1"], "--min-clients"),
        (["--clients", "0"], "--clients"),
        (["--clients", "2", "--rounds", "0"], "--rounds"),
        (["--clients", "2", "--model", "lenet"], "--model"),
    ]
    for flags, flag in cases:
        assert main(["federation", "init", str(directory), *flags]) == 2, flags
        err = capsys.readouterr().err
        assert "error:" in err and flag in err and "Traceback" not in err, (flags, err)
        assert not directory.exists()
        assert not list(tmp_path.iterdir())  # no staging folder left either


def test_init_insists_on_the_number_of_clients(tmp_path: Path, capsys) -> None:
    assert main(["federation", "init", str(tmp_path / "fed")]) == 2
    assert "--clients" in capsys.readouterr().err


def test_revoke_removes_the_client_from_the_enrolment_list_and_refuses_an_unknown_id(
    tmp_path: Path, capsys
) -> None:
    directory = tmp_path / "fed"
    assert main(["federation", "init", str(directory), "--clients", "3"]) == 0
    toml = directory / "federation.toml"
    before = json.loads((directory / "enrolment.json").read_text())["clients"]
    assert main(["federation", "revoke", "--federation", str(toml), "--client", "1"]) == 0
    after = json.loads((directory / "enrolment.json").read_text())["clients"]
    assert after == {c: entry for c, entry in before.items() if c != "1"}
    capsys.readouterr()
    assert main(["federation", "revoke", "--federation", str(toml), "--client", "1"]) == 2
    assert "not enrolled" in capsys.readouterr().err
    assert json.loads((directory / "enrolment.json").read_text())["clients"] == after
