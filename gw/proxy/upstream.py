"""Upstream side: one HTTP/1.1 connection to an endpoint, and the keep-alive pool per endpoint.

An UpstreamConnection parses responses with httptools and hands every event to the exchange
that currently owns it (its `client`, an UpstreamOwner); it knows nothing of routing or policies.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

import orjson
from httptools import HttpParserCallbackError, HttpParserError, HttpParserUpgrade, HttpResponseParser


class UpstreamOwner(Protocol):
    """What an UpstreamConnection calls on the exchange it is lent to: a client's exchange
    (gw.proxy.downstream.ClientConnection) or a mirrored copy (gw.proxy.mirror.MirrorRequest)."""

    def upstream_interim(self, status: int, block: bytes) -> None:
        """A 1xx response head before the final one (`block`: its header lines, CRLF first)."""

    def upstream_head(self, status: int, block: bytes) -> None:
        """The final response head."""

    def upstream_body(self, body: bytes) -> None:
        """A piece of the response body (chunked framing removed)."""

    def flush(self) -> None:
        """The end of one read from the upstream: write out what the callbacks gathered."""

    def upstream_complete(self, conn: UpstreamConnection) -> None:
        """The response is complete; `conn` may go back to its pool."""

    def upstream_lost(self, conn: UpstreamConnection) -> None:
        """The connection closed while lent."""

    def upstream_broken(self, conn: UpstreamConnection, detail: str) -> None:
        """The upstream sent something that is not HTTP/1.1."""

    def upstream_upgraded(self, rest: bytes) -> None:
        """The upstream switched protocols (101); `rest`: bytes after its head."""

    def tunnel_from_upstream(self, data: bytes) -> None:
        """Bytes from the upstream after an upgrade."""

    def pause_reading(self, reason: int) -> None:
        """Stop reading from the client (`reason`: a PAUSE_* bit): the upstream cannot take more."""

    def resume_reading(self, reason: int) -> None:
        """The upstream can take more again."""

    def crash(self, exc: BaseException) -> None:
        """A bug while handling this exchange's upstream events: drop the exchange, keep the worker."""


