"""HTTP/1.1 message semantics through the gateway (RFC 9110, RFC 9112), against a real upstream.

Keep-alive on both sides, HTTP/1.0 clients, HEAD, bodiless statuses, pipelining, h2c upgrades
served as HTTP/1.1, Expect: 100-continue, request and response body framing, interim responses, and the one safe retry
of an idempotent request on a stale upstream connection.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator

import pytest

from tests.conftest import StartGateway
from tests.support.gateway import GatewayProcess, Wire, chunked, http_request, parse_responses, wire
from tests.support.shapes import SHAPES, send_shaped, settle
from tests.support.upstream import PATTERN, Seen, Upstream, pattern_sha256


@pytest.fixture(scope="module")
def gw(module_gateway: GatewayProcess) -> GatewayProcess:
    return module_gateway


@pytest.fixture
def conn(gw: GatewayProcess) -> Iterator[Wire]:
    c = wire(gw)
    yield c
    c.close()


def echoed(body: bytes) -> dict[str, object]:
    return json.loads(body)


def seen_for(upstream: Upstream, target: str) -> list[Seen]:
    return [s for s in upstream.seen if s.target == target]


# -- keep-alive ------------------------------------------------------------------------------------


def test_client_connection_is_kept_alive_across_requests(conn: Wire) -> None:
    """RFC 9112 §9.3: HTTP/1.1 connections persist unless either side says close."""
    for i in range(3):
        conn.send(http_request("GET", f"/echo?keepalive={i}"))
        resp = conn.read_response()
        assert resp.status == 200
        assert echoed(resp.body)["target"] == f"/echo?keepalive={i}"
        assert (resp.header("connection") or "").lower() != "close"


def test_upstream_connections_are_reused(conn: Wire, module_upstream: Upstream) -> None:
    """The pool keeps upstream connections alive: many requests, fewer upstream connections."""
    before = module_upstream.connections
    for i in range(6):
        conn.send(http_request("GET", f"/echo?reuse={i}"))
        assert conn.read_response().status == 200
    served = [s for s in module_upstream.seen if s.target.startswith("/echo?reuse=")]
    assert len(served) == 6
    assert module_upstream.connections - before <= 1
    assert len({s.connection for s in served}) == 1


def test_upstream_max_requests_retires_a_connection(upstream: Upstream, start_gateway: StartGateway) -> None:
    """GW_UPSTREAM_MAX_REQUESTS=2: each upstream connection carries two requests, then a new one opens."""
    gw = start_gateway(
        {"up": [("127.0.0.1", upstream.port)]},
        [{"name": "all", "rules": [{"backendRefs": [{"backend": "up"}]}]}],
        env={"GW_UPSTREAM_MAX_REQUESTS": "2"},
    )
    c = wire(gw)
    for i in range(6):
        c.send(http_request("GET", f"/echo?n={i}"))
        assert c.read_response().status == 200
    assert [(s.connection, s.nth) for s in upstream.seen] == [(1, 1), (1, 2), (2, 1), (2, 2), (3, 1), (3, 2)]


def test_connection_close_from_client_is_honoured(conn: Wire) -> None:
    """RFC 9112 §9.6: after a response to a request with Connection: close, the server closes."""
    conn.send(http_request("GET", "/echo", {"Connection": "close"}))
    resp = conn.read_response()
    assert resp.status == 200
    assert (resp.header("connection") or "").lower() == "close"
    assert conn.closed_by_peer()


# -- HTTP/1.0 clients ------------------------------------------------------------------------------


def test_http10_request_without_keepalive_is_answered_then_closed(conn: Wire) -> None:
    """RFC 9112 §9.3: an HTTP/1.0 connection is not persistent unless keep-alive is asked for."""
    conn.send(b"GET /echo HTTP/1.0\r\n\r\n")
    resp = conn.read_response()
    assert resp.status == 200
    assert echoed(resp.body)["method"] == "GET"
    assert conn.closed_by_peer()


def test_http10_request_reaches_the_upstream_with_a_host(conn: Wire, module_upstream: Upstream) -> None:
    """An HTTP/1.0 request without Host goes upstream as HTTP/1.1, which requires Host (RFC 9112 §3.2)."""
    conn.send(b"GET /echo?http10host HTTP/1.0\r\n\r\n")
    assert conn.read_response().status == 200
    (seen,) = seen_for(module_upstream, "/echo?http10host")
    assert seen.version == "HTTP/1.1"
    assert seen.header("host")


def test_http10_keepalive_connection_persists(conn: Wire) -> None:
    """RFC 9112 Appendix C.2.2: an HTTP/1.0 client asking for keep-alive keeps its connection."""
    conn.send(b"GET /echo?a HTTP/1.0\r\nHost: example.test\r\nConnection: keep-alive\r\n\r\n")
    first = conn.read_response()
    assert first.status == 200
    assert (first.header("connection") or "").lower() == "keep-alive"
    conn.send(b"GET /echo?b HTTP/1.0\r\nHost: example.test\r\nConnection: keep-alive\r\n\r\n")
    second = conn.read_response()
    assert echoed(second.body)["target"] == "/echo?b"


def test_the_same_head_again_is_served_as_the_first(conn: Wire, module_upstream: Upstream) -> None:
    """A read byte for byte the last one is not parsed again (the fast path replays llhttp's word on
    it): an HTTP/1.0 keep-alive head stays kept alive each time (llhttp clears its flags after a
    message, so its later word would be close), and a head that closes is never replayed."""
    head = b"GET /echo?again HTTP/1.0\r\nHost: example.test\r\nConnection: keep-alive\r\n\r\n"
    before = len(seen_for(module_upstream, "/echo?again"))
    for _ in range(4):
        conn.send(head)
        resp = conn.read_response()
        assert resp.status == 200 and (resp.header("connection") or "").lower() == "keep-alive"
    assert len(seen_for(module_upstream, "/echo?again")) == before + 4
    # A POST in between (its body read by the full parser), then the same GET again.
    conn.send(http_request("POST", "/echo?again-post", body=b"x" * 10, version="1.0",
                           headers={"Connection": "keep-alive"}))  # fmt: skip
    assert echoed(conn.read_response().body)["body_bytes"] == 10
    conn.send(head)
    assert conn.read_response().status == 200
    close = b"GET /echo?again-close HTTP/1.1\r\nHost: example.test\r\nConnection: close\r\n\r\n"
    conn.send(close)
    assert conn.read_response().status == 200
    assert conn.closed_by_peer()


@pytest.mark.parametrize(
    "connection",
    [b"Connection: keep-alive, close\r\n", b"Connection: close\r\nConnection: keep-alive\r\n"],
    ids=["one-line", "two-lines"],
)
def test_http10_close_wins_over_keepalive(conn: Wire, connection: bytes) -> None:
    """RFC 9112 §9.6: a request naming close is the last on its connection, keep-alive named or not
    (llhttp keeps such an HTTP/1.0 request alive). The head alone in its read: the fast path."""
    conn.send(b"GET /echo?close-wins HTTP/1.0\r\nHost: example.test\r\n" + connection + b"\r\n")
    resp = conn.read_response()
    assert resp.status == 200
    assert (resp.header("connection") or "close").lower() == "close"
    assert conn.closed_by_peer()


@pytest.mark.parametrize("value", [b"close x", b"keep-alive;q=1", b'"close"'])
def test_connection_value_that_is_no_token_list_is_refused(conn: Wire, value: bytes) -> None:
    """RFC 9110 §7.6.1: Connection = #token. llhttp reads "close x" as no close at all, another
    reader may see one: gw refuses what it would have to guess."""
    conn.send(b"GET /echo HTTP/1.1\r\nHost: example.test\r\nConnection: " + value + b"\r\n\r\n")
    assert conn.read_response().status == 400
    assert conn.closed_by_peer()


def test_http10_client_gets_close_delimited_body_when_upstream_chunks(conn: Wire) -> None:
    """RFC 9112 §6.1: no chunked to an HTTP/1.0 client; without a length the body ends with the close."""
    conn.send(b"GET /chunked/100000 HTTP/1.0\r\nHost: example.test\r\nConnection: keep-alive\r\n\r\n")
    resp = conn.read_head()
    assert resp.status == 200
    assert resp.header("transfer-encoding") is None
    assert resp.header("content-length") is None
    body = conn.read_until_close()
    assert hashlib.sha256(body).hexdigest() == pattern_sha256(100000)


# -- HEAD, 204, 304 --------------------------------------------------------------------------------


def test_head_response_has_no_body_even_with_content_length(conn: Wire) -> None:
    """RFC 9110 §9.3.2: a HEAD response carries the GET's Content-Length but no body; the connection
    goes on with the next response right after the head."""
    conn.send(http_request("HEAD", "/head-with-length"))
    head = conn.read_response("HEAD")
    assert head.status == 200
    assert head.header("content-length") == "1000"
    conn.send(http_request("GET", "/echo?after-head"))
    nxt = conn.read_response()  # would start with stray body bytes if any had followed the head
    assert nxt.status == 200
    assert echoed(nxt.body)["target"] == "/echo?after-head"


def test_head_is_forwarded_as_head(conn: Wire, module_upstream: Upstream) -> None:
    conn.send(http_request("HEAD", "/echo?head-method"))
    assert conn.read_response("HEAD").status == 200
    (seen,) = seen_for(module_upstream, "/echo?head-method")
    assert seen.method == "HEAD"


@pytest.mark.parametrize(
    "head",
    [
        b"HEAD /echo?bad-head HTTP/1.1\r\nHost: a b\r\n\r\n",  # alone in a read: the fast path
        b"HEAD /echo?bad-head HTTP/1.1\r\nHost: example.test\r\nContent-Length: 0\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",  # llhttp's own refusal
    ],
    ids=["invalid-host", "cl-and-te"],
)
def test_refusal_of_a_head_request_has_no_content(conn: Wire, head: bytes) -> None:
    """RFC 9110 §9.3.2: gw's own 400 to a malformed HEAD request ends at its head, as any answer to
    HEAD does: a client reading it as such finds nothing after it but the close."""
    conn.send(head)
    resp = conn.read_response("HEAD")
    assert resp.status == 400
    assert int(resp.header("content-length") or 0) > 0
    assert conn.closed_by_peer()


@pytest.mark.parametrize("status", [204, 304])
def test_bodiless_status_has_no_body_and_connection_goes_on(conn: Wire, status: int) -> None:
    """RFC 9110 §15.3.5, §15.4.5: 204 and 304 end at their head; the next response follows it."""
    conn.send(http_request("GET", f"/status/{status}"))
    resp = conn.read_response()
    assert resp.status == status
    assert resp.header("transfer-encoding") is None  # RFC 9112 §6.1: never on 204/304
    conn.send(http_request("GET", f"/echo?after-{status}"))
    nxt = conn.read_response()
    assert echoed(nxt.body)["target"] == f"/echo?after-{status}"


# -- pipelining ------------------------------------------------------------------------------------


def test_pipelined_requests_are_answered_in_order(conn: Wire) -> None:
    """RFC 9112 §9.3.2: responses to pipelined requests come in the order the requests were sent."""
    batch = b"".join(
        [
            http_request("GET", "/echo?p=1"),
            http_request("POST", "/echo?p=2", body=b"second"),
            http_request("GET", "/echo?p=3&delay=0.05"),
            http_request("GET", "/status/204?p=4"),
            http_request("GET", "/echo?p=5", {"Connection": "close"}),
        ]
    )
    conn.send(batch)
    responses = parse_responses(conn.read_until_close())
    assert [r.status for r in responses] == [200, 200, 200, 204, 200]
    targets = [echoed(r.body)["target"] for r in responses if r.status == 200]
    assert targets == ["/echo?p=1", "/echo?p=2", "/echo?p=3&delay=0.05", "/echo?p=5"]
    assert echoed(responses[1].body)["body_sha256"] == hashlib.sha256(b"second").hexdigest()


def test_malformed_pipelined_request_is_answered_in_turn_then_closed(conn: Wire, module_upstream: Upstream) -> None:
    """The request before a malformed one is answered first; the 400 follows in order; then the close."""
    conn.send(http_request("GET", "/echo?before-malformed") + b"GET /x HTTP/1.1\r\nHost : bad\r\n\r\n")
    first = conn.read_response()
    assert echoed(first.body)["target"] == "/echo?before-malformed"
    second = conn.read_response()
    assert second.status == 400
    assert conn.closed_by_peer()
    assert not seen_for(module_upstream, "/x")


# -- upgrades gw serves as plain HTTP/1.1 (h2c) ----------------------------------------------------

H2C = {"Upgrade": "h2c", "Connection": "Upgrade, HTTP2-Settings", "HTTP2-Settings": "AAMAAABkAARAAAAAAAIAAAAA"}


def tracebacks(gw: GatewayProcess) -> list[str]:
    return [line for line in gw.log if "Traceback" in line]


@pytest.mark.parametrize(
    ("bad", "status"),
    [
        pytest.param(b"GET /x HTTP/1.1\r\nHost : bad\r\n\r\n", 400, id="a head llhttp refuses"),
        pytest.param(b"GET /x HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400, id="a head gw refuses"),
        pytest.param(b"GET /%s HTTP/1.1\r\nHost: a\r\n\r\n" % (b"x" * 9000), 414, id="a target too long"),
        pytest.param(b"CONNECT x:443 HTTP/1.1\r\nHost: x\r\n\r\n", 501, id="CONNECT"),
    ],
)
def test_bad_request_pipelined_after_an_h2c_upgrade_is_answered_in_turn(
    conn: Wire, gw: GatewayProcess, bad: bytes, status: int
) -> None:
    """The h2c request is answered as HTTP/1.1 and what follows parsed as the next request: a bad one
    gets its status and the close, and the worker logs no traceback (it dropped the connection)."""
    conn.send(http_request("GET", "/echo?h2c", H2C) + bad)
    assert echoed(conn.read_response().body)["target"] == "/echo?h2c"
    assert conn.read_response().status == status
    assert conn.closed_by_peer()
    assert not tracebacks(gw)


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
@pytest.mark.parametrize("reads", ["one read", "body in a later read"])
def test_h2c_upgrade_request_with_a_body_is_forwarded_with_its_body(
    conn: Wire, module_upstream: Upstream, framing: str, reads: str
) -> None:
    """llhttp skips the body of any upgrade request; served as HTTP/1.1 it still has one (RFC 7540
    §3.2 lets an h2c upgrade carry it). It went missing and was parsed as the next request."""
    body = b"an h2c upgrade with a body"
    target = f"/echo?h2c-body-{framing}-{reads.replace(' ', '-')}"
    if framing == "chunked":
        head = http_request("POST", target, {**H2C, "Transfer-Encoding": "chunked"})
        sent = chunked(body[:10], body[10:])
    else:
        head = http_request("POST", target, {**H2C, "Content-Length": str(len(body))})
        sent = body
    after = http_request("GET", "/echo?after-h2c-body")
    if reads == "one read":
        conn.send(head + sent + after)
    else:
        conn.send(head + sent[:5])
        deadline = time.monotonic() + 10
        while not seen_for(module_upstream, target) and time.monotonic() < deadline:
            time.sleep(0.01)  # the head went upstream: the gateway has read what was sent so far
        conn.send(sent[5:] + after)
    first = echoed(conn.read_response().body)
    assert (first["target"], first["body_bytes"]) == (target, len(body))
    assert first["body_sha256"] == hashlib.sha256(body).hexdigest()
    assert echoed(conn.read_response().body)["target"] == "/echo?after-h2c-body"


def test_a_thousand_h2c_requests_pipelined_in_one_read_are_all_answered(conn: Wire, gw: GatewayProcess) -> None:
    """Each upgrade request stops the parser; the next one must not cost a stack frame (it overflowed)."""
    conn.send(http_request("GET", "/status/204", H2C) * 1000)
    for _ in range(1000):
        assert conn.read_response().status == 204
    assert not tracebacks(gw)


# -- Expect: 100-continue --------------------------------------------------------------------------


def test_expect_100_continue_gets_interim_then_final(conn: Wire) -> None:
    """RFC 9110 §10.1.1: the client waits for 100 Continue before sending the body."""
    body = b"x" * 5000
    conn.send(http_request("POST", "/echo", {"Expect": "100-continue", "Content-Length": str(len(body))}))
    interim = conn.read_response()
    assert interim.status == 100
    conn.send(body)
    final = conn.read_response()
    assert final.status == 200
    assert echoed(final.body)["body_sha256"] == hashlib.sha256(body).hexdigest()


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_request_pipelined_behind_a_body_whose_head_came_alone_is_served(conn: Wire, framing: str) -> None:
    """A head alone in its read (the 100 Continue says gw has read it), then its body and the next
    request in one read: the next request is served, not refused."""
    body = b"x" * 100
    fields = {"Expect": "100-continue"}
    if framing == "chunked":
        fields["Transfer-Encoding"] = "chunked"
        wire_body = chunked(body)
    else:
        fields["Content-Length"] = str(len(body))
        wire_body = body
    conn.send(http_request("POST", "/echo?first", fields))
    assert conn.read_response().status == 100
    conn.send(wire_body + http_request("GET", "/echo?second"))
    assert conn.read_response().status == 200
    second = conn.read_response()
    assert second.status == 200 and echoed(second.body)["target"] == "/echo?second"
    # The parsers that took over serve later requests as the first ones did: HTTP/1.2 as 1.1,
    # pipelined (full parser) and alone in its read (fast parser).
    conn.send(http_request("GET", "/echo?third") + http_request("GET", "/echo?fourth", version="1.2"))
    assert [conn.read_response().status for _ in range(2)] == [200, 200]
    conn.send(http_request("GET", "/echo?fifth", version="1.2"))
    assert conn.read_response().status == 200


def test_http10_expect_100_continue_is_ignored(conn: Wire) -> None:
    """RFC 9110 §10.1.1 and §15.2: no 100 Continue (no 1xx at all) for an HTTP/1.0 client."""
    conn.send(b"GET /echo?warm HTTP/1.0\r\nHost: example.test\r\nConnection: keep-alive\r\n\r\n")
    assert conn.read_response().status == 200  # an idle pooled connection: the request goes up at once
    conn.send(b"POST /echo HTTP/1.0\r\nHost: example.test\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n")
    conn.send(b"abc")
    assert conn.read_response().status == 200


def test_expect_is_not_forwarded_upstream(conn: Wire, module_upstream: Upstream) -> None:
    """The gateway answers the expectation itself; the upstream gets the body without waiting."""
    conn.send(http_request("POST", "/echo?expect", {"Expect": "100-continue", "Content-Length": "3"}))
    assert conn.read_response().status == 100
    conn.send(b"abc")
    assert conn.read_response().status == 200
    (seen,) = seen_for(module_upstream, "/echo?expect")
    assert seen.header("expect") is None


# -- bodies: Content-Length and chunked, both ways -------------------------------------------------


def test_content_length_request_body_arrives_intact(conn: Wire, module_upstream: Upstream) -> None:
    body = PATTERN[:300_000]
    conn.send(http_request("POST", "/echo?cl-body", body=body))
    resp = conn.read_response()
    assert echoed(resp.body)["body_sha256"] == hashlib.sha256(body).hexdigest()
    (seen,) = seen_for(module_upstream, "/echo?cl-body")
    assert seen.header("content-length") == str(len(body))


def test_chunked_request_body_arrives_intact(conn: Wire, module_upstream: Upstream) -> None:
    """RFC 9112 §7.1: a chunked body (with a chunk extension and a trailer) is decoded and re-framed."""
    pieces = [b"hello ", PATTERN[:70_000], b"world"]
    framed = b"6;ext=1\r\nhello \r\n" + chunked(*pieces[1:])[:-2] + b"X-Trailer: t\r\n\r\n"
    conn.send(http_request("POST", "/echo?chunked-body", {"Transfer-Encoding": "chunked"}) + framed)
    resp = conn.read_response()
    assert resp.status == 200
    assert echoed(resp.body)["body_sha256"] == hashlib.sha256(b"".join(pieces)).hexdigest()
    (seen,) = seen_for(module_upstream, "/echo?chunked-body")
    assert seen.header("transfer-encoding") == "chunked"
    assert seen.body_bytes == sum(map(len, pieces))


def test_content_length_response_body_is_passed_with_its_length(conn: Wire) -> None:
    conn.send(http_request("GET", "/bytes/250000"))
    resp = conn.read_response()
    assert resp.header("content-length") == "250000"
    assert hashlib.sha256(resp.body).hexdigest() == pattern_sha256(250000)


def test_chunked_response_body_is_passed_chunked(conn: Wire) -> None:
    conn.send(http_request("GET", "/chunked/250000"))
    resp = conn.read_response()
    assert (resp.header("transfer-encoding") or "").lower() == "chunked"
    assert hashlib.sha256(resp.body).hexdigest() == pattern_sha256(250000)


def test_close_delimited_response_is_rechunked_for_http11_client(conn: Wire) -> None:
    """RFC 9112 §6.3 rule 8: the upstream's close-delimited body is re-framed, so the client's
    connection survives it."""
    conn.send(http_request("GET", "/close-delimited/5000"))
    resp = conn.read_response()
    assert hashlib.sha256(resp.body).hexdigest() == pattern_sha256(5000)
    conn.send(http_request("GET", "/echo?after-close-delimited"))
    assert conn.read_response().status == 200


# -- interim responses -----------------------------------------------------------------------------


def test_early_hints_are_passed_on(conn: Wire) -> None:
    """RFC 8297: a 103 from the upstream reaches the client before the final response."""
    conn.send(http_request("GET", "/early-hints"))
    interim, final = conn.read_final()
    assert [r.status for r in interim] == [103]
    assert interim[0].header("link") == "</style.css>; rel=preload"
    assert final.status == 200
    assert final.body == b"ok"


# -- the retry on a stale keep-alive connection ----------------------------------------------------


def test_idempotent_request_is_retried_once_on_a_fresh_connection(conn: Wire, module_upstream: Upstream) -> None:
    """A reused upstream connection closed before any response byte: GET is safe to retry
    (RFC 9110 §9.2.2), once, on a new connection."""
    conn.send(http_request("GET", "/echo?warm-pool"))
    assert conn.read_response().status == 200  # leaves an idle pooled connection behind
    conn.send(http_request("GET", "/hangup-reused?get"))
    resp = conn.read_response()
    assert resp.status == 200
    attempts = seen_for(module_upstream, "/hangup-reused?get")
    assert [s.nth > 1 for s in attempts] == [True, False]
    assert attempts[0].connection != attempts[1].connection


def test_idempotent_request_with_small_body_is_retried_with_its_body(conn: Wire, module_upstream: Upstream) -> None:
    conn.send(http_request("GET", "/echo?warm-pool-put"))
    assert conn.read_response().status == 200
    conn.send(http_request("PUT", "/hangup-reused?put", body=b"replayed body"))
    resp = conn.read_response()
    assert resp.status == 200
    assert echoed(resp.body)["body_sha256"] == hashlib.sha256(b"replayed body").hexdigest()
    assert len(seen_for(module_upstream, "/hangup-reused?put")) == 2


def test_non_idempotent_request_is_not_retried(conn: Wire, module_upstream: Upstream) -> None:
    """POST may have had effects: a stale connection gives 502, never a second POST."""
    conn.send(http_request("GET", "/echo?warm-pool-post"))
    assert conn.read_response().status == 200
    conn.send(http_request("POST", "/hangup-reused?post", body=b"once"))
    resp = conn.read_response()
    assert resp.status == 502
    assert resp.header("content-type") == "application/problem+json"
    assert len(seen_for(module_upstream, "/hangup-reused?post")) == 1


# -- HTTP versions (RFC 9112 §2.6) -----------------------------------------------------------------


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("minor", ["2", "9"])
def test_higher_http1_minor_version_is_served_as_http11(
    minor: str, shape: str, conn: Wire, module_upstream: Upstream
) -> None:
    """A recipient SHOULD process a higher minor version as the highest it supports (RFC 9112 §2.6):
    answered as HTTP/1.1, forwarded as HTTP/1.1, persistent as HTTP/1.1."""
    marker = f"http1{minor}-{shape}"
    resp = send_shaped(conn, shape, http_request("GET", f"/echo?{marker}", version=f"1.{minor}"), marker)
    assert resp.status == 200
    assert resp.version == "1.1"
    (seen,) = seen_for(module_upstream, f"/echo?{marker}")
    assert seen.version == "HTTP/1.1"
    conn.send(http_request("POST", f"/echo?{marker}-next", version=f"1.{minor}", body=b"kept alive"))
    nxt = conn.read_response()
    assert echoed(nxt.body)["body_sha256"] == hashlib.sha256(b"kept alive").hexdigest()


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("version", ["2.0", "3.0", "0.9"])
def test_other_major_version_is_answered_505(
    version: str, shape: str, conn: Wire, gw: GatewayProcess, module_upstream: Upstream
) -> None:
    """RFC 9110 §15.6.6: a request line in HTTP/1 syntax naming another major version is refused
    with 505, not proxied as HTTP/1.1 (llhttp itself lets 2.0 and 0.9 through)."""
    marker = f"http{version}-{shape}"
    resp = send_shaped(conn, shape, http_request("GET", f"/echo?{marker}", version=version), marker)
    assert resp.status == 505
    assert resp.header("content-type") == "application/problem+json"
    assert echoed(resp.body)["type"] == "urn:gw:problem:http-version-not-supported"
    assert conn.closed_by_peer()
    settle(gw, marker)
    assert not seen_for(module_upstream, f"/echo?{marker}")
