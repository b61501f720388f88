"""The command line loads what a command needs, when it runs: starting ``securefl`` does not
import Opacus (DP), Ray or the privacy package, whose imports cost seconds of every process."""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ("opacus", "ray", "securefl.privacy")


def test_importing_the_cli_loads_no_dp_or_cluster_library():
    probe = (
        f"import json, sys, securefl.cli.app; print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True
    )
    assert json.loads(out.stdout) == []
