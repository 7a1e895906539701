"""BackendTrafficPolicy.loadBalancer in config: Envoy Gateway's shapes parsed to LoadBalancer, every bad
field named, and the section taken whole from the most specific policy per backend."""

from __future__ import annotations

from typing import Any

import pytest

from gw.config import backend_policy
from gw.config.backend_policy import ConsistentHash, LoadBalancer
from gw.config.parse import parse_documents
from tests.test_backend_policy_config import APP, APP_REF, BREAKER, compiled, on, policy, resilience, route


def parsed(lb: Any) -> LoadBalancer | None:
    resources, errors = parse_documents([policy("p", [on("Backend", "app")], loadBalancer=lb)])
    assert errors == []
    return resources.backend_traffic_policies[0].load_balancer


class TestParsing:
    def test_the_documented_example_hashes_on_a_header(self) -> None:
        doc = backend_policy.__doc__ or ""
        assert "loadBalancer:" in doc
        assert parsed(
            {
                "type": "ConsistentHash",
                "consistentHash": {"type": "Header", "header": {"name": "X-User"}, "tableSize": 65537},
            }
        ) == LoadBalancer("ConsistentHash", ConsistentHash("Header", "x-user", (), None, 65537))

    def test_round_robin_random_and_least_request_take_only_a_type(self) -> None:
        assert parsed({"type": "RoundRobin"}) == LoadBalancer("RoundRobin")
        assert parsed({"type": "Random"}) == LoadBalancer("Random")
        assert parsed({"type": "LeastRequest"}) == LoadBalancer("LeastRequest")

    def test_slow_start_gives_a_window_to_round_robin_and_least_request(self) -> None:
        assert parsed({"type": "RoundRobin", "slowStart": {"window": "30s"}}) == LoadBalancer("RoundRobin", None, 30.0)
        assert parsed({"type": "LeastRequest", "slowStart": {"window": "1m"}}).slow_start_window == 60.0  # type: ignore[union-attr]

    def test_the_table_size_defaults_to_envoys(self) -> None:
        lb = parsed({"type": "ConsistentHash", "consistentHash": {"type": "SourceIP"}})
        assert lb == LoadBalancer("ConsistentHash", ConsistentHash("SourceIP", "", (), None, 65537))

    def test_a_cookie_hash_keeps_its_name_and_ttl(self) -> None:
        lb = parsed(
            {"type": "ConsistentHash", "consistentHash": {"type": "Cookie", "cookie": {"name": "sid", "ttl": "1h"}}}
        )
        assert lb is not None and lb.consistent_hash == ConsistentHash("Cookie", "sid", (), 3600.0, 65537)

    def test_query_params_hash_keeps_their_names_in_order(self) -> None:
        spec = {"type": "QueryParams", "queryParams": [{"name": "user"}, {"name": "org"}], "tableSize": 5000011}
        lb = parsed({"type": "ConsistentHash", "consistentHash": spec})
        assert lb is not None and lb.consistent_hash == ConsistentHash(
            "QueryParams", "", ("user", "org"), None, 5000011
        )

    @pytest.mark.parametrize(
        ("lb", "field"),
        [
            ({}, "spec.loadBalancer.type"),
            ({"type": "WeightedRoundRobin"}, "spec.loadBalancer.type"),
            ({"type": "Maglev"}, "spec.loadBalancer.type"),
            ({"type": "RoundRobin", "algorithm": "x"}, "spec.loadBalancer.algorithm"),
            ({"type": "RoundRobin", "zoneAware": {}}, "spec.loadBalancer.zoneAware"),
            ({"type": "RoundRobin", "endpointOverride": {}}, "spec.loadBalancer.endpointOverride"),
            ({"type": "ConsistentHash"}, "spec.loadBalancer.consistentHash"),
            ({"type": "Random", "consistentHash": {"type": "SourceIP"}}, "spec.loadBalancer.consistentHash"),
            ({"type": "Random", "slowStart": {"window": "10s"}}, "spec.loadBalancer.slowStart"),
            (
                {"type": "ConsistentHash", "consistentHash": {"type": "SourceIP"}, "slowStart": {"window": "10s"}},
                "spec.loadBalancer.slowStart",
            ),
            ({"type": "RoundRobin", "slowStart": {}}, "spec.loadBalancer.slowStart.window"),
            ({"type": "RoundRobin", "slowStart": {"window": "0s"}}, "spec.loadBalancer.slowStart.window"),
            ({"type": "RoundRobin", "slowStart": {"window": "soon"}}, "spec.loadBalancer.slowStart.window"),
            ({"type": "RoundRobin", "slowStart": [1]}, "spec.loadBalancer.slowStart"),
            ({"type": "ConsistentHash", "consistentHash": {}}, "spec.loadBalancer.consistentHash.type"),
            ({"type": "ConsistentHash", "consistentHash": {"type": "Path"}}, "spec.loadBalancer.consistentHash.type"),
            (
                {"type": "ConsistentHash", "consistentHash": {"type": "Header"}},
                "spec.loadBalancer.consistentHash.header",
            ),
            (
                {"type": "ConsistentHash", "consistentHash": {"type": "SourceIP", "header": {"name": "x"}}},
                "spec.loadBalancer.consistentHash.header",
            ),
            (
                {"type": "ConsistentHash", "consistentHash": {"type": "Header", "header": {}}},
                "spec.loadBalancer.consistentHash.header.name",
            ),
            (
                {"type": "ConsistentHash", "consistentHash": {"type": "Header", "header": {"name": "a b"}}},
                "spec.loadBalancer.consistentHash.header.name",
            ),
            (
                {"type": "ConsistentHash", "consistentHash": {"type": "SourceIP", "headers": [{"name": "a"}]}},
                "spec.loadBalancer.consistentHash.headers",
            ),
            (
                {"type": "ConsistentHash", "consistentHash": {"type": "Cookie"}},
                "spec.loadBalancer.consistentHash.cookie",
            ),
            (
                {"type": "ConsistentHash", "consistentHash": {"type": "Cookie", "cookie": {"name": "a;b"}}},
                "spec.loadBalancer.consistentHash.cookie.name",
            ),
            (
                {"type": "ConsistentHash", "consistentHash": {"type": "Cookie", "cookie": {"name": "s", "ttl": "0s"}}},
                "spec.loadBalancer.consistentHash.cookie.ttl",
            ),
            (
                {
                    "type": "ConsistentHash",
                    "consistentHash": {"type": "Cookie", "cookie": {"name": "s", "attributes": {}}},
                },
                "spec.loadBalancer.consistentHash.cookie.attributes",
            ),
            (
                {"type": "ConsistentHash", "consistentHash": {"type": "QueryParams"}},
                "spec.loadBalancer.consistentHash.queryParams",
            ),
            (
                {"type": "ConsistentHash", "consistentHash": {"type": "QueryParams", "queryParams": []}},
                "spec.loadBalancer.consistentHash.queryParams",
            ),
            (
                {"type": "ConsistentHash", "consistentHash": {"type": "QueryParams", "queryParams": [{"name": ""}]}},
                "spec.loadBalancer.consistentHash.queryParams[0].name",
            ),
            (
                {
                    "type": "ConsistentHash",
                    "consistentHash": {"type": "QueryParams", "queryParams": [{"name": "a", "value": "b"}]},
                },
                "spec.loadBalancer.consistentHash.queryParams[0].value",
            ),
            (
                {"type": "ConsistentHash", "consistentHash": {"type": "SourceIP", "tableSize": 65536}},
                "spec.loadBalancer.consistentHash.tableSize",
            ),
            (
                {"type": "ConsistentHash", "consistentHash": {"type": "SourceIP", "tableSize": 5000012}},
                "spec.loadBalancer.consistentHash.tableSize",
            ),
            (
                {"type": "ConsistentHash", "consistentHash": {"type": "SourceIP", "tableSize": 1}},
                "spec.loadBalancer.consistentHash.tableSize",
            ),
            (
                {"type": "ConsistentHash", "consistentHash": {"type": "SourceIP", "tableSize": "big"}},
                "spec.loadBalancer.consistentHash.tableSize",
            ),
            ("RoundRobin", "spec.loadBalancer"),
        ],
        ids=lambda value: value if isinstance(value, str) else None,
    )
    def test_a_bad_field_is_named_and_the_policy_refused_whole(self, lb: Any, field: str) -> None:
        good = policy("good", [on("Backend", "app")], loadBalancer={"type": "Random"})
        resources, errors = parse_documents([("p.yaml", policy("p", [on("Backend", "app")], loadBalancer=lb)), good])
        assert [(e.file, e.obj, e.field) for e in errors] == [("p.yaml", "BackendTrafficPolicy default/p", field)]
        assert [p.meta.name for p in resources.backend_traffic_policies] == ["good"]


