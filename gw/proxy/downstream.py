"""Client side of the proxy: one asyncio.Protocol per client connection drives every exchange.

No task or future per request (docs/architecture.md, performance rules): httptools callbacks record the request, the
exchange moves on from protocol callbacks of both sides, and timeouts are deadlines that the
worker's sweeper checks, not a timer per request. One request is in flight per connection;
pipelined ones queue behind it and are answered in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import time
import traceback
from collections import deque
from time import monotonic
from typing import TYPE_CHECKING, Any

from httptools import HttpParserCallbackError, HttpParserError, HttpParserUpgrade, HttpRequestParser

from gw import errors
from gw.errors import ProxyError, problem_response
from gw.observe.accesslog import LINE, NULL_CONSUMER, NULL_UPSTREAM, members
from gw.policies.phase import WAIT as WAIT_FOR_PHASE
from gw.policies.phase import Chain
from gw.proxy.client_tls import forwarded_client_cert
from gw.proxy.exchange import Exchange
from gw.proxy.mirror import MirrorRequest, start_mirrors
from gw.proxy.request import (
    CRLF,
    HEADS,
    IDEMPOTENT,
    RawHead,
    analyze_raw,
    forwarded_for,
    http_version,
    prepare,
    remember,
    split_fields,
    split_target,
)
from gw.proxy.response import CHUNKED, NO_BODY, ResponseHead, build_response_head_raw, status_line
from gw.proxy.retry import REPLAY_LIMIT, keeps_replay, may_retry, rearm, replayable, retries_status
from gw.proxy.upstream import (
    PAUSE_BODY_WAIT,
    PAUSE_PIPELINE,
    PAUSE_TUNNEL,
    EndpointPool,
    UpstreamConnection,
)
from gw.proxy.upstream_tls import TLSRefused, tls_failure

# The endpoint's own failures (local origin) a ProxyError can stand for, besides a refused connection.
UPSTREAM_FAILURES = (errors.UpstreamTimeout, errors.UpstreamProtocolError)

if TYPE_CHECKING:
    from gw.balancing.resilience import BackendState
    from gw.config.model import Backend, Endpoint, Rule
    from gw.observe.tracing import Span
    from gw.proxy.dataplane import DataPlane

# What the connection is waiting for; decides what an expired deadline means.
IDLE = 0  # keep-alive, between requests: close quietly
HEAD = 1  # reading a request head: 408
CONNECT = 2  # opening an upstream connection: 504
BODY = 3  # reading the request body from the client: 408
WAIT = 4  # request sent, waiting for the response head: 504
RESPONSE = 5  # streaming the response body: abort
TUNNEL = 6  # upgraded connection idle: close
DECIDE = 7  # a phase of the chain waits (Redis, an auth server) before the request may go on: 504

PENDING_BODY_LIMIT = 256 * 1024  # body bytes buffered while the upstream connection opens
# A connection whose heads are new every time (a trace id in each) stops looking for them in the
# worker's memo (gw.proxy.request.HEADS) after this many more misses than hits: looking and
# remembering cost ~3% of such a request, and it would clear the memo for the clients it serves.
RECALL = 32
# Chunk framing is not body, but a client may send any amount of it (llhttp reads extensions and
# trailers without a bound). As Go's net/http does: each chunk is allowed CHUNK_FRAMING bytes of
# size line and CRLFs; beyond that, extensions and trailers count against the body limit and
# may total FRAMING_EXCESS_LIMIT (Node's bound on chunk extensions) before a 413.
CHUNK_FRAMING = 64
FRAMING_EXCESS_LIMIT = 16 * 1024
MAX_CONNECT_ATTEMPTS = 3  # endpoints tried when connects are refused (nothing was sent yet)
HTTP_100_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
LINGER_RESET = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends a RST
LAST_CHUNK = b"0\r\n\r\n"
_T = b"tT"  # the first letter of a traceparent field's name, as callers spell it


def _log_tail(error: str | None, trace_id: bytes) -> bytes:
    """The access log line's last members: the error, and the trace id when the tracer read one."""
    tail = b"," + members(error=error) if error else b""
    return tail + b',"trace_id":"%b"' % trace_id if trace_id else tail


class NothingMore(Exception):
    """Raised from a parser callback to stop parsing: the connection closes after its response."""


