"""gw's error hierarchy: each error is one HTTP status, answered as RFC 9457 problem+json."""

from __future__ import annotations

import orjson

_REASONS = {
    400: b"Bad Request",
    401: b"Unauthorized",
    403: b"Forbidden",
    404: b"Not Found",
    408: b"Request Timeout",
    413: b"Content Too Large",
    414: b"URI Too Long",
    417: b"Expectation Failed",
    421: b"Misdirected Request",
    429: b"Too Many Requests",
    431: b"Request Header Fields Too Large",
    500: b"Internal Server Error",
    501: b"Not Implemented",
    502: b"Bad Gateway",
    503: b"Service Unavailable",
    504: b"Gateway Timeout",
    505: b"HTTP Version Not Supported",
}


def reason(status: int) -> bytes:
    return _REASONS.get(status, b"Unknown")


class ProxyError(Exception):
    """An error the gateway answers itself. Subclasses fix the status and the problem type."""

    status = 500
    kind = "internal-error"
    close = False  # the connection cannot be trusted after this error: answer and close it
    attempt_failed = False  # one upstream attempt failed: a rule's retry may try again
    fields: list[tuple[bytes, bytes]] = []  # extra response fields (Retry-After, RateLimit)

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class InternalError(ProxyError):
    """A bug in gw (a phase raised): the exchange gets a 500, the worker serves on."""


class BadRequest(ProxyError):
    status, kind, close = 400, "bad-request", True


class RequestTimeout(ProxyError):
    status, kind, close = 408, "request-timeout", True


class BodyTooLarge(ProxyError):
    status, kind, close = 413, "body-too-large", True


class UriTooLong(ProxyError):
    status, kind, close = 414, "uri-too-long", True


class ExpectationFailed(ProxyError):
    status, kind, close = 417, "expectation-failed", True


class HeadersTooLarge(ProxyError):
    status, kind, close = 431, "headers-too-large", True


class NoRoute(ProxyError):
    status, kind = 404, "no-route"


class Misdirected(ProxyError):
    status, kind = 421, "misdirected-request"


class RouteMisconfigured(ProxyError):
    status, kind = 500, "route-misconfigured"


class MethodNotImplemented(ProxyError):
    status, kind, close = 501, "not-implemented", True


class VersionNotSupported(ProxyError):
    """A request line in HTTP/1 syntax with another major version (HTTP/2.0, HTTP/0.9): RFC 9110 §15.6.6."""

    status, kind, close = 505, "http-version-not-supported", True


class UpstreamRefused(ProxyError):
    status, kind = 502, "upstream-connect-failed"
    attempt_failed = True


class UpstreamTLSFailed(UpstreamRefused):
    """No verified TLS connection to the endpoint (BackendTLSPolicy): a refused connection in every
    respect (another endpoint is tried, the upstream saw nothing), told apart in the problem type,
    gw_proxy_errors_total and the log, since its cure is a certificate or a policy, not a restart."""

    kind = "upstream-tls-failed"


class UpstreamProtocolError(ProxyError):
    status, kind = 502, "upstream-protocol-error"
    attempt_failed = True


class NoEndpoint(ProxyError):
    status, kind = 503, "no-healthy-endpoint"


class Overloaded(ProxyError):
    status, kind, close = 503, "overloaded", True


class CircuitOpen(ProxyError):
    """The backend's circuit is open (a BackendTrafficPolicy's circuitBreaker): answered without
    touching it, with Retry-After the seconds until it may take trial calls."""

    status, kind = 503, "circuit-open"

    def __init__(self, detail: str, retry_after: int) -> None:
        super().__init__(detail)
        self.fields = [(b"Retry-After", b"%d" % max(1, retry_after))]


class BackendOverflow(ProxyError):
    """A circuitBreaker concurrency threshold (maxParallelRequests, maxPendingRequests,
    maxConnections) is reached: Envoy's overflow, answered at once rather than queued."""

    status, kind = 503, "backend-overflow"


class RateLimited(ProxyError):
    """A RateLimitPolicy refused the request: 429, or 503 when its counter cannot be read (failureMode: Closed)."""

    status, kind = 429, "rate-limited"

    def __init__(self, detail: str, status: int, fields: list[tuple[bytes, bytes]]) -> None:
        Exception.__init__(self, detail)  # (ProxyError's, without two super() calls: one per refusal)
        self.detail = detail
        self.fields = fields
        if status != 429:
            self.status, self.kind = status, "rate-limit-unavailable"


