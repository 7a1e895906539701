"""Gateway API status conditions for every object, and the status document the admin endpoint serves."""

from __future__ import annotations

import json
import textwrap

import pytest

from gw.config import ConfigError, load_text, status_document
from gw.config.filters import ALL_FEATURES

BASE = """
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: gw}
spec: {controllerName: gw.dev/gateway-controller}
---
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: other}
spec: {controllerName: example.net/else}
---
apiVersion: gw.dev/v1alpha1
kind: Backend
metadata: {name: one, namespace: default}
spec: {endpoints: [{address: 127.0.0.1, port: 18081}]}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: gw, namespace: default}
spec:
  gatewayClassName: gw
  listeners:
  - {name: http, port: 8080, protocol: HTTP, hostname: "*.example.com"}
  - {name: dup, port: 8080, protocol: HTTP, hostname: "*.example.com"}
  - {name: udp, port: 9000, protocol: UDP}
  - name: kinds
    port: 8081
    protocol: HTTP
    allowedRoutes: {kinds: [{kind: TCPRoute}]}
"""


def route(name: str, body: str) -> str:
    return (
        f"apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: {name}, namespace: default}}\n"
        "spec:\n" + textwrap.indent(textwrap.dedent(body).strip(), "  ") + "\n"
    )


GOOD = route(
    "good",
    """
    parentRefs: [{name: gw, sectionName: http}]
    hostnames: [a.example.com]
    rules: [{backendRefs: [{group: gw.dev, kind: Backend, name: one}]}]
    """,
)


def load(*docs: str, **options):
    return load_text(BASE + "".join(f"\n---\n{d}" for d in docs), features=ALL_FEATURES, **options)


def conds(items) -> set[tuple[str, str, str]]:
    return {(c["type"], c["status"], c["reason"]) for c in items}


@pytest.fixture
def doc():
    return status_document(load(GOOD))


class TestGatewayStatus:
    def test_only_our_gateway_class_is_accepted(self, doc):
        (gc,) = doc["gatewayClasses"]
        assert gc["name"] == "gw"
        assert conds(gc["conditions"]) == {("Accepted", "True", "Accepted")}

    def test_gateway_with_invalid_listeners_is_accepted_with_listeners_not_valid(self, doc):
        (gw,) = doc["gateways"]
        assert conds(gw["conditions"]) == {
            ("Accepted", "True", "ListenersNotValid"),
            ("Programmed", "True", "Programmed"),
        }

    def test_listener_conditions(self, doc):
        listeners = {li["name"]: li for li in doc["gateways"][0]["listeners"]}
        assert conds(listeners["http"]["conditions"]) == {
            ("Accepted", "True", "Accepted"),
            ("Conflicted", "False", "NoConflicts"),
            ("ResolvedRefs", "True", "ResolvedRefs"),
            ("Programmed", "True", "Programmed"),
        }
        assert listeners["http"]["attachedRoutes"] == 1
        assert ("Conflicted", "True", "HostnameConflict") in conds(listeners["dup"]["conditions"])
        assert ("Programmed", "False", "Invalid") in conds(listeners["dup"]["conditions"])
        assert ("Accepted", "False", "UnsupportedProtocol") in conds(listeners["udp"]["conditions"])
        assert ("ResolvedRefs", "False", "InvalidRouteKinds") in conds(listeners["kinds"]["conditions"])
        assert listeners["kinds"]["supportedKinds"] == []
        assert listeners["http"]["supportedKinds"] == [{"group": "gateway.networking.k8s.io", "kind": "HTTPRoute"}]

    def test_protocol_conflict(self):
        https = '{name: dup, port: 8080, protocol: HTTPS, tls: {certificateRefs: [{name: x}]}}'
        text = BASE.replace('{name: dup, port: 8080, protocol: HTTP, hostname: "*.example.com"}', https)
        result = load_text(text, features=ALL_FEATURES)
        listener = {(c.type, c.status, c.reason) for c in result.listener_conditions["default/gw/dup"]}
        assert ("Conflicted", True, "ProtocolConflict") in listener

    def test_the_document_is_json(self, doc):
        assert json.loads(json.dumps(doc)) == doc


