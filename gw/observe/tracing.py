"""W3C Trace Context and spans: a sampled request's server span and its upstream attempts, exported as OTLP/JSON.

The per-request side is a few bytes operations on the event loop: read the client's `traceparent`,
decide (parent-based, then GW_TRACE_SAMPLE), and, for a sampled request only, keep a small Span
that ends as one tuple appended to a bounded deque. A daemon thread takes batches from the deque,
encodes them as OTLP/JSON (the OTLP/HTTP JSON mapping: hex ids, nanosecond strings) and POSTs them
with httpx; the event loop never waits on the collector. When the deque is full, or the collector
is slow, down or refuses, spans are dropped and counted (gw_trace_spans_dropped_total), never queued
without bound.
"""

from __future__ import annotations

import math
import random
import re
import sys
import threading
import time
from collections import deque
from typing import Any

import orjson

QUEUE_SPANS = 4096  # finished requests (each a server span and its attempts) waiting for the exporter
BATCH_SPANS = 512  # requests per POST
FLUSH_INTERVAL = 0.5  # seconds between exports when fewer than BATCH_SPANS are waiting
KIND_SERVER, KIND_CLIENT = 2, 3  # OTLP SpanKind
STATUS_ERROR = 2  # OTLP Status.code
_ODD = b"13579bdf"  # a flags byte's last hex digit with the sampled bit set
_ZERO_TRACE = b"0" * 32
_ZERO_SPAN = b"0" * 16
TRACEPARENT = b"traceparent"


# version-trace id-parent id-flags, lower-case hex, and what a later version appends after a dash;
# the optional whitespace of a field value around it. One regex match: the hand-written checks it
# replaced cost three times as much, and every request of a traced caller parses one.
_TRACEPARENT = re.compile(rb"[ \t]*([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-[^\r\n]*?)?[ \t]*")


def parse_traceparent(value: bytes) -> tuple[bytes, bytes, bool] | None:
    """(trace id, parent span id, sampled) of a `traceparent` value (W3C Trace Context §3.2), or None
    when it is not one (the request then starts a trace of its own, as the spec asks)."""
    match = _TRACEPARENT.fullmatch(value)
    if match is None:
        return None
    version, trace_id, parent_id, flags, more = match.groups()
    if version == b"ff" or (more is not None and version == b"00"):
        return None  # (a later version may append fields after a dash: its first four are read)
    if trace_id == _ZERO_TRACE or parent_id == _ZERO_SPAN:
        return None
    return trace_id, parent_id, flags[1] in _ODD


def find_traceparent(text: bytes) -> bytes | None:
    """The value of the traceparent field in a header block (its lines end with CRLF; the first
    may start the text); None without one. Its name as the W3C spells it or capitalised (Go's
    canonical form), as the connection's fast path sets it apart (gw.proxy.downstream): a name in
    another mix of cases is not read, and is forwarded as any field."""
    at = text.find(b"raceparent:")
    if at < 0:
        return None
    start = at - 1
    if not (start == 0 or text[start - 1 : start] == b"\n") or text[start : start + 1] not in (b"t", b"T"):
        return None
    end = text.find(b"\r\n", at)
    return text[at + 11 : end if end >= 0 else len(text)]


def cut_traceparent(text: bytes) -> bytes:
    """The header block without its traceparent line(s): gw sends its own."""
    low = text.lower()
    at = low.find(TRACEPARENT + b":")
    while at >= 0:
        if at == 0 or low[at - 1 : at] == b"\n":
            end = low.find(b"\r\n", at)
            end = len(text) if end < 0 else end + 2
            text, low = text[:at] + text[end:], low[:at] + low[end:]
            at = low.find(TRACEPARENT + b":", at)
        else:
            at = low.find(TRACEPARENT + b":", at + 1)
    return text


