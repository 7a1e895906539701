"""The config pipeline: reading files, parsing, validation errors naming file/object/field, compiling."""

from __future__ import annotations

import contextlib
import textwrap
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gw.config import ConfigError, compile_resources, describe, load_config, load_text, parse_documents, status_document
from gw.config.units import parse_duration, parse_quantity

HEAD = """
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: gw}
spec: {controllerName: gw.dev/gateway-controller}
---
apiVersion: gw.dev/v1alpha1
kind: Backend
metadata: {name: one, namespace: default}
spec:
  endpoints: [{address: 127.0.0.1, port: 18081}]
---
apiVersion: gw.dev/v1alpha1
kind: Backend
metadata: {name: two, namespace: default}
spec:
  endpoints: [{address: 127.0.0.1, port: 18082}]
"""

GATEWAY = """
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: gw, namespace: default}
spec:
  gatewayClassName: gw
  listeners:
  - {name: http, port: 8080, protocol: HTTP}
"""


def config(*docs: str, gateway: str = GATEWAY, **options):
    text = HEAD + gateway + "".join("\n---\n" + textwrap.dedent(d) for d in docs)
    return load_text(text, **options)


def route(name: str = "r", body: str = "", namespace: str = "default", annotations: str = "") -> str:
    meta = f"{{name: {name}, namespace: {namespace}{annotations}}}"
    return f"apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {meta}\nspec:\n" + textwrap.indent(
        textwrap.dedent(body), "  "
    )


ONE = "{group: gw.dev, kind: Backend, name: one}"
TWO = "{group: gw.dev, kind: Backend, name: two}"


def static_backend(name: str, namespace: str = "default", address: str = "10.0.0.1") -> str:
    return (
        f"apiVersion: gw.dev/v1alpha1\nkind: Backend\nmetadata: {{name: {name}, namespace: {namespace}}}\n"
        f"spec: {{endpoints: [{{address: '{address}', port: 80}}]}}\n"
    )


SIMPLE_RULES = """
parentRefs: [{name: gw}]
rules:
- backendRefs: [{group: gw.dev, kind: Backend, name: one}]
"""


def match(result, path: str = "/", host: str = "example.com", port: int = 8080, method: bytes = b"GET"):
    return result.config.port(port).table.match(host, path, method, [], b"")


def messages(result) -> list[str]:
    return [str(e) for e in result.errors]


# --- reading ---------------------------------------------------------------------------------------


class TestReading:
    def test_loads_the_demo_config_without_errors(self):
        result = load_config(str(Path(__file__).parent.parent / "gw" / "examples" / "demo.yaml"))
        assert result.errors == []
        assert [p.declared_port for p in result.config.ports] == [8080]
        assert match(result, "/echo/x").route == "default/api"

    def test_loads_the_k8s_manifests_without_errors(self):
        # k8s/ whole: the base's Gateway, the demo app's routes, and what gw does not read (kustomize
        # files, Deployments, CRDs) skipped without a word.
        result = load_config(str(Path(__file__).parent.parent / "k8s"))
        assert result.errors == []
        assert result.attached_routes == {"gw-system/public/http": 2}
        canary = match(result, "/api/x", port=80)
        # No hand-written EndpointSlices: in a cluster Kubernetes writes them from the pods, and
        # outside one there is nothing to send requests to.
        assert [len(ref.backend.endpoints) for ref in canary.backend_refs] == [0, 0]

    def test_directory_is_read_recursively_in_sorted_order(self, tmp_path):
        (tmp_path / "sub").mkdir()
        (tmp_path / "a.yaml").write_text(HEAD)
        (tmp_path / "sub" / "b.yml").write_text(GATEWAY)
        (tmp_path / "sub" / "c.yaml").write_text(route(body=SIMPLE_RULES))
        (tmp_path / "notes.txt").write_text("not: [yaml")
        result = load_config(str(tmp_path))
        assert result.errors == []
        assert match(result).route == "default/r"

    def test_list_kind_items_are_read(self):
        docs = [
            {"apiVersion": "v1", "kind": "List", "items": [
                {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "GatewayClass",
                 "metadata": {"name": "gw"}, "spec": {"controllerName": "gw.dev/gateway-controller"}},
                {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
                 "metadata": {"name": "gw"},
                 "spec": {"gatewayClassName": "gw", "listeners": [{"name": "h", "port": 80, "protocol": "HTTP"}]}},
            ]},
        ]  # fmt: skip
        resources, errors = parse_documents(docs)
        assert errors == []
        assert [g.meta.name for g in resources.gateways] == ["gw"]

    def test_missing_file_raises(self, tmp_path):
        with pytest.raises(ConfigError, match="no such file"):
            load_config(str(tmp_path / "nope.yaml"))

    def test_yaml_syntax_error_raises_with_file_and_line(self, tmp_path):
        file = tmp_path / "bad.yaml"
        file.write_text("kind: Gateway\nmetadata: {name: [oops\n")
        with pytest.raises(ConfigError) as info:
            load_config(str(file))
        assert info.value.file == str(file)
        assert "line" in str(info.value)

    def test_no_served_gateway_raises(self):
        with pytest.raises(ConfigError, match="no Gateway to serve"):
            load_text(HEAD)

    def test_gateway_of_another_controller_is_not_served(self):
        with pytest.raises(ConfigError, match="no Gateway to serve"):
            config(controller_name="example.com/other")

    def test_unknown_kinds_are_ignored(self):
        result = config("apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x}\n", route(body=SIMPLE_RULES))
        assert result.errors == []
        assert result.resources.ignored == ["Deployment default/x"]

    def test_same_kind_of_another_api_group_is_not_ours(self):
        other = "apiVersion: gateway.envoyproxy.io/v1alpha1\nkind: Backend\nmetadata: {name: one}\nspec: {}\n"
        result = config(other, route(body=SIMPLE_RULES))
        assert result.errors == []

    def test_checksum_changes_with_content(self, tmp_path):
        file = tmp_path / "c.yaml"
        file.write_text(HEAD + GATEWAY)
        first = load_config(str(file)).config.checksum
        file.write_text(HEAD + GATEWAY + "\n# comment\n")
        assert load_config(str(file)).config.checksum != first


