"""Worker processes carry the same bytes as the in-process transport: the same final weights, bit
for bit, whichever worker finishes first; the workers start and stop with the run."""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import math
import multiprocessing
import os
import signal
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
from securefl.config import DPConfig, RunConfig
from securefl.federation import build_federation, build_programs
from securefl.transports.processes import ProcessTransport

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "bit_identity"
_spec = importlib.util.spec_from_file_location("bit_identity_configs", FIXTURES / "configs.py")
assert _spec is not None and _spec.loader is not None
configs = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(configs)


@pytest.mark.filterwarnings("ignore:secure-aggregation parameters break a rule")
@pytest.mark.parametrize("name", ["fedavg", "secagg_dropout", "secagg_abort", "secagg_active"])
@pytest.mark.parametrize(("workers", "threads"), [(2, 1), (3, 1), (2, 2)])
def test_workers_give_the_fixture_weights_bit_for_bit(name, workers, threads):
    """The fixtures were written with one thread in one process; the workers compute with one
    thread each whatever this process uses for the server's side."""
    previous = torch.get_num_threads()
    try:
        config = dataclasses.replace(configs.build_config(name), workers=workers, threads=threads)
        history = run_simulation(config)
    finally:
        torch.set_num_threads(previous)
    expected = load_file(str(FIXTURES / f"{name}.safetensors"))
    state = history.model.state_dict()
    for key, tensor in expected.items():
        assert torch.equal(state[key], tensor), f"{name} with {workers} workers: {key} differs"
    assert not multiprocessing.active_children()  # every worker stopped with the run


def test_a_worker_keeps_its_clients_state_across_rounds_and_stops_on_close():
    config = RunConfig(dataset="digits", model="mlp", clients=4, rounds=2, lr=0.05, batch_size=16)
    fed = build_federation(config)
    programs = build_programs(fed)
    with ProcessTransport(workers=2) as transport:
        transport.enrol(programs.server, programs.clients)
        assert programs.server.eligible == [0, 1, 2, 3]
        for _ in range(2):
            transport.run_round(programs.server, programs.clients)
        processes = list(transport._processes)
        assert all(p.is_alive() for p in processes)
    assert [r.survivors for r in programs.server.records] == [4, 4]
    assert not any(p.is_alive() for p in processes)


def _programs():
    config = RunConfig(dataset="digits", model="mlp", clients=4, rounds=3, lr=0.05, batch_size=16)
    return build_programs(build_federation(config))


def test_a_worker_killed_mid_run_is_reported_with_its_signal_and_the_others_stop():
    programs = _programs()
    transport = ProcessTransport(workers=2)
    with transport:
        transport.enrol(programs.server, programs.clients)
        transport.run_round(programs.server, programs.clients)
        victim = transport._processes[1]
        os.kill(victim.pid, signal.SIGKILL)
        victim.join(timeout=10)
        with pytest.raises(RuntimeError, match=r"worker 1 \(pid \d+\) was killed by signal 9"):
            transport.run_round(programs.server, programs.clients)
        survivors = list(transport._processes)
    assert not any(p.is_alive() for p in survivors)


WORKERS_OF_A_KILLED_PARENT = """
import os, sys, time
from securefl.config import DPConfig, RunConfig
from securefl.federation import build_federation, build_programs
from securefl.transports.processes import ProcessTransport
config = RunConfig(dataset="digits", model="mlp", clients=4, rounds=3, lr=0.05, batch_size=16)
programs = build_programs(build_federation(config))
transport = ProcessTransport(workers=2)
transport.enrol(programs.server, programs.clients)
print(" ".join(str(p.pid) for p in transport._processes), flush=True)
time.sleep(60)
"""


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split()[2]
    except FileNotFoundError:
        return False
    return state != "Z"


def test_workers_exit_when_their_parent_is_killed():
    parent = subprocess.Popen(
        [sys.executable, "-c", WORKERS_OF_A_KILLED_PARENT], stdout=subprocess.PIPE, text=True
    )
    try:
        assert parent.stdout is not None
        pids = [int(pid) for pid in parent.stdout.readline().split()]
        assert len(pids) == 2 and all(_alive(pid) for pid in pids)
        parent.kill()
        parent.wait(timeout=10)
        deadline = time.monotonic() + 10
        while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(_alive(pid) for pid in pids), "a worker outlived its killed parent"
    finally:
        parent.kill()


def test_dp_sgd_in_workers_reports_the_ledgers_of_one_process_and_opacus_agrees():
    """DP noise is secret OS randomness, so the weights differ from run to run; the ledgers are
    deterministic: each client's rounds, steps and ε are those of the same run in one process, and
    ε is Opacus' RDP analysis of the client's own history."""
    config = RunConfig(**DP_RUN, rounds=3, dp=DPConfig(noise_multiplier=1.1, delta=1e-4))
    one = run_simulation(dataclasses.replace(config, workers=1))
    two = run_simulation(dataclasses.replace(config, workers=2))
    assert two.privacy == one.privacy
    assert [without_noise(r) for r in two.records] == [without_noise(r) for r in one.records]
    clients = two.privacy["sample_level"]["clients"]
    assert sum(len(client["rounds"]) for client in clients.values()) == 3 * 3
    orders = RDPAccountant.DEFAULT_ALPHAS
    for client in clients.values():
        n = client["num_samples"]
        steps = len(client["rounds"]) * math.ceil(n / 16)
        rdp = compute_rdp(q=16 / n, noise_multiplier=1.1, steps=steps, orders=orders)
        expected = get_privacy_spent(orders=orders, rdp=rdp, delta=1e-4)[0] if steps else 0.0
        assert client["epsilon"] == pytest.approx(expected, rel=1e-9)
    assert two.records[-1].privacy["epsilon_max"] == max(c["epsilon"] for c in clients.values())


