"""BackendTrafficPolicy end to end: real gateways (several replicas and workers sharing one Valkey),
real upstreams that go bad, the fleet's circuit and ejections as clients see them."""

from __future__ import annotations

import contextlib
import threading

import httpx
import yaml

from tests.conftest import StartGateway
from tests.support import valkey
from tests.support.gateway import GatewayProcess, config_yaml, free_port, runtime_dir
from tests.support.upstream import Upstream
from tests.test_supervisor import wait_until

ROUTES = [{"name": "api", "rules": [{"backendRefs": [{"backend": "api"}]}]}]


def policy(**spec: object) -> str:
    doc = {
        "apiVersion": "gw.dev/v1alpha1",
        "kind": "BackendTrafficPolicy",
        "metadata": {"name": "api", "namespace": "default"},
        "spec": {"targetRefs": [{"group": "gw.dev", "kind": "Backend", "name": "api"}], **spec},
    }
    return "---\n" + yaml.safe_dump(doc, sort_keys=False)


def fleet(
    start_gateway: StartGateway,
    upstreams: list[Upstream],
    spec: str,
    redis_url: str,
    replicas: int = 2,
    workers: int = 2,
    routes: list[dict[str, object]] = ROUTES,
    env: dict[str, str] | None = None,
) -> list[GatewayProcess]:
    """`replicas` supervisors of `workers` each on the same files, listener port and Redis."""
    port = free_port()
    text = config_yaml(port, {"api": [("127.0.0.1", u.port) for u in upstreams]}, routes) + spec
    env = {"GW_WORKERS": str(workers), "GW_REDIS_URL": redis_url, "GW_RUNTIME_DIR": runtime_dir(),
           "GW_SHARE_PORTS": "true", **(env or {})}  # fmt: skip
    # Every replica through the fixture's starter, so the test's teardown stops each one (same
    # file contents: they converge on one published version).
    replicas = [start_gateway({}, [], env=env, yaml_text=text) for _ in range(replicas)]
    for gw in replicas:
        gw.port = port  # (the starter picked a port for a config of its own making)
    return replicas


def get(gw: GatewayProcess, path: str = "/status/200") -> httpx.Response:
    """One request on a connection of its own: the kernel spreads them over every worker of
    every replica listening on the port (SO_REUSEPORT)."""
    return httpx.get(gw.url(path), timeout=10, headers={"Connection": "close"})


def backend_status(gw: GatewayProcess) -> dict[str, object]:
    (backend,) = gw.status()["backends"]  # type: ignore[misc]
    return backend  # type: ignore[no-any-return]


def circuit_states(replicas: list[GatewayProcess]) -> set[str]:
    return {s for gw in replicas for s in backend_status(gw)["circuit_by_worker"].values()}  # type: ignore[union-attr]


def test_an_endpoint_answering_500_is_ejected_by_every_worker_of_every_replica_after_the_threshold(
    start_gateway: StartGateway, upstreams: list[Upstream], redis_server: valkey.Server
) -> None:
    passive = {"consecutive5XxErrors": 5, "baseEjectionTime": "60s", "maxEjectionPercent": 50}
    spec = policy(healthCheck={"passive": passive})
    replicas = fleet(start_gateway, upstreams, spec, redis_server.url)
    for _ in range(12):
        assert get(replicas[0]).status_code == 200
    bad = upstreams[1]
    bad.fault = "status/500"
    failures = sum(1 for _ in range(60) if get(replicas[0]).status_code == 500)
    # The threshold counts the fleet's failures, not each worker's (4 workers here: not 20).
    assert 5 <= failures <= 7, failures
    seen = len(bad.seen)
    assert all(get(replicas[0]).status_code == 200 for _ in range(40))
    assert len(bad.seen) == seen  # no replica sends to it any more
    for gw in replicas:
        (ejected,) = [e for e in backend_status(gw)["endpoints"] if e["ejected"]]  # type: ignore[union-attr]
        assert ejected["endpoint"] == f"127.0.0.1:{bad.port}"
        assert "5 consecutive 5xx responses" in ejected["ejection"]["reason"]
    metrics = httpx.get(f"http://127.0.0.1:{replicas[1].admin}/metrics", timeout=10).text
    assert f'gw_endpoint_health{{backend="Backend default/api",endpoint="127.0.0.1:{bad.port}"}} 0' in metrics
    ejections = sum(
        _counter(httpx.get(f"http://127.0.0.1:{gw.admin}/metrics", timeout=10).text, "gw_endpoint_ejections_total")
        for gw in replicas
    )
    assert ejections == 1  # decided once, for the fleet
    assert sum(1 for gw in replicas for line in gw.log if "ejected (5 consecutive 5xx" in line) == 1


