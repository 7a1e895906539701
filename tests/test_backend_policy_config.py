"""BackendTrafficPolicy in config: fields validated with file/object/field, each section taken from the most
specific policy per backend, same-level conflicts to the oldest, Accepted/Conflicted shown by `gw check`."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml

from gw.cli import main
from gw.config import backend_policy, compile_resources, status_document
from gw.config.backend_policy import (
    TCP,
    ActiveHealthCheck,
    CircuitBreaker,
    PassiveHealthCheck,
    Resilience,
    RetryBudget,
    Tracing,
)
from gw.config.parse import parse_documents
from gw.config.status import status_lines

GATEWAY = "gateway.networking.k8s.io/v1"
BASE = [
    {"apiVersion": GATEWAY, "kind": "GatewayClass", "metadata": {"name": "gw"},
     "spec": {"controllerName": "gw.dev/gateway-controller"}},
    {"apiVersion": GATEWAY, "kind": "Gateway", "metadata": {"name": "edge"},
     "spec": {"gatewayClassName": "gw", "listeners": [{"name": "http", "port": 8080, "protocol": "HTTP"}]}},
    {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "orders"},
     "spec": {"ports": [{"name": "http", "port": 80}, {"name": "admin", "port": 9000}]}},
    {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
     "metadata": {"name": "orders-1", "labels": {"kubernetes.io/service-name": "orders"}},
     "ports": [{"name": "http", "port": 8080}, {"name": "admin", "port": 9001}],
     "endpoints": [{"addresses": ["10.0.0.1"]}]},
    {"apiVersion": "gw.dev/v1alpha1", "kind": "Backend", "metadata": {"name": "app"},
     "spec": {"endpoints": [{"address": "127.0.0.1", "port": 9}]}},
]  # fmt: skip
ORDERS, ORDERS_ADMIN, APP = "Service default/orders:80", "Service default/orders:9000", "Backend default/app"
SERVICE_REF = {"kind": "Service", "name": "orders", "port": 80}
ADMIN_REF = {"kind": "Service", "name": "orders", "port": 9000}
APP_REF = {"group": "gw.dev", "kind": "Backend", "name": "app"}


def route(name: str, *rules: list[dict[str, Any]], rule_names: tuple[str | None, ...] = ()) -> dict[str, Any]:
    """An HTTPRoute on Gateway edge whose rule i sends to the backendRefs rules[i]."""
    names = rule_names or (None,) * len(rules)
    spec_rules = [
        {**({"name": n} if n else {}), "matches": [{"path": {"type": "PathPrefix", "value": f"/{name}/{i}"}}],
         "backendRefs": refs}
        for i, (n, refs) in enumerate(zip(names, rules, strict=True))
    ]  # fmt: skip
    return {"apiVersion": GATEWAY, "kind": "HTTPRoute", "metadata": {"name": name},
            "spec": {"parentRefs": [{"name": "edge"}], "rules": spec_rules}}  # fmt: skip


def policy(name: str, targets: list[dict[str, Any]], created: str | None = None, **spec: Any) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if created:
        meta["creationTimestamp"] = created
    return {"apiVersion": "gw.dev/v1alpha1", "kind": "BackendTrafficPolicy", "metadata": meta,
            "spec": {"targetRefs": targets, **spec}}  # fmt: skip


def on(kind: str, name: str, section: str | None = None) -> dict[str, Any]:
    return {"kind": kind, "name": name, **({"sectionName": section} if section else {})}


def compiled(*docs: dict[str, Any]) -> Any:
    resources, errors = parse_documents([("policies.yaml", d) for d in [*BASE, *docs]])
    return compile_resources(resources, errors=errors)


def resilience(result: Any, name: str) -> Resilience | None:
    """The Resilience of backend `name`, checking every compiled object of that name has the same one."""
    found = []
    for rule in result.config.rules:
        found += [ref.backend for ref in rule.backend_refs if ref.backend is not None and ref.backend.name == name]
        found += [m.backend for m in rule.mirrors if m.backend.name == name]
    assert found, f"no backend {name}"
    assert all(b.resilience is found[0].resilience for b in found)
    return found[0].resilience


def conditions(result: Any, name: str) -> list[str]:
    return [str(c) for c in result.conditions.get(f"BackendTrafficPolicy default/{name}", [])]


BREAKER = {"failureRatio": 0.5}
STRICT_BREAKER = {"failureRatio": 0.1}


class TestParsing:
    def test_the_documented_example_parses_to_its_values(self) -> None:
        doc = backend_policy.__doc__ or ""
        start = doc.index("    apiVersion:")
        example = textwrap.dedent(doc[start : doc.index("\n\n", start)])
        resources, errors = parse_documents([("doc", yaml.safe_load(example))])
        assert errors == []
        (p,) = resources.backend_traffic_policies
        assert [(t.group, t.kind, t.name) for t in p.targets] == [("", "Service", "orders")]
        assert p.circuit_breaker == CircuitBreaker(1024, 1024, 1024, 1024, 0.5, 2.0, 0.8, 10.0, 20, 30.0, 3)
        assert p.passive == PassiveHealthCheck(5, 0, 5, 3.0, 30.0, 10)
        assert p.active == ActiveHealthCheck("HTTP", "/healthz", "GET", "orders.internal", (200,), 3.0, 1.0, 3, 1, 1.0)
        assert p.panic_threshold == 50
        assert p.retry_budget == RetryBudget(20, 10.0, 10, 1.0)

    def test_the_readme_example_parses(self) -> None:
        readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
        block = readme.split("kind: BackendTrafficPolicy", 1)[1].split("```", 1)[0]
        resources, errors = parse_documents([("README", yaml.safe_load("kind: BackendTrafficPolicy" + block))])
        assert errors == [] and len(resources.backend_traffic_policies) == 1

    def test_a_section_left_out_is_not_set_and_one_written_empty_takes_the_defaults(self) -> None:
        resources, errors = parse_documents([policy("p", [on("Backend", "app")], circuitBreaker={})])
        assert errors == []
        (p,) = resources.backend_traffic_policies
        assert p.circuit_breaker == CircuitBreaker()
        assert (p.passive, p.active, p.panic_threshold, p.retry_budget) == (None, None, None, None)

    def test_retry_constraint_is_the_gateway_api_name_for_retry(self) -> None:
        spec = {"budget": {"percent": 30, "interval": "20s"}, "minRetryRate": {"count": 3, "interval": "2s"}}
        resources, errors = parse_documents([policy("p", [on("Backend", "app")], retryConstraint=spec)])
        assert errors == []
        assert resources.backend_traffic_policies[0].retry_budget == RetryBudget(30, 20.0, 3, 2.0)

    def test_a_tcp_check_and_a_core_group_service(self) -> None:
        target = {"group": "core", "kind": "Service", "name": "orders", "sectionName": "http"}
        resources, errors = parse_documents([policy("p", [target], healthCheck={"active": {"type": "TCP"}})])
        assert errors == []
        (p,) = resources.backend_traffic_policies
        assert p.active is not None and p.active.type == TCP
        assert [(t.group, t.section_name) for t in p.targets] == [("", "http")]

    @pytest.mark.parametrize(
        ("spec", "field"),
        [
            ({"circuitBreaker": {"failureRatio": 0}}, "spec.circuitBreaker.failureRatio"),
            ({"circuitBreaker": {"failureRatio": 1.5}}, "spec.circuitBreaker.failureRatio"),
            ({"circuitBreaker": {"failureRatio": "half"}}, "spec.circuitBreaker.failureRatio"),
            ({"circuitBreaker": {"slowCallRatio": 0.5}}, "spec.circuitBreaker.slowCallRatio"),
            (
                {"circuitBreaker": {"slowCallRatio": 0.5, "slowCallDuration": "0s"}},
                "spec.circuitBreaker.slowCallDuration",
            ),
            ({"circuitBreaker": {"maxConnections": -1}}, "spec.circuitBreaker.maxConnections"),
            ({"circuitBreaker": {"maxParallelRetries": 1.5}}, "spec.circuitBreaker.maxParallelRetries"),
            ({"circuitBreaker": {"minimumRequests": 0}}, "spec.circuitBreaker.minimumRequests"),
            ({"circuitBreaker": {"halfOpenRequests": 0}}, "spec.circuitBreaker.halfOpenRequests"),
            ({"circuitBreaker": {"window": "0s"}}, "spec.circuitBreaker.window"),
            ({"circuitBreaker": {"openDuration": "soon"}}, "spec.circuitBreaker.openDuration"),
            ({"circuitBreaker": {"failureRate": 0.5}}, "spec.circuitBreaker.failureRate"),
            ({"circuitBreaker": [1]}, "spec.circuitBreaker"),
            ({"healthCheck": {"panicThreshold": 101}}, "spec.healthCheck.panicThreshold"),
            (
                {"healthCheck": {"passive": {"consecutive5XxErrors": -1}}},
                "spec.healthCheck.passive.consecutive5XxErrors",
            ),
            (
                {"healthCheck": {"passive": {"consecutive5xxErrors": 3}}},
                "spec.healthCheck.passive.consecutive5xxErrors",
            ),
            ({"healthCheck": {"passive": {"maxEjectionPercent": 150}}}, "spec.healthCheck.passive.maxEjectionPercent"),
            ({"healthCheck": {"passive": {"baseEjectionTime": "0s"}}}, "spec.healthCheck.passive.baseEjectionTime"),
            ({"healthCheck": {"passive": {"interval": "0ms"}}}, "spec.healthCheck.passive.interval"),
            ({"healthCheck": {"active": {"type": "GRPC"}}}, "spec.healthCheck.active.type"),
            ({"healthCheck": {"active": {"type": "TCP", "http": {"path": "/"}}}}, "spec.healthCheck.active.http"),
            ({"healthCheck": {"active": {"http": {"path": "healthz"}}}}, "spec.healthCheck.active.http.path"),
            ({"healthCheck": {"active": {"http": {"method": "GE T"}}}}, "spec.healthCheck.active.http.method"),
            (
                {"healthCheck": {"active": {"http": {"hostname": "not a host"}}}},
                "spec.healthCheck.active.http.hostname",
            ),
            (
                {"healthCheck": {"active": {"http": {"expectedStatuses": [200, 700]}}}},
                "spec.healthCheck.active.http.expectedStatuses[1]",
            ),
            (
                {"healthCheck": {"active": {"http": {"expectedStatuses": []}}}},
                "spec.healthCheck.active.http.expectedStatuses",
            ),
            ({"healthCheck": {"active": {"interval": "0s"}}}, "spec.healthCheck.active.interval"),
            ({"healthCheck": {"active": {"timeout": "0s"}}}, "spec.healthCheck.active.timeout"),
            ({"healthCheck": {"active": {"unhealthyThreshold": 0}}}, "spec.healthCheck.active.unhealthyThreshold"),
            ({"healthCheck": {"active": {"healthyThreshold": 0}}}, "spec.healthCheck.active.healthyThreshold"),
            ({"healthCheck": {"active": {"initialJitter": "-1s"}}}, "spec.healthCheck.active.initialJitter"),
            ({"healthCheck": {"outlier": {}}}, "spec.healthCheck.outlier"),
            ({"retry": {"budget": {"percent": 101}}}, "spec.retry.budget.percent"),
            ({"retry": {"budget": {"interval": "500ms"}}}, "spec.retry.budget.interval"),
            ({"retryConstraint": {"budget": {"interval": "2h"}}}, "spec.retryConstraint.budget.interval"),
            ({"retry": {"minRetryRate": {"count": -1}}}, "spec.retry.minRetryRate.count"),
            ({"retry": {}, "retryConstraint": {}}, "spec.retryConstraint"),
            ({"circuitbreaker": {}}, "spec.circuitbreaker"),
        ],
        ids=lambda value: value if isinstance(value, str) else None,
    )
    def test_a_bad_field_is_named_and_the_policy_refused_whole(self, spec: dict[str, Any], field: str) -> None:
        good = policy("good", [on("Backend", "app")], circuitBreaker=BREAKER)
        resources, errors = parse_documents([("p.yaml", policy("p", [on("Backend", "app")], **spec)), good])
        assert [(e.file, e.obj, e.field) for e in errors] == [("p.yaml", "BackendTrafficPolicy default/p", field)]
        assert [p.meta.name for p in resources.backend_traffic_policies] == ["good"]
        assert resources.rejected == ["BackendTrafficPolicy default/p"]

    @pytest.mark.parametrize(
        ("targets", "field"),
        [
            (None, "spec.targetRefs"),
            ([], "spec.targetRefs"),
            ([{"kind": "ConfigMap", "name": "x"}], "spec.targetRefs[0].kind"),
            ([{"kind": "Service", "name": "Orders"}], "spec.targetRefs[0].name"),
            ([{"kind": "Service", "name": "orders", "namespace": "other"}], "spec.targetRefs[0].namespace"),
            ([{"group": "apps", "kind": "Service", "name": "orders"}], "spec.targetRefs[0].group"),
            ([{"group": "gateway.networking.k8s.io", "kind": "Backend", "name": "app"}], "spec.targetRefs[0].group"),
            ([{"kind": "Backend", "name": "app", "sectionName": "x"}], "spec.targetRefs[0].sectionName"),
            ([{"kind": "Gateway", "name": "edge", "sectionName": "http"}], "spec.targetRefs[0].sectionName"),
            ([{"kind": "Service", "name": "orders", "port": 80}], "spec.targetRefs[0].port"),
        ],
        ids=lambda value: value if isinstance(value, str) else None,
    )
    def test_a_bad_target_is_named(self, targets: list[Any] | None, field: str) -> None:
        doc = policy("p", [], circuitBreaker=BREAKER)
        if targets is None:
            del doc["spec"]["targetRefs"]
        else:
            doc["spec"]["targetRefs"] = targets
        resources, errors = parse_documents([doc])
        assert [(e.obj, e.field) for e in errors] == [("BackendTrafficPolicy default/p", field)]
        assert resources.backend_traffic_policies == []


class TestPrecedence:
    def test_each_section_comes_from_the_most_specific_policy_setting_it(self) -> None:
        result = compiled(
            route("api", [SERVICE_REF]),
            policy("gw-wide", [on("Gateway", "edge")], circuitBreaker=BREAKER, retry={},
                   healthCheck={"passive": {}, "panicThreshold": 30}),
            policy("per-route", [on("HTTPRoute", "api")], circuitBreaker=BREAKER,
                   healthCheck={"passive": {"consecutive5XxErrors": 2}}),
            policy("per-service", [on("Service", "orders")], circuitBreaker=STRICT_BREAKER),
        )  # fmt: skip
        assert result.errors == []
        r = resilience(result, ORDERS)
        assert r is not None
        assert r.circuit_breaker == CircuitBreaker(failure_ratio=0.1)
        assert r.passive == PassiveHealthCheck(consecutive_5xx_errors=2)
        assert (r.retry_budget, r.panic_threshold, r.active) == (RetryBudget(), 30, None)
        assert r.sources == ("default/per-service", "default/per-route", "default/gw-wide")

    def test_an_httproute_policy_beats_a_gateway_policy(self) -> None:
        result = compiled(
            route("api", [APP_REF]),
            policy("gw-wide", [on("Gateway", "edge")], circuitBreaker=STRICT_BREAKER),
            policy("per-route", [on("HTTPRoute", "api")], circuitBreaker=BREAKER),
        )
        r = resilience(result, APP)
        assert r is not None and r.circuit_breaker == CircuitBreaker(failure_ratio=0.5)
        assert r.sources == ("default/per-route",) and r.panic_threshold == 50

    def test_a_backend_no_policy_reaches_has_none(self) -> None:
        result = compiled(route("api", [APP_REF], [SERVICE_REF]), policy("p", [on("Service", "orders")], retry={}))
        assert resilience(result, APP) is None
        assert resilience(result, ORDERS) is not None

    def test_a_service_policy_covers_every_port_and_a_section_name_one_port(self) -> None:
        result = compiled(
            route("api", [SERVICE_REF], [ADMIN_REF]),
            policy("all-ports", [on("Service", "orders")], circuitBreaker=BREAKER),
            policy("admin-port", [on("Service", "orders", "admin")], circuitBreaker=STRICT_BREAKER),
        )
        assert resilience(result, ORDERS).sources == ("default/all-ports",)  # type: ignore[union-attr]
        assert resilience(result, ORDERS_ADMIN).sources == ("default/admin-port",)  # type: ignore[union-attr]
        assert not any("Conflicted" in c for c in conditions(result, "all-ports"))

    def test_a_route_policy_on_a_named_rule_reaches_that_rules_backends_only(self) -> None:
        result = compiled(
            route("api", [APP_REF], [SERVICE_REF], rule_names=("app", "orders")),
            policy("p", [on("HTTPRoute", "api", "orders")], retry={}),
        )
        assert resilience(result, APP) is None and resilience(result, ORDERS) is not None

    def test_a_mirror_backend_shares_the_resilience_of_its_name(self) -> None:
        mirrored = route("api", [SERVICE_REF])
        mirror = {"type": "RequestMirror", "requestMirror": {"backendRef": APP_REF}}
        mirrored["spec"]["rules"][0]["filters"] = [mirror]
        result = compiled(mirrored, route("other", [APP_REF]), policy("p", [on("Backend", "app")], retry={}))
        (rule,) = [r for r in result.config.rules if r.route == "default/api"]
        (m,) = rule.mirrors
        assert m.backend.resilience is not None
        assert m.backend.resilience is resilience(result, APP)

    def test_a_policy_in_another_namespace_does_not_reach_the_service(self) -> None:
        elsewhere = policy("p", [on("Service", "orders")], retry={})
        elsewhere["metadata"]["namespace"] = "other"
        result = compiled(route("api", [SERVICE_REF]), elsewhere)
        assert resilience(result, ORDERS) is None
        assert [(e.obj, e.field) for e in result.errors] == [("BackendTrafficPolicy other/p", "spec.targetRefs[0]")]


class TestConflicts:
    def test_the_oldest_of_two_policies_on_one_backend_wins_and_the_other_says_so(self) -> None:
        result = compiled(
            route("api", [SERVICE_REF]),
            policy("newer", [on("Service", "orders")], "2026-02-01T00:00:00Z", circuitBreaker=STRICT_BREAKER),
            policy("older", [on("Service", "orders")], "2026-01-01T00:00:00Z", circuitBreaker=BREAKER),
        )
        r = resilience(result, ORDERS)
        assert r is not None and r.circuit_breaker == CircuitBreaker(failure_ratio=0.5)
        assert r.sources == ("default/older",)
        assert conditions(result, "older") == ["Accepted=True (Accepted): attached to Service default/orders:80"]
        newer = conditions(result, "newer")
        assert newer[0].startswith("Accepted=False (Conflicted): attached to Service default/orders:80")
        assert newer[1].startswith(
            "Conflicted=True (Conflicted): BackendTrafficPolicy default/older wins circuitBreaker for "
            "Service default/orders:80"
        )
        assert result.errors == []  # a conflict has a deterministic outcome: status, not an error

    def test_at_the_same_age_namespace_and_name_decide(self) -> None:
        result = compiled(
            route("api", [APP_REF]),
            policy("b", [on("Backend", "app")], circuitBreaker=STRICT_BREAKER),
            policy("a", [on("Backend", "app")], circuitBreaker=BREAKER),
        )
        assert resilience(result, APP).sources == ("default/a",)  # type: ignore[union-attr]
        assert any(c.startswith("Conflicted=True") and "default/a wins" in c for c in conditions(result, "b"))

    def test_a_policy_losing_one_section_keeps_the_others_and_stays_accepted(self) -> None:
        result = compiled(
            route("api", [APP_REF]),
            policy("old", [on("Backend", "app")], "2026-01-01T00:00:00Z", circuitBreaker=BREAKER),
            policy("new", [on("Backend", "app")], "2026-02-01T00:00:00Z", circuitBreaker=STRICT_BREAKER, retry={}),
        )
        r = resilience(result, APP)
        assert r is not None and r.sources == ("default/old", "default/new")
        assert r.circuit_breaker == CircuitBreaker(failure_ratio=0.5) and r.retry_budget == RetryBudget()
        new = conditions(result, "new")
        assert new[0] == "Accepted=True (Accepted): attached to Backend default/app"
        assert "default/old wins circuitBreaker for Backend default/app" in new[1]

    def test_two_routes_reaching_one_backend_with_different_route_policies_conflict(self) -> None:
        result = compiled(
            route("a", [APP_REF]), route("b", [APP_REF]),
            policy("on-b", [on("HTTPRoute", "b")], "2026-01-01T00:00:00Z", circuitBreaker=BREAKER),
            policy("on-a", [on("HTTPRoute", "a")], "2026-02-01T00:00:00Z", circuitBreaker=STRICT_BREAKER),
        )  # fmt: skip
        assert resilience(result, APP).sources == ("default/on-b",)  # type: ignore[union-attr]
        assert any("default/on-b wins circuitBreaker for Backend default/app" in c for c in conditions(result, "on-a"))

    def test_policies_at_different_levels_do_not_conflict(self) -> None:
        result = compiled(
            route("api", [APP_REF]),
            policy("gw-wide", [on("Gateway", "edge")], circuitBreaker=BREAKER),
            policy("own", [on("Backend", "app")], circuitBreaker=STRICT_BREAKER),
        )
        assert conditions(result, "gw-wide") == ["Accepted=True (Accepted): attached to Backend default/app"]
        assert conditions(result, "own") == ["Accepted=True (Accepted): attached to Backend default/app"]


class TestStatus:
    def test_a_target_not_served_is_an_error_and_not_accepted(self) -> None:
        result = compiled(route("api", [APP_REF]), policy("p", [on("Service", "orders", "admin")], retry={}))
        assert [(e.obj, e.field) for e in result.errors] == [("BackendTrafficPolicy default/p", "spec.targetRefs[0]")]
        assert (
            "BackendTrafficPolicy default/p: Accepted=False (TargetNotFound): not found: "
            "Service default/orders port 'admin'"
        ) in status_lines(result)

    def test_the_status_document_lists_backend_traffic_policies(self) -> None:
        result = compiled(route("api", [SERVICE_REF]), policy("p", [on("Service", "orders", "http")], retry={}))
        (doc,) = [p for p in status_document(result)["policies"] if p["kind"] == "BackendTrafficPolicy"]
        assert doc["targetRefs"] == [{"kind": "Service", "name": "orders", "sectionName": "http"}]
        assert doc["conditions"] == [
            {"type": "Accepted", "status": "True", "reason": "Accepted",
             "message": "attached to Service default/orders:80"}
        ]  # fmt: skip


CHECKED = """
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: gw}
spec: {controllerName: gw.dev/gateway-controller}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: edge, namespace: default}
spec:
  gatewayClassName: gw
  listeners: [{name: http, port: 8080, protocol: HTTP}]
