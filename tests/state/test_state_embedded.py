"""The embedded Valkey: started on a unix socket in the runtime dir, stopped by PID, stale sockets handled."""

from __future__ import annotations

import os
import signal
import socket
from pathlib import Path

import psutil
import pytest

from gw.settings import Settings
from gw.state import EmbeddedValkey, EmbeddedValkeyError, connect, runtime_dir
from gw.state.embedded import ping


async def test_start_returns_a_unix_url_of_a_server_that_answers(tmp_path: Path) -> None:
    server = EmbeddedValkey(tmp_path)
    url = server.start()
    try:
        assert url == f"unix://{tmp_path / 'gw-valkey.sock'}"
        client = connect(url)
        await client.set("k", "v")
        assert await client.get("k") == b"v"
        await client.aclose()
    finally:
        server.stop()
    assert not ping(tmp_path / "gw-valkey.sock")


def test_stop_ends_the_server_process(tmp_path: Path) -> None:
    server = EmbeddedValkey(tmp_path)
    server.start()
    assert server.process is not None
    pid = server.process.pid
    server.stop()
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


def test_a_clean_stop_leaves_nothing_in_the_runtime_dir(tmp_path: Path) -> None:
    server = EmbeddedValkey(tmp_path)
    server.start()
    assert server.log.exists()
    server.stop()
    assert list(tmp_path.iterdir()) == []


def test_the_server_is_out_of_reach_of_its_parents_process_group_signals(tmp_path: Path) -> None:
    # A terminal's Ctrl-C signals the foreground process group: the server must outlive the drain.
    with EmbeddedValkey(tmp_path) as server:
        assert server.process is not None
        assert os.getpgid(server.process.pid) != os.getpgid(0)
        assert psutil.Process(server.process.pid).ppid() == os.getpid()  # still ours to stop


def test_a_stale_socket_from_a_crashed_run_is_replaced(tmp_path: Path) -> None:
    crashed = EmbeddedValkey(tmp_path)
    crashed.start()
    assert crashed.process is not None
    os.kill(crashed.process.pid, signal.SIGKILL)  # leaves its socket file behind
    crashed.process.wait()
    assert (tmp_path / "gw-valkey.sock").exists()
    again = EmbeddedValkey(tmp_path)
    try:
        assert again.start() == crashed.url
        assert ping(again.socket)
    finally:
        again.stop()


def test_a_socket_that_still_answers_is_not_taken_over(tmp_path: Path) -> None:
    first = EmbeddedValkey(tmp_path)
    first.start()
    try:
        with pytest.raises(EmbeddedValkeyError, match="already answers"):
            EmbeddedValkey(tmp_path).start()
        assert ping(first.socket)
    finally:
        first.stop()


def test_a_plain_file_in_the_way_is_removed(tmp_path: Path) -> None:
    (tmp_path / "gw-valkey.sock").write_text("not a socket")
    server = EmbeddedValkey(tmp_path)
    try:
        server.start()
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(str(server.socket))
    finally:
        server.stop()


def test_runtime_dir_prefers_gw_runtime_dir_then_xdg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "xdg"))
    assert runtime_dir(Settings(runtime_dir=str(tmp_path / "gw"))) == tmp_path / "gw"
    assert runtime_dir(Settings()) == tmp_path / "xdg"