class Span:
    """A sampled request's server span while it is under way, and its upstream attempts."""

    __slots__ = ("attempts", "parent_id", "span_id", "trace_id")

    def __init__(self, trace_id: bytes, span_id: bytes, parent_id: bytes) -> None:
        self.trace_id = trace_id
        self.span_id = span_id
        self.parent_id = parent_id
        # [span id, start (monotonic), end (monotonic, 0: still open), address, port, error or ""]
        self.attempts: list[list[Any]] = []

    def attempt(self, tracer: Tracer, address: str, port: int) -> bytes:
        """A new upstream attempt: its CLIENT span opens, and the traceparent line it sends."""
        now = time.monotonic()
        attempts = self.attempts
        if attempts and not attempts[-1][2]:
            attempts[-1][2] = now  # the attempt before it was given up (a retry)
            attempts[-1][5] = attempts[-1][5] or "retried"
        span_id = tracer.new_span_id()
        attempts.append([span_id, now, 0.0, address, port, ""])
        return b"traceparent: 00-%b-%b-01\r\n" % (self.trace_id, span_id)

    def attempt_failed(self, reason: str) -> None:
        if self.attempts and not self.attempts[-1][2]:
            self.attempts[-1][2] = time.monotonic()
            self.attempts[-1][5] = reason