# --- errors name file, object and field --------------------------------------------------------------


class TestErrorMessages:
    def test_error_renders_file_object_field_message(self):
        err = ConfigError("a.yaml", "HTTPRoute ns/r", "spec.rules[0].backendRefs[1].name", "is required")
        assert str(err) == "a.yaml: HTTPRoute ns/r: spec.rules[0].backendRefs[1].name: is required"

    def test_errors_in_files_name_the_file(self, tmp_path):
        (tmp_path / "a.yaml").write_text(HEAD + GATEWAY)
        bad = route(body="parentRefs: [{name: gw}]\nrules:\n- matches: [{path: {type: Bogus, value: /}}]\n")
        (tmp_path / "b.yaml").write_text(bad)
        result = load_config(str(tmp_path))
        (err,) = result.errors
        assert err.file == str(tmp_path / "b.yaml")
        assert err.obj == "HTTPRoute default/r"
        assert err.field == "spec.rules[0].matches[0].path.type"

    def test_missing_backend_ref_name(self):
        result = config(
            route(body="parentRefs: [{name: gw}]\nrules:\n- backendRefs: [{kind: Backend, group: gw.dev}]\n")
        )
        assert "<memory>: HTTPRoute default/r: spec.rules[0].backendRefs[0].name: is required" in messages(result)

    def test_service_ref_without_port(self):
        result = config(route(body="parentRefs: [{name: gw}]\nrules:\n- backendRefs: [{name: svc}]\n"))
        assert any(e.field == "spec.rules[0].backendRefs[0].port" for e in result.errors)
        assert match(result) is None  # the invalid rule is dropped: the route has nothing to serve
        accepted = [c for c in result.conditions["HTTPRoute default/r"] if c.type == "Accepted"]
        assert [(c.status, c.reason) for c in accepted] == [(False, "UnsupportedValue")]
        assert "Dropped Rule 0: spec.rules[0].backendRefs[0].port: is required" in accepted[0].message

    def test_an_invalid_rule_is_dropped_and_the_others_served(self):
        body = """
        parentRefs: [{name: gw}]
        rules:
        - {name: good, matches: [{path: {value: /good}}], backendRefs: [{name: svc, port: 80}]}
        - name: bad
          matches: [{path: {value: /bad}}]
          backendRefs: [{name: svc, port: 80}]
          filters: [{type: RequestRedirect, requestRedirect: {statusCode: 399}}]
        """
        fallback = "parentRefs: [{name: gw}]\nrules: [{backendRefs: [{name: svc, port: 80}]}]\n"
        result = config(route(body=body), route("fallback", fallback))
        assert match(result, "/good").route == "default/r"
        # The spec's "Dropped Rule" approach: a request for the dropped rule matches what else does.
        assert match(result, "/bad").route == "default/fallback"
        (partial,) = [c for c in result.conditions["HTTPRoute default/r"] if c.type == "PartiallyInvalid"]
        assert partial.status and partial.reason == "UnsupportedValue"
        assert partial.message.startswith("Dropped Rule 1 (bad): spec.rules[1].filters[0].requestRedirect.statusCode")
        accepted = [c for c in result.conditions["HTTPRoute default/r"] if c.type == "Accepted"]
        assert [(c.status, c.reason) for c in accepted] == [(True, "Accepted")]

    def test_rule_names_are_unique_within_a_route(self):
        body = """
        parentRefs: [{name: gw}]
        rules:
        - {name: same, matches: [{path: {value: /a}}], backendRefs: [{name: svc, port: 80}]}
        - {name: same, matches: [{path: {value: /b}}], backendRefs: [{name: svc, port: 80}]}
        """
        result = config(route(body=body))
        assert any(e.field == "spec.rules[1].name" and "unique" in e.message for e in result.errors)
        assert match(result, "/a") is None  # the API server would refuse the object: so does gw

    def test_the_api_servers_limits_on_rules_and_matches(self):
        rule = "- {{matches: [{{path: {{value: /r{}}}}}], backendRefs: [{{name: svc, port: 80}}]}}\n"
        rules = "".join(rule.format(i) for i in range(17))
        result = config(route(body="parentRefs: [{name: gw}]\nrules:\n" + rules))
        assert any(e.field == "spec.rules" and "at most 16" in e.message for e in result.errors)
        assert match(result, "/r0") is None

    @pytest.mark.parametrize(
        ("value", "problem"),
        [
            ("abc", "must start with '/'"),
            ("/a//b", "must not contain '//'"),
            ("/a/../b", "must not contain '/../'"),
            ("/a%2fb", "must not contain '%2f'"),
            ("/a/.", "must not end with"),
            ("/a#b", "must not contain '#'"),
            ("/a/%2e%2e/b", "encoded dot segment (it would match '/b')"),
            ("/a/%2E", "encoded dot segment (it would match '/a/')"),
            ("/a%00", "would never match: gw answers 400 to requests with an encoded NUL"),
            ("/a/..;x/b", "would never match"),
            ("/a%5c..", "would never match"),
        ],
    )
    def test_invalid_path_values(self, value, problem):
        body = f"parentRefs: [{{name: gw}}]\nrules:\n- matches: [{{path: {{type: PathPrefix, value: '{value}'}}}}]\n"
        result = config(route(body=body))
        (err,) = result.errors
        assert err.field == "spec.rules[0].matches[0].path.value"
        assert problem in err.message

    @pytest.mark.parametrize("path_type", ["Exact", "PathPrefix"])
    def test_path_values_are_kept_in_the_normal_form_requests_are_matched_in(self, path_type):
        body = "parentRefs: [{name: gw}]\nrules:\n"
        body += f"- matches: [{{path: {{type: {path_type}, value: '/%7eteam/caf%c3%a9'}}}}]\n  backendRefs: [{ONE}]\n"
        result = config(route(body=body))
        assert not result.errors
        assert match(result, "/~team/caf%C3%A9") is not None
        assert f"{path_type} /~team/caf%C3%A9 " in "\n".join(describe(result.config))  # what `gw routes` shows

    def test_invalid_regex(self):
        body = "parentRefs: [{name: gw}]\nrules:\n- matches: [{path: {type: RegularExpression, value: '/(('}}]\n"
        (err,) = config(route(body=body)).errors
        assert "invalid regular expression" in err.message

    @pytest.mark.parametrize("hostname", ["Example.com", "*", "1.2.3.4", "foo.*.com", "-a.com", "a_b.com", "*.*.com"])
    def test_invalid_route_hostnames_reject_the_route(self, hostname):
        result = config(route(body=f"hostnames: ['{hostname}']\n" + SIMPLE_RULES))
        (err,) = result.errors
        assert err.field == "spec.hostnames[0]"
        assert match(result) is None

    def test_unknown_method(self):
        body = f"parentRefs: [{{name: gw}}]\nrules:\n- matches: [{{method: FETCH}}]\n  backendRefs: [{ONE}]\n"
        (err,) = config(route(body=body)).errors
        assert err.field == "spec.rules[0].matches[0].method"

    def test_invalid_header_name(self):
        body = "parentRefs: [{name: gw}]\nrules:\n- matches: [{headers: [{name: 'a b', value: x}]}]\n"
        (err,) = config(route(body=body)).errors
        assert err.field == "spec.rules[0].matches[0].headers[0].name"

    def test_wrong_types_are_named(self):
        body = SIMPLE_RULES.replace("name: one}", "name: one, weight: heavy}")
        (err,) = config(route(body=body)).errors
        assert err.field == "spec.rules[0].backendRefs[0].weight"
        assert "must be an integer" in err.message

    def test_weight_out_of_range(self):
        body = (
            "parentRefs: [{name: gw}]\nrules:\n- backendRefs: [{group: gw.dev, kind: Backend, name: one, weight: -1}]\n"
        )
        (err,) = config(route(body=body)).errors
        assert "out of range" in err.message

    def test_missing_metadata_name(self):
        result = config("apiVersion: gw.dev/v1alpha1\nkind: Backend\nmetadata: {}\nspec: {}\n")
        (err,) = result.errors
        assert err.field == "metadata.name"

    def test_duplicate_objects_are_reported(self):
        result = config(route(body=SIMPLE_RULES), route(body=SIMPLE_RULES))
        (err,) = result.errors
        assert err.obj == "HTTPRoute default/r"
        assert "more than once: this copy is ignored, the one in <memory> is served" in err.message

    def test_bad_max_body_size_annotation(self):
        result = config(route(body=SIMPLE_RULES, annotations=", annotations: {gw.dev/max-body-size: lots}"))
        (err,) = result.errors
        assert err.field == "metadata.annotations[gw.dev/max-body-size]"

    def test_filters_the_data_plane_does_not_apply_make_the_rule_answer_500(self):
        body = SIMPLE_RULES + "  filters: [{type: RequestHeaderModifier, requestHeaderModifier: {remove: [x]}}]\n"
        result = config(route(body=body), features=frozenset())
        (err,) = result.errors
        assert err.field == "spec.rules[0]"
        assert "RequestHeaderModifier" in match(result).invalid_reason

    def test_backend_request_timeout_longer_than_request_timeout(self):
        body = SIMPLE_RULES + "  timeouts: {request: 1s, backendRequest: 2s}\n"
        (err,) = config(route(body=body)).errors
        assert err.field == "spec.rules[0].timeouts.backendRequest"

    def test_bad_duration(self):
        body = SIMPLE_RULES + "  timeouts: {request: 1.5s}\n"
        (err,) = config(route(body=body)).errors
        assert err.field == "spec.rules[0].timeouts.request"

    def test_backend_endpoint_errors_reject_the_backend(self):
        bad = static_backend("bad", address="not an address")
        body = "parentRefs: [{name: gw}]\nrules:\n- backendRefs: [{group: gw.dev, kind: Backend, name: bad}]\n"
        result = config(bad, route(body=body))
        fields = {(e.obj, e.field) for e in result.errors}
        assert ("Backend default/bad", "spec.endpoints[0].address") in fields
        assert ("HTTPRoute default/r", "spec.rules[0].backendRefs[0]") in fields


