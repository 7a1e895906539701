"""Client side of the proxy: one asyncio.Protocol per client connection drives every exchange.

No task or future per request (DESIGN.md §2): httptools callbacks record the request, the
exchange moves on from protocol callbacks of both sides, and timeouts are deadlines that the
worker's sweeper checks, not a timer per request. One request is in flight per connection;
pipelined ones queue behind it and are answered in order.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from time import monotonic
from typing import TYPE_CHECKING, Any

from httptools import HttpParserCallbackError, HttpParserError, HttpParserUpgrade, HttpRequestParser

from gw.observe.accesslog import LINE, NULL_UPSTREAM, members
from gw.proxy import errors
from gw.proxy.errors import ProxyError, problem_response
from gw.proxy.mirror import MirrorRequest, start_mirrors
from gw.proxy.request import (
    CRLF,
    IDEMPOTENT,
    RawHead,
    Request,
    analyze_raw,
    forwarded_for,
    http_version,
    prepare,
    split_fields,
    split_target,
)
from gw.proxy.response import CHUNKED, NO_BODY, ResponseHead, build_response_head_raw, status_line
from gw.proxy.upstream import (
    PAUSE_BODY_WAIT,
    PAUSE_PIPELINE,
    PAUSE_TUNNEL,
    EndpointPool,
    UpstreamConnection,
)

if TYPE_CHECKING:
    from gw.config.model import Backend, Endpoint
    from gw.proxy.gateway import Gateway

# What the connection is waiting for; decides what an expired deadline means.
IDLE = 0  # keep-alive, between requests: close quietly
HEAD = 1  # reading a request head: 408
CONNECT = 2  # opening an upstream connection: 504
BODY = 3  # reading the request body from the client: 408
WAIT = 4  # request sent, waiting for the response head: 504
RESPONSE = 5  # streaming the response body: abort
TUNNEL = 6  # upgraded connection idle: close

PENDING_BODY_LIMIT = 256 * 1024  # body bytes buffered while the upstream connection opens
REPLAY_LIMIT = 64 * 1024  # idempotent request bodies up to this size can be retried
MAX_CONNECT_ATTEMPTS = 3  # endpoints tried when connects are refused (nothing was sent yet)
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
LAST_CHUNK = b"0\r\n\r\n"


class ClientConnection(asyncio.Protocol):
    """One client connection and the exchange it currently has in flight."""

    def __init__(self, gateway: Gateway, bind_port: int, declared_port: int, scheme: bytes = b"http") -> None:
        self.gw = gateway
        self.loop = gateway.loop
        self.settings = gateway.settings
        self.bind_port = bind_port
        self.port_bytes = str(declared_port).encode()
        self.declared_port = declared_port
        self.tls = False
        self.server_name: str | None = None  # the SNI the TLS client sent
        self.resp_mods: tuple[Any, ...] | None = None  # ResponseHeaderModifiers of the exchange
        self.scheme = scheme
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.full_parser = self.parser = request_parser(self)
        self.fast_parser = request_parser(RawHeadCallbacks(self))
        self.raw = b""  # the read being parsed on the fast path
        self.client_host = b""
        self.hop = b""  # this hop's Forwarded element up to its host (gw.proxy.request.forwarded_for)
        self.phase = IDLE
        self.deadline = 0.0
        self.idle_since = 0.0  # when the connection last became IDLE (opened or answered): drain's grace
        self.request_deadline = 0.0  # rule's timeouts.request for the exchange in flight (0: none)
        self.paused = 0  # PAUSE_* bits
        self.closed = False
        self.head_bytes = 0
        self.req: Request | None = None  # the request being parsed
        self.active: Request | None = None  # the request in flight
        self.queue: deque[Request] = deque()
        self.upstream: UpstreamConnection | None = None
        self.connecting: asyncio.Task[UpstreamConnection] | None = None
        self.endpoint: Endpoint | None = None
        self.backend: Backend | None = None
        self.resp_head = None
        self.framing = NO_BODY
        self.close_after = False
        self.out: list[bytes] = []
        self.bytes_out = 0
        self.status = 0
        self.early_data = b""  # bytes after an upgrade request, held until the upstream answers
        self.fatal: ProxyError | None = None
        self.small_head = min(self.settings.max_request_line, self.settings.max_header_size)
        self.log_memo: tuple[Any, ...] | None = None
        self.route_memo: tuple[Any, ...] | None = None
        self.req_memo: tuple[bytes, bytes, RawHead | None] | None = None
        self.resp_memo: tuple[tuple[object, ...], ResponseHead] | None = None
        self.client = ""
        self.writing_paused = False

    # -- asyncio.Protocol: client transport -------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        self.client = peer[0] if isinstance(peer, tuple) else "unix"
        self.client_host = self.client.encode()
        self.hop = forwarded_for(self.client_host, self.scheme)
        ssl_object = transport.get_extra_info("ssl_object")
        if ssl_object is not None:
            self.tls = True
            self.server_name = self.gw.server_names.pop(id(ssl_object), None)
        gw = self.gw
        gw.connections.add(self)
        self.idle_since = now = monotonic()
        self.deadline = now + self.settings.header_timeout
        if len(gw.connections) > self.settings.max_connections or gw.draining:
            self.closed = True
            error = errors.Overloaded("too many connections")
            transport.write(problem_response(error, gw.next_request_id(), close=True))
            transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._abandon_mirrors()
        self.gw.connections.discard(self)
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
        if self.req is None:
            # Between messages: a read that is exactly one head (the usual GET) takes the fast
            # parser, which reports no header callbacks; anything else the full one.
            self.head_bytes += len(data)
            if data[-4:] == b"\r\n\r\n" and data.find(b"\r\n\r\n") == len(data) - 4:
                self.raw = data
                self.parser = self.fast_parser
            else:
                self.parser = self.full_parser
        elif self.phase == HEAD:
            self.head_bytes += len(data)
        try:
            self.parser.feed_data(data)
        except HttpParserUpgrade as upgrade:
            self._client_upgrade(data[upgrade.args[0] :])
        except HttpParserCallbackError as exc:
            cause = exc.__context__
            if isinstance(cause, ProxyError):
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
        # httptools holds a header until its end arrives: bound the unparsed head by bytes read.
        settings = self.settings
        if (
            self.req is not None
            and self.head_bytes > settings.max_header_size + settings.max_request_line
            and (self.phase == HEAD or self.active is None)
        ):
            self._reject(errors.HeadersTooLarge("request header block too large"))

    def eof_received(self) -> bool | None:
        if self.phase == TUNNEL:
            # Pass the half-close on: the upstream sees the client is done sending.
            upstream = self.upstream
            if upstream is not None and not upstream.closed and upstream.transport.can_write_eof():
                upstream.transport.write_eof()
                return True
            return None
        self._abandon_mirrors()
        # A client that half-closes after its request still gets its response.
        if self.active is not None:
            self.close_after = True
            return True
        return None

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
        now = monotonic()
        req = self.req = Request(now)
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
        req: Request = self.req  # type: ignore[assignment]
        settings = self.settings
        if self.head_bytes > settings.max_header_size:
            size = sum(len(n) + len(v) + 4 for n, v in req.headers)
            if size > settings.max_header_size:
                raise errors.HeadersTooLarge(f"request header block of {size} bytes is too large")
        self.head_bytes = 0
        parser = self.parser
        method = parser.get_method()
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
            self.gw.next_request_id(),
            self.hop,
        )
        self._route(req)

    def on_raw_headers_complete(self) -> None:
        """The fast path: this read held exactly one request head (see RawHeadCallbacks)."""
        data = self.raw
        self.raw = b""
        self.head_bytes = 0
        req = self.req = Request(monotonic())
        settings = self.settings
        parser = self.parser
        method = parser.get_method()
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
        text = parser.get_http_version()
        version = _VERSIONS.get(text) or http_version(text)
        request_id = self.gw.next_request_id()
        # A client's consecutive heads are usually byte-identical (same fields, same cookies):
        # the analysis of the last one is reused after one bytes comparison.
        memo = self.req_memo
        if url[:1] != b"/":
            head = None  # absolute-form: its authority replaces Host (general path)
        elif memo is not None and memo[0] == block and memo[1] == version:
            head = memo[2]
        else:
            head = analyze_raw(block, version, self.client_host, self.scheme, self.port_bytes, self.hop)
            self.req_memo = (block, version, head)
        if head is not None:
            req.method = method
            req.version = version
            req.keep_alive = parser.should_keep_alive()
            req.idempotent = method in IDEMPOTENT
            req.client_host = self.client_host
            req.request_id = request_id
            req.host_header = head.host_header
            req.host = head.host
            req.head = [head.forward, request_id, CRLF]
            if self.gw.header_matching:
                req.headers = split_fields(block)
        else:
            req.headers = split_fields(block)
            prepare(
                req, method, version, parser.should_keep_alive(), parser.should_upgrade(), self.client_host,
                self.scheme, self.port_bytes, request_id, self.hop,
            )
        self._route(req)

    def _route(self, req: Request) -> None:
        """Find the rule for a prepared request, check its limits, then start it or queue it."""
        settings = self.settings
        gw = self.gw
        # A keep-alive client often repeats its request line: reuse the last lookup when the
        # target, host, method and config are the same (never when rules match on headers).
        url = req.url
        memo = self.route_memo
        if (
            memo is not None
            and memo[0] == url
            and memo[1] == req.host
            and memo[2] == req.method
            and memo[3] is gw.config
            and not gw.header_matching
        ):
            req.path, req.query, req.url, rule = memo[4]
        else:
            split_target(req, url)
            port = gw.ports.get(self.bind_port)
            tls = port.tls if self.tls and port is not None else None
            if tls is not None and tls.misdirected(self.server_name, req.host):
                # The Host belongs to another listener than the one the SNI chose (RFC 9110 §15.5.20).
                raise errors.Misdirected(f"{req.host} is not served on the connection for {self.server_name}")
            rule = port.table.match(req.host, req.path, req.method, req.headers, req.query) if port else None
            self.route_memo = (url, req.host, req.method, gw.config, (req.path, req.query, req.url, rule))
        req.rule = rule
        if rule is not None:
            limit = rule.max_body_size or settings.max_body_size
            if 0 < limit < req.content_length:
                raise errors.BodyTooLarge(f"request body of {req.content_length} bytes exceeds {limit}")
        if (req.idempotent or (rule is not None and rule.retry is not None)) and (
            req.chunked or 0 < req.content_length <= REPLAY_LIMIT
        ):
            req.replay = []
        if self.active is None:
            self._start(req)
        else:
            self.queue.append(req)
            self.pause_reading(PAUSE_PIPELINE)

    def on_body(self, body: bytes) -> None:
        req: Request = self.req  # type: ignore[assignment]
        received = req.body_received = req.body_received + len(body)
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
                self.deadline = monotonic() + self.settings.keepalive_timeout
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

    def on_message_complete(self) -> None:
        req: Request = self.req  # type: ignore[assignment]
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

    def _start(self, req: Request) -> None:
        """Begin proxying `req`: choose backend and endpoint, then lend or open a connection."""
        self.active = req
        self.status = 0
        self.bytes_out = 0
        self.resp_head = None
        rule = req.rule
        if rule is None:
            self._fail(errors.NoRoute(f"no route for {req.host or '(no host)'}{req.path}"))
            return
        if rule.invalid_reason:
            self._fail(errors.RouteMisconfigured(rule.invalid_reason))
            return
        timeout = rule.request_timeout
        self.request_deadline = req.started + timeout if timeout else 0.0
        self.resp_mods = None
        if rule.has_filters:
            if not rule.limits_only:
                self._start_filtered(req, rule)
                return
            if not self._limits_pass(req, rule):
                return
        backend = rule.only_backend
        if backend is None:
            ref = rule.pick_backend()
            if ref is None or ref.backend is None:
                self._fail(errors.RouteMisconfigured("the route has no usable backend"))
                return
            backend = ref.backend
        self.backend = backend
        self._pick_and_go(req)

    def _limits_pass(self, req: Request, rule: Any) -> bool:
        """A rule whose only policies are rate limits: True to go on as the fast path does.

        The head is split into fields only for a limit keyed on them (a header, X-Forwarded-For
        behind trusted proxies) and is forwarded as it came. False: answered, or waiting on Redis.
        """
        if req.limit_fields is None:
            limiters = rule.limiters
            fields = split_fields(b"\r\n" + b"".join(req.head)) if limiters.reads_fields else []
            verdict = limiters.decide(req, fields, lambda v: self._limited(req, rule, v))
            if verdict is None or not self._admitted(req, verdict):
                return False
        if req.limit_fields:
            self.resp_mods = (None, None, _AddFields(req.limit_fields))
        return True

    def _start_filtered(self, req: Request, rule: Any) -> None:
        """A rule with HTTPRoute filters: redirect, or rewrite the request and edit its fields.

        Off the fast path on purpose: the forwarded head is split into fields, edited by the
        rule's and then the chosen backendRef's filters, and joined again.
        """
        fields = split_fields(b"\r\n" + b"".join(req.head))
        limiters = rule.limiters
        if limiters is not None and req.limit_fields is None:
            # RateLimitPolicies decide before any filter edits the request they key on. An
            # answer from Redis resumes the exchange in _limited (the guard's budget bounds it).
            verdict = limiters.decide(req, fields, lambda v: self._limited(req, rule, v))
            if verdict is None or not self._admitted(req, verdict):
                return
        cors = rule.cors
        cors_fields: list[tuple[bytes, bytes]] | None = None
        if cors is not None:
            origin = _field(fields, b"origin")
            if origin is not None:
                asked = _field(fields, b"access-control-request-method")
                if cors.is_preflight(req.method, asked):
                    # The gateway answers the preflight itself (the CORS filter's promise).
                    wanted = _field(fields, b"access-control-request-headers")
                    self._answer(req, 204, cors.preflight(origin, asked, wanted))
                    return
                cors_fields = cors.response(origin)
        redirect = rule.redirect
        if redirect is not None:
            location = redirect.location(
                self.scheme.decode(), req.host or "localhost", self.declared_port, req.path, req.query
            )
            self._answer(req, redirect.status, [(b"Location", location)])
            return
        ref = rule.pick_backend()
        if ref is None or ref.backend is None:
            self._fail(errors.RouteMisconfigured("the route has no usable backend"))
            return
        edited = False  # an unedited head is forwarded as it came (a rate limit or CORS alone)
        for modifier in (rule.request_headers, ref.request_headers):
            if modifier is not None:
                modifier.apply(fields)
                edited = True
        rewrite = ref.rewrite or rule.rewrite
        if rewrite is not None:
            req.url = rewrite.target(req.path, req.query)
            if rewrite.host is not None:
                fields = [(n, v) for n, v in fields if n.lower() != b"host"]
                fields.insert(0, (b"Host", rewrite.host))
                req.host_header = rewrite.host
                edited = True
        if edited:
            req.head = [b"".join(b"%b: %b\r\n" % field for field in fields)]
        if req.limit_fields:
            cors_fields = (cors_fields or []) + req.limit_fields
        if rule.response_headers is not None or ref.response_headers is not None or cors_fields:
            self.resp_mods = (rule.response_headers, ref.response_headers, _AddFields(cors_fields or []))
        self.backend = ref.backend
        mirrors = rule.mirrors + ref.mirrors if ref.mirrors else rule.mirrors
        if not mirrors or req.upgrade:  # (an upgrade is a conversation, not a request to copy)
            self._pick_and_go(req)
            return
        # The primary goes first: it gets the pick of idle pooled connections, and a request it
        # cannot even start (no endpoint) is not copied. Its _send takes the body read so far.
        early_body = req.pending_body
        self._pick_and_go(req)
        if self.active is req and not self.closed:
            timeout = rule.backend_timeout or self.settings.upstream_response_timeout
            req.mirrors = start_mirrors(self.gw, mirrors, req, early_body, timeout)

    def _admitted(self, req: Request, verdict: Any) -> bool:
        """Record a rate-limit verdict: True to go on, False when it was answered here."""
        if not verdict.allowed:
            self._fail(errors.RateLimited(verdict.detail, verdict.status, verdict.fields))
            return False
        req.limit_fields = verdict.fields
        return True

    def _limited(self, req: Request, rule: Any, verdict: Any) -> None:
        """A verdict that needed Redis: carry on with the exchange it held up, unless the client left."""
        if self.closed or self.active is not req:
            return
        try:
            if self._admitted(req, verdict):
                if rule.limits_only:
                    self._start(req)  # decided: req.limit_fields is set
                else:
                    self._start_filtered(req, rule)
        except Exception as exc:
            self.crash(exc)

    def _answer(self, req: Request, status: int, fields: list[tuple[bytes, bytes]]) -> None:
        """A bodiless response from the gateway itself (a redirect), in order, then carry on."""
        self.active = req
        close = (req.has_body and not req.complete) or not req.keep_alive or self.gw.draining
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
                    b"" if status == 204 else b"Content-Length: 0\r\n",  # RFC 9110 §8.6: none on 204
                    tail,
                )
            )
        )
        self._finish(req, status)

    def _pick_and_go(self, req: Request) -> None:
        endpoint = self.backend.pick(req.started)  # type: ignore[union-attr]
        if endpoint is None:
            self._fail(errors.NoEndpoint(f"backend {self.backend.name} has no endpoints"))  # type: ignore[union-attr]
            return
        self.endpoint = endpoint
        pool = endpoint.pool
        if pool is None:
            pool = endpoint.pool = self.gw.pool(endpoint)
        idle = pool.idle  # EndpointPool.acquire, inlined: this runs once per request
        while idle:
            conn = idle.pop()
            if not conn.closed:
                conn.reused = True
                self._send(req, conn)
                return
        self._connect(req, pool)

    def _connect(self, req: Request, pool: EndpointPool) -> None:
        self.phase = CONNECT
        self.deadline = monotonic() + self.settings.upstream_connect_timeout
        task = self.connecting = self.loop.create_task(pool.open())
        task.add_done_callback(lambda t: self._connected(t, req, pool))

    def _connected(self, task: asyncio.Task[UpstreamConnection], req: Request, pool: EndpointPool) -> None:
        if task.cancelled():
            return
        if self.connecting is task:
            self.connecting = None
        exc = task.exception()
        if exc is not None:
            if self.active is not req or self.closed:
                return
            req.attempts += 1
            endpoint = self.endpoint
            self.gw.metrics.inc("gw_upstream_connect_errors_total", endpoint=f"{pool.address}:{pool.port}")
            if endpoint is not None:
                endpoint.down_until = monotonic() + self.settings.endpoint_eject_time
            if req.attempts < MAX_CONNECT_ATTEMPTS and len(self.backend.endpoints) > req.attempts:  # type: ignore[union-attr]
                self._pick_and_go(req)  # nothing was sent: any method may try another endpoint
                return
            self._fail(errors.UpstreamRefused(f"cannot connect to {pool.address}:{pool.port}: {exc}"))
            return
        conn = task.result()
        if self.active is not req or self.closed:
            pool.release(conn, monotonic())  # the client left; the connection is still good
            return
        conn.reused = False
        self._send(req, conn)

    def _send(self, req: Request, conn: UpstreamConnection) -> None:
        """Write the request head and whatever body has arrived, in one write when possible."""
        self.upstream = conn
        conn.lend(self, req.method == b"HEAD")
        if self.writing_paused:
            conn.transport.pause_reading()
        parts = [req.method, b" ", req.url, b" HTTP/1.1\r\n", *req.head]
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
            self.transport.write(CONTINUE)
        if req.complete or not req.has_body:
            # (A bodiless request is as good as complete: its message end is a formality.)
            self.phase = WAIT
            rule = req.rule
            timeout = (rule.backend_timeout if rule is not None else None) or self.settings.upstream_response_timeout
            self.deadline = (req.started if req.attempts == 0 else monotonic()) + timeout
        else:
            self.phase = BODY
            self.deadline = monotonic() + self.settings.keepalive_timeout

    def _await_response(self, req: Request, now: float) -> None:
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
        req: Request = self.active  # type: ignore[assignment]
        rule = req.rule
        if rule is not None and rule.retry is not None and rule.retry.should_retry(status, req.retries):
            upstream = self.upstream
            if upstream is not None and req.complete and _replayable(req):
                self._retry(req, upstream)
                return
        # An upstream that answers before the whole body arrived (an early 413, say): the rest of
        # the body cannot be told apart from a next request, so the connection closes afterwards.
        must_close = self.gw.draining or self.close_after or (not req.complete and status != 101 and req.has_body)
        # Consecutive responses on a connection usually carry the same head (until the Date
        # changes): the analysis of the last one is reused, a bytes comparison instead of a parse.
        key = (block, status, req.method, req.version, req.keep_alive, must_close)
        memo = self.resp_memo
        mods = self.resp_mods
        if mods is not None:
            # ResponseHeaderModifier of the rule, then of the backendRef: edited field by field.
            fields = split_fields(block)
            for modifier in mods:
                if modifier is not None:
                    modifier.apply(fields)
            block = b"\r\n" + b"".join(b"%b: %b\r\n" % field for field in fields)
            head = build_response_head_raw(status, block, req, must_close)
        elif memo is not None and memo[0] == key:
            head = memo[1]
        else:
            head = build_response_head_raw(status, block, req, must_close)
            self.resp_memo = (key, head) if head.cacheable else None
        self.resp_head = head
        self.status = status
        self.framing = head.framing
        self.close_after = head.close
        out = self.out
        if head.request_id_at:
            out.append(head.parts[0])
            out.append(req.request_id)
            out.append(head.parts[1])
        else:
            out.extend(head.parts)
        self.phase = RESPONSE  # its idle deadline is set by flush() if the body is still coming

    def _retry(self, req: Request, rejected: UpstreamConnection | None, reason: str = "status") -> None:
        """GEP-1731: drop a response whose status the rule retries, and try again after the backoff."""
        self.upstream = None
        if rejected is not None:
            rejected.abort()  # its body is not wanted; the connection cannot be reused mid-response
        retry = req.rule.retry  # type: ignore[union-attr]
        delay = retry.delay(req.retries)
        req.retries += 1
        req.attempts += 1
        self.gw.metrics.inc("gw_upstream_retries_total", reason=reason)
        req.pending_body = list(req.replay or ())
        req.body_buffered = sum(map(len, req.pending_body))
        req.body_sent = 0
        self.phase = CONNECT
        self.deadline = monotonic() + delay + self.settings.upstream_connect_timeout
        if delay > 0:
            self.loop.call_later(delay, self._retry_now, req)
        else:
            self._retry_now(req)

    def _retry_now(self, req: Request) -> None:
        if not self.closed and self.active is req:
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
        req: Request = self.active  # type: ignore[assignment]
        self.upstream = None
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
            self.deadline = monotonic() + self.settings.upstream_response_timeout

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
            if conn.reused and not conn.got_bytes and req.idempotent and _replayable(req):
                # A keep-alive connection the upstream had closed just as we reused it: the
                # request never reached it, so one retry on a fresh connection is safe.
                self.gw.metrics.inc("gw_upstream_retries_total", reason="stale-connection")
                req.pending_body = list(req.replay or ())
                req.body_buffered = sum(map(len, req.pending_body))
                req.body_sent = 0
                req.attempts += 1
                self._connect(req, conn.pool)
                return
            self._fail(errors.UpstreamProtocolError("upstream closed the connection without a response"))
            return
        if self.resp_head.until_close and not conn.message_done:
            self.upstream_complete(conn)  # a close-delimited body ends with the connection
            return
        self._abort(req, "upstream connection lost mid-response")

    def upstream_broken(self, conn: UpstreamConnection, detail: str) -> None:
        """The upstream sent something that is not HTTP/1.1: drop it, answer 502 if we still can."""
        if self.upstream is conn:
            self.upstream = None
        conn.abort()
        self.gw.metrics.inc("gw_upstream_protocol_errors_total")
        req = self.active
        if req is None:
            return
        if self.resp_head is None:
            self._fail(errors.UpstreamProtocolError(detail))
        else:
            self._abort(req, detail)

    # -- upgrades (WebSocket) --------------------------------------------------------------------

    def _client_upgrade(self, rest: bytes) -> None:
        """The parser stopped after an upgrade request; hold what follows until the upstream answers."""
        req = self.active if self.active is not None else (self.queue[-1] if self.queue else None)
        if req is not None and req.upgrade:
            self.early_data += rest
            self.pause_reading(PAUSE_TUNNEL)
        else:
            # An upgrade we do not proxy (h2c, …): served as plain HTTP; keep parsing.
            self._new_parsers()
            if rest:
                self.data_received(rest)

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

    def _finish(self, req: Request, status: int, now: float = 0.0) -> None:
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
        req: Request = self.active  # type: ignore[assignment]
        upstream = self.upstream
        if error.attempt_failed and self.resp_head is None and _may_retry(req, error):
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
            self.gw.metrics.inc("gw_proxy_errors_total", kind=error.kind)
        close = error.close or (req.has_body and not req.complete) or not req.keep_alive or self.gw.draining
        self.close_after = close
        self.framing = NO_BODY
        self.out.clear()
        self.transport.write(
            problem_response(error, req.request_id, close=close, head_only=req.method == b"HEAD", version=req.version)
        )
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
        request_id = req.request_id if req is not None and req.request_id else self.gw.next_request_id()
        self.transport.write(problem_response(error, request_id, close=True))
        if req is not None:
            req.request_id = request_id
            self._record(req, error.status)
        else:
            self.gw.no_route_stats.record(error.status, 0.0)
        self._close()

    def _abort(self, req: Request, detail: str) -> None:
        """The response was already under way and cannot be completed: reset the client connection,
        so a truncated body is never presented as complete."""
        self.gw.metrics.inc("gw_upstream_resets_total")
        self._record(req, 502 if self.status < 500 else self.status, error=detail)
        self.active = None
        upstream = self.upstream
        if upstream is not None:
            self.upstream = None
            upstream.abort()
        self.closed = True
        self.out.clear()
        self.transport.abort()

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
            self.gw.metrics.inc("gw_timeouts_total", kind="request")
            self._fail(errors.RouteTimeout("route request timeout exceeded"))
            return
        if self.deadline > now:
            return
        if phase == IDLE:
            self._close()
        elif phase == HEAD:
            self.gw.metrics.inc("gw_timeouts_total", kind="header")
            if self.active is None:
                self._reject(errors.RequestTimeout("request head not received in time"))
        elif phase == BODY:
            self.gw.metrics.inc("gw_timeouts_total", kind="body")
            self._fail(errors.RequestTimeout("request body not received in time"))
        elif phase == CONNECT:
            self.gw.metrics.inc("gw_timeouts_total", kind="connect")
            self._fail(errors.UpstreamTimeout("upstream connect timeout"))
        elif phase == WAIT:
            self.gw.metrics.inc("gw_timeouts_total", kind="response")
            self._fail(errors.UpstreamTimeout("upstream response timeout"))
        elif phase == RESPONSE:
            self.gw.metrics.inc("gw_timeouts_total", kind="response-body")
            self._abort(self.active, "upstream stalled mid-response")  # type: ignore[arg-type]
        elif phase == TUNNEL:
            self._close()

    def crash(self, exc: BaseException) -> None:
        """Last resort for a bug: drop this connection only, say why, keep the worker serving."""
        import traceback

        traceback.print_exception(exc)
        self.gw.metrics.inc("gw_internal_errors_total")
        self.closed = True
        if self.upstream is not None:
            self.upstream.abort()
            self.upstream = None
        self.transport.abort()

    # -- telemetry --------------------------------------------------------------------------------

    def _record(self, req: Request, status: int, now: float = 0.0, error: str | None = None) -> float:
        """Count the exchange in the route's metrics and the access log; returns the time used."""
        if not now:
            now = monotonic()
        duration = now - req.started
        rule = req.rule
        stats = rule.stats if rule is not None and rule.stats is not None else self.gw.no_route_stats
        stats.record(status, duration)
        log = self.gw.access_log
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
                    path=req.url.decode("latin-1"),
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
                    b"," + members(error=error) if error else b"",
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

    __slots__ = ("on_body", "on_headers_complete", "on_message_complete")

    def __init__(self, conn: ClientConnection) -> None:
        self.on_headers_complete = conn.on_raw_headers_complete
        self.on_body = conn.on_body
        self.on_message_complete = conn.on_message_complete


