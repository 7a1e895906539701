"""gw's error hierarchy: each error is one HTTP status, answered as RFC 9457 problem+json."""

from __future__ import annotations

import orjson

_REASONS = {
    400: b"Bad Request",
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


class UpstreamProtocolError(ProxyError):
    status, kind = 502, "upstream-protocol-error"
    attempt_failed = True


class NoEndpoint(ProxyError):
    status, kind = 503, "no-healthy-endpoint"


class Overloaded(ProxyError):
    status, kind, close = 503, "overloaded", True


class RateLimited(ProxyError):
    """A RateLimitPolicy refused the request: 429, or 503 when its counter cannot be read (failureMode: Closed)."""

    status, kind = 429, "rate-limited"

    def __init__(self, detail: str, status: int, fields: list[tuple[bytes, bytes]]) -> None:
        super().__init__(detail)
        self.fields = fields
        if status != 429:
            self.status, self.kind = status, "rate-limit-unavailable"


class UpstreamTimeout(ProxyError):
    status, kind = 504, "upstream-timeout"
    attempt_failed = True


def problem_response(
    error: ProxyError, request_id: bytes, *, close: bool, head_only: bool = False, version: bytes = b"1.1"
) -> tuple[bytes, int]:
    """A complete HTTP response carrying an RFC 9457 problem document for `error`, and how many
    content bytes it sends (the access log's bytes_out: none when `head_only`)."""
    status = error.status
    body = orjson.dumps(
        {
            "type": "urn:gw:problem:" + error.kind,
            "title": reason(status).decode(),
            "status": status,
            "detail": error.detail,
            "request_id": request_id.decode("latin-1"),
        }
    )
    head = [
        b"HTTP/1.1 %d %s\r\n" % (status, reason(status)),
        b"Content-Type: application/problem+json\r\n",
        b"Content-Length: %d\r\n" % len(body),
        b"X-Request-ID: " + request_id + b"\r\n" if request_id else b"",
        *(b"%b: %b\r\n" % field for field in error.fields),
        b"Connection: close\r\n" if close else (b"Connection: keep-alive\r\n" if version == b"1.0" else b""),
        b"\r\n",
    ]
    if head_only:
        return b"".join(head), 0
    head.append(body)
    return b"".join(head), len(body)


class PhaseTimeout(ProxyError):
    """A phase that waited (on Redis, an auth server) did not decide in time: no attempt was made, so
    no retry may follow (a retry would skip the phases after it)."""

    status, kind = 504, "phase-timeout"


class RouteTimeout(UpstreamTimeout):
    """`timeouts.request` spans every attempt (GEP-1742): when it passes, no retry follows."""

    attempt_failed = False
