"""Ray actors carry the same bytes as the in-process transport: the fixtures' weights bit for bit,
the DP-SGD ledgers of one process (and Opacus' accountant); a dead or silent actor is named, and a
bad cluster address or a missing Ray is a clear configuration error.

One local Ray instance for the module (2 CPUs, no dashboard, on the loopback address), shut down
by its fixture; every run is bounded in time.  Skipped, saying why, where Ray is not installed
(`make test` installs the extra, so CI runs them)."""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import json
import math
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from dp_runs import DP_RUN, without_noise
from opacus.accountants.analysis.rdp import compute_rdp, get_privacy_spent
from opacus.accountants.rdp import RDPAccountant
from safetensors.torch import load_file

from securefl import run_simulation
from securefl.config import DPConfig, RunConfig, ray_endpoint
from securefl.errors import ConfigError
from securefl.federation import build_federation, build_programs
from securefl.transports.ray_actors import RayTransport, shard_from_bytes, shard_to_bytes

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "bit_identity"
_spec = importlib.util.spec_from_file_location("bit_identity_configs", FIXTURES / "configs.py")
assert _spec is not None and _spec.loader is not None
configs = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(configs)

RUN_SECONDS = 300  # a run on a loaded 2-core machine takes well under this
NEEDS_RAY = "the Ray backend's tests need Ray: pip install 'securefl[ray]' (make test installs it)"


