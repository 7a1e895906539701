"""A request head: its validation (RFC 9110/9112) and the head that goes upstream, as bytes.

Headers stay bytes end to end (docs/architecture.md, performance rules: no regex, no str round trips).
"""

from __future__ import annotations

import ipaddress
import re
from typing import TYPE_CHECKING, NamedTuple

from gw.errors import BadRequest, ExpectationFailed, VersionNotSupported
from gw.routing.paths import UnsafePath, normalize_path

if TYPE_CHECKING:
    from gw.proxy.exchange import Exchange

# RFC 9110 §7.6.1 hop-by-hop fields, plus the legacy ones RFC 2616 listed. A gateway is not a
# forward proxy, so Proxy-Authorization meant for one must not leak to a backend.
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
# Request fields the head pass acts on; everything else is copied as it came.
_SPECIAL = HOP_BY_HOP | {
    b"host",
    b"content-length",
    b"expect",
    b"x-forwarded-for",
    b"x-forwarded-proto",
    b"x-forwarded-host",
    b"x-forwarded-port",
    b"x-forwarded-client-cert",
    b"x-request-id",
    b"forwarded",
    b"x-real-ip",
}
_CONNECTION_TOKENS_HANDLED = frozenset({b"close", b"keep-alive", b"upgrade", b""})
# Fields that say where the request goes and where its body ends. A Connection token naming one
# would have gw forward a body the upstream frames differently, or a request without its Host:
# such a request is refused rather than forwarded as a different one.
_FRAMING = frozenset({b"content-length", b"transfer-encoding", b"host"})
MAX_CONTENT_LENGTH = (1 << 63) - 1  # what a signed 64-bit length (most upstreams' off_t) holds
IDEMPOTENT = frozenset({b"GET", b"HEAD", b"OPTIONS", b"PUT", b"DELETE", b"TRACE"})
_MAX_REQUEST_ID = 200
_TOKEN_BYTES = frozenset(b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ=:/@")
CRLF = b"\r\n"
COLON = b": "
REQUEST_ID_NAME = b"X-Request-ID"
# Bytes that send a path to normalize_path, besides "/." and "//": deleting them changes the path.
# (One translate() call: under callgrind ~1k instructions, what one find() costs; three finds or
# a character-class regex cost more on paths of a few dozen bytes.)
_PATH_ODD = b"%\\#"


_VERSIONS = {"1.1": b"1.1", "1.0": b"1.0"}


def http_version(text: str) -> bytes:
    """The version a request is served as: a higher HTTP/1 minor as 1.1 (RFC 9112 §2.6), any other
    major version (0.9, 2.0, … in an HTTP/1-style request line) refused with 505."""
    version = _VERSIONS.get(text)
    if version is not None:
        return version
    if text[:2] == "1.":
        return b"1.1"
    raise VersionNotSupported(f"HTTP/{text} is not supported: this gateway speaks HTTP/1.1 and HTTP/1.0")


def prepare(
    req: Exchange,
    method: bytes,
    version: bytes,
    keep_alive: bool,
    upgrade: bool,
    client_host: bytes,
    scheme: bytes,
    port: bytes,
    new_request_id: bytes,
    hop: bytes,
) -> None:
    """Validate the head of `req` and build the head that goes upstream (RFC 9110/9112).

    hop: this hop's Forwarded element without its host (forwarded_for(client_host, scheme)).

    Raises BadRequest for anything that could smuggle or confuse: framing conflicts the parser
    lets through, a Transfer-Encoding other than plain chunked, a Content-Length beyond 2^63-1,
    a Connection naming a framing field, a missing, repeated or invalid Host.
    """
    req.method = method
    req.version = version
    req.keep_alive = keep_alive
    req.idempotent = method in IDEMPOTENT
    req.client_host = client_host
    host = b""
    host_seen = False
    xff = b""
    forwarded = b""
    request_id = b""
    connection_tokens: list[bytes] | None = None
    upgrade_value = b""
    # An absolute-form target's authority replaces Host (RFC 9112 §3.2.2).
    authority = absolute_authority(req.url)
    parts: list[bytes] = []
    add = parts.extend
    special = _SPECIAL
    for name, value in req.headers:
        lname = name.lower()
        if lname not in special:
            add((name, COLON, value, CRLF))
            continue
        if lname == b"host":
            if host_seen:
                raise BadRequest("more than one Host header")
            host_seen = True
            host = value.rstrip(b" \t")  # (llhttp leaves trailing whitespace in a value)
            if authority is None:
                add((name, COLON, value, CRLF))
        elif lname == b"content-length":
            length = req.content_length = int(value)  # the parser has already checked the digits
            if length > MAX_CONTENT_LENGTH:
                raise BadRequest("Content-Length too large")
            add((name, COLON, value, CRLF))
        elif lname == b"transfer-encoding":
            # llhttp accepts codings before the final "chunked" (e.g. "gzip, chunked"); a
            # gateway re-frames bodies, so anything but plain chunked is refused outright.
            if value.strip().lower() != b"chunked" or req.chunked:
                raise BadRequest("unsupported Transfer-Encoding")
            if version == b"1.0":
                raise BadRequest("Transfer-Encoding in an HTTP/1.0 request")
            req.chunked = True
        elif lname == b"connection":
            tokens = [t.strip().lower() for t in value.split(b",")]
            connection_tokens = tokens if connection_tokens is None else connection_tokens + tokens
        elif lname == b"upgrade":
            upgrade_value = value
        elif lname == b"expect":
            if value.strip().lower() != b"100-continue":
                raise ExpectationFailed("only Expect: 100-continue is supported")
            # RFC 9110 §10.1.1: an HTTP/1.0 request's 100-continue is ignored (no 1xx to 1.0).
            req.expect_continue = version != b"1.0"
        elif lname == b"x-forwarded-for":
            xff = xff + b", " + value if xff else value
        elif lname == b"forwarded":
            forwarded = forwarded + b", " + value if forwarded else value
        elif lname == b"x-request-id":
            request_id = value
        # other hop-by-hop fields, X-Real-IP and X-Forwarded-Proto/Host/Port from the client are
        # dropped: the gateway sets them itself below. So is X-Forwarded-Client-Cert: only gw says
        # which certificate a client presented (the fast path sends every X-Forwarded-* here).

    if connection_tokens is not None:
        if b"close" in connection_tokens:
            # llhttp keeps an HTTP/1.0 request alive when keep-alive is named too: close wins
            # (RFC 9112 §9.6), or the connection stays open for a client that will not use it.
            req.keep_alive = False
        extra = {t for t in connection_tokens if t not in _CONNECTION_TOKENS_HANDLED}
        if extra:
            if any(t.translate(None, _TCHAR) for t in extra):
                # Connection = #token (RFC 9110 §7.6.1). llhttp reads "close x" as no close at
                # all; another reader may see one: refused rather than guessed.
                raise BadRequest("Connection is not a list of field names")
            if not extra.isdisjoint(_FRAMING):
                raise BadRequest("Connection names a field the request cannot go without")
            # Fields named in Connection are hop-by-hop too (RFC 9110 §7.6.1): a second pass
            # drops them; rare, so the common case pays nothing for it.
            copied = {b"content-length"} if authority is not None else {b"content-length", b"host"}
            parts = [
                p
                for n, v in req.headers
                if (n.lower() not in special or n.lower() in copied) and n.lower() not in extra
                for p in (n, COLON, v, CRLF)
            ]
            add = parts.extend
    # RFC 9112 §3.2: 400 for a Host that is not uri-host [":" port]. An empty one is refused too:
    # it stands for a target without authority, which an http(s) URI never is (RFC 9110 §4.2.1).
    if host_seen and not valid_host(host):
        raise BadRequest("invalid Host header")
    if not host_seen and version != b"1.0":
        raise BadRequest("missing Host header")  # absolute-form too (RFC 9112 §3.2)
    if authority is not None:
        if not valid_host(authority):
            raise BadRequest("invalid authority in the request target")
        host, host_seen = authority, True
        add((b"Host: ", authority, CRLF))
    if forwarded and _FORWARDED.fullmatch(forwarded) is None:
        # An open quoted-string would swallow the element appended below.
        raise BadRequest("malformed Forwarded header")
    if request_id and (len(request_id) > _MAX_REQUEST_ID or not _TOKEN_BYTES.issuperset(request_id)):
        request_id = b""  # not something we want to echo into logs and responses
    if not request_id:
        request_id = new_request_id
    req.request_id = request_id
    req.host = host_name(host)

    if upgrade and upgrade_value:
        # Only WebSocket is proxied as an upgrade; h2c and friends are served as plain HTTP/1.1.
        req.upgrade = upgrade_value.strip().lower() == b"websocket"
        if req.upgrade:
            if req.chunked or req.content_length > 0:
                # RFC 6455 §4.1: the handshake is a GET without content. gw would send the head
                # alone and hold the body as tunnel bytes: an upstream that refuses the upgrade
                # would read them as its next request, and gw would parse them as the client's.
                raise BadRequest("a WebSocket upgrade request with a body")
            add((b"Connection: Upgrade\r\nUpgrade: ", upgrade_value, CRLF))

    client = client_host
    element = forwarded_element(hop, host)
    add(
        (
            b"X-Forwarded-For: ",
            xff + b", " + client if xff else client,
            b"\r\nX-Forwarded-Proto: ",
            scheme,
            b"\r\nX-Forwarded-Host: ",
            host,
            b"\r\nX-Forwarded-Port: ",
            port,
            b"\r\nForwarded: ",
            forwarded + b", " + element if forwarded else element,
            b"\r\nX-Real-IP: ",
            client,
            b"\r\nX-Request-ID: ",
            request_id,
            CRLF,
        )
    )
    if req.chunked:
        add((b"Transfer-Encoding: chunked\r\n",))
    req.host_header = host  # empty for HTTP/1.0 without Host: the sender fills in the endpoint
    req.head = parts


def absolute_authority(url: bytes) -> bytes | None:
    """The authority of an absolute-form target ("http://api.example/x"), else None.

    Returned whole, userinfo included, for valid_host to judge: userinfo in a target is an error
    (RFC 9110 §4.2.4), and an empty authority is not a host.
    """
    if url[:1] == b"/" or not (url[:7].lower() == b"http://" or url[:8].lower() == b"https://"):
        return None
    rest = url.split(b"//", 1)[1]
    end = len(rest)
    for sep in (b"/", b"?", b"#"):
        i = rest.find(sep)
        if 0 <= i < end:
            end = i
    return rest[:end]


# RFC 3986 §3.2.2 host, RFC 9112 §3.2 Host = uri-host [ ":" port ]: a reg-name (which covers
# IPv4address) or a bracketed IP-literal (IPv6address, checked apart, or IPvFuture). No
# userinfo, no path, no whitespace, ASCII only.
_HOST = re.compile(
    rb"(?:(?:[A-Za-z0-9\-._~!$&'()*+,;=]|%[0-9A-Fa-f]{2})+"
    rb"|\[(?:([0-9A-Fa-f:.]+)|[vV][0-9A-Fa-f]+\.[A-Za-z0-9\-._~!$&'()*+,;=:]+)\])"
    rb"(?::([0-9]*))?"
)
_REG_NAME = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~!$&'()*+,;="
# RFC 7239 §4 with any token-ish text between quoted-strings: what matters to gw is that a
# client's value leaves no quoted-string open (nor a stray backslash inside one).
_FORWARDED = re.compile(rb'(?:[^"]|"(?:[^"\\]|\\.)*")*')
_TCHAR = b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"


def valid_host(host: bytes) -> bool:
    """True when `host` is uri-host [":" port] with a port up to 65535 (RFC 9112 §3.2)."""
    # The usual name or IPv4 address, with at most a plain port, is settled by bytes operations
    # (a quarter of the regex's cost, paid once per distinct head); the rest goes to the grammar.
    name, _, port = host.partition(b":")
    if (
        name
        and not name.translate(None, _REG_NAME)
        and (not port or (port.isdigit() and (len(port) < 5 or (len(port) == 5 and port <= b"65535"))))
    ):
        return True
    match = _HOST.fullmatch(host)
    if match is None:
        return False
    ipv6, port = match.groups()
    if port and (len(port.lstrip(b"0")) > 5 or int(port) > 65535):
        return False
    if ipv6 is not None:
        try:
            ipaddress.IPv6Address(ipv6.decode())
        except ValueError:
            return False
    return True


def host_name(host: bytes) -> str:
    """The name a (valid) Host routes by: no port, lower case, no trailing dot."""
    if host[:1] == b"[":  # IPv6 literal
        name = host[: host.find(b"]") + 1]
    else:
        colon = host.find(b":")
        name = host[:colon] if colon >= 0 else host
    # "example.com." is the same name as "example.com" (a fully qualified form): match it alike.
    return name.rstrip(b".").lower().decode("latin-1")


def forwarded_for(client: bytes, scheme: bytes) -> bytes:
    """This hop's RFC 7239 Forwarded element up to its host, once per connection: for=<client>;proto=<scheme>."""
    if client.find(b":") >= 0:  # IPv6: quoted and bracketed, without a zone
        node = b'"[%b]"' % client.partition(b"%")[0]
    elif client and not client.translate(None, b"0123456789."):
        node = client
    else:
        node = b"unknown"  # a unix socket peer has no address to give
    return b"for=%b;proto=%b" % (node, scheme)


def forwarded_element(hop: bytes, host: bytes) -> bytes:
    """The element `hop` (forwarded_for) with ;host=<Host>, quoted when it is not a token."""
    if not host:
        return hop
    return hop + (b";host=" + host if not host.translate(None, _TCHAR) else b';host="' + host + b'"')


def split_target(req: Exchange, url: bytes) -> None:
    """Fill path and query from the request target (origin-form or absolute-form).

    The path is put in its normal form (gw.routing.paths), the form routes match and the upstream
    receives; the query is left as it came. A path with nothing to normalise, nearly every path,
    costs two find() calls and one translate().
    """
    if url.find(b" ") >= 0:
        # The fast path slices the target out of the request line: llhttp let an extra SP
        # through around it (RFC 9112 §3: one SP; the full parser's check is _single_spaces).
        raise BadRequest("the request line is not method SP target SP version")
    if url[:1] != b"/":
        if url[:7].lower() == b"http://" or url[:8].lower() == b"https://":
            rest = url.split(b"//", 1)[1]
            end = len(rest)  # the authority ends at the first "/", "?" or "#"
            for sep in (b"/", b"?", b"#"):
                i = rest.find(sep)
                if 0 <= i < end:
                    end = i
            url = rest[end:]
            if url[:1] != b"/":  # "http://host" or "http://host?q": the path is "/"
                url = b"/" + url
        elif url == b"*":
            req.path, req.query, req.url = "*", b"", url
            return
        else:
            raise BadRequest("malformed request target")
    q = url.find(b"?")
    if q >= 0:
        query = req.query = url[q + 1 :]
        if query.find(b"#") >= 0:
            raise BadRequest("a fragment (#) in the request target")
        path = url[:q]
    else:
        path = url
    if path.find(b"/.") >= 0 or path.find(b"//") >= 0 or path.translate(None, _PATH_ODD) != path:
        try:
            path = normalize_path(path)
        except UnsafePath as exc:
            raise BadRequest(str(exc)) from None
    req.path = path.decode("latin-1")
    req.url = path + b"?" + req.query if q >= 0 else path


# -- the raw-head fast path ---------------------------------------------------------------------
# (Substring tests use find(): `needle in some_bytes` first tries the needle as an int and
# builds and discards a TypeError, ~1.5k instructions each.)
# Most requests arrive as one read holding exactly one head. Then the header block is forwarded
# as the bytes it came in, with hop-by-hop lines cut out by searching the lower-cased block (C
# speed) instead of a Python step per header; anything unusual takes the general path above.

# Fields whose presence sends a request down the general path: framing, upgrade, expectations
# and the fields the gateway sets itself. One compiled search over the lower-cased block costs
# ~1/5 of ten find() calls (measured with callgrind: 7k against 35k instructions per head).
_REQUEST_SLOW = re.compile(
    rb"\r\n(?:transfer-encoding|content-length|upgrade|expect|x-request-id|keep-alive|te|trailer"
    rb"|x-forwarded-[^:\r]*|forwarded|x-real-ip|proxy-[^:\r]*):"
)
_PLAIN_CONNECTION = frozenset({b"keep-alive", b"close", b""})


def split_fields(block: bytes) -> list[tuple[bytes, bytes]]:
    """(name, value) pairs of a header block that starts and ends with CRLF (already validated)."""
    fields: list[tuple[bytes, bytes]] = []
    if len(block) <= 2:
        return fields
    for line in block[2:-2].split(b"\r\n"):
        name, _, value = line.partition(b":")
        fields.append((name, value.strip(b" \t")))
    return fields


# Heads a worker analysed (analyze_raw, by block, version and the connection's client, scheme and
# port) and the fields of their forwarded form (forward_fields): a client whose heads change from
# request to request among a few (a flood cycling over keys) has each analysed and split once.
# Bounded in entries and in the size of a head remembered: new heads every time cost a clear now
# and then, not memory.
MEMO_HEADS = 256
MEMO_HEAD_BYTES = 2048
HEADS: dict[tuple[bytes, bytes, bytes, bytes, bytes], RawHead | None] = {}
_SPLITS: dict[bytes, tuple[tuple[bytes, bytes], ...]] = {}


def remember(key: tuple[bytes, bytes, bytes, bytes, bytes], head: RawHead | None) -> None:
    """Keep analyze_raw's answer for the head (see HEADS)."""
    if len(key[0]) <= MEMO_HEAD_BYTES:
        if len(HEADS) >= MEMO_HEADS:
            HEADS.clear()
        HEADS[key] = head


def forward_fields(forward: bytes) -> tuple[tuple[bytes, bytes], ...]:
    """The fields of a RawHead's `forward` up to its X-Request-ID, whose value the head adds after it
    (remembered per distinct forward: one head analysed once is one object, its hash kept)."""
    fields = _SPLITS.get(forward)
    if fields is None:
        fields = tuple(split_fields(b"\r\n" + forward[: -len(REQUEST_ID_NAME) - 2]))
        if len(forward) <= MEMO_HEAD_BYTES + 1024:  # (the block, and the X-Forwarded-* lines gw adds)
            if len(_SPLITS) >= MEMO_HEADS:
                _SPLITS.clear()
            _SPLITS[forward] = fields
    return fields


def field_value(block: bytes, low: bytes, needle: bytes) -> bytes:
    """The value of the first field whose "\\r\\nname:" needle is in `low` (the lower-cased block)."""
    start = low.find(needle) + len(needle)
    return block[start : block.find(b"\r\n", start)].strip(b" \t")


def drop_field(block: bytes, low: bytes, needle: bytes) -> tuple[bytes, bytes]:
    """Cut every line of field `needle` out of the block (and its lower-cased twin)."""
    i = low.find(needle)
    while i >= 0:
        j = low.find(b"\r\n", i + 2)
        block = block[:i] + block[j:]
        low = low[:i] + low[j:]
        i = low.find(needle, i)
    return block, low


class RawHead(NamedTuple):
    """What a header block means for forwarding; the same block always means the same thing."""

    forward: bytes  # the block's forwarded lines + X-Forwarded-*, ending with "X-Request-ID: "
    host_header: bytes
    host: str


def analyze_raw(
    block: bytes, version: bytes, client_host: bytes, scheme: bytes, port: bytes, hop: bytes
) -> RawHead | None:
    """`prepare` for a header block kept as bytes; None when the block needs the general path.

    block: the header lines, starting with the CRLF that ends the request line and ending with
    the CRLF of the last field. Raises BadRequest for a missing, repeated or invalid Host.
    """
    low = block.lower()
    if _REQUEST_SLOW.search(low) is not None:
        return None
    if low.find(b"\r\nconnection:") >= 0:
        # "keep-alive"/"close" only; a Connection naming other fields takes the general path.
        if low.count(b"\r\nconnection:") > 1:
            return None
        tokens = field_value(low, low, b"\r\nconnection:").split(b",")
        if len(tokens) > 1 or tokens[0].strip() not in _PLAIN_CONNECTION:
            return None  # (keep-alive and close together: close wins, which llhttp does not see)
        block, low = drop_field(block, low, b"\r\nconnection:")
    i = low.find(b"\r\nhost:")
    if i < 0:
        if version != b"1.0":
            raise BadRequest("missing Host header")
        host = b""
    else:
        if low.find(b"\r\nhost:", i + 7) >= 0:
            raise BadRequest("more than one Host header")
        host = block[i + 7 : block.find(b"\r\n", i + 7)].strip(b" \t")
        if not valid_host(host):
            raise BadRequest("invalid Host header")
    forward = (
        b"%bX-Forwarded-For: %b\r\nX-Forwarded-Proto: %b\r\nX-Forwarded-Host: %b\r\nX-Forwarded-Port: %b\r\n"
        b"Forwarded: %b\r\nX-Real-IP: %b\r\nX-Request-ID: "
        % (block[2:], client_host, scheme, host, port, forwarded_element(hop, host), client_host)
    )
    return RawHead(forward, host, host_name(host))