def test_a_refusing_endpoint_is_ejected_for_the_fleet(
    start_gateway: StartGateway, upstreams: list[Upstream], redis_server: valkey.Server
) -> None:
    spec = policy(healthCheck={"passive": {"consecutiveLocalOriginFailures": 3, "consecutive5XxErrors": 0,
                                           "baseEjectionTime": "60s", "maxEjectionPercent": 50}})  # fmt: skip
    replicas = fleet(start_gateway, upstreams, spec, redis_server.url)
    gone = upstreams[2]
    gone.stop()  # connections to it are refused from now on
    statuses = [get(replicas[i % 2]).status_code for i in range(40)]
    assert set(statuses) == {200}  # a refused connection is retried on another endpoint
    wait_until(
        lambda: all(any(e["ejected"] for e in backend_status(gw)["endpoints"]) for gw in replicas),  # type: ignore[union-attr]
        what="every replica to show the ejection",
    )
    for gw in replicas:
        (ejected,) = [e for e in backend_status(gw)["endpoints"] if e["ejected"]]  # type: ignore[union-attr]
        assert ejected["endpoint"] == f"127.0.0.1:{gone.port}"
        assert "local-origin" in ejected["ejection"]["reason"]


BREAKER = {"failureRatio": 0.5, "window": "10s", "minimumRequests": 10, "openDuration": "1s", "halfOpenRequests": 2}
# Long enough to see the open circuit refuse on a loaded machine before it goes half-open.
BREAKER_LONG_OPEN = {**BREAKER, "openDuration": "3s"}


def test_the_circuit_opens_for_the_fleet_and_half_open_lets_through_exactly_the_trial_calls(
    start_gateway: StartGateway, upstreams: list[Upstream], redis_server: valkey.Server
) -> None:
    replicas = fleet(start_gateway, upstreams, policy(circuitBreaker=BREAKER_LONG_OPEN), redis_server.url)
    for up in upstreams:
        up.fault = "status/500"
    statuses = [get(replicas[0]).status_code for _ in range(30)]
    assert statuses[:10] == [500] * 10 and statuses[-1] == 503
    wait_until(lambda: circuit_states(replicas) == {"open"}, what="every worker of every replica to see it open")
    calls = sum(len(u.seen) for u in upstreams)
    refusals = [get(replicas[0]) for _ in range(5)]
    assert all(r.status_code == 503 for r in refusals)
    problem = refusals[0].json()
    assert problem["type"] == "urn:gw:problem:circuit-open" and int(refusals[0].headers["Retry-After"]) >= 1
    assert sum(len(u.seen) for u in upstreams) == calls  # answered without touching the backend
    for up in upstreams:
        up.fault = None  # the backend recovers
    successes = tries = 0
    while successes < BREAKER["halfOpenRequests"]:  # type: ignore[operator]
        tries += 1
        assert tries < 500, [backend_status(gw) for gw in replicas]
        successes += get(replicas[0]).status_code == 200
    wait_until(lambda: circuit_states(replicas) == {"closed"}, what="every worker to see it closed")
    # The trial calls are the fleet's, not each worker's: two reached the backend while half-open.
    assert sum(len(u.seen) for u in upstreams) - calls == BREAKER["halfOpenRequests"]
    assert all(get(replicas[1]).status_code == 200 for _ in range(10))
    status = backend_status(replicas[1])["circuit"]
    assert status["state"] == "closed" and "trial calls succeeded" in status["reason"]  # type: ignore[index]