class TestRouteStatus:
    def test_accepted_route_has_conditions_per_parent(self, doc):
        (r,) = doc["httpRoutes"]
        (parent,) = r["parents"]
        assert parent["parentRef"] == {
            "group": "gateway.networking.k8s.io",
            "kind": "Gateway",
            "namespace": "default",
            "name": "gw",
            "sectionName": "http",
        }
        assert parent["controllerName"] == "gw.dev/gateway-controller"
        assert conds(parent["conditions"]) == {
            ("Accepted", "True", "Accepted"),
            ("ResolvedRefs", "True", "ResolvedRefs"),
        }

    @pytest.mark.parametrize(
        ("body", "reason"),
        [
            ("parentRefs: [{name: gw, sectionName: nope}]", "NoMatchingParent"),
            ("parentRefs: [{name: gw, sectionName: http}]\nhostnames: [a.example.org]", "NoMatchingListenerHostname"),
        ],
    )
    def test_not_accepted_reasons(self, body, reason):
        rules = "\nrules: [{backendRefs: [{group: gw.dev, kind: Backend, name: one}]}]"
        doc = status_document(load(GOOD, route("bad", body + rules)))
        bad = next(r for r in doc["httpRoutes"] if r["name"] == "bad")
        (parent,) = bad["parents"]
        assert ("Accepted", "False", reason) in conds(parent["conditions"])

    def test_not_allowed_by_listeners(self):
        other = route(
            "x",
            """
            parentRefs: [{name: gw, namespace: default}]
            rules: [{backendRefs: [{group: gw.dev, kind: Backend, name: one}]}]
            """,
        ).replace("namespace: default}", "namespace: team}", 1)
        doc = status_document(load(GOOD, other))
        bad = next(r for r in doc["httpRoutes"] if r["name"] == "x")
        assert ("Accepted", "False", "NotAllowedByListeners") in conds(bad["parents"][0]["conditions"])

    @pytest.mark.parametrize(
        ("ref", "reason"),
        [
            ("{group: gw.dev, kind: Backend, name: nope}", "BackendNotFound"),
            ("{group: example.net, kind: Bucket, name: b}", "InvalidKind"),
            ("{group: gw.dev, kind: Backend, name: one, namespace: elsewhere}", "RefNotPermitted"),
        ],
    )
    def test_resolved_refs_reasons(self, ref, reason):
        bad = route("bad", f"parentRefs: [{{name: gw, sectionName: http}}]\nrules: [{{backendRefs: [{ref}]}}]")
        doc = status_document(load(GOOD, bad))
        r = next(r for r in doc["httpRoutes"] if r["name"] == "bad")
        assert ("ResolvedRefs", "False", reason) in conds(r["parents"][0]["conditions"])
        # still accepted: the rule answers 500, other routes are unaffected
        assert ("Accepted", "True", "Accepted") in conds(r["parents"][0]["conditions"])

    def test_partially_invalid_route(self):
        body = """
        parentRefs: [{name: gw, sectionName: http}]
        rules:
        - backendRefs: [{group: gw.dev, kind: Backend, name: one}]
        - backendRefs: [{group: gw.dev, kind: Backend, name: one}]
          filters: [{type: RequestRedirect, requestRedirect: {statusCode: 301}}]
        """
        result = load(route("half", body))
        c = {(c.type, c.status, c.reason) for c in result.conditions["HTTPRoute default/half"]}
        assert ("PartiallyInvalid", True, "UnsupportedValue") in c

    def test_routes_of_other_gateways_are_not_reported(self):
        rules = "rules: [{backendRefs: [{group: gw.dev, kind: Backend, name: one}]}]"
        other = route("theirs", "parentRefs: [{name: theirs}]\n" + rules)
        doc = status_document(load(GOOD, other))
        assert [r["name"] for r in doc["httpRoutes"]] == ["good"]

    def test_errors_are_listed_with_file_object_and_field(self, doc):
        fields = {(e["object"], e["field"]) for e in doc["errors"]}
        assert ("Gateway default/gw", "spec.listeners[1].hostname") in fields


class TestGatewaySelection:
    def test_gateway_option_serves_only_that_gateway(self):
        second = textwrap.dedent(
            """
            apiVersion: gateway.networking.k8s.io/v1
            kind: Gateway
            metadata: {name: gw2, namespace: default}
            spec:
              gatewayClassName: gw
              listeners: [{name: http, port: 7070, protocol: HTTP}]
            """
        )
        result = load(GOOD, second, gateway="default/gw2")
        assert [p.declared_port for p in result.config.ports] == [7070]
        doc = status_document(result)
        assert [g["name"] for g in doc["gateways"]] == ["gw2"]

    def test_controller_name_selects_the_class(self):
        with pytest.raises(ConfigError, match=r"example\.net/else"):
            load(GOOD, controller_name="example.net/else")