class TestPrecedence:
    def test_the_most_specific_policy_setting_load_balancer_gives_it_whole(self) -> None:
        result = compiled(
            route("r", [APP_REF]),
            policy("on-gateway", [on("Gateway", "edge")], loadBalancer={"type": "Random"}),
            policy(
                "on-route", [on("HTTPRoute", "r")], loadBalancer={"type": "LeastRequest", "slowStart": {"window": "5s"}}
            ),
            policy("on-app", [on("Backend", "app")], circuitBreaker=BREAKER),
        )
        r = resilience(result, APP)
        assert r is not None
        assert r.load_balancer == LoadBalancer("LeastRequest", None, 5.0)
        assert r.circuit_breaker is not None
        assert r.sources == ("default/on-app", "default/on-route")

    def test_a_policy_with_only_a_load_balancer_is_a_resilience_of_its_own(self) -> None:
        result = compiled(route("r", [APP_REF]), policy("lb", [on("Backend", "app")], loadBalancer={"type": "Random"}))
        r = resilience(result, APP)
        assert r is not None and r.load_balancer == LoadBalancer("Random")
        assert (r.circuit_breaker, r.passive, r.active, r.retry_budget) == (None, None, None, None)

    def test_two_policies_on_one_backend_conflict_over_load_balancer(self) -> None:
        result = compiled(
            route("r", [APP_REF]),
            policy("old", [on("Backend", "app")], "2026-01-01T00:00:00Z", loadBalancer={"type": "Random"}),
            policy("new", [on("Backend", "app")], "2026-02-01T00:00:00Z", loadBalancer={"type": "LeastRequest"}),
        )
        r = resilience(result, APP)
        assert r is not None and r.load_balancer == LoadBalancer("Random")
        conds = [str(c) for c in result.conditions.get("BackendTrafficPolicy default/new", [])]
        assert any("wins loadBalancer" in c for c in conds), conds