class ClientConnection(asyncio.Protocol):
    """One client connection and the exchange it currently has in flight."""

    # Slots, not an instance dict: 64 attributes are more than an instance dict shares keys for
    # (30 in CPython 3.11), and unshared, every read of one on the hot path is a hashed lookup.
    __slots__ = (
        "active",
        "apart",
        "backend",
        "bind_port",
        "bytes_out",
        "chained",
        "chunk_lines",
        "client",
        "client_cert",
        "client_host",
        "close_after",
        "closed",
        "connecting",
        "deadline",
        "declared_port",
        "early_data",
        "endpoint",
        "fast_parser",
        "fatal",
        "feeding",
        "framed",
        "framing",
        "framing_excess",
        "full_parser",
        "head_at",
        "head_bytes",
        "head_reads",
        "held",
        "hop",
        "idle_since",
        "line_at",
        "log_memo",
        "loop",
        "out",
        "parser",
        "paused",
        "phase",
        "plane",
        "port_bytes",
        "queue",
        "raw",
        "recall",
        "replay",
        "req",
        "req_memo",
        "request_deadline",
        "resp_head",
        "resp_memo",
        "route_memo",
        "said",
        "scheme",
        "sent_at",
        "server_name",
        "settings",
        "skipped_body",
        "small_head",
        "status",
        "tls",
        "trace_for",
        "traced",
        "tracer",
        "transport",
        "upstream",
        "writing_paused",
    )

    def __init__(self, plane: DataPlane, bind_port: int, declared_port: int, scheme: bytes = b"http") -> None:
        self.plane = plane  # this worker's data plane
        self.loop = plane.loop
        self.settings = plane.settings
        self.bind_port = bind_port
        self.port_bytes = str(declared_port).encode()
        self.declared_port = declared_port
        self.tls = False
        self.server_name: str | None = None  # the SNI the TLS client sent
        self.scheme = scheme
        # The exchange in flight when its rule has a phase chain (None otherwise): an instance
        # attribute, because testing one the exchange class only defaults costs a slow lookup.
        self.chained: Exchange | None = None
        self.tracer = plane.tracer  # None unless GW_OTLP_ENDPOINT is set: one test per request
        # The span of the exchange in flight when it is recorded (sampled): an instance attribute,
        # as `chained` is, so that the usual request tests it without a slow lookup.
        self.traced: Span | None = None
        self.trace_for: Exchange | None = None  # the last exchange the tracer read (its trace_id is set)
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.full_parser = self.parser = request_parser(self)
        self.fast_parser = request_parser(RawHeadCallbacks(self))
        self.raw = b""  # the read being parsed on the fast path
        # The last read the fast path parsed whole (one bodiless keep-alive head) and what llhttp
        # said of it: (read, method, version text). The same bytes again are not parsed again.
        self.replay: tuple[bytes, bytes, bytes] | None = None
        self.said: tuple[bytes, bytes, bool] | None = None  # llhttp's word on the read being parsed
        # The full parser's reads, for the one check llhttp does not make: one SP on either side of
        # the target (it skips any number). A head's reads from the one it began in; where in the
        # last read the previous request line ended.
        self.feeding = b""
        self.head_reads: list[bytes] | None = None
        self.line_at = 0
        self.client_host = b""
        self.hop = b""  # this hop's Forwarded element up to its host (gw.proxy.request.forwarded_for)
        self.phase = IDLE
        self.deadline = 0.0
        self.idle_since = 0.0  # when the connection last became IDLE (opened or answered): drain's grace
        self.request_deadline = 0.0  # rule's timeouts.request for the exchange in flight (0: none)
        self.paused = 0  # PAUSE_* bits
        self.closed = False
        self.head_bytes = 0
        self.req: Exchange | None = None  # the request being parsed
        self.active: Exchange | None = None  # the request in flight
        self.queue: deque[Exchange] = deque()
        self.upstream: UpstreamConnection | None = None
        self.connecting: asyncio.Task[UpstreamConnection] | None = None
        self.endpoint: Endpoint | None = None
        self.backend: Backend | None = None
        # The BackendState (gw.balancing.resilience) the exchange in flight entered: its backend
        # has a policy, and the exchange leaves it when it ends (_record).
        self.held: BackendState | None = None
        self.resp_head = None
        self.framing = NO_BODY
        self.close_after = False
        self.out: list[bytes] = []
        self.bytes_out = 0
        self.status = 0
        # The upstream's time of the exchange in flight, when it is not its duration: when its head
        # went upstream if not with the client's (after a connect, a retry), when the response
        # head arrived if the response went on in later reads. 0.0: not so (_record resets them).
        self.sent_at = 0.0
        self.head_at = 0.0
        self.apart = False  # any of those set, or request body bytes read: _record's general path
        self.early_data = b""  # bytes after an upgrade request, held until the upstream answers
        self.skipped_body: Exchange | None = None  # an upgrade served as HTTP whose body llhttp skipped
        self.fatal: ProxyError | None = None
        self.small_head = min(self.settings.max_request_line, self.settings.max_header_size)
        self.log_memo: tuple[Any, ...] | None = None
        self.route_memo: tuple[Any, ...] | None = None
        self.req_memo: tuple[bytes, bytes, RawHead | None] | None = None
        self.recall = RECALL  # looks in HEADS left: one less per head not there, one more per head found
        self.resp_memo: tuple[tuple[object, ...], ResponseHead] | None = None
        self.client = ""
        self.client_cert = b""  # the X-Forwarded-Client-Cert line of a verified client certificate
        self.writing_paused = False
        self.chunk_lines = 0  # chunk-size lines parsed on this connection (on_chunk_header)
        self.framed: Exchange | None = None  # the chunked request whose framing excess is counted
        self.framing_excess = 0

    # -- asyncio.Protocol: client transport -------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        self.client = peer[0] if isinstance(peer, tuple) else "unix"
        self.client_host = self.client.encode()
        self.hop = forwarded_for(self.client_host, self.scheme)
        ssl_object = transport.get_extra_info("ssl_object")
        plane = self.plane
        if ssl_object is not None:
            self.tls = True
            self.server_name = plane.server_names.pop(id(ssl_object), None)
            if self.bind_port in plane.client_ports:
                self.client_cert = forwarded_client_cert(ssl_object)
                if not self.client_cert and self.bind_port in plane.clients_verified:
                    # A session resumed from before validation began carries no certificate:
                    # refused as its handshake would be now.
                    plane.client_rejections.verdict(plane, self.bind_port, "no client certificate (resumed session)")
                    self.closed = True
                    transport.abort()
                    return
        plane.connections.add(self)
        self.idle_since = now = monotonic()
        self.deadline = now + self.settings.header_timeout
        if len(plane.connections) > self.settings.max_connections or plane.draining:
            self.closed = True
            error = errors.Overloaded("too many connections")
            transport.write(problem_response(error, plane.next_request_id(), close=True)[0])
            transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._abandon_mirrors()
        self.plane.connections.discard(self)
        if self.connecting is not None:
            self.connecting.cancel()
            self.connecting = None
        upstream = self.upstream
        if upstream is not None:
            self.upstream = None
            if self.phase == TUNNEL:
                upstream.close()  # let the last bytes the client sent reach the upstream
            else:
                upstream.abort()
        req = self.active
        if req is not None and self.phase != TUNNEL:
            # nginx's 499: the client went away before its response was complete.
            self.active = None
            self._record(req, 499)

    def data_received(self, data: bytes) -> None:
        if self.phase == TUNNEL:
            self.tunnel_from_client(data)
            return
        while True:  # more than once only when an upgrade gw serves as plain HTTP (h2c) stopped the parser
            framed = None
            if self.req is None:
                replay = self.replay
                if replay is not None and replay[0] == data:
                    # Byte for byte the last read, which llhttp parsed as one whole bodiless head
                    # with the parser between messages, as it is now: it would say the same again.
                    self._replay(data, replay)
                    return
                # Between messages: a read that is exactly one head (the usual GET) takes the fast
                # parser, which reports no header callbacks; anything else the full one.
                self.head_bytes += len(data)
                if data[-4:] == b"\r\n\r\n" and data.find(b"\r\n\r\n") == len(data) - 4:
                    self.raw = data
                    self.parser = self.fast_parser
                else:
                    self.parser = self.full_parser
                    self.feeding = data
                    self.line_at = 0
            else:
                if self.phase == HEAD:
                    self.head_bytes += len(data)
                reads = self.head_reads
                if reads is not None:  # a head the full parser began in an earlier read
                    reads.append(data)
                else:
                    self.line_at = 0
                self.feeding = data
                if self.req.chunked:  # (set once its head is parsed: this read starts in its body)
                    framed = self.req
                    received = framed.body_received
                    lines = self.chunk_lines
            self.said = None  # (set by this read's fast-path head only)
            try:
                self.parser.feed_data(data)
            except HttpParserUpgrade as upgrade:
                upgraded_at = upgrade.args[0]
            except HttpParserCallbackError as exc:
                cause = exc.__context__
                if isinstance(cause, NothingMore):
                    self.pause_reading(PAUSE_PIPELINE)  # (a no-op once closed) the close follows the response
                elif isinstance(cause, ProxyError):
                    self._reject(cause)
                elif cause is not None:
                    self.crash(cause)
                else:
                    self._reject(errors.BadRequest(str(exc)))
                return
            except HttpParserError as exc:
                self._reject(errors.BadRequest(str(exc)))
                return
            except ProxyError as exc:
                self._reject(exc)
                return
            except Exception as exc:
                self.crash(exc)
                return
            else:
                if framed is not None and self.req is framed:  # a read wholly inside a chunked body
                    excess = len(data) - (framed.body_received - received) - CHUNK_FRAMING * (self.chunk_lines - lines)
                    if excess > 0 and not self._framing_fits(framed, excess):
                        return
                req = self.req
                said = self.said
                if said is not None:
                    self.said = None
                    if req is None:  # the fast path's read was one whole head: remember it
                        self.replay = (data, said[0], said[1]) if said[2] else None
                if req is None:
                    return
                if self.parser is self.fast_parser and not self.closed:
                    # A head alone in its read whose body follows: the fast parser reports no head,
                    # so it must not meet the request after that body (it would be refused for the
                    # fields it cannot see). A full parser primed to read the same body takes over.
                    self._prime_for_body(req)
                    return
                # httptools holds a header until its end arrives: bound the unparsed head by bytes read.
                settings = self.settings
                if self.head_bytes > settings.max_header_size + settings.max_request_line and (
                    self.phase == HEAD or self.active is None
                ):
                    self._reject(errors.HeadersTooLarge("request header block too large"))
                return
            # What follows the upgrade request is parsed here, outside the except clause and in a
            # loop: a parse nested in the handler would make the HttpParserUpgrade the __context__
            # of its callback errors (hiding their ProxyError: a traceback instead of a 4xx), and
            # recursing once per pipelined upgrade request overflowed the stack.
            following = self._client_upgrade(data[upgraded_at:])
            if following is None:
                return
            data = following

    def eof_received(self) -> bool | None:
        if self.phase == TUNNEL:
            # Pass the half-close on: the upstream sees the client is done sending.
            upstream = self.upstream
            if upstream is not None and not upstream.closed and upstream.transport.can_write_eof():
                upstream.transport.write_eof()
                return True
            return None
        self._abandon_mirrors()
        req = self.active
        if req is None:
            return None
        if req.has_body and not req.complete and self.resp_head is None:
            # (A half-close and a full close look the same here.) The body can never be completed,
            # so no response can come: waiting would hold this socket in CLOSE-WAIT and the upstream
            # connection, which has a partial request, until the body timeout.
            self._client_gone(req)
            return None
        # A client that half-closes after its request still gets its response.
        self.close_after = True
        return True

    def _abandon_mirrors(self) -> None:
        """The client sends no more: mirror copies still waiting for body bytes will never get them."""
        for unfinished in (self.active, self.req):
            if unfinished is not None and unfinished.mirrors is not None and not unfinished.complete:
                for mirror in unfinished.mirrors:
                    mirror.abandon()

    def pause_writing(self) -> None:
        # The client cannot take the response as fast as the upstream sends it.
        self.writing_paused = True
        upstream = self.upstream
        if upstream is not None and not upstream.closed:
            upstream.transport.pause_reading()

    def resume_writing(self) -> None:
        self.writing_paused = False
        upstream = self.upstream
        if upstream is not None and not upstream.closed:
            upstream.transport.resume_reading()

    def _new_parsers(self) -> None:
        """Fresh parsers after an upgrade stopped the old ones mid-stream."""
        self.full_parser = self.parser = request_parser(self)
        self.fast_parser = request_parser(RawHeadCallbacks(self))
        self.head_reads = None
        self.replay = None

    def pause_reading(self, reason: int) -> None:
        if not self.paused and not self.closed:
            self.transport.pause_reading()
        self.paused |= reason

    def resume_reading(self, reason: int) -> None:
        if self.paused & reason:
            self.paused &= ~reason
            if not self.paused and not self.closed:
                self.transport.resume_reading()

    # -- httptools callbacks: the request --------------------------------------------------

    def on_message_begin(self) -> None:
        # httptools goes on through the rest of the read after gw decided to close (it answered
        # a request itself and closed, or the request before says close): what follows must not
        # be routed, let alone forwarded. (Only the full parser calls this: the fast path's read
        # holds one head and nothing after it.)
        last = self.queue[-1] if self.queue else self.active
        if self.closed or self.close_after or (last is not None and not last.keep_alive):
            raise NothingMore
        self.head_reads = [self.feeding]
        now = monotonic()
        req = self.req = Exchange(now)
        req.headers = []
        if self.active is None:
            self.phase = HEAD
            self.deadline = now + self.settings.header_timeout

    def on_url(self, url: bytes) -> None:
        req = self.req
        req.url = req.url + url if req.url else url  # type: ignore[union-attr]
        if len(req.url) > self.settings.max_request_line:  # type: ignore[union-attr]
            raise errors.UriTooLong("request target too long")

    def on_header(self, name: bytes, value: bytes) -> None:
        self.req.headers.append((name, value))  # type: ignore[union-attr]

    def on_headers_complete(self) -> None:
        req: Exchange = self.req  # type: ignore[assignment]
        settings = self.settings
        if self.head_bytes > settings.max_header_size:
            size = sum(len(n) + len(v) + 4 for n, v in req.headers)
            if size > settings.max_header_size:
                raise errors.HeadersTooLarge(f"request header block of {size} bytes is too large")
        self.head_bytes = 0
        parser = self.parser
        method = parser.get_method()
        reads = self.head_reads
        if reads is not None:
            self.head_reads = None
            self._single_spaces(reads, method, req.url)
        if method == b"CONNECT":
            raise errors.MethodNotImplemented("CONNECT is not supported")
        text = parser.get_http_version()
        prepare(
            req,
            method,
            _VERSIONS.get(text) or http_version(text),
            parser.should_keep_alive(),
            parser.should_upgrade(),
            self.client_host,
            self.scheme,
            self.port_bytes,
            self.plane.next_request_id(),
            self.hop,
        )
        if self.client_cert:
            req.head.append(self.client_cert)
        if not req.upgrade and parser.should_upgrade() and req.has_body:
            self.skipped_body = req  # routed once its body can be read (_client_upgrade)
            return
        self._route(req)

    def _single_spaces(self, reads: list[bytes], method: bytes, url: bytes) -> None:
        """400 unless the request line is method SP target SP version (RFC 9112 §3): llhttp skips
        extra SPs around the target, which the fast path would forward inside it."""
        line = b"%b %b HTTP/" % (method, url)
        buf = reads[0] if len(reads) == 1 else b"".join(reads)
        at = self.line_at
        if not buf.startswith(line, at):
            # (A body need not end with CRLF, so the line may start anywhere. The same bytes earlier
            # in a body, or later in a field value, can only make gw forward this line normalised:
            # the framing is llhttp's either way, and gw writes its own request line.)
            at = buf.find(line, at)
            if at < 0:
                raise errors.BadRequest("the request line is not method SP target SP version")
        self.line_at = max(0, at + len(line) - len(buf) + len(reads[-1]))

    def _replay(self, data: bytes, replay: tuple[bytes, bytes, bytes]) -> None:
        """The fast path for a read equal to the last one it parsed whole: llhttp's callbacks, made here."""
        self.parser = self.fast_parser
        self.raw = data
        try:
            self._raw_head(replay[1], replay[2], True, False)
            if self.req is not None:
                self.on_message_complete()
        except ProxyError as exc:
            self.replay = None
            self._reject(exc)
        except Exception as exc:
            self.crash(exc)

    def on_raw_headers_complete(self) -> None:
        """The fast path: this read held exactly one request head (see RawHeadCallbacks)."""
        parser = self.parser
        method = parser.get_method()
        text = parser.get_http_version()
        keep_alive = parser.should_keep_alive()
        # Worth remembering (data_received) only if the message ends here, to be kept alive, with
        # nothing to upgrade: llhttp is then between messages again, as it was before the read.
        upgrade = parser.should_upgrade()
        self.said = (method, text, keep_alive and not upgrade)
        self._raw_head(method, text, keep_alive, upgrade)

    def _raw_head(self, method: bytes, text: str, keep_alive: bool, upgrade: bool) -> None:
        data = self.raw
        self.raw = b""
        self.head_bytes = 0
        req = self.req = Exchange(monotonic())
        settings = self.settings
        line_end = data.find(b"\r\n")
        if not line_end:  # empty lines before the request line: llhttp skipped them (RFC 9112 §2.2)
            data = data.lstrip(b"\r\n")
            line_end = data.find(b"\r\n")
        # llhttp has validated "METHOD SP target SP HTTP/x.y": the target sits between them.
        url = data[len(method) + 1 : line_end - 9]
        block = data[line_end:-2]
        if len(data) > self.small_head:  # a head within both limits needs no closer look
            if len(url) > settings.max_request_line:
                raise errors.UriTooLong("request target too long")
            if len(block) > settings.max_header_size:
                raise errors.HeadersTooLarge(f"request header block of {len(block)} bytes is too large")
        req.url = url
        if method == b"CONNECT":
            raise errors.MethodNotImplemented("CONNECT is not supported")
        version = _VERSIONS.get(text) or http_version(text)
        request_id = self.plane.next_request_id()
        # A client's consecutive heads are usually byte-identical (same fields, same cookies):
        # the analysis of the last one is reused after one bytes comparison.
        memo = self.req_memo
        trace_line = CRLF
        if url[:1] != b"/":
            head = None  # absolute-form: its authority replaces Host (general path)
        elif memo is not None and memo[0] == block and memo[1] == version:
            head = memo[2]
        else:
            # Another head than the last. A traced caller's differ by their traceparent alone: its
            # line is set apart (forwarded after X-Request-ID) and the rest looked up, so such heads
            # are analysed once too. (Memo keys never hold the line: a head with one always comes here.)
            rest = block
            at = block.find(b"raceparent:")
            if at > 2 and block[at - 3 : at - 1] == CRLF and block[at - 1] in _T:
                end = block.find(CRLF, at)
                trace_line = block[at - 3 : end + 2]
                rest = block[: at - 3] + block[end:]
            if memo is not None and memo[0] == rest and memo[1] == version:
                head = memo[2]  # the last head, but for its traceparent
            elif self.recall:
                # The worker may know it (a client cycling over a few).
                key = (rest, version, self.client_host, self.scheme, self.port_bytes)
                head = HEADS.get(key, HEADS)  # type: ignore[arg-type]
                if head is HEADS:
                    self.recall -= 1
                    head = analyze_raw(rest, version, self.client_host, self.scheme, self.port_bytes, self.hop)
                    remember(key, head)
                elif self.recall < RECALL:
                    self.recall += 1
                self.req_memo = (rest, version, head)
            else:
                head = analyze_raw(rest, version, self.client_host, self.scheme, self.port_bytes, self.hop)
                self.req_memo = (rest, version, head)
        if head is not None:
            req.method = method
            req.version = version
            req.keep_alive = keep_alive
            req.idempotent = method in IDEMPOTENT
            req.client_host = self.client_host
            req.request_id = request_id
            req.host_header = head.host_header
            req.host = head.host
            req.head = [head.forward, request_id, trace_line]
            if self.client_cert:
                req.head.append(self.client_cert)
            if self.plane.header_matching:
                req.headers = split_fields(block)
        else:
            req.headers = split_fields(block)
            prepare(
                req, method, version, keep_alive, upgrade, self.client_host,
                self.scheme, self.port_bytes, request_id, self.hop,
            )
            if self.client_cert:
                req.head.append(self.client_cert)
            if not req.upgrade and upgrade and req.has_body:
                self.skipped_body = req  # routed once its body can be read (_client_upgrade)
                return
        self._route(req)

    def _route(self, req: Exchange) -> None:
        """Find the rule for a prepared request, check its limits, then start it or queue it."""
        settings = self.settings
        plane = self.plane
        # A keep-alive client often repeats its request line: reuse the last lookup when the
        # target, host, method and config are the same (never when rules match on headers).
        url = req.url
        memo = self.route_memo
        if (
            memo is not None
            and memo[0] == url
            and memo[1] == req.host
            and memo[2] == req.method
            and memo[3] is plane.config
            and not plane.header_matching
        ):
            req.path, req.query, req.url, rule = memo[4]
        else:
            split_target(req, url)
            port = plane.ports.get(self.bind_port)
            tls = port.tls if self.tls and port is not None else None
            if tls is not None and tls.misdirected(self.server_name, req.host):
                # The Host belongs to another listener than the one the SNI chose (RFC 9110 §15.5.20).
                raise errors.Misdirected(f"{req.host} is not served on the connection for {self.server_name}")
            rule = port.table.match(req.host, req.path, req.method, req.headers, req.query) if port else None
            self.route_memo = (url, req.host, req.method, plane.config, (req.path, req.query, req.url, rule))
        req.rule = rule
        if rule is not None:
            limit = rule.max_body_size or settings.max_body_size
            if 0 < limit < req.content_length:
                raise errors.BodyTooLarge(f"request body of {req.content_length} bytes exceeds {limit}")
        if (req.chunked or req.content_length > 0) and keeps_replay(req):
            req.replay = []
        if self.active is None:
            self._start(req)
        else:
            self.queue.append(req)
            self.pause_reading(PAUSE_PIPELINE)

    def on_body(self, body: bytes) -> None:
        req: Exchange = self.req  # type: ignore[assignment]
        received = req.body_received = req.body_received + len(body)
        self.apart = True  # (its size is counted)
        rule = req.rule
        limit = (rule.max_body_size if rule is not None else 0) or self.settings.max_body_size
        if 0 < limit < received:
            raise errors.BodyTooLarge(f"request body exceeds {limit} bytes")
        replay = req.replay
        if replay is not None:
            if received <= REPLAY_LIMIT:
                replay.append(body)
            else:
                req.replay = None
        mirrors = req.mirrors
        if mirrors is not None:
            for mirror in mirrors:
                mirror.body(body)
        upstream = self.upstream
        if req is self.active and upstream is not None:
            if self.phase == BODY:
                self.deadline = monotonic() + self.settings.body_timeout
            if req.chunked:
                upstream.transport.write(b"%x\r\n%b\r\n" % (len(body), body))
            else:
                upstream.transport.write(body)
            req.body_sent += len(body)
        else:
            pending = req.pending_body
            if pending is None:
                pending = req.pending_body = []
            pending.append(body)
            req.body_buffered += len(body)
            if req.body_buffered > PENDING_BODY_LIMIT:
                self.pause_reading(PAUSE_BODY_WAIT)

    def on_chunk_header(self) -> None:
        self.chunk_lines += 1

    def _framing_fits(self, req: Exchange, excess: int) -> bool:
        """Count chunk framing beyond CHUNK_FRAMING a chunk; False when that answered 413."""
        if self.framed is not req:
            self.framed = req
            self.framing_excess = 0
        total = self.framing_excess = self.framing_excess + excess
        rule = req.rule
        limit = (rule.max_body_size if rule is not None else 0) or self.settings.max_body_size
        if total > FRAMING_EXCESS_LIMIT:
            self._reject(errors.BodyTooLarge(f"chunk extensions and trailers exceed {FRAMING_EXCESS_LIMIT} bytes"))
            return False
        if 0 < limit < req.body_received + total:
            self._reject(errors.BodyTooLarge(f"request body with its chunk extensions exceeds {limit} bytes"))
            return False
        return True

    def on_message_complete(self) -> None:
        req: Exchange = self.req  # type: ignore[assignment]
        self.req = None
        req.complete = True
        # (Mirrors count a Content-Length body's end themselves; only a chunked one is told, in
        # branches a bodiless request never takes.)
        if req is self.active and self.upstream is not None:
            if req.chunked:
                self.upstream.transport.write(LAST_CHUNK)
                if req.mirrors is not None:
                    _end_mirrors(req.mirrors)
            if self.phase == BODY:
                self._await_response(req, monotonic())
        elif req.chunked and req.mirrors is not None:
            _end_mirrors(req.mirrors)

    # -- the exchange ------------------------------------------------------------------------

    def _trace(self, req: Exchange, rule: Rule | None, countdown: int) -> None:
        """A request that starts a trace (its rule's countdown ran out; a request no rule serves draws
        its own chance) or carries a traceparent: the tracer reads it and decides (`self.traced` is
        its span when it is recorded)."""
        tracer = self.tracer
        assert tracer is not None
        if rule is None:
            root = tracer.draw()
        else:
            root = not countdown
            rule.countdown = tracer.gap(rule.trace_sample) if root else countdown
        self.traced = tracer.begin(req, root)
        self.trace_for = req

    def _start(self, req: Exchange) -> None:
        """Begin proxying `req`: run its rule's phase chain, choose backend and endpoint, go upstream."""
        self.active = req
        self.status = 0
        self.bytes_out = 0
        self.resp_head = None
        self.chained = None
        rule = req.rule
        if rule is None:
            if self.tracer is not None:
                self._trace(req, None, 0)
            self._fail(errors.NoRoute(f"no route for {req.host or '(no host)'}{req.path}"))
            return
        if self.tracer is not None:
            # The usual traced request: not the one its rule's countdown starts a trace with (a
            # geometric draw per start keeps each request's chance at the ratio, with no random
            # number per request; Tracer.gap's 0 counts below zero: never), and no traceparent (the
            # fast path's head is [forward, id, CRLF] unless its line was set apart): nothing to do.
            countdown = rule.countdown - 1
            if countdown and req.head[2] is CRLF:
                rule.countdown = countdown
            else:
                self._trace(req, rule, countdown)
        # self.endpoint is the last exchange's until one is picked: each way of answering before
        # that clears it, so the log line names no upstream (the usual request costs no store).
        if rule.invalid_reason:
            self.endpoint = None
            self._fail(errors.RouteMisconfigured(rule.invalid_reason))
            return
        timeout = rule.request_timeout
        self.request_deadline = req.started + timeout if timeout else 0.0
        chain = rule.chain
        if chain is not None:
            # The chain's bookkeeping, stored on the exchange once: reading these later as the
            # class's defaults would cost a slow lookup each.
            req.conn = self
            req.fields_edited = req.edits_response = False
            req.response_fields = req.mirror_to = req.ref = req.pin = None
            req.done_phases = chain.done  # whatever happens next, they hear the outcome
            head = req.head
            req.head_id = head[0] if len(head) == 3 else None  # (Exchange.head_key, inlined)
            self.chained = req
            self.endpoint = None  # (a phase may answer)
            self._run_chain(req, chain, 0)
            return
        backend = rule.only_backend
        if backend is None:
            ref = rule.pick_backend()
            if ref is None or ref.backend is None:
                self.endpoint = None
                self._fail(errors.RouteMisconfigured("the route has no usable backend"))
                return
            backend = ref.backend
        self.backend = backend
        self._pick_and_go(req)

    def _run_chain(self, req: Exchange, chain: Chain, start: int) -> None:
        """Run the request phases from `start`; if they let `req` through, choose its backendRef,
        let the upstream phases edit it, and send it."""
        try:
            phases = chain.request
            for phase in phases[start:] if start else phases:
                verdict = phase.on_request(req)
                if verdict:  # ANSWERED, or WAIT: resume() goes on from the next phase
                    if verdict == WAIT_FOR_PHASE:
                        req.resume_at = phases.index(phase) + 1
                        if self.active is req:
                            # A backstop: a phase bounds its own wait (the Redis guard's budget).
                            self.phase = DECIDE
                            self.deadline = monotonic() + self.settings.upstream_response_timeout
                    return
            rule = req.rule
            # (A phase may have chosen the backendRef: a session pinned to one of its endpoints.)
            ref = req.ref or rule.only_ref or rule.pick_backend()
            if ref is None or ref.backend is None:
                self._fail(errors.RouteMisconfigured("the route has no usable backend"))
                return
            req.ref = ref
            upstream = chain.upstream
            if upstream:
                for phase in upstream:
                    phase.on_upstream_request(req)
        except Exception as exc:
            self._phase_failed(req, exc)
            return
        if req.fields_edited:
            req.forwarded_head()
        if chain.edits_response or req.response_fields:
            req.edits_response = True
        self.backend = ref.backend
        mirrors = req.mirror_to
        pin = req.pin
        if mirrors is None:
            if pin is None:
                self._pick_and_go(req)
            else:
                self._go_pinned(req, pin)
            return
        # The primary goes first: it gets the pick of idle pooled connections, and a request it
        # cannot even start (no endpoint) is not copied. Its _send takes the body read so far.
        early_body = req.pending_body
        if pin is None:
            self._pick_and_go(req)
        else:
            self._go_pinned(req, pin)
        if self.active is req and not self.closed:
            timeout = rule.backend_timeout or self.settings.upstream_response_timeout
            req.mirrors = start_mirrors(self.plane, mirrors, req, early_body, timeout)

    # -- what phases ask of the connection (through the exchange) -------------------------------

    def resume(self, req: Exchange) -> None:
        """A phase that returned WAIT is done waiting: go on with the chain after it."""
        if self.closed or self.active is not req:
            return  # the client left, or the exchange was answered meanwhile
        try:
            self._run_chain(req, req.rule.chain, req.resume_at)
        except Exception as exc:
            # Called from whatever the phase waited on (a limiter's refill serving several waiters):
            # a bug here ends this exchange only and never reaches the caller.
            self.crash(exc)

    def rematch(self, req: Exchange, fields: list[tuple[bytes, bytes]]) -> bool:
        """Exchange.rematch: the rule for `req`'s head with `fields` in it; another rule starts over."""
        if req.rematched or self.closed or self.active is not req:
            return False
        req.rematched = True
        names = {name.lower() for name, _ in fields}
        # The forwarded head carries them whatever rule serves the request (as Envoy's filter sets them).
        forwarded = req.edit_fields()
        forwarded[:] = [f for f in forwarded if f[0].lower() not in names] + list(fields)
        req.forwarded_head()
        port = self.plane.ports.get(self.bind_port)
        if not self.plane.header_matching or port is None:
            return False  # no rule matches on a header: the same rule again
        headers = [f for f in req.headers if f[0].lower() not in names] + list(fields)
        rule = port.table.match(req.host, req.path, req.method, headers, req.query)
        if rule is req.rule:
            return False
        req.headers = headers
        req.rule = rule
        self._start(req)
        return True

    def fail_exchange(self, req: Exchange, error: ProxyError) -> None:
        if not self.closed and self.active is req:
            self._fail(error)

    def _phase_failed(self, req: Exchange, exc: Exception) -> None:
        """A bug in a phase: answer 500 if nothing was sent yet, say why once, keep the worker serving."""
        traceback.print_exception(exc)
        self.plane.metrics.inc("gw_internal_errors_total")
        if self.closed or self.active is not req:
            return
        if self.resp_head is not None or self.upstream is not None:
            self._abort(req, f"internal error: {exc!r}")
            return
        self._fail(errors.InternalError("internal error while handling the request"))

    def answer(self, req: Exchange, status: int, fields: list[tuple[bytes, bytes]], body: bytes = b"") -> None:
        """A response from the gateway itself (a redirect, a preflight, an auth service's refusal)."""
        if self.closed or self.active is not req:
            return
        close = (req.has_body and not req.complete) or not req.keep_alive or self.plane.draining
        self.close_after = close
        self.framing = NO_BODY
        if close:
            tail = b"Connection: close\r\n\r\n"
        else:
            tail = b"Connection: keep-alive\r\n\r\n" if req.version == b"1.0" else CRLF
        self.transport.write(
            b"".join(
                (
                    status_line(status),
                    *(b"%b: %b\r\n" % field for field in fields),
                    b"X-Request-ID: %b\r\n" % req.request_id,
                    b"" if status == 204 else b"Content-Length: %d\r\n" % len(body),  # RFC 9110 §8.6: none on 204
                    tail,
                    b"" if status in (204, 304) or req.method == b"HEAD" else body,
                )
            )
        )
        self._finish(req, status)

    def _pick_and_go(self, req: Exchange) -> None:
        backend: Backend = self.backend  # type: ignore[assignment]
        state = backend.state
        if state is not None and self.held is not state:
            # A backend with a policy (_admit, inlined for its common case: nothing gates it).
            if state.gate:
                if not self._admit(req, state):
                    return
            else:
                state.parallel += 1
                self.held = state
        endpoint = backend.pick(req)
        if endpoint is None:
            self.endpoint = None
            self._fail(errors.NoEndpoint(f"backend {backend.name} has no endpoints"))
            return
        self.endpoint = endpoint
        pool = endpoint.pool  # bound when the snapshot was installed
        idle = pool.idle  # EndpointPool.acquire, inlined: this runs once per request
        while idle:
            conn = idle.pop()
            if not conn.closed:
                conn.reused = True
                self._send(req, conn)
                return
        self._connect(req, pool)

    def _go_pinned(self, req: Exchange, endpoint: Endpoint) -> None:
        """_pick_and_go for an endpoint a phase chose (a session's): the backend's policy still
        admits the exchange; only the pick is skipped. (Its own method: the usual request pays no
        test for it.)"""
        state = self.backend.state  # type: ignore[union-attr]
        if state is not None and self.held is not state and not self._admit(req, state):
            return
        self.endpoint = endpoint
        pool = endpoint.pool
        conn = pool.acquire()
        if conn is not None:
            conn.reused = True
            self._send(req, conn)
        else:
            self._connect(req, pool)

    def _admit(self, req: Exchange, state: BackendState) -> bool:
        """A backend with a policy: its circuit and concurrency thresholds admit the exchange once
        (it leaves in _record). False: refused, and answered."""
        if state.gate:
            refusal = state.enter(req.started)
            if refusal is not None:
                self.endpoint = None
                self._fail(refusal)
                return False
        else:
            state.parallel += 1  # (enter's count, without the call: nothing else gates the backend)
        self.held = state
        return True

    def _connect(self, req: Exchange, pool: EndpointPool) -> None:
        held = self.held
        if held is not None:
            refusal = held.may_connect(sum(e.pool.connections for e in held.backend.endpoints))
            if refusal is not None:
                self._fail(refusal)
                return
        self.phase = CONNECT
        began = monotonic()
        self.deadline = began + self.settings.upstream_connect_timeout
        task = self.connecting = self.loop.create_task(pool.open())
        backend = self.backend
        task.add_done_callback(lambda t: self._connected(t, req, pool, held, backend, began))

    def _connected(
        self,
        task: asyncio.Task[UpstreamConnection],
        req: Exchange,
        pool: EndpointPool,
        held: BackendState | None,
        backend: Backend | None = None,
        began: float = 0.0,
    ) -> None:
        if held is not None:
            held.connected()
        if task.cancelled():
            return
        if self.connecting is task:
            self.connecting = None
        exc = task.exception()
        if exc is not None:
            if self.active is not req or self.closed:
                return
            if isinstance(exc, TLSRefused) and not exc.attempt:
                # The BackendTLSPolicy cannot be honoured: no endpoint is at fault, none is tried.
                self._fail(errors.UpstreamTLSFailed(str(exc)))
                return
            req.attempts += 1
            endpoint = self.endpoint
            self.plane.metrics.inc("gw_upstream_connect_errors_total", endpoint=f"{pool.address}:{pool.port}")
            if endpoint is not None:
                self.backend.connect_failed(endpoint, monotonic() + self.settings.endpoint_eject_time)  # type: ignore[union-attr]
                if self.held is not None:
                    self.held.failed(endpoint, monotonic())
            if req.attempts < MAX_CONNECT_ATTEMPTS and len(self.backend.endpoints) > req.attempts:  # type: ignore[union-attr]
                self._pick_and_go(req)  # nothing was sent: any method may try another endpoint
                repin = req.repin
                if repin is not None and self.active is req and self.endpoint is not None:
                    req.repin = None
                    repin(req, self.endpoint)  # a session's endpoint refused: it moves to this one
                return
            failed = errors.UpstreamTLSFailed if tls_failure(exc) else errors.UpstreamRefused
            self._fail(failed(f"cannot connect to {pool.address}:{pool.port}: {exc}"))
            return
        conn = task.result()
        now = monotonic()
        if backend is not None and backend.connect_times is not None:
            backend.connect_times.observe(now - began)
        if self.active is not req or self.closed:
            pool.release(conn, now)  # the client left; the connection is still good
            return
        conn.reused = False
        self.sent_at = now  # (the upstream's time starts with the request written, not the connect)
        self.apart = True
        self._send(req, conn)

    def _send(self, req: Exchange, conn: UpstreamConnection) -> None:
        """Write the request head and whatever body has arrived, in one write when possible."""
        self.upstream = conn
        conn.lend(self, req.method == b"HEAD")
        if self.writing_paused:
            conn.transport.pause_reading()
        parts = [req.method, b" ", req.url, b" HTTP/1.1\r\n", *req.head]
        if self.traced is not None:  # this attempt's CLIENT span is the upstream's parent
            pool = conn.pool
            parts.append(self.traced.attempt(self.tracer, pool.address, pool.port))  # type: ignore[arg-type]
        if not req.host_header:
            parts.append(b"Host: %s:%d\r\n" % (conn.pool.address.encode(), conn.pool.port))
        parts.append(CRLF)
        pending = req.pending_body
        if pending:
            req.pending_body = None
            req.body_sent += req.body_buffered
            req.body_buffered = 0
            if req.chunked:
                for chunk in pending:
                    parts.append(b"%x\r\n%b\r\n" % (len(chunk), chunk))
            else:
                parts.extend(pending)
            self.resume_reading(PAUSE_BODY_WAIT)
        if req.complete and req.chunked:
            parts.append(LAST_CHUNK)
        conn.transport.write(b"".join(parts))
        if req.expect_continue and not req.complete and req.body_received == 0:
            req.expect_continue = False  # sent once, when the body can start flowing upstream
            self.transport.write(HTTP_100_CONTINUE)
        if req.complete or not req.has_body:
            # (A bodiless request is as good as complete: its message end is a formality.)
            self.phase = WAIT
            rule = req.rule
            timeout = (rule.backend_timeout if rule is not None else None) or self.settings.upstream_response_timeout
            self.deadline = (req.started if req.attempts == 0 else monotonic()) + timeout
        else:
            self.phase = BODY
            self.deadline = monotonic() + self.settings.body_timeout

    def _await_response(self, req: Exchange, now: float) -> None:
        self.phase = WAIT
        rule = req.rule
        timeout = (rule.backend_timeout if rule is not None else None) or self.settings.upstream_response_timeout
        self.deadline = now + timeout

    # -- upstream events (called by UpstreamConnection) ------------------------------------------

    def upstream_interim(self, status: int, block: bytes) -> None:
        """A 1xx before the final response: 100 is ours to send (Expect), others pass on."""
        req = self.active
        if status != 100 and req is not None and req.version == b"1.1":
            self.out.append(b"%b%b\r\n" % (status_line(status)[:-2], block))

    def upstream_head(self, status: int, block: bytes) -> None:
        req: Exchange = self.active  # type: ignore[assignment]
        held = self.held
        if held is not None:
            if status < 500 and held.quiet:
                held.calls += 1
            else:
                held.responded(self.endpoint, status, req.started)
        rule = req.rule
        if rule is not None and rule.retry is not None and retries_status(req, status) and self._backend_retries(req):
            upstream = self.upstream
            if upstream is not None:
                self._retry(req, upstream)
                return
        # An upstream that answers before the whole body arrived (an early 413, say): the rest of
        # the body cannot be told apart from a next request, so the connection closes afterwards.
        must_close = self.plane.draining or self.close_after or (not req.complete and status != 101 and req.has_body)
        # Consecutive responses on a connection usually carry the same head (until the Date
        # changes): the analysis of the last one is reused, a bytes comparison instead of a parse.
        key = (block, status, req.method, req.version, req.keep_alive, must_close)
        memo = self.resp_memo
        chained = self.chained
        added = None  # fields phases add to the head as it is (CORS, RateLimit): no field-by-field pass
        if chained is None or not chained.edits_response:  # (_response_head, inlined: once per response)
            if memo is not None and memo[0] == key:
                head = memo[1]
            else:
                head = build_response_head_raw(status, block, req, must_close)
                self.resp_memo = (key, head) if head.cacheable else None
        elif not chained.rule.chain.response:
            head = self._response_head(key, status, block, req, must_close)
            added = chained.response_fields
        else:
            # Phases edit this response head (header modifiers): field by field.
            try:
                block = self._response_phases(req, status, block)
            except Exception as exc:
                upstream = self.upstream
                if upstream is not None:
                    self.upstream = None
                    upstream.abort()  # its response is not wanted
                self._phase_failed(req, exc)
                return
            head = build_response_head_raw(status, block, req, must_close)
        self.resp_head = head
        self.status = status
        self.framing = head.framing
        self.close_after = head.close
        out = self.out
        if added:
            # Right after the status line, so the head built for the upstream's block is reused.
            first = head.parts[0]
            cut = first.find(b"\r\n") + 2
            out.append(first[:cut])
            out.append(b"".join(b"%b: %b\r\n" % field for field in added))
            out.append(first[cut:])
            if head.request_id_at:
                out.append(req.request_id)
                out.append(head.parts[1])
        elif head.request_id_at:
            out.append(head.parts[0])
            out.append(req.request_id)
            out.append(head.parts[1])
        else:
            out.extend(head.parts)
        self.phase = RESPONSE  # its idle deadline is set by flush() if the body is still coming

    def _response_head(
        self, key: tuple[object, ...], status: int, block: bytes, req: Exchange, close: bool
    ) -> ResponseHead:
        """The head for the upstream's block, reused from the connection's last response when the same."""
        memo = self.resp_memo
        if memo is not None and memo[0] == key:
            return memo[1]
        head = build_response_head_raw(status, block, req, close)
        self.resp_memo = (key, head) if head.cacheable else None
        return head

    def _response_phases(self, req: Exchange, status: int, block: bytes) -> bytes:
        """The response head's block after the chain's on_response_head and the fields phases added."""
        fields = split_fields(block)
        for phase in req.rule.chain.response:
            phase.on_response_head(req, fields)
        if req.response_fields:
            fields += req.response_fields
        return b"\r\n" + b"".join(b"%b: %b\r\n" % field for field in fields)

    def _backend_retries(self, req: Exchange) -> bool:
        """The backend's retry budget and maxParallelRetries allow this retry (always, without a policy)."""
        held = self.held
        if held is None or held.may_retry(monotonic(), req.retries == 0):
            return True
        self.plane.metrics.inc("gw_retries_refused_total", backend=held.name)
        return False

    def _retry(self, req: Exchange, rejected: UpstreamConnection | None, reason: str = "status") -> None:
        """GEP-1731: drop a response whose status the rule retries, and try again after the backoff."""
        self.upstream = None
        if rejected is not None:
            rejected.abort()  # its body is not wanted; the connection cannot be reused mid-response
        retry = req.rule.retry  # type: ignore[union-attr]
        if self.traced is not None:
            self.traced.attempt_failed(reason)
        delay = retry.delay(req.retries)
        req.retries += 1
        rearm(req)
        self.plane.metrics.inc("gw_upstream_retries_total", reason=reason)
        self.phase = CONNECT
        self.deadline = monotonic() + delay + self.settings.upstream_connect_timeout
        if delay > 0:
            self.loop.call_later(delay, self._retry_now, req)
        else:
            self._retry_now(req)

    def _retry_now(self, req: Exchange) -> None:
        if not self.closed and self.active is req:
            self.sent_at = monotonic()  # (a fresh connection's _connected moves it on)
            self.apart = True
            self._pick_and_go(req)

    def upstream_body(self, body: bytes) -> None:
        self.bytes_out += len(body)
        if self.framing == CHUNKED:
            self.out.append(b"%x\r\n%b\r\n" % (len(body), body))
        elif self.framing != NO_BODY:
            self.out.append(body)

    def upstream_complete(self, conn: UpstreamConnection) -> None:
        if self.framing == CHUNKED:
            self.out.append(LAST_CHUNK)
        self.phase = IDLE  # _finish sets the next deadline
        out = self.out
        if out:  # flush(), inlined: this runs once per response
            self.transport.write(out[0] if len(out) == 1 else b"".join(out))
            out.clear()
        req: Exchange = self.active  # type: ignore[assignment]
        self.upstream = None
        held = self.held
        if held is not None and not held.quiet:
            held.completed(self.endpoint)  # a whole response: the endpoint's local-origin count restarts
        now = monotonic()
        if conn.keep_alive and req.complete and not conn.closed:
            if self.writing_paused:
                conn.transport.resume_reading()
            conn.pool.release(conn, now)
        else:
            conn.close()
        self._finish(req, self.status, now)

    def flush(self) -> None:
        out = self.out
        if out:
            self.transport.write(out[0] if len(out) == 1 else b"".join(out))
            out.clear()
        if self.phase == RESPONSE:
            now = monotonic()
            self.deadline = now + self.settings.upstream_response_timeout
            if not self.head_at:  # the end of the read with the response head: the upstream's time ends
                self.head_at = now
                self.apart = True

    def upstream_lost(self, conn: UpstreamConnection) -> None:
        """The upstream connection closed while lent to us."""
        if self.upstream is not conn:
            return
        self.upstream = None
        req = self.active
        if req is None:
            return
        if self.phase == TUNNEL:
            self.transport.close()
            return
        if self.resp_head is None:
            if conn.reused and not conn.got_bytes and req.idempotent and replayable(req):
                # A keep-alive connection the upstream had closed just as we reused it: the
                # request never reached it, so one retry on a fresh connection is safe.
                self.plane.metrics.inc("gw_upstream_retries_total", reason="stale-connection")
                rearm(req)
                self._connect(req, conn.pool)
                return
            self._fail(errors.UpstreamProtocolError("upstream closed the connection without a response"))
            return
        if self.resp_head.until_close and not conn.message_done and not conn.reset:
            self.upstream_complete(conn)  # a close-delimited body ends with the connection (a FIN)
            return
        self._abort(req, "upstream connection lost mid-response")

    def upstream_broken(self, conn: UpstreamConnection, detail: str) -> None:
        """The upstream sent something that is not HTTP/1.1: drop it, answer 502 if we still can."""
        if self.upstream is conn:
            self.upstream = None
        conn.abort()
        self.plane.metrics.inc("gw_upstream_protocol_errors_total")
        req = self.active
        if req is None:
            return
        if self.resp_head is None:
            self._fail(errors.UpstreamProtocolError(detail))
        else:
            self._abort(req, detail)

    # -- upgrades (WebSocket) --------------------------------------------------------------------

    def _prime_for_body(self, req: Exchange) -> None:
        """Hand the body of `req`, whose head the fast parser read, and what follows to a full parser."""
        self.fast_parser = request_parser(RawHeadCallbacks(self))  # the old one waits inside a body
        parser = self.full_parser = self.parser = request_parser(ResumedBodyCallbacks(self, req, routed=True))
        parser.feed_data(_priming_head(req))

    def _client_upgrade(self, rest: bytes) -> bytes | None:
        """The parser stopped after an upgrade request: the bytes to parse as HTTP next, or None.

        A WebSocket upgrade holds what follows until the upstream answers; an upgrade gw does not
        proxy (h2c, …) was served as plain HTTP/1.1, so parsing goes on with fresh parsers.
        """
        req = self.active if self.active is not None else (self.queue[-1] if self.queue else None)
        if req is not None and req.upgrade:
            self.early_data += rest
            self.pause_reading(PAUSE_TUNNEL)
            return None
        self._new_parsers()
        if self.closed:
            return None
        held = self.skipped_body
        if held is not None:
            # llhttp skips the body of any upgrade request and already called it complete. A parser
            # primed with a head that frames the same body reads it, then the requests that follow.
            self.skipped_body = None
            held.complete = False
            self.req = held
            self.full_parser = self.parser = request_parser(ResumedBodyCallbacks(self, held))
            return _priming_head(held) + rest
        return rest or None

    def upstream_upgraded(self, rest: bytes) -> None:
        """The upstream switched protocols (101): from now on bytes are piped both ways."""
        req = self.active
        upstream = self.upstream
        if req is None or upstream is None or not req.upgrade or self.status != 101:
            if upstream is not None:
                self.upstream_broken(upstream, "unexpected protocol switch from upstream")
            return
        self.flush()
        self.phase = TUNNEL
        self.deadline = monotonic() + self.settings.tunnel_idle_timeout
        self._record(req, 101)
        if rest:
            self.transport.write(rest)
        if self.early_data:
            upstream.transport.write(self.early_data)
            self.early_data = b""
        self.resume_reading(PAUSE_TUNNEL | PAUSE_PIPELINE)

    def tunnel_from_client(self, data: bytes) -> None:
        upstream = self.upstream
        if upstream is None:
            return
        upstream.transport.write(data)
        self.deadline = monotonic() + self.settings.tunnel_idle_timeout

    def tunnel_from_upstream(self, data: bytes) -> None:
        self.transport.write(data)
        self.deadline = monotonic() + self.settings.tunnel_idle_timeout

    # -- endings -----------------------------------------------------------------------------------

    def _finish(self, req: Exchange, status: int, now: float = 0.0) -> None:
        """The response is complete: log it, then serve the next pipelined request or wait."""
        now = self._record(req, status, now)
        self.active = None
        self.request_deadline = 0.0
        if self.close_after or self.closed or not req.keep_alive:
            self._close()
            return
        if req.upgrade:
            # The upstream refused the upgrade; the client may go on with plain HTTP.
            self._new_parsers()
            early, self.early_data = self.early_data, b""
            self.resume_reading(PAUSE_TUNNEL)
            if early:
                self.data_received(early)
                return
        if self.fatal is not None:
            fatal, self.fatal = self.fatal, None
            self._reject(fatal)
            return
        if self.queue:
            nxt = self.queue.popleft()
            if not self.queue:
                self.resume_reading(PAUSE_PIPELINE)
            self._start(nxt)
            return
        parsing = self.req
        if parsing is not None and parsing is not req:
            self.phase = HEAD
            self.deadline = parsing.started + self.settings.header_timeout
        else:
            self.phase = IDLE
            self.idle_since = now
            self.deadline = now + self.settings.keepalive_timeout

    def _fail(self, error: ProxyError) -> None:
        """Answer the request in flight with a problem response (nothing was sent to the client yet)."""
        req: Exchange = self.active  # type: ignore[assignment]
        upstream = self.upstream
        held = self.held
        if (
            held is not None
            and self.endpoint is not None
            and isinstance(error, UPSTREAM_FAILURES)
            and not isinstance(error, errors.RouteTimeout)
        ):
            # A timeout or a lost connection (refusals were counted as they happened).
            held.failed(self.endpoint, monotonic())
        if error.attempt_failed and self.resp_head is None and may_retry(req, error) and self._backend_retries(req):
            if self.connecting is not None:
                self.connecting.cancel()
                self.connecting = None
            self._retry(req, upstream, error.kind)
            return
        if upstream is not None:
            self.upstream = None
            upstream.abort()
        if self.connecting is not None:
            self.connecting.cancel()
            self.connecting = None
        if self.resp_head is not None:
            self._abort(req, error.detail)
            return
        if error.status >= 500:
            self.plane.metrics.inc("gw_proxy_errors_total", kind=error.kind)
            if error.attempt_failed and self.traced is not None:
                self.traced.attempt_failed(error.kind)
        close = (
            error.close
            or not req.keep_alive
            or ((req.chunked or req.content_length > 0) and not req.complete)  # (has_body, inlined)
            or self.plane.draining
        )
        self.close_after = close
        self.framing = NO_BODY
        self.out.clear()
        response, self.bytes_out = problem_response(
            error, req.request_id, close=close, head_only=req.method == b"HEAD", version=req.version,
            trace_id=req.trace_id,
        )  # fmt: skip
        self.transport.write(response)
        self._finish(req, error.status)

    def _reject(self, error: ProxyError) -> None:
        """Malformed or over-limit input: answer it (in order, after any exchange in flight) and close."""
        if self.closed:
            return
        self.pause_reading(PAUSE_PIPELINE)
        req = self.req
        if self.active is not None and req is not self.active:
            self.fatal = error  # answered when the response in flight is complete
            return
        if self.active is not None:
            self._fail(error)
            return
        # A request whose head was accepted keeps its id (the client's, if it sent a valid one).
        request_id = req.request_id if req is not None and req.request_id else self.plane.next_request_id()
        # A response to HEAD has no content (RFC 9110 §9.3.2): the method is known once the
        # request line is parsed (the target is read after it).
        head_only = req is not None and (req.method or (req.url and self.parser.get_method())) == b"HEAD"
        trace_id = req.trace_id if req is not None else b""
        response, self.bytes_out = problem_response(
            error, request_id, close=True, head_only=head_only, trace_id=trace_id
        )
        self.transport.write(response)
        if req is not None:
            req.request_id = request_id
            self.resp_head = None  # (the last exchange's: this one had no answer from upstream)
            self._record(req, error.status)
        else:
            self.plane.no_route_stats.record(error.status, 0.0)
        self._close()

    def _abort(self, req: Exchange, detail: str) -> None:
        """The response was already under way and cannot be completed: reset the client connection,
        so a truncated body is never presented as complete."""
        self.plane.metrics.inc("gw_upstream_resets_total")
        held = self.held
        if held is not None and self.endpoint is not None and self.resp_head is not None:
            held.lost_mid_body(self.endpoint, monotonic())
        self._record(req, 502 if self.status < 500 else self.status, error=detail)
        self.active = None
        upstream = self.upstream
        if upstream is not None:
            self.upstream = None
            upstream.abort()
        self.closed = True
        self.out.clear()
        self._reset()

    def _reset(self) -> None:
        """Close the client connection with a RST: transport.abort() alone sends a FIN, which says
        "complete" to a client reading a body to the close, and "closed cleanly" to any other."""
        sock = self.transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):  # gone already (or not TCP): abort() is all that is left
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RESET)
        self.transport.abort()

    def _client_gone(self, req: Exchange) -> None:
        """The client closed before its request was complete: drop the exchange, logged as nginx's 499."""
        if self.connecting is not None:
            self.connecting.cancel()
            self.connecting = None
        self.active = None
        self._record(req, 499, error="client closed the connection before its request body was complete")
        self._close()  # (aborts the upstream connection: it holds a partial request)

    def _close(self) -> None:
        self.closed = True
        self.phase = IDLE
        upstream = self.upstream
        if upstream is not None:
            self.upstream = None
            upstream.abort()
        self.transport.close()

    def expire(self, now: float) -> None:
        """A deadline passed (called by the sweeper)."""
        phase = self.phase
        if 0.0 < self.request_deadline <= now and self.active is not None and phase != TUNNEL:
            self.plane.metrics.inc("gw_timeouts_total", kind="request")
            self._fail(errors.RouteTimeout("route request timeout exceeded"))
            return
        if self.deadline > now:
            return
        if phase == IDLE:
            self._close()
        elif phase == HEAD:
            self.plane.metrics.inc("gw_timeouts_total", kind="header")
            if self.active is None:
                self._reject(errors.RequestTimeout("request head not received in time"))
        elif phase == BODY:
            self.plane.metrics.inc("gw_timeouts_total", kind="body")
            self._fail(errors.RequestTimeout("request body not received in time"))
        elif phase == CONNECT:
            self.plane.metrics.inc("gw_timeouts_total", kind="connect")
            self._fail(errors.UpstreamTimeout("upstream connect timeout"))
        elif phase == WAIT:
            self.plane.metrics.inc("gw_timeouts_total", kind="response")
            self._fail(errors.UpstreamTimeout("upstream response timeout"))
        elif phase == RESPONSE:
            self.plane.metrics.inc("gw_timeouts_total", kind="response-body")
            self._abort(self.active, "upstream stalled mid-response")  # type: ignore[arg-type]
        elif phase == DECIDE:
            self.plane.metrics.inc("gw_timeouts_total", kind="phase")
            self._fail(errors.PhaseTimeout("a policy could not decide on the request in time"))
        elif phase == TUNNEL:
            self._close()

    def crash(self, exc: BaseException) -> None:
        """Last resort for a bug: drop this connection only, say why, keep the worker serving."""
        traceback.print_exception(exc)
        self.plane.metrics.inc("gw_internal_errors_total")
        self.closed = True
        if self.upstream is not None:
            self.upstream.abort()
            self.upstream = None
        self._reset()  # (a response it cut short must not look complete)

    # -- telemetry --------------------------------------------------------------------------------

    def _record_apart(self, req: Exchange, rule: Any, status: int, duration: float, now: float) -> Any:
        """_record's counting of an exchange that reached an endpoint, but not the usual one: the
        RouteStats it went to."""
        stats = rule.pairs.get(self.backend, rule.bare_stats)
        received = req.body_received
        if self.resp_head is not None:
            upstream = (self.head_at or now) - (self.sent_at or req.started)
            stats.record_apart(status, duration, upstream, received, self.bytes_out)
        else:
            stats.record_sized(status, duration, received, self.bytes_out)
        self._settle(req)
        return stats

    def _settle(self, req: Exchange) -> None:
        self.head_at = self.sent_at = 0.0
        # (A request queued or being read may have sent body bytes already.)
        self.apart = bool(self.queue) or (self.req is not None and self.req is not req)

    def _record(self, req: Exchange, status: int, now: float = 0.0, error: str | None = None) -> float:
        """Count the exchange in the route's metrics and the access log; returns the time used."""
        if not now:
            now = monotonic()
        held = self.held
        if held is not None:
            self.held = None
            held.parallel -= 1
            if req.counted is not None:
                held.release(req)  # LeastRequest's in-flight count
            if req.retries:
                held.leave()
        duration = now - req.started
        rule = req.rule
        if self.resp_head is None:
            if rule is None or self.endpoint is None:  # answered by gw: counted for the route alone
                stats = self.plane.no_route_stats if rule is None else rule.bare_stats
                stats.record(status, duration)
                if self.apart:
                    self._settle(req)
            else:  # it reached an endpoint, which did not answer
                stats = self._record_apart(req, rule, status, duration, now)
        elif self.apart:
            stats = self._record_apart(req, rule, status, duration, now)
        else:
            # The usual exchange: the upstream's response, to the head sent with the client's, in
            # one read; no request body (RouteStats.record_upstream). A rule of one backendRef has
            # its pair of stats at hand.
            stats = rule.stats or rule.pairs.get(self.backend, rule.bare_stats)
            stats.record_upstream(status, duration, self.bytes_out)
        if self.traced is not None and req.span is self.traced:
            self.traced = None
            self.tracer.end(req, self, status, now, error)  # type: ignore[union-attr]
        if self.chained is req and req.done_phases:
            for phase in req.done_phases:  # the outcome, to phases that account for it
                try:
                    phase.on_done(req, status)
                except Exception as exc:  # reported; the exchange is over either way
                    traceback.print_exception(exc)
                    self.plane.metrics.inc("gw_internal_errors_total")
        log = self.plane.access_log
        if log.enabled and (log.sample >= 1.0 or log.sampled()):
            # The request's own members are escaped once per distinct request line and host.
            memo = self.log_memo
            if (
                memo is not None
                and memo[0] == req.url
                and memo[1] == req.host
                and memo[2] == req.method
                and memo[3] == req.version
            ):
                request_part = memo[4]
            else:
                request_part = members(
                    client=self.client,
                    method=req.method.decode("latin-1"),
                    host=req.host,
                    # (log_url: the target with a credential blanked, set by the phase that read it)
                    path=(req.url if req.log_url is None else req.log_url).decode("latin-1"),
                    protocol=_PROTOCOLS.get(req.version, "HTTP/?"),
                )
                self.log_memo = (req.url, req.host, req.method, req.version, request_part)
            endpoint = self.endpoint
            log.write_line(
                LINE
                % (
                    time.time(),
                    req.request_id,
                    request_part,
                    status,
                    req.body_received,
                    self.bytes_out,
                    duration * 1000.0,
                    stats.log_member,
                    endpoint.pool.log_member if endpoint is not None and rule is not None else NULL_UPSTREAM,
                    req.identity.log_member if req.identity is not None else NULL_CONSUMER,
                    _log_tail(error, req.trace_id) if error or self.trace_for is req else b"",
                )
            )
        return now


