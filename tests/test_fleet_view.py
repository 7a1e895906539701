"""/fleet and gw_fleet_*: two replicas (real supervisors and workers) sharing one real Valkey.

Every supervisor beats a record of its replica into Redis whatever its config, so a plain config
lists every replica; workers heartbeat too while a RateLimitPolicy falls back to local counting
(failureMode: Local), and the fleet view adds those counts to their replica. It puts the version
Redis holds next to the one each replica serves, and says so promptly when Redis is gone.
"""

from __future__ import annotations

import os
import signal
import socket
from pathlib import Path
from typing import Any

import httpx
import yaml

from gw import __version__
from gw.state.fleet import replica_of
from gw.supervisor.arbiter import admin_address
from tests.conftest import StartGateway
from tests.support import valkey
from tests.support.gateway import GatewayProcess, config_yaml
from tests.support.upstream import Upstream
from tests.support.wait import wait_until
from tests.test_backend_resilience import BREAKER, get, policy
from tests.test_backend_resilience import fleet as resilient_fleet
from tests.test_fleet_config import ROUTES, gw_config, second_replica

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


def heartbeats_by_replica(gw: GatewayProcess) -> dict[str, int]:
    return {r["replica"]: r["heartbeats"] for r in fleet(gw)["replicas"]}


def replicas(gw: GatewayProcess) -> dict[str, dict[str, Any]]:
    return {r["replica"]: r for r in fleet(gw)["replicas"]}


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
        # Its own entry says what it serves now (its record may be a beat behind the HUP).
        assert replicas(first)[replica_name(first)]["served"]["number"] == 2
        expected = {replica_name(first): 2, replica_name(second): 1}
        assert len(expected) == 2  # two supervisors on one machine are two replicas
        wait_until(lambda: heartbeats_by_replica(first) == expected == heartbeats_by_replica(second),
                   what="both replicas' heartbeats on both /fleet")  # fmt: skip
        a, b = fleet(first), fleet(second)
        assert a["workers"] == b["workers"] == 3  # the local rate-limit divisor
        assert workers_by_replica(first) == expected  # the records' workers alive, beside the heartbeats
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


def test_a_stopped_replica_leaves_the_fleet_at_once_its_heartbeats_after_their_ttl(
    start_gateway: StartGateway, upstream: Upstream, redis_server: valkey.Server
) -> None:
    first, second = two_replicas(start_gateway, upstream, redis_server)
    gone = replica_name(second)
    try:
        wait_until(lambda: heartbeats_by_replica(first).get(gone) == 1, what="the second replica's heartbeats")
    finally:
        second.stop()  # SIGTERM: its supervisor removes its record on the way out
    assert workers_by_replica(first) == {replica_name(first): 2}
    # Its workers' heartbeats expire on their own: the divisor follows within their TTL.
    wait_until(lambda: fleet(first)["workers"] == 2, what="the stopped replica's heartbeats to expire")


def plain_replicas(
    start_gateway: StartGateway, upstream: Upstream, redis_server: valkey.Server, **second_env: str
) -> tuple[GatewayProcess, GatewayProcess]:
    """Two replicas of a config with no RateLimitPolicy: no worker heartbeats, only the records."""
    first = start_gateway(
        {"up": [("127.0.0.1", upstream.port)]}, ROUTES,
        env={"GW_WORKERS": "2", "GW_REDIS_URL": redis_server.url},
    )  # fmt: skip
    return first, second_replica(first, redis_server.url, **second_env)


def test_replicas_of_a_plain_config_each_list_both_with_their_records(
    start_gateway: StartGateway, upstream: Upstream, redis_server: valkey.Server
) -> None:
    first, second = plain_replicas(start_gateway, upstream, redis_server, POD_NAME="gw-7d9f-x2x4k")
    try:
        expected = {replica_name(first): 2, replica_name(second): 1}
        assert len(expected) == 2
        wait_until(lambda: workers_by_replica(first) == expected == workers_by_replica(second),
                   what="both replicas' records on both /fleet")  # fmt: skip
        doc = fleet(first)
        assert doc["workers"] == 0 and doc["workers_alive"] == 3  # no heartbeats: no policy divides by them
        mine, theirs = (replicas(first)[replica_name(gw)] for gw in (first, second))
        assert mine["this"] and not theirs["this"] and not replicas(second)[replica_name(first)]["this"]
        assert mine["host"] == theirs["host"] == socket.gethostname()
        assert mine["pod"] is None and theirs["pod"] == "gw-7d9f-x2x4k"
        assert mine["gw_version"] == theirs["gw_version"] == __version__
        assert mine["admin"] is None  # loopback: nobody else reaches it
        assert (mine["workers_configured"], theirs["workers_configured"]) == (2, 1)
        assert mine["started"].endswith("Z") and theirs["started"].endswith("Z")
        for entry in (mine, theirs):
            assert entry["served"]["number"] == 1 and entry["served"]["checksum"]
            assert entry["differs"] is False
            assert 0 <= entry["beat_age_seconds"] < doc["beat_ttl_seconds"]
            assert entry["heartbeats"] == 0 and entry["heartbeat_age_seconds"] is None and entry["worker_ids"] == []
        wait_until(lambda: metric(first, "gw_fleet_replicas") == 2, what="gw_fleet_replicas from the timed read")
        assert metric(first, "gw_fleet_workers") == 0
    finally:
        second.stop()


