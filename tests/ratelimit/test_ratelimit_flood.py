"""A flood far above the limit, through one replica of two workers on a real Valkey: the fleet admits
the limit (Exact: within 1%, Leased: within 3%), refuses the rest with 429, and never answers 503
with Redis up (a worker saturated by the flood is not an outage)."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support import valkey
from tests.support.gateway import GatewayProcess, config_yaml, free_port
from tests.support.upstream import Upstream

CONNECTIONS = 256
LIMIT = 500  # one key; the keyed cases split it over KEYS keys
KEYS = 20
OFFERED = 16  # times the limit
GOAL = {"Exact": 0.01, "Leased": 0.03}
# Not the default 5 ms: on a shared CI VM a Redis off its CPU for 5 ms in a way no process sees
# (the hypervisor's steal time) does happen, and Open then admits what it must. At 10 ms the
# flaw this guards against (the worker's own lateness charged to Redis) failed it every time
# (574, 597, 560 of 500); scripts/bench-ratelimit --flood measures the default.
BUDGET = "10ms"
CASES = [(mode, keyed) for mode in ("Exact", "Leased") for keyed in (False, True)]


def name(mode: str, keyed: bool) -> str:
    return f"{mode.lower()}-{'keyed' if keyed else 'one'}"


def flood_yaml(port: int, upstream: int) -> str:
    routes: list[dict[str, Any]] = []
    policies = ""
    for mode, keyed in CASES:
        n = name(mode, keyed)
        routes.append({"name": n, "rules": [{"matches": [{"path": {"type": "PathPrefix", "value": f"/{n}"}}],
                                             "backendRefs": [{"backend": "up"}]}]})  # fmt: skip
        requests = LIMIT // KEYS if keyed else LIMIT
        limit = {"name": "flood", "requests": requests, "per": "24h", "burst": requests,
                 "key": [{"type": "Header", "name": "X-Key"}] if keyed else []}  # fmt: skip
        policy = {"apiVersion": "gw.dev/v1alpha1", "kind": "RateLimitPolicy", "metadata": {"name": n},
                  "spec": {"targetRefs": [{"kind": "HTTPRoute", "name": n}], "algorithm": "GCRA", "mode": mode,
                           "limits": [limit]}}  # fmt: skip
        policies += "---\n" + yaml.safe_dump(policy)
    return config_yaml(port, {"up": [("127.0.0.1", upstream)]}, routes) + policies


async def client(port: int, path: str, keys: int, first: int, count: int, statuses: Counter[int]) -> None:
    """One keep-alive connection sending `count` requests one after another, X-Key cycling."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for i in range(first, first + count):
            key = f"X-Key: k{i % keys}\r\n" if keys else ""
            writer.write(f"GET /{path} HTTP/1.1\r\nHost: flood\r\n{key}\r\n".encode())
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head[9:12])
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            await reader.readexactly(length)
            statuses[status] += 1
    finally:
        writer.close()


async def flood(port: int, path: str, keys: int) -> Counter[int]:
    statuses: Counter[int] = Counter()
    per_client = LIMIT * OFFERED // CONNECTIONS
    await asyncio.gather(*(client(port, path, keys, c, per_client, statuses) for c in range(CONNECTIONS)))
    return statuses


@pytest.fixture
def gateway(tmp_path: Path, upstream: Upstream) -> Any:
    server = valkey.standalone(tmp_path / "valkey")
    port = free_port()
    config = tmp_path / "gateway.yaml"
    config.write_text(flood_yaml(port, upstream.port))
    env = {"GW_WORKERS": "2", "GW_REDIS_URL": server.url, "GW_ACCESS_LOG": "off", "GW_REDIS_BUDGET": BUDGET}
    gw = GatewayProcess(config, port, free_port(), env, tmp_path / "access.log")
    try:
        yield gw.start()
    finally:
        gw.stop()
        server.stop()


@pytest.mark.parametrize(("mode", "keyed"), CASES, ids=[name(m, k) for m, k in CASES])
def test_a_flood_far_above_the_limit_admits_the_limit(gateway: GatewayProcess, mode: str, keyed: bool) -> None:
    statuses = asyncio.run(flood(gateway.port, name(mode, keyed), KEYS if keyed else 0))
    assert sum(statuses.values()) == LIMIT * OFFERED // CONNECTIONS * CONNECTIONS
    assert set(statuses) <= {200, 429}, statuses  # no 503: Redis was up the whole time
    admitted = statuses[200]
    assert LIMIT * (1 - GOAL[mode]) <= admitted <= LIMIT * (1 + GOAL[mode]), statuses
