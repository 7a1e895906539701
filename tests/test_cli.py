"""The `gw` command: bad settings and configs fail fast and say where; `gw demo` serves."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import httpx
import psutil
import pytest

from tests.support.gateway import REPO, config_yaml, free_port, runtime_dir

DEMO_PORTS = (8080, 9901, 18081, 18082)


def gw(*args: str, env: dict[str, str] | None = None, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """Run `python -m gw ARGS` with only the given GW_* variables set."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("GW_")}
    return subprocess.run(
        [sys.executable, "-m", "gw", *args],
        # Its own runtime directory: a `gw run` elsewhere must not share its embedded Valkey.
        env={**base, "PYTHONPATH": str(REPO), "GW_RUNTIME_DIR": runtime_dir(), **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def valid_config(path: Path, port: int | None = None) -> Path:
    port = port or free_port()
    routes: list[dict[str, object]] = [{"name": "good", "rules": [{"backendRefs": [{"backend": "up"}]}]}]
    path.write_text(config_yaml(port, {"up": [("127.0.0.1", 9)]}, routes))
    return path


def run_env(config: Path, **extra: str) -> dict[str, str]:
    return {"GW_CONFIG": str(config), "GW_ADMIN_ADDR": f"127.0.0.1:{free_port()}", "GW_ACCESS_LOG": "off", **extra}


# -- settings -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("GW_HEADER_TIMEOUT", "abc"),
        ("GW_ACCESS_LOG_SAMPLE", "2"),
        ("GW_MAX_CONNECTIONS", "0"),
        ("GW_ADMIN_ADDR", "nowhere"),
        ("GW_MAX_BODY_SIZE", "10 parsecs"),
        ("GW_LISTENER_PORT_OFFSET", "60000"),  # the listener's port + 60000 is beyond 65535
        ("GW_LISTENER_PORT_OFFSET", "-100000"),
        ("GW_REDIS_URL", "redis://h:notaport"),
        ("GW_REDIS_URL", "redis://h:99999"),
        ("GW_REDIS_URL", "redis+sentinel://h:26379"),  # no service name
        ("GW_REDIS_URL", "redis+cluster://127.0.0.1"),  # no port
        ("GW_REDIS_URL", "unix://"),
        ("GW_REDIS_URL", "redis://h:6379/abc"),
        ("GW_ACCESS_LOG", "/nonexistent/dir/x.log"),
        ("GW_RUNTIME_DIR", "/proc/nope"),
        ("GW_CONFIG_POLL_INTERVAL", "0"),
        ("GW_REDIS_BUDGET", "0"),
        ("GW_BODY_TIMEOUT", "0"),
        ("GW_BODY_TIMEOUT", "-5s"),
    ],
)
def test_bad_setting_makes_run_exit_2_naming_the_variable(tmp_path: Path, variable: str, value: str) -> None:
    result = gw("run", env=run_env(valid_config(tmp_path / "gw.yaml"), **{variable: value}))
    assert result.returncode == 2, result.stderr
    assert f"gw: {variable}=" in result.stderr and "Traceback" not in result.stderr, result.stderr


def test_a_listener_the_port_offset_moves_out_of_range_is_named(tmp_path: Path) -> None:
    config = valid_config(tmp_path / "gw.yaml", port=8080)
    result = gw("run", env=run_env(config, GW_LISTENER_PORT_OFFSET="60000"))
    assert result.returncode == 2
    assert "listener default/test/http (port 8080) would bind port 68080" in result.stderr, result.stderr


def test_gw_config_with_a_bad_redis_url_exits_2_naming_it() -> None:
    result = gw("config", "current", env={"GW_REDIS_URL": "redis://h:notaport"})
    assert result.returncode == 2
    assert "GW_REDIS_URL=" in result.stderr and "Traceback" not in result.stderr, result.stderr


# -- config ---------------------------------------------------------------------------------------


def test_check_accepts_a_valid_config(tmp_path: Path) -> None:
    result = gw("check", str(valid_config(tmp_path / "gw.yaml")))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith("ok")


def test_check_rejects_an_invalid_config_naming_file_object_and_field(tmp_path: Path) -> None:
    path = tmp_path / "gw.yaml"
    path.write_text(
        config_yaml(
            free_port(),
            {"up": [("127.0.0.1", 9)]},
            [
                {"name": "good", "rules": [{"backendRefs": [{"backend": "up"}]}]},
                {"name": "broken", "rules": [{"backendRefs": [{"backend": "up", "weight": -3}]}]},
            ],
        )
    )
    result = gw("check", str(path))
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert str(path) in output
    assert "HTTPRoute default/broken" in output
    assert "spec.rules[0].backendRefs[0].weight" in output


