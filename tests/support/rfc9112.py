"""A strict reader of HTTP/1.1 byte streams (RFC 9112, 9110, 3986): the reference the desync tests hold gw to.

It splits a stream into the messages its sender framed, and says where and why it stops:
framing exactly as RFC 9112 §6.3 defines it, syntax as the ABNF has it. Where the RFCs let a
recipient choose between leniency and refusal (bare LF, obs-fold, a repeated Content-Length,
whitespace around a chunk extension), it refuses: what it accepts has one reading only. Its
one addition to the RFCs: a length or chunk size of 2^63 or more is an error, since no 64-bit
recipient (llhttp, nginx, Go) can hold it, so such a message can never mean one thing to all.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

TCHAR = frozenset(b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
_VALUE_BYTES = frozenset(range(0x21, 0x7F)) | frozenset(range(0x80, 0x100)) | {0x20, 0x09}
_OWS = b" \t"
MAX_LENGTH = 2**63  # the first length no 64-bit recipient can represent
_HEX = frozenset(b"0123456789abcdefABCDEF")
_UNRESERVED = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~")
_SUB_DELIMS = frozenset(b"!$&'()*+,;=")
_PCHAR = _UNRESERVED | _SUB_DELIMS | frozenset(b":@%")
_TARGET_BYTES = _PCHAR | frozenset(b"/?")
_VERSION = re.compile(rb"HTTP/([0-9])\.([0-9])")
_STATUS_LINE = re.compile(rb"HTTP/([0-9])\.([0-9]) ([0-9]{3}) ([\t \x21-\x7e\x80-\xff]*)")
_TOKEN = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_QUOTED = rb'"(?:[\t \x21\x23-\x5b\x5d-\x7e\x80-\xff]|\\[\t \x21-\x7e\x80-\xff])*"'
# RFC 9112 §7.1.1: chunk-ext = *( BWS ";" BWS chunk-ext-name [ BWS "=" BWS chunk-ext-val ] )
_CHUNK_LINE = re.compile(
    rb"([0-9A-Fa-f]+)((?:[ \t]*;[ \t]*%b(?:[ \t]*=[ \t]*(?:%b|%b))?)*)" % (_TOKEN, _TOKEN, _QUOTED)
)
_PARAM = re.compile(rb"[ \t]*;[ \t]*%b[ \t]*=[ \t]*(?:%b|%b)" % (_TOKEN, _TOKEN, _QUOTED))
_IP_LITERAL = re.compile(rb"\[(?:[0-9A-Fa-f:.]+|v[0-9A-Fa-f]+\.[!$&'()*+,;=:0-9A-Za-z\-._~]+)\]")
_REG_NAME_BYTES = _UNRESERVED | _SUB_DELIMS | {ord("%")}
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"proxy-authenticate",
        b"proxy-authorization",
    }
)


class Malformed(Exception):
    """The stream is not HTTP/1.1 from here on; the message says which rule it breaks.

    partial: a request whose head was valid and whose body broke the rules, with the content
    that was valid before the break (a streaming recipient may have passed that much on).
    """

    partial: Message | None = None


class _Incomplete(Exception):
    pass


@dataclass
class Message:
    """One request or response as the reference reads it. `fields` keep the names as sent and
    the values without surrounding whitespace; `body` is the content, de-chunked."""

    method: bytes = b""  # requests
    target: bytes = b""
    status: int = 0  # responses
    version: bytes = b"1.1"
    fields: list[tuple[bytes, bytes]] = field(default_factory=list)
    trailers: list[tuple[bytes, bytes]] = field(default_factory=list)
    body: bytes = b""
    chunked: bool = False
    complete: bool = True  # False: the stream ended inside the body
    start: int = 0  # offsets of the message in the stream it was read from
    end: int = 0

    def values(self, name: bytes) -> list[bytes]:
        """The field's values, list elements split out (RFC 9110 §5.6.1), in order."""
        out = []
        for n, v in self.fields:
            if n.lower() == name:
                out.extend(e.strip(_OWS) for e in v.split(b","))
        return [e for e in out if e]

    def lines(self, name: bytes) -> list[bytes]:
        """The values of each field line with this name, unsplit."""
        return [v for n, v in self.fields if n.lower() == name]

    @property
    def connection(self) -> frozenset[bytes]:
        return frozenset(t.lower() for t in self.values(b"connection"))

    @property
    def close(self) -> bool:
        """The connection ends after this message (RFC 9112 §9.3)."""
        if b"close" in self.connection:
            return True
        return self.version == b"1.0" and b"keep-alive" not in self.connection

    @property
    def upgrade(self) -> bytes:
        """The first protocol the request asks to switch to ("" unless Connection names upgrade)."""
        if b"upgrade" not in self.connection:
            return b""
        protocols = self.values(b"upgrade")
        return protocols[0].lower() if protocols else b""

    @property
    def expects_continue(self) -> bool:
        return b"100-continue" in {v.lower() for v in self.values(b"expect")} and self.version != b"1.0"

    @property
    def authority(self) -> bytes | None:
        """The host[:port] the request is for: an absolute-form target's authority replaces Host
        (RFC 9112 §3.2.2); None for an HTTP/1.0 request without Host."""
        if self.target[:1] != b"/" and b"://" in self.target:
            rest = self.target.split(b"://", 1)[1]
            return re.split(rb"[/?]", rest, maxsplit=1)[0]
        hosts = self.lines(b"host")
        return hosts[0] if hosts else None

    @property
    def hostname(self) -> str:
        """The authority's host, lower case, without port or the trailing dot of a fully qualified name."""
        authority = self.authority or b""
        if authority[:1] == b"[":
            host = authority[: authority.find(b"]") + 1]
        else:
            host = authority.rpartition(b":")[0] if b":" in authority else authority
        return host.rstrip(b".").lower().decode("latin-1")


