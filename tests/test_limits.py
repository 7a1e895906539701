"""Limits and timeouts that defend a worker, each answered with its status as problem+json.

414 request line, 431 header block, 413 body (per route and global, declared or streamed),
408 slow head (slowloris) and paused body, the idle keep-alive timeout, and the per-worker connection cap.
"""

from __future__ import annotations

import json
import select
import socket
import time
from collections.abc import Iterator

import psutil
import pytest

from tests.conftest import StartGateway
from tests.support.gateway import GatewayProcess, Response, Wire, chunked, http_request, wire
from tests.support.upstream import Upstream

LIMITS = {
    "GW_MAX_REQUEST_LINE": "1024",
    "GW_MAX_HEADER_SIZE": "4096",
    "GW_MAX_BODY_SIZE": "2Ki",
    "GW_HEADER_TIMEOUT": "1s",
    "GW_KEEPALIVE_TIMEOUT": "1s",
}
ROUTE_LIMIT = 1024  # gw.dev/max-body-size: "1Ki" on the route serving /small
GLOBAL_LIMIT = 2048  # GW_MAX_BODY_SIZE=2Ki for every other route


@pytest.fixture(scope="module")
def gw(module_upstream: Upstream, module_start_gateway: StartGateway) -> GatewayProcess:
    backend = [{"backend": "up"}]
    return module_start_gateway(
        {"up": [("127.0.0.1", module_upstream.port)]},
        [
            {
                "name": "small",
                "annotations": {"gw.dev/max-body-size": "1Ki"},
                "rules": [{"matches": [{"path": {"type": "PathPrefix", "value": "/small"}}], "backendRefs": backend}],
            },
            {"name": "all", "rules": [{"backendRefs": backend}]},
        ],
        env=LIMITS,
    )


@pytest.fixture
def conn(gw: GatewayProcess) -> Iterator[Wire]:
    c = wire(gw, timeout=5)
    yield c
    c.close()


def assert_problem(resp: Response, status: int) -> dict[str, object]:
    """RFC 9457 problem+json with the status, and the request id the X-Request-ID header carries."""
    assert resp.status == status
    assert resp.header("content-type") == "application/problem+json"
    problem = json.loads(resp.body)
    assert problem["status"] == status
    assert problem["request_id"]
    assert problem["request_id"] == resp.header("x-request-id")
    return problem


def targets(upstream: Upstream, prefix: str) -> list[str]:
    return [s.target for s in upstream.seen if s.target.startswith(prefix)]


# -- 414 / 431 -------------------------------------------------------------------------------------


def test_request_line_within_limit_is_served(conn: Wire) -> None:
    conn.send(http_request("GET", "/echo?" + "a" * 900))
    assert conn.read_response().status == 200


def test_request_line_too_long_is_414(conn: Wire, module_upstream: Upstream) -> None:
    """RFC 9112 §3: a server receiving a request-target longer than it wishes to parse answers 414."""
    conn.send(http_request("GET", "/long?" + "a" * 2000))
    assert_problem(conn.read_response(), 414)
    assert conn.closed_by_peer()
    assert targets(module_upstream, "/long?") == []


def test_single_oversized_header_is_431(conn: Wire, module_upstream: Upstream) -> None:
    """RFC 6585 §5: request header fields too large."""
    conn.send(http_request("GET", "/big-header", [("X-Big", "b" * 5000)]))
    assert_problem(conn.read_response(), 431)
    assert conn.closed_by_peer()
    assert targets(module_upstream, "/big-header") == []


def test_header_block_too_large_is_431(conn: Wire) -> None:
    """Many small fields add up: the limit is on the whole block (GW_MAX_HEADER_SIZE)."""
    conn.send(http_request("GET", "/many-headers", [(f"X-H{i}", "v" * 40) for i in range(120)]))
    assert_problem(conn.read_response(), 431)
    assert conn.closed_by_peer()


def test_header_block_within_limit_is_served(conn: Wire) -> None:
    conn.send(http_request("GET", "/echo?fits", [(f"X-H{i}", "v" * 40) for i in range(40)]))
    assert conn.read_response().status == 200


# -- 413 -------------------------------------------------------------------------------------------


def test_body_at_route_limit_is_served(conn: Wire) -> None:
    conn.send(http_request("POST", "/small/echo", body=b"x" * ROUTE_LIMIT))
    assert conn.read_response().status == 200


def test_declared_body_over_route_limit_is_413(conn: Wire, module_upstream: Upstream) -> None:
    """The route's gw.dev/max-body-size: a Content-Length over it is refused before anything is forwarded."""
    conn.send(http_request("POST", "/small/declared", body=b"x" * (ROUTE_LIMIT + 1)))
    assert_problem(conn.read_response(), 413)
    assert conn.closed_by_peer()
    assert targets(module_upstream, "/small/declared") == []