class UpstreamConnection(asyncio.Protocol):
    """A connection to one endpoint, lent to one client exchange at a time."""

    __slots__ = (
        "client",
        "closed",
        "got_bytes",
        "head_buf",
        "head_only",
        "idle_since",
        "keep_alive",
        "message_done",
        "parser",
        "pool",
        "requests",
        "reset",
        "reused",
        "status",
        "transport",
        "tunnel",
    )

    def __init__(self, pool: EndpointPool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.parser = HttpResponseParser(self)
        self.client: UpstreamOwner | None = None
        self.requests = 0
        self.idle_since = 0.0
        self.reused = False
        self.closed = False
        self.reset = False  # it ended with an error (a RST), not a FIN
        self.got_bytes = False  # any byte of the current exchange's response arrived
        self.head_only = False  # the current request is HEAD: the response has no body
        self.message_done = False
        self.keep_alive = True
        self.tunnel = False
        self.status = 0
        # Response head bytes received so far; None once the head is complete. httptools reports
        # no offsets, but a response head always starts a read (no upstream pipelining), so the
        # block is found by searching for its end: no Python callback per header.
        self.head_buf: bytes | None = None

    # -- lending ---------------------------------------------------------------------------

    def lend(self, client: UpstreamOwner, head_only: bool) -> None:
        self.client = client
        self.head_only = head_only
        self.got_bytes = False
        self.message_done = False
        self.head_buf = b""
        self.requests += 1

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.client = None
            self.transport.close()

    def abort(self) -> None:
        if not self.closed:
            self.closed = True
            self.client = None
            self.transport.abort()

    # -- asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        client = self.client
        if self.tunnel:
            if client is not None:
                client.tunnel_from_upstream(data)
            return
        if client is None:
            # Bytes on an idle connection: the upstream is confused (or sent an unsolicited
            # response); the connection can never be trusted again.
            self.abort()
            return
        self.got_bytes = True
        head_buf = self.head_buf
        if head_buf is not None:
            self.head_buf = head_buf + data if head_buf else data
        try:
            self.parser.feed_data(data)
        except HttpParserUpgrade as upgrade:
            self.tunnel = True
            client.upstream_upgraded(data[upgrade.args[0] :])
        except HttpParserCallbackError as exc:  # our own callback failed: a bug, not the upstream's
            client.crash(exc.__context__ or exc)
            return
        except HttpParserError as exc:
            client.upstream_broken(self, f"invalid response from upstream: {exc}")
            return
        except Exception as exc:  # a bug on this exchange: drop it, keep the worker
            client.crash(exc)
            return
        if self.client is not None:  # still mid-response (a complete one was flushed already)
            client.flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.reset = exc is not None
        self.pool.forget(self)
        client = self.client
        if client is not None:
            self.client = None
            client.upstream_lost(self)

    def pause_writing(self) -> None:
        if self.client is not None:
            self.client.pause_reading(PAUSE_UPSTREAM_FULL)

    def resume_writing(self) -> None:
        if self.client is not None:
            self.client.resume_reading(PAUSE_UPSTREAM_FULL)

    # -- httptools callbacks ----------------------------------------------------------------

    # No on_header: trailers after a chunked body are dropped with it, and the head is read
    # from the raw bytes below.

    def on_headers_complete(self) -> None:
        parser = self.parser
        status = self.status = parser.get_status_code()
        buf = self.head_buf or b""
        end = buf.find(b"\r\n\r\n")
        block = buf[buf.find(b"\r\n") : end + 2]  # CRLF after the status line … CRLF of the last field
        client = self.client
        if 100 <= status < 200 and status != 101:
            self.head_buf = buf[end + 4 :]  # the final response's head follows
            if client is not None:
                client.upstream_interim(status, block)
            return
        self.head_buf = None
        if client is None:
            return
        self.keep_alive = parser.should_keep_alive()
        client.upstream_head(status, block)
        if self.head_only and self.client is not None:
            # llhttp cannot be told that this response to HEAD has no body: finish it here and
            # give the connection a fresh parser for its next response.
            self.parser = HttpResponseParser(self)
            self.message_done = True
            self.client.upstream_complete(self)

    def on_body(self, body: bytes) -> None:
        client = self.client
        if client is not None:
            client.upstream_body(body)

    def on_message_complete(self) -> None:
        if self.status < 200 or self.message_done:
            return  # interim responses and 101 are not the end of an exchange
        self.message_done = True
        client = self.client
        if client is not None:
            client.upstream_complete(self)


# Reasons a client connection stops reading, as bits so several can overlap.
PAUSE_UPSTREAM_FULL = 1  # the upstream's send buffer is full (request body back-pressure)
PAUSE_PIPELINE = 2  # a pipelined request waits for the one in flight
PAUSE_BODY_WAIT = 4  # body bytes wait for an upstream connection
PAUSE_TUNNEL = 8  # the upgraded peer cannot take more yet


class EndpointPool:
    """Keep-alive connections to one endpoint: idle ones reused newest first, bounded and aged."""

    __slots__ = (
        "address",
        "connections",
        "idle",
        "idle_timeout",
        "log_member",
        "loop",
        "max_idle",
        "max_requests",
        "port",
    )

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        address: str,
        port: int,
        *,
        max_idle: int,
        idle_timeout: float,
        max_requests: int,
    ) -> None:
        self.loop = loop
        self.address = address
        self.port = port
        self.max_idle = max_idle
        self.idle_timeout = idle_timeout
        self.max_requests = max_requests
        self.idle: list[UpstreamConnection] = []
        self.log_member = orjson.dumps({"upstream": f"{address}:{port}"})[1:-1]  # for access-log lines
        self.connections = 0  # open connections, idle or lent

    def acquire(self) -> UpstreamConnection | None:
        """An idle connection ready for a request, or None (then the caller opens one)."""
        idle = self.idle
        while idle:
            conn = idle.pop()
            if not conn.closed:
                return conn
        return None

    async def open(self) -> UpstreamConnection:
        _, conn = await self.loop.create_connection(lambda: UpstreamConnection(self), self.address, self.port)
        self.connections += 1
        return conn  # type: ignore[return-value]

    def release(self, conn: UpstreamConnection, now: float) -> None:
        """Take a connection back after a complete exchange; retire it if it has served enough."""
        conn.client = None
        if conn.closed:
            return
        if conn.requests >= self.max_requests or len(self.idle) >= self.max_idle:
            conn.close()
            return
        conn.idle_since = now
        self.idle.append(conn)

    def forget(self, conn: UpstreamConnection) -> None:
        self.connections -= 1
        if conn in self.idle:
            self.idle.remove(conn)

    def expire_idle(self, now: float) -> None:
        """Close idle connections older than the idle timeout (called by the worker's sweeper)."""
        limit = now - self.idle_timeout
        if self.idle and self.idle[0].idle_since < limit:
            for conn in [c for c in self.idle if c.idle_since < limit]:
                conn.close()

    def close_all(self) -> None:
        for conn in list(self.idle):
            conn.close()
        self.idle.clear()