@contextlib.contextmanager
def _within(seconds: float):
    """Fail (rather than hang) whatever runs inside past ``seconds``."""

    def expire(signum, frame):
        raise TimeoutError(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@pytest.fixture(scope="module")
def local_ray():
    ray = pytest.importorskip("ray", reason=NEEDS_RAY)
    with _within(RUN_SECONDS):
        ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1")
    try:
        yield ray
    finally:
        ray.shutdown()


@pytest.fixture
def actors_started(monkeypatch):
    """How many actors each Ray transport a run built started: proof the run went through Ray."""
    started: list[int] = []
    enrol = RayTransport.enrol

    def counted(self, server, clients):
        enrol(self, server, clients)
        started.append(len(self._handles))

    monkeypatch.setattr(RayTransport, "enrol", counted)
    return started


def _run(config: RunConfig):
    threads = torch.get_num_threads()
    try:
        with _within(RUN_SECONDS):
            return run_simulation(config)
    finally:
        torch.set_num_threads(threads)


@pytest.mark.filterwarnings("ignore:secure-aggregation parameters break a rule")
@pytest.mark.parametrize("name", ["fedavg", "secagg_dropout", "secagg_active"])
def test_ray_actors_give_the_fixture_weights_bit_for_bit(local_ray, actors_started, name):
    """Plain FedAvg, --secagg with dropouts at every protocol step, and secure aggregation against
    an active server (each client's signing key sent to its actor): the weights the in-process
    transport wrote, from clients built on two actors."""
    history = _run(dataclasses.replace(configs.build_config(name), backend="ray", workers=2))
    assert actors_started == [2]
    expected = load_file(str(FIXTURES / f"{name}.safetensors"))
    state = history.model.state_dict()
    for key, tensor in expected.items():
        assert torch.equal(state[key], tensor), f"{name} on Ray actors: {key} differs"
    assert len(history.records) == 3
    _wait_for_free_cpus(local_ray)  # the run stopped its actors


def _wait_for_free_cpus(ray, seconds: float = 60) -> None:
    """Every CPU of the module's instance free again (the actors hold one each until killed)."""
    deadline = time.monotonic() + seconds
    while ray.available_resources().get("CPU", 0) < 2:
        assert time.monotonic() < deadline, f"actors still hold CPUs: {ray.available_resources()}"
        time.sleep(0.2)


def test_dp_sgd_on_actors_reports_the_ledgers_of_one_process_and_opacus_agrees(local_ray, actors_started):
    """DP noise is secret OS randomness, so the weights differ from run to run; the ledgers are
    deterministic.  At noise 1 a client fits two rounds in ε = 2.5 (a third would pass it): the
    actors' clients take themselves out of sampling and the run stops, as in one process, and
    each client's ε is Opacus' RDP analysis of its own history."""
    config = RunConfig(**DP_RUN, rounds=5, dp=DPConfig(noise_multiplier=1.0, target_epsilon=2.5, delta=1e-4))
    local = _run(dataclasses.replace(config, workers=1))
    on_ray = _run(dataclasses.replace(config, backend="ray", workers=2))
    assert actors_started == [2]
    assert on_ray.privacy == local.privacy
    assert on_ray.stopped_early is not None and on_ray.stopped_early == local.stopped_early
    assert [without_noise(r) for r in on_ray.records] == [without_noise(r) for r in local.records]
    clients = on_ray.privacy["sample_level"]["clients"]
    assert any(client["excluded"] for client in clients.values())
    orders = RDPAccountant.DEFAULT_ALPHAS
    for client in clients.values():
        n = client["num_samples"]
        steps = len(client["rounds"]) * math.ceil(n / 16)
        rdp = compute_rdp(q=16 / n, noise_multiplier=1.0, steps=steps, orders=orders)
        expected = get_privacy_spent(orders=orders, rdp=rdp, delta=1e-4)[0] if steps else 0.0
        assert client["epsilon"] == pytest.approx(expected, rel=1e-9)
        assert client["epsilon"] <= 2.5


def _transport_and_programs(config: RunConfig, *, timeout: float):
    federation = build_federation(config)
    transport = RayTransport(config, shards=federation.shards, actors=2, timeout=timeout)
    return transport, build_programs(federation)


SMALL = RunConfig(dataset="digits", model="mlp", clients=4, rounds=3, lr=0.05, batch_size=16, backend="ray")


def test_a_killed_actor_is_named_with_its_clients_and_close_stops_the_others(local_ray):
    transport, programs = _transport_and_programs(SMALL, timeout=RUN_SECONDS)
    with transport:
        transport.enrol(programs.server, programs.clients)
        transport.run_round(programs.server, programs.clients)
        assert programs.server.records[-1].survivors == 4
        assert programs.clients.built == 0  # the clients live on the actors, none in this process
        handles = list(transport._handles)
        local_ray.kill(handles[1])
        with pytest.raises(RuntimeError, match=r"Ray actor 1 \(clients \[1, 3\]\) died"):
            transport.run_round(programs.server, programs.clients)
    with pytest.raises(local_ray.exceptions.RayActorError):  # close() stopped actor 0 too
        local_ray.get(handles[0].turn.remote({}), timeout=60)


def test_actors_that_do_not_answer_in_time_are_named_and_stopped(local_ray):
    transport, programs = _transport_and_programs(SMALL, timeout=1e-3)  # no actor starts that fast
    with transport:
        with pytest.raises(RuntimeError, match=r"Ray actor 0 \(clients \[0, 2\]\) did not answer within"):
            transport.enrol(programs.server, programs.clients)
        handles = list(transport._handles)
    assert len(handles) == 2
    for handle in handles:
        with pytest.raises(local_ray.exceptions.RayActorError):
            local_ray.get(handle.turn.remote({}), timeout=60)
    _wait_for_free_cpus(local_ray)


def test_a_setting_an_actor_refuses_comes_back_as_a_config_error_naming_it(local_ray, monkeypatch):
    """As from a node whose securefl does not know a setting this one sent (a version skew)."""
    transport, programs = _transport_and_programs(SMALL, timeout=RUN_SECONDS)
    sent = json.loads(SMALL.to_json())
    monkeypatch.setattr(RunConfig, "to_json", lambda self: json.dumps({**sent, "colour": "blue"}))
    with (
        transport,
        pytest.raises(ConfigError, match=r"Ray actor 0 \(clients \[0, 2\]\): unknown setting 'colour'"),
    ):
        transport.enrol(programs.server, programs.clients)


def test_more_actors_than_the_cluster_has_cpus_are_refused(local_ray):
    federation = build_federation(SMALL)
    programs = build_programs(federation)
    with (
        RayTransport(SMALL, shards=federation.shards, actors=3, timeout=RUN_SECONDS) as transport,
        pytest.raises(
            ConfigError, match=r"`workers` 3 Ray actors need a CPU each, and the Ray cluster has 2"
        ),
    ):
        transport.enrol(programs.server, programs.clients)


def test_a_cluster_address_cannot_be_joined_while_ray_runs_here(local_ray):
    config = dataclasses.replace(SMALL, ray_address="127.0.0.1:6379")
    transport, programs = _transport_and_programs(config, timeout=RUN_SECONDS)
    with transport, pytest.raises(ConfigError, match="already running in this process"):
        transport.enrol(programs.server, programs.clients)
    assert local_ray.is_initialized()  # the module's instance is left as it was


CLI = "import sys; from securefl.cli.app import main; sys.exit(main(sys.argv[1:]))"


def test_an_address_nothing_listens_on_exits_2_naming_the_flag(tmp_path):
    """A fresh process (this one's Ray is the fixture's): refused at once, not after Ray's minutes
    of retries, with exit code 2 and nothing written."""
    pytest.importorskip("ray", reason=NEEDS_RAY)
    with socket.socket() as bound:  # a loopback port that is bound but does not listen: refused
        bound.bind(("127.0.0.1", 0))
        port = bound.getsockname()[1]
        out = tmp_path / "run"
        args = ["train", "--dataset", "digits", "--model", "mlp", "--clients", "2", "--rounds", "1"]
        args += ["--backend", "ray", "--ray-address", f"127.0.0.1:{port}", "--out", str(out)]
        done = subprocess.run(
            [sys.executable, "-c", CLI, *args],
            capture_output=True,
            text=True,
            timeout=RUN_SECONDS,
        )
    assert done.returncode == 2, done.stderr
    assert f"no Ray cluster answers at --ray-address 127.0.0.1:{port}" in " ".join(done.stderr.split())
    assert "Traceback" not in done.stderr
    assert not out.exists() and not (tmp_path / "run.partial").exists()


def test_without_ray_the_backend_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # what `import ray` meets where it is absent
    with pytest.raises(ConfigError, match=r"pip install 'securefl\[ray\]'"):
        RayTransport(SMALL, shards=[])


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"backend": "spark"}, "unknown backend 'spark': set `backend` to one of local, ray"),
        ({"ray_address": "auto"}, "`ray_address` is the cluster of `backend` ray"),
        ({"backend": "ray", "ray_address": "head node:6379"}, "is not auto, HOST:PORT or ray://HOST:PORT"),
        ({"backend": "ray", "ray_address": "ray://head:65536"}, "is not auto, HOST:PORT or ray://HOST:PORT"),
    ],
)
def test_bad_ray_settings_are_refused_naming_the_field(settings, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        RunConfig(dataset="digits", model="mlp", **settings)


@pytest.mark.parametrize(
    ("address", "endpoint"),
    [
        ("auto", None),
        ("10.0.0.5:6379", ("10.0.0.5", 6379)),
        ("ray://head.example:10001", ("head.example", 10001)),
        ("[::1]:6379", ("::1", 6379)),
    ],
)
def test_a_cluster_address_is_read_as_its_host_and_port(address, endpoint):
    assert ray_endpoint(address) == endpoint
    assert RunConfig(dataset="digits", model="mlp", backend="ray", ray_address=address).ray_address == address


def test_a_shard_travels_as_safetensors_bytes_unchanged():
    shard = build_federation(dataclasses.replace(SMALL, clients=2)).shards[1]
    data = shard_to_bytes(shard)
    copy = shard_from_bytes(1, data)
    assert copy.client_id == 1 and torch.equal(copy.x, shard.x) and torch.equal(copy.y, shard.y)
    assert copy.x.dtype == shard.x.dtype and copy.y.dtype == shard.y.dtype
