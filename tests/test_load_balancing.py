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