# --- gateways and listeners --------------------------------------------------------------------------


def gateway(listeners: str, name: str = "gw", namespace: str = "default") -> str:
    return f"""
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: {name}, namespace: {namespace}}}
spec:
  gatewayClassName: gw
  listeners:
{textwrap.indent(textwrap.dedent(listeners), "  ")}
"""


class TestListeners:
    def test_unsupported_protocol_rejects_only_that_listener(self):
        result = config(
            route(body=SIMPLE_RULES),
            gateway=gateway("- {name: http, port: 8080, protocol: HTTP}\n- {name: udp, port: 8443, protocol: UDP}\n"),
        )
        (err,) = result.errors
        assert (err.obj, err.field) == ("Gateway default/gw", "spec.listeners[1].protocol")
        assert "not supported" in err.message
        assert [p.declared_port for p in result.config.ports] == [8080]

    def test_no_servable_listener_raises(self):
        with pytest.raises(ConfigError, match="no listener can be served"):
            config(gateway=gateway("- {name: tcp, port: 9000, protocol: TCP}\n"))

    def test_port_offset_shifts_bind_port_only(self):
        result = config(route(body=SIMPLE_RULES), port_offset=10000)
        (port,) = result.config.ports
        assert (port.declared_port, port.bind_port) == (8080, 18080)
        assert result.config.port(18080) is port

    def test_duplicate_listener_names(self):
        result = config(
            gateway=gateway("- {name: a, port: 80, protocol: HTTP}\n- {name: a, port: 81, protocol: HTTP}\n")
        )
        (err,) = result.errors
        assert err.field == "spec.listeners[1].name"
        assert [p.declared_port for p in result.config.ports] == [80]  # the first is served
        (gw,) = status_document(result)["gateways"]
        assert [li["name"] for li in gw["listeners"]] == ["a"]  # as the API would show it: once

    def test_same_port_same_hostname_conflicts(self):
        listeners = (
            "- {name: a, port: 80, protocol: HTTP, hostname: a.com}\n"
            "- {name: b, port: 80, protocol: HTTP, hostname: a.com}\n"
        )
        (err,) = config(gateway=gateway(listeners)).errors
        assert err.field == "spec.listeners[1].hostname"

    def test_listeners_sharing_a_port_make_one_port_config(self):
        listeners = (
            "- {name: a, port: 80, protocol: HTTP, hostname: a.com}\n"
            "- {name: b, port: 80, protocol: HTTP, hostname: '*.b.com'}\n"
            "- {name: c, port: 81, protocol: HTTP}\n"
        )
        routes = [
            route(
                "ra",
                f"parentRefs: [{{name: gw, sectionName: a}}]\nrules:\n- backendRefs: [{ONE}]\n",
            ),
            route(
                "rb",
                f"parentRefs: [{{name: gw, sectionName: b}}]\nrules:\n- backendRefs: [{TWO}]\n",
            ),
        ]
        result = config(*routes, gateway=gateway(listeners))
        assert result.errors == []
        assert [(p.declared_port, p.listeners) for p in result.config.ports] == [
            (80, ("default/gw/a", "default/gw/b")),
            (81, ("default/gw/c",)),
        ]
        assert match(result, host="a.com", port=80).route == "default/ra"
        assert match(result, host="x.b.com", port=80).route == "default/rb"
        assert match(result, host="other.com", port=80) is None
        assert match(result, host="a.com", port=81) is None

    def test_two_gateways_on_one_port_is_an_error(self):
        gws = gateway("- {name: a, port: 80, protocol: HTTP}\n") + gateway(
            "- {name: a, port: 80, protocol: HTTP}\n", "other"
        )
        with pytest.raises(ConfigError, match="port 80 is also declared by Gateway default/gw"):
            config(gateway=gws)

    def test_in_a_port_conflict_the_newer_gateway_is_named_whatever_the_file_order(self):
        older = gateway("- {name: a, port: 80, protocol: HTTP}\n").replace(
            "namespace: default}", "namespace: default, creationTimestamp: '2026-01-01T00:00:00Z'}"
        )
        newer = gateway("- {name: a, port: 80, protocol: HTTP}\n", "aaa-newer").replace(
            "namespace: default}", "namespace: default, creationTimestamp: '2026-06-01T00:00:00Z'}"
        )
        assert "2026-01-01" in older and "2026-06-01" in newer
        with pytest.raises(ConfigError) as raised:
            config(gateway=newer + older)
        assert raised.value.obj == "Gateway default/aaa-newer", str(raised.value)
        assert "also declared by Gateway default/gw" in str(raised.value)

    def test_gateway_option_serves_one_gateway(self):
        gws = gateway("- {name: a, port: 80, protocol: HTTP}\n") + gateway(
            "- {name: a, port: 80, protocol: HTTP}\n", "other"
        )
        result = load_text(HEAD + gws, gateway="default/other")
        assert result.config.ports[0].listeners == ("default/other/a",)


