"""Upstream failures: each is answered with the right status as problem+json, or the client
connection is reset so a truncated body is never presented as complete; balancing and ejection.

Routes are chosen by Host so that the request path still selects the test upstream's behaviour.
"""

from __future__ import annotations

import hashlib
import json
import socket
import struct
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import httptools
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.gateway import Client, GatewayProcess, Response, free_port
from tests.support.servers import BlackholeListener, Peer, ScriptedServer, launch_gateway
from tests.support.upstream import Upstream, pattern_sha256

MiB = 1 << 20

NOT_READY_SERVICE = """\
apiVersion: v1
kind: Service
metadata: {name: empty, namespace: default}
spec:
  ports: [{port: 80}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: empty-1
  namespace: default
  labels: {kubernetes.io/service-name: empty}
addressType: IPv4
ports: [{port: %d}]
endpoints:
- addresses: [127.0.0.1]
  conditions: {ready: false}
"""


def send_garbage(peer: Peer) -> None:
    peer.sock.sendall(b"SURPRISE! this is not HTTP\r\n\r\n")
    peer.wait_for_close()


def stall_mid_body(peer: Peer) -> None:
    peer.sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + b"x" * 10)
    peer.wait_for_close()


BODY_START = b"x" * 10
CUT_HEADS = {
    b"length": b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + BODY_START,
    b"chunked": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\na\r\n" + BODY_START + b"\r\n",
    b"close": b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" + BODY_START,  # a body the close ends
}


class CuttingServer(ScriptedServer):
    """GET /<framing>-<ending>: a head and the start of a body, then (once `release` is set: the test
    saw that start arrive through the gateway) the connection ends with a FIN or a RST."""

    def __init__(self) -> None:
        self.release = threading.Event()
        super().__init__(self.cut)

    def cut(self, peer: Peer) -> None:
        framing, ending = peer.head.split(b" ")[1].strip(b"/").split(b"-")
        peer.sock.sendall(CUT_HEADS[framing])
        self.release.wait(10)
        if ending == b"fin":
            peer.sock.shutdown(socket.SHUT_WR)
            peer.wait_for_close()
        else:
            peer.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            peer.sock.close()


@dataclass
class Setup:
    gateway: GatewayProcess
    upstream: Upstream
    weighted: dict[str, Upstream]
    refused_port: int
    ejected_port: int
    stalling: ScriptedServer
    cutting: CuttingServer


def by_host(name: str, host: str, *refs: dict[str, object], **rule: object) -> dict[str, object]:
    return {"name": name, "hostnames": [host], "rules": [{"backendRefs": list(refs), **rule}]}


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    upstream = Upstream("up").start()
    weighted = {name: Upstream(name).start() for name in ("heavy", "light", "zero")}
    blackhole = BlackholeListener()
    garbage = ScriptedServer(send_garbage)
    stalling = ScriptedServer(stall_mid_body)
    cutting = CuttingServer()
    refused_port, ejected_port = free_port(), free_port()
    routes = [
        {"name": "default", "rules": [{"backendRefs": [{"backend": "up"}]}]},
        by_host("refused", "refused.test", {"backend": "refused"}),
        by_host("blackhole", "blackhole.test", {"backend": "blackhole"}),
        by_host("garbage", "garbage.test", {"backend": "garbage"}),
        by_host("stalling", "stalling.test", {"backend": "stalling"}),
        by_host("cutting", "cutting.test", {"backend": "cutting"}),
        by_host("empty", "empty.test", {"name": "empty", "port": 80}),
        by_host("eject", "eject.test", {"backend": "pair"}),
        by_host(
            "weighted",
            "weighted.test",
            {"backend": "heavy", "weight": 3},
            {"backend": "light", "weight": 1},
            {"backend": "zero", "weight": 0},
        ),
        by_host("zero-weight", "zero-weight.test", {"backend": "light", "weight": 1}, {"backend": "zero", "weight": 0}),
    ]
    backends = {
        "up": [("127.0.0.1", upstream.port)],
        "refused": [("127.0.0.1", refused_port)],
        "blackhole": [("127.0.0.1", blackhole.port)],
        "garbage": [("127.0.0.1", garbage.port)],
        "stalling": [("127.0.0.1", stalling.port)],
        "cutting": [("127.0.0.1", cutting.port)],
        "pair": [("127.0.0.1", ejected_port), ("127.0.0.1", upstream.port)],
        **{name: [("127.0.0.1", up.port)] for name, up in weighted.items()},
    }
    gateway = launch_gateway(
        tmp_path_factory.mktemp("failures"),
        backends,
        routes,
        env={
            "GW_UPSTREAM_CONNECT_TIMEOUT": "1s",
            "GW_UPSTREAM_RESPONSE_TIMEOUT": "1s",
            "GW_ENDPOINT_EJECT_TIME": "10m",
        },
        extra_yaml=NOT_READY_SERVICE % upstream.port,
    )
    yield Setup(gateway, upstream, weighted, refused_port, ejected_port, stalling, cutting)
    gateway.stop()
    garbage.stop()
    stalling.stop()
    cutting.stop()
    blackhole.close()
    for up in (upstream, *weighted.values()):
        up.stop()