---
apiVersion: gw.dev/v1alpha1
kind: Backend
metadata: {name: app, namespace: default}
spec: {endpoints: [{address: 127.0.0.1, port: 18081}]}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: api, namespace: default}
spec:
  parentRefs: [{name: edge}]
  rules: [{backendRefs: [{group: gw.dev, kind: Backend, name: app}]}]
---
apiVersion: gw.dev/v1alpha1
kind: BackendTrafficPolicy
metadata: {name: first, namespace: default, creationTimestamp: "2026-01-01T00:00:00Z"}
spec:
  targetRefs: [{group: gw.dev, kind: Backend, name: app}]
  circuitBreaker: {failureRatio: 0.5, window: 10s}
---
apiVersion: gw.dev/v1alpha1
kind: BackendTrafficPolicy
metadata: {name: second, namespace: default, creationTimestamp: "2026-02-01T00:00:00Z"}
spec:
  targetRefs: [{group: gw.dev, kind: Backend, name: app}]
  circuitBreaker: {failureRatio: 0.2}
"""


class TestCheck:
    @pytest.fixture(autouse=True)
    def clean_env(self, monkeypatch: pytest.MonkeyPatch) -> None:
        import os

        for key in list(os.environ):
            if key.startswith("GW_"):
                monkeypatch.delenv(key)

    def check(self, tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str) -> tuple[int, str, Path]:
        path = tmp_path / "gw.yaml"
        path.write_text(textwrap.dedent(text))
        code = main(["check", str(path)])
        return code, capsys.readouterr().out, path

    def test_gw_check_prints_accepted_and_the_conflict(self, tmp_path, capsys) -> None:
        code, out, _ = self.check(tmp_path, capsys, CHECKED)
        assert code == 0
        lines = out.splitlines()
        assert "BackendTrafficPolicy default/first: Accepted=True (Accepted): attached to Backend default/app" in lines
        assert (
            "BackendTrafficPolicy default/second: Accepted=False (Conflicted): attached to Backend default/app; "
            "nothing takes a section from it (see Conflicted); Conflicted=True (Conflicted): "
            "BackendTrafficPolicy default/first wins circuitBreaker for Backend default/app (at the same "
            "precedence level the oldest policy wins, then by namespace/name)"
        ) in lines

    def test_gw_check_names_a_bad_field_and_exits_non_zero(self, tmp_path, capsys) -> None:
        code, out, path = self.check(tmp_path, capsys, CHECKED.replace("failureRatio: 0.2", "failureRatio: 2"))
        assert code == 1
        assert (
            f"error: {path}: BackendTrafficPolicy default/second: spec.circuitBreaker.failureRatio: 2 is not a "
            "share of calls: it must be more than 0 and at most 1"
        ) in out.splitlines()
        assert "BackendTrafficPolicy default/first: Accepted=True (Accepted): attached to Backend default/app" in out
        assert "default/second:" not in out.replace(f"error: {path}: BackendTrafficPolicy default/second:", "")


def test_a_reload_with_an_invalid_policy_keeps_the_running_version() -> None:
    """An invalid policy is refused whole; on a reload its running version keeps protecting the backend."""
    from gw.config import Snapshot, compile_sources
    from gw.config.fallback import keep_running_objects

    def compile_files(snapshot: Snapshot) -> Any:
        return compile_sources(list(snapshot.files), source="test")

    running = [("gw.yaml", CHECKED.encode())]
    new = [("gw.yaml", CHECKED.replace("window: 10s", "window: 0s").encode())]
    result = compile_files(Snapshot.of(new, "test"))
    assert [e.field for e in result.errors] == ["spec.circuitBreaker.window"]
    assert result.config.rules[0].backend_refs[0].backend.resilience.sources == ("default/second",)
    _, merged, kept = keep_running_objects(
        Snapshot.of(new, "test"), result, Snapshot.of(running, "test"), compile_files
    )
    assert kept == ["BackendTrafficPolicy default/first"]
    assert merged.config.rules[0].backend_refs[0].backend.resilience.sources == ("default/first",)


def sampling(numerator: int, denominator: int | None = None) -> dict[str, Any]:
    """A policy's telemetry section with that samplingFraction (denominator left out: None)."""
    fraction: dict[str, int] = {"numerator": numerator}
    if denominator is not None:
        fraction["denominator"] = denominator
    return {"tracing": {"samplingFraction": fraction}}


