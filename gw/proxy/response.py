"""The response head a client gets: upstream fields filtered, framing chosen for the client."""

from __future__ import annotations

from http import HTTPStatus

from gw.proxy.request import COLON, CRLF, HOP_BY_HOP, Request, drop_field, field_value, split_fields

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


def build_response_head(
    status: int, headers: list[tuple[bytes, bytes]], req: Request, must_close: bool
) -> ResponseHead:
    """Filter hop-by-hop fields (RFC 9110 §7.6.1), choose the client framing, add X-Request-ID.

    `must_close`: the client connection closes after this response whatever the client asked.
    """
    parts = [status_line(status)]
    add = parts.extend
    length_seen = False
    request_id_seen = False
    connection_tokens: list[bytes] | None = None
    upgrade_value = b""
    chunked_seen = False
    hop = HOP_BY_HOP
    for name, value in headers:
        lname = name.lower()
        if lname in hop:
            if lname == b"connection":
                tokens = [t.strip().lower() for t in value.split(b",")]
                connection_tokens = tokens if connection_tokens is None else connection_tokens + tokens
            elif lname == b"upgrade":
                upgrade_value = value
            elif lname == b"transfer-encoding":
                chunked_seen = True
            continue
        if lname == b"content-length":
            length_seen = True
        elif lname == b"x-request-id":
            request_id_seen = True
        add((name, COLON, value, CRLF))
    if connection_tokens is not None:
        extra = {t for t in connection_tokens if t not in (b"close", b"keep-alive", b"upgrade", b"")}
        if extra:
            parts = [parts[0]] + [
                p
                for n, v in headers
                if n.lower() not in hop and n.lower() not in extra
                for p in (n, COLON, v, CRLF)
            ]
            add = parts.extend

    if not request_id_seen:
        add((b"X-Request-ID: ", req.request_id, CRLF))

    close = not req.keep_alive or must_close
    if status == 101:
        add((b"Connection: Upgrade\r\nUpgrade: ", upgrade_value, CRLF, CRLF))
        return ResponseHead(status, parts, NO_BODY, False, False)
    if req.method == b"HEAD" or status < 200 or status == 204 or status == 304:
        framing = NO_BODY
    elif length_seen:
        framing = LENGTH
    elif req.version == b"1.0":
        framing = UNTIL_CLOSE
        close = True
    else:
        framing = CHUNKED
        parts.append(b"Transfer-Encoding: chunked\r\n")
    if close:
        parts.append(b"Connection: close\r\n")
    elif req.version == b"1.0":
        parts.append(b"Connection: keep-alive\r\n")
    parts.append(CRLF)
    return ResponseHead(status, parts, framing, close, framing != NO_BODY and not length_seen and not chunked_seen)


# Hop-by-hop fields a response may carry besides Connection and Transfer-Encoding, as needles
# for the lower-cased header block.
_RESPONSE_HOP = (
    b"\r\nkeep-alive:",
    b"\r\nproxy-connection:",
    b"\r\nproxy-authenticate:",
    b"\r\nproxy-authorization:",
    b"\r\nte:",
    b"\r\ntrailer:",
    b"\r\nupgrade:",
)
_PLAIN_CONNECTION = frozenset({b"keep-alive", b"close", b""})


def build_response_head_raw(status: int, block: bytes, req: Request, must_close: bool) -> ResponseHead:
    """`build_response_head` on the header block as received (CRLF first and last), cutting
    hop-by-hop lines out of the bytes; unusual heads take the general path."""
    low = block.lower()
    if status == 101 or (low.find(b"\r\nconnection:") >= 0 and (
        low.count(b"\r\nconnection:") > 1
        or any(t.strip() not in _PLAIN_CONNECTION for t in field_value(low, low, b"\r\nconnection:").split(b","))
    )):
        return build_response_head(status, split_fields(block), req, must_close)
    if low.find(b"\r\nconnection:") >= 0:
        block, low = drop_field(block, low, b"\r\nconnection:")
    chunked_seen = low.find(b"\r\ntransfer-encoding:") >= 0
    if chunked_seen:
        block, low = drop_field(block, low, b"\r\ntransfer-encoding:")
    for needle in _RESPONSE_HOP:
        if low.find(needle) >= 0:
            block, low = drop_field(block, low, needle)
    length_seen = low.find(b"\r\ncontent-length:") >= 0
    add_request_id = low.find(b"\r\nx-request-id:") < 0
    parts = [status_line(status), block[2:]]
    if add_request_id:
        parts.append(b"X-Request-ID: ")
        before = b"".join(parts)
        parts = [CRLF]
    close = not req.keep_alive or must_close
    if req.method == b"HEAD" or status < 200 or status == 204 or status == 304:
        framing = NO_BODY
    elif length_seen:
        framing = LENGTH
    elif req.version == b"1.0":
        framing = UNTIL_CLOSE
        close = True
    else:
        framing = CHUNKED
        parts.append(b"Transfer-Encoding: chunked\r\n")
    if close:
        parts.append(b"Connection: close\r\n\r\n")
    elif req.version == b"1.0":
        parts.append(b"Connection: keep-alive\r\n\r\n")
    else:
        parts.append(CRLF)
    until_close = framing != NO_BODY and not length_seen and not chunked_seen
    joined = b"".join(parts)
    return ResponseHead(
        status,
        [before, joined] if add_request_id else [joined],
        framing,
        close,
        until_close,
        request_id_at=add_request_id,
        cacheable=True,
    )
