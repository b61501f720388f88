"""federation.toml: written and read back whole, its [run] parsed as `securefl train` parses a
TOML file, every bad key a ConfigError naming `federation.<key>` or `run.<field>`."""

from __future__ import annotations

import dataclasses
import os
import tomllib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from securefl.config import CentralDPConfig, DPConfig, RunConfig, SecAggConfig
from securefl.deploy.federation_file import FederationFile
from securefl.errors import ConfigError

RUN = RunConfig(dataset="digits", model="mlp", clients=4, rounds=3, secagg=SecAggConfig(bits=24))
PKI = {
    "ca": "ca/ca.pem",
    "server_cert": "server/cert.pem",
    "server_key": "server/key.pem",
    "enrolment": "e.json",
}


def federation(**changes) -> FederationFile:
    values = {"run": RUN, "address": "127.0.0.1:50051", "max_client_samples": 400, **PKI, **changes}
    return FederationFile(**values)


RUN_TABLE = """
[run]
dataset = "digits"
model = "mlp"
clients = 4
rounds = 3
lr = 0.2
[run.secagg]
bits = 24
[run.central-dp]
clip-norm = 0.5
client_sampling = "fixed"
"""

FEDERATION_TABLE = """
[federation]
address = "[::1]:6000"
step-deadline-seconds = 5
join_timeout_seconds = 30.5
min_clients = 3
ca = "ca/ca.pem"
server_cert = "server/cert.pem"
server_key = "server/key.pem"
enrolment = "enrolment.json"
"""


def test_written_file_loads_back_equal(tmp_path: Path) -> None:
    written = federation(
        run=dataclasses.replace(RUN, dp=DPConfig(noise_multiplier=1.1), lr=0.3),
        step_deadline_seconds=2.5,
        min_clients=3,
    )
    path = tmp_path / "federation.toml"
    written.write(path)
    loaded = FederationFile.load(path)
    assert loaded.run.to_dict() == written.run.to_dict()
    assert dataclasses.replace(loaded, run=written.run, directory=written.directory) == written
    assert loaded.directory == tmp_path and loaded.fingerprint() == written.fingerprint()
    table = tomllib.loads(path.read_text(encoding="utf-8"))  # an independent TOML reader
    assert table["federation"]["min_clients"] == 3 and table["run"]["dp"]["noise_multiplier"] == 1.1
    assert table["run"]["lr"] == 0.3 and "central_dp" not in table["run"]


def test_run_table_is_read_as_securefl_train_reads_a_toml_file(tmp_path: Path) -> None:
    (tmp_path / "run.toml").write_text(RUN_TABLE.replace("[run.", "[").replace("[run]\n", ""))
    reference = RunConfig.from_toml(tmp_path / "run.toml")
    (tmp_path / "federation.toml").write_text(RUN_TABLE + FEDERATION_TABLE)
    loaded = FederationFile.load(tmp_path / "federation.toml")
    assert loaded.run == reference
    assert (loaded.host, loaded.port, loaded.min_clients) == ("::1", 6000, 3)
    assert (loaded.step_deadline_seconds, loaded.join_timeout_seconds) == (5.0, 30.5)
    assert loaded.max_client_samples is None and not loaded.weight_bound_used  # DP-FedAvg: weight 1
    assert loaded.path("enrolment") == tmp_path / "enrolment.json"


def test_min_clients_defaults_to_the_clients_per_round() -> None:
    assert federation().min_clients == 4
    assert federation(run=dataclasses.replace(RUN, clients_per_round=3)).min_clients == 3


def test_fingerprint_follows_the_results_not_the_operations() -> None:
    base = federation()
    assert federation(address="10.0.0.1:1", step_deadline_seconds=1, insecure=True).fingerprint() == (
        base.fingerprint()
    )
    explicit_default = dataclasses.replace(RUN, lr=RUN.training.lr)  # digits' own lr, written out
    assert federation(run=explicit_default).fingerprint() == base.fingerprint()
    assert federation(run=dataclasses.replace(RUN, lr=0.01)).fingerprint() != base.fingerprint()
    assert federation(max_client_samples=401).fingerprint() != base.fingerprint()
    assert federation(min_clients=3).fingerprint() != base.fingerprint()


@settings(max_examples=50, deadline=None)
@given(st.text(st.characters(exclude_categories=("Cs",)), min_size=1).filter(str.strip))
def test_any_path_text_survives_the_toml_writer(tmp_path_factory, text: str) -> None:
    path = tmp_path_factory.mktemp("f") / "federation.toml"
    federation(ca=text).write(path)
    assert FederationFile.load(path).ca == text


