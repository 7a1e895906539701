"""Upstream endpoints whose failure is switched at run time, for resilience tests and the bench.

One server (a thread of the test, or a process: `python -m tests.support.faulty_upstream`) runs
several endpoints, each on its own port with its own mode, and a control port that switches them
and reports what they received. A mode applies to every path, the health path included (a broken
endpoint fails its probes too):

    ok      200 with a small body
    status  answer `status` (default 500)
    slow    wait `delay` seconds, then answer as ok
    hang    read the request, never answer
    reset   send the head and half of the promised body, then RST the connection
    refuse  stop listening and RST every open connection: connects are refused

Every response carries `X-Endpoint: <name>`, so a client can tell which endpoint answered. With
`issue_session` (a header name), it plays an application that issues session ids (GEP-1619 type
Header): a request without that header gets a response carrying it with a new id.
Requests on the health path (`/healthz` by default) are counted apart from the others.

The control port speaks HTTP/1.1 (one request per connection):

    POST /mode/<name|*>/<mode>?status=500&delay=1.5   switch, answers the endpoint's counts
    GET  /counts                                      {"<name>": counts, ...}
    POST /reset                                       zero every endpoint's counts

Counts: requests, health (probes), connections (accepted), last_request and last_health (wall
clock, time.time(); 0 if none), health_times (wall clock of every probe), mode.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

MODES = ("ok", "status", "slow", "hang", "reset", "refuse")
HEALTH_PATH = "/healthz"
RESET_BODY = 64  # bytes sent of the 2 x RESET_BODY a reset response promises
REPO = Path(__file__).resolve().parents[2]


@dataclass
class Endpoint:
    name: str
    port: int = 0
    mode: str = "ok"
    status: int = 500
    delay: float = 1.0
    requests: int = 0
    health: int = 0
    connections: int = 0
    last_request: float = 0.0
    last_health: float = 0.0
    health_times: list[float] = field(default_factory=list)
    server: asyncio.base_events.Server | None = None
    writers: set[asyncio.StreamWriter] = field(default_factory=set)

    def counts(self) -> dict[str, Any]:
        return {
            "port": self.port,
            "mode": self.mode,
            "status": self.status,
            "delay": self.delay,
            "requests": self.requests,
            "health": self.health,
            "connections": self.connections,
            "last_request": self.last_request,
            "last_health": self.last_health,
            "health_times": self.health_times,
        }

    def reset_counts(self) -> None:
        self.requests = self.health = self.connections = 0
        self.last_request = self.last_health = 0.0
        self.health_times = []


class FaultyUpstream:
    """Endpoints named `names` (ports chosen by the kernel unless given) and a control port.

    In a test: `FaultyUpstream(["a", "b"]).start()` runs it on a thread; `stop()` ends it.
    """

    def __init__(self, names: Sequence[str], *, ports: Sequence[int] = (), control_port: int = 0,
                 health_path: str = HEALTH_PATH, host: str = "127.0.0.1", issue_session: str = "") -> None:  # fmt: skip
        self.host = host
        self.health_path = health_path
        self.issue_session = issue_session
        self.issued = 0
        self.endpoints = {n: Endpoint(n, ports[i] if i < len(ports) else 0) for i, n in enumerate(names)}
        self.control_port = control_port
        self.loop: asyncio.AbstractEventLoop | None = None
        self._control: asyncio.base_events.Server | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle --------------------------------------------------------------------------

    async def serve(self) -> None:
        """Open the control port and every endpoint's listener (on the running loop)."""
        for endpoint in self.endpoints.values():
            await self._listen(endpoint)
        self._control = await asyncio.start_server(self._serve_control, self.host, self.control_port)
        self.control_port = self._control.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self._control is not None:
            self._control.close()
        for endpoint in self.endpoints.values():
            self._unlisten(endpoint)
        current = asyncio.current_task()
        handlers = [t for t in asyncio.all_tasks() if t is not current]
        for task in handlers:
            task.cancel()
        await asyncio.gather(*handlers, return_exceptions=True)

    def start(self) -> FaultyUpstream:
        """Serve on a background thread with its own loop; returns once every port listens."""
        ready = threading.Event()

        def run() -> None:
            self.loop = asyncio.new_event_loop()
            self.loop.run_until_complete(self.serve())
            ready.set()
            self.loop.run_forever()

        self._thread = threading.Thread(target=run, name="faulty-upstream", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("faulty upstream did not start")
        return self

    def stop(self) -> None:
        if self.loop is None:
            return
        asyncio.run_coroutine_threadsafe(self.close(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        assert self._thread is not None
        self._thread.join(5)

    def port(self, name: str) -> int:
        return self.endpoints[name].port

    # -- switching --------------------------------------------------------------------------

    async def switch(self, name: str, mode: str, status: int | None = None, delay: float | None = None) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; one of {', '.join(MODES)}")
        endpoint = self.endpoints[name]
        if status is not None:
            endpoint.status = status
        if delay is not None:
            endpoint.delay = delay
        was, endpoint.mode = endpoint.mode, mode
        if mode == "refuse" and was != "refuse":
            self._unlisten(endpoint)
        elif mode != "refuse" and was == "refuse":
            await self._listen(endpoint)

    async def _listen(self, endpoint: Endpoint) -> None:
        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await self._serve(endpoint, reader, writer)

        # reuse_address (asyncio's default on Unix) lets a refusing endpoint listen again on its port.
        endpoint.server = await asyncio.start_server(serve, self.host, endpoint.port)
        endpoint.port = endpoint.server.sockets[0].getsockname()[1]

    def _unlisten(self, endpoint: Endpoint) -> None:
        if endpoint.server is not None:
            endpoint.server.close()
            endpoint.server = None
        # A pooled connection would still reach a "refusing" endpoint: reset them all.
        for writer in list(endpoint.writers):
            _rst(writer)

    # -- serving an endpoint ----------------------------------------------------------------

    async def _serve(self, endpoint: Endpoint, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        endpoint.connections += 1
        endpoint.writers.add(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head[:-4].decode("latin-1").split("\r\n")
                method, target, _ = lines[0].split(" ", 2)
                fields = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
                await _read_body(reader, fields)
                now = time.time()
                if urlsplit(target).path == self.health_path:
                    endpoint.health += 1
                    endpoint.last_health = now
                    endpoint.health_times.append(now)
                else:
                    endpoint.requests += 1
                    endpoint.last_request = now
                close = fields.get("connection", "").lower() == "close"
                extra = "Connection: close\r\n" if close else ""
                if self.issue_session and not fields.get(self.issue_session.lower()):
                    self.issued += 1
                    extra += f"{self.issue_session}: {endpoint.name}-{self.issued}\r\n"
                if not await self._respond(endpoint, method, writer, close, extra):
                    return
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
            return
        finally:
            endpoint.writers.discard(writer)
            writer.close()

    async def _respond(
        self, endpoint: Endpoint, method: str, writer: asyncio.StreamWriter, close: bool, extra: str
    ) -> bool:
        """Answer by the endpoint's mode as the request arrived (`extra` fields in the head); whether
        the connection lives on."""
        mode = endpoint.mode
        if mode == "refuse":  # arrived on a connection accepted just before the switch
            _rst(writer)
            return False
        if mode == "hang":
            await asyncio.Event().wait()
        if mode == "slow":
            await asyncio.sleep(endpoint.delay)
        if mode == "reset":
            writer.write(_head(200, endpoint.name, 2 * RESET_BODY, extra) + b"x" * RESET_BODY)
            await writer.drain()
            _rst(writer)
            return False
        status, body = (endpoint.status, b"fault\n") if mode == "status" else (200, b"ok\n")
        writer.write(_head(status, endpoint.name, len(body), extra) + (b"" if method == "HEAD" else body))
        await writer.drain()
        return not close

    # -- the control port -------------------------------------------------------------------

    async def _serve_control(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            method, target, _ = head.decode("latin-1").split("\r\n", 1)[0].split(" ", 2)
            status, answer = await self._control_answer(method, target)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            writer.close()
            return
        except (ValueError, KeyError) as exc:
            status, answer = 400, {"error": str(exc)}
        body = json.dumps(answer).encode()
        writer.write(
            f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            f"Connection: close\r\n\r\n".encode()
            + body
        )
        await writer.drain()
        writer.close()

    async def _control_answer(self, method: str, target: str) -> tuple[int, Any]:
        url = urlsplit(target)
        parts = [p for p in url.path.split("/") if p]
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        if parts == ["counts"]:
            return 200, {n: e.counts() for n, e in self.endpoints.items()}
        if method == "POST" and parts == ["reset"]:
            for endpoint in self.endpoints.values():
                endpoint.reset_counts()
            return 200, {}
        if method == "POST" and len(parts) == 3 and parts[0] == "mode":
            names = list(self.endpoints) if parts[1] == "*" else [parts[1]]
            status = int(query["status"]) if "status" in query else None
            delay = float(query["delay"]) if "delay" in query else None
            for name in names:
                await self.switch(name, parts[2], status, delay)
            return 200, {n: self.endpoints[n].counts() for n in names}
        return 404, {"error": f"no such control request: {method} {target}"}


def _head(status: int, name: str, length: int, extra: str) -> bytes:
    return (f"HTTP/1.1 {status} X\r\nX-Endpoint: {name}\r\nContent-Length: {length}\r\n{extra}\r\n").encode()


async def _read_body(reader: asyncio.StreamReader, fields: dict[str, str]) -> None:
    if fields.get("transfer-encoding", "").lower() == "chunked":
        while size := int((await reader.readuntil(b"\r\n")).split(b";")[0], 16):
            await reader.readexactly(size + 2)
        while await reader.readuntil(b"\r\n") != b"\r\n":
            pass
    elif length := int(fields.get("content-length", "0")):
        await reader.readexactly(length)


def _rst(writer: asyncio.StreamWriter) -> None:
    """Close with a reset rather than a FIN (SO_LINGER 0), as a crashed or reset peer does."""
    sock = writer.get_extra_info("socket")
    if sock is not None and sock.fileno() >= 0:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


# -- clients of the control port ------------------------------------------------------------


class Control:
    """The control port of a FaultyUpstream, from another thread or process (blocking calls)."""

    def __init__(self, port: int, host: str = "127.0.0.1") -> None:
        self.base = f"http://{host}:{port}"

    def _call(self, method: str, path: str) -> Any:
        req = urllib.request.Request(self.base + path, method=method)
        with urllib.request.urlopen(req, timeout=10) as resp:
            return json.loads(resp.read())

    def switch(self, name: str, mode: str, *, status: int | None = None, delay: float | None = None) -> Any:
        query = "&".join(f"{k}={v}" for k, v in (("status", status), ("delay", delay)) if v is not None)
        return self._call("POST", f"/mode/{name}/{mode}" + (f"?{query}" if query else ""))

    def counts(self) -> dict[str, dict[str, Any]]:
        return self._call("GET", "/counts")  # type: ignore[no-any-return]

    def reset(self) -> None:
        self._call("POST", "/reset")


async def control(port: int, method: str, path: str, host: str = "127.0.0.1") -> Any:
    """One control request from a coroutine (the bench's loop must not block on urllib)."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(f"{method} {path} HTTP/1.1\r\nHost: control\r\nConnection: close\r\n\r\n".encode())
        data = await reader.read()
    finally:
        writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200"):
        raise RuntimeError(f"faulty upstream control {method} {path}: {head.decode(errors='replace')} {body!r}")
    return json.loads(body)


def spawn(names: Sequence[str], *, ports: Sequence[int] = (), control_port: int = 0, log: Path | None = None,
          health_path: str = HEALTH_PATH, issue_session: str = "",
          ) -> tuple[subprocess.Popen[bytes], Control, dict[str, int]]:  # fmt: skip
    """Run a FaultyUpstream as a process; (process, its control, endpoint ports) once it listens.

    The caller stops the process (terminate() then wait()).
    """
    argv = [sys.executable, "-m", "tests.support.faulty_upstream", "--control", str(control_port),
            "--health-path", health_path, "--issue-session", issue_session]  # fmt: skip
    for i, name in enumerate(names):
        argv += ["--endpoint", f"{name}={ports[i] if i < len(ports) else 0}"]
    stderr = open(log, "ab") if log is not None else None  # noqa: SIM115 - the child holds it
    try:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=stderr, cwd=REPO, start_new_session=True)
    finally:
        if stderr is not None:
            stderr.close()
    assert proc.stdout is not None
    line = proc.stdout.readline()  # the one line it prints once every port listens
    if not line:
        proc.wait(10)
        raise RuntimeError(f"faulty upstream exited with {proc.returncode} before listening")
    ready = json.loads(line)
    return proc, Control(ready["control"]), ready["endpoints"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.support.faulty_upstream", description=__doc__.split("\n")[0])
    parser.add_argument("--endpoint", action="append", default=[], help="name=port (0: any free port); repeatable")
    parser.add_argument("--control", type=int, default=0, help="control port (0: any free port)")
    parser.add_argument("--health-path", default=HEALTH_PATH)
    parser.add_argument("--issue-session", default="", help="a header name: issue a session id to requests without it")
    args = parser.parse_args(argv)
    pairs = [e.split("=", 1) for e in args.endpoint] or [["e1", "0"]]
    upstream = FaultyUpstream([n for n, _ in pairs], ports=[int(p) for _, p in pairs], control_port=args.control,
                              health_path=args.health_path, issue_session=args.issue_session)  # fmt: skip

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await upstream.serve()
        ports = {n: e.port for n, e in upstream.endpoints.items()}
        print(json.dumps({"control": upstream.control_port, "endpoints": ports}), flush=True)
        await stop.wait()
        await upstream.close()

    asyncio.run(run())


if __name__ == "__main__":
    main()
