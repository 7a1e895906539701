"""BackendTrafficPolicy.loadBalancer end to end: real gateway replicas on one port and real upstreams."""

from __future__ import annotations

import httpx

from tests.conftest import StartGateway
from tests.support import valkey
from tests.support.upstream import Upstream
from tests.test_backend_resilience import fleet, policy

CONSISTENT_HASH = {"type": "ConsistentHash", "consistentHash": {"type": "Header", "header": {"name": "X-User"}}}


def test_a_header_hash_sends_each_value_to_one_upstream_whichever_replica_and_worker_serves_it(
    start_gateway: StartGateway, upstreams: list[Upstream], redis_server: valkey.Server
) -> None:
    replicas = fleet(start_gateway, upstreams, policy(loadBalancer=CONSISTENT_HASH), redis_server.url)
    users = [f"user-{i}" for i in range(24)]
    for _ in range(4):
        for user in users:
            # A connection per request: the kernel spreads them over both replicas' workers.
            response = httpx.get(
                replicas[0].url("/status/200"), timeout=10, headers={"X-User": user, "Connection": "close"}
            )
            assert response.status_code == 200
    reached = {
        user: {up.name for up in upstreams for seen in up.seen if seen.header("x-user") == user} for user in users
    }
    assert all(len(names) == 1 for names in reached.values()), reached
    assert len({names.pop() for names in reached.values()}) == 3  # and the values spread over every upstream
    served = [gw.access_log.read_text().count("/status/200") for gw in replicas]
    assert all(served), served  # both replicas took part


def test_status_and_metrics_show_each_backend_balancer_and_least_request_in_flight(
    start_gateway: StartGateway, upstreams: list[Upstream], redis_server: valkey.Server
) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from tests.support.wait import wait_until

    (gw,) = fleet(start_gateway, upstreams, policy(loadBalancer={"type": "LeastRequest"}), redis_server.url, replicas=1)
    endpoints = [f"127.0.0.1:{u.port}" for u in upstreams]
    assert gw.status()["load_balancers"] == [
        {"backend": "Backend default/api", "type": "LeastRequest", "endpoints": endpoints}
    ]

    def in_flight() -> dict[str, int]:
        (backend,) = gw.status()["backends"]
        return {e["endpoint"]: e["in_flight"] for e in backend["endpoints"]}

    held = 6
    with ThreadPoolExecutor(held) as pool:
        waiting = [pool.submit(httpx.get, gw.url("/wait/go"), timeout=30, headers={"Connection": "close"})
                   for _ in range(held)]  # fmt: skip
        # Summed over both workers, whichever took each request; two choices spread them.
        wait_until(lambda: sum(in_flight().values()) == held, what="every held request counted in flight")
        assert len(in_flight()) == 3 and max(in_flight().values()) <= held - 2
        metrics = httpx.get(f"http://127.0.0.1:{gw.admin}/metrics", timeout=10).text
        series = [line for line in metrics.splitlines() if line.startswith("gw_endpoint_in_flight{")]
        assert sum(float(line.rsplit(" ", 1)[1]) for line in series) == held
        assert 'gw_backend_load_balancer{backend="Backend default/api",type="LeastRequest"} 1' in metrics
        for upstream in upstreams:
            upstream.open_gate("go")
        assert all(f.result().status_code == 200 for f in waiting)
    wait_until(lambda: sum(in_flight().values()) == 0, what="in-flight counts back to 0")
