"""The same worker under gunicorn (`-k gw.gunicorn_worker.GwWorker`): the alternative runner works."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from tests.support.gateway import Client, config_yaml, free_port
from tests.support.upstream import Upstream

ROUTES = [{"name": "all", "rules": [{"backendRefs": [{"backend": "up"}]}]}]


class Gunicorn:
    def __init__(self, config: Path, port: int) -> None:
        self.port = port
        self.lines: list[str] = []
        self.booted = threading.Condition()
        env = {**os.environ, "GW_CONFIG": str(config), "GW_ACCESS_LOG": "off"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-k", "gw.gunicorn_worker.GwWorker", "-w", "2",
             "-b", f"127.0.0.1:{port}", "--graceful-timeout", "5", "gw.gunicorn_worker:app"],
            env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL,
        )  # fmt: skip
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for raw in self.proc.stderr:
            with self.booted:
                self.lines.append(raw.decode(errors="replace").rstrip())
                self.booted.notify_all()

    def wait_booted(self, count: int, after: int = 0) -> None:
        with self.booted:
            ok = self.booted.wait_for(lambda: sum("Booting worker" in x for x in self.lines[after:]) >= count, 30)
        assert ok, "\n".join(self.lines)

    def get(self, path: str, host: str = "x.test") -> int:
        # A worker reports "Booting" before its loop serves; a refused connection means not yet.
        for _ in range(200):
            try:
                client = Client(socket.create_connection(("127.0.0.1", self.port), timeout=10))
            except ConnectionRefusedError:
                threading.Event().wait(0.05)
                continue
            status = client.request("GET", path, {"Host": host}).status
            client.close()
            return status
        raise AssertionError("gunicorn never accepted a connection")


@pytest.fixture
def gunicorn(tmp_path: Path, upstream: Upstream) -> Iterator[tuple[Gunicorn, Path]]:
    port = free_port()
    config = tmp_path / "gateway.yaml"
    config.write_text(config_yaml(port, {"up": [("127.0.0.1", upstream.port)]}, ROUTES))
    g = Gunicorn(config, port)
    yield g, config
    g.proc.terminate()
    g.proc.wait(30)


def test_gunicorn_runs_the_gw_worker(gunicorn: tuple[Gunicorn, Path], upstream: Upstream) -> None:
    g, _ = gunicorn
    g.wait_booted(2)
    before = len(upstream.seen)
    assert all(g.get("/echo") == 200 for _ in range(10))
    assert len(upstream.seen) - before == 10  # proxied, not answered by gunicorn


def test_gunicorn_hup_starts_workers_on_the_new_config(gunicorn: tuple[Gunicorn, Path], upstream: Upstream) -> None:
    g, config = gunicorn
    g.wait_booted(2)
    assert g.get("/echo", host="new.test") == 200  # the catch-all route
    routes = [{"name": "only-new", "hostnames": ["new.test"], "rules": [{"backendRefs": [{"backend": "up"}]}]}]
    config.write_text(config_yaml(g.port, {"up": [("127.0.0.1", upstream.port)]}, routes))
    old = psutil.Process(g.proc.pid).children()
    mark = len(g.lines)
    g.proc.send_signal(signal.SIGHUP)
    g.wait_booted(2, after=mark)
    _gone, alive = psutil.wait_procs(old, timeout=20)  # gunicorn replaces workers on HUP
    assert not alive
    assert g.get("/echo", host="other.test") == 404  # only the new config's route is served
    assert g.get("/echo", host="new.test") == 200
