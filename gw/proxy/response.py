"""The response head a client gets: upstream fields filtered, framing chosen for the client."""

from __future__ import annotations

import re
from http import HTTPStatus
from typing import TYPE_CHECKING

from gw.proxy.request import CRLF, HOP_BY_HOP, drop_field, field_value, split_fields

if TYPE_CHECKING:
    from gw.proxy.exchange import Exchange

# How the response body is framed towards the client.
NO_BODY = 0  # HEAD, 1xx, 204, 304
LENGTH = 1  # upstream Content-Length passed through; body bytes copied as they come
CHUNKED = 2  # upstream chunked or close-delimited, client HTTP/1.1: re-chunked
UNTIL_CLOSE = 3  # upstream without length, client HTTP/1.0: body ends when we close

STATUS_LINES: dict[int, bytes] = {
    s.value: b"HTTP/1.1 %d %s\r\n" % (s.value, s.phrase.encode()) for s in HTTPStatus
}


def status_line(status: int) -> bytes:
    line = STATUS_LINES.get(status)
    return line if line is not None else b"HTTP/1.1 %d Unknown\r\n" % status


class ResponseHead:
    """What the proxy decided about one response: the bytes of its head and how to frame the body."""

    __slots__ = ("cacheable", "close", "framing", "parts", "request_id_at", "status", "until_close")

    def __init__(
        self,
        status: int,
        parts: list[bytes],
        framing: int,
        close: bool,
        until_close: bool,
        *,
        request_id_at: bool = False,
        cacheable: bool = False,
    ) -> None:
        self.status = status
        # With request_id_at, parts is [before, after]: the request id goes between them, so the
        # same head serves every request (and can be reused for the next response).
        self.parts = parts
        self.request_id_at = request_id_at
        self.cacheable = cacheable
        self.framing = framing
        self.close = close
        # The upstream gave neither length nor chunking: its body ends when it closes.
        self.until_close = until_close


# Hop-by-hop fields (RFC 9110 §7.6.1) as needles for the lower-cased header block; Connection and
# Transfer-Encoding are handled on their own.
_RESPONSE_HOP = (
    b"\r\nkeep-alive:",
    b"\r\nproxy-connection:",
    b"\r\nproxy-authenticate:",
    b"\r\nproxy-authorization:",
    b"\r\nte:",
    b"\r\ntrailer:",
    b"\r\nupgrade:",
)
_RESPONSE_HOP_ANY = re.compile(rb"\r\n(?:keep-alive|proxy-[a-z]*|te|trailer|upgrade):")
_PLAIN_CONNECTION = frozenset({b"keep-alive", b"close", b""})


def build_response_head_raw(status: int, block: bytes, req: Exchange, must_close: bool) -> ResponseHead:
    """The client's response head from the upstream's header block (CRLF first and last).

    Hop-by-hop lines are cut out of the bytes (searching the lower-cased block, no Python step
    per field); a Connection naming further fields, or a 101, takes the field-by-field path.
    `must_close`: the client connection closes after this response whatever the client asked.
    """
    low = block.lower()
    has_connection = low.find(b"\r\nconnection:") >= 0
    if status == 101 or (
        has_connection
        and (
            low.count(b"\r\nconnection:") > 1
            or any(t.strip() not in _PLAIN_CONNECTION for t in field_value(low, low, b"\r\nconnection:").split(b","))
        )
    ):
        return _by_field(status, split_fields(block), req, must_close)
    if has_connection:
        block, low = drop_field(block, low, b"\r\nconnection:")
    chunked_seen = low.find(b"\r\ntransfer-encoding:") >= 0
    if chunked_seen:
        block, low = drop_field(block, low, b"\r\ntransfer-encoding:")
    if _RESPONSE_HOP_ANY.search(low) is not None:  # rare: one scan instead of seven finds
        for needle in _RESPONSE_HOP:
            if low.find(needle) >= 0:
                block, low = drop_field(block, low, needle)
    return _framed(status, block[2:], low, req, must_close, chunked_seen)


def _by_field(status: int, headers: list[tuple[bytes, bytes]], req: Exchange, must_close: bool) -> ResponseHead:
    """The general path: drop hop-by-hop fields and every field named in Connection."""
    named: set[bytes] = set()
    upgrade_value = b""
    chunked_seen = False
    for name, value in headers:
        lname = name.lower()
        if lname == b"connection":
            named.update(t.strip().lower() for t in value.split(b","))
        elif lname == b"upgrade":
            upgrade_value = value
        elif lname == b"transfer-encoding":
            chunked_seen = True
    drop = HOP_BY_HOP | named
    kept = b"".join(b"%b: %b\r\n" % (n, v) for n, v in headers if n.lower() not in drop)
    if status == 101:
        head = b"%b%bX-Request-ID: %b\r\nConnection: Upgrade\r\nUpgrade: %b\r\n\r\n" % (
            status_line(101), kept, req.request_id, upgrade_value
        )
        return ResponseHead(101, [head], NO_BODY, False, False)
    return _framed(status, kept, b"\r\n" + kept.lower(), req, must_close, chunked_seen)


def _framed(
    status: int, kept: bytes, low: bytes, req: Exchange, must_close: bool, chunked_seen: bool
) -> ResponseHead:
    """Choose the client framing and finish the head around the kept fields.

    low: the kept fields lower-cased, with a leading CRLF so every field name follows one.
    """
    length_seen = low.find(b"\r\ncontent-length:") >= 0
    add_request_id = low.find(b"\r\nx-request-id:") < 0
    close = not req.keep_alive or must_close
    tail: list[bytes] = []
    if req.method == b"HEAD" or status < 200 or status == 204 or status == 304:
        framing = NO_BODY
    elif length_seen:
        framing = LENGTH
    elif req.version == b"1.0":
        framing, close = UNTIL_CLOSE, True
    else:
        framing = CHUNKED
        tail.append(b"Transfer-Encoding: chunked\r\n")
    if close:
        tail.append(b"Connection: close\r\n\r\n")
    elif req.version == b"1.0":
        tail.append(b"Connection: keep-alive\r\n\r\n")
    else:
        tail.append(CRLF)
    until_close = framing != NO_BODY and not length_seen and not chunked_seen
    head = status_line(status) + kept
    after = b"".join(tail)
    if add_request_id:
        # [before, after]: the request id goes between, so the head can serve the next response too.
        parts = [head + b"X-Request-ID: ", CRLF + after]
    else:
        parts = [head + after]
    return ResponseHead(status, parts, framing, close, until_close, request_id_at=add_request_id, cacheable=True)
