"""A real HTTP/1.1 upstream for tests, running its own asyncio loop in a background thread.

Paths choose behaviour (GET /echo, /bytes/N, /chunked/N, /sse, /status/N, /slow, /reset/N, …),
so one server serves many tests; each request is recorded for assertions. Written on asyncio
streams with a hand-written parser so that tests can make it misbehave on purpose.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import ssl
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from urllib.parse import parse_qs, urlsplit

PATTERN = bytes(range(256)) * 4096  # 1 MiB of known bytes for large bodies
WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC11B85"


@dataclass
class Seen:
    """A request as the upstream received it."""

    method: str
    target: str
    version: str
    headers: list[tuple[str, str]]
    body_bytes: int = 0
    body_sha256: str = ""
    connection: int = 0  # which upstream connection carried it (1, 2, … in accept order)
    nth: int = 0  # its position on that connection (1 = the connection's first request)
    tls: str | None = None  # the TLS version of its connection ("TLSv1.3"), None in plain text
    tls_resumed: bool = False  # its connection resumed an earlier TLS session

    def header(self, name: str) -> str | None:
        values = [v for n, v in self.headers if n.lower() == name.lower()]
        return ", ".join(values) if values else None

    def header_list(self, name: str) -> list[str]:
        return [v for n, v in self.headers if n.lower() == name.lower()]


@dataclass
class Upstream:
    """Start with `start()`; `port` is then set. `name` appears in /echo answers."""

    name: str = "up"
    host: str = "127.0.0.1"
    port: int = 0
    seen: list[Seen] = field(default_factory=list)
    connections: int = 0
    gates: dict[str, asyncio.Event] = field(default_factory=dict)  # /wait/<gate> blocks on these
    # Every request answered as if it asked for this path ("status/500", "reset/1000", "never"):
    # an endpoint gone bad whatever it is asked. None: as asked.
    fault: str | None = None
    flaky: dict[str, int] = field(default_factory=dict)  # /flaky/<key>/<n>: requests seen per key
    loop: asyncio.AbstractEventLoop | None = None
    tls: ssl.SSLContext | None = None  # serve HTTPS with this server context
    _server: asyncio.base_events.Server | None = None
    _thread: threading.Thread | None = None
    _writers: set[asyncio.StreamWriter] = field(default_factory=set)

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> Upstream:
        ready = threading.Event()

        def run() -> None:
            self.loop = asyncio.new_event_loop()
            self.loop.run_until_complete(self._start())
            ready.set()
            self.loop.run_forever()

        self._thread = threading.Thread(target=run, name=f"upstream-{self.name}", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("test upstream did not start")
        return self

    async def _start(self) -> None:
        self._server = await asyncio.start_server(self._serve, self.host, self.port, limit=1 << 20, ssl=self.tls)
        self.port = self._server.sockets[0].getsockname()[1]

    def stop(self) -> None:
        if self.loop is None:
            return

        async def close() -> None:
            assert self._server is not None
            self._server.close()
            for w in list(self._writers):
                w.transport.abort()
            # Let the connection handlers see their aborted transports and end, rather than be
            # destroyed pending when the loop stops ("Task was destroyed but it is pending").
            current = asyncio.current_task()
            handlers = [t for t in asyncio.all_tasks() if t is not current]
            for task in handlers:
                task.cancel()
            await asyncio.gather(*handlers, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(close(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        assert self._thread is not None
        self._thread.join(5)
        self.loop = None  # stopped: a second stop (a test's, then its fixture's) does nothing

    def call(self, fn: Callable[[], Awaitable[object]]) -> object:
        """Run a coroutine function on the upstream's loop and wait for its result."""
        assert self.loop is not None
        return asyncio.run_coroutine_threadsafe(fn(), self.loop).result(10)

    def open_gate(self, name: str) -> None:
        assert self.loop is not None
        self.loop.call_soon_threadsafe(self._gate(name).set)

    def _gate(self, name: str) -> asyncio.Event:
        gate = self.gates.get(name)
        if gate is None:
            gate = self.gates[name] = asyncio.Event()
        return gate

    # -- serving ----------------------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        connection = self.connections
        nth = 0
        sslobj = writer.get_extra_info("ssl_object")
        tls = sslobj.version() if sslobj is not None else None
        resumed = sslobj.session_reused if sslobj is not None else False
        self._writers.add(writer)
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                lines = head[:-4].decode("latin-1").split("\r\n")
                method, target, version = lines[0].split(" ", 2)
                headers = [tuple(x.strip() for x in line.split(":", 1)) for line in lines[1:]]
                nth += 1
                seen = Seen(
                    method, target, version, headers,  # type: ignore[arg-type]
                    connection=connection, nth=nth, tls=tls, tls_resumed=resumed,
                )  # fmt: skip
                self.seen.append(seen)
                digest = hashlib.sha256()
                te = (seen.header("transfer-encoding") or "").lower()
                if te == "chunked":
                    while True:
                        size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
                        if size == 0:
                            while (await reader.readuntil(b"\r\n")) != b"\r\n":
                                pass
                            break
                        chunk = await reader.readexactly(size + 2)
                        digest.update(chunk[:-2])
                        seen.body_bytes += size
                else:
                    remaining = int(seen.header("content-length") or 0)
                    while remaining:
                        chunk = await reader.read(min(remaining, 1 << 20))
                        if not chunk:
                            return
                        digest.update(chunk)
                        seen.body_bytes += len(chunk)
                        remaining -= len(chunk)
                seen.body_sha256 = digest.hexdigest()
                keep = await self._respond(seen, reader, writer)
                if not keep:
                    writer.close()
                    return
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            self._writers.discard(writer)

    async def _respond(self, req: Seen, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        url = urlsplit("/" + self.fault if self.fault else req.target)
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        parts = [p for p in url.path.split("/") if p]
        kind = parts[0] if parts else ""
        arg = parts[1] if len(parts) > 1 else ""
        close = (req.header("connection") or "").lower() == "close"

        def head(status: int, fields: list[tuple[str, str]]) -> bytes:
            lines = [f"HTTP/1.1 {status} X"] + [f"{n}: {v}" for n, v in fields]
            if close:
                lines.append("Connection: close")
            return ("\r\n".join(lines) + "\r\n\r\n").encode()

        if "delay" in query:
            await asyncio.sleep(float(query["delay"]))
        if kind == "bytes":  # N bytes of PATTERN with Content-Length, written with back-pressure
            n = int(arg)
            writer.write(head(200, [("Content-Length", str(n)), ("Content-Type", "application/octet-stream")]))
            await _write_pattern(writer, n, chunked=False)
        elif kind == "chunked":  # N bytes of PATTERN, chunked
            n = int(arg)
            writer.write(head(200, [("Transfer-Encoding", "chunked")]))
            await _write_pattern(writer, n, chunked=True)
            writer.write(b"0\r\n\r\n")
        elif kind == "close-delimited":  # a body ended by closing the connection
            n = int(arg)
            writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n")
            await _write_pattern(writer, n, chunked=False)
            await writer.drain()
            return False
        elif kind == "reset":  # promise 2N bytes, send N, then reset the connection
            n = int(arg)
            writer.write(head(200, [("Content-Length", str(2 * n))]))
            await _write_pattern(writer, n, chunked=False)
            await writer.drain()
            writer.transport.abort()
            return False
        elif kind == "reset-chunked":  # chunked body cut off before its last chunk
            n = int(arg)
            writer.write(head(200, [("Transfer-Encoding", "chunked")]))
            await _write_pattern(writer, n, chunked=True)
            await writer.drain()
            writer.transport.abort()
            return False
        elif kind == "flaky":  # /flaky/<key>/<n>: 503 for the first n requests with that key
            n = int(parts[2]) if len(parts) > 2 else 1
            self.flaky[arg] = self.flaky.get(arg, 0) + 1
            if self.flaky[arg] <= n:
                writer.write(head(503, [("Content-Length", "5")]) + b"flaky")
            else:
                body = json.dumps({"tries": self.flaky[arg], "body_sha256": req.body_sha256}).encode()
                writer.write(head(200, [("Content-Length", str(len(body)))]) + body)
        elif kind == "flaky-hangup":  # /flaky-hangup/<key>/<n>: close unanswered for the first n requests
            n = int(parts[2]) if len(parts) > 2 else 1
            self.flaky[arg] = self.flaky.get(arg, 0) + 1
            if self.flaky[arg] <= n:
                return False
            body = json.dumps({"tries": self.flaky[arg]}).encode()
            writer.write(head(200, [("Content-Length", str(len(body)))]) + body)
        elif kind == "hangup":  # close without answering
            return False
        elif kind == "hangup-reused" and req.nth > 1:
            # A keep-alive connection the server closes as the next request arrives (what an idle
            # timeout racing a reuse looks like to the client); a connection's first request is
            # answered by the echo below.
            return False
        elif kind == "status":
            status = int(arg)
            fields = [("X-Upstream", self.name)]
            if "issue" in query:  # ?issue=Name:value: a header the application issues (a session id)
                fields.append(tuple(query["issue"].split(":", 1)))  # type: ignore[arg-type]
            body = b"" if status in (204, 304) or req.method == "HEAD" else b"status body"
            if status not in (204, 304):
                fields.append(("Content-Length", str(len(b"status body"))))
            writer.write(head(status, fields) + body)
        elif kind == "sse":  # one event now, the next when gate `arg` opens, then end
            writer.write(head(200, [("Content-Type", "text/event-stream"), ("Transfer-Encoding", "chunked")]))
            writer.write(_chunk(b"data: first\n\n"))
            await writer.drain()
            await self._gate(arg).wait()
            writer.write(_chunk(b"data: second\n\n") + b"0\r\n\r\n")
        elif kind == "wait":  # answer only when gate `arg` opens
            await self._gate(arg).wait()
            writer.write(head(200, [("Content-Length", "2")]) + b"ok")
        elif kind == "never":  # read the request, never answer
            await asyncio.Event().wait()
        elif kind == "ws":  # WebSocket echo of text frames (unmasked server frames)
            key = (req.header("sec-websocket-key") or "").encode()
            accept = base64.b64encode(hashlib.sha1(key + WS_GUID).digest()).decode()
            writer.write(
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                + f"Sec-WebSocket-Accept: {accept}\r\n\r\n".encode()
            )
            await _ws_echo(reader, writer)
            return False
        elif kind == "ws-refuse":
            writer.write(head(403, [("Content-Length", "2")]) + b"no")
        elif kind == "head-with-length":  # HEAD answered with the length a GET would have
            writer.write(head(200, [("Content-Length", "1000")]) + (b"" if req.method == "HEAD" else b"x" * 1000))
        elif kind == "early-hints":
            writer.write(b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n")
            writer.write(head(200, [("Content-Length", "2")]) + b"ok")
        elif kind == "hop":  # a response carrying hop-by-hop fields the proxy must drop
            writer.write(
                head(
                    200,
                    [
                        ("Content-Length", "2"),
                        ("Connection", "X-Secret"),
                        ("X-Secret", "1"),
                        ("Keep-Alive", "timeout=5"),
                        ("X-Kept", "yes"),
                    ],
                )
                + b"ok"
            )
        elif kind == "hop-all":  # every hop-by-hop response field, plus fields named in Connection
            writer.write(
                head(
                    200,
                    [
                        ("Content-Length", "2"),
                        ("Connection", "X-Named-A, x-named-b"),
                        ("X-Named-A", "1"),
                        ("X-Named-B", "2"),
                        ("Keep-Alive", "timeout=5"),
                        ("Proxy-Connection", "keep-alive"),
                        ("Proxy-Authenticate", "Basic realm=x"),
                        ("TE", "trailers"),
                        ("Trailer", "X-Checksum"),
                        ("Upgrade", "h2c"),
                        ("X-End-To-End", "kept"),
                    ],
                )
                + b"ok"
            )
        else:  # echo: what was received, as JSON
            body = json.dumps(
                {
                    "upstream": self.name,
                    "method": req.method,
                    "target": req.target,
                    "version": req.version,
                    "headers": req.headers,
                    "body_bytes": req.body_bytes,
                    "body_sha256": req.body_sha256,
                }
            ).encode()
            fields = [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
            writer.write(head(200, fields) + (b"" if req.method == "HEAD" else body))
        await writer.drain()
        return not close


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(data), data)


async def _write_pattern(writer: asyncio.StreamWriter, n: int, *, chunked: bool) -> None:
    while n > 0:
        piece = PATTERN[: min(n, len(PATTERN))]
        writer.write(_chunk(piece) if chunked else piece)
        n -= len(piece)
        await writer.drain()


def pattern_sha256(n: int) -> str:
    """The sha256 of the first n bytes of the repeated PATTERN."""
    digest = hashlib.sha256()
    while n > 0:
        piece = PATTERN[: min(n, len(PATTERN))]
        digest.update(piece)
        n -= len(piece)
    return digest.hexdigest()


async def _ws_echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Echo text frames back until a close frame; enough of RFC 6455 for proxy tests."""
    while True:
        try:
            b0, b1 = await reader.readexactly(2)
        except asyncio.IncompleteReadError:
            return
        opcode = b0 & 0x0F
        length = b1 & 0x7F
        if length == 126:
            length = int.from_bytes(await reader.readexactly(2), "big")
        elif length == 127:
            length = int.from_bytes(await reader.readexactly(8), "big")
        mask = await reader.readexactly(4) if b1 & 0x80 else b"\0\0\0\0"
        payload = bytes(c ^ mask[i % 4] for i, c in enumerate(await reader.readexactly(length)))
        if opcode == 0x8:
            writer.write(b"\x88\x00")
            await writer.drain()
            return
        writer.write(ws_frame(payload, opcode=opcode, masked=False))
        await writer.drain()


def ws_frame(payload: bytes, *, opcode: int = 0x1, masked: bool = True) -> bytes:
    """One final WebSocket frame; clients mask (with a fixed key: fine for tests)."""
    head = bytes([0x80 | opcode])
    n = len(payload)
    mask_bit = 0x80 if masked else 0
    if n < 126:
        head += bytes([mask_bit | n])
    elif n < 65536:
        head += bytes([mask_bit | 126]) + n.to_bytes(2, "big")
    else:
        head += bytes([mask_bit | 127]) + n.to_bytes(8, "big")
    if not masked:
        return head + payload
    key = b"\x01\x02\x03\x04"
    return head + key + bytes(c ^ key[i % 4] for i, c in enumerate(payload))
