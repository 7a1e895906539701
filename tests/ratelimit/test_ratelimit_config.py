"""RateLimitPolicy in config: fields validated with file/object/field, attached by targetRefs, shown by `gw check`."""

from __future__ import annotations

from typing import Any

from gw.config import compile_resources
from gw.config.parse import parse_documents
from gw.config.status import status_lines
from tests.support.chains import installed, kinds

GATEWAY = [
    {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "GatewayClass", "metadata": {"name": "gw"},
     "spec": {"controllerName": "gw.dev/gateway-controller"}},
    {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway", "metadata": {"name": "edge"},
     "spec": {"gatewayClassName": "gw", "listeners": [{"name": "http", "port": 8080, "protocol": "HTTP"}]}},
    {"apiVersion": "gw.dev/v1alpha1", "kind": "Backend", "metadata": {"name": "app"},
     "spec": {"endpoints": [{"address": "127.0.0.1", "port": 9}]}},
]  # fmt: skip


def route(name: str, *rule_names: str | None) -> dict[str, Any]:
    backend = [{"group": "gw.dev", "kind": "Backend", "name": "app"}]
    rules = [
        {**({"name": n} if n else {}), "matches": [{"path": {"type": "PathPrefix", "value": f"/{name}/{i}"}}],
         "backendRefs": backend}
        for i, n in enumerate(rule_names)
    ]  # fmt: skip
    return {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute", "metadata": {"name": name},
            "spec": {"parentRefs": [{"name": "edge"}], "rules": rules}}  # fmt: skip


def policy(name: str, targets: list[dict[str, Any]], **spec: Any) -> dict[str, Any]:
    spec.setdefault("limits", [{"requests": 10, "per": "1s"}])
    return {"apiVersion": "gw.dev/v1alpha1", "kind": "RateLimitPolicy", "metadata": {"name": name},
            "spec": {"targetRefs": targets, **spec}}  # fmt: skip


def compiled(*docs: dict[str, Any]) -> Any:
    resources, errors = parse_documents([("limits.yaml", d) for d in [*GATEWAY, *docs]])
    return compile_resources(resources, errors=errors)


def rules_of(result: Any, route_key: str) -> list[Any]:
    return [r for r in result.config.rules if r.route == route_key]


def test_a_policy_on_a_named_rule_limits_that_rule_only() -> None:
    result = compiled(route("api", "orders", None), policy("p", [{"kind": "HTTPRoute", "name": "api",
                                                                  "sectionName": "orders"}]))  # fmt: skip
    orders, other = rules_of(result, "default/api")
    assert [p.meta.name for p in orders.rate_limit_policies] == ["p"]
    assert other.rate_limit_policies == ()
    with installed(result.config):
        assert kinds(orders) == ["rate-limit"] and other.chain is None


def test_a_rule_whose_only_policies_are_rate_limits_keeps_its_head_as_it_came() -> None:
    """A chain of the rate-limit phase alone: the proxy decides and forwards the head unsplit."""
    filtered = route("b", None)
    filtered["spec"]["rules"][0]["filters"] = [
        {"type": "RequestHeaderModifier", "requestHeaderModifier": {"add": [{"name": "X-A", "value": "1"}]}}
    ]
    result = compiled(route("a", None), filtered, policy("g", [{"kind": "Gateway", "name": "edge"}]),
                      policy("r", [{"kind": "HTTPRoute", "name": "a"}]))  # fmt: skip
    (only_limits,) = rules_of(result, "default/a")
    (with_filter,) = rules_of(result, "default/b")
    assert len(only_limits.rate_limit_policies) == 2
    with installed(result.config):
        assert kinds(only_limits) == ["rate-limit"]
        assert not only_limits.chain.upstream and not only_limits.chain.response  # nothing edits the head
        assert kinds(with_filter) == ["rate-limit", "request-header-modifier"]