@pytest.fixture(scope="module")
def route_timeouts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    """A gateway with the default (long) upstream timeouts and routes that set their own."""
    upstream = Upstream("up").start()
    gateway = launch_gateway(
        tmp_path_factory.mktemp("route-timeouts"),
        {"up": [("127.0.0.1", upstream.port)]},
        [
            by_host("backend-request", "backend-request.test", {"backend": "up"}, timeouts={"backendRequest": "1s"}),
            by_host("request", "request.test", {"backend": "up"}, timeouts={"request": "1s"}),
        ],
    )
    yield gateway
    gateway.stop()
    upstream.stop()


def get(client: Client, path: str = "/echo", host: str = "example.test", **headers: str) -> Response:
    return client.request("GET", path, {"Host": host, **headers})


def assert_problem(resp: Response, status: int) -> dict[str, object]:
    """The response is an RFC 9457 problem document for `status` carrying the response's request id."""
    assert resp.status == status
    assert resp.header("content-type") == "application/problem+json"
    problem = json.loads(resp.body)
    assert problem["status"] == status
    assert problem["request_id"]
    assert problem["request_id"] == resp.header("x-request-id")
    return problem


def assert_serves(client: Client) -> None:
    resp = get(client)
    assert resp.status == 200
    assert json.loads(resp.body)["upstream"] == "up"


def message_is_complete(raw: bytes) -> bool:
    """Whether `raw` holds a complete HTTP response message (head and fully framed body)."""

    class Events:
        complete = False

        def on_message_complete(self) -> None:
            self.complete = True

    events = Events()
    try:
        httptools.HttpResponseParser(events).feed_data(raw)
    except httptools.HttpParserError:
        return False
    return events.complete


def metric(gateway: GatewayProcess, name: str, **labels: str) -> float:
    text = httpx.get(f"http://127.0.0.1:{gateway.admin}/metrics", timeout=10).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return 0.0


# -- failures answered with a status --------------------------------------------------------------

FAILURES = [
    pytest.param("refused.test", "/echo", 502, "upstream-connect-failed", id="connection refused → 502"),
    pytest.param("blackhole.test", "/echo", 504, "upstream-timeout", id="connect timeout → 504"),
    pytest.param("example.test", "/never", 504, "upstream-timeout", id="response timeout → 504"),
    pytest.param("empty.test", "/echo", 503, "no-healthy-endpoint", id="no ready endpoint → 503"),
    pytest.param("garbage.test", "/echo", 502, "upstream-protocol-error", id="garbage instead of HTTP → 502"),
    pytest.param("example.test", "/hangup", 502, "upstream-protocol-error", id="closed without a response → 502"),
]


@pytest.mark.parametrize(("host", "path", "status", "kind"), FAILURES)
def test_upstream_failure_is_answered_as_problem_and_the_connection_keeps_serving(
    setup: Setup, host: str, path: str, status: int, kind: str
) -> None:
    client = setup.gateway.connect()
    problem = assert_problem(get(client, path, host), status)
    assert problem["type"] == f"urn:gw:problem:{kind}"
    assert_serves(client)
    assert_serves(setup.gateway.connect())


def test_problem_carries_the_request_id_the_client_sent(setup: Setup) -> None:
    client = setup.gateway.connect()
    resp = get(client, host="refused.test", **{"X-Request-ID": "trace-me-42"})
    assert assert_problem(resp, 502)["request_id"] == "trace-me-42"


def test_backend_request_timeout_of_the_route_overrides_the_default(route_timeouts: GatewayProcess) -> None:
    # The default response timeout is 60 s: only the route's 1 s answers within the socket timeout.
    client = route_timeouts.connect(timeout=15)
    problem = assert_problem(get(client, "/never", "backend-request.test"), 504)
    assert problem["type"] == "urn:gw:problem:upstream-timeout"


def test_request_timeout_of_the_route_bounds_the_whole_exchange(route_timeouts: GatewayProcess) -> None:
    client = route_timeouts.connect(timeout=15)
    assert_problem(get(client, "/never", "request.test"), 504)


# -- failures in the middle of a response body ---------------------------------------------------


def read_until_reset(client: Client) -> bytes:
    """What arrives before the gateway resets the connection; a clean close (FIN) fails the test."""
    received = [client.buffer]
    client.buffer = b""
    while True:
        try:
            data = client.sock.recv(1 << 20)
        except ConnectionResetError:
            return b"".join(received)
        if not data:
            raise AssertionError(f"closed with a FIN, not reset, after {b''.join(received)[:200]!r}")
        received.append(data)