def request_parser(callbacks: object) -> HttpRequestParser:
    """A request parser that lets any HTTP/x.y version through: http_version() decides (a higher
    HTTP/1 minor is served as 1.1, RFC 9112 §2.6; llhttp alone refuses 1.2 as invalid)."""
    parser = HttpRequestParser(callbacks)
    parser.set_dangerous_leniencies(lenient_version=True)
    return parser


class RawHeadCallbacks:
    """httptools callbacks for a read holding exactly one request head: no on_url/on_header, so no
    Python call per field; the connection reads the head from the bytes instead."""

    __slots__ = ("on_body", "on_chunk_header", "on_headers_complete", "on_message_complete")

    def __init__(self, conn: ClientConnection) -> None:
        self.on_headers_complete = conn.on_raw_headers_complete
        self.on_body = conn.on_body
        self.on_chunk_header = conn.on_chunk_header
        self.on_message_complete = conn.on_message_complete


def _priming_head(req: Exchange) -> bytes:
    """A made-up head that frames what is left of `req`'s body as the client framed it."""
    if req.chunked:
        framing = b"Transfer-Encoding: chunked"
    else:
        framing = b"Content-Length: %d" % (req.content_length - req.body_received)
    close = b"" if req.keep_alive else b"Connection: close\r\n"
    return b"PUT / HTTP/1.1\r\n%b\r\n%b\r\n" % (framing, close)


