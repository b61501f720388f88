"""No module under securefl/protocols imports `random` or uses numpy.random / torch.rand*:
cryptographic randomness comes only from the random source (os.urandom) and `cryptography`."""

from __future__ import annotations

import ast
from pathlib import Path

PROTOCOLS = Path(__file__).resolve().parents[2] / "securefl" / "protocols"
FORBIDDEN_MODULES = {"random", "numpy.random", "torch.random"}


def dotted(node: ast.AST) -> str:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
    return ".".join(reversed(parts))


def violations(source: str) -> list[str]:
    found = []
    tree = ast.parse(source)
    aliases = {"np": "numpy", "numpy": "numpy", "torch": "torch"}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in FORBIDDEN_MODULES or alias.name.startswith("random."):
                    found.append(f"import {alias.name}")
                if alias.name in ("numpy", "torch"):
                    aliases[alias.asname or alias.name] = alias.name
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            names = {a.name for a in node.names}
            if module in FORBIDDEN_MODULES or (module in ("numpy", "torch") and "random" in names):
                found.append(f"from {module} import {sorted(names)}")
            if module == "torch" and any(n.startswith("rand") for n in names):
                found.append(f"from torch import {sorted(names)}")
        elif isinstance(node, ast.Attribute):
            chain = dotted(node).split(".")
            if chain and chain[0] in aliases:
                chain[0] = aliases[chain[0]]
            name = ".".join(chain)
            if name.startswith("numpy.random") or (name.startswith("torch.") and chain[1].startswith("rand")):
                found.append(name)
    return found


def test_checker_catches_every_forbidden_form():
    samples = {
        "import random": 1,
        "from random import randint": 1,
        "import numpy as xp\nxp.random.default_rng(0)": 1,
        "import numpy as np\nnp.random.seed(1)": 1,
        "from numpy import random": 1,
        "import torch\ntorch.rand(3)": 1,
        "import torch\ntorch.randint(0, 5, (2,))": 1,
        "from torch import randn": 1,
        "import os\nos.urandom(32)": 0,
        "import numpy as np\nnp.add(a, b, out=a)": 0,
    }
    for source, expected in samples.items():
        assert bool(violations(source)) == bool(expected), source


def test_protocols_package_uses_no_insecure_randomness():
    files = sorted(PROTOCOLS.rglob("*.py"))
    assert len(files) >= 12
    offenders = {
        str(f.relative_to(PROTOCOLS)): v for f in files if (v := violations(f.read_text(encoding="utf-8")))
    }
    assert offenders == {}
