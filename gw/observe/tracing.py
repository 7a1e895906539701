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

import random
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
_HEX = b"0123456789abcdef"
_ZERO_TRACE = b"0" * 32
_ZERO_SPAN = b"0" * 16
TRACEPARENT = b"traceparent"


def parse_traceparent(value: bytes) -> tuple[bytes, bytes, bool] | None:
    """(trace id, parent span id, sampled) of a `traceparent` value (W3C Trace Context §3.2), or None
    when it is not one (the request then starts a trace of its own, as the spec asks)."""
    value = value.strip(b" \t")
    if len(value) < 55 or value[2:3] != b"-" or value[35:36] != b"-" or value[52:53] != b"-":
        return None
    version = value[:2]
    if version == b"00":
        if len(value) != 55:
            return None
    elif version == b"ff" or (len(value) > 55 and value[55:56] != b"-"):
        return None  # (a later version may append fields after a dash: its first four are read)
    head = value[:55]
    if head.translate(None, _HEX + b"-") or head.count(b"-") != 3:
        return None
    trace_id, parent_id = head[3:35], head[36:52]
    if trace_id == _ZERO_TRACE or parent_id == _ZERO_SPAN:
        return None
    return trace_id, parent_id, bool(int(head[53:55], 16) & 1)


def find_traceparent(text: bytes) -> bytes | None:
    """The value of the traceparent field in a header block (its lines end with CRLF; the first
    may start the text); None without one. Its name as the W3C spells it, capitalised (Go's
    canonical form) or in capitals: two find() calls, not a lower-cased copy of every head (a name
    in another mix of cases is not read, and is forwarded as any field)."""
    at = text.find(b"raceparent:")
    if at < 0:
        at = text.find(b"RACEPARENT:")
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

    def begin(self, req: Any) -> None:
        """Read the request's traceparent and decide: a sampled request gets `req.span` (and its
        traceparent line taken out of the forwarded head: each attempt sends gw's own); an unsampled
        one only its client's trace id (`req.trace_id`, for the log), its traceparent forwarded as is."""
        head = req.head
        if len(head) == 3:
            # The fast path's head: [forward, request id, CRLF or "\r\ntraceparent: …\r\n"] (the
            # connection sets the usual traceparent line apart from the rest of the head).
            line = head[2]
            value = line[line.find(b":") + 1 : -2] if len(line) > 2 else find_traceparent(head[0])
        else:
            line = b""
            value = find_traceparent(b"".join(head))
        parent = parse_traceparent(value) if value is not None else None
        if parent is not None:
            trace_id, parent_id, sampled = parent
            req.trace_id = trace_id
            if not sampled:
                return
        else:
            ratio = self.ratio
            if not ratio or (ratio < 1.0 and self.random.random() >= ratio):
                return  # no trace is started for a request that would not be recorded
            trace_id = b"%032x" % (self.random.getrandbits(128) or 1)
            parent_id = b""
            req.trace_id = trace_id
        if value is not None:  # the client's traceparent (or an invalid one) is replaced by gw's
            if len(line) > 2:
                req.head = [head[0], head[1], b"\r\n"]
            elif len(head) == 3:
                req.head = [cut_traceparent(head[0]), head[1], head[2]]
            else:
                req.head = [cut_traceparent(b"".join(head))]
        req.span = Span(trace_id, self.new_span_id(), parent_id)

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
                self.wake.wait(FLUSH_INTERVAL)
                self.wake.clear()
                while self.queue:
                    batch = [self.queue.popleft() for _ in range(min(BATCH_SPANS, len(self.queue)))]
                    self._post(client, batch)
                if self.stopping:
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
        """OTLP/JSON (ExportTraceServiceRequest) of finished requests."""
        offset = self.wall_offset
        spans: list[dict[str, Any]] = []
        for (span, started, ended, status, method, path, host, route, backend, retries, consumer,
             auth, limit, error) in batch:  # fmt: skip
            trace_id = span.trace_id.decode()
            method_text = method.decode("latin-1")
            attributes = [
                _attr("http.request.method", method_text),
                _attr("url.path", path),
                _attr("server.address", host),
                _attr("http.response.status_code", status),
                _attr("gw.retries", retries),
            ]
            if route:
                attributes.append(_attr("gw.route", route))
            if backend:
                attributes.append(_attr("gw.backend", backend))
            if span.attempts:
                last = span.attempts[-1]
                attributes.append(_attr("network.peer.address", last[3]))
                attributes.append(_attr("network.peer.port", last[4]))
            if auth:
                attributes.append(_attr("gw.auth.result", auth))
            if consumer:
                attributes.append(_attr("user.id", consumer))
            if limit:
                attributes.append(_attr("gw.ratelimit.result", limit))
            if error:
                attributes.append(_attr("error.type", error))
            server: dict[str, Any] = {
                "traceId": trace_id,
                "spanId": span.span_id.decode(),
                "name": f"{method_text} {route}" if route else method_text,
                "kind": KIND_SERVER,
                "startTimeUnixNano": str(int(started * 1e9) + offset),
                "endTimeUnixNano": str(int(ended * 1e9) + offset),
                "attributes": attributes,
                "status": {"code": STATUS_ERROR} if status >= 500 else {},
            }
            if span.parent_id:
                server["parentSpanId"] = span.parent_id.decode()
            spans.append(server)
            for n, (span_id, start, end, address, port, failed) in enumerate(span.attempts):
                last = n == len(span.attempts) - 1
                client_attributes = [
                    _attr("http.request.method", method_text),
                    _attr("server.address", address),
                    _attr("server.port", port),
                    _attr("network.peer.address", address),
                    _attr("network.peer.port", port),
                    _attr("gw.attempt", n + 1),
                ]
                if last and not failed:
                    client_attributes.append(_attr("http.response.status_code", status))
                if failed:
                    client_attributes.append(_attr("error.type", failed))
                spans.append(
                    {
                        "traceId": trace_id,
                        "spanId": span_id.decode(),
                        "parentSpanId": span.span_id.decode(),
                        "name": method_text,
                        "kind": KIND_CLIENT,
                        "startTimeUnixNano": str(int(start * 1e9) + offset),
                        "endTimeUnixNano": str(int(end * 1e9) + offset),
                        "attributes": client_attributes,
                        "status": {"code": STATUS_ERROR} if failed or (last and status >= 500) else {},
                    }
                )
        return orjson.dumps(
            {
                "resourceSpans": [
                    {
                        "resource": {"attributes": [_attr("service.name", self.service)]},
                        "scopeSpans": [{"scope": {"name": "gw"}, "spans": spans}],
                    }
                ]
            }
        )


def _attr(key: str, value: str | int) -> dict[str, Any]:
    # OTLP/JSON: 64-bit integers are strings (the protobuf JSON mapping).
    if isinstance(value, int):
        return {"key": key, "value": {"intValue": str(value)}}
    return {"key": key, "value": {"stringValue": value}}


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
