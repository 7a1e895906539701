"""RequestMirror: a copy of a request sent to a mirror backend, its response read and dropped.

The copy is the request as it goes upstream (after the rule's and the backendRef's header
modifiers and URLRewrite), Host included: Envoy appends "-shadow" to a shadow's Host, but the
Gateway API only says the request is sent to the mirror and its response ignored, and a mirror
standing in for the same service must see what that service sees (virtual hosts, signatures
over Host). The X-Request-ID is the primary's, so the two can be told apart and matched in logs.

A mirror never touches the client's exchange: it has its own connection (from the endpoint's
keep-alive pool), its own deadline (checked by the worker's sweeper) and a bound on the bytes it
may hold; a mirror that cannot keep up, or whose backend is slow, dead or misbehaving, is
abandoned and counted in `gw_mirror_requests_total{backend, result}`. Nothing here runs for a
rule without mirrors.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from time import monotonic
from typing import TYPE_CHECKING

from gw.proxy.request import CRLF
from gw.proxy.side_request import SideRequest

if TYPE_CHECKING:
    from gw.config.filters import Mirror
    from gw.config.model import Backend
    from gw.proxy.dataplane import DataPlane
    from gw.proxy.exchange import Exchange
    from gw.proxy.upstream import UpstreamConnection

# Bytes of one copy not yet taken by the kernel (waiting for its connection, or in its transport's
# buffer): past this the mirror is behind the client and is abandoned. The primary holds as much
# while its own connection opens (PENDING_BODY_LIMIT).
MIRROR_BUFFER_LIMIT = 256 * 1024
# Copies in flight per worker: beyond this, requests are not mirrored (each holds a connection).
MAX_MIRRORS_IN_FLIGHT = 512
LAST_CHUNK = b"0\r\n\r\n"

# gw_mirror_requests_total results
OK = "ok"  # the mirror answered (whatever its status); the answer was dropped
CONNECT_FAILED = "connect-failed"
LOST = "lost"  # connection closed or reset before a response
OVERFLOW = "overflow"  # the mirror fell more than MIRROR_BUFFER_LIMIT behind the client
OVERLOADED = "overloaded"  # MAX_MIRRORS_IN_FLIGHT copies already under way: not sent
NO_ENDPOINT = "no-endpoint"
INCOMPLETE = "incomplete"  # the client went away before its request body was complete


def start_mirrors(
    plane: DataPlane, mirrors: Sequence[Mirror], req: Exchange, early_body: list[bytes] | None, timeout: float
) -> list[MirrorRequest] | None:
    """Send a copy of `req` (head as it goes upstream) to each mirror its percent/fraction takes.

    `early_body`: the body pieces read before now; `timeout`: how long a copy may go without
    progress (connect, send, answer). Returns the copies still waiting for body bytes (the client
    connection hands them on), or None.
    """
    copies: list[MirrorRequest] | None = None
    for mirror in mirrors:
        if not mirror.take():
            continue
        if len(plane.mirrors) >= MAX_MIRRORS_IN_FLIGHT:
            plane.metrics.inc("gw_mirror_requests_total", backend=mirror.name, result=OVERLOADED)
            continue
        copy = MirrorRequest(plane, mirror.name, req, early_body, timeout)
        try:
            copy.start(mirror.backend, req)
        except Exception as exc:
            copy.crash(exc)
        if not copy.done and not copy.body_done:
            if copies is None:
                copies = []
            copies.append(copy)
    return copies


class MirrorRequest(SideRequest):
    """One copy of a client request to one mirror backend, from connect to the dropped response.

    It owns an UpstreamConnection the way a ClientConnection does (the connection calls the
    upstream_* methods below), so pooled connections serve mirrors and primaries alike.
    """

    __slots__ = (
        "backend_name",
        "body_done",
        "buffered",
        "chunked",
        "conn",
        "connecting",
        "deadline",
        "done",
        "got_head",
        "head",
        "head_only",
        "pending",
        "plane",
        "remaining",
        "timeout",
    )

    def __init__(
        self, plane: DataPlane, backend_name: str, req: Exchange, early_body: list[bytes] | None, timeout: float
    ) -> None:
        self.plane = plane
        self.backend_name = backend_name
        self.timeout = timeout
        self.head = [req.method, b" ", req.url, b" HTTP/1.1\r\n", *req.head]
        self.head_only = req.method == b"HEAD"
        self.chunked = req.chunked
        # Body bytes received before the copy started (the client's read held them, or the request
        # waited behind a pipelined one), framed as they will be sent.
        self.pending: list[bytes] = []
        self.buffered = 0
        self.remaining = req.content_length - req.body_received  # of a Content-Length body
        self.body_done = req.complete or not req.has_body or (not req.chunked and self.remaining <= 0)
        self.conn: UpstreamConnection | None = None
        self.connecting: asyncio.Task[UpstreamConnection] | None = None
        self.done = False
        self.got_head = False
        self.deadline = 0.0
        if not req.host_header:
            self.head.append(b"")  # Host of the endpoint, filled in when it is chosen
        for chunk in early_body or ():
            self._queue(chunk)
        if req.chunked and req.complete:
            self._queue_raw(LAST_CHUNK)

    # -- from the client connection ----------------------------------------------------------

    def start(self, backend: Backend, req: Exchange) -> None:
        """Pick the mirror's endpoint for the primary exchange `req` and send what is buffered."""
        if self.done:
            return  # what the client had already sent is more than a mirror may hold
        now = monotonic()
        plane = self.plane
        endpoint = backend.pick(req)
        if endpoint is None:
            self._end(NO_ENDPOINT)
            return
        plane.mirrors.add(self)
        pool = endpoint.pool  # bound when the snapshot was installed
        if self.head[-1] == b"":
            self.head[-1] = b"Host: %s:%d\r\n" % (pool.address.encode(), pool.port)
        conn = pool.acquire()
        if conn is not None:
            self._send(conn, now)
            return
        self.deadline = now + plane.settings.upstream_connect_timeout
        task = self.connecting = plane.loop.create_task(pool.open())
        task.add_done_callback(self._connected)

    def body(self, chunk: bytes) -> None:
        """A piece of the client's request body (called for every piece, as it arrives)."""
        if self.done:
            return
        try:
            if self.chunked:
                self._queue(chunk)
            else:
                self.remaining -= len(chunk)
                self._queue(chunk)
                if self.remaining <= 0:
                    self.body_done = True
            conn = self.conn
            if conn is None:
                return
            self._flush(conn)
        except Exception as exc:
            self.crash(exc)

    def end(self) -> None:
        """The client's chunked request body is complete."""
        if self.done or self.body_done:
            return
        try:
            self.body_done = True
            self._queue_raw(LAST_CHUNK)
            if self.conn is not None:
                self._flush(self.conn)
        except Exception as exc:
            self.crash(exc)

    def abandon(self) -> None:
        """The client's connection closed before its request body was complete."""
        if not self.body_done:
            self._end(INCOMPLETE)

    # -- sending -----------------------------------------------------------------------------

    def _queue(self, chunk: bytes) -> None:
        self._queue_raw(b"%x\r\n%b\r\n" % (len(chunk), chunk) if self.chunked else chunk)

    def _queue_raw(self, data: bytes) -> None:
        self.pending.append(data)
        self.buffered += len(data)
        if self.buffered > MIRROR_BUFFER_LIMIT:
            self._end(OVERFLOW)

    def _connected(self, task: asyncio.Task[UpstreamConnection]) -> None:
        if task.cancelled():
            return
        self.connecting = None
        exc = task.exception()
        if exc is not None:
            self._end(CONNECT_FAILED)
            return
        conn = task.result()
        if self.done:
            conn.pool.release(conn, monotonic())  # still a good connection
            return
        conn.reused = False
        try:
            self._send(conn, monotonic())
        except Exception as exc:
            self.crash(exc)

    def _send(self, conn: UpstreamConnection, now: float) -> None:
        self.conn = conn
        conn.lend(self, self.head_only)
        self.pending[:0] = [*self.head, CRLF]
        self.head = []
        self._flush(conn)

    def _flush(self, conn: UpstreamConnection) -> None:
        """Hand what is pending to the connection; abandon the copy if the mirror is behind."""
        if self.done:
            return
        if conn.transport.is_closing():  # reset by the peer; connection_lost is on its way
            self._end(LOST)
            return
        pending = self.pending
        if pending:
            conn.transport.write(pending[0] if len(pending) == 1 else b"".join(pending))
            pending.clear()
        self.buffered = conn.transport.get_write_buffer_size()
        if self.buffered > MIRROR_BUFFER_LIMIT:
            self._end(OVERFLOW)
            return
        # The deadline follows progress: the mirror has `timeout` after the last bytes it was given.
        self.deadline = monotonic() + self.timeout

    # -- from the upstream connection --------------------------------------------------------

    def upstream_head(self, status: int, block: bytes) -> None:
        self.got_head = True

    def upstream_body(self, body: bytes) -> None:
        pass  # the mirror's answer is not wanted

    def upstream_complete(self, conn: UpstreamConnection) -> None:
        if self.conn is not conn:
            return
        self.conn = None
        # An answer before the whole request was sent leaves the rest unsendable on this connection.
        if conn.keep_alive and self.body_done and not self.pending and not conn.closed:
            conn.pool.release(conn, monotonic())
        else:
            conn.close()
        self._end(OK)

    def upstream_lost(self, conn: UpstreamConnection) -> None:
        if self.conn is conn:
            self.conn = None
            self._end(OK if self.got_head else LOST)

    # -- endings -----------------------------------------------------------------------------

    def _end(self, result: str) -> None:
        if self.done:
            return
        self.done = True
        self.pending.clear()
        plane = self.plane
        plane.mirrors.discard(self)
        plane.metrics.inc("gw_mirror_requests_total", backend=self.backend_name, result=result)
        self._drop_connection()