def test_a_policy_on_a_gateway_reaches_every_route_attached_to_it_once() -> None:
    result = compiled(
        route("a", None), route("b", None, None),
        policy("p", [{"kind": "Gateway", "name": "edge"}, {"kind": "HTTPRoute", "name": "a"}]),
    )  # fmt: skip
    assert [len(r.rate_limit_policies) for r in result.config.rules] == [1, 1, 1]


def test_several_policies_on_one_rule_all_apply() -> None:
    result = compiled(route("a", None), policy("g", [{"kind": "Gateway", "name": "edge"}]),
                      policy("r", [{"kind": "HTTPRoute", "name": "a"}]))  # fmt: skip
    assert [p.meta.name for p in result.config.rules[0].rate_limit_policies] == ["g", "r"]


def test_gw_check_shows_what_a_policy_attaches_to_and_what_it_misses() -> None:
    result = compiled(route("api", "orders"), policy("p", [{"kind": "HTTPRoute", "name": "api",
                      "sectionName": "orders"}, {"kind": "HTTPRoute", "name": "gone"}]))  # fmt: skip
    assert (
        "RateLimitPolicy default/p: Accepted=True (Accepted): attached to HTTPRoute default/api rule 'orders' "
        "(1 rule); not found: HTTPRoute default/gone"
    ) in status_lines(result)
    assert [(e.obj, e.field) for e in result.errors] == [("RateLimitPolicy default/p", "spec.targetRefs[1]")]


def test_a_policy_with_no_target_found_is_not_accepted() -> None:
    result = compiled(route("api", None), policy("p", [{"kind": "HTTPRoute", "name": "gone"}]))
    assert "RateLimitPolicy default/p: Accepted=False (TargetNotFound): not found: HTTPRoute default/gone" in (
        status_lines(result)
    )


def test_invalid_fields_are_named_and_the_policy_is_dropped() -> None:
    bad = policy(
        "p", [{"kind": "HTTPRoute", "name": "api", "namespace": "other"}], mode="Sometimes", failureMode="Maybe",
        algorithm="SlidingWindow", trustedProxies=["10.0.0.0/8", "nonsense"],
        limits=[{"name": "Per Second", "requests": 0, "per": "soon", "burst": 2,
                 "key": [{"type": "JWTClaims"}, {"type": "Header"}, {"type": "Method", "name": "x"},
                         {"type": "JWTClaim"}]}],
    )  # fmt: skip
    result = compiled(route("api", None), bad)
    assert {(e.obj, e.field) for e in result.errors} == {
        ("RateLimitPolicy default/p", field)
        for field in (
            "spec.targetRefs[0].namespace", "spec.mode", "spec.failureMode", "spec.trustedProxies[1]",
            "spec.limits[0].name", "spec.limits[0].requests", "spec.limits[0].per", "spec.limits[0].burst",
            "spec.limits[0].key[0].type", "spec.limits[0].key[1].name", "spec.limits[0].key[2].name",
            "spec.limits[0].key[3].name",
        )
    }  # fmt: skip
    assert all(e.file == "limits.yaml" for e in result.errors)
    assert result.config.rules[0].rate_limit_policies == ()


def test_a_policy_needs_limits_and_may_leave_targets_to_extension_refs() -> None:
    result = compiled(route("api", None), {"apiVersion": "gw.dev/v1alpha1", "kind": "RateLimitPolicy",
                                          "metadata": {"name": "p"}, "spec": {}})  # fmt: skip
    assert {e.field for e in result.errors} == {"spec.limits"}  # without targetRefs: ExtensionRef only


def test_a_policy_defined_twice_is_reported_and_applied_once() -> None:
    target = [{"kind": "HTTPRoute", "name": "api"}]
    result = compiled(route("api", None), policy("p", target), policy("p", target))
    (rule,) = rules_of(result, "default/api")
    assert [p.meta.name for p in rule.rate_limit_policies] == ["p"]  # not limited twice
    assert any(e.obj == "RateLimitPolicy default/p" and "more than once" in e.message for e in result.errors)