def trace_samples(result: Any, route_name: str) -> list[float | None]:
    """The trace_sample of each compiled rule of HTTPRoute default/`route_name`, in rule order."""
    rules = sorted((r for r in result.config.rules if r.route == f"default/{route_name}"), key=lambda r: r.index)
    assert rules, f"no rules of {route_name}"
    return [r.trace_sample for r in rules]


class TestTracing:
    """telemetry.tracing.samplingFraction: per route rule, from its section, its HTTPRoute or its Gateway."""

    def test_the_documented_example_parses_to_its_fraction(self) -> None:
        doc = backend_policy.__doc__ or ""
        start = doc.index("    apiVersion:", doc.index("Tracing is per route rule"))
        example = textwrap.dedent(doc[start : doc.index("\n\n", start)])
        resources, errors = parse_documents([("doc", yaml.safe_load(example))])
        assert errors == []
        (p,) = resources.backend_traffic_policies
        assert [(t.kind, t.name, t.section_name) for t in p.targets] == [("HTTPRoute", "shop", "checkout")]
        assert p.tracing == Tracing(1, 10) and p.tracing.ratio == 0.1
        assert (p.circuit_breaker, p.retry_budget, p.load_balancer) == (None, None, None)

    def test_the_readme_example_parses(self) -> None:
        readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
        section = readme.split("### Tracing per route", 1)[1]
        block = section.split("```yaml", 1)[1].split("```", 1)[0]
        resources, errors = parse_documents([("README", yaml.safe_load(block))])
        assert errors == []
        (p,) = resources.backend_traffic_policies
        assert p.tracing is not None

    def test_the_denominator_is_100_when_left_out(self) -> None:
        resources, errors = parse_documents([policy("p", [on("HTTPRoute", "api")], telemetry=sampling(5))])
        assert errors == []
        assert resources.backend_traffic_policies[0].tracing == Tracing(5, 100)

    def test_telemetry_without_tracing_sets_nothing(self) -> None:
        resources, errors = parse_documents([policy("p", [on("HTTPRoute", "api")], telemetry={}, retry={})])
        assert errors == [] and resources.backend_traffic_policies[0].tracing is None

    @pytest.mark.parametrize(
        ("telemetry", "field"),
        [
            (sampling(3, 2), "spec.telemetry.tracing.samplingFraction.numerator"),
            (sampling(-1), "spec.telemetry.tracing.samplingFraction.numerator"),
            (sampling(1, 0), "spec.telemetry.tracing.samplingFraction.denominator"),
            (
                {"tracing": {"samplingFraction": {"denominator": 10}}},
                "spec.telemetry.tracing.samplingFraction.numerator",
            ),
            (
                {"tracing": {"samplingFraction": {"numerator": "1"}}},
                "spec.telemetry.tracing.samplingFraction.numerator",
            ),
            ({"tracing": {"samplingFraction": 0.5}}, "spec.telemetry.tracing.samplingFraction"),
            (
                {"tracing": {"samplingFraction": {"numerator": 1, "of": 2}}},
                "spec.telemetry.tracing.samplingFraction.of",
            ),
            ({"tracing": {}}, "spec.telemetry.tracing.samplingFraction"),
            ({"tracing": {"samplingRate": 50}}, "spec.telemetry.tracing.samplingRate"),
            ({"tracing": {**sampling(1)["tracing"], "customTags": {"a": {}}}}, "spec.telemetry.tracing.customTags"),
            ({"tracing": {**sampling(1)["tracing"], "tags": {"a": "b"}}}, "spec.telemetry.tracing.tags"),
            ({"tracing": {**sampling(1)["tracing"], "spanName": {}}}, "spec.telemetry.tracing.spanName"),
            (
                {"tracing": {**sampling(1)["tracing"], "clientSamplingFraction": {"numerator": 1}}},
                "spec.telemetry.tracing.clientSamplingFraction",
            ),
            (
                {"tracing": {**sampling(1)["tracing"], "overallSamplingFraction": {"numerator": 1}}},
                "spec.telemetry.tracing.overallSamplingFraction",
            ),
            ({"tracing": {**sampling(1)["tracing"], "sampling": 1}}, "spec.telemetry.tracing.sampling"),
            ({"tracing": [1]}, "spec.telemetry.tracing"),
            ({**sampling(1), "metrics": {"routeStatName": "x"}}, "spec.telemetry.metrics"),
            ({"traces": {}}, "spec.telemetry.traces"),
        ],
        ids=lambda value: value if isinstance(value, str) else None,
    )
    def test_a_bad_field_is_named_and_the_policy_refused_whole(self, telemetry: Any, field: str) -> None:
        good = policy("good", [on("HTTPRoute", "api")], telemetry=sampling(1))
        bad = policy("p", [on("HTTPRoute", "api")], telemetry=telemetry)
        resources, errors = parse_documents([("p.yaml", bad), ("good.yaml", good)])
        assert [(e.file, e.obj, e.field) for e in errors] == [("p.yaml", "BackendTrafficPolicy default/p", field)]
        assert [p.meta.name for p in resources.backend_traffic_policies] == ["good"]

    def test_sampling_rate_is_named_as_envoy_proxys_with_what_to_write(self) -> None:
        _, errors = parse_documents([policy("p", [on("HTTPRoute", "api")], telemetry={"tracing": {"samplingRate": 5}})])
        (e,) = errors
        assert "EnvoyProxy's field" in e.message and "samplingFraction" in e.message

    @pytest.mark.parametrize("target", [on("Service", "orders"), on("Backend", "app")], ids=["Service", "Backend"])
    def test_a_policy_with_tracing_that_targets_a_backend_is_refused(self, target: dict[str, Any]) -> None:
        doc = policy("p", [on("HTTPRoute", "api"), target], telemetry=sampling(1), retry={})
        resources, errors = parse_documents([("p.yaml", doc)])
        assert [(e.file, e.obj, e.field) for e in errors] == [
            ("p.yaml", "BackendTrafficPolicy default/p", "spec.telemetry.tracing")
        ]
        assert f"not targetRefs[1] ({target['kind']} {target['name']})" in errors[0].message
        assert resources.backend_traffic_policies == []

    def test_the_rules_section_wins_over_its_route_which_wins_over_its_gateway(self) -> None:
        result = compiled(
            route("api", [APP_REF], [APP_REF], [SERVICE_REF], rule_names=("a", "b", "c")),
            route("other", [APP_REF]),
            policy("gw-wide", [on("Gateway", "edge")], telemetry=sampling(1, 4)),
            policy("per-route", [on("HTTPRoute", "api")], telemetry=sampling(1, 2)),
            policy("per-rule", [on("HTTPRoute", "api", "b")], telemetry=sampling(0)),
        )
        assert result.errors == []
        assert trace_samples(result, "api") == [0.5, 0.0, 0.5]
        assert trace_samples(result, "other") == [0.25]
        assert conditions(result, "per-rule") == [
            "Accepted=True (Accepted): tracing for HTTPRoute default/api rule 'b'"
        ]
        assert conditions(result, "per-route") == [
            "Accepted=True (Accepted): tracing for HTTPRoute default/api rule 'a', HTTPRoute default/api rule 'b', "
            "HTTPRoute default/api rule 'c'"
        ]

    def test_a_rule_no_policy_reaches_keeps_gw_trace_sample(self) -> None:
        result = compiled(
            route("api", [APP_REF]), route("other", [APP_REF]),
            policy("p", [on("HTTPRoute", "api")], telemetry=sampling(1, 1)),
        )  # fmt: skip
        assert trace_samples(result, "api") == [1.0]
        assert trace_samples(result, "other") == [None]

    def test_a_rule_without_backends_takes_it_too(self) -> None:
        redirect = route("moved", [])
        redirect["spec"]["rules"][0]["filters"] = [
            {"type": "RequestRedirect", "requestRedirect": {"hostname": "elsewhere.test"}}
        ]
        result = compiled(redirect, policy("p", [on("HTTPRoute", "moved")], telemetry=sampling(1, 1)))
        assert result.errors == []
        assert trace_samples(result, "moved") == [1.0]
        assert conditions(result, "p") == ["Accepted=True (Accepted): tracing for HTTPRoute default/moved rule 0"]

    def test_tracing_and_backend_sections_in_one_policy_each_go_their_way(self) -> None:
        result = compiled(
            route("api", [APP_REF]),
            policy("p", [on("HTTPRoute", "api")], telemetry=sampling(1, 1), circuitBreaker=BREAKER),
        )
        assert trace_samples(result, "api") == [1.0]
        r = resilience(result, APP)
        assert r is not None and r.circuit_breaker == CircuitBreaker(failure_ratio=0.5)
        assert conditions(result, "p") == [
            "Accepted=True (Accepted): attached to Backend default/app; tracing for HTTPRoute default/api rule 0"
        ]

    def test_two_policies_on_one_route_conflict_and_the_oldest_wins(self) -> None:
        result = compiled(
            route("api", [APP_REF]),
            policy("newer", [on("HTTPRoute", "api")], "2026-02-01T00:00:00Z", telemetry=sampling(1, 1)),
            policy("older", [on("HTTPRoute", "api")], "2026-01-01T00:00:00Z", telemetry=sampling(0)),
        )
        assert trace_samples(result, "api") == [0.0]
        assert result.errors == []
        assert conditions(result, "newer") == [
            "Accepted=False (Conflicted): tracing for HTTPRoute default/api rule 0; nothing takes a section from "
            "it (see Conflicted)",
            "Conflicted=True (Conflicted): BackendTrafficPolicy default/older wins telemetry.tracing for "
            "HTTPRoute default/api rule 0 (at the same precedence level the oldest policy wins, then by "
            "namespace/name)",
        ]

    def test_a_target_that_reaches_no_rule_is_not_found(self) -> None:
        result = compiled(route("api", [APP_REF]), policy("p", [on("HTTPRoute", "gone")], telemetry=sampling(1)))
        assert [(e.obj, e.field) for e in result.errors] == [("BackendTrafficPolicy default/p", "spec.targetRefs[0]")]
        assert "HTTPRoute default/gone reaches no route rule served by this gw" in result.errors[0].message
        assert conditions(result, "p") == ["Accepted=False (TargetNotFound): not found: HTTPRoute default/gone"]
        assert trace_samples(result, "api") == [None]

    def test_gw_routes_shows_a_rules_own_share(self) -> None:
        from gw.config.describe import describe_rule

        result = compiled(
            route("api", [APP_REF]), route("other", [APP_REF]),
            policy("p", [on("HTTPRoute", "api")], telemetry=sampling(1, 10)),
        )  # fmt: skip
        api, other = (next(r for r in result.config.rules if r.route == f"default/{n}") for n in ("api", "other"))
        assert describe_rule(api).endswith("(trace-sample=0.1)")
        assert "trace-sample" not in describe_rule(other)