def test_without_redis_each_worker_breaks_the_circuit_alone(
    start_gateway: StartGateway, upstreams: list[Upstream], redis_server: valkey.Server
) -> None:
    (gw,) = fleet(start_gateway, upstreams, policy(circuitBreaker=BREAKER), redis_server.url, replicas=1)
    assert get(gw).status_code == 200
    redis_server.stop()
    for up in upstreams:
        up.fault = "status/500"
    wait_until(lambda: get(gw).status_code == 503 and circuit_states([gw]) == {"open"},
               what="both workers to open their own circuits")  # fmt: skip
    circuit = backend_status(gw)["circuit"]
    assert "Redis unavailable" in circuit["by"]  # type: ignore[index]


def test_max_parallel_requests_answers_overflow_at_once_and_frees_its_slots(
    start_gateway: StartGateway, upstreams: list[Upstream], redis_server: valkey.Server
) -> None:
    spec = policy(circuitBreaker={"maxParallelRequests": 2})
    (gw,) = fleet(start_gateway, upstreams[:1], spec, redis_server.url, replicas=1, workers=1)
    waiting = [threading.Thread(target=get, args=(gw, "/wait/g")) for _ in range(2)]
    for t in waiting:
        t.start()
    wait_until(lambda: len(upstreams[0].seen) == 2, what="two requests in flight")
    overflow = get(gw)
    assert overflow.status_code == 503 and overflow.json()["type"] == "urn:gw:problem:backend-overflow"
    upstreams[0].open_gate("g")
    for t in waiting:
        t.join(10)
    assert all(get(gw).status_code == 200 for _ in range(5))


def test_the_retry_budget_stops_retries_beyond_it(
    start_gateway: StartGateway, upstreams: list[Upstream], redis_server: valkey.Server
) -> None:
    routes = [{"name": "api", "rules": [{"backendRefs": [{"backend": "api"}],
                                         "retry": {"attempts": 3, "codes": [503]}}]}]  # fmt: skip
    spec = policy(retry={"budget": {"percent": 0, "interval": "60s"}, "minRetryRate": {"count": 1, "interval": "60s"}})
    (gw,) = fleet(start_gateway, upstreams[:1], spec, redis_server.url, replicas=1, workers=1, routes=routes)
    up = upstreams[0]
    up.fault = "status/503"
    assert get(gw).status_code == 503
    assert len(up.seen) == 2  # one retry: the minimum rate allows it
    assert get(gw).status_code == 503
    assert len(up.seen) == 3  # no retry: the budget is spent
    metrics = httpx.get(f"http://127.0.0.1:{gw.admin}/metrics", timeout=10).text
    assert _counter(metrics, "gw_retries_refused_total") >= 1


def _counter(metrics: str, name: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines() if line.startswith(name + "{"))


def one_bad_endpoint(
    start_gateway: StartGateway, upstreams: list[Upstream], redis_url: str, fault: str, passive: dict[str, object],
    routes: list[dict[str, object]] = ROUTES,
) -> tuple[GatewayProcess, Upstream]:
    """One replica of two workers; the second endpoint goes bad with `fault`."""
    spec = policy(healthCheck={"passive": {"baseEjectionTime": "60s", "maxEjectionPercent": 50, **passive}})
    (gw,) = fleet(start_gateway, upstreams, spec, redis_url, replicas=1, routes=routes)
    bad = upstreams[1]
    bad.fault = fault
    return gw, bad


def ejected_reason(gw: GatewayProcess, bad: Upstream) -> str | None:
    for e in backend_status(gw)["endpoints"]:  # type: ignore[union-attr]
        if e["endpoint"] == f"127.0.0.1:{bad.port}" and e["ejected"]:
            return e["ejection"]["reason"]  # type: ignore[no-any-return]
    return None