@dataclass
class Stream:
    """The messages of a stream, and how it ends.

    ending: "clean" (after a whole message), "incomplete" (inside a message), "malformed" (not
    HTTP from `offset` on, `reason` says why), "closed" (a message ended the connection; what
    follows it is not read) or "switched" (a protocol switch; what follows is not HTTP/1.1).
    """

    messages: list[Message]
    ending: str
    offset: int
    reason: str = ""

    @property
    def complete(self) -> list[Message]:
        return [m for m in self.messages if m.complete]


def _never(_: Message) -> bool:
    return False


# -- requests ---------------------------------------------------------------------------------


def read_requests(data: bytes, switches: Callable[[Message], bool] = _never) -> Stream:
    """Split a client's byte stream into the requests it frames (RFC 9112 §2-§7, §9.3).

    switches(request) says whether the server accepts the request's protocol switch (Upgrade,
    CONNECT); after one that does, the rest of the stream is no longer HTTP/1.1.
    """
    messages: list[Message] = []
    pos = 0
    while True:
        # RFC 9112 §2.2: a server SHOULD ignore at least one empty line before a request-line.
        while data.startswith(b"\r\n", pos):
            pos += 2
        if pos >= len(data) or data[pos:] == b"\r":
            return Stream(messages, "clean" if pos >= len(data) else "incomplete", pos)
        try:
            msg = _read_request(data, pos)
        except _Incomplete:
            return Stream(messages, "incomplete", pos)
        except Malformed as exc:
            if exc.partial is not None:
                messages.append(exc.partial)
            return Stream(messages, "malformed", pos, str(exc))
        messages.append(msg)
        if not msg.complete:
            return Stream(messages, "incomplete", pos)
        pos = msg.end
        if msg.method == b"CONNECT" or switches(msg):
            return Stream(messages, "switched", pos)
        if msg.close:
            return Stream(messages, "closed", pos)