class Tracer:
    """One worker's tracing: the sampling decision, span ids, and the exporter's queue."""

    def __init__(self, endpoint: str, ratio: float, timeout: float, metrics: Any, service: str = "gw") -> None:
        self.url = endpoint if endpoint.rstrip("/").endswith("/v1/traces") else endpoint.rstrip("/") + "/v1/traces"
        self.ratio = ratio
        self.timeout = timeout
        self.service = service
        self.queue: deque[tuple[Any, ...]] = deque()
        self.flush_interval = FLUSH_INTERVAL
        self.flushes = 0  # rounds of the exporter: a wake-up and what it sent
        self.random = random.Random()
        # Wall-clock nanoseconds of a monotonic instant: spans carry wall time, requests monotonic.
        self.wall_offset = time.time_ns() - time.monotonic_ns()
        self.dropped_full = metrics.tally("gw_trace_spans_dropped_total", reason="queue-full")
        self.dropped_export = metrics.tally("gw_trace_spans_dropped_total", reason="export-failed")
        self.exported = metrics.tally("gw_trace_spans_exported_total")
        self.wake = threading.Event()
        self.stopping = False
        self.thread: threading.Thread | None = None

    # -- per request (the event loop) -------------------------------------------------------

    def new_span_id(self) -> bytes:
        return b"%016x" % (self.random.getrandbits(64) or 1)

    def gap(self, ratio: float | None = None) -> int:
        """Requests until the next that starts a trace without a parent: geometric with the ratio
        (GW_TRACE_SAMPLE, or a rule's own), a Bernoulli draw per request made once per start
        instead; 0 when none does (a rule's countdown goes on below zero: it never reaches a start)."""
        if ratio is None:
            ratio = self.ratio
        if ratio >= 1.0:
            return 1
        if ratio <= 0.0:
            return 0
        return int(math.log(1.0 - self.random.random()) / math.log1p(-ratio)) + 1

    def draw(self) -> bool:
        """Whether a request no rule serves starts a trace (GW_TRACE_SAMPLE's chance)."""
        return self.random.random() < self.ratio

    def begin(self, req: Any, root: bool) -> Span | None:
        """Read the request's traceparent and decide: a sampled request gets `req.span` (and its
        traceparent line taken out of the forwarded head: each attempt sends gw's own); an unsampled
        one only its client's trace id (`req.trace_id`, for the log), its traceparent forwarded as is.
        `root`: a request without a (valid) parent starts a trace (its rule's countdown, Tracer.gap,
        says so). Returns the span, or None."""
        head = req.head
        if len(head) == 3:
            # The fast path's head: [forward, request id, CRLF or "\r\ntraceparent: …\r\n"] (the
            # connection sets a traceparent line apart from the rest of the head before analysing it).
            line = head[2]
            if len(line) == 2:
                value = None
            else:
                value = line[line.find(b":") + 1 : -2]
        else:
            line = b""
            value = find_traceparent(b"".join(head))
        parent = parse_traceparent(value) if value is not None else None
        if parent is not None:
            trace_id, parent_id, sampled = parent
            req.trace_id = trace_id
            if not sampled:
                return None
        else:
            if not root:
                return None  # no trace is started for a request that would not be recorded
            trace_id = b"%032x" % (self.random.getrandbits(128) or 1)
            parent_id = b""
            req.trace_id = trace_id
        if value is not None:  # the client's traceparent (or an invalid one) is replaced by gw's
            if len(line) > 2:
                req.head = [head[0], head[1], b"\r\n"]
            else:
                req.head = [cut_traceparent(b"".join(head))]
        span = req.span = Span(trace_id, self.new_span_id(), parent_id)
        return span

    def end(self, req: Any, conn: Any, status: int, now: float, error: str | None) -> None:
        """The exchange is over: its spans join the exporter's queue (or are dropped and counted)."""
        span: Span = req.span
        req.span = None
        queue = self.queue
        if len(queue) >= QUEUE_SPANS:
            self.dropped_full.n += 1 + len(span.attempts)
            return
        for attempt in span.attempts:
            if not attempt[2]:
                attempt[2] = now
        rule = req.rule
        backend = conn.backend if rule is not None and conn.endpoint is not None else None
        identity = req.identity
        queue.append(
            (
                span, req.started, now, status, req.method, req.path, req.host,
                rule.label if rule is not None else "", backend.name if backend is not None else "",
                req.retries, identity.consumer if identity is not None else "",
                _auth_result(rule, identity, status), _limit_result(rule, status, conn.endpoint), error or "",
            )
        )  # fmt: skip
        if len(queue) >= BATCH_SPANS:
            self.wake.set()

    # -- the exporter (its own thread) ------------------------------------------------------

    def start(self) -> None:
        self.thread = threading.Thread(target=self._run, name="gw-trace-export", daemon=True)
        self.thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        """Export what is queued (within `timeout`) and end the thread."""
        self.stopping = True
        self.wake.set()
        if self.thread is not None:
            self.thread.join(timeout)

    def _run(self) -> None:
        import httpx

        with httpx.Client(timeout=self.timeout) as client:
            while True:
                self.wake.wait(self.flush_interval)
                self.wake.clear()
                # Read once: a stop() after the clear wakes the next round, which drains it all.
                stopping = self.stopping
                # What waits goes, and then only full batches: what trickles in during a slow POST
                # waits for the next flush, or sparse sampling (1%) made back-to-back POSTs of a
                # few requests each, every one paying a POST's fixed cost (20 a second, not 2).
                partial = False
                while self.queue and (not partial or len(self.queue) >= BATCH_SPANS or stopping):
                    size = min(BATCH_SPANS, len(self.queue))
                    partial = partial or size < BATCH_SPANS
                    self._post(client, [self.queue.popleft() for _ in range(size)])
                self.flushes += 1
                if stopping:
                    return

    def _post(self, client: Any, batch: list[tuple[Any, ...]]) -> None:
        count = sum(1 + len(record[0].attempts) for record in batch)
        try:
            body = self.encode(batch)
            response = client.post(self.url, content=body, headers={"Content-Type": "application/json"})
            if response.status_code >= 300:
                raise OSError(f"the collector answered {response.status_code}")
        except Exception as exc:  # the collector's trouble costs these spans, never a request
            self.dropped_export.n += count
            if self.dropped_export.n == count:  # said once per worker, not per batch
                print(f"gw: trace export to {self.url} failed: {exc}", file=sys.stderr)
            return
        self.exported.n += count

    def encode(self, batch: list[tuple[Any, ...]]) -> bytes:
        """OTLP/JSON (ExportTraceServiceRequest) of finished requests, formatted as bytes: what a
        client sent (path, host) is escaped by orjson, the rest is ids and numbers. The attributes
        every span has are one format each: at 100% sampling the exporter shares the worker's core
        and GIL."""
        offset = self.wall_offset
        text = _json
        spans: list[bytes] = []
        add = spans.append
        for (span, started, ended, status, method, path, host, route, backend, retries, consumer,
             auth, limit, error) in batch:  # fmt: skip
            trace_id = span.trace_id
            server_id = span.span_id
            attempts = span.attempts
            method_json = text(method.decode("latin-1"))
            attributes = _SERVER % (method_json, text(path), text(host), status, retries)
            more = []
            if route:
                more.append(_STR % (b"gw.route", text(route)))
            if backend:
                more.append(_STR % (b"gw.backend", text(backend)))
            if attempts:
                more.append(_PEER % (text(attempts[-1][3]), attempts[-1][4]))
            if auth:
                more.append(_STR % (b"gw.auth.result", text(auth)))
            if consumer:
                more.append(_STR % (b"user.id", text(consumer)))
            if limit:
                more.append(_STR % (b"gw.ratelimit.result", text(limit)))
            if error:
                more.append(_STR % (b"error.type", text(error)))
            if more:
                attributes += b"," + b",".join(more)
            name = text(f"{method.decode('latin-1')} {route}") if route else method_json
            add(
                _SPAN
                % (
                    trace_id, server_id, b',"parentSpanId":"%b"' % span.parent_id if span.parent_id else b"",
                    name, KIND_SERVER, int(started * 1e9) + offset, int(ended * 1e9) + offset,
                    attributes, _ERROR if status >= 500 else b"",
                )
            )  # fmt: skip
            last = len(attempts) - 1
            for n, (span_id, start, end, address, port, failed) in enumerate(attempts):
                client = _CLIENT % (method_json, text(address), port, text(address), port, n + 1)
                if n == last and not failed:
                    client += b"," + _STATUS % status
                if failed:
                    client += b"," + _STR % (b"error.type", text(failed))
                add(
                    _SPAN
                    % (
                        trace_id, span_id, b',"parentSpanId":"%b"' % server_id, method_json, KIND_CLIENT,
                        int(start * 1e9) + offset, int(end * 1e9) + offset, client,
                        _ERROR if failed or (n == last and status >= 500) else b"",
                    )
                )  # fmt: skip
        return (
            b'{"resourceSpans":[{"resource":{"attributes":[%b]},"scopeSpans":[{"scope":{"name":"gw"},"spans":[%b]}]}]}'
            % (_STR % (b"service.name", text(self.service)), b",".join(spans))
        )