_PROTOCOLS = {b"1.1": "HTTP/1.1", b"1.0": "HTTP/1.0"}


def _field(fields: list[tuple[bytes, bytes]], lname: bytes) -> bytes | None:
    """The first value of a field (name in lower case), or None."""
    for name, value in fields:
        if name.lower() == lname:
            return value
    return None


class _AddFields:
    """A response edit that appends fixed fields (the CORS headers of an actual request)."""

    __slots__ = ("fields",)

    def __init__(self, fields: list[tuple[bytes, bytes]]) -> None:
        self.fields = fields

    def apply(self, headers: list[tuple[bytes, bytes]]) -> None:
        headers.extend(self.fields)


# The two usual versions, looked up here rather than in gw.proxy.request: Python 3.11 compiles a
# method call on a name bound by `from … import` as LOAD_ATTR (a bound method object per call,
# ~500 instructions a request measured with callgrind) instead of LOAD_METHOD.
_VERSIONS = {"1.1": b"1.1", "1.0": b"1.0"}


def _end_mirrors(mirrors: list[MirrorRequest]) -> None:
    for mirror in mirrors:
        mirror.end()


def _replayable(req: Request) -> bool:
    return not req.has_body or (req.replay is not None and req.complete)


def _may_retry(req: Request, error: ProxyError) -> bool:
    """A failed attempt (refused, reset, timed out) is retried when the rule's retry allows it.

    A refused connection is retried whatever `codes` says (GEP-1731: implementations SHOULD, and
    the upstream saw nothing); a lost connection or a response timeout only when its status
    (502, 504) is one of the codes, since the upstream may have acted on the request.
    """
    rule = req.rule
    if rule is None or rule.retry is None or not req.complete or not _replayable(req):
        return False
    retry = rule.retry
    return req.retries < retry.attempts and (isinstance(error, errors.UpstreamRefused) or error.status in retry.codes)