def _read_request(data: bytes, pos: int) -> Message:
    lines, body_at = _head_lines(data, pos)
    method, target, version = _request_line(lines[0])
    msg = Message(method=method, target=target, version=version, start=pos)
    msg.fields = _fields(lines[1:])
    _check_request_fields(msg)
    length = _request_length(msg)
    try:
        _read_body(data, body_at, msg, length)
    except Malformed as exc:
        msg.complete = False
        exc.partial = msg
        raise
    return msg


def _head_lines(data: bytes, pos: int) -> tuple[list[bytes], int]:
    """The lines of the head starting at pos, and where its body starts; every line ends in CRLF."""
    end = data.find(b"\r\n\r\n", pos)
    # (A head that is a request-line alone ends in its own CRLF and the empty line.)
    if end < 0:
        # Judge what has arrived: the lines already ended, and the bytes of the one under way.
        head = data[pos:]
        _check_line_endings(head, complete=False)
        *done, partial = head.split(b"\r\n")
        if done:
            _request_line(done[0])
        for line in done[1:]:
            _field_line(line)
        if any((b < 0x20 and b not in (0x09, 0x0D)) or b == 0x7F for b in partial):
            raise Malformed("control character in the head")
        raise _Incomplete
    head = data[pos:end]
    _check_line_endings(head, complete=True)
    return head.split(b"\r\n"), end + 4


def _check_line_endings(head: bytes, complete: bool) -> None:
    """RFC 9112 §2.2: CRLF ends a line; a bare CR is invalid, a bare LF we do not accept.
    complete: the head ended here (a CR at its end is bare), else more may follow."""
    for i in _positions(head, b"\n"):
        if i == 0 or head[i - 1] != 0x0D:
            raise Malformed("bare LF ends a line")
    for i in _positions(head, b"\r"):
        if (i + 1 < len(head) and head[i + 1] != 0x0A) or (i + 1 == len(head) and complete):
            raise Malformed("bare CR in the head")


def _positions(data: bytes, needle: bytes) -> list[int]:
    out = []
    i = data.find(needle)
    while i >= 0:
        out.append(i)
        i = data.find(needle, i + 1)
    return out


def _request_line(line: bytes) -> tuple[bytes, bytes, bytes]:
    parts = line.split(b" ")
    if len(parts) != 3 or not all(parts):
        raise Malformed(f"request-line is not method SP target SP version: {line[:60]!r}")
    method, target, version = parts
    if not TCHAR.issuperset(method):
        raise Malformed("method is not a token")
    match = _VERSION.fullmatch(version)
    if match is None:
        raise Malformed(f"not an HTTP-version: {version[:20]!r}")
    if match[1] != b"1":
        raise Malformed(f"HTTP/{match[1].decode()}.x is not HTTP/1.x (505)")
    _check_target(method, target)
    # RFC 9110 §2.5: a higher minor version is processed as the highest one implemented.
    return method, target, b"1.0" if match[2] == b"0" else b"1.1"


def _check_target(method: bytes, target: bytes) -> None:
    """RFC 9112 §3.2: origin-form, absolute-form (http/https), authority-form (CONNECT), asterisk-form (OPTIONS)."""
    if target == b"*":
        if method != b"OPTIONS":
            raise Malformed("asterisk-form outside OPTIONS")
        return
    if method == b"CONNECT":
        if not check_authority(target, need_port=True):
            raise Malformed("CONNECT without authority-form")
        return
    if target[:1] == b"/":
        _check_path_query(target)
        return
    scheme, sep, rest = target.partition(b"://")
    if not sep or scheme.lower() not in (b"http", b"https"):
        raise Malformed(f"request-target in no form: {target[:40]!r}")
    cut = re.search(rb"[/?]", rest)
    authority, path = (rest[: cut.start()], rest[cut.start() :]) if cut else (rest, b"")
    if b"@" in authority:
        raise Malformed("userinfo in an http(s) target (RFC 9110 §4.2.4)")
    if not authority or not check_authority(authority) or authority.startswith(b":"):
        raise Malformed("absolute-form without a valid host (RFC 9110 §4.2.1)")
    if path:
        _check_path_query(path if path[:1] == b"/" else b"/" + path)


