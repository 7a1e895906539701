"""gw's dependency structure: which modules a process loads, and which way imports point."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.support.gateway import REPO

# The data plane: what a worker runs per request. The supervisor never proxies, so it must not
# load any of it (a supervisor that imports it pays its memory and start-up, and a bug there
# could stop the process that keeps every socket open).
DATA_PLANE = ("gw.proxy", "gw.worker", "gw.policies", "httptools")


def loaded_modules(statement: str) -> list[str]:
    """sys.modules after `statement` in a fresh interpreter running this checkout."""
    code = f"{statement}\nimport sys\nprint('\\n'.join(sorted(sys.modules)))"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.split()


def test_the_supervisor_loads_no_data_plane_module() -> None:
    modules = loaded_modules("import supervisor.arbiter")
    assert "supervisor.arbiter" in modules
    assert [m for m in modules if m in DATA_PLANE or m.startswith(tuple(p + "." for p in DATA_PLANE))] == []
