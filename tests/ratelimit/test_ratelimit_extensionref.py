"""An HTTPRoute filter `ExtensionRef` naming a RateLimitPolicy applies that policy to its rule."""

from __future__ import annotations

from pathlib import Path

import yaml

from gw.config import load_text
from tests.support.gateway import GatewayProcess, config_yaml, free_port
from tests.support.upstream import Upstream

REF = {"group": "gw.dev", "kind": "RateLimitPolicy", "name": "by-filter"}
POLICY = {
    "apiVersion": "gw.dev/v1alpha1",
    "kind": "RateLimitPolicy",
    "metadata": {"name": "by-filter"},
    "spec": {"limits": [{"name": "hourly", "requests": 2, "per": "1h", "key": [{"type": "ClientAddress"}]}]},
}


def config(port: int, upstream_port: int, kind: str = "RateLimitPolicy") -> str:
    extension = {"type": "ExtensionRef", "extensionRef": {**REF, "kind": kind}}
    limited = {"path": {"type": "PathPrefix", "value": "/limited"}}
    routes = [
        {"name": "api", "rules": [{"matches": [limited], "filters": [extension], "backendRefs": [{"backend": "up"}]}]},
        {"name": "free", "rules": [{"backendRefs": [{"backend": "up"}]}]},
    ]
    return config_yaml(port, {"up": [("127.0.0.1", upstream_port)]}, routes) + "---\n" + yaml.safe_dump(POLICY)


def test_the_filter_attaches_the_policy_to_its_rule_only() -> None:
    result = load_text(config(8080, 9000))
    assert not result.errors, result.errors
    limited = next(r for r in result.config.rules if r.label == "default/api")
    free = next(r for r in result.config.rules if r.label == "default/free")
    assert [p.meta.name for p in limited.rate_limit_policies] == ["by-filter"] and not limited.invalid_reason
    assert not free.rate_limit_policies


def test_an_extension_ref_to_a_kind_gw_does_not_apply_still_answers_500() -> None:
    result = load_text(config(8080, 9000, kind="SomethingElse"))
    limited = next(r for r in result.config.rules if r.label == "default/api")
    assert limited.invalid_reason


def test_the_gateway_enforces_the_policy_named_by_the_filter(tmp_path: Path, upstream: Upstream) -> None:
    port = free_port()
    path = tmp_path / "gateway.yaml"
    path.write_text(config(port, upstream.port))
    gw = GatewayProcess(path, port, free_port(), {"GW_REDIS_BUDGET": "1s"}, tmp_path / "access.log").start()
    try:
        statuses = []
        for _ in range(4):
            client = gw.connect()
            statuses.append(client.request("GET", "/limited").status)
            client.close()
        assert statuses == [200, 200, 429, 429]
        free = gw.connect()
        assert free.request("GET", "/free").status == 200  # the other rule has no limit
    finally:
        gw.stop()
