"""An upstream that records every byte a proxy sends it and the requests the strict reference reads in them.

One server listens on a port per backend name. Each connection keeps its raw bytes; the
reference reader (tests.support.rfc9112) splits them into requests as they arrive, and each
request is answered as soon as it is complete, its response naming its sequence number in
`X-Capture`, so a client can tell which upstream request produced the response it got.
Bytes the reference rejects are recorded as the connection's `failure` and answered with 400.

Paths (after normalisation) choose behaviour: /status/N answers N; /early/… answers as soon as
the head is complete, before the body; /head-chunked/… answers HEAD with a chunked head;
/ws-accept/… switches to WebSocket when asked (then only records what follows), any other
WebSocket upgrade is refused with 403. An `Upgrade: h2c` that arrives is accepted with 101, as
a backend that speaks h2c would (a proxy must not let it through).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import threading
from dataclasses import dataclass, field

from tests.support.rfc9112 import Message, normalize, read_requests

WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC11B85"


@dataclass
class Captured:
    """One request as it reached the upstream; `message.complete` is False while (or if, at the
    connection's end) its body is incomplete."""

    seq: int
    backend: str
    connection: int
    message: Message


@dataclass
class Connection:
    """One connection from the proxy: its bytes, and what the reference made of them."""

    number: int
    backend: str
    raw: bytearray = field(default_factory=bytearray)
    tunnel: bytearray | None = None  # bytes after a protocol switch
    failure: str = ""  # the reference's reason for rejecting the bytes, if it did
    after_close: bytearray = field(default_factory=bytearray)  # bytes after a request that closed it
    closed: bool = False


# requests and connections recorded so far, and each connection's size: where `since` starts
Mark = tuple[int, int, list[tuple[Connection, int]]]


class CaptureUpstream:
    """Start with `start(names)`; `ports[name]` is then the port of backend `name`."""

    def __init__(self) -> None:
        self.ports: dict[str, int] = {}
        self.requests: list[Captured] = []
        self.connections: list[Connection] = []
        self.loop: asyncio.AbstractEventLoop | None = None
        self._servers: list[asyncio.base_events.Server] = []
        self._thread: threading.Thread | None = None

    def start(self, names: list[str]) -> CaptureUpstream:
        ready = threading.Event()

        def run() -> None:
            self.loop = asyncio.new_event_loop()
            self.loop.run_until_complete(self._start(names))
            ready.set()
            self.loop.run_forever()

        self._thread = threading.Thread(target=run, name="capture-upstream", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("capture upstream did not start")
        return self

    async def _start(self, names: list[str]) -> None:
        assert self.loop is not None
        for name in names:
            server = await self.loop.create_server(lambda n=name: _Protocol(self, n), "127.0.0.1", 0)  # type: ignore[misc]
            self._servers.append(server)
            self.ports[name] = server.sockets[0].getsockname()[1]

    def stop(self) -> None:
        if self.loop is None:
            return

        async def close() -> None:
            for server in self._servers:
                server.close()

        asyncio.run_coroutine_threadsafe(close(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        assert self._thread is not None
        self._thread.join(5)

    def barrier(self) -> None:
        """Return once the loop has handled every read that was ready when it was called: bytes
        that reached the kernel before are recorded (a callback queued behind them has run)."""
        assert self.loop is not None

        async def settle() -> None:
            for _ in range(3):
                await asyncio.sleep(0)

        asyncio.run_coroutine_threadsafe(settle(), self.loop).result(10)

    def mark(self) -> Mark:
        """A point to take `since` from."""
        return len(self.requests), len(self.connections), [(c, len(c.raw)) for c in self.connections]

    def since(self, mark: Mark) -> tuple[list[Captured], list[Connection]]:
        """Requests that arrived after `mark`, and the connections that got bytes since then."""
        requests, connections, sizes = mark
        grown = [c for c, size in sizes if len(c.raw) > size] + self.connections[connections:]
        # A request under way at the mark is taken again if its connection got more bytes since.
        numbers = {c.number for c in grown}
        earlier = [r for r in self.requests[:requests] if not r.message.complete and r.connection in numbers]
        return earlier + self.requests[requests:], grown


class _Protocol(asyncio.Protocol):
    def __init__(self, owner: CaptureUpstream, backend: str) -> None:
        self.owner = owner
        owner.connections.append(Connection(len(owner.connections) + 1, backend))
        self.conn = owner.connections[-1]
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.pos = 0  # where the next request starts in conn.raw
        self.current: Captured | None = None  # the request whose bytes are arriving
        self.answered = False  # the current request was answered early
        self.continued = False  # 100 Continue sent for the current request

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.conn.closed = True

    def data_received(self, data: bytes) -> None:
        conn = self.conn
        conn.raw += data
        if conn.tunnel is not None:
            conn.tunnel += data
            return
        if conn.failure or self.transport.is_closing():
            conn.after_close += data
            return
        while True:
            stream = read_requests(bytes(conn.raw[self.pos :]), switches=_switches)
            msg = stream.messages[0] if stream.messages else None
            if msg is not None:
                if self.current is None:
                    owner = self.owner
                    self.current = Captured(len(owner.requests) + 1, conn.backend, conn.number, msg)
                    owner.requests.append(self.current)
                    self.answered = self.continued = False
                self.current.message = msg
                if not msg.complete:
                    if stream.ending == "malformed":
                        self._fail(stream.reason)
                    else:
                        self._partial(self.current)
                    return
                captured, self.current = self.current, None
                self.pos += msg.end
                if not self.answered:
                    self._respond(captured)
                if stream.ending == "switched" and len(stream.messages) == 1:
                    conn.tunnel = bytearray(conn.raw[self.pos :])
                    return
                if msg.close:
                    conn.after_close += conn.raw[self.pos :]
                    self.transport.close()
                    return
                continue
            if stream.ending == "malformed":
                self._fail(stream.reason)
            return

    def _fail(self, reason: str) -> None:
        self.conn.failure = reason
        self.transport.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        self.transport.close()

    def _partial(self, captured: Captured) -> None:
        """A request whose body is still arriving: answer /early ones now, say 100 when asked."""
        msg = captured.message
        if not self.answered and _path(msg).startswith(b"/early"):
            self.answered = True
            self._respond(captured)
        elif msg.expects_continue and not msg.body and not self.continued:
            self.continued = True
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def _respond(self, captured: Captured) -> None:
        msg = captured.message
        path = _path(msg)
        seq = b"%d" % captured.seq
        status = 200
        fields = [(b"X-Capture", seq)]
        body = b"%d %s %s\n" % (captured.seq, msg.method, msg.target[:200])
        if msg.upgrade == b"websocket" and _switches(msg):
            key = next(iter(msg.lines(b"sec-websocket-key")), b"")
            accept = base64.b64encode(hashlib.sha1(key + WS_GUID).digest())
            self.transport.write(
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                b"Sec-WebSocket-Accept: %b\r\nX-Capture: %b\r\n\r\n" % (accept, seq)
            )
            return
        if msg.upgrade == b"h2c":
            self.transport.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n")
            return
        if msg.upgrade == b"websocket":
            status = 403
        elif path.startswith(b"/status/") and path[8:11].isdigit():
            status = int(path[8:11])
        if status in (204, 304):
            head_fields = fields
            body = b""
        elif path.startswith(b"/head-chunked") and msg.method == b"HEAD":
            head_fields = [*fields, (b"Transfer-Encoding", b"chunked")]
            body = b""
        else:
            head_fields = [*fields, (b"Content-Type", b"text/plain"), (b"Content-Length", b"%d" % len(body))]
            if msg.method == b"HEAD":
                body = b""
        if msg.close:
            head_fields.append((b"Connection", b"close"))
        self.transport.write(
            b"HTTP/1.1 %d Captured\r\n" % status + b"".join(b"%b: %b\r\n" % f for f in head_fields) + b"\r\n" + body
        )


def _path(msg: Message) -> bytes:
    return normalize(msg.target).partition(b"?")[0]


def _switches(msg: Message) -> bool:
    """The protocol switches this upstream accepts: WebSocket on /ws-accept, and any h2c."""
    upgrade = msg.upgrade
    return (upgrade == b"websocket" and _path(msg).startswith(b"/ws-accept")) or upgrade == b"h2c"
