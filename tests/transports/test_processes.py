"""Worker processes carry the same bytes as the in-process transport: the same final weights, bit
for bit, whichever worker finishes first; the workers start and stop with the run."""

from __future__ import annotations

import dataclasses
import importlib.util
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from securefl import run_simulation
from securefl.config import DPConfig, RunConfig
from securefl.errors import ConfigError
from securefl.federation import build_federation, build_programs
from securefl.transports.processes import ProcessTransport

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "bit_identity"
_spec = importlib.util.spec_from_file_location("bit_identity_configs", FIXTURES / "configs.py")
assert _spec is not None and _spec.loader is not None
configs = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(configs)


@pytest.mark.filterwarnings("ignore:secure-aggregation parameters break a rule")
@pytest.mark.parametrize("name", ["fedavg", "secagg_dropout", "secagg_abort", "secagg_active"])
@pytest.mark.parametrize("workers", [2, 3])
def test_workers_give_the_fixture_weights_bit_for_bit(name, workers):
    threads = torch.get_num_threads()
    try:
        config = dataclasses.replace(configs.build_config(name), workers=workers)
        history = run_simulation(config)
    finally:
        torch.set_num_threads(threads)
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


def test_dp_sgd_with_several_workers_is_refused_until_their_ledgers_are_reported():
    with pytest.raises(ConfigError, match="`workers` 1 with `dp`"):
        RunConfig(dataset="digits", model="mlp", workers=2, dp=DPConfig())


def test_several_workers_with_several_threads_are_refused():
    """A forked worker cannot safely start an OpenMP pool after its parent ran one (it hangs)."""
    with pytest.raises(ConfigError, match="`threads` 1 with `workers` > 1"):
        RunConfig(dataset="digits", model="mlp", workers=2, threads=2)


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
from securefl.config import RunConfig
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
