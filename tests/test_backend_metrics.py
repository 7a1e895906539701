"""Per-backend and size metrics on /metrics: request duration and upstream time per backend,
connect time, pool connections, body sizes per route; summed over the workers by the supervisor."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

from gw.observe.metrics import Registry
from tests.support.gateway import GatewayProcess, wire
from tests.support.servers import launch_gateway
from tests.support.upstream import Upstream
from tests.test_observability import Samples, scrape, value

ROUTES: list[dict[str, object]] = [
    {"name": "plain", "hostnames": ["plain.test"], "rules": [{"backendRefs": [{"backend": "plain"}]}]},
    {"name": "slow", "hostnames": ["slow.test"], "rules": [{"backendRefs": [{"backend": "slow"}]}]},
    {"name": "stream", "hostnames": ["stream.test"], "rules": [{"backendRefs": [{"backend": "stream"}]}]},
    {"name": "broken", "hostnames": ["broken.test"], "rules": [{"backendRefs": [{"backend": "nowhere"}]}]},
]
PLAIN = "Backend default/plain"


@dataclass
class Setup:
    gateway: GatewayProcess
    plain: Upstream  # only the "plain" backend's: its connections are the ones gw opened for it
    other: Upstream


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    from tests.support.gateway import free_port

    plain, other = Upstream("plain").start(), Upstream("other").start()
    backends = {
        "plain": [("127.0.0.1", plain.port)],
        "slow": [("127.0.0.1", other.port)],
        "stream": [("127.0.0.1", other.port)],
        "nowhere": [("127.0.0.1", free_port())],
    }
    gateway = launch_gateway(tmp_path_factory.mktemp("backend-metrics"), backends, ROUTES, env={"GW_WORKERS": "2"})
    yield Setup(gateway, plain, other)
    gateway.stop()
    plain.stop()
    other.stop()


def workers_requests(gateway: GatewayProcess) -> list[int]:
    status = httpx.get(f"http://127.0.0.1:{gateway.admin}/status", timeout=10).json()
    return [w.get("requests", 0) for w in status["workers"]]


def test_the_supervisor_sums_every_worker_s_backend_route_and_pool_metrics(setup: Setup) -> None:
    gateway = setup.gateway
    sent = 0
    bodies = 0
    # One request per connection, until both workers served some (SO_REUSEPORT spreads connections).
    while sent < 400 and (sent < 10 or min(workers_requests(gateway)) == 0):
        client = gateway.connect()
        body = b"x" * (sent % 3) * 700  # 0, 700 and 1400 bytes
        resp = client.request("POST", "/bytes/300", {"Host": "plain.test"}, body)
        client.close()
        assert resp.status == 200
        sent += 1
        bodies += len(body)
    assert min(workers_requests(gateway)) > 0, "one worker served every connection"
    samples = scrape(gateway)
    route = {"route": "default/plain"}
    assert value(samples, "gw_http_requests_total", status_class="2xx", **route) == sent
    assert value(samples, "gw_backend_requests_total", backend=PLAIN, status_class="2xx") == sent
    assert value(samples, "gw_backend_request_duration_seconds_count", backend=PLAIN) == sent
    assert value(samples, "gw_upstream_duration_seconds_count", backend=PLAIN) == sent
    # Sizes: the bodiless third in the first bucket, 700 bytes under 1000, 1400 under 10000.
    assert value(samples, "gw_http_request_size_bytes_count", **route) == sent
    assert value(samples, "gw_http_request_size_bytes_sum", **route) == bodies
    assert value(samples, "gw_http_request_size_bytes_bucket", le="0", **route) == len(range(0, sent, 3))
    assert value(samples, "gw_http_request_size_bytes_bucket", le="1000", **route) == len(
        [n for n in range(sent) if n % 3 < 2]
    )
    assert value(samples, "gw_http_response_size_bytes_count", **route) == sent
    assert value(samples, "gw_http_response_size_bytes_sum", **route) == 300 * sent
    assert value(samples, "gw_http_response_size_bytes_bucket", le="100", **route) == 0
    assert value(samples, "gw_http_response_size_bytes_bucket", le="1000", **route) == sent
    # Every connection the upstream accepted was opened (and timed) by gw, for this backend.
    assert value(samples, "gw_upstream_connect_duration_seconds_count", backend=PLAIN) == setup.plain.connections
    # Requests one after the other: each worker keeps its one connection, idle, in its pool.
    assert value(samples, "gw_backend_pool_connections", backend=PLAIN, state="busy") == 0
    assert value(samples, "gw_backend_pool_connections", backend=PLAIN, state="idle") == 2


def test_upstream_time_is_the_upstream_s_wait_for_its_head(setup: Setup) -> None:
    gateway = setup.gateway
    client = gateway.connect()
    assert client.request("GET", "/bytes/10?delay=0.3", {"Host": "slow.test"}).status == 200
    client.close()
    samples = scrape(gateway)
    slow = "Backend default/slow"
    assert value(samples, "gw_upstream_duration_seconds_count", backend=slow) == 1
    assert value(samples, "gw_upstream_duration_seconds_bucket", backend=slow, le="0.25") == 0
    assert value(samples, "gw_upstream_duration_seconds_sum", backend=slow) >= 0.3


def test_upstream_time_ends_with_the_head_while_the_duration_runs_to_the_body_s_end(setup: Setup) -> None:
    gateway = setup.gateway
    sock = socket.create_connection(("127.0.0.1", gateway.port), timeout=10)
    sock.sendall(b"GET /sse/metrics HTTP/1.1\r\nHost: stream.test\r\n\r\n")
    got = b""
    while b"\r\n\r\n" not in got or not got.split(b"\r\n\r\n", 1)[1]:  # the head and the first event
        got += sock.recv(65536)
    time.sleep(1.0)  # not synchronisation: the time the body takes after the head
    setup.other.open_gate("metrics")
    while not got.endswith(b"0\r\n\r\n"):
        data = sock.recv(65536)
        assert data
        got += data
    sock.close()
    samples = scrape(gateway)
    stream = "Backend default/stream"
    duration = value(samples, "gw_backend_request_duration_seconds_sum", backend=stream)
    upstream = value(samples, "gw_upstream_duration_seconds_sum", backend=stream)
    assert value(samples, "gw_upstream_duration_seconds_count", backend=stream) == 1
    assert duration >= 1.0
    assert upstream <= duration - 1.0


def test_a_backend_that_refuses_counts_its_5xx_without_an_upstream_time(setup: Setup) -> None:
    gateway = setup.gateway
    client = gateway.connect()
    assert client.request("GET", "/", {"Host": "broken.test"}).status == 502
    assert client.request("GET", "/", {"Host": "nothing.test"}).status == 404
    client.close()
    samples = scrape(gateway)
    nowhere = "Backend default/nowhere"
    assert value(samples, "gw_backend_requests_total", backend=nowhere, status_class="5xx") == 1
    assert value(samples, "gw_upstream_duration_seconds_count", backend=nowhere) == 0
    assert value(samples, "gw_upstream_connect_duration_seconds_count", backend=nowhere) == 0
    # A request no route took counts for no backend; sizes are those of requests that reached one.
    backends = {dict(labels).get("backend") for name, labels in samples if name == "gw_backend_requests_total"}
    assert "" not in backends and None not in backends
    assert value(samples, "gw_http_requests_total", route="", status_class="4xx") == 1
    assert value(samples, "gw_http_response_size_bytes_count", route="") == 0
    assert value(samples, "gw_http_response_size_bytes_count", route="default/broken") == 1


def test_label_values_are_route_and_backend_names_never_paths(setup: Setup) -> None:
    gateway = setup.gateway
    client = gateway.connect()
    for n in range(5):
        client.request("GET", f"/bytes/{n + 1}?user={n}", {"Host": "plain.test"})
    client.close()
    samples: Samples = scrape(gateway)
    routes = {"default/plain", "default/slow", "default/stream", "default/broken", ""}
    backends = {f"Backend default/{b}" for b in ("plain", "slow", "stream", "nowhere")}
    for name, labels in samples:
        labelled = dict(labels)
        assert labelled.get("route", "") in routes, (name, labelled)
        if "backend" in labelled:
            assert labelled["backend"] in backends, (name, labelled)
    assert ("gw_upstream_duration_seconds_count", frozenset({("backend", "Backend default/plain")})) in samples


def test_a_registry_absorbs_another_s_backend_and_size_counts() -> None:
    worker = Registry()
    pair, bare = worker.route("r", "b"), worker.route("r")
    pair.record_upstream(200, 0.002, 50)  # upstream time: the duration
    pair.record_apart(200, 0.3, 0.2, 2000, 10)  # upstream time apart (a connection opened first)
    pair.record_sized(503, 0.004, 0, 0)  # no answer from the upstream: no upstream time
    bare.record(404, 0.0)  # answered by gw: no backend, no sizes
    worker.connect_times("b").observe(0.0005)
    supervisor = Registry()
    supervisor.absorb(worker.snapshot())
    supervisor.absorb(worker.snapshot())
    text = supervisor.render().decode()
    for line in (
        'gw_http_requests_total{route="r",status_class="2xx"} 4',
        'gw_http_requests_total{route="r",status_class="4xx"} 2',
        'gw_backend_requests_total{backend="b",status_class="2xx"} 4',
        'gw_backend_requests_total{backend="b",status_class="5xx"} 2',
        'gw_backend_request_duration_seconds_count{backend="b"} 6',
        'gw_upstream_duration_seconds_count{backend="b"} 4',
        'gw_upstream_duration_seconds_bucket{backend="b",le="0.0025"} 2',
        'gw_upstream_duration_seconds_bucket{backend="b",le="0.25"} 4',
        'gw_upstream_connect_duration_seconds_count{backend="b"} 2',
        'gw_http_request_size_bytes_bucket{route="r",le="0"} 4',
        'gw_http_request_size_bytes_count{route="r"} 6',
        'gw_http_request_size_bytes_sum{route="r"} 4000',
        'gw_http_response_size_bytes_bucket{route="r",le="0"} 2',
        'gw_http_response_size_bytes_bucket{route="r",le="100"} 6',
        'gw_http_response_size_bytes_sum{route="r"} 120',
    ):
        assert line in text.splitlines(), line
    upstream_sum = next(line for line in text.splitlines() if line.startswith("gw_upstream_duration_seconds_sum"))
    assert float(upstream_sum.split()[-1]) == pytest.approx(2 * (0.002 + 0.2))



def test_pipelined_requests_each_count_their_own_body_size(setup: Setup) -> None:
    """Four requests in one write, two with bodies: each counts its own size. (The Wire client keeps
    what one read brought past the first response; Client.read_response drops it.)"""
    gateway = setup.gateway
    route = {"route": "default/slow"}
    before = scrape(gateway)
    client = wire(gateway)
    client.send(
        b"POST /bytes/5 HTTP/1.1\r\nHost: slow.test\r\nContent-Length: 300\r\n\r\n" + b"a" * 300
        + b"GET /bytes/5 HTTP/1.1\r\nHost: slow.test\r\n\r\n"
        + b"POST /bytes/5 HTTP/1.1\r\nHost: slow.test\r\nContent-Length: 50\r\n\r\n" + b"b" * 50
        + b"GET /bytes/5 HTTP/1.1\r\nHost: slow.test\r\n\r\n"
    )  # fmt: skip
    assert [client.read_response().status for _ in range(4)] == [200] * 4
    client.close()
    after = scrape(gateway)

    def grew(name: str, **labels: str) -> float:
        return value(after, name, **labels, **route) - value(before, name, **labels, **route)

    assert grew("gw_http_request_size_bytes_count") == 4
    assert grew("gw_http_request_size_bytes_sum") == 350
    assert grew("gw_http_request_size_bytes_bucket", le="0") == 2
    assert grew("gw_http_request_size_bytes_bucket", le="100") == 3
    assert grew("gw_http_response_size_bytes_sum") == 20
    backend = {"backend": "Backend default/slow"}
    assert value(after, "gw_upstream_duration_seconds_count", **backend) - value(
        before, "gw_upstream_duration_seconds_count", **backend
    ) == 4
