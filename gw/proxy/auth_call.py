"""An external authorization call: one bodiless request to an auth service, its answer read whole.

It owns a pooled UpstreamConnection the way a MirrorRequest does (the connection calls the
upstream_* methods below), so auth services get keep-alive, BackendTLSPolicy and the endpoints'
pools like any backend. The answer (status, head block, body of at most MAX_ANSWER_BODY bytes)
or why there is none goes to `done` exactly once, never from inside the caller's own call (a
call that ends at once is answered on the loop's next turn; one the service answers, from the
read that completed the answer, with no turn of the loop in between):

    done(status, block, body, None)   the service answered
    done(0, b"", b"", reason)         it did not: a REASONS value

A call has a deadline (`timeout`) covering connect, send and answer, checked by the worker's
sweeper as client and mirror deadlines are (so within its SWEEP_INTERVAL; no timer per call). A
pooled connection the service closed while idle is noticed when nothing at all comes back on it:
the call is made again once on a fresh connection, as a client of a keep-alive server must.
"""

from __future__ import annotations

import asyncio
import traceback
from collections.abc import Callable
from time import monotonic
from typing import TYPE_CHECKING, Any

from gw.proxy.side_request import INVALID_RESPONSE, SideRequest

if TYPE_CHECKING:
    from gw.config.model import Backend
    from gw.proxy.dataplane import DataPlane
    from gw.proxy.upstream import EndpointPool, UpstreamConnection

MAX_ANSWER_BODY = 64 * 1024  # bytes of an answer's body gw holds to pass on to the client
MAX_CALLS_IN_FLIGHT = 1024  # per worker: past this a call is refused at once ("overloaded")

# Why there is no answer.
NO_ENDPOINT = "no-endpoint"
CONNECT_FAILED = "connect-failed"
LOST = "lost"  # the connection closed or reset before a complete answer
OVERLOADED = "overloaded"

Done = Callable[[int, bytes, bytes, "str | None"], None]


class AuthCall(SideRequest):
    """One call (see the module docstring)."""

    __slots__ = (
        "block",
        "body",
        "conn",
        "connecting",
        "deadline",
        "done",
        "ended",
        "head",
        "head_only",
        "plane",
        "pool",
        "retried",
        "size",
        "starting",
        "status",
    )

    def __init__(self, plane: DataPlane, head: bytes, head_only: bool, done: Done) -> None:
        self.plane = plane
        self.head = head  # request line and fields, the blank line included
        self.head_only = head_only
        self.done = done
        self.ended = False
        self.conn: UpstreamConnection | None = None
        self.connecting: asyncio.Task[UpstreamConnection] | None = None
        self.pool: EndpointPool | None = None
        self.deadline = 0.0
        self.starting = False  # inside start(): an ending now is delivered on the loop's next turn
        self.retried = False
        self.status = 0
        self.block = b""
        self.body: list[bytes] = []
        self.size = 0

    def start(self, backend: Backend, exchange: Any, timeout: float) -> None:
        self.starting = True
        try:
            plane = self.plane
            if len(plane.auth_calls) >= MAX_CALLS_IN_FLIGHT:
                self._end(OVERLOADED)
                return
            endpoint = backend.pick(exchange)
            if endpoint is None or endpoint.pool is None:
                self._end(NO_ENDPOINT)
                return
            plane.auth_calls.add(self)
            self.deadline = exchange.started + timeout
            self.pool = endpoint.pool  # bound when the snapshot was installed
            conn = self.pool.acquire()
            if conn is not None:
                self._send(conn)
            else:
                self._open()
        finally:
            self.starting = False

    def _open(self) -> None:
        task = self.connecting = self.plane.loop.create_task(self.pool.open())  # type: ignore[union-attr]
        task.add_done_callback(self._connected)

    def _connected(self, task: asyncio.Task[UpstreamConnection]) -> None:
        if task.cancelled():
            return
        self.connecting = None
        if task.exception() is not None:
            self._end(CONNECT_FAILED)
            return
        conn = task.result()
        if self.ended:
            conn.pool.release(conn, monotonic())
            return
        conn.reused = False
        try:
            self._send(conn)
        except Exception as exc:
            self.crash(exc)

    def _send(self, conn: UpstreamConnection) -> None:
        self.conn = conn
        conn.lend(self, self.head_only)
        conn.transport.write(self.head)

    # -- from the upstream connection --------------------------------------------------------

    def upstream_head(self, status: int, block: bytes) -> None:
        self.status = status
        self.block = block

    def upstream_body(self, body: bytes) -> None:
        self.size += len(body)
        if self.size > MAX_ANSWER_BODY:
            self._end(INVALID_RESPONSE)
            return
        self.body.append(body)

    def upstream_complete(self, conn: UpstreamConnection) -> None:
        if self.conn is not conn or self.ended:
            return
        self.conn = None
        if conn.keep_alive and not conn.closed:
            conn.pool.release(conn, monotonic())
        else:
            conn.close()
        self._end(None)

    def upstream_lost(self, conn: UpstreamConnection) -> None:
        if self.conn is not conn:
            return
        self.conn = None
        if conn.requests > 1 and not conn.got_bytes and not self.retried and not self.ended:
            # A keep-alive connection the service had closed while it was idle: once more, fresh.
            self.retried = True
            self._open()
            return
        self._end(LOST)

    # -- endings -----------------------------------------------------------------------------

    def _end(self, reason: str | None) -> None:
        if self.ended:
            return
        self.ended = True
        self.plane.auth_calls.discard(self)
        self._drop_connection()
        if reason is None:
            answer = (self.status, self.block, b"".join(self.body), None)
        else:
            answer = (0, b"", b"", reason)
        self.body = []
        if self.starting:
            # The phase that started the call returns WAIT before it hears the answer.
            self.plane.loop.call_soon(self._deliver, answer)
        else:
            self._deliver(answer)

    def _deliver(self, answer: tuple[int, bytes, bytes, str | None]) -> None:
        try:
            self.done(*answer)
        except Exception as exc:
            traceback.print_exception(exc)
            self.plane.metrics.inc("gw_internal_errors_total")
