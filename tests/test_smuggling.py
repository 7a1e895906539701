"""Request smuggling corpus: every ambiguous framing is refused, the connection closed, and the
request hidden behind it never reaches the upstream (RFC 9112 §6.1, §6.3, §7.1, §5; RFC 9110 §5.5).

Each attempt carries a second request at /smuggled-<case>; each runs through the differential
check of tests.support.desync (the upstream saw exactly what the client framed, the client got
one answer per request, the worker serves on), then must be refused as the table says.
tests/test_desync_corpus.py holds the rest of the corpus.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.desync import Desync
from tests.support.gateway import GatewayProcess, Wire, wire
from tests.support.shapes import SHAPES, send_shaped, settle
from tests.support.upstream import Upstream

HEAD = b"POST /front HTTP/1.1\r\nHost: example.test\r\n"


WS_HEAD = (
    b"GET /front HTTP/1.1\r\nHost: example.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
)


def smuggled(case: str) -> bytes:
    return b"GET /smuggled-%s HTTP/1.1\r\nHost: example.test\r\n\r\n" % case.encode()


def chunk_of(data: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(data), data)


def attempt(case: str) -> bytes:
    """The bytes of attempt `case`; `S` is the request it tries to smuggle."""
    S = smuggled(case)
    n = len(S)
    return {
        # -- CL.TE / TE.CL: both framings on one message (RFC 9112 §6.1: MUST be treated as an error)
        "cl-te": HEAD + b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + S,
        "te-cl": HEAD + b"Transfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n" + chunk_of(S) + b"0\r\n\r\n",
        "cl-te-body-is-request": HEAD
        + b"Content-Length: %d\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n%b" % (n + 5, S),
        # -- TE.TE: obfuscated Transfer-Encoding that one parser honours and another ignores
        "te-trailing-space-with-cl": HEAD + b"Content-Length: 5\r\nTransfer-Encoding: chunked \r\n\r\n0\r\n\r\n" + S,
        "te-xchunked": HEAD + b"Transfer-Encoding: xchunked\r\n\r\n0\r\n\r\n" + S,
        "te-xchunked-with-cl": HEAD + b"Content-Length: 5\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n" + S,
        "te-chunked-identity": HEAD + b"Transfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n" + S,
        "te-gzip-chunked": HEAD + b"Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n" + S,
        "te-identity": HEAD + b"Transfer-Encoding: identity\r\nContent-Length: 5\r\n\r\n0\r\n\r\n" + S,
        "te-duplicated": HEAD + b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + S,
        "te-duplicated-differing": HEAD + b"Transfer-Encoding: chunked\r\nTransfer-Encoding: x\r\n\r\n0\r\n\r\n" + S,
        "te-tab-before-value-with-cl": HEAD + b"Content-Length: 5\r\nTransfer-Encoding:\tchunked\r\n\r\n0\r\n\r\n" + S,
        "te-tab-before-colon": HEAD + b"Transfer-Encoding\t: chunked\r\n\r\n0\r\n\r\n" + S,
        "te-space-before-colon": HEAD + b"Transfer-Encoding : chunked\r\n\r\n0\r\n\r\n" + S,
        "te-vertical-tab": HEAD + b"Transfer-Encoding: \x0bchunked\r\n\r\n0\r\n\r\n" + S,
        "te-obs-fold": HEAD + b"Transfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n" + S,
        "te-in-http10": b"POST /front HTTP/1.0\r\nHost: example.test\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
        + S,
        "te-in-http10-with-cl": b"POST /front HTTP/1.0\r\nHost: example.test\r\nContent-Length: 5\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + S,
        # -- Content-Length variants (RFC 9110 §8.6: 1*DIGIT; differing values are unrecoverable)
        "cl-duplicate-differing": HEAD + b"Content-Length: 0\r\nContent-Length: %d\r\n\r\n%b" % (n, S),
        "cl-list-differing": HEAD + b"Content-Length: 0, %d\r\n\r\n%b" % (n, S),
        "cl-plus-sign": HEAD + b"Content-Length: +%d\r\n\r\n%b" % (n, S),
        "cl-minus-sign": HEAD + b"Content-Length: -1\r\n\r\n" + S,
        "cl-space-inside": HEAD + b"Content-Length: 1 0\r\n\r\n" + S,
        "cl-hex": HEAD + b"Content-Length: 0x%x\r\n\r\n%b" % (n, S),
        "cl-empty": HEAD + b"Content-Length: \r\n\r\n" + S,
        "cl-overflow": HEAD + b"Content-Length: 99999999999999999999999\r\n\r\n" + S,
        # beyond a signed 64-bit length: what many upstreams cannot hold, llhttp (unsigned) lets through
        "cl-over-int64": HEAD + b"Content-Length: 9223372036854775808\r\n\r\n" + S,
        "cl-uint64-max": HEAD + b"Content-Length: 18446744073709551615\r\n\r\n" + S,
        # -- Connection naming a framing field (RFC 9110 §7.6.1 would have it removed, and with it
        # the framing the body was read with, or the Host the request was routed by)
        "connection-names-content-length": HEAD
        + b"Connection: Content-Length\r\nContent-Length: %d\r\n\r\n%b" % (n, S),
        "connection-names-content-length-among-others": HEAD
        + b"Connection: keep-alive, X-Trace, content-length\r\nContent-Length: %d\r\n\r\n%b" % (n, S),
        "connection-names-content-length-second-line": HEAD
        + b"Connection: keep-alive\r\nContent-Length: %d\r\nConnection: CONTENT-LENGTH\r\n\r\n%b" % (n, S),
        "connection-names-transfer-encoding": HEAD
        + b"Connection: Transfer-Encoding\r\nTransfer-Encoding: chunked\r\n\r\n"
        + chunk_of(S)
        + b"0\r\n\r\n",
        "connection-names-host": b"GET /front HTTP/1.1\r\nHost: example.test\r\nConnection: close, Host\r\n\r\n" + S,
        # -- chunk-size tricks (RFC 9112 §7.1: chunk-size = 1*HEXDIG)
        "chunk-size-overflow": HEAD + b"Transfer-Encoding: chunked\r\n\r\nfffffffffffffffff1\r\n" + S,
        "chunk-size-negative": HEAD + b"Transfer-Encoding: chunked\r\n\r\n-5\r\nhello\r\n0\r\n\r\n" + S,
        "chunk-size-0x-prefix": HEAD + b"Transfer-Encoding: chunked\r\n\r\n0x5\r\nhello\r\n0\r\n\r\n" + S,
        "chunk-size-inner-space": HEAD + b"Transfer-Encoding: chunked\r\n\r\n1 0\r\n%b0\r\n\r\n" % S[:16],
        "chunk-size-leading-space": HEAD + b"Transfer-Encoding: chunked\r\n\r\n 5\r\nhello\r\n0\r\n\r\n" + S,
        "chunk-size-empty": HEAD + b"Transfer-Encoding: chunked\r\n\r\n\r\nhello\r\n0\r\n\r\n" + S,
        "chunk-data-missing-crlf": HEAD + b"Transfer-Encoding: chunked\r\n\r\n5\r\nhelloX0\r\n\r\n" + S,
        "chunk-data-longer-than-size": HEAD + b"Transfer-Encoding: chunked\r\n\r\n2\r\nhello\r\n0\r\n\r\n" + S,
        "chunk-bare-lf": HEAD + b"Transfer-Encoding: chunked\r\n\r\n5\nhello\n0\n\n" + S,
        "chunk-ext-bare-cr": HEAD + b"Transfer-Encoding: chunked\r\n\r\n5;a=\rb\r\nhello\r\n0\r\n\r\n" + S,
        # -- field syntax (RFC 9112 §5.1, §5.2; RFC 9110 §5.5)
        "obs-fold": HEAD + b"X-Folded: a\r\n b\r\nContent-Length: 0\r\n\r\n" + S,
        "obs-fold-tab": HEAD + b"X-Folded: a\r\n\tb\r\nContent-Length: 0\r\n\r\n" + S,
        "cr-in-value": HEAD + b"X-Bad: a\rContent-Length: 0\r\n\r\n" + S,
        "lf-in-value": HEAD + b"X-Bad: a\nContent-Length: 0\r\n\r\n" + S,
        "nul-in-value": HEAD + b"X-Bad: a\x00b\r\nContent-Length: 0\r\n\r\n" + S,
        "space-before-colon": HEAD + b"Content-Length : %d\r\n\r\n%b" % (n, S),
        "space-in-name": HEAD + b"Content Length: %d\r\n\r\n%b" % (n, S),
        "leading-whitespace-first-field": b"POST /front HTTP/1.1\r\n Content-Length: %d\r\nHost: example.test\r\n\r\n%b"
        % (n, S),
        "bare-lf-lines": b"POST /front HTTP/1.1\nHost: example.test\nContent-Length: %d\n\n%b" % (n, S),
        "bare-lf-ending-head": HEAD + b"Content-Length: %d\r\n\n%b" % (n, S),
        "bare-cr-line-ending": b"POST /front HTTP/1.1\rHost: example.test\rContent-Length: 0\r\r" + S,
        "duplicate-host": b"GET /front HTTP/1.1\r\nHost: example.test\r\nHost: other.test\r\n\r\n" + S,
        "missing-host-http11": b"GET /front HTTP/1.1\r\nContent-Length: 0\r\n\r\n" + S,
        # -- Host that is not uri-host [":" port] (RFC 9112 §3.2: 400)
        "empty-host": b"GET /front HTTP/1.1\r\nHost:\r\n\r\n" + S,
        "host-with-userinfo": b"GET /front HTTP/1.1\r\nHost: front@example.test\r\n\r\n" + S,
        "host-with-path": b"GET /front HTTP/1.1\r\nHost: example.test/smuggled\r\n\r\n" + S,
        "absolute-form-with-userinfo": b"GET http://front@example.test/front HTTP/1.1\r\nHost: example.test\r\n\r\n"
        + S,
        "absolute-form-without-host-field": b"GET http://example.test/front HTTP/1.1\r\n\r\n" + S,
        "absolute-form-empty-authority": b"GET http:///front HTTP/1.1\r\nHost: example.test\r\n\r\n" + S,
        # -- request line
        "http09-style-line": b"GET /front\r\n\r\n" + S,
        "space-in-target": b"GET /front /x HTTP/1.1\r\nHost: example.test\r\n\r\n" + S,
        "space-before-version": b"GET /front  HTTP/1.1\r\nHost: example.test\r\n\r\n" + S,
        "space-after-method": b"GET  /front HTTP/1.1\r\nHost: example.test\r\n\r\n" + S,
        "unknown-version": b"GET /front HTTP/7.1\r\nHost: example.test\r\n\r\n" + S,
        "http2-version": b"GET /front HTTP/2.0\r\nHost: example.test\r\n\r\n" + S,
        "http09-version": b"GET /front HTTP/0.9\r\nHost: example.test\r\n\r\n" + S,
        "lowercase-method": b"get /front HTTP/1.1\r\nHost: example.test\r\n\r\n" + S,
        # -- a WebSocket handshake is a GET without content (RFC 6455 §4.1): a body would be held as
        # tunnel bytes, and read as a request once the upstream refuses the upgrade
        "websocket-with-content-length": WS_HEAD + b"Content-Length: %d\r\n\r\n%b" % (n, S),
        "websocket-chunked": WS_HEAD + b"Transfer-Encoding: chunked\r\n\r\n" + chunk_of(S) + b"0\r\n\r\n",
        # -- expectations we do not implement (RFC 9110 §10.1.1: 417)
        "expect-unknown": HEAD + b"Expect: 200-ok\r\nContent-Length: %d\r\n\r\n%b" % (n, S),
    }[case]


CASES = {
    "cl-te": {400},
    "te-cl": {400},
    "cl-te-body-is-request": {400},
    "te-trailing-space-with-cl": {400},
    "te-xchunked": {400, 501},
    "te-xchunked-with-cl": {400, 501},
    "te-chunked-identity": {400, 501},
    "te-gzip-chunked": {400, 501},
    "te-identity": {400, 501},
    "te-duplicated": {400},
    "te-duplicated-differing": {400, 501},
    "te-tab-before-value-with-cl": {400},
    "te-tab-before-colon": {400},
    "te-space-before-colon": {400},
    "te-vertical-tab": {400, 501},
    "te-obs-fold": {400},
    "te-in-http10": {400},
    "te-in-http10-with-cl": {400},
    "cl-duplicate-differing": {400},
    "cl-list-differing": {400},
    "cl-plus-sign": {400},
    "cl-minus-sign": {400},
    "cl-space-inside": {400},
    "cl-hex": {400},
    "cl-empty": {400},
    "cl-overflow": {400, 413},
    "cl-over-int64": {400},
    "cl-uint64-max": {400},
    "connection-names-content-length": {400},
    "connection-names-content-length-among-others": {400},
    "connection-names-content-length-second-line": {400},
    "connection-names-transfer-encoding": {400},
    "connection-names-host": {400},
    "chunk-size-overflow": {400, 413},
    "chunk-size-negative": {400},
    "chunk-size-0x-prefix": {400},
    "chunk-size-inner-space": {400},
    "chunk-size-leading-space": {400},
    "chunk-size-empty": {400},
    "chunk-data-missing-crlf": {400},
    "chunk-data-longer-than-size": {400},
    "chunk-bare-lf": {400},
    "chunk-ext-bare-cr": {400},
    "obs-fold": {400},
    "obs-fold-tab": {400},
    "cr-in-value": {400},
    "lf-in-value": {400},
    "nul-in-value": {400},
    "space-before-colon": {400},
    "space-in-name": {400},
    "leading-whitespace-first-field": {400},
    "bare-lf-lines": {400},
    "bare-lf-ending-head": {400},
    "bare-cr-line-ending": {400},
    "duplicate-host": {400},
    "missing-host-http11": {400},
    "empty-host": {400},
    "host-with-userinfo": {400},
    "host-with-path": {400},
    "absolute-form-with-userinfo": {400},
    "absolute-form-empty-authority": {400},
    "absolute-form-without-host-field": {400},
    "http09-style-line": {400, 505},
    "space-in-target": {400},
    "space-before-version": {400},
    "space-after-method": {400},
    "unknown-version": {505},
    "http2-version": {505},
    "http09-version": {505},
    "lowercase-method": {400, 501},
    "websocket-with-content-length": {400},
    "websocket-chunked": {400},
    "expect-unknown": {417},
}


@pytest.fixture(scope="module")
def desync(module_desync: Desync) -> Desync:
    return module_desync


@pytest.mark.parametrize("how", ["alone", "behind"])  # in a read of its own, or pipelined behind a request
@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_smuggling_attempt_is_refused_and_connection_closed(case: str, how: str, desync: Desync) -> None:
    outcome = desync.run(attempt(case), behind=how == "behind").check()
    outcome.refused(CASES[case])
    assert not [c for c in outcome.captured if c.message.target == b"/smuggled-" + case.encode()]


def test_corpus_requests_are_well_formed_apart_from_their_trick(desync: Desync) -> None:
    """Control: the same front request with honest framing is served, and the request behind it
    is answered as an ordinary pipelined one — so the refusals above are about the trick."""
    outcome = desync.run(HEAD + b"Content-Length: 5\r\n\r\nhello" + smuggled("control")).check().served()
    assert [c.message.target for c in outcome.captured] == [b"/front", b"/smuggled-control", b"/__end__"]


# -- a head alone in its read takes the gateway's fast path: the same refusals hold there ----------

HEADS = {
    "connection-names-content-length": b"POST /front-%s HTTP/1.1\r\nHost: example.test\r\n"
    b"Connection: Content-Length\r\nContent-Length: 60\r\n\r\n",
    "connection-names-transfer-encoding": b"POST /front-%s HTTP/1.1\r\nHost: example.test\r\n"
    b"Connection: transfer-encoding\r\nTransfer-Encoding: chunked\r\n\r\n",
    "connection-names-host": b"GET /front-%s HTTP/1.1\r\nHost: example.test\r\nConnection: close, Host\r\n\r\n",
    "cl-over-int64": b"POST /front-%s HTTP/1.1\r\nHost: example.test\r\nContent-Length: 9223372036854775808\r\n\r\n",
    "space-before-version": b"GET /front-%s  HTTP/1.1\r\nHost: example.test\r\n\r\n",
    "websocket-with-content-length": b"GET /front-%s HTTP/1.1\r\nHost: example.test\r\nConnection: Upgrade\r\n"
    b"Upgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
    b"Content-Length: 60\r\n\r\n",
}


@pytest.fixture(scope="module")
def gw(module_gateway: GatewayProcess) -> GatewayProcess:
    return module_gateway


@pytest.fixture
def conn(gw: GatewayProcess) -> Iterator[Wire]:
    c = wire(gw, timeout=5)
    yield c
    c.close()


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("case", list(HEADS))
def test_framing_trick_is_refused_in_either_shape(
    case: str, shape: str, conn: Wire, gw: GatewayProcess, module_upstream: Upstream
) -> None:
    """The head alone (no body sent: the answer comes at the head) and behind a pipelined request."""
    marker = f"{case}-{shape}"
    resp = send_shaped(conn, shape, HEADS[case] % marker.encode(), marker)
    assert resp.status == 400
    assert resp.header("content-type") == "application/problem+json"
    assert conn.closed_by_peer()
    settle(gw, marker)
    assert f"/front-{marker}" not in [s.target for s in module_upstream.seen]


def test_connection_naming_content_length_hides_nothing(
    conn: Wire, gw: GatewayProcess, module_upstream: Upstream
) -> None:
    """The corpus's critical case spelled out: a request hidden in the body of a POST whose
    Connection names Content-Length reaches the upstream neither as a body nor as a request."""
    hidden = b"GET /admin/hidden HTTP/1.1\r\nHost: example.test\r\n\r\n"
    conn.send(
        b"POST /public HTTP/1.1\r\nHost: example.test\r\nConnection: Content-Length\r\n"
        b"Content-Length: %d\r\n\r\n%b" % (len(hidden), hidden)
    )
    assert conn.read_response().status == 400
    assert conn.closed_by_peer()
    settle(gw, "hidden")
    targets = [s.target for s in module_upstream.seen]
    assert "/public" not in targets
    assert "/admin/hidden" not in targets
