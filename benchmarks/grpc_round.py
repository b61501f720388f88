"""Deployment over gRPC + mutual TLS on loopback, measured side by side in one run (issue 11).

1. A round with the clients in separate processes over gRPC + mutual TLS ÷ the same round in this
   process (target <= 1.25): the same server and client programs, each round starting from the
   same global model, the two interleaved; timed once every client process has connected (process
   start-up excluded).  The final weights must be identical.
2. Bytes a client sends per round ÷ the packed masked vector (with ``--secagg``) or the float32
   update (target <= 1.05): the round messages, and on the wire (TLS records through a counting
   relay, so gRPC's and HTTP/2's framing and the TLS handshake are in).
3. The server's peak memory (a fresh server process) for a round of 10 and of 50 clients at about
   1M parameters.  Those clients do not train: each sends a synthetic update (a trainer that draws
   a random update) through the real protocol, from threads of one other process.
4. Connection set-up per client: a new channel's TLS handshake and enrolment check, until the
   server has accepted the client (its initial metadata).

``--cores 1`` puts every process on one core: the in-process round and the client processes then
share one core, and the ratio is the transport's overhead alone, without the clients' parallelism.

    .venv/bin/python benchmarks/grpc_round.py --secagg
    .venv/bin/python benchmarks/grpc_round.py --secagg --cores 1 --skip memory,setup
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import grpc
import torch
from torch import nn

from securefl.config import RunConfig, SecAggConfig
from securefl.deploy.pki import Enrolment, create_pki, load_identity
from securefl.federation import build_federation, build_programs
from securefl.fl.client import FederatedClient
from securefl.fl.fedavg import ClientSampler, PlainSum, WeightedMean, weight_by_samples
from securefl.fl.record import Evaluation
from securefl.fl.secure_channel import SecureAggregationChannel
from securefl.fl.server import FederatedServer
from securefl.fl.types import Aggregation, ClientShard, Update
from securefl.fl.vectors import to_vector
from securefl.protocols.secagg.ring import packed_size
from securefl.transports.grpc_client import run_client
from securefl.transports.grpc_server import CLIENT_ID_KEY, METHOD, NetworkServer, message_limit
from securefl.transports.inprocess import InProcessTransport

SYNTHETIC_FEATURES = 1000  # nn.Linear(1000, 1000): 1,001,000 parameters


# ---- 1. a trained round: client processes over gRPC vs in process -------------------------------


def _config(args: argparse.Namespace) -> RunConfig:
    return RunConfig(
        dataset=args.dataset,
        model=args.model,
        clients=args.clients,
        threads=1,
        seed=0,
        secagg=SecAggConfig() if args.secagg else None,
    )


def _limit(server: FederatedServer, clients: int, secagg: bool) -> int:
    ring = server.aggregation if secagg else None
    return message_limit(server.params.numel(), clients=clients, ring=ring)


def serve_trained_client(args: argparse.Namespace) -> None:
    """A client process: its own program from the same configuration, served until finished."""
    torch.set_num_threads(1)
    programs = build_programs(build_federation(_config(args)))
    identity = load_identity(Path(args.pki) / f"client-{args.client_process}")
    limit = _limit(programs.server, args.clients, args.secagg)
    run_client(
        programs.clients[args.client_process], address=args.address, tls=identity.tls, max_message_bytes=limit
    )


def round_time(args: argparse.Namespace, pki_dir: Path) -> None:
    torch.set_num_threads(1)
    config = _config(args)
    local, remote = build_programs(build_federation(config)), build_programs(build_federation(config))
    start = local.server.params.clone()
    limit = _limit(remote.server, args.clients, args.secagg)
    enrolment = Enrolment.load(pki_dir / "enrolment.json")
    net = NetworkServer(
        "127.0.0.1:0",
        credentials=load_identity(pki_dir / "server").tls,
        enrolment=enrolment,
        max_message_bytes=limit,
        step_deadline=600.0,
    )
    port = net.start()
    processes = [
        subprocess.Popen(
            [sys.executable, __file__, *_forwarded(args), "--pki", str(pki_dir)]
            + ["--client-process", str(c), "--address", f"127.0.0.1:{port}"]
        )
        for c in range(args.clients)
    ]
    times: dict[str, list[float]] = {"in process": [], "gRPC + mTLS": []}
    bytes_up: list[float] = []
    identical = True
    try:
        connected = net.wait_for_clients(remote.server, args.clients, timeout=600)
        if connected != args.clients:
            raise SystemExit(f"only {connected} of {args.clients} client processes connected")
        with InProcessTransport() as transport:
            transport.enrol(local.server, local.clients)
            for repeat in range(args.rounds + 1):  # the first is warm-up
                local.server.params, remote.server.params = start.clone(), start.clone()
                started = time.perf_counter()
                transport.run_round(local.server, local.clients)
                in_process = time.perf_counter() - started
                started = time.perf_counter()
                traffic = net.run_round(remote.server)
                over_grpc = time.perf_counter() - started
                identical &= torch.equal(local.server.params, remote.server.params)
                if repeat:
                    times["in process"].append(in_process)
                    times["gRPC + mTLS"].append(over_grpc)
                    bytes_up.append(statistics.mean(traffic.bytes_up.values()))
        net.finish()
    finally:
        net.close()
        for process in processes:
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
    num_params = start.numel()
    reference = _reference_bytes(num_params, local.server.aggregation, args.secagg)
    print(
        f"\n1. a round: dataset={args.dataset} model={args.model} ({num_params:,} parameters) "
        f"clients={args.clients}"
    )
    print(
        f"   secagg={args.secagg} cores={len(os.sched_getaffinity(0))} rounds timed={args.rounds} "
        "(after a warm-up)"
    )
    for label, runs in times.items():
        listed = ", ".join(f"{t:.3f}" for t in runs)
        print(f"   {label:>12}: median {statistics.median(runs):.3f} s  (rounds: {listed})")
    ratio = statistics.median(times["gRPC + mTLS"]) / statistics.median(times["in process"])
    print(
        f"   ratio gRPC / in process: {ratio:.3f}  (target <= 1.25)   "
        f"weights identical every round: {identical}"
    )
    what = "packed masked vector" if args.secagg else "float32 update"
    print(
        f"   round messages a client sends per round: {statistics.mean(bytes_up):,.0f} B ÷ {what} "
        f"{reference:,} B = {statistics.mean(bytes_up) / reference:.4f}"
    )


def _reference_bytes(num_params: int, aggregation: Aggregation, secagg: bool) -> int:
    if secagg:
        assert isinstance(aggregation, SecureAggregationChannel)
        return packed_size(aggregation.vector_length, aggregation.config.bits)
    return 4 * num_params


def _forwarded(args: argparse.Namespace) -> list[str]:
    forwarded = ["--dataset", args.dataset, "--model", args.model, "--clients", str(args.clients)]
    return forwarded + (["--secagg"] if args.secagg else [])


# ---- 3 (and 2 on the wire). synthetic clients at ~1M parameters ----------------------------------


class SyntheticTrainer:
    """Draws a small random update instead of training (the server's memory does not depend on
    how an update was made)."""

    def can_train(self, client_id: int) -> bool:
        return True

    def train(
        self, *, global_params: torch.Tensor, shard: ClientShard, round_index: int, generator: torch.Generator
    ) -> Update:
        delta = torch.randn(global_params.numel(), generator=generator) * 1e-3
        return Update(client_id=shard.client_id, delta=delta, num_samples=1, train_loss=0.0)


def _synthetic(clients: int, secagg: bool) -> tuple[nn.Module, Aggregation]:
    torch.manual_seed(0)
    architecture = nn.Linear(SYNTHETIC_FEATURES, SYNTHETIC_FEATURES)
    num_params = sum(p.numel() for p in architecture.parameters())
    channel: Aggregation = PlainSum(vector_length=num_params)
    if secagg:
        channel = SecureAggregationChannel(
            config=SecAggConfig(), num_params=num_params, weight_bound=1, clients_per_round=clients, seed=0
        )
    return architecture, channel


def _rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def memory_server(args: argparse.Namespace) -> None:
    """A fresh server process: one round of ``--memory-server`` synthetic clients; prints JSON."""
    torch.set_num_threads(1)
    clients, pki_dir = args.memory_server, Path(args.pki)
    architecture, channel = _synthetic(clients, args.secagg)
    server = FederatedServer(
        params=to_vector(architecture.parameters()),
        architecture=architecture,
        sampler=ClientSampler(num_clients=clients, per_round=clients),
        aggregation=channel,
        server_update=WeightedMean(),
        settings={"lr": 0.1},
        evaluate=lambda params: Evaluation(loss=0.0, accuracy=0.0),
        num_clients=clients,
    )
    net = NetworkServer(
        "127.0.0.1:0",
        credentials=load_identity(pki_dir / "server").tls,
        enrolment=Enrolment.load(pki_dir / "enrolment.json"),
        max_message_bytes=_limit(server, clients, args.secagg),
        step_deadline=1800.0,
    )
    baseline = _rss_kib()
    print(f"PORT {net.start()}", flush=True)
    try:
        if net.wait_for_clients(server, clients, timeout=600) != clients:
            raise SystemExit("not every synthetic client connected")
        started = time.perf_counter()
        traffic = net.run_round(server)
        seconds = time.perf_counter() - started
        net.finish()
    finally:
        net.close()
    result = {
        "clients": clients,
        "params": server.params.numel(),
        "survivors": server.records[-1].survivors,
        "baseline_rss_mib": baseline / 1024,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "round_seconds": seconds,
        "bytes_up_per_client": statistics.mean(traffic.bytes_up.values()),
        "reference_bytes": _reference_bytes(server.params.numel(), channel, args.secagg),
    }
    print("RESULT " + json.dumps(result), flush=True)


class _CountingRelay:
    """TCP relays, one listening port per client, to the server; counts the bytes each client's
    connections carried each way (TLS records: everything on the wire but TCP/IP headers)."""

    def __init__(self, server_port: int, clients: int) -> None:
        self.server_port = server_port
        self.up = [0] * clients
        self.down = [0] * clients
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever)
        self.thread.start()
        self.servers = [
            asyncio.run_coroutine_threadsafe(
                asyncio.start_server(lambda r, w, c=c: self._relay(c, r, w), "127.0.0.1", 0), self.loop
            ).result()
            for c in range(clients)
        ]
        self.ports = [s.sockets[0].getsockname()[1] for s in self.servers]

    async def _relay(self, client: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.server_port)

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter, counts: list[int]) -> None:
            try:
                while data := await source.read(1 << 16):
                    counts[client] += len(data)
                    sink.write(data)
                    await sink.drain()
            finally:
                sink.close()

        await asyncio.gather(
            pipe(reader, up_writer, self.up), pipe(up_reader, writer, self.down), return_exceptions=True
        )

    def close(self) -> None:
        async def shutdown() -> None:
            for server in self.servers:
                server.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(shutdown(), self.loop).result(timeout=10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()


def synthetic_clients(args: argparse.Namespace) -> None:
    """``--synthetic-clients`` client programs as threads, each through its own counting relay."""
    torch.set_num_threads(1)
    clients, pki_dir = args.synthetic_clients, Path(args.pki)
    architecture, channel = _synthetic(clients, args.secagg)
    num_params = sum(p.numel() for p in architecture.parameters())
    limit = message_limit(num_params, clients=clients, ring=channel if args.secagg else None)
    relay = _CountingRelay(int(args.address.rsplit(":", 1)[1]), clients)
    errors: list[BaseException] = []

    def serve(client_id: int) -> None:
        program = FederatedClient(
            shard=ClientShard(client_id=client_id, x=torch.zeros(1, 1), y=torch.zeros(1)),
            trainer=SyntheticTrainer(),
            transform=weight_by_samples,
            aggregation=channel.client(client_id),
            architecture=architecture,
            generator_for=lambda round_index, c: torch.Generator().manual_seed(1000 * round_index + c),
        )
        try:
            identity = load_identity(pki_dir / f"client-{client_id}")
            address = f"127.0.0.1:{relay.ports[client_id]}"
            run_client(program, address=address, tls=identity.tls, max_message_bytes=limit)
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=serve, args=(c,)) for c in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    relay.close()
    if errors:
        raise errors[0]
    print("RESULT " + json.dumps({"wire_up": relay.up, "wire_down": relay.down}), flush=True)


def _result(process: subprocess.Popen[str]) -> dict:
    assert process.stdout is not None
    for line in process.stdout:
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT ") :])
    raise SystemExit(f"process {process.args} printed no result (exit code {process.wait()})")


def memory(args: argparse.Namespace, work: Path) -> None:
    mode = "secagg" if args.secagg else "plain FedAvg"
    print(f"\n3. the server's peak memory, one round of synthetic updates ({mode}), and 2. on the wire:")
    for clients in args.memory_clients:
        pki_dir = work / f"pki-{clients}"
        create_pki(pki_dir, clients=clients)
        common = ["--pki", str(pki_dir)] + (["--secagg"] if args.secagg else [])
        server = subprocess.Popen(
            [sys.executable, __file__, "--memory-server", str(clients), *common],
            stdout=subprocess.PIPE,
            text=True,
        )
        host = None
        try:
            assert server.stdout is not None
            port = int(server.stdout.readline().split()[1])
            host = subprocess.Popen(
                [
                    sys.executable,
                    __file__,
                    "--synthetic-clients",
                    str(clients),
                    "--address",
                    f"127.0.0.1:{port}",
                ]
                + common,
                stdout=subprocess.PIPE,
                text=True,
            )
            measured, wire = _result(server), _result(host)
        finally:
            for process in (server, host):
                if process is not None:
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        process.wait(timeout=120)
                    if process.poll() is None:
                        process.kill()
                        process.wait()
        reference = measured["reference_bytes"]
        wire_up = statistics.mean(wire["wire_up"])
        print(
            f"   {clients} clients x {measured['params']:,} parameters: server peak RSS "
            f"{measured['peak_rss_mib']:.0f} MiB "
            f"(before the clients: {measured['baseline_rss_mib']:.0f} MiB), "
            f"round {measured['round_seconds']:.1f} s, survivors {measured['survivors']}"
        )
        print(
            f"      a client sends per round: messages {measured['bytes_up_per_client']:,.0f} B "
            f"({measured['bytes_up_per_client'] / reference:.4f}), on the wire {wire_up:,.0f} B "
            f"({wire_up / reference:.4f}) ÷ {reference:,} B (target <= 1.05)"
        )


# ---- 4. connection set-up -------------------------------------------------------------------------


def connection_setup(args: argparse.Namespace, pki_dir: Path) -> None:
    enrolment = Enrolment.load(pki_dir / "enrolment.json")
    net = NetworkServer(
        "127.0.0.1:0",
        credentials=load_identity(pki_dir / "server").tls,
        enrolment=enrolment,
        max_message_bytes=1 << 20,
        step_deadline=60.0,
    )
    port = net.start()
    seconds: list[float] = []
    try:
        for attempt in range(args.connections):
            identity = load_identity(pki_dir / f"client-{attempt % args.clients}")
            credentials = grpc.ssl_channel_credentials(
                identity.ca_certificate.read_bytes(),
                identity.private_key.read_bytes(),
                identity.certificate.read_bytes(),
            )
            started = time.perf_counter()
            with grpc.secure_channel(f"127.0.0.1:{port}", credentials) as channel:
                call = channel.stream_stream(METHOD)(iter(()), timeout=30)
                accepted = CLIENT_ID_KEY in dict(call.initial_metadata() or ())
                seconds.append(time.perf_counter() - started)
                call.cancel()
            if not accepted:
                raise SystemExit("the server did not accept a client during the set-up measurement")
    finally:
        net.close()
    seconds.sort()
    print(
        f"\n4. connection set-up (new channel: TLS 1.3 handshake + enrolment check, until accepted), "
        f"{len(seconds)} connections: median {1000 * statistics.median(seconds):.1f} ms, "
        f"90th percentile {1000 * seconds[int(0.9 * (len(seconds) - 1))]:.1f} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="mnist-sample")
    parser.add_argument("--model", default="cnn")
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--secagg", action="store_true")
    parser.add_argument(
        "--memory-clients", type=lambda s: [int(n) for n in s.split(",") if n], default=[10, 50]
    )
    parser.add_argument("--connections", type=int, default=30)
    parser.add_argument("--skip", default="", help="comma-separated parts to skip: round,memory,setup")
    parser.add_argument(
        "--cores", type=int, help="run this script and every process it starts on this many cores only"
    )
    # the child processes this script starts
    parser.add_argument("--pki", help=argparse.SUPPRESS)
    parser.add_argument("--address", help=argparse.SUPPRESS)
    parser.add_argument("--client-process", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--memory-server", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--synthetic-clients", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client_process is not None:
        return serve_trained_client(args)
    if args.memory_server is not None:
        return memory_server(args)
    if args.synthetic_clients is not None:
        return synthetic_clients(args)
    skip = set(args.skip.split(","))
    if args.cores:  # the child processes inherit the affinity
        os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[: args.cores])
    print(f"securefl over gRPC + mutual TLS on loopback; {len(os.sched_getaffinity(0))} cores")
    with tempfile.TemporaryDirectory() as work:
        pki_dir = Path(work) / "pki"
        create_pki(pki_dir, clients=args.clients)
        if "round" not in skip:
            round_time(args, pki_dir)
        if "memory" not in skip:
            memory(args, Path(work))
        if "setup" not in skip:
            connection_setup(args, pki_dir)


if __name__ == "__main__":
    main()