def _check_path_query(target: bytes) -> None:
    if not _TARGET_BYTES.issuperset(target):
        bad = bytes(sorted(set(target) - _TARGET_BYTES))
        raise Malformed(f"bytes no URI may hold in the request-target: {bad!r}")
    _check_percent(target)


def _check_percent(data: bytes) -> None:
    for i in _positions(data, b"%"):
        if len(data) < i + 3 or not _HEX.issuperset(data[i + 1 : i + 3]):
            raise Malformed("% not followed by two hex digits")


def check_authority(authority: bytes, need_port: bool = False) -> bool:
    """uri-host [":" port] (RFC 3986 §3.2.2-3.2.3; RFC 9110 §7.2); reg-name may be empty."""
    if authority[:1] == b"[":
        close = authority.find(b"]")
        if close < 0 or _IP_LITERAL.fullmatch(authority[: close + 1]) is None:
            return False
        rest = authority[close + 1 :]
        if rest and rest[:1] != b":":
            return False
        port = rest[1:]
    else:
        host, _, port = authority.partition(b":")
        if not _REG_NAME_BYTES.issuperset(host):
            return False
        try:
            _check_percent(host)
        except Malformed:
            return False
    if port and not port.isdigit():
        return False
    return not need_port or bool(port)


def _fields(lines: list[bytes]) -> list[tuple[bytes, bytes]]:
    return [_field_line(line) for line in lines]


def _field_line(line: bytes) -> tuple[bytes, bytes]:
    """RFC 9112 §5: field-name ":" OWS field-value OWS; no obs-fold, nothing before the colon."""
    if line[:1] in (b" ", b"\t"):
        raise Malformed("obs-fold or whitespace before a field name")
    name, colon, value = line.partition(b":")
    if not colon:
        raise Malformed(f"field line without a colon: {line[:40]!r}")
    if not name or not TCHAR.issuperset(name):
        raise Malformed(f"field name is not a token: {name[:40]!r}")
    value = value.strip(_OWS)
    if not _VALUE_BYTES.issuperset(value):
        raise Malformed(f"control character in the value of {name.decode('latin-1')}")
    return name, value


def _check_request_fields(msg: Message) -> None:
    hosts = msg.lines(b"host")
    # RFC 9112 §3.2: 400 for an HTTP/1.1 request without Host, with two, or with an invalid one.
    if len(hosts) > 1:
        raise Malformed("more than one Host field")
    if not hosts and msg.version != b"1.0":
        raise Malformed("HTTP/1.1 request without Host")
    if hosts and not check_authority(hosts[0]):
        raise Malformed(f"invalid Host value {hosts[0][:40]!r}")
    for token in msg.values(b"connection"):
        if not TCHAR.issuperset(token):
            raise Malformed("Connection option is not a token")


def _request_length(msg: Message) -> int | None:
    """RFC 9112 §6.3 for a request: None for chunked, else the Content-Length (0 without one)."""
    if msg.lines(b"transfer-encoding"):
        if msg.version == b"1.0":
            raise Malformed("Transfer-Encoding in an HTTP/1.0 message: faulty framing (§6.1)")
        codings = transfer_codings(msg)
        if not codings or codings[-1] != b"chunked":
            raise Malformed("chunked is not the final transfer coding (§6.3: 400)")
        if codings.count(b"chunked") > 1:
            raise Malformed("chunked applied more than once (§6.1)")
        msg.chunked = True
        return None  # Transfer-Encoding overrides Content-Length (§6.3 item 3)
    return content_length(msg)


