"""/fleet and gw_fleet_*: two replicas (real supervisors and workers) sharing one real Valkey.

Workers heartbeat into Redis while a RateLimitPolicy falls back to local counting
(failureMode: Local), so the replicas here carry one; the fleet view groups those heartbeats by
replica, puts the version Redis holds next to the one each replica serves, and says so promptly
when Redis is gone.
"""

from __future__ import annotations

import os
import signal
from typing import Any

import httpx
import yaml

from gw.state.fleet import replica_of
from tests.conftest import StartGateway
from tests.support import valkey
from tests.support.gateway import GatewayProcess
from tests.support.upstream import Upstream
from tests.support.wait import wait_until
from tests.test_backend_resilience import BREAKER, get, policy
from tests.test_backend_resilience import fleet as resilient_fleet
from tests.test_fleet_config import ROUTES, second_replica

LOCAL_LIMIT = {
    "apiVersion": "gw.dev/v1alpha1",
    "kind": "RateLimitPolicy",
    "metadata": {"name": "fleet-limit", "namespace": "default"},
    "spec": {
        "targetRefs": [{"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "name": "all"}],
        "limits": [{"requests": 100000, "per": "1s"}],
        "failureMode": "Local",
    },
}


def fleet(gw: GatewayProcess, timeout: float = 10.0) -> dict[str, Any]:
    response = httpx.get(f"http://127.0.0.1:{gw.admin}/fleet", timeout=timeout)
    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"
    return response.json()  # type: ignore[no-any-return]


def workers_by_replica(gw: GatewayProcess) -> dict[str, int]:
    return {r["replica"]: r["workers"] for r in fleet(gw)["replicas"]}


def replica_name(gw: GatewayProcess) -> str:
    return fleet(gw)["replica"]  # type: ignore[no-any-return]


def metric(gw: GatewayProcess, name: str) -> float | None:
    text = httpx.get(f"http://127.0.0.1:{gw.admin}/metrics", timeout=10).text
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None


def two_replicas(
    start_gateway: StartGateway, upstream: Upstream, redis_server: valkey.Server
) -> tuple[GatewayProcess, GatewayProcess]:
    first = start_gateway(
        {"up": [("127.0.0.1", upstream.port)]}, ROUTES,
        env={"GW_WORKERS": "2", "GW_REDIS_URL": redis_server.url},
    )  # fmt: skip
    with first.config_path.open("a") as config:
        config.write("---\n" + yaml.safe_dump(LOCAL_LIMIT, sort_keys=False))
    # The first replica started on the files without the policy: a HUP gives it (version 2),
    # and the second replica reads the same files.
    mark = len(first.log)
    os.kill(first.pid, signal.SIGHUP)
    first.wait_for_log("gw: config reloaded", after=mark)
    second = second_replica(first, redis_server.url)
    return first, second


def test_each_replica_sees_both_replicas_their_workers_and_one_fleet_version(
    start_gateway: StartGateway, upstream: Upstream, redis_server: valkey.Server
) -> None:
    first, second = two_replicas(start_gateway, upstream, redis_server)
    try:
        expected = {replica_name(first): 2, replica_name(second): 1}
        assert len(expected) == 2  # two supervisors on one machine are two replicas
        wait_until(lambda: workers_by_replica(first) == expected == workers_by_replica(second),
                   what="both replicas' heartbeats on both /fleet")  # fmt: skip
        a, b = fleet(first), fleet(second)
        assert a["workers"] == b["workers"] == 3  # the local rate-limit divisor
        assert a["redis"]["available"] and a["redis"]["mode"] == "standalone" and a["redis"]["latency_ms"] >= 0
        assert [r["this"] for r in a["replicas"] if r["replica"] == replica_name(first)] == [True]
        assert all(0 <= r["heartbeat_age_seconds"] < a["heartbeat_ttl_seconds"] for r in a["replicas"])
        assert a["config"]["current"] == b["config"]["current"]
        current = a["config"]["current"]
        assert current["number"] == 2 and current["origin"] == "files" and current["author"] and current["checksum"]
        for doc in (a, b):
            assert doc["config"]["served"]["number"] == 2 and doc["config"]["differs"] is False
        # The gauges come from the supervisor's timed read: polled, not per scrape.
        wait_until(lambda: metric(first, "gw_fleet_workers") == 3 and metric(first, "gw_fleet_replicas") == 2,
                   what="gw_fleet_* from the timed read")  # fmt: skip
        assert metric(first, "gw_fleet_config_version") == metric(first, "gw_config_version") == 2
    finally:
        second.stop()


def test_a_stopped_replica_leaves_the_fleet_after_the_heartbeat_ttl(
    start_gateway: StartGateway, upstream: Upstream, redis_server: valkey.Server
) -> None:
    first, second = two_replicas(start_gateway, upstream, redis_server)
    gone = replica_name(second)
    try:
        wait_until(lambda: gone in workers_by_replica(first), what="the second replica's heartbeats")
    finally:
        second.stop()
    wait_until(lambda: workers_by_replica(first) == {replica_name(first): 2}, what="the stopped replica to expire")
    assert fleet(first)["workers"] == 2


def test_with_redis_stuck_or_gone_fleet_answers_promptly_that_redis_is_unavailable(
    start_gateway: StartGateway, upstream: Upstream, redis_server: valkey.Server
) -> None:
    first, second = two_replicas(start_gateway, upstream, redis_server)
    second.stop()
    wait_until(lambda: fleet(first)["redis"]["available"], what="a first read")
    redis_server.pause()  # a stuck Redis: connections open, nothing answered
    try:
        stuck = fleet(first, timeout=5.0)  # the read is bounded at 1 s: a hang fails here
    finally:
        redis_server.resume()
    assert stuck["redis"]["available"] is False and "did not answer within 1 s" in stuck["redis"]["error"]
    redis_server.stop()  # a Redis gone: connections refused
    doc = fleet(first, timeout=5.0)
    assert doc["redis"]["available"] is False and "did not answer" in doc["redis"]["error"]
    assert doc["workers"] is None and doc["replicas"] == [] and doc["config"]["current"] is None
    assert doc["config"]["served"]["number"] == 2  # what this replica knows alone
    # The timed read fails too: the gauges go (unknown), the scrape still answers.
    wait_until(lambda: metric(first, "gw_fleet_workers") is None, what="gw_fleet_workers to go")
    assert metric(first, "gw_redis_connected") is not None


def test_fleet_shows_a_circuit_the_fleet_opened_from_either_replica(
    start_gateway: StartGateway, upstreams: list[Upstream], redis_server: valkey.Server
) -> None:
    breaker = {**BREAKER, "openDuration": "60s"}  # open for the whole test
    replicas = resilient_fleet(start_gateway, upstreams, policy(circuitBreaker=breaker), redis_server.url, workers=1)
    for up in upstreams:
        up.fault = "status/500"
    statuses = [get(replicas[0]).status_code for _ in range(30)]
    assert statuses[-1] == 503
    for gw in replicas:
        doc = fleet(gw)
        (backend,) = doc["backends"]
        assert backend["backend"] == "Backend default/api"
        assert backend["circuit"]["state"] == "open" and "failure ratio" in backend["circuit"]["why"]
        assert 0 < backend["circuit"]["seconds_left"] <= 60
        assert doc["circuits_open"] == 1 and doc["endpoints_ejected"] == 0
    wait_until(lambda: metric(replicas[1], "gw_fleet_circuits_open") == 1, what="gw_fleet_circuits_open")


def test_a_worker_id_names_its_replica_and_an_older_id_its_host() -> None:
    assert replica_of("gw-7d9f:1:4242:0a1b2c3d") == "gw-7d9f:1"  # host:supervisor pid:pid:random
    assert replica_of("gw-7d9f:4242:0a1b2c3d") == "gw-7d9f"  # a gw from before: host:pid:random