class TestShown:
    """`gw routes` and /status show each backend's balancer in the policy's own words."""

    def test_gw_routes_shows_the_balancer_of_each_backend_and_the_policies_of_the_rule(self) -> None:
        from gw.config.describe import describe_rule

        lb = {"type": "ConsistentHash", "consistentHash": {"type": "Header", "header": {"name": "X-User"}}}
        result = compiled(route("r", [APP_REF]), policy("hash", [on("Backend", "app")], loadBalancer=lb))
        assert result.errors == []
        (rule,) = [r for r in result.config.rules if r.route.endswith("/r")]
        text = describe_rule(rule)
        assert "[1 endpoint, ConsistentHash(Header x-user, table 65537)]" in text, text
        assert "policies: BackendTrafficPolicy default/hash" in text, text
        slow = parsed({"type": "LeastRequest", "slowStart": {"window": "30s"}})
        assert slow is not None and slow.describe() == "LeastRequest, slowStart 30s"

    def test_a_backend_without_a_policy_is_round_robin(self) -> None:
        from gw.config.describe import describe_rule

        (rule,) = [r for r in compiled(route("r", [APP_REF])).config.rules if r.route.endswith("/r")]
        assert describe_rule(rule) == "default/r#0 → Backend default/app w=1 [1 endpoint, RoundRobin]"

    @pytest.mark.parametrize(
        ("lb", "shown"),
        [
            ({"type": "LeastRequest"}, {"type": "LeastRequest"}),
            ({"type": "ConsistentHash", "consistentHash": {"type": "QueryParams", "queryParams": [{"name": "u"}]}},
             {"type": "ConsistentHash", "consistentHash": {"type": "QueryParams", "tableSize": 65537,
                                                           "queryParams": ["u"]}}),
            ({"type": "ConsistentHash", "consistentHash": {"type": "Cookie", "cookie": {"name": "sid"}}},
             {"type": "ConsistentHash", "consistentHash": {"type": "Cookie", "tableSize": 65537,
                                                           "cookie": {"name": "sid"}}}),
            ({"type": "RoundRobin", "slowStart": {"window": "1m"}},
             {"type": "RoundRobin", "slowStart": {"window": "60s"}}),
        ],
    )  # fmt: skip
    def test_status_shows_the_balancer_in_the_policys_field_names(self, lb: Any, shown: Any) -> None:
        balancer = parsed(lb)
        assert balancer is not None and balancer.status() == shown