def test_an_endpoint_resetting_mid_body_is_ejected(
    start_gateway: StartGateway, upstreams: list[Upstream], redis_server: valkey.Server
) -> None:
    passive = {"consecutiveLocalOriginFailures": 3, "consecutive5XxErrors": 0}
    gw, bad = one_bad_endpoint(start_gateway, upstreams, redis_server.url, "reset/5000", passive)
    for _ in range(30):
        with contextlib.suppress(httpx.HTTPError):  # the client sees the reset: the body was cut off
            get(gw)
    wait_until(lambda: ejected_reason(gw, bad) is not None, what="the resetting endpoint to be ejected")
    assert "3 consecutive local-origin failures" in ejected_reason(gw, bad)  # type: ignore[operator]
    seen = len(bad.seen)
    assert all(get(gw).status_code == 200 for _ in range(20)) and len(bad.seen) == seen


def test_a_hanging_endpoint_is_ejected_after_its_timeouts(
    start_gateway: StartGateway, upstreams: list[Upstream], redis_server: valkey.Server
) -> None:
    rule = {"backendRefs": [{"backend": "api"}], "timeouts": {"backendRequest": "300ms"}}
    routes = [{"name": "api", "rules": [rule]}]
    passive = {"consecutiveGatewayErrors": 2, "consecutive5XxErrors": 0, "consecutiveLocalOriginFailures": 0}
    gw, bad = one_bad_endpoint(start_gateway, upstreams, redis_server.url, "never", passive, routes)
    timeouts = 0
    while ejected_reason(gw, bad) is None:
        timeouts += get(gw).status_code == 504
        assert timeouts <= 4, "still not ejected"
    assert timeouts >= 2 and "consecutive gateway errors" in ejected_reason(gw, bad)  # type: ignore[operator]
    assert all(get(gw).status_code == 200 for _ in range(10))


def test_slow_calls_open_the_circuit(
    start_gateway: StartGateway, upstreams: list[Upstream], redis_server: valkey.Server
) -> None:
    breaker = {"slowCallDuration": "100ms", "slowCallRatio": 0.5, "minimumRequests": 4, "window": "30s",
               "openDuration": "30s"}  # fmt: skip
    (gw,) = fleet(start_gateway, upstreams[:1], policy(circuitBreaker=breaker), redis_server.url, replicas=1)
    statuses = [get(gw, "/status/200?delay=0.15").status_code for _ in range(6)]
    assert statuses[:4] == [200] * 4 and statuses[-1] == 503, statuses
    circuit = backend_status(gw)["circuit"]
    assert circuit["state"] == "open" and "slow call ratio 1.00 over 4 calls" in circuit["reason"]  # type: ignore[index]


def test_a_paused_redis_costs_requests_no_wait_and_the_workers_decide_alone(
    start_gateway: StartGateway, upstreams: list[Upstream], redis_server: valkey.Server
) -> None:
    (gw,) = fleet(start_gateway, upstreams, policy(circuitBreaker=BREAKER), redis_server.url, replicas=1)
    assert get(gw).status_code == 200
    redis_server.pause()
    try:
        for up in upstreams:
            up.fault = "status/500"
        # Every request is answered (the reports time out within GW_REDIS_BUDGET, off the request
        # path), and each worker opens its own circuit after its own minimumRequests.
        wait_until(lambda: get(gw).status_code == 503 and circuit_states([gw]) == {"open"},
                   what="both workers to open their own circuits")  # fmt: skip
        assert "Redis unavailable" in backend_status(gw)["circuit"]["by"]  # type: ignore[index]
    finally:
        redis_server.resume()
    for up in upstreams:
        up.fault = None
    # Back with Redis: the reports made meanwhile reach it (their answers were late, not lost), the
    # workers follow the fleet's circuit again, and it closes through the fleet's trial calls.
    wait_until(lambda: get(gw).status_code == 200 and circuit_states([gw]) == {"closed"},
               what="the workers to follow the fleet's circuit back to closed", timeout=15)  # fmt: skip
    circuit = backend_status(gw)["circuit"]
    assert circuit["fleet"] and "Redis unavailable" not in circuit["by"]  # type: ignore[index]