# --- attachment ---------------------------------------------------------------------------------


class TestAttachment:
    def test_route_in_other_namespace_not_allowed_by_default(self):
        result = config(route(body="parentRefs: [{name: gw, namespace: default}]\nrules:\n- {}\n", namespace="team"))
        assert match(result) is None
        (cond,) = [c for c in result.conditions["HTTPRoute team/r"] if c.type == "Accepted"]
        assert (cond.status, cond.reason) == (False, "NotAllowedByListeners")

    def test_from_all_allows_other_namespaces(self):
        g = gateway("- {name: http, port: 8080, protocol: HTTP, allowedRoutes: {namespaces: {from: All}}}\n")
        result = config(
            route(
                body=(
                    "parentRefs: [{name: gw, namespace: default}]\n"
                    "rules:\n- backendRefs: [{group: gw.dev, kind: Backend, name: b}]"
                ),
                namespace="team",
            ),
            static_backend("b", "team"),
            gateway=g,
        )
        assert result.errors == []
        assert match(result).route == "team/r"

    def test_selector_uses_namespace_labels(self):
        g = gateway(
            "- name: http\n  port: 8080\n  protocol: HTTP\n"
            "  allowedRoutes: {namespaces: {from: Selector, selector: {matchLabels: {expose: 'yes'}}}}\n"
        )
        ns = "apiVersion: v1\nkind: Namespace\nmetadata: {name: team, labels: {expose: 'yes'}}\n"
        body = "parentRefs: [{name: gw, namespace: default}]\nrules:\n- {}\n"
        allowed = config(route("a", body, namespace="team"), ns, gateway=g)
        assert match(allowed).route == "team/a"
        refused = config(route("a", body, namespace="other"), ns, gateway=g)
        assert match(refused) is None

    def test_section_name_must_exist(self):
        result = config(route(body="parentRefs: [{name: gw, sectionName: nope}]\nrules:\n- {}\n"))
        (err,) = result.errors
        assert err.field == "spec.parentRefs[0]"
        assert "NoMatchingParent" in err.message

    def test_parent_port_selects_listeners(self):
        g = gateway("- {name: a, port: 80, protocol: HTTP}\n- {name: b, port: 81, protocol: HTTP}\n")
        result = config(route(body="parentRefs: [{name: gw, port: 81}]\nrules:\n- {}\n"), gateway=g)
        assert match(result, port=81) is not None
        assert match(result, port=80) is None

    def test_no_hostname_intersection_means_not_attached(self):
        g = gateway("- {name: a, port: 8080, protocol: HTTP, hostname: a.com}\n")
        result = config(route(body="parentRefs: [{name: gw}]\nhostnames: [b.com]\nrules:\n- {}\n"), gateway=g)
        (cond,) = [c for c in result.conditions["HTTPRoute default/r"] if c.type == "Accepted"]
        assert cond.reason == "NoMatchingListenerHostname"
        assert result.config.rules == ()

    def test_route_hostnames_narrow_to_listener_wildcard(self):
        g = gateway("- {name: a, port: 8080, protocol: HTTP, hostname: '*.example.com'}\n")
        result = config(
            route(body="parentRefs: [{name: gw}]\nhostnames: [foo.example.com, other.org]\nrules:\n- {}\n"), gateway=g
        )
        assert match(result, host="foo.example.com") is not None
        assert match(result, host="bar.example.com") is None
        assert match(result, host="other.org") is None

    def test_missing_gateway_is_reported(self):
        result = config(route(body="parentRefs: [{name: nope}]\nrules:\n- {}\n"))
        (err,) = result.errors
        assert "Gateway default/nope not found" in str(err)

    def test_attached_routes_are_counted_per_listener(self):
        result = config(route("a", SIMPLE_RULES), route("b", SIMPLE_RULES))
        assert result.attached_routes == {"default/gw/http": 2}


