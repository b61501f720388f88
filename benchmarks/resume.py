"""Time to resume after a server kill (issue 11), measured side by side in one run.

The federation of ``securefl demo network`` (mnist-sample CNN, ``--dp --secagg``, N client
processes on loopback): the server is started with the fault hook ``SECUREFL_FAULT=SIGKILL@1``,
so it kills itself right after round 1's checkpoint; it is then restarted at once with
``--resume`` while the clients, still running, reconnect with their backoff.  Printed for the
first start and for the resume: launch -> listening (process start-up), launch -> the next
round's checkpoint (clients joined or reconnected, the round run), that round's own seconds (from
``metrics.jsonl``) and the rest (waiting for clients), and resume ÷ first start.

    .venv/bin/python benchmarks/resume.py --clients 5
"""

from __future__ import annotations

import argparse
import json
import socket
import tempfile
import time
from pathlib import Path

from securefl.cli.demo import Processes, client_command, create_federation, server_command, shard_path
from securefl.deploy.checkpoint import ServerCheckpoints
from securefl.deploy.faults import FAULT_VARIABLE
from securefl.deploy.federation_file import FederationFile
from securefl.deploy.server_program import checkpoint_folder

TIMEOUT = 600.0
POLL = 0.05


def wait_listening(spec: FederationFile, since: float) -> float:
    """Seconds from ``since`` until the federation's address accepts TCP connections."""
    while time.monotonic() - since < TIMEOUT:
        try:
            with socket.create_connection((spec.host, spec.port), timeout=1.0):
                return time.monotonic() - since
        except OSError:
            time.sleep(POLL)
    raise TimeoutError(f"nothing listened on {spec.address} within {TIMEOUT:g}s")


def wait_checkpoint(checkpoints: ServerCheckpoints, round_index: int, since: float) -> float:
    """Seconds from ``since`` until the checkpoint of ``round_index`` is written."""
    while time.monotonic() - since < TIMEOUT:
        checkpoint = checkpoints.load() if checkpoints.checkpoint_path.exists() else None
        if checkpoint is not None and checkpoint.round_index >= round_index:
            return time.monotonic() - since
        time.sleep(POLL)
    raise TimeoutError(f"no checkpoint of round {round_index} within {TIMEOUT:g}s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="securefl-resume-"))
    toml = create_federation(work, clients=args.clients, rounds=args.rounds)
    spec = FederationFile.load(toml)
    out = work / "run"
    checkpoints = ServerCheckpoints(checkpoint_folder(out), fingerprint=spec.fingerprint())
    (work / "logs").mkdir()
    with Processes() as processes:
        started = time.monotonic()
        first = processes.start(
            server_command(toml, out=out),
            log=work / "logs" / "server.log",
            environment={FAULT_VARIABLE: "SIGKILL@1"},
        )
        members = [
            processes.start(
                client_command(toml, identity=work / "federation" / f"client-{i}", data=shard_path(work, i)),
                log=work / "logs" / f"client-{i}.log",
            )
            for i in range(args.clients)
        ]
        first_listening = wait_listening(spec, started)
        first_round = wait_checkpoint(checkpoints, 1, started)
        if processes.wait(first, timeout=TIMEOUT) is None:
            raise RuntimeError("the first server outlived its fault")
        restarted = time.monotonic()
        resumed = processes.start(
            server_command(toml, out=out, resume=True), log=work / "logs" / "resumed.log"
        )
        resumed_listening = wait_listening(spec, restarted)
        resumed_round = wait_checkpoint(checkpoints, 2, restarted)
        codes = [
            processes.wait(resumed, timeout=TIMEOUT),
            *(processes.wait(m, timeout=TIMEOUT) for m in members),
        ]
    if any(code != 0 for code in codes):
        raise RuntimeError(f"exit codes {codes}: see {work / 'logs'}")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    print(
        f"{args.clients} client processes, {spec.run.dataset} {spec.run.model}, dp + secagg; logs in {work}"
    )
    print(f"{'':28}{'first start':>14}{'resume':>10}{'resume ÷ first':>16}")
    lines = [
        ("launch -> listening", first_listening, resumed_listening),
        ("launch -> round checkpointed", first_round, resumed_round),
        ("  of which the round", rows[0]["seconds"], rows[1]["seconds"]),
        (
            "  of which waiting for clients",
            first_round - first_listening - rows[0]["seconds"],
            resumed_round - resumed_listening - rows[1]["seconds"],
        ),
    ]
    for label, before, after in lines:
        print(f"{label:28}{before:13.2f}s{after:9.2f}s{after / before:16.2f}")


if __name__ == "__main__":
    main()