class ResumedBodyCallbacks:
    """httptools callbacks of a parser primed with a made-up head (_priming_head) to read a body
    another parser could not: an upgrade request's that gw serves as HTTP (llhttp skipped it; the
    made-up head then routes the real request), or one whose head the fast parser read (already
    routed). The body goes to the connection, and so does every request after it."""

    __slots__ = ("conn", "held", "priming", "routed")

    def __init__(self, conn: ClientConnection, held: Exchange, routed: bool = False) -> None:
        self.conn = conn
        self.held = held
        self.priming = True
        self.routed = routed

    def on_message_begin(self) -> None:
        if not self.priming:
            self.conn.on_message_begin()

    def on_url(self, url: bytes) -> None:
        if not self.priming:
            self.conn.on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self.priming:
            self.conn.on_header(name, value)

    def on_headers_complete(self) -> None:
        if self.priming:
            self.priming = False
            self.conn.head_bytes = 0
            if not self.routed:
                self.conn._route(self.held)
        else:
            self.conn.on_headers_complete()

    def on_body(self, body: bytes) -> None:
        self.conn.on_body(body)

    def on_chunk_header(self) -> None:
        self.conn.chunk_lines += 1

    def on_message_complete(self) -> None:
        self.conn.on_message_complete()


_PROTOCOLS = {b"1.1": "HTTP/1.1", b"1.0": "HTTP/1.0"}


# The two usual versions (gw.proxy.request has its own copy for http_version): Python 3.11's compiler
# emits LOAD_ATTR, not LOAD_METHOD, for a method call on a name bound by `from … import` (a bound
# method object per call, ~500 instructions a request measured with callgrind).
_VERSIONS = {"1.1": b"1.1", "1.0": b"1.0"}


def _end_mirrors(mirrors: list[MirrorRequest]) -> None:
    for mirror in mirrors:
        mirror.end()
