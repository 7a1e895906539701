"""Rate limits through real gateways: 429 with problem+json and headers, exact across workers and
supervisors sharing one Valkey, leases, the over-limit cache, failure modes, local scope."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from gw.state import Keys
from tests.ratelimit.support import script_calls
from tests.support import valkey
from tests.support.gateway import GatewayProcess, config_yaml, free_port
from tests.support.upstream import Upstream

Start = Callable[..., GatewayProcess]


def limits_yaml(port: int, upstream_port: int, policy: dict[str, Any]) -> str:
    """Two routes to the upstream: /limited (rule "limited" of route "api") and /free (route "free")."""
    limited = {"path": {"type": "PathPrefix", "value": "/limited"}}
    routes = [
        {"name": "api", "rules": [{"name": "limited", "matches": [limited], "backendRefs": [{"backend": "up"}]}]},
        {"name": "free", "rules": [{"backendRefs": [{"backend": "up"}]}]},
    ]
    spec = {"targetRefs": [{"kind": "HTTPRoute", "name": "api", "sectionName": "limited"}], **policy}
    doc = {"apiVersion": "gw.dev/v1alpha1", "kind": "RateLimitPolicy", "metadata": {"name": "api-limit"},
           "spec": spec}  # fmt: skip
    return config_yaml(port, {"up": [("127.0.0.1", upstream_port)]}, routes) + "---\n" + yaml.safe_dump(doc)


@pytest.fixture
def start(tmp_path: Path, upstream: Upstream) -> Iterator[Start]:
    """start(policy spec, env, port=, offset=) → a gateway whose /limited rule has the policy."""
    started: list[GatewayProcess] = []

    def run(
        policy: dict[str, Any], env: dict[str, str] | None = None, port: int = 0, offset: int = 0
    ) -> GatewayProcess:
        port = port or free_port()
        index = len(started)
        path = tmp_path / f"gateway-{index}.yaml"
        path.write_text(limits_yaml(port, upstream.port, policy))
        # Counting tests must not fail open because a shared 2-core machine was slow for 5 ms;
        # the failure-mode tests pause Redis, which no budget outlasts.
        env = {"GW_REDIS_BUDGET": "1s", **(env or {})}
        if offset:
            env["GW_LISTENER_PORT_OFFSET"] = str(offset)
        gw = GatewayProcess(path, port + offset, free_port(), env, tmp_path / f"access-{index}.log")
        started.append(gw)
        return gw.start()

    yield run
    for gw in started:
        gw.stop()


def get(gw: GatewayProcess, path: str = "/limited", headers: dict[str, str] | None = None) -> Any:
    """One request on a fresh connection (so SO_REUSEPORT spreads them over the workers)."""
    client = gw.connect()
    try:
        return client.request("GET", path, headers=headers)
    finally:
        client.close()


def statuses(gw: GatewayProcess, n: int, path: str = "/limited") -> list[int]:
    return [get(gw, path).status for _ in range(n)]


HOURLY = {"limits": [{"name": "hourly", "requests": 3, "per": "1h", "key": [{"type": "ClientAddress"}]}]}


def test_over_the_limit_answers_429_problem_json_with_retry_after_and_ratelimit_fields(start: Start) -> None:
    gw = start({**HOURLY, "responseHeaders": True})
    allowed = [get(gw) for _ in range(3)]
    assert [r.status for r in allowed] == [200, 200, 200]
    assert allowed[0].header("RateLimit-Policy") == '"api-limit/hourly";q=3;w=3600'
    assert [r.header("RateLimit").split(";")[1] for r in allowed] == ["r=2", "r=1", "r=0"]
    refused = get(gw)
    assert refused.status == 429
    assert refused.header("Content-Type") == "application/problem+json"
    problem = json.loads(refused.body)
    assert problem["type"] == "urn:gw:problem:rate-limited" and problem["status"] == 429
    assert 1 <= int(refused.header("Retry-After")) <= 1200
    assert refused.header("RateLimit").startswith('"api-limit/hourly";r=0;t=')
    assert refused.header("RateLimit-Policy") == '"api-limit/hourly";q=3;w=3600'


def test_a_refusal_spells_its_fields_as_proxied_responses_do(start: Start) -> None:
    """gw's own answer writes X-Request-ID (and Content-Type, Content-Length) as a proxied response
    and answer() write them: a client or a log matching bytes sees one spelling."""
    gw = start({"limits": [{"requests": 1, "per": "1h"}], "responseHeaders": True})
    assert get(gw).status == 200
    client = gw.connect()
    try:
        client.send(b"GET /limited HTTP/1.1\r\nHost: example.test\r\n\r\n")
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = client.sock.recv(65536)
            assert chunk, data
            data += chunk
    finally:
        client.close()
    head = data.split(b"\r\n\r\n")[0]
    assert head.startswith(b"HTTP/1.1 429 Too Many Requests\r\n")
    names = [line.split(b":")[0] for line in head.split(b"\r\n")[1:]]
    assert b"X-Request-ID" in names and b"\r\nX-Request-ID: " in head
    assert {b"Content-Type", b"Content-Length", b"Retry-After", b"RateLimit-Policy", b"RateLimit"} <= set(names)


def test_rules_without_the_policy_are_not_limited(start: Start) -> None:
    gw = start({"limits": [{"requests": 1, "per": "1h"}]})
    assert statuses(gw, 2) == [200, 429]
    assert statuses(gw, 5, "/free") == [200] * 5
    assert get(gw, "/free").header("RateLimit") is None


def test_keys_count_apart_and_a_trusted_proxy_s_x_forwarded_for_names_the_client(start: Start) -> None:
    gw = start({**HOURLY, "trustedProxies": ["127.0.0.0/8"]})
    for client in ("192.0.2.1", "192.0.2.2"):
        forwarded = {"X-Forwarded-For": client}
        assert [get(gw, headers=forwarded).status for _ in range(4)] == [200, 200, 200, 429]


def test_a_header_keyed_limit_counts_each_value_apart(start: Start) -> None:
    gw = start({"limits": [{"requests": 2, "per": "1h", "key": [{"type": "Header", "name": "X-Tenant"}]}]})
    for tenant in ("a", "b"):
        assert [get(gw, headers={"X-Tenant": tenant}).status for _ in range(3)] == [200, 200, 429]
    assert get(gw).status == 200  # no header: a key of its own (the empty value)


def test_exact_mode_is_exact_across_two_workers(start: Start, tmp_path: Path) -> None:
    server = valkey.standalone(tmp_path / "valkey")
    try:
        gw = start({"limits": [{"requests": 40, "per": "1h"}]}, {"GW_WORKERS": "2", "GW_REDIS_URL": server.url})
        assert len(gw.worker_pids()) == 2
        assert statuses(gw, 100).count(200) == 40
    finally:
        server.stop()


def test_two_supervisors_sharing_one_valkey_share_the_limit(start: Start, tmp_path: Path) -> None:
    server = valkey.standalone(tmp_path / "valkey")
    try:
        env = {"GW_WORKERS": "2", "GW_REDIS_URL": server.url}
        policy = {"limits": [{"requests": 30, "per": "1h"}]}
        port = free_port()
        a = start(policy, env, port=port)
        b = start(policy, env, port=port, offset=free_port() - port)  # same config, another bound port
        results = [get(gw).status for _ in range(40) for gw in (a, b)]
        assert results.count(200) == 30
    finally:
        server.stop()


def test_leased_mode_admits_within_its_bound_with_fewer_redis_calls(start: Start, tmp_path: Path) -> None:
    server = valkey.standalone(tmp_path / "valkey")
    try:
        gw = start({"mode": "Leased", "limits": [{"requests": 1000, "per": "1h"}]},
                   {"GW_WORKERS": "2", "GW_REDIS_URL": server.url})  # fmt: skip
        before = script_calls(server)
        client = gw.connect()  # one keep-alive connection: one worker, a steady rate
        try:
            results = [client.request("GET", "/limited").status for _ in range(300)]
        finally:
            client.close()
        assert results == [200] * 300
        assert script_calls(server) - before < 300 / 2
    finally:
        server.stop()


def test_a_flood_over_the_limit_costs_no_redis_calls(start: Start, tmp_path: Path) -> None:
    server = valkey.standalone(tmp_path / "valkey")
    try:
        gw = start(HOURLY, {"GW_REDIS_URL": server.url})
        assert statuses(gw, 4) == [200, 200, 200, 429]
        before = script_calls(server)
        assert set(statuses(gw, 50)) == {429}
        assert script_calls(server) == before
    finally:
        server.stop()


@pytest.mark.parametrize(("mode", "expected"), [("Open", 200), ("Closed", 503)])
def test_failure_mode_when_redis_stops_answering(start: Start, tmp_path: Path, mode: str, expected: int) -> None:
    server = valkey.standalone(tmp_path / "valkey")
    try:
        env = {"GW_REDIS_URL": server.url, "GW_REDIS_BUDGET": "50ms"}
        gw = start({"failureMode": mode, "limits": [{"requests": 100, "per": "1h"}]}, env)
        assert get(gw).status == 200
        server.pause()
        assert [get(gw).status for _ in range(3)] == [expected] * 3
        server.resume()
    finally:
        server.stop()


def test_local_failure_mode_counts_per_worker_while_redis_is_gone(start: Start, tmp_path: Path) -> None:
    server = valkey.standalone(tmp_path / "valkey")
    try:
        gw = start({"failureMode": "Local", "limits": [{"requests": 4, "per": "1h"}]}, {"GW_REDIS_URL": server.url})
        assert get(gw).status == 200
        server.stop()  # killed: connections refused
        # One live worker (its own heartbeat): the whole limit, counted from zero in the worker.
        assert statuses(gw, 5) == [200, 200, 200, 200, 429]
    finally:
        server.stop()


def test_local_failure_mode_admits_at_most_the_limit_over_the_live_workers_while_valkey_is_paused(
    start: Start, tmp_path: Path
) -> None:
    """Each of 2 workers counts limit / 2 (the live workers it last read from the heartbeats)."""
    limit = 20
    server = valkey.standalone(tmp_path / "valkey")
    try:
        env = {"GW_WORKERS": "2", "GW_REDIS_URL": server.url, "GW_REDIS_BUDGET": "50ms"}
        gw = start({"failureMode": "Local", "limits": [{"requests": limit, "per": "1h"}]}, env)
        assert len(gw.worker_pids()) == 2
        workers = Keys().fleet.workers
        with server.client() as c:
            valkey.wait_until(lambda: c.zcard(workers) == 2, "both workers' heartbeats")
            seconds, micros = c.time()
            both_seen = seconds * 1000 + micros // 1000
            # A heartbeat after both were in the set has read a live count of 2.
            valkey.wait_until(lambda: min(s for _, s in c.zrange(workers, 0, -1, withscores=True)) > both_seen,
                              "a heartbeat of each worker that counted both")  # fmt: skip
        server.pause()
        results = statuses(gw, 3 * limit)  # fresh connections: both workers get well over limit / 2
        assert set(results) == {200, 429}
        assert limit // 2 <= results.count(200) <= limit
    finally:
        server.resume()  # a paused server cannot act on SIGTERM
        server.stop()


def test_local_scope_counts_in_the_replica_without_redis(start: Start, tmp_path: Path) -> None:
    server = valkey.standalone(tmp_path / "valkey")
    try:
        gw = start({"scope": "Local", **HOURLY}, {"GW_REDIS_URL": server.url})
        before = script_calls(server)
        assert statuses(gw, 4) == [200, 200, 200, 429]
        assert script_calls(server) == before
    finally:
        server.stop()


