"""The test suite leaves nothing in the temp directory: gateways' runtime directories go at the end of the run."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from tests.support.gateway import REPO

# A gateway started through the fixtures, and one started by `gw run` directly (test_cli.gw).
SAMPLE = [
    "tests/test_two_gateways.py::test_listeners_bind_gw_listener_address",
    "tests/test_cli.py::test_bad_setting_makes_run_exit_2_naming_the_variable[GW_HEADER_TIMEOUT-abc]",
]


def test_a_test_run_leaves_no_temp_directories_behind(tmp_path: Path) -> None:
    # Short: the gateways' unix sockets live under it (107 bytes at most).
    temp = tempfile.mkdtemp(prefix="gw-tmp-")
    try:
        env = {k: v for k, v in os.environ.items() if not k.startswith("GW_")}
        result = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--basetemp={tmp_path}/base", *SAMPLE],
            env={**env, "TMPDIR": temp, "PYTHONPATH": str(REPO)},
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=240,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        assert "2 passed" in result.stdout
        assert sorted(os.listdir(temp)) == []
    finally:
        shutil.rmtree(temp, ignore_errors=True)
