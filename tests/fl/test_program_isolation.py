"""The server program cannot reach anything of a client: proven on the import graph and on the
object graph of real federations (issue 10: "nothing on the server side can import or reach a
client object").

The object-graph walk follows what an object holds (the garbage collector's referents: attributes,
slots, containers, closures, bound ``self``), never module globals or classes: what the server could
reach by import is covered by the import-graph test.  Tensors are compared by storage, so a view of
training data counts as training data.
"""

from __future__ import annotations

import ast
import gc
import types
from pathlib import Path

import pytest
import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from securefl.config import CentralDPConfig, DPConfig, RunConfig, SecAggConfig
from securefl.federation import build_federation, build_programs
from securefl.fl.client import FederatedClient
from securefl.fl.fedavg import PlainSumClient
from securefl.fl.secure_channel import SecureAggregationClient
from securefl.fl.training import LocalSGDTrainer
from securefl.fl.types import ClientShard
from securefl.protocols.secagg import ClientProtocol, RoundIdGuard
from securefl.transports.inprocess import InProcessTransport

PACKAGE = Path(__file__).resolve().parents[2] / "securefl"

SERVER_MODULES = ("securefl.fl.server", "securefl.fl.evaluation")
CLIENT_MODULES = ("securefl.fl.client", "securefl.fl.training", "securefl.privacy.dp_client")


def _module_imports(module: str) -> set[str]:
    """Every securefl module ``module`` imports, at any depth in its body (lazy imports too)."""
    path = PACKAGE.parent / (module.replace(".", "/") + ".py")
    if not path.exists():
        path = PACKAGE.parent / module.replace(".", "/") / "__init__.py"
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("securefl"):
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("securefl"))
    return {name for name in found if _exists(name)}


def _exists(module: str) -> bool:
    base = PACKAGE.parent / module.replace(".", "/")
    return base.with_suffix(".py").exists() or (base / "__init__.py").exists()


def _transitive_imports(module: str) -> set[str]:
    seen, stack = set(), [module]
    while stack:
        name = stack.pop()
        if name in seen:
            continue
        seen.add(name)
        stack.extend(_module_imports(name))
        parts = name.split(".")  # importing a.b.c runs a/__init__ and a/b/__init__
        stack.extend(".".join(parts[:i]) for i in range(2, len(parts)) if _exists(".".join(parts[:i])))
    return seen - {module}


@pytest.mark.parametrize("module", SERVER_MODULES)
def test_the_server_program_imports_no_client_module(module: str) -> None:
    reached = _transitive_imports(module)
    assert not reached & set(CLIENT_MODULES), sorted(reached & set(CLIENT_MODULES))
    assert not any(name.startswith("securefl.privacy") for name in reached)


def test_fl_imports_nothing_from_privacy() -> None:
    for path in sorted((PACKAGE / "fl").glob("*.py")):
        module = "securefl.fl." + path.stem
        offending = {name for name in _module_imports(module) if name.startswith("securefl.privacy")}
        assert not offending, f"{module} imports {sorted(offending)}"


def test_the_import_walk_sees_a_known_import() -> None:
    """The walk is not vacuous: the client program does import the trainer's types and codec."""
    assert "securefl.fl.codec" in _transitive_imports("securefl.fl.client")
    assert "securefl.fl.training" in _transitive_imports("securefl.federation")


# ---- the object graph -----------------------------------------------------------------------

ATOMS = (str, bytes, bytearray, int, float, complex, bool, type(None), torch.dtype, torch.device)


def _reachable(root: object) -> list[object]:
    """Every object ``root`` holds, transitively, through the garbage collector's referents
    (attributes, slots, containers of any kind, partials, bound methods, closures), but never
    through a module or class or a function's globals."""
    seen: set[int] = set()
    stack, found = [root], []
    while stack:
        obj = stack.pop()
        if id(obj) in seen or isinstance(obj, ATOMS):
            continue
        seen.add(id(obj))
        found.append(obj)
        if isinstance(obj, type | types.ModuleType):
            continue
        if isinstance(obj, torch.Tensor):
            stack.extend(t for t in (obj.grad, obj._base) if t is not None)
            continue
        if isinstance(obj, types.FunctionType):
            stack.extend(cell.cell_contents for cell in obj.__closure__ or () if _filled(cell))
            stack.extend(obj.__defaults__ or ())
            stack.extend((obj.__kwdefaults__ or {}).values())
            continue
        stack.extend(gc.get_referents(obj))
    return found


def _filled(cell: types.CellType) -> bool:
    try:
        cell.cell_contents  # noqa: B018
    except ValueError:
        return False
    return True


def _storage(tensor: torch.Tensor) -> int:
    return tensor.untyped_storage().data_ptr()


CLIENT_SIDE = (
    FederatedClient,
    ClientShard,
    LocalSGDTrainer,
    PlainSumClient,
    SecureAggregationClient,
    ClientProtocol,
    RoundIdGuard,
    Ed25519PrivateKey,
    X25519PrivateKey,
)

BASE = dict(dataset="digits", model="mlp", clients=6, rounds=2, lr=0.05, batch_size=16, local_epochs=1)

FEDERATIONS = {
    "plain": RunConfig(**BASE),
    "secagg-active": RunConfig(**BASE, secagg=SecAggConfig(active_adversary=True, bits=40)),
    "dp-sgd": RunConfig(**BASE, dp=DPConfig(noise_multiplier=1.0)),
    "distributed-dp": RunConfig(
        **BASE,
        secagg=SecAggConfig(bits=24),
        central_dp=CentralDPConfig(client_sampling="fixed", distributed=True, clip_norm=1.0),
    ),
}


@pytest.mark.parametrize("name", FEDERATIONS)
def test_the_server_object_reaches_no_client_object(name: str) -> None:
    config = FEDERATIONS[name]
    fed = build_federation(config)
    programs = build_programs(fed)
    clients = dict(programs.clients.items())  # every program built and kept: those the round runs
    transport = InProcessTransport(faults_for=None)
    transport.enrol(programs.server, clients)
    transport.run_round(programs.server, clients)  # after a round, with its state

    reached = _reachable(programs.server)
    client_side = [type(obj).__name__ for obj in reached if isinstance(obj, CLIENT_SIDE)]
    assert not client_side, f"the server reaches {sorted(set(client_side))}"
    trainers = {id(t) for t in fed.trainers.values()}
    assert not [obj for obj in reached if id(obj) in trainers]
    private = {_storage(fed.dataset.train_x), _storage(fed.dataset.train_y)}
    private |= {_storage(t) for client in clients.values() for t in (client.shard.x, client.shard.y)}
    tensors = [obj for obj in reached if isinstance(obj, torch.Tensor)]
    assert not [t for t in tensors if _storage(t) in private], "the server reaches training data"

    # The walk is not vacuous: from a client, its own shard, trainer and aggregation half are reached.
    client = clients[0]
    from_client = _reachable(client)
    assert any(obj is client.shard for obj in from_client)
    assert any(isinstance(obj, PlainSumClient | SecureAggregationClient) for obj in from_client)
    assert any(isinstance(obj, torch.Tensor) and _storage(obj) in private for obj in from_client)