def test_insecure_federation_needs_no_certificates() -> None:
    plain = FederationFile(run=RUN, address="127.0.0.1:7000", max_client_samples=10, insecure=True)
    assert plain.ca is None
    with pytest.raises(ConfigError, match="`federation.ca` is not given"):
        plain.path("ca")


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"address": "localhost"}, "not host:port.*`federation.address`"),
        ({"address": "127.0.0.1:70000"}, "outside 1..65535.*`federation.address`"),
        ({"address": "::1:80"}, r"not host:port.*\[::1\]"),
        ({"step_deadline_seconds": 0}, "`federation.step_deadline_seconds`"),
        ({"join_timeout_seconds": float("inf")}, "`federation.join_timeout_seconds`"),
        ({"min_clients": 5}, "min clients 5 > .* 4 clients.*`federation.min_clients`"),
        ({"min_clients": 1}, "at least 2 clients.*`federation.min_clients`"),
        ({"min_clients": 2.0}, "`federation.min_clients` must be an integer"),
        ({"max_client_samples": None}, "`federation.max_client_samples` is not given.*`secagg`"),
        ({"max_client_samples": 0}, "`federation.max_client_samples` 1 or more"),
        ({"insecure": "no"}, "`federation.insecure` must be true or false"),
        ({"step_deadline_seconds": True}, "`federation.step_deadline_seconds` must be a number"),
        ({"ca": None}, "`federation.ca` not given.*`federation.insecure`"),
        ({"enrolment": " "}, "`federation.enrolment` is empty"),
    ],
)
def test_bad_federation_values_name_their_key(changes: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        federation(**changes)


def test_weight_bound_must_fit_the_ring() -> None:
    """An 8-bit ring leaves (255 // 4) // 2 = 31 levels to each of 4 clients (quantize.level_for)."""
    small = dataclasses.replace(RUN, secagg=SecAggConfig(bits=8))
    assert federation(run=small, max_client_samples=31).max_client_samples == 31
    with pytest.raises(
        ConfigError, match="32 > the 31 levels.*`federation.max_client_samples`.*`run.secagg.bits`"
    ):
        federation(run=small, max_client_samples=32)


def test_weight_bound_is_not_needed_without_secure_aggregation_or_under_central_dp() -> None:
    assert not federation(
        run=dataclasses.replace(RUN, secagg=None), max_client_samples=None
    ).weight_bound_used
    central = dataclasses.replace(RUN, central_dp=CentralDPConfig(client_sampling="fixed", delta=1e-3))
    assert federation(run=central, max_client_samples=None).max_client_samples is None


@pytest.mark.parametrize(
    ("text", "match"),
    [
        (RUN_TABLE, r"the \[federation\] table is missing"),
        (FEDERATION_TABLE, r"the \[run\] table is missing"),
        (RUN_TABLE + FEDERATION_TABLE + "\n[extra]\n", "unknown table or key 'extra'"),
        (RUN_TABLE + FEDERATION_TABLE + "port = 1\n", "unknown key 'port' in the \\[federation\\] table"),
        (RUN_TABLE.replace("lr = 0.2", "lr = -1") + FEDERATION_TABLE, r"\[run\]: .*`run.lr`"),
        (RUN_TABLE.replace("lr = 0.2", "learning_rate = 1") + FEDERATION_TABLE, "unknown setting"),
        (
            RUN_TABLE + FEDERATION_TABLE.replace('address = "[::1]:6000"', ""),
            "`federation.address` is missing",
        ),
        (RUN_TABLE + FEDERATION_TABLE + "address = 'x'\n", "not valid TOML"),
        (RUN_TABLE + FEDERATION_TABLE + "min-clients = 2\n", "`federation.min_clients` is given twice"),
    ],
)
def test_bad_files_name_the_file_and_the_setting(tmp_path: Path, text: str, match: str) -> None:
    path = tmp_path / "federation.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=match) as caught:
        FederationFile.load(path)
    assert str(path) in str(caught.value)


def test_missing_file_says_how_to_make_one(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist: create one with `securefl federation init`"):
        FederationFile.load(tmp_path / "federation.toml")


def test_a_failed_write_leaves_the_previous_file_whole(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "federation.toml"
    federation().write(path)
    before = path.read_bytes()

    def interrupted(source: str, target: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", interrupted)
    with pytest.raises(OSError, match="disk full"):
        federation(min_clients=3).write(path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["federation.toml"]  # the temporary file is gone


def test_plain_text_only_with_the_programs_own_flag_and_only_on_loopback() -> None:
    secure = federation(address="127.0.0.1:7000")
    assert secure.plain_text(False) is False
    for host in ("127.0.0.1", "[::1]", "localhost"):
        assert federation(address=f"{host}:7000").plain_text(True) is True
    with pytest.raises(ConfigError, match="not a loopback address"):
        federation(address="10.0.0.1:7000").plain_text(True)
    # a federation.toml handed to every client cannot switch a client's TLS off by itself
    unsigned = FederationFile(run=RUN, address="127.0.0.1:7000", max_client_samples=10, insecure=True)
    with pytest.raises(ConfigError, match="--insecure on this program's own command line"):
        unsigned.plain_text(False)
    assert unsigned.plain_text(True) is True