# OTLP/JSON pieces (the protobuf JSON mapping: 64-bit integers as strings, ids as hex).
_SPAN = (
    b'{"traceId":"%b","spanId":"%b"%b,"name":%b,"kind":%d,"startTimeUnixNano":"%d","endTimeUnixNano":"%d",'
    b'"attributes":[%b],"status":{%b}}'
)
_STR = b'{"key":"%b","value":{"stringValue":%b}}'
_INT = b'{"key":"%b","value":{"intValue":"%d"}}'
_SERVER = b",".join(
    [_STR % (b"http.request.method", b"%b"), _STR % (b"url.path", b"%b"), _STR % (b"server.address", b"%b"),
     _INT.replace(b"%b", b"http.response.status_code"), _INT.replace(b"%b", b"gw.retries")]
)  # fmt: skip
_PEER = _STR % (b"network.peer.address", b"%b") + b"," + _INT.replace(b"%b", b"network.peer.port")
_CLIENT = b",".join(
    [_STR % (b"http.request.method", b"%b"), _STR % (b"server.address", b"%b"), _INT.replace(b"%b", b"server.port"),
     _PEER, _INT.replace(b"%b", b"gw.attempt")]
)  # fmt: skip
_STATUS = _INT.replace(b"%b", b"http.response.status_code")
_ERROR = b'"code":2'
_json = orjson.dumps


def _auth_result(rule: Any, identity: Any, status: int) -> str:
    """What a SecurityPolicy decided, as far as the exchange shows it ("" on a rule without one)."""
    if rule is None or getattr(rule, "security", None) is None:
        return ""
    if identity is not None:
        return "authenticated"
    return {401: "unauthenticated", 403: "denied"}.get(status, "allowed")


def _limit_result(rule: Any, status: int, endpoint: Any) -> str:
    """A rate-limited rule's outcome: "over-limit" when gw answered 429 itself, else "allowed"."""
    if rule is None or not getattr(rule, "rate_limit_policies", None):
        return ""
    return "over-limit" if status == 429 and endpoint is None else "allowed"