# --- rules and backends ---------------------------------------------------------------------------


SERVICE = """
apiVersion: v1
kind: Service
metadata: {name: svc, namespace: default}
spec:
  ports:
  - {name: http, port: 80, targetPort: 8080}
  - {name: admin, port: 9000, targetPort: 9000}
"""


def endpoint_slice(
    name: str, endpoints: str, ports: str = "[{name: http, port: 8080}, {name: admin, port: 9001}]"
) -> str:
    return f"""
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: {name}
  namespace: default
  labels: {{kubernetes.io/service-name: svc}}
addressType: IPv4
ports: {ports}
endpoints:
{textwrap.indent(textwrap.dedent(endpoints), "")}
"""


def service_route(port: int = 80) -> str:
    return route(body=f"parentRefs: [{{name: gw}}]\nrules:\n- backendRefs: [{{name: svc, port: {port}}}]\n")


class TestServiceBackends:
    def test_endpoints_come_from_slices_by_port_name(self):
        slices = endpoint_slice("s1", "- addresses: [10.0.0.1]\n- addresses: [10.0.0.2]\n")
        result = config(SERVICE, slices, service_route())
        assert result.errors == []
        backend = match(result).backend_refs[0].backend
        assert [(e.address, e.port) for e in backend.endpoints] == [("10.0.0.1", 8080), ("10.0.0.2", 8080)]
        admin = config(SERVICE, slices, service_route(9000))
        assert [e.port for e in match(admin).backend_refs[0].backend.endpoints] == [9001, 9001]

    def test_not_ready_endpoints_are_excluded_and_missing_ready_means_ready(self):
        eps = (
            "- addresses: [10.0.0.1]\n  conditions: {ready: false}\n"
            "- addresses: [10.0.0.2]\n  conditions: {ready: true}\n"
            "- addresses: [10.0.0.3]\n"
        )
        result = config(SERVICE, endpoint_slice("s1", eps), service_route())
        assert [e.address for e in match(result).backend_refs[0].backend.endpoints] == ["10.0.0.2", "10.0.0.3"]

    def test_endpoints_merge_across_slices(self):
        a = endpoint_slice("s1", "- addresses: [10.0.0.1]\n")
        b = endpoint_slice("s2", "- addresses: [10.0.0.2]\n- addresses: [10.0.0.1]\n")
        result = config(SERVICE, a, b, service_route())
        assert sorted(e.address for e in match(result).backend_refs[0].backend.endpoints) == ["10.0.0.1", "10.0.0.2"]

    def test_service_without_slices_has_no_endpoints(self):
        result = config(SERVICE, service_route())
        rule = match(result)
        assert rule.invalid_reason is None
        assert rule.backend_refs[0].backend.endpoints == ()

    def test_unknown_service_port_is_unresolved(self):
        result = config(SERVICE, service_route(81))
        (err,) = result.errors
        assert err.field == "spec.rules[0].backendRefs[0]"
        assert "has no port 81" in err.message
        assert match(result).invalid_reason

    def test_slice_without_service_label_is_an_error(self):
        bad = "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: s}\nendpoints: []\n"
        (err,) = config(bad).errors
        assert err.field == "metadata.labels[kubernetes.io/service-name]"