class Unauthorized(ProxyError):
    """A SecurityPolicy's authentication found no valid credential: 401, the same answer whichever
    part of a credential was wrong (with WWW-Authenticate where the scheme has one)."""

    status, kind = 401, "unauthorized"

    def __init__(self, detail: str, fields: list[tuple[bytes, bytes]] | None = None) -> None:
        super().__init__(detail)
        self.fields = fields or []


class Forbidden(ProxyError):
    """A SecurityPolicy's authorization denied the request: 403."""

    status, kind = 403, "forbidden"


class AuthOverloaded(ProxyError):
    """Password hashes to verify are queued past the worker's bound (a flood of new credentials):
    the gateway cannot check this one now, so it says so with Retry-After rather than queue it."""

    status, kind = 503, "auth-overloaded"
    fields = [(b"Retry-After", b"1")]


class AuthServiceFailed(ProxyError):
    """An external authorization service gave no answer (unreachable, timed out, a 5xx): the request
    is refused with the policy's statusOnError (403 unless set), as Envoy's ext_authz fails closed."""

    status, kind = 403, "auth-service-failed"

    def __init__(self, detail: str, status: int) -> None:
        super().__init__(detail)
        self.status = status


class UpstreamTimeout(ProxyError):
    status, kind = 504, "upstream-timeout"
    attempt_failed = True


# What JSON carries as it is: a request id made only of these (gw's own ids and the tokens it accepts
# from clients, gw.proxy.request) goes into the problem document without an encoder's pass.
_PLAIN_ID = b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ=:/@"
# Per problem kind, what every answer of it shares: (status, head up to the Content-Length value,
# document up to the detail). A refusal repeated under a flood formats only what differs.
_FIXED: dict[str, tuple[int, bytes, bytes]] = {}
CLOSE_END = b"Connection: close\r\n\r\n"
KEEP_ALIVE_END = b"Connection: keep-alive\r\n\r\n"  # HTTP/1.0 closes unless told otherwise


def _fixed(kind: str, status: int) -> tuple[int, bytes, bytes]:
    title = reason(status)
    document = orjson.dumps({"type": "urn:gw:problem:" + kind, "title": title.decode(), "status": status})
    fixed = _FIXED[kind] = (
        status,
        b"HTTP/1.1 %d %b\r\nContent-Type: application/problem+json\r\nContent-Length: " % (status, title),
        document[:-1] + b',"detail":',
    )
    return fixed


def problem_response(
    error: ProxyError,
    request_id: bytes,
    *,
    close: bool,
    head_only: bool = False,
    version: bytes = b"1.1",
    trace_id: bytes = b"",
) -> tuple[bytes, int]:
    """A complete HTTP response carrying an RFC 9457 problem document for `error`, and how many
    content bytes it sends (the access log's bytes_out: none when `head_only`). `trace_id`: the
    W3C trace the request belongs to (hex), a `trace_id` member when there is one."""
    status = error.status
    fixed = _FIXED.get(error.kind)
    if fixed is None or fixed[0] != status:
        fixed = _fixed(error.kind, status)
    if request_id.isalnum() or not request_id.translate(None, _PLAIN_ID):
        quoted_id = b'"%b"}' % request_id
    else:
        quoted_id = orjson.dumps(request_id.decode("latin-1")) + b"}"
    if trace_id:  # (hex digits: nothing to escape)
        quoted_id = quoted_id[:-1] + b',"trace_id":"%b"}' % trace_id
    detail = orjson.dumps(error.detail)
    document = fixed[2]
    length = len(document) + len(detail) + 14 + len(quoted_id)  # 14: ',"request_id":'
    end = CLOSE_END if close else (KEEP_ALIVE_END if version == b"1.0" else b"\r\n")
    fields = error.fields
    if fields:  # (most often one: a refusal's Retry-After)
        added = b"%b: %b\r\n" % fields[0] if len(fields) == 1 else b"".join([b"%b: %b\r\n" % f for f in fields])
        end = added + end
    id_field = b"X-Request-ID: %b\r\n" % request_id if request_id else b""
    if head_only:
        return b"%b%d\r\n%b%b" % (fixed[1], length, id_field, end), 0
    return b"".join(
        (fixed[1], b"%d\r\n" % length, id_field, end, document, detail, b',"request_id":', quoted_id)
    ), length


class PhaseTimeout(ProxyError):
    """A phase that waited (on Redis, an auth server) did not decide in time: no attempt was made, so
    no retry may follow (a retry would skip the phases after it)."""

    status, kind = 504, "phase-timeout"


class RouteTimeout(UpstreamTimeout):
    """`timeouts.request` spans every attempt (GEP-1742): when it passes, no retry follows."""

    attempt_failed = False