def test_streamed_chunked_body_over_route_limit_is_413(conn: Wire) -> None:
    """Chunked bodies declare no length: the limit is enforced on the bytes as they stream."""
    body = chunked(b"a" * 600, b"b" * 600)
    conn.send(http_request("POST", "/small/streamed", {"Transfer-Encoding": "chunked"}) + body)
    assert_problem(conn.read_response(), 413)
    assert conn.closed_by_peer()


def test_global_limit_applies_to_routes_without_their_own(conn: Wire) -> None:
    """A body over the route limit but under GW_MAX_BODY_SIZE passes on a route without annotation."""
    conn.send(http_request("POST", "/echo?global-under", body=b"x" * 1500))
    assert conn.read_response().status == 200


def test_declared_body_over_global_limit_is_413(conn: Wire, module_upstream: Upstream) -> None:
    conn.send(http_request("POST", "/global-declared", body=b"x" * (GLOBAL_LIMIT + 1)))
    assert_problem(conn.read_response(), 413)
    assert conn.closed_by_peer()
    assert targets(module_upstream, "/global-declared") == []


def test_streamed_chunked_body_over_global_limit_is_413(conn: Wire) -> None:
    body = chunked(b"a" * 1000, b"b" * 1000, b"c" * 1000)
    conn.send(http_request("POST", "/global-streamed", {"Transfer-Encoding": "chunked"}) + body)
    assert_problem(conn.read_response(), 413)
    assert conn.closed_by_peer()


def wait_seen(upstream: Upstream, target: str) -> None:
    """The head reached the upstream: the gateway has read everything sent before it."""
    deadline = time.monotonic() + 10
    while target not in targets(upstream, target) and time.monotonic() < deadline:
        time.sleep(0.01)


def test_chunk_extensions_count_against_the_body_limit(conn: Wire, module_upstream: Upstream) -> None:
    """1 KiB of data and 4 KiB of chunk extension: within the extension bound, over GW_MAX_BODY_SIZE."""
    head = http_request("POST", "/echo?extended", {"Transfer-Encoding": "chunked"})
    conn.send(head + b"400\r\n" + b"a" * 1024 + b"\r\n")
    wait_seen(module_upstream, "/echo?extended")
    conn.send(b"1;ext=" + b"e" * 4096 + b"\r\nb\r\n")  # the end of the body is not sent: the 413 comes first
    assert_problem(conn.read_response(), 413)
    assert conn.closed_by_peer()


def test_huge_chunk_extension_gets_413_and_the_worker_lives_on(upstream: Upstream, start_gateway: StartGateway) -> None:
    """llhttp reads chunk extensions without a limit: 64 MiB of one were taken in and ignored."""
    gw = start_gateway(
        {"up": [("127.0.0.1", upstream.port)]}, [{"name": "all", "rules": [{"backendRefs": [{"backend": "up"}]}]}]
    )
    worker = psutil.Process(gw.worker_pid)
    rss = worker.memory_info().rss
    conn = wire(gw, timeout=10)
    conn.send(http_request("POST", "/echo?huge-extension", {"Transfer-Encoding": "chunked"}) + b"1;ext=")
    piece = b"e" * 65536
    for _ in range(1024):  # 64 MiB, unless the gateway answers first
        if select.select([conn.sock], [], [], 0)[0]:
            break
        try:
            conn.send(piece)
        except (BrokenPipeError, ConnectionResetError):
            break
    else:
        conn.send(b"\r\nx\r\n0\r\n\r\n")
    assert_problem(conn.read_response(), 413)
    assert worker.memory_info().rss - rss < 16 << 20
    check = wire(gw)
    check.send(http_request("GET", "/echo?still-serving"))
    assert check.read_response().status == 200


def test_trailers_count_against_the_body_limit(conn: Wire, module_upstream: Upstream) -> None:
    """Trailer fields were kept in memory without a bound."""
    conn.send(http_request("POST", "/echo?trailers", {"Transfer-Encoding": "chunked"}) + b"1\r\na\r\n0\r\n")
    wait_seen(module_upstream, "/echo?trailers")
    conn.send(b"".join(b"X-T%d: %s\r\n" % (i, b"t" * 50) for i in range(100)))
    assert_problem(conn.read_response(), 413)


def test_error_response_keeps_the_client_request_id(conn: Wire) -> None:
    """A valid X-Request-ID from the client identifies the request in every answer, errors included."""
    conn.send(http_request("POST", "/small/rid", [("X-Request-ID", "client-id-413")], body=b"x" * 2000))
    problem = assert_problem(conn.read_response(), 413)
    assert problem["request_id"] == "client-id-413"