class TestRuleResolution:
    def rule_body(self, refs: str) -> str:
        return (
            f"parentRefs: [{{name: gw}}]\nrules:\n- backendRefs: {refs}\n"
            f"- matches: [{{path: {{value: /ok}}}}]\n  backendRefs: [{ONE}]\n"
        )

    def test_missing_backend_makes_rule_invalid_but_not_others(self):
        result = config(route(body=self.rule_body("[{group: gw.dev, kind: Backend, name: nope}]")))
        assert "Backend default/nope not found" in match(result, "/").invalid_reason
        assert match(result, "/ok").invalid_reason is None
        conditions = {(c.type, c.status, c.reason) for c in result.conditions["HTTPRoute default/r"]}
        assert ("ResolvedRefs", False, "BackendNotFound") in conditions
        assert ("Accepted", True, "Accepted") in conditions

    def test_unknown_kind_is_invalid_kind(self):
        result = config(route(body=self.rule_body("[{group: example.com, kind: Bucket, name: b}]")))
        assert "InvalidKind" in match(result, "/").invalid_reason

    def test_partly_unresolved_refs_keep_their_weight(self):
        result = config(
            route(
                body=self.rule_body(
                    "[{group: gw.dev, kind: Backend, name: one}, {group: gw.dev, kind: Backend, name: nope}]"
                )
            )
        )
        rule = match(result, "/")
        assert rule.invalid_reason is None
        assert [ref.backend is None for ref in rule.backend_refs] == [False, True]
        picks = [rule.pick_backend().backend is None for _ in range(4)]
        assert picks.count(True) == 2  # half the requests get the spec's 500

    def test_cross_namespace_ref_needs_a_reference_grant(self):
        other = static_backend("b", "other")
        body = self.rule_body("[{group: gw.dev, kind: Backend, name: b, namespace: other}]")
        refused = config(other, route(body=body))
        assert "RefNotPermitted" in match(refused, "/").invalid_reason
        grant = """
apiVersion: gateway.networking.k8s.io/v1beta1
kind: ReferenceGrant
metadata: {name: allow, namespace: other}
spec:
  from: [{group: gateway.networking.k8s.io, kind: HTTPRoute, namespace: default}]
  to: [{group: gw.dev, kind: Backend}]
"""
        allowed = config(other, grant, route(body=body))
        assert allowed.errors == []
        assert match(allowed, "/").backend_refs[0].backend.endpoints[0].address == "10.0.0.1"

    def test_reference_grant_in_wrong_namespace_or_for_other_name_does_not_allow(self):
        other = static_backend("b", "other")
        wrong_name = """
apiVersion: gateway.networking.k8s.io/v1beta1
kind: ReferenceGrant
metadata: {name: allow, namespace: other}
spec:
  from: [{group: gateway.networking.k8s.io, kind: HTTPRoute, namespace: default}]
  to: [{group: gw.dev, kind: Backend, name: not-b}]
"""
        wrong_ns = wrong_name.replace("namespace: other", "namespace: default").replace("name: not-b", "name: b")
        body = self.rule_body("[{group: gw.dev, kind: Backend, name: b, namespace: other}]")
        for grant in (wrong_name, wrong_ns):
            assert "RefNotPermitted" in match(config(other, grant, route(body=body)), "/").invalid_reason

    def test_no_backend_refs_is_invalid(self):
        result = config(route(body="parentRefs: [{name: gw}]\nrules:\n- matches: [{path: {value: /x}}]\n"))
        assert match(result, "/x").invalid_reason == "the rule has no backendRefs"

    def test_all_zero_weights_is_invalid(self):
        result = config(route(body=self.rule_body("[{group: gw.dev, kind: Backend, name: one, weight: 0}]")))
        assert match(result, "/").invalid_reason == "every backendRef has weight 0"

    def test_backends_are_shared_between_rules(self):
        result = config(route(body=self.rule_body("[{group: gw.dev, kind: Backend, name: one}]")))
        assert match(result, "/").backend_refs[0].backend is match(result, "/ok").backend_refs[0].backend

    def test_timeouts_names_and_body_limit(self):
        body = """
parentRefs: [{name: gw}]
rules:
- name: slow
  backendRefs: [{group: gw.dev, kind: Backend, name: one}]
  timeouts: {request: 1m30s, backendRequest: 500ms}
"""
        result = config(route(body=body, annotations=", annotations: {gw.dev/max-body-size: 10Mi}"))
        rule = match(result)
        assert (rule.name, rule.request_timeout, rule.backend_timeout) == ("slow", 90.0, 0.5)
        assert rule.max_body_size == 10 * 1024 * 1024

    def test_default_max_body_size_applies_without_annotation(self):
        result = config(route(body=SIMPLE_RULES), default_max_body_size=1000)
        assert match(result).max_body_size == 1000

    def test_route_without_rules_matches_everything(self):
        result = config(route(body="parentRefs: [{name: gw}]\n"))
        assert match(result, "/anything").invalid_reason == "the rule has no backendRefs"

    def test_rule_with_bad_match_is_left_out_and_others_serve(self):
        body = """
parentRefs: [{name: gw}]
rules:
- matches: [{path: {type: Exact, value: nope}}]
  backendRefs: [{group: gw.dev, kind: Backend, name: one}]
- matches: [{path: {value: /good}}]
  backendRefs: [{group: gw.dev, kind: Backend, name: two}]
"""
        result = config(route(body=body))
        assert len(result.errors) == 1
        assert match(result, "/good").index == 1
        assert match(result, "/") is None