def invalid_config(path: Path) -> Path:
    routes: list[dict[str, object]] = [
        {"name": "broken", "rules": [{"backendRefs": [{"backend": "up", "weight": -3}]}]}
    ]
    path.write_text(config_yaml(free_port(), {"up": [("127.0.0.1", 9)]}, routes))
    return path


@pytest.mark.parametrize(
    ("command", "config", "code"),
    [("check", valid_config, 0), ("check", invalid_config, 1), ("routes", valid_config, 0)],
    ids=["check-ok", "check-invalid", "routes"],
)
def test_a_reader_that_leaves_early_gets_no_traceback_and_the_usual_exit_code(
    tmp_path: Path, command: str, config: Callable[[Path], Path], code: int
) -> None:
    # `gw check PATH | head -2` once head has read its lines: stdout is a pipe nobody reads.
    read, write = os.pipe()
    os.close(read)
    try:
        result = subprocess.run(
            [sys.executable, "-m", "gw", command, str(config(tmp_path / "gw.yaml"))],
            env={**os.environ, "PYTHONPATH": str(REPO)},
            stdout=write,
            stderr=subprocess.PIPE,
            text=True,
            timeout=30,
        )
    finally:
        os.close(write)
    assert result.stderr == ""
    assert result.returncode == code


def test_run_with_a_yaml_syntax_error_exits_non_zero_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text(valid_config(tmp_path / "gw.yaml").read_text() + "---\nkind: HTTPRoute\nmetadata: {name: x\n")
    result = gw("run", env=run_env(path))
    assert result.returncode != 0
    assert str(path) in result.stderr
    assert "YAML" in result.stderr


# -- demo -----------------------------------------------------------------------------------------


def port_busy(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("0.0.0.0", port))
        except OSError:
            return True
    return False


def accepts(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
        return True
    return False


def demo_env(**extra: str) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("GW_")}
    return {**base, "PYTHONPATH": str(REPO), "GW_ACCESS_LOG": "off", **extra}


def test_demo_serves_and_ctrl_c_stops_the_gateway_before_its_upstreams(tmp_path: Path) -> None:
    busy = [p for p in DEMO_PORTS if port_busy(p)]
    if busy:
        pytest.skip(f"ports the demo needs are busy: {busy}")
    proc = subprocess.Popen(
        [sys.executable, "-m", "gw", "demo"],
        env=demo_env(GW_RUNTIME_DIR=str(tmp_path)),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,  # a process group of its own, as a terminal's foreground job has
    )
    try:
        assert proc.stderr is not None
        while not (line := proc.stderr.readline()).startswith(b"gw: serving"):
            assert line, "gw demo exited before serving"
        children = psutil.Process(proc.pid).children()
        upstreams = [p for p in children if "gw.demo_upstream" in p.cmdline()]
        helpers = [*upstreams, *(p for p in children if "valkey" in p.name())]
        assert len(upstreams) == 2 and len(helpers) == 3
        # Ctrl-C reaches only the gateway's group: the helpers are stopped by it, after its drain.
        assert all(os.getpgid(p.pid) != proc.pid for p in helpers)
        resp = httpx.get("http://127.0.0.1:8080/", timeout=10)
        assert resp.status_code == 200
        assert resp.json()["upstream"] in ("blue", "green")
        # As the banner says: loopback only (GW_LISTENER_ADDRESS unset).
        listening = {c.laddr for c in psutil.Process(proc.pid).net_connections("tcp") if c.status == psutil.CONN_LISTEN}
        assert ("127.0.0.1", 8080) in listening and ("0.0.0.0", 8080) not in listening, listening
        os.killpg(proc.pid, signal.SIGINT)
        while not (line := proc.stderr.readline()).startswith(b"gw: shutting down"):
            assert line, "gw demo exited without draining"
        assert all(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in helpers)  # while it drains
        log = proc.stderr.read().decode()
        assert proc.wait(20) == 0
        assert "gw: stopped" in log and "lost Redis" not in log, log
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    _gone, alive = psutil.wait_procs(helpers, timeout=10)
    assert not alive, "demo upstreams or Valkey outlived the demo"
    assert list(tmp_path.iterdir()) == []


def test_demo_with_an_upstream_port_in_use_fails_at_once_naming_it(tmp_path: Path) -> None:
    with socket.socket() as taken:
        # SO_REUSEADDR as the demo's own: connections of an earlier demo in TIME_WAIT do not count.
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        with contextlib.suppress(OSError):  # another listener there is as good as ours
            taken.bind(("127.0.0.1", 18081))
            taken.listen()
        result = subprocess.run(
            [sys.executable, "-m", "gw", "demo"],
            env=demo_env(GW_RUNTIME_DIR=str(tmp_path)),
            capture_output=True,
            text=True,
            timeout=30,
        )
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        "gw demo: cannot listen on 127.0.0.1:18081 for upstream 'blue': Address already in use"
    ]
    assert list(tmp_path.iterdir()) == []  # nothing was started
