"""Desync corpus: requests from the RFCs and the smuggling research, each held to the differential check.

Every case is bytes a client sends on one connection; tests.support.desync checks that the
upstream saw exactly the requests the client framed (per the strict reference reader), that
the client got one response per request gw accepted and none for a smuggled one, and that the
worker serves on. Some cases also say what they must get: `served` (every request answered by
its backend or its route) or a refusal status. The refusal cases of test_smuggling.py run
through the same check there.

Sources: RFC 9112 (framing, §2.2 lines, §3 request line, §5 fields, §6 body length, §7
chunks, §9 connections), RFC 9110 (§5.5 values, §7.2 Host, §7.6.1 Connection, §7.8 Upgrade,
§10.1.1 Expect), RFC 3986 (§3 URI syntax, §5.2.4 dot segments, §6.2.2 normalisation); James
Kettle's "HTTP Desync Attacks" (CL.TE, TE.CL, TE.TE), "HTTP/2: The Sequel is Always Worse" (its
HTTP/1.1 counterparts: h2c, the HTTP/2.0 request line, CRLF in values), "Browser-Powered Desync
Attacks" (client-side desync, CL.0, pause-based desync), "HTTP/1.1 must die" (0.CL, Expect);
the "funky chunks" research (chunk extensions, TERM.EXT, EXT.TERM, TERM.SPILL); Bishop Fox's h2c
smuggling; WebSocket smuggling through a failed upgrade; HEAD response desync.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from tests.support.desync import KNOWN, SMUGGLED, Desync

# Defects the corpus found beyond the list; a fixed one maps to "".
NEW = {
    "after-close": "",  # fixed
    "abs-no-host": "",  # fixed
    "abs-empty-host": "",  # fixed
    "abs-userinfo": "",  # fixed
    # Open: httptools reports a chunk header without its size or extensions (on_chunk_header takes
    # no argument) and no offset into the read, so gw would have to parse chunk framing in Python
    # on every chunk to see either. (gw re-frames what it forwards: the upstream gets chunks of
    # the sizes it read, never the client's size line or extensions.)
    "chunk-2^63": "NEW: a chunk size of 2^63 or more is accepted and its data forwarded",
    "chunk-ext-value": "NEW: a chunk extension with '=' and no value (5;a=) is accepted",
    "upgrade-body": "",  # fixed
    "request-line-spaces": "",  # fixed
    "no-version": "",  # fixed
    "http10-close": "",  # fixed
    "connection-syntax": "",  # fixed
    "empty-line": "",  # fixed
    "head-refusal": "",  # fixed
}

HOST = b"Host: example.test\r\n"
N = len(SMUGGLED)
TE = b"Transfer-Encoding: chunked\r\n"
WS = (
    b"Connection: Upgrade\r\nUpgrade: websocket\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
)
H2C = b"Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n"


def req(
    method: bytes = b"GET",
    target: bytes = b"/x",
    fields: bytes = b"",
    body: bytes = b"",
    *,
    host: bytes | None = HOST,
    version: bytes = b"HTTP/1.1",
) -> bytes:
    """A request as bytes: `fields` are whole lines; Host comes first unless host is None."""
    return b"%b %b %b\r\n%b%b\r\n%b" % (method, target, version, host or b"", fields, body)


def post(fields: bytes, body: bytes, target: bytes = b"/x", host: bytes = HOST) -> bytes:
    return req(b"POST", target, fields, body, host=host)


def length(body: bytes) -> bytes:
    return b"Content-Length: %d\r\n" % len(body)


def chunk(data: bytes, ext: bytes = b"") -> bytes:
    return b"%x%b\r\n%b\r\n" % (len(data), ext, data)


@dataclass(frozen=True)
class Case:
    data: bytes
    source: str
    served: bool = False  # every request must be answered by its backend (or gw, where its route says)
    statuses: frozenset[int] = frozenset()  # gw's refusal must be one of these
    xfail: str = ""
    only: str = ""  # the xfail holds only when the bytes arrive so ("alone" or "behind")


def case(
    data: bytes,
    source: str,
    *,
    served: bool = False,
    statuses: set[int] | None = None,
    xfail: str = "",
    only: str = "",
) -> Case:
    return Case(data, source, served, frozenset(statuses or ()), xfail, only)


CASES: dict[str, Case] = {
    # -- RFC 9112 framing that must be served exactly ----------------------------------------------
    "pipelined-get-post-chunked": case(
        req(b"GET", b"/a")
        + post(length(b"hello"), b"hello", b"/b")
        + post(TE, chunk(b"hel") + chunk(b"lo") + b"0\r\n\r\n", b"/c")
        + req(b"GET", b"/admin/d"),
        "RFC 9112 §9.3.2 pipelining; §6.3 framing",
        served=True,
    ),
    "empty-line-before-request": case(
        b"\r\n" + req(),
        "RFC 9112 §2.2: ignore at least one empty line",
        served=True,
        xfail=NEW["empty-line"],
        only="alone",
    ),
    "get-with-body": case(
        req(b"GET", b"/x", length(SMUGGLED), SMUGGLED), "RFC 9110 §9.3.1; CL.0 (Kettle 2022)", served=True
    ),
    "head-with-body": case(req(b"HEAD", b"/x", length(SMUGGLED), SMUGGLED), "RFC 9110 §9.3.2; CL.0", served=True),
    "content-length-leading-zeros": case(
        post(b"Content-Length: 005\r\n", b"hello"), "RFC 9110 §8.6: 1*DIGIT", served=True
    ),
    "field-names-any-case": case(
        post(b"cOnTeNt-LeNgTh: 5\r\n", b"hello")
        + post(b"tRaNsFeR-eNcOdInG: chunked\r\n", chunk(b"hello") + b"0\r\n\r\n"),
        "RFC 9110 §5.1: field names are case-insensitive",
        served=True,
    ),
    "whitespace-around-values": case(post(b"Content-Length:\t 5 \t\r\n", b"hello"), "RFC 9112 §5.1: OWS", served=True),
    "transfer-coding-any-case": case(
        post(b"Transfer-Encoding: ChUnKeD\r\n", chunk(b"hello") + b"0\r\n\r\n"),
        "RFC 9112 §7: case-insensitive",
        served=True,
    ),
    "chunk-sizes-zero-padded-and-upper-case": case(
        post(TE, b"0005\r\nhello\r\nA\r\n0123456789\r\n000\r\n\r\n"), "RFC 9112 §7.1: 1*HEXDIG", served=True
    ),
    "chunk-extensions-token-and-quoted": case(
        post(TE, chunk(b"hello", b';a=b;c="d;\\"e"') + b"0;last=1\r\n\r\n"), "RFC 9112 §7.1.1", served=True
    ),
    "trailer-fields": case(
        post(TE, chunk(b"hello") + b"0\r\nX-Sum: 1\r\nX-More: 2\r\n\r\n"), "RFC 9112 §7.1.2", served=True
    ),
    "trailer-naming-content-length": case(
        post(TE, chunk(b"hello") + b"0\r\nContent-Length: %d\r\n\r\n" % N) + SMUGGLED,
        "RFC 9110 §6.5.1: no framing from trailers",
    ),
    "obs-text-and-tabs-in-values": case(
        req(fields=b"X-A: caf\xc3\xa9\r\nX-B: a\tb\r\nX-C:\r\n"), "RFC 9110 §5.5", served=True
    ),
    "http10-keep-alive-pipelined": case(
        req(fields=b"Connection: keep-alive\r\n", version=b"HTTP/1.0") * 2, "RFC 9112 §9.3", served=True
    ),
    "http10-without-host": case(req(target=b"/any/x", host=None, version=b"HTTP/1.0"), "RFC 9112 §3.2", served=True),
    "http12-served-as-http11": case(
        req(version=b"HTTP/1.2"), "RFC 9110 §2.5: a higher minor version", served=True, xfail=KNOWN[6]
    ),
    "absolute-form-names-the-host": case(
        req(target=b"http://example.test/admin/x", host=b"Host: other.test\r\n"), "RFC 9112 §3.2.2", served=True
    ),
    "absolute-form-replaces-host": case(req(target=b"http://other.test/any/x"), "RFC 9112 §3.2.2", served=True),
    "absolute-form-upper-case": case(req(target=b"HTTP://EXAMPLE.TEST/admin/x"), "RFC 3986 §6.2.2.1", served=True),
    "host-with-port-dot-and-case": case(
        req(target=b"/admin/a", host=b"Host: example.test:80\r\n")
        + req(target=b"/admin/b", host=b"Host: example.test.\r\n")
        + req(target=b"/admin/c", host=b"Host: EXAMPLE.TEST\r\n"),
        "RFC 9110 §7.2; RFC 3986 §3.2.2",
        served=True,
    ),
    "host-ipv6-literal": case(req(target=b"/any/x", host=b"Host: [::1]:8080\r\n"), "RFC 3986 §3.2.2", served=True),
    "dot-segments": case(
        req(target=b"/public/../admin/a") + req(target=b"/../admin/b") + req(target=b"/public/./../admin/c"),
        "RFC 3986 §5.2.4",
        served=True,
    ),
    "empty-segments": case(req(target=b"//admin//x"), "gw merges slashes as nginx does", served=True),
    # (served as one segment, or refused: some backends decode %2F)
    "percent-encoded-slash": case(req(target=b"/public%2F..%2Fadmin"), "RFC 3986 §2.2"),
    "dot-segments-in-query-are-data": case(req(target=b"/x?next=/../admin"), "RFC 3986 §3.4", served=True),
    # gw refuses a Connection naming a framing field (README): what the client framed never goes upstream.
    "connection-transfer-encoding": case(
        post(b"Connection: transfer-encoding\r\n" + TE, chunk(b"hello") + b"0\r\n\r\n"), "RFC 9110 §7.6.1",
        statuses={400},
    ),
    "connection-upgrade-without-upgrade": case(req(fields=b"Connection: upgrade\r\n"), "RFC 9110 §7.8", served=True),
    "upgrade-without-connection-upgrade": case(
        req(fields=b"Upgrade: websocket\r\n") + SMUGGLED, "RFC 9110 §7.8: Upgrade needs Connection", served=True
    ),
    "h2c-upgrade-is-plain-http": case(
        req(fields=H2C) + SMUGGLED, "h2c smuggling (Bishop Fox 2020); RFC 9113 §3.1", served=True
    ),
    "websocket-refused-then-request": case(
        req(target=b"/ws-refuse", fields=WS) + SMUGGLED, "WebSocket smuggling via a failed upgrade", served=True
    ),
    "head-response-with-length": case(req(b"HEAD") + req(target=b"/y"), "HEAD response desync", served=True),
    "head-response-chunked": case(
        req(b"HEAD", b"/head-chunked") + req(target=b"/y"), "HEAD response desync", served=True
    ),
    "bodiless-204-and-304": case(
        req(target=b"/status/204") + req(target=b"/status/304") + req(target=b"/y"), "RFC 9112 §6.3 item 1", served=True
    ),
    "head-refused-without-content": case(
        req(b"HEAD", fields=b"Content-Length: 0\r\n" + TE, body=b"0\r\n\r\n"),
        "RFC 9110 §9.3.2: no content in an answer to HEAD",
        statuses={400},
        xfail=NEW["head-refusal"],
    ),
    "head-answered-by-gw": case(
        req(b"HEAD", host=b"Host: nohost.test\r\n") + req(b"HEAD", b"/redirect") + req(target=b"/y"),
        "RFC 9110 §9.3.2: no content in an answer to HEAD",
        served=True,
    ),
    "pipelined-after-404-and-302": case(
        req(host=b"Host: nohost.test\r\n") + req(target=b"/redirect") + req(target=b"/y"),
        "pipelining after gw's own answers",
        served=True,
    ),
    "expect-100-continue-with-body": case(
        post(b"Expect: 100-continue\r\n" + length(SMUGGLED), SMUGGLED),
        "RFC 9110 §10.1.1; 0.CL (Kettle 2025)",
        served=True,
    ),
    "expect-100-continue-any-case": case(
        post(b"Expect: 100-Continue\r\n" + length(b"hello"), b"hello"),
        "RFC 9110 §10.1.1: case-insensitive",
        served=True,
    ),
    "expect-100-continue-in-http10": case(
        req(
            b"POST",
            fields=b"Expect: 100-continue\r\nContent-Length: 5\r\nConnection: keep-alive\r\n",
            body=b"hello",
            version=b"HTTP/1.0",
        ),
        "RFC 9110 §10.1.1: no 100 to HTTP/1.0",
        served=True,
    ),
    "expect-100-continue-without-body": case(req(fields=b"Expect: 100-continue\r\n"), "RFC 9110 §10.1.1", served=True),
    "content_length-is-another-field": case(
        post(b"Content_Length: %d\r\n" % N, b"") + SMUGGLED,
        "CGI name folding (nginx underscores_in_headers)",
        served=True,
    ),
    # -- request line (RFC 9112 §3) ----------------------------------------------------------------
    "http20-request-line": case(req(version=b"HTTP/2.0"), "RFC 9110 §15.6.6: 505", statuses={505}, xfail=KNOWN[6]),
    "h2-prior-knowledge-preface": case(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", "RFC 9113 §3.4", statuses={400, 505}),
    "version-two-digit-minor": case(req(version=b"HTTP/1.10"), "RFC 9112 §2.3: DIGIT.DIGIT"),
    "version-lower-case": case(req(version=b"http/1.1"), "RFC 9112 §2.3: case-sensitive"),
    "double-space-after-method": case(
        b"GET  /x HTTP/1.1\r\n" + HOST + b"\r\n",
        "RFC 9112 §3: single SP",
        xfail=NEW["request-line-spaces"],
        only="behind",
    ),
    "double-space-before-version": case(
        b"GET /x  HTTP/1.1\r\n" + HOST + b"\r\n", "RFC 9112 §3: single SP", xfail=NEW["request-line-spaces"]
    ),
    "request-line-without-version": case(
        b"POST /x\r\n" + HOST + length(SMUGGLED) + b"\r\n" + SMUGGLED,
        "HTTP/0.9 form (RFC 9112 §3)",
        xfail=NEW["no-version"],
    ),
    "tab-after-method": case(b"GET\t/x HTTP/1.1\r\n" + HOST + b"\r\n", "RFC 9112 §3: single SP"),
    "space-after-version": case(b"GET /x HTTP/1.1 \r\n" + HOST + b"\r\n", "RFC 9112 §3"),
    "asterisk-form-outside-options": case(req(target=b"*"), "RFC 9112 §3.2.4"),
    "authority-form-outside-connect": case(req(target=b"example.test:80"), "RFC 9112 §3.2.3"),
    "connect-method": case(req(b"CONNECT", b"example.test:443"), "RFC 9110 §9.3.6", statuses={400, 405, 501}),
    "absolute-form-other-scheme": case(req(target=b"ftp://example.test/x"), "RFC 9110 §4.2"),
    "absolute-form-empty-host": case(
        req(target=b"http:///admin/x"), "RFC 9110 §4.2.1: MUST reject", xfail=NEW["abs-empty-host"]
    ),
    "absolute-form-without-host-field": case(
        req(target=b"http://example.test/x", host=None),
        "RFC 9112 §3.2: MUST 400",
        statuses={400},
        xfail=NEW["abs-no-host"],
    ),
    "absolute-form-with-userinfo": case(
        req(target=b"http://example.test@other.test/any/x"), "RFC 9110 §4.2.4", xfail=NEW["abs-userinfo"]
    ),
    "target-backslash": case(req(target=b"/public\\..\\admin"), "RFC 3986 §2; path confusion", xfail=KNOWN[4]),
    "target-fragment": case(req(target=b"/admin#/../x"), "RFC 9112 §3.2.1: no fragment", xfail=KNOWN[4]),
    "target-bad-percent-escape": case(req(target=b"/%zz"), "RFC 3986 §2.1", xfail=KNOWN[4]),
    "target-non-ascii": case(req(target=b"/caf\xc3\xa9"), "RFC 3986 §2"),
    "target-control-character": case(req(target=b"/x\x01y"), "RFC 9112 §3.2"),
    "percent-encoded-dot-segments": case(req(target=b"/public/%2e%2e/admin"), "RFC 3986 §6.2.2.2", xfail=KNOWN[4]),
    "percent-encoded-dot-segments-upper-case": case(
        req(target=b"/public/%2E%2E/admin"), "RFC 3986 §6.2.2.2", xfail=KNOWN[4]
    ),
    "half-encoded-dot-segment": case(req(target=b"/public/.%2e/admin"), "RFC 3986 §6.2.2.2", xfail=KNOWN[4]),
    "percent-encoded-unreserved": case(req(target=b"/%61dmin/x"), "RFC 3986 §6.2.2.2", xfail=KNOWN[4]),
    # -- field lines (RFC 9112 §5, RFC 9110 §5.5) ----------------------------------------------------
    "tab-before-colon": case(post(b"Content-Length\t: %d\r\n" % N, SMUGGLED), "RFC 9112 §5.1; 0.CL"),
    "obs-fold-hides-transfer-encoding": case(
        post(b"X-A: b\r\n\tTransfer-Encoding: chunked\r\n", b"0\r\n\r\n" + SMUGGLED), "RFC 9112 §5.2"
    ),
    "cr-before-crlf": case(req(fields=b"X-A: b\r\r\n"), "RFC 9112 §2.2: bare CR"),
    "vertical-tab-in-value": case(req(fields=b"X-A: a\x0bb\r\n"), "RFC 9110 §5.5"),
    "form-feed-in-value": case(req(fields=b"X-A: a\x0cb\r\n"), "RFC 9110 §5.5"),
    "del-in-value": case(req(fields=b"X-A: a\x7fb\r\n"), "RFC 9110 §5.5"),
    "eight-bit-field-name": case(req(fields=b"X-\xff: 1\r\n"), "RFC 9110 §5.1: token"),
    "empty-field-name": case(req(fields=b": 1\r\n"), "RFC 9110 §5.1: token"),
    # -- Host (RFC 9112 §3.2, RFC 9110 §7.2) ------------------------------------------------------------
    "host-empty": case(req(target=b"/any/x", host=b"Host: \r\n"), "RFC 9110 §7.2", xfail=KNOWN[2]),
    "host-with-space": case(req(target=b"/any/x", host=b"Host: a b\r\n"), "RFC 9112 §3.2: 400", xfail=KNOWN[3]),
    "host-with-path": case(
        req(target=b"/any/x", host=b"Host: example.test/admin\r\n"), "RFC 9112 §3.2", xfail=KNOWN[3]
    ),
    "host-with-userinfo": case(
        req(target=b"/any/x", host=b"Host: u@example.test\r\n"), "RFC 9112 §3.2", xfail=KNOWN[3]
    ),
    "host-with-bad-port": case(
        req(target=b"/any/x", host=b"Host: example.test:8o\r\n"), "RFC 9112 §3.2", xfail=KNOWN[3]
    ),
    "host-unclosed-ipv6": case(req(target=b"/any/x", host=b"Host: [::1\r\n"), "RFC 9112 §3.2", xfail=KNOWN[3]),
    "host-repeated-same": case(req(fields=HOST), "RFC 9112 §3.2: 400", statuses={400}),
    # -- Content-Length (RFC 9110 §8.6, RFC 9112 §6.3) ----------------------------------------------
    "content-length-2^63": case(
        post(b"Content-Length: 9223372036854775808\r\n", b"hello", b"/any/x", b"Host: other.test\r\n"),
        "RFC 9110 §8.6: overflow",
        xfail=KNOWN[5],
    ),
    "content-length-2^64": case(post(b"Content-Length: 18446744073709551616\r\n", b"hello"), "RFC 9110 §8.6: overflow"),
    "content-length-same-twice": case(post(length(b"hello") * 2, b"hello"), "RFC 9110 §8.6: MAY reject or merge"),
    "content-length-same-as-list": case(post(b"Content-Length: 5, 5\r\n", b"hello"), "RFC 9110 §8.6"),
    "content-length-decimal-point": case(post(b"Content-Length: 5.0\r\n", b"hello"), "RFC 9110 §8.6: 1*DIGIT"),
    "content-length-trailing-letter": case(post(b"Content-Length: %dx\r\n" % N, SMUGGLED), "RFC 9110 §8.6"),
    "content-length-unicode-digit": case(
        post(b"Content-Length: \xd9\xa5\r\n", b"hello"), "RFC 9110 §8.6: DIGIT is ASCII"
    ),
    # -- Transfer-Encoding (RFC 9112 §6.1, §7) --------------------------------------------------------
    "transfer-encoding-with-parameter": case(
        post(b"Transfer-Encoding: chunked;q=1\r\n", b"0\r\n\r\n" + SMUGGLED), "RFC 9112 §7"
    ),
    "transfer-encoding-quoted": case(
        post(b'Transfer-Encoding: "chunked"\r\n', b"0\r\n\r\n" + SMUGGLED), "RFC 9112 §6.1"
    ),
    "transfer-encoding-empty-elements": case(
        post(b"Transfer-Encoding: , chunked,\r\n", b"0\r\n\r\n" + SMUGGLED), "RFC 9110 §5.6.1: empty list elements"
    ),
    "transfer-encoding-nul": case(
        post(b"Transfer-Encoding: chunked\x00\r\n", b"0\r\n\r\n" + SMUGGLED), "RFC 9110 §5.5"
    ),
    "transfer-encoding-empty": case(post(b"Transfer-Encoding:\r\n" + length(SMUGGLED), SMUGGLED), "RFC 9112 §6.3: 400"),
    # -- chunked bodies: funky chunks, TERM.EXT / EXT.TERM / TERM.SPILL ----------------------------
    "chunk-ext-ended-by-bare-lf": case(post(TE, b"2;\nxx\r\n0\r\n\r\n" + SMUGGLED), "funky chunks: TERM.EXT"),
    "chunk-ext-with-bare-lf-then-crlf": case(
        post(TE, b"5;a\nb\r\nhello\r\n0\r\n\r\n" + SMUGGLED), "funky chunks: EXT.TERM"
    ),
    "chunk-ext-quoted-lf": case(post(TE, b'5;a="x\ny"\r\nhello\r\n0\r\n\r\n' + SMUGGLED), "RFC 9112 §7.1.1"),
    "chunk-ext-without-name": case(post(TE, b"5;\r\nhello\r\n0\r\n\r\n"), "RFC 9112 §7.1.1"),
    "chunk-ext-without-value": case(
        post(TE, b"5;a=\r\nhello\r\n0\r\n\r\n"), "RFC 9112 §7.1.1", xfail=NEW["chunk-ext-value"]
    ),
    "chunk-ext-with-whitespace": case(post(TE, chunk(b"hello", b" ; a = b") + b"0\r\n\r\n"), "RFC 9112 §7.1.1: BWS"),
    "chunk-ext-unbounded": case(
        post(TE, b"1;" + b"a" * (1 << 20) + b"\r\nx\r\n0\r\n\r\n"),
        "funky chunks: resource use",
        statuses={400, 413, 431},
        xfail=KNOWN[7],
    ),
    "chunk-size-trailing-space": case(post(TE, b"5 \r\nhello\r\n0\r\n\r\n" + SMUGGLED), "RFC 9112 §7.1"),
    "chunk-size-2^63": case(post(TE, b"8000000000000000\r\nhello"), "RFC 9112 §7.1: overflow", xfail=NEW["chunk-2^63"]),
    "chunk-size-2^64": case(post(TE, b"10000000000000000\r\nhello"), "RFC 9112 §7.1: overflow"),
    "chunk-data-then-bare-lf": case(post(TE, b"5\r\nhello\n0\r\n\r\n" + SMUGGLED), "funky chunks: TERM.SPILL"),
    "chunk-data-then-bare-cr": case(post(TE, b"5\r\nhello\r0\r\n\r\n" + SMUGGLED), "funky chunks: TERM.SPILL"),
    "chunk-data-one-byte-long": case(post(TE, b"5\r\nhelloX\r\n0\r\n\r\n" + SMUGGLED), "funky chunks: SPILL"),
    "last-chunk-then-bare-lf": case(post(TE, b"5\r\nhello\r\n0\r\n\n" + SMUGGLED), "RFC 9112 §7.1"),
    "trailer-obs-fold": case(post(TE, b"0\r\nX-A: b\r\n c\r\n\r\n" + SMUGGLED), "RFC 9112 §7.1.2, §5.2"),
    "trailer-bare-lf": case(post(TE, b"0\r\nX-A: b\n\r\n" + SMUGGLED), "RFC 9112 §7.1.2"),
    "trailer-without-colon": case(post(TE, b"0\r\nGET /admin/smuggled\r\n\r\n"), "RFC 9112 §7.1.2"),
    # -- Connection (RFC 9110 §7.6.1, RFC 9112 §9) --------------------------------------------------
    "connection-content-length": case(
        post(b"Connection: content-length\r\n" + length(SMUGGLED), SMUGGLED), "hop-by-hop abuse", xfail=KNOWN[1]
    ),
    "connection-keep-alive-content-length": case(
        post(b"Connection: keep-alive, Content-Length\r\n" + length(SMUGGLED), SMUGGLED),
        "hop-by-hop abuse",
        xfail=KNOWN[1],
    ),
    "connection-close-host": case(req(fields=b"Connection: close, Host\r\n"), "hop-by-hop abuse", xfail=KNOWN[1]),
    "connection-close-then-request": case(req(fields=b"Connection: close\r\n") + SMUGGLED, "RFC 9112 §9.6"),
    "connection-close-upper-case": case(req(fields=b"Connection: CLOSE\r\n") + SMUGGLED, "RFC 9112 §9.6"),
    "connection-close-second-line": case(
        req(fields=b"Connection: keep-alive\r\nConnection: close\r\n") + SMUGGLED, "RFC 9110 §5.3: lines combine"
    ),
    "connection-close-in-list": case(req(fields=b"Connection: x-a, close\r\nX-A: 1\r\n") + SMUGGLED, "RFC 9112 §9.6"),
    "http10-without-keep-alive-then-request": case(req(version=b"HTTP/1.0") + SMUGGLED, "RFC 9112 §9.3"),
    "http10-keep-alive-and-close": case(
        req(fields=b"Connection: keep-alive, close\r\n", version=b"HTTP/1.0") + SMUGGLED,
        "RFC 9112 §9.3: close wins",
        xfail=NEW["http10-close"],
    ),
    "http10-close-then-keep-alive-lines": case(
        req(fields=b"Connection: close\r\nConnection: keep-alive\r\n", version=b"HTTP/1.0") + SMUGGLED,
        "RFC 9112 §9.3: close wins",
        xfail=NEW["http10-close"],
    ),
    "connection-value-not-token-list": case(
        req(fields=b"Connection: close x\r\n") + SMUGGLED,
        "RFC 9110 §7.6.1: #token",
        statuses={400},
        xfail=NEW["connection-syntax"],
    ),
    "proxy-connection-is-not-connection": case(req(fields=b"Proxy-Connection: close\r\n") + SMUGGLED, "RFC 9112 §9.6"),
    # -- Upgrade (RFC 9110 §7.8) -----------------------------------------------------------------------
    "h2c-then-request-without-host": case(
        req(fields=b"Connection: Upgrade\r\nUpgrade: h2c\r\n") + b"GET /y HTTP/1.1\r\n\r\n", "h2c", xfail=KNOWN[8]
    ),
    "h2c-then-garbage": case(req(fields=b"Connection: Upgrade\r\nUpgrade: h2c\r\n") + b"GARBAGE\r\n\r\n", "h2c"),
    "h2c-then-cl-te": case(
        req(fields=H2C) + post(length(b"x") + TE, b"0\r\n\r\n" + SMUGGLED), "h2c; CL.TE after an ignored upgrade"
    ),
    "websocket-refused-early-with-body": case(
        post(WS + length(SMUGGLED), SMUGGLED, b"/early/ws"),
        "WebSocket smuggling via a failed upgrade; RFC 6455 §4.1: the handshake is a GET without content",
        statuses={400},
        xfail=NEW["upgrade-body"],
    ),
    # -- client-side desync: gw's own answers before the body (Kettle 2022, 2025) ------------------
    "no-route-with-body": case(
        post(length(SMUGGLED), SMUGGLED, host=b"Host: nohost.test\r\n") + req(target=b"/y"),
        "client-side desync; CL.0",
        xfail=NEW["after-close"],
        only="alone",
    ),
    "redirect-with-body": case(
        post(length(SMUGGLED), SMUGGLED, b"/redirect") + req(target=b"/y"),
        "client-side desync; CL.0",
        xfail=NEW["after-close"],
        only="alone",
    ),
    "get-no-route-with-body": case(
        req(fields=length(SMUGGLED), body=SMUGGLED, host=b"Host: nohost.test\r\n") + req(target=b"/y"),
        "CL.0",
        xfail=NEW["after-close"],
        only="alone",
    ),
    "expect-100-continue-no-route-with-body": case(
        post(b"Expect: 100-continue\r\n" + length(SMUGGLED), SMUGGLED, host=b"Host: nohost.test\r\n")
        + req(target=b"/y"),
        "Expect-based desync (Kettle 2025)",
        xfail=NEW["after-close"],
        only="alone",
    ),
    "expect-obfuscated": case(
        post(b"Expect: y 100-continue\r\n" + length(SMUGGLED), SMUGGLED),
        "Expect-based desync (Kettle 2025)",
        statuses={417},
    ),
    "expect-100-continue-with-hidden-length": case(
        post(b"Expect: 100-continue\r\nContent-Length : %d\r\n" % N, SMUGGLED), "0.CL (Kettle 2025)"
    ),
}


@pytest.fixture(scope="module")
def desync(module_desync: Desync) -> Desync:
    return module_desync


def _params() -> list[object]:
    """Each case twice: its bytes alone in a read (gw's fast path for a lone head), and behind
    another request in the same read (its full parser)."""
    return [
        pytest.param(
            name,
            how,
            id=f"{name}-{how}",
            marks=[pytest.mark.xfail(strict=True, reason=c.xfail)] if c.xfail and c.only in ("", how) else [],
        )
        for name, c in CASES.items()
        for how in ("alone", "behind")
    ]


@pytest.mark.parametrize(("name", "how"), _params())
def test_upstream_sees_exactly_what_the_client_framed(name: str, how: str, desync: Desync) -> None:
    c = CASES[name]
    outcome = desync.run(c.data, behind=how == "behind").check()
    if c.served:
        outcome.served()
    if c.statuses:
        outcome.refused(set(c.statuses))


# -- cases in several steps: what a client sends after gw has answered ----------------------------


def test_pause_based_desync_body_after_timeout(desync: Desync) -> None:
    """The head, then the body (a request) once gw gave up waiting: it answers 408 and closes,
    and the late body is never read as a request (Kettle 2022, pause-based desync)."""
    outcome = desync.run_steps((post(length(SMUGGLED), b""), 1), (SMUGGLED, 0)).check()
    assert outcome.statuses == [408]


def test_pause_based_desync_on_a_route_gw_answers(desync: Desync) -> None:
    """gw answers a request without a route before its body: it closes, so the body sent later
    is not a request (client-side desync)."""
    head = post(length(SMUGGLED), b"", host=b"Host: nohost.test\r\n")
    outcome = desync.run_steps((head, 1), (SMUGGLED, 0)).check()
    assert outcome.statuses == [404]


def test_redirect_before_the_body(desync: Desync) -> None:
    outcome = desync.run_steps((post(length(SMUGGLED), b"", b"/redirect"), 1), (SMUGGLED, 0)).check()
    assert outcome.statuses == [302]


def test_partial_head_then_timeout(desync: Desync) -> None:
    """A head cut short is answered 408 when the header timeout fires; what follows is not read."""
    outcome = desync.run_steps(
        (b"POST /x HTTP/1.1\r\nHost: example.test\r\n", 1), (length(SMUGGLED) + b"\r\n" + SMUGGLED, 0)
    )
    outcome.check()
    assert outcome.statuses == [408]
    assert outcome.captured == []


def test_expect_100_continue_in_two_steps(desync: Desync) -> None:
    """The body follows the 100 Continue (RFC 9110 §10.1.1) and reaches the upstream exactly."""
    head = post(b"Expect: 100-continue\r\n" + length(SMUGGLED), b"")
    outcome = desync.run_steps((head, 1), (SMUGGLED, 0)).check().served()
    assert [r.status for r in outcome.responses.messages][:1] == [100]


def test_expect_100_continue_refused_before_the_body(desync: Desync) -> None:
    """An expectation gw answers with a final status (no route) ends the exchange: the body the
    client sends anyway is not a request (Kettle 2025, Expect-based desync)."""
    head = post(b"Expect: 100-continue\r\n" + length(SMUGGLED), b"", host=b"Host: nohost.test\r\n")
    outcome = desync.run_steps((head, 1), (SMUGGLED, 0)).check()
    assert outcome.statuses == [404]


def test_websocket_refused_then_request_in_two_steps(desync: Desync) -> None:
    """After the upstream refuses the upgrade, what the client sends is HTTP again, routed by gw."""
    outcome = desync.run_steps((req(target=b"/ws-refuse", fields=WS), 1), (SMUGGLED, 0)).check().served()
    assert outcome.statuses[:2] == [403, 200]


def test_websocket_tunnel_carries_bytes_not_requests(desync: Desync) -> None:
    """After a 101 the client's bytes reach the upstream as tunnel data only, exactly."""
    handshake = req(target=b"/ws-accept", fields=WS)
    outcome = desync.run_steps((handshake, 1), (SMUGGLED, 0)).check()
    assert outcome.statuses == [101]
    assert [c.message.target for c in outcome.captured] == [b"/ws-accept"]
    tunnels = [bytes(c.tunnel) for c in outcome.connections if c.tunnel is not None]
    assert tunnels == [SMUGGLED]


def test_gateway_survived_the_corpus(desync: Desync) -> None:
    """Runs last: the process is alive (each case checked the worker and its log on its own)."""
    assert desync.gw.alive()