def test_a_replica_stopped_with_sigterm_leaves_every_fleet_view_at_once(
    start_gateway: StartGateway, upstream: Upstream, redis_server: valkey.Server
) -> None:
    first, second = plain_replicas(start_gateway, upstream, redis_server)
    gone = replica_name(second)
    wait_until(lambda: gone in replicas(first), what="the second replica's record")
    second.stop()  # SIGTERM, and waits for the supervisor to exit
    assert list(replicas(first)) == [replica_name(first)]  # no wait: its record went with it


def test_a_replica_killed_with_sigkill_leaves_the_fleet_after_the_record_ttl(
    start_gateway: StartGateway, upstream: Upstream, redis_server: valkey.Server
) -> None:
    first, second = plain_replicas(start_gateway, upstream, redis_server)
    gone = replica_name(second)
    wait_until(lambda: gone in replicas(first), what="the second replica's record")
    ttl = fleet(first)["beat_ttl_seconds"]
    os.kill(second.pid, signal.SIGKILL)  # nobody removes its record: it expires
    second.proc.wait()  # type: ignore[union-attr]
    wait_until(lambda: gone not in replicas(first), timeout=ttl + 15, what="the killed replica's record to expire")
    assert list(replicas(first)) == [replica_name(first)]
    wait_until(lambda: metric(first, "gw_fleet_replicas") == 1, what="gw_fleet_replicas to follow")


def test_with_redis_killed_the_beats_fail_quietly_the_proxy_serves_and_the_record_comes_back(
    start_gateway: StartGateway, upstream: Upstream, redis_server: valkey.Server
) -> None:
    first, second = plain_replicas(start_gateway, upstream, redis_server)
    second.stop()
    me = replica_name(first)
    wait_until(lambda: me in replicas(first), what="this replica's record")
    mark = len(first.log)
    redis_server.stop()  # killed: connections refused
    doc = fleet(first, timeout=5.0)  # promptly, not after a hang
    assert doc["redis"]["available"] is False and doc["replicas"] == []
    assert httpx.get(first.url("/echo"), timeout=10).status_code == 200  # the supervisor's loop and workers go on
    first.wait_for_log("gw: replica record: Redis unavailable", after=mark)
    wait_until(lambda: (metric(first, "gw_fleet_beats_failed_total") or 0) >= 2, what="failed beats to be counted")
    assert sum(line.startswith("gw: replica record: Redis unavailable") for line in first.log[mark:]) == 1
    assert httpx.get(first.url("/echo"), timeout=10).status_code == 200
    redis_server.start()  # the same port, empty: the next beat puts the record back
    first.wait_for_log("gw: replica record: Redis answers again", after=mark, timeout=20)
    wait_until(lambda: me in replicas(first), what="this replica's record back")


def test_a_replica_serving_another_version_shows_differs(
    start_gateway: StartGateway, upstream: Upstream, redis_server: valkey.Server, tmp_path: Path
) -> None:
    """A version one replica refuses (a listener port it must not join: GW_SHARE_PORTS off, another
    process listens there) keeps it on the version before while the other serves the new one."""
    strict = start_gateway(
        {"up": [("127.0.0.1", upstream.port)]}, ROUTES, env={"GW_WORKERS": "1", "GW_REDIS_URL": redis_server.url}
    )
    sharing = second_replica(strict, redis_server.url)  # GW_SHARE_PORTS=true: it may join the port
    try:
        with socket.socket() as taken:  # SO_REUSEPORT: the sharing replica joins it, the strict one refuses
            taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            taken.bind(("0.0.0.0", 0))
            taken.listen()
            docs = list(yaml.safe_load_all(config_yaml(strict.port, {"up": [("127.0.0.1", upstream.port)]}, ROUTES)))
            gateway = next(d for d in docs if d["kind"] == "Gateway")
            gateway["spec"]["listeners"].append({"name": "more", "port": taken.getsockname()[1], "protocol": "HTTP"})
            new = tmp_path / "new.yaml"
            new.write_text(yaml.safe_dump_all(docs))
            mark = len(strict.log)
            pushed = gw_config(sharing, "push", str(new))
            assert pushed.returncode == 0, pushed.stdout + pushed.stderr
            strict.wait_for_log("gw: config version 2 from Redis rejected", after=mark)

            def served() -> dict[str, tuple[int, bool]]:
                return {r["replica"]: (r["served"]["number"], r["differs"]) for r in fleet(sharing)["replicas"]}

            expected = {replica_name(strict): (1, True), replica_name(sharing): (2, False)}
            wait_until(lambda: served() == expected, what="the strict replica's version 1 to differ")
            assert {r["replica"]: r["differs"] for r in fleet(strict)["replicas"]} == {
                replica_name(strict): True, replica_name(sharing): False
            }  # fmt: skip
            assert fleet(strict)["config"]["differs"] is True
    finally:
        sharing.stop()


def test_the_record_names_the_admin_address_only_when_others_can_reach_it() -> None:
    assert admin_address("127.0.0.1", 9901) is None and admin_address("localhost", 9901) is None
    assert admin_address("::1", 9901) is None
    assert admin_address("0.0.0.0", 9901) == "0.0.0.0:9901"
    assert admin_address("10.1.2.3", 9901) == "10.1.2.3:9901" and admin_address("::", 9901) == "[::]:9901"


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