def transfer_codings(msg: Message) -> list[bytes]:
    """The transfer codings named, lower case, parameters checked and dropped."""
    codings = []
    for element in msg.values(b"transfer-encoding"):
        name_end = len(element)
        for i, b in enumerate(element):
            if b not in TCHAR:
                name_end = i
                break
        name, params = element[:name_end], element[name_end:]
        if not name or (params and re.fullmatch(rb"(?:%b)+" % _PARAM.pattern, params) is None):
            raise Malformed(f"invalid transfer coding {element[:30]!r}")
        if params and name.lower() == b"chunked":
            raise Malformed("chunked takes no parameters")
        codings.append(name.lower())
    return codings


def content_length(msg: Message) -> int:
    lines = msg.lines(b"content-length")
    if not lines:
        return 0
    # RFC 9110 §8.6: 1*DIGIT; the same value repeated (lines or a list) may be read as one.
    values = {e.strip(_OWS) for line in lines for e in line.split(b",")}
    if len(values) != 1:
        raise Malformed("Content-Length values differ")
    value = values.pop()
    if not value.isdigit():
        raise Malformed(f"Content-Length is not 1*DIGIT: {value[:30]!r}")
    length = int(value)
    if length >= MAX_LENGTH:
        raise Malformed("Content-Length of 2^63 or more")
    return length


def _read_body(data: bytes, at: int, msg: Message, length: int | None) -> None:
    if length is not None:
        msg.body = data[at : at + length]
        msg.complete = len(msg.body) == length
        msg.end = at + len(msg.body)
        return
    _read_chunked(data, at, msg)


def _read_chunked(data: bytes, at: int, msg: Message) -> None:
    """RFC 9112 §7.1; a stream that ends inside it leaves the message incomplete with the data so far."""
    parts: list[bytes] = []
    pos = at
    msg.complete = False
    try:
        while True:
            line, pos = _line(data, pos, _chunk_line_prefix_ok)
            match = _CHUNK_LINE.fullmatch(line)
            if match is None:
                raise Malformed(f"invalid chunk-size line {line[:40]!r}")
            size = int(match[1], 16)
            if size >= MAX_LENGTH:
                raise Malformed("chunk size of 2^63 or more")
            if size == 0:
                while True:
                    line, pos = _line(data, pos, _field_prefix_ok)
                    if not line:
                        break
                    msg.trailers.append(_field_line(line))
                msg.complete = True
                msg.end = pos
                return
            chunk = data[pos : pos + size]
            if len(chunk) < size:
                parts.append(chunk)
                raise _Incomplete
            parts.append(chunk)
            pos += size
            crlf = data[pos : pos + 2]
            if crlf != b"\r\n"[: len(crlf)]:
                raise Malformed("chunk data not followed by CRLF")
            if len(crlf) < 2:
                raise _Incomplete
            pos += 2
    except _Incomplete:
        msg.end = len(data)
    finally:
        msg.body = b"".join(parts)


def _line(data: bytes, pos: int, prefix_ok: Callable[[bytes], bool]) -> tuple[bytes, int]:
    end = data.find(b"\r\n", pos)
    if end < 0:
        line = data[pos:]
        if line.endswith(b"\r"):
            line = line[:-1]
        if b"\r" in line or b"\n" in line or not prefix_ok(line):
            raise Malformed(f"invalid chunk line {line[:40]!r}")
        raise _Incomplete
    line = data[pos:end]
    if b"\r" in line or b"\n" in line:
        raise Malformed("bare CR or LF in a chunk line")
    return line, end + 2


def _chunk_line_prefix_ok(partial: bytes) -> bool:
    return all(b in _VALUE_BYTES for b in partial) and (not partial or partial[:1] in b"0123456789abcdefABCDEF")


def _field_prefix_ok(partial: bytes) -> bool:
    return all(b in _VALUE_BYTES for b in partial) and partial[:1] not in (b" ", b"\t")


# -- responses --------------------------------------------------------------------------------