def test_streamed_error_response_keeps_the_client_request_id(conn: Wire) -> None:
    body = chunked(b"a" * 600, b"b" * 600)
    conn.send(
        http_request("POST", "/small/rid", [("Transfer-Encoding", "chunked"), ("X-Request-ID", "client-id-chunked")])
        + body
    )
    problem = assert_problem(conn.read_response(), 413)
    assert problem["request_id"] == "client-id-chunked"


# -- timeouts --------------------------------------------------------------------------------------


def test_slow_request_head_gets_408(conn: Wire) -> None:
    """Slowloris: a head that never completes is answered 408 after GW_HEADER_TIMEOUT, then closed."""
    conn.send(b"GET /echo HTTP/1.1\r\nHost: example.test\r\nX-Slow: ")
    assert_problem(conn.read_response(), 408)
    assert conn.closed_by_peer()


def test_trickled_request_head_still_gets_408(conn: Wire) -> None:
    """Bytes arriving do not extend the head deadline: it runs from the request's first byte."""
    conn.send(b"GET /echo HTTP/1.1\r\n")
    conn.sock.settimeout(0.3)
    for i in range(20):  # trickle a field every 0.3 s; the 408 must arrive while trickling
        try:
            conn.send(b"X-T%d: 1\r\n" % i)
            data = conn.sock.recv(1 << 16)
        except TimeoutError:
            continue
        except (BrokenPipeError, ConnectionResetError):
            break
        conn.buffer += data
        break
    conn.sock.settimeout(5)
    assert_problem(conn.read_response(), 408)


def test_idle_keepalive_connection_is_closed(conn: Wire) -> None:
    """GW_KEEPALIVE_TIMEOUT: an idle persistent connection is closed quietly (RFC 9112 §9.8)."""
    conn.send(http_request("GET", "/echo?idle"))
    assert conn.read_response().status == 200
    assert conn.closed_by_peer()  # nothing sent, just the close, well within the 5 s socket timeout


def test_connection_that_never_sends_is_closed(gw: GatewayProcess) -> None:
    with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as sock:
        assert sock.recv(1) == b""


# -- max connections -------------------------------------------------------------------------------


def capped_gateway(upstream: Upstream, start_gateway: StartGateway) -> GatewayProcess:
    return start_gateway(
        {"up": [("127.0.0.1", upstream.port)]},
        [{"name": "all", "rules": [{"backendRefs": [{"backend": "up"}]}]}],
        env={"GW_MAX_CONNECTIONS": "2"},
    )


def test_connection_over_the_cap_gets_503_and_others_keep_working(
    upstream: Upstream, start_gateway: StartGateway
) -> None:
    """GW_MAX_CONNECTIONS=2: the third connection is answered 503 and closed; the two keep serving."""
    gw = capped_gateway(upstream, start_gateway)
    first, second = wire(gw, timeout=5), wire(gw, timeout=5)
    for c in (first, second):
        c.send(http_request("GET", "/echo"))
        assert c.read_response().status == 200
    extra = wire(gw, timeout=5)
    resp = extra.read_response()
    assert resp.status == 503
    assert resp.header("content-type") == "application/problem+json"
    assert json.loads(resp.body)["status"] == 503
    assert extra.closed_by_peer()
    for c in (first, second):
        c.send(http_request("GET", "/echo?still-working"))
        assert c.read_response().status == 200


def test_connection_over_the_cap_503_carries_a_request_id(upstream: Upstream, start_gateway: StartGateway) -> None:
    gw = capped_gateway(upstream, start_gateway)
    held = [wire(gw, timeout=5), wire(gw, timeout=5)]
    for c in held:
        c.send(http_request("GET", "/echo"))
        assert c.read_response().status == 200
    assert_problem(wire(gw, timeout=5).read_response(), 503)


def test_request_body_that_pauses_longer_than_the_body_timeout_gets_408(
    upstream: Upstream, start_gateway: StartGateway
) -> None:
    """GW_BODY_TIMEOUT bounds the pause between two reads of a body, not the keep-alive timeout (75 s)."""
    gw = start_gateway(
        {"up": [("127.0.0.1", upstream.port)]},
        [{"name": "all", "rules": [{"backendRefs": [{"backend": "up"}]}]}],
        env={"GW_BODY_TIMEOUT": "1s"},
    )
    conn = wire(gw, timeout=10)
    conn.send(http_request("POST", "/echo", {"Content-Length": "100"}) + b"x" * 10)
    assert_problem(conn.read_response(), 408)
    assert conn.closed_by_peer()