def test_a_client_past_its_budget_stops_in_its_worker_as_in_one_process():
    """At noise 1 a client fits two rounds in ε = 2.5 (2.29, a third would reach 2.63): the workers'
    clients take themselves out of sampling, and the run stops, exactly as in one process."""
    config = RunConfig(**DP_RUN, rounds=6, dp=DPConfig(noise_multiplier=1.0, target_epsilon=2.5, delta=1e-4))
    one = run_simulation(dataclasses.replace(config, workers=1))
    two = run_simulation(dataclasses.replace(config, workers=2))
    assert two.stopped_early is not None and two.stopped_early == one.stopped_early
    assert two.privacy == one.privacy
    assert [without_noise(r) for r in two.records] == [without_noise(r) for r in one.records]
    ledger = two.privacy["sample_level"]
    assert ledger["excluded_clients"] and all(
        len(client["rounds"]) == 2 for client in ledger["clients"].values() if client["excluded"]
    )
    assert all(r.privacy["epsilon_max"] <= 2.5 for r in two.records)


AFTER_A_MULTI_THREADED_POOL = """
import torch
from securefl import run_simulation
from securefl.config import DPConfig, RunConfig
torch.set_num_threads(2)
x = torch.randn(256, 1, 28, 28)
conv = torch.nn.Conv2d(1, 10, 5)
for _ in range(3):  # GNU OpenMP now holds a pool of two threads in this process
    conv(x).sum().backward()
    torch.randn(512, 512) @ torch.randn(512, 512)
settings = dict(dataset="mnist-sample", model="cnn", clients=4, rounds=1, local_epochs=1, device="cpu")
forked = run_simulation(RunConfig(**settings, workers=2, threads=2)).model.state_dict()
alone = run_simulation(RunConfig(**settings, workers=1, threads=1)).model.state_dict()
print(all(torch.equal(forked[key], alone[key]) for key in alone))
"""


def test_workers_forked_after_a_multi_threaded_pool_do_not_hang():
    """GNU OpenMP cannot run a multi-threaded region in a child forked after its parent ran one
    (it waits for pool threads the fork did not copy); the workers run one thread, so a run with
    `threads` 2, forked after a two-thread pool, finishes, with the weights of one process."""
    run = subprocess.Popen(
        [sys.executable, "-c", AFTER_A_MULTI_THREADED_POOL],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its workers too are stopped below, hung or not
    )
    try:
        out, err = run.communicate(timeout=300)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(run.pid, signal.SIGKILL)
        run.wait()
    assert run.returncode == 0, err
    assert out.split() == ["True"]


def test_a_worker_that_misses_the_deadline_is_killed_and_its_clients_drop_out():
    """A SIGSTOPped worker would block the parent for ever; with a turn timeout it is killed, its
    clients are dropouts (this round and the next) and the other worker's clients carry on."""
    programs = _programs()
    with ProcessTransport(workers=2, turn_timeout=8) as transport:
        transport.enrol(programs.server, programs.clients)
        transport.run_round(programs.server, programs.clients)
        stopped = transport._processes[1]
        os.kill(stopped.pid, signal.SIGSTOP)
        started = time.monotonic()
        transport.run_round(programs.server, programs.clients)
        assert time.monotonic() - started < 60
        assert not stopped.is_alive()
        transport.run_round(programs.server, programs.clients)
    first, second, third = programs.server.records
    assert (first.clients, first.survivors) == (4, 4)
    assert (second.clients, second.survivors) == (4, 2)  # clients 1 and 3 lived in worker 1
    assert (third.clients, third.survivors) == (4, 2)
    assert second.status.value == third.status.value == "ok"


def test_one_dp_trainer_shared_by_clients_of_both_workers_reports_every_clients_rounds():
    """A federation may give every client one trainer (one ledger for all, as the audit does):
    each worker's copy of it is current for its own clients only, and the run reports what the
    same federation reports in one process."""
    from securefl.privacy import DPSGDTrainer

    config = RunConfig(**DP_RUN, rounds=2, dp=DPConfig(noise_multiplier=1.1, delta=1e-4))
    histories = []
    for workers in (1, 2):
        fed = build_federation(config)
        shared = DPSGDTrainer(
            config=config.dp,
            client_sizes={shard.client_id: len(shard) for shard in fed.shards},
            rounds=config.rounds,
            local_epochs=1,
            batch_size=16,
            model=fed.eval_model,
            task=fed.dataset.task,
            lr=0.05,
        )
        shared_fed = dataclasses.replace(fed, trainers=dict.fromkeys(shared.plans, shared))
        histories.append(run_simulation(dataclasses.replace(config, workers=workers), federation=shared_fed))
    one, two = histories
    assert two.privacy == one.privacy
    assert sum(len(client["rounds"]) for client in two.privacy["sample_level"]["clients"].values()) == 2 * 3