def read_responses(data: bytes, methods: list[bytes]) -> Stream:
    """Split a server's byte stream into responses; methods[i] is the method of the i-th request
    answered (a response to HEAD has no body). Interim (1xx) responses answer no request."""
    messages: list[Message] = []
    pos = 0
    finals = 0
    while pos < len(data):
        try:
            lines, body_at = _response_head(data, pos)
        except _Incomplete:
            return Stream(messages, "incomplete", pos)
        except Malformed as exc:
            return Stream(messages, "malformed", pos, str(exc))
        match = _STATUS_LINE.fullmatch(lines[0])
        if match is None:
            return Stream(messages, "malformed", pos, f"invalid status-line {lines[0][:60]!r}")
        try:
            fields = _fields(lines[1:])
        except Malformed as exc:
            return Stream(messages, "malformed", pos, str(exc))
        msg = Message(status=int(match[3]), version=match[1] + b"." + match[2], fields=fields, start=pos)
        messages.append(msg)
        method = methods[finals] if finals < len(methods) else b"GET"
        status = msg.status
        if 100 <= status < 200:
            msg.end = body_at
            if status == 101:
                return Stream(messages, "switched", body_at)
            pos = body_at
            continue
        finals += 1
        try:
            if method == b"HEAD" or status in (204, 304):
                length: int | None = 0
            elif msg.lines(b"transfer-encoding"):
                codings = transfer_codings(msg)
                if codings[-1:] != [b"chunked"]:
                    length = len(data) - body_at  # RFC 9112 §6.3 item 4: read until close
                else:
                    msg.chunked = True
                    length = None
            elif msg.lines(b"content-length"):
                length = content_length(msg)
            else:
                length = len(data) - body_at
            _read_body(data, body_at, msg, length)
        except Malformed as exc:
            return Stream(messages, "malformed", pos, str(exc))
        if not msg.complete:
            return Stream(messages, "incomplete", pos)
        pos = msg.end
    return Stream(messages, "clean", pos)


def _response_head(data: bytes, pos: int) -> tuple[list[bytes], int]:
    end = data.find(b"\r\n\r\n", pos)
    if end < 0:
        _check_line_endings(data[pos:], complete=False)
        raise _Incomplete
    head = data[pos:end]
    _check_line_endings(head, complete=True)
    return head.split(b"\r\n"), end + 4


# -- request targets (RFC 3986) ----------------------------------------------------------------


def origin_form(target: bytes) -> bytes:
    """The path and query of a target, the authority of an absolute-form one dropped."""
    if target[:1] == b"/" or target == b"*":
        return target
    rest = target.split(b"://", 1)[1]
    cut = re.search(rb"[/?]", rest)
    if cut is None:
        return b"/"
    tail = rest[cut.start() :]
    return tail if tail[:1] == b"/" else b"/" + tail


def normalize(target: bytes) -> bytes:
    """The target as any RFC 3986 §6 normaliser sees it: origin-form, percent-encoded unreserved
    characters decoded (§6.2.2.2), hex digits upper case, dot segments removed (§5.2.4), and
    empty segments merged as gw (and nginx) merge them. Two targets that normalise alike name
    the same resource to every server."""
    target = origin_form(target)
    path, q, query = target.partition(b"?")

    def decode(m: re.Match[bytes]) -> bytes:
        byte = int(m[1], 16)
        return bytes([byte]) if byte in _UNRESERVED else b"%" + m[1].upper()

    path = re.sub(rb"%([0-9A-Fa-f]{2})", decode, path)
    out: list[bytes] = []
    segments = path.split(b"/")[1:]
    for seg in segments:
        if seg == b"..":
            if out:
                out.pop()
        elif seg not in (b".", b""):
            out.append(seg)
    result = b"/" + b"/".join(out)
    if out and segments and segments[-1] in (b"", b".", b".."):
        result += b"/"
    return result + q + query