@pytest.mark.parametrize("version", ["1.1", "1.0"])
@pytest.mark.parametrize(
    "path",
    ["/length-fin", "/length-rst", "/chunked-fin", "/chunked-rst", "/close-rst"],
)
def test_upstream_ending_a_body_early_resets_the_client_connection(setup: Setup, path: str, version: str) -> None:
    """A body cut short by the upstream (FIN or RST; for a body the close delimits, a RST) is passed on
    as a RST: after a FIN an HTTP/1.0 client, reading to the close, would take it for complete."""
    setup.cutting.release = threading.Event()
    client = setup.gateway.connect()
    client.send(f"GET {path} HTTP/{version}\r\nHost: cutting.test\r\n\r\n".encode())
    while BODY_START not in client.buffer:  # the start of the body came through; now the upstream cuts
        data = client.sock.recv(1 << 16)
        assert data, "closed before the start of the body arrived"
        client.buffer += data
    setup.cutting.release.set()
    raw = read_until_reset(client)
    assert not message_is_complete(raw)
    assert_serves(setup.gateway.connect())


def test_reset_in_a_content_length_body_cuts_the_client_connection(setup: Setup) -> None:
    client = setup.gateway.connect()
    client.send(b"GET /reset/1048576 HTTP/1.1\r\nHost: example.test\r\n\r\n")
    raw = read_until_reset(client)
    assert not message_is_complete(raw)
    head, _, body = raw.partition(b"\r\n\r\n")
    if head:  # whatever of the body arrived is shorter than the length the head promised
        assert b"content-length: 2097152" in head.lower()
        assert len(body) < 2 * MiB
    assert_serves(setup.gateway.connect())


def test_reset_in_a_chunked_body_never_sends_the_last_chunk(setup: Setup) -> None:
    client = setup.gateway.connect()
    client.send(b"GET /reset-chunked/1048576 HTTP/1.1\r\nHost: example.test\r\n\r\n")
    raw = read_until_reset(client)
    assert not message_is_complete(raw)
    assert not raw.endswith(b"0\r\n\r\n")
    assert_serves(setup.gateway.connect())


def test_upstream_stalling_mid_body_cuts_both_connections(setup: Setup) -> None:
    # GW_UPSTREAM_RESPONSE_TIMEOUT (1 s) also bounds the silence between body bytes.
    client = setup.gateway.connect(timeout=15)
    client.send(b"GET /echo HTTP/1.1\r\nHost: stalling.test\r\n\r\n")
    raw = read_until_reset(client)
    assert not message_is_complete(raw)
    assert raw.startswith(b"HTTP/1.1 200")
    assert setup.stalling.peers[-1].closed.wait(10)
    assert_serves(setup.gateway.connect())


def test_close_delimited_body_ending_normally_is_passed_on_complete(setup: Setup) -> None:
    client = setup.gateway.connect()
    resp = get(client, f"/close-delimited/{3 * MiB}")
    assert resp.status == 200
    assert len(resp.body) == 3 * MiB
    assert hashlib.sha256(resp.body).hexdigest() == pattern_sha256(3 * MiB)


# -- endpoints and weights ---------------------------------------------------------------------------


def test_refused_endpoint_is_retried_on_another_even_for_a_post(setup: Setup) -> None:
    # Nothing was sent on a refused connect, so even a non-idempotent request may go elsewhere.
    client = setup.gateway.connect()
    for _ in range(4):
        resp = client.request("POST", "/echo", {"Host": "eject.test"}, body=b"payload")
        assert resp.status == 200
        echoed = json.loads(resp.body)
        assert echoed["upstream"] == "up"
        assert echoed["body_bytes"] == len(b"payload")


def test_endpoint_that_refused_is_ejected_and_not_tried_again(setup: Setup) -> None:
    client = setup.gateway.connect()
    for _ in range(6):
        assert get(client, host="eject.test").status == 200
    assert metric(setup.gateway, "gw_upstream_connect_errors_total", endpoint=f"127.0.0.1:{setup.ejected_port}") == 1


def test_backend_refs_weighted_3_to_1_follow_smooth_weighted_round_robin(setup: Setup) -> None:
    client = setup.gateway.connect()
    picked = [json.loads(get(client, host="weighted.test").body)["upstream"] for _ in range(40)]
    # nginx's smooth weighted round robin for weights 3, 1: a a b a, repeated.
    assert picked == ["heavy", "heavy", "light", "heavy"] * 10


def test_backend_ref_with_weight_zero_gets_no_requests(setup: Setup) -> None:
    client = setup.gateway.connect()
    picked = {json.loads(get(client, host="zero-weight.test").body)["upstream"] for _ in range(10)}
    assert picked == {"light"}
    assert setup.weighted["zero"].seen == []