class TestPrecedenceAcrossRoutes:
    def test_oldest_route_wins_then_name(self):
        body = SIMPLE_RULES
        newer = route("a", body).replace(
            "namespace: default}", "namespace: default, creationTimestamp: '2024-02-01T00:00:00Z'}"
        )
        older = route("b", body).replace(
            "namespace: default}", "namespace: default, creationTimestamp: '2024-01-01T00:00:00Z'}"
        )
        assert match(config(newer, older)).route == "default/b"
        assert match(config(route("b", body), route("a", body))).route == "default/a"

    def test_describe_lists_matches_in_lookup_order(self):
        body = """
parentRefs: [{name: gw}]
rules:
- matches: [{path: {value: /}}, {path: {type: Exact, value: /x}}, {path: {value: /a/b}}]
  backendRefs: [{group: gw.dev, kind: Backend, name: one}]
"""
        lines = describe(config(route(body=body)).config)
        assert lines[0].startswith("port 8080 HTTP: listeners default/gw/http")
        paths = [line.split("→")[0].strip() for line in lines[2:]]
        assert paths == ["Exact /x", "PathPrefix /a/b", "PathPrefix /"]


class TestDescribe:
    def test_listener_without_routes_is_shown_as_404(self):
        g = gateway(
            "- {name: a, port: 8080, protocol: HTTP}\n- {name: b, port: 8080, protocol: HTTP, hostname: b.com}\n"
        )
        lines = describe(config(route(body="parentRefs: [{name: gw, sectionName: a}]\n"), gateway=g).config)
        assert "  host b.com: no routes (404)" in lines


class TestCompileFromMemory:
    def test_compile_resources_from_dicts(self):
        docs = [
            {"kind": "GatewayClass", "metadata": {"name": "c"}, "spec": {"controllerName": "x/y"}},
            {"kind": "Gateway", "metadata": {"name": "g"},
             "spec": {"gatewayClassName": "c", "listeners": [{"name": "h", "port": 80, "protocol": "HTTP"}]}},
            {"kind": "HTTPRoute", "metadata": {"name": "r"}, "spec": {"parentRefs": [{"name": "g"}]}},
        ]  # fmt: skip
        resources, errors = parse_documents(docs)
        result = compile_resources(resources, errors=errors, controller_name="x/y")
        assert result.config.ports[0].table.match("h", "/", b"GET", [], b"").route == "default/r"


class TestUnits:
    @pytest.mark.parametrize(
        ("text", "seconds"), [("10s", 10.0), ("500ms", 0.5), ("1h30m", 5400.0), ("0s", 0.0), ("1m1s1ms", 61.001)]
    )
    def test_durations(self, text, seconds):
        assert parse_duration(text) == pytest.approx(seconds)

    @pytest.mark.parametrize("text", ["1.5s", "10", "s", "-1s", "1d", "100000s"])
    def test_invalid_durations(self, text):
        with pytest.raises(ValueError):
            parse_duration(text)

    @pytest.mark.parametrize(
        ("text", "size"), [("10Mi", 10 * 2**20), ("1k", 1000), ("512", 512), (0, 0), ("2Gi", 2 * 2**30)]
    )
    def test_quantities(self, text, size):
        assert parse_quantity(text) == size

    @pytest.mark.parametrize("text", ["10 MB", "-1", "1.5Mi", "lots"])
    def test_invalid_quantities(self, text):
        with pytest.raises(ValueError):
            parse_quantity(text)


# --- robustness ----------------------------------------------------------------------------------

_KINDS = ["Gateway", "HTTPRoute", "Service", "EndpointSlice", "Backend", "ReferenceGrant", "GatewayClass", "List"]
_FIELDS = [
    "listeners", "name", "port", "protocol", "hostname", "hostnames", "rules", "matches", "path", "type",
    "value", "backendRefs", "weight", "parentRefs", "endpoints", "address", "ports", "allowedRoutes",
    "namespaces", "from", "selector", "headers", "queryParams", "method", "timeouts", "request", "items",
    "controllerName", "gatewayClassName", "to", "kind", "group", "conditions", "addresses", "ready",
]  # fmt: skip

_json = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 70000) | st.sampled_from(["", "/", "x", "*.a.com", "HTTP", "gw"]),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.sampled_from(_FIELDS), children, max_size=4),
    max_leaves=12,
)


_BASE = [
    {"kind": "GatewayClass", "metadata": {"name": "gw"}, "spec": {"controllerName": "gw.dev/gateway-controller"}},
    {"kind": "Gateway", "metadata": {"name": "gw"},
     "spec": {"gatewayClassName": "gw", "listeners": [{"name": "h", "port": 80, "protocol": "HTTP"}]}},
]  # fmt: skip


@given(
    st.lists(
        st.tuples(
            st.sampled_from(_KINDS),
            st.sampled_from(["x", "gw"]),
            _json,
            st.dictionaries(st.sampled_from(_FIELDS), _json, max_size=3),
        ),
        max_size=5,
    )
)
def test_arbitrary_documents_never_crash_the_pipeline(docs):
    documents = [*_BASE]
    for kind, name, spec, top in docs:
        documents.append({**top, "kind": kind, "metadata": {"name": name}, "spec": spec})
    resources, errors = parse_documents(documents)
    # Nothing to serve is the one error the pipeline may raise; anything else is a bug.
    with contextlib.suppress(ConfigError):
        result = compile_resources(resources, errors=errors)
        for port in result.config.ports:
            port.table.match("x.a.com", "/x/y", b"GET", [(b"h", b"v")], b"a=b")
        describe(result.config)


