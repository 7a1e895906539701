"""Reloads, upgrades, scaling and a killed worker under continuous load: does anything fail?

A real `gw run` (supervisor and workers) in front of a real upstream; HTTP clients on keep-alive
connections at a steady rate, and WebSockets exchanging a message every half second. Meanwhile
the supervisor gets HUP (each one a new config version), USR2, TTIN/TTOU, and one worker is
killed with SIGKILL. Every failed request and every WebSocket that closes is attributed:

- a request fails "on the killed worker" when its connection belonged to that worker at the
  moment of the kill (the worker's sockets are read with psutil just before): those are expected;
- a WebSocket may close only when its worker drains (USR2, TTOU), and then not before
  GW_DRAIN_TIMEOUT has passed since the drain began; or when its worker is killed.

Anything else is a failure, and the run exits non-zero.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from tests.support.gateway import config_yaml, free_port  # noqa: E402
from tests.support.upstream import Upstream, ws_frame  # noqa: E402


@dataclass
class Plan:
    duration: float = 60.0
    rate: float = 500.0  # requests per second over all HTTP connections
    connections: int = 50
    websockets: int = 20
    hups: int = 20
    usr2: int = 5
    scale_pairs: int = 2
    kills: int = 1
    workers: int = 2
    drain_timeout: float = 5.0


@dataclass
class Tally:
    requests: int = 0
    failed: int = 0
    failed_on_killed: int = 0
    reconnects: int = 0  # connections the gateway closed cleanly (Connection: close) and we reopened
    ws_messages: int = 0
    ws_closed_by_drain: int = 0
    ws_closed_early: int = 0  # closed by a draining worker before GW_DRAIN_TIMEOUT: a failure
    ws_closed_by_kill: int = 0
    ws_closed_unexpectedly: int = 0  # e.g. by a HUP: a failure
    signals: dict[str, int] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    versions: int = 0

    @property
    def unexpected(self) -> int:
        return self.failed - self.failed_on_killed + self.ws_closed_early + self.ws_closed_unexpectedly


class Gateway:
    """`gw run` as a child, its stderr lines kept with their arrival time."""

    def __init__(self, config: Path, port: int, admin: int, plan: Plan, env: dict[str, str] | None = None) -> None:
        extra = env or {}
        self.runtime = tempfile.mkdtemp(prefix="gw-rt-")  # removed by stop()
        env = {
            **os.environ,
            "GW_CONFIG": str(config),
            "GW_ADMIN_ADDR": f"127.0.0.1:{admin}",
            "GW_WORKERS": str(plan.workers),
            "GW_DRAIN_TIMEOUT": f"{plan.drain_timeout}s",
            "GW_ACCESS_LOG": "off",
            "GW_RUNTIME_DIR": self.runtime,
            "PYTHONPATH": str(REPO),
            **extra,
        }
        self.admin = admin
        self.port = port
        self.lines: list[tuple[float, str]] = []
        self.serving = threading.Event()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gw", "run"], env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL
        )
        threading.Thread(target=self._read, daemon=True).start()
        if not self.serving.wait(30):
            self.stop()
            raise RuntimeError("gateway did not start:\n" + "\n".join(line for _, line in self.lines))

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for raw in self.proc.stderr:
            line = raw.decode(errors="replace").rstrip()
            self.lines.append((time.monotonic(), line))
            if line.startswith("gw: serving"):
                self.serving.set()

    def status(self) -> dict:  # type: ignore[type-arg]
        return httpx.get(f"http://127.0.0.1:{self.admin}/status", timeout=10).json()  # type: ignore[no-any-return]

    def worker_pids(self) -> list[int]:
        return [w["pid"] for w in self.status()["workers"] if w["state"] == "ready"]

    def signal(self, sig: signal.Signals) -> None:
        self.proc.send_signal(sig)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.runtime, ignore_errors=True)


def owners(pids: list[int], port: int) -> dict[int, int]:
    """client port → worker pid, for every connection the workers hold on the listener `port`."""
    found: dict[int, int] = {}
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            for conn in psutil.Process(pid).net_connections(kind="tcp"):
                if conn.laddr and conn.laddr.port == port and conn.raddr:
                    found[conn.raddr.port] = pid
    return found


class Run:
    def __init__(self, plan: Plan, gateway: Gateway) -> None:
        self.plan = plan
        self.gw = gateway
        self.tally = Tally()
        self.stop = asyncio.Event()
        self.killed_ports: set[int] = set()
        self.killed_pids: set[int] = set()
        self.kill_time = 0.0
        # worker pid → when it began draining (from the supervisor's log)
        self.draining_since: dict[int, float] = {}
        self.port_owner: dict[int, int] = {}

    # -- HTTP load -------------------------------------------------------------------------

    async def http_client(self, index: int) -> None:
        interval = self.plan.connections / self.plan.rate
        next_at = time.monotonic() + interval * index / self.plan.connections
        reader = writer = None
        local = 0
        while not self.stop.is_set():
            if writer is None:
                reader, writer = await asyncio.open_connection("127.0.0.1", self.gw.port)
                local = writer.get_extra_info("sockname")[1]
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
            next_at += interval
            self.tally.requests += 1
            try:
                writer.write(b"GET /echo HTTP/1.1\r\nHost: load.test\r\n\r\n")
                status, close = await asyncio.wait_for(read_response(reader), 10)  # type: ignore[arg-type]
                if status != 200:
                    raise RuntimeError(f"status {status}")
            except (OSError, asyncio.IncompleteReadError, RuntimeError, TimeoutError) as exc:
                self.fail(local, f"request on :{local}: {exc!r}")
                close = True
            if close:
                writer.close()
                reader = writer = None
                self.tally.reconnects += 1

    def fail(self, local: int, why: str) -> None:
        self.tally.failed += 1
        if local in self.killed_ports:
            self.tally.failed_on_killed += 1
        elif len(self.tally.failures) < 20:
            self.tally.failures.append(why)

    # -- WebSockets ------------------------------------------------------------------------

    async def websocket(self) -> None:
        while not self.stop.is_set():
            reader, writer = await asyncio.open_connection("127.0.0.1", self.gw.port)
            local = writer.get_extra_info("sockname")[1]
            key = base64.b64encode(os.urandom(16)).decode()
            writer.write(
                f"GET /ws HTTP/1.1\r\nHost: ws.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
            )
            head = await reader.readuntil(b"\r\n\r\n")
            if not head.startswith(b"HTTP/1.1 101"):
                self.tally.ws_closed_unexpectedly += 1
                self.tally.failures.append(f"websocket handshake: {head[:40]!r}")
                writer.close()
                return
            await asyncio.sleep(0.2)
            self.port_owner.update(owners(self.gw_pids, self.gw.port))
            owner = self.port_owner.get(local)
            try:
                while not self.stop.is_set():
                    payload = b"ping %d" % self.tally.ws_messages
                    writer.write(ws_frame(payload))
                    frame = await asyncio.wait_for(reader.readexactly(2 + len(payload)), 10)
                    if frame[2:] != payload:
                        raise RuntimeError(f"echo mismatch {frame!r}")
                    self.tally.ws_messages += 1
                    await asyncio.sleep(0.5)
            except (OSError, asyncio.IncompleteReadError, RuntimeError, TimeoutError) as exc:
                self.websocket_closed(local, owner, exc)
            writer.close()

    def websocket_closed(self, local: int, owner: int | None, exc: BaseException) -> None:
        now = time.monotonic()
        self.scan_log()
        if local in self.killed_ports or owner in self.killed_pids:
            self.tally.ws_closed_by_kill += 1
        elif owner in self.draining_since:
            if now - self.draining_since[owner] >= self.plan.drain_timeout - 0.3:
                self.tally.ws_closed_by_drain += 1
            else:
                self.tally.ws_closed_early += 1
                self.tally.failures.append(
                    f"websocket of pid {owner} closed {now - self.draining_since[owner]:.1f}s into its drain"
                )
        else:
            self.tally.ws_closed_unexpectedly += 1
            self.tally.failures.append(f"websocket :{local} (worker {owner}) closed: {exc!r}")

    _DRAINING = re.compile(r"pid (\d+) draining")

    def scan_log(self) -> None:
        for at, line in list(self.gw.lines):
            for pid in self._DRAINING.findall(line):
                self.draining_since.setdefault(int(pid), at)

    @property
    def gw_pids(self) -> list[int]:
        try:
            return [p.pid for p in psutil.Process(self.gw.proc.pid).children()]
        except psutil.Error:
            return []

    # -- the operator ----------------------------------------------------------------------

    async def operator(self, config: Path, upstream_port: int) -> None:
        plan = self.plan
        events: list[tuple[float, str]] = []
        span = plan.duration * 0.85
        events += [(1.0 + i * span / max(1, plan.hups), "HUP") for i in range(plan.hups)]
        events += [(2.0 + (i + 0.5) * span / max(1, plan.usr2), "USR2") for i in range(plan.usr2)]
        for i in range(plan.scale_pairs):
            at = 3.0 + (i + 0.3) * span / max(1, plan.scale_pairs)
            events += [(at, "TTIN"), (at + 3.0, "TTOU")]
        events += [(plan.duration * 0.55 + i * 2.0, "KILL") for i in range(plan.kills)]
        events.sort()
        started = time.monotonic()
        for at, what in events:
            await asyncio.sleep(max(0.0, started + at - time.monotonic()))
            self.tally.signals[what] = self.tally.signals.get(what, 0) + 1
            if what == "HUP":
                self.tally.versions += 1
                routes = [
                    {"name": "all", "rules": [{"backendRefs": [{"backend": "up"}]}]},
                    {"name": f"v{self.tally.versions}", "hostnames": [f"v{self.tally.versions}.test"],
                     "rules": [{"backendRefs": [{"backend": "up"}]}]},
                ]
                config.write_text(config_yaml(self.gw.port, {"up": [("127.0.0.1", upstream_port)]}, routes))
                self.gw.signal(signal.SIGHUP)
            elif what == "KILL":
                pids = await asyncio.to_thread(self.gw.worker_pids)
                victim = pids[-1]
                self.killed_ports |= set(owners([victim], self.gw.port))
                self.killed_pids.add(victim)
                os.kill(victim, signal.SIGKILL)
            else:
                self.gw.signal(getattr(signal, "SIG" + what))
        await asyncio.sleep(max(0.0, started + plan.duration - time.monotonic()))
        self.stop.set()


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bool]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    fields = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
    await reader.readexactly(int(fields.get("content-length", "0")))
    return status, fields.get("connection", "").lower() == "close"


async def _run(plan: Plan, gw: Gateway, config: Path, upstream_port: int) -> Tally:
    run = Run(plan, gw)
    tasks = [asyncio.create_task(run.http_client(i)) for i in range(plan.connections)]
    tasks += [asyncio.create_task(run.websocket()) for _ in range(plan.websockets)]
    await run.operator(config, upstream_port)
    await asyncio.wait(tasks, timeout=15)
    for task in tasks:
        task.cancel()
    return run.tally


def run_plan(plan: Plan) -> tuple[Tally, Gateway]:
    upstream = Upstream("reload-up").start()
    directory = Path(tempfile.mkdtemp(prefix="gw-reload-"))
    config = directory / "gateway.yaml"
    port = free_port()
    routes = [{"name": "all", "rules": [{"backendRefs": [{"backend": "up"}]}]}]
    config.write_text(config_yaml(port, {"up": [("127.0.0.1", upstream.port)]}, routes))
    gw = Gateway(config, port, free_port(), plan)
    try:
        tally = asyncio.run(_run(plan, gw, config, upstream.port))
        status = gw.status()
        tally.versions = status["config"]["version"]
    finally:
        gw.stop()
        upstream.stop()
        shutil.rmtree(directory, ignore_errors=True)
    return tally, gw


def report(plan: Plan, tally: Tally) -> str:
    signals = ", ".join(f"{n} {name}" for name, n in tally.signals.items())
    lines = [
        f"load: {plan.duration:g}s, {plan.rate:g} req/s target over {plan.connections} keep-alive connections, "
        f"{plan.websockets} WebSockets, {plan.workers} workers, GW_DRAIN_TIMEOUT={plan.drain_timeout:g}s",
        f"signals: {signals}; config versions served: {tally.versions}",
        f"requests: {tally.requests}, failed: {tally.failed} "
        f"(in flight on the killed worker: {tally.failed_on_killed}; other: {tally.failed - tally.failed_on_killed})",
        f"clean reconnects after Connection: close: {tally.reconnects}",
        f"WebSocket messages echoed: {tally.ws_messages}; closed by a drain after GW_DRAIN_TIMEOUT: "
        f"{tally.ws_closed_by_drain}, by the kill: {tally.ws_closed_by_kill}, before the drain timeout: "
        f"{tally.ws_closed_early}, otherwise (e.g. by a HUP): {tally.ws_closed_unexpectedly}",
        f"unexpected failures: {tally.unexpected}",
    ]
    lines += [f"  {why}" for why in tally.failures]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/reload-under-load", description=__doc__.split("\n")[0])
    for name, default in Plan().__dict__.items():
        parser.add_argument("--" + name.replace("_", "-"), type=type(default), default=default)
    args = parser.parse_args(argv)
    plan = Plan(**{k: getattr(args, k) for k in Plan().__dict__})
    tally, _gw = run_plan(plan)
    print(report(plan, tally))
    return 1 if tally.unexpected else 0