class TestUnknownFields:
    """Strict validation, as kubectl's default: a field the schema does not know is an error."""

    def test_a_misspelt_match_field_drops_the_rule_and_suggests_the_right_one(self):
        body = """
        parentRefs: [{name: gw}]
        rules:
        - matches: [{path: {value: /admin}, header: [{name: x-admin, value: "1"}]}]
          backendRefs: [{name: svc, port: 80}]
        - backendRefs: [{name: svc, port: 80}]
        """
        result = config(route(body=body))
        (error,) = [e for e in result.errors if e.field == "spec.rules[0].matches[0].header"]
        assert "did you mean 'headers'?" in error.message
        # Without the header condition the rule would open /admin to everyone: it is dropped.
        assert match(result, "/admin").index == 1

    @pytest.mark.parametrize(
        ("body", "field"),
        [
            ("parentRefs: [{name: gw}]\nrule: []\n", "spec.rule"),
            ("parentRefs: [{name: gw, sectionname: http}]\n", "spec.parentRefs[0].sectionname"),
        ],
    )
    def test_an_unknown_route_field_refuses_the_route(self, body, field):
        result = config(route(body=body))
        assert any(e.field == field and "is not a field" in e.message for e in result.errors), messages(result)
        assert match(result) is None

    def test_filter_configs_are_checked_by_their_type(self):
        body = """
        parentRefs: [{name: gw}]
        rules:
        - backendRefs: [{name: svc, port: 80}]
          filters: [{type: RequestRedirect, requestRedirect: {statusCode: 301, scheme: https, code: 302}}]
        """
        result = config(route(body=body))
        assert any(e.field == "spec.rules[0].filters[0].requestRedirect.code" for e in result.errors)

    def test_fields_the_spec_defines_but_gw_does_not_implement_are_known(self):
        gateway = GATEWAY.replace("gatewayClassName: gw", "gatewayClassName: gw\n  infrastructure: {labels: {a: b}}")
        assert gateway != GATEWAY
        result = config(route(body="parentRefs: [{name: gw}]\n"), gateway=gateway)
        assert not [e for e in result.errors if "is not a field" in e.message]

    def test_a_status_block_from_a_cluster_export_is_accepted(self):
        doc = route(body="parentRefs: [{name: gw}]\n") + "status: {parents: []}\n"
        result = config(doc)
        assert not result.errors and match(result) is not None


class TestWhatTheApiServerWouldRefuse:
    def test_a_key_given_twice_in_a_mapping_is_an_error_with_its_line(self):
        with pytest.raises(ConfigError, match=r"line \d+, column 3: mapping key 'rules' is given more than once"):
            load_text(HEAD + GATEWAY + "\n---\n" + route(body="parentRefs: [{name: gw}]\nrules: []\nrules: []\n"))

    def test_a_misspelt_gateway_api_kind_is_an_error(self):
        doc = route(body="parentRefs: [{name: gw}]\n").replace("kind: HTTPRoute", "kind: HTTPRoutes")
        result = config(doc)
        (error,) = [e for e in result.errors if e.field == "kind"]
        assert "'HTTPRoutes' is not a kind of gateway.networking.k8s.io" in error.message

    def test_gateway_api_kinds_gw_does_not_serve_are_ignored_quietly(self):
        doc = route(body="parentRefs: [{name: gw}]\n").replace("kind: HTTPRoute", "kind: GRPCRoute")
        assert not config(doc).errors

    @pytest.mark.parametrize("path", ["/a b", "/caf\u00e9", "/a?b", "/%zz"])
    def test_path_values_hold_only_what_a_path_may_hold_unencoded(self, path):
        body = f'parentRefs: [{{name: gw}}]\nrules: [{{matches: [{{path: {{value: "{path}"}}}}]}}]\n'
        result = config(route(body=body))
        assert any(e.field == "spec.rules[0].matches[0].path.value" for e in result.errors), messages(result)



class TestConfigFiles:
    def test_one_snapshot_whatever_the_path_is_typed_as(self, tmp_path, monkeypatch):
        from gw.config.loader import read_sources, sources_checksum

        (tmp_path / "gw.yaml").write_text("kind: Namespace\nmetadata: {name: a}\n")
        monkeypatch.chdir(tmp_path.parent)
        typed = [str(tmp_path / "gw.yaml"), f"{tmp_path.name}/gw.yaml", f"./{tmp_path.name}/../{tmp_path.name}/gw.yaml"]
        assert len({sources_checksum(read_sources(path)) for path in typed}) == 1

    def test_a_configmap_volume_is_read_once_under_the_names_replicas_share(self, tmp_path):
        """kubelet's layout: gw.yaml -> ..data/gw.yaml, ..data -> ..<timestamp>/ (named per node)."""
        from gw.config.loader import read_sources

        stamped = tmp_path / "..2026_11_29_06_00_00.123456"
        stamped.mkdir()
        (stamped / "gw.yaml").write_text("kind: Namespace\nmetadata: {name: a}\n")
        (tmp_path / "..data").symlink_to(stamped.name)
        (tmp_path / "gw.yaml").symlink_to("..data/gw.yaml")
        (tmp_path / ".#gw.yaml").symlink_to("nowhere")  # an editor's lock file
        assert [name for name, _ in read_sources(str(tmp_path))] == [str(tmp_path / "gw.yaml")]
