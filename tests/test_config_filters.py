"""HTTPRoute filters, retry and timeouts: compiled objects and their behaviour, from the spec text."""

from __future__ import annotations

import textwrap

import pytest

from gw.config import load_text
from gw.config.filters import ALL_FEATURES, CORS, HeaderModifier, Mirror, PathModifier, Redirect, Retry, URLRewrite
from gw.policies.registry import build_chain

HEAD = """
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: gw}
spec: {controllerName: gw.dev/gateway-controller}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: gw, namespace: default}
spec:
  gatewayClassName: gw
  listeners:
  - {name: http, port: 8080, protocol: HTTP}
---
apiVersion: gw.dev/v1alpha1
kind: Backend
metadata: {name: one, namespace: default}
spec: {endpoints: [{address: 127.0.0.1, port: 18081}]}
---
apiVersion: gw.dev/v1alpha1
kind: Backend
metadata: {name: two, namespace: default}
spec: {endpoints: [{address: 127.0.0.1, port: 18082}]}
"""

ONE = "{group: gw.dev, kind: Backend, name: one}"
TWO = "{group: gw.dev, kind: Backend, name: two}"


def compile_rule(rule: str, *extra: str, features=ALL_FEATURES):
    """Compile one route with one rule (YAML of the rule mapping) and return (result, the rule)."""
    body = textwrap.indent(textwrap.dedent(rule).strip(), "    ")
    body = "- " + body.lstrip()
    route = (
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: r, namespace: default}\n"
        f"spec:\n  parentRefs: [{{name: gw}}]\n  rules:\n  {body}\n"
    )
    text = HEAD + "".join(f"\n---\n{textwrap.dedent(e)}" for e in extra) + "\n---\n" + route
    result = load_text(text, features=features)
    if result.config.rules:
        (rule_obj,) = result.config.rules
        return result, rule_obj
    # An invalid rule is dropped (the spec's "Dropped Rule"): its spec says why, and the route,
    # left with no valid rule, is not accepted.
    (route_obj,) = result.resources.http_routes
    (dropped,) = route_obj.dropped
    accepted = [c for c in result.conditions["HTTPRoute default/r"] if c.type == "Accepted"]
    assert accepted and all(not c.status and c.reason == "UnsupportedValue" for c in accepted), accepted
    return result, dropped


def chain_kinds(rule) -> list[str]:
    """The phase kinds a worker serves the rule with (none of these rules has a rate limit)."""
    chain = build_chain(rule, None)  # type: ignore[arg-type]
    return [] if chain is None else [p.kind for p in chain.phases]


def fields(result):
    return [e.field for e in result.errors]


# --- RequestHeaderModifier / ResponseHeaderModifier ------------------------------------------------


class TestHeaderModifier:
    def test_set_overwrites_every_field_of_that_name(self):
        headers = [(b"My-Header", b"foo"), (b"my-header", b"foo2"), (b"other", b"x")]
        HeaderModifier(set=(("my-header", "bar"),)).apply(headers)
        assert headers == [(b"other", b"x"), (b"my-header", b"bar")]

    def test_add_appends_to_existing_values(self):
        headers = [(b"my-header", b"foo")]
        HeaderModifier(add=(("my-header", "bar,baz"),)).apply(headers)
        assert headers == [(b"my-header", b"foo,bar,baz")]

    def test_add_without_existing_field_adds_one(self):
        headers = [(b"a", b"1")]
        HeaderModifier(add=(("X-New", "v"),)).apply(headers)
        assert headers == [(b"a", b"1"), (b"x-new", b"v")]

    def test_add_set_cookie_is_a_separate_field(self):
        headers = [(b"set-cookie", b"a=1")]
        HeaderModifier(add=(("Set-Cookie", "b=2"),)).apply(headers)
        assert headers == [(b"set-cookie", b"a=1"), (b"set-cookie", b"b=2")]

    def test_remove_is_case_insensitive(self):
        headers = [(b"My-Header1", b"foo"), (b"my-header2", b"bar"), (b"MY-HEADER3", b"baz")]
        HeaderModifier(remove=("my-header1", "My-Header3")).apply(headers)
        assert headers == [(b"my-header2", b"bar")]

    def test_no_matching_fields_leaves_the_list_equal(self):
        headers = [(b"a", b"1")]
        HeaderModifier(remove=("b",)).apply(headers)
        assert headers == [(b"a", b"1")]

    def test_compiled_onto_the_rule(self):
        _, rule = compile_rule(
            f"""
            backendRefs: [{ONE}]
            filters:
            - type: RequestHeaderModifier
              requestHeaderModifier:
                set: [{{name: X-A, value: "1"}}]
                add: [{{name: X-B, value: "2"}}]
                remove: [X-C]
            - type: ResponseHeaderModifier
              responseHeaderModifier: {{add: [{{name: X-Served-By, value: gw}}]}}
            """
        )
        assert rule.invalid_reason is None
        assert chain_kinds(rule) == ["request-header-modifier", "response-header-modifier"]
        headers = [(b"x-c", b"gone"), (b"x-b", b"0")]
        rule.request_headers.apply(headers)
        assert headers == [(b"x-b", b"0,2"), (b"x-a", b"1")]
        response = []
        rule.response_headers.apply(response)
        assert response == [(b"x-served-by", b"gw")]

    def test_one_action_per_header_name(self):
        result, rule = compile_rule(
            f"""
            backendRefs: [{ONE}]
            filters:
            - type: RequestHeaderModifier
              requestHeaderModifier: {{set: [{{name: X-A, value: "1"}}], remove: [x-a]}}
            """
        )
        assert fields(result) == ["spec.rules[0].filters[0].requestHeaderModifier.remove[0]"]
        assert rule.invalid_reason

    @pytest.mark.parametrize("name", ["bad name", "x:y", ""])
    def test_invalid_header_names(self, name):
        result, rule = compile_rule(
            f"""
            backendRefs: [{ONE}]
            filters:
            - type: RequestHeaderModifier
              requestHeaderModifier: {{set: [{{name: "{name}", value: v}}]}}
            """
        )
        assert "spec.rules[0].filters[0].requestHeaderModifier.set[0].name" in fields(result)
        assert rule.invalid_reason

    def test_header_value_must_not_contain_line_breaks(self):
        result, _ = compile_rule(
            f"""
            backendRefs: [{ONE}]
            filters:
            - type: RequestHeaderModifier
              requestHeaderModifier: {{set: [{{name: x, value: "a\\r\\nb: c"}}]}}
            """
        )
        assert fields(result) == ["spec.rules[0].filters[0].requestHeaderModifier.set[0].value"]


# --- filter combinations ---------------------------------------------------------------------------


class TestFilterValidation:
    def test_filter_types_other_than_mirror_and_extension_ref_cannot_repeat(self):
        result, rule = compile_rule(
            f"""
            backendRefs: [{ONE}]
            filters:
            - {{type: RequestHeaderModifier, requestHeaderModifier: {{remove: [a]}}}}
            - {{type: RequestHeaderModifier, requestHeaderModifier: {{remove: [b]}}}}
            """
        )
        (err,) = result.errors
        assert err.field == "spec.rules[0].filters[1].type"
        assert "cannot be repeated" in err.message
        assert rule.invalid_reason

    def test_redirect_and_rewrite_together_are_invalid(self):
        result, rule = compile_rule(
            """
            filters:
            - {type: RequestRedirect, requestRedirect: {scheme: https}}
            - {type: URLRewrite, urlRewrite: {hostname: a.example}}
            """
        )
        assert "spec.rules[0].filters" in fields(result)
        assert rule.invalid_reason

    def test_redirect_must_not_be_used_with_backend_refs(self):
        result, rule = compile_rule(
            f"""
            backendRefs: [{ONE}]
            filters: [{{type: RequestRedirect, requestRedirect: {{scheme: https}}}}]
            """
        )
        assert fields(result) == ["spec.rules[0].backendRefs"]
        assert rule.invalid_reason

    def test_filter_config_must_match_its_type(self):
        result, _ = compile_rule(
            f"""
            backendRefs: [{ONE}]
            filters: [{{type: RequestHeaderModifier, urlRewrite: {{hostname: a.example}}}}]
            """
        )
        assert set(fields(result)) == {
            "spec.rules[0].filters[0].urlRewrite",
            "spec.rules[0].filters[0].requestHeaderModifier",
        }

    def test_unknown_filter_type(self):
        result, rule = compile_rule(
            f"""
            backendRefs: [{ONE}]
            filters: [{{type: Teleport}}]
            """
        )
        assert fields(result) == ["spec.rules[0].filters[0].type"]
        assert rule.invalid_reason

    def test_rule_without_filters_has_none(self):
        _, rule = compile_rule(f"backendRefs: [{ONE}]")
        assert chain_kinds(rule) == []  # no chain: the proxy's fast path
        assert (rule.request_headers, rule.response_headers, rule.redirect, rule.rewrite, rule.cors) == (None,) * 5
        assert rule.mirrors == () and rule.extensions == () and rule.retry is None

    def test_filters_not_in_the_data_plane_make_the_rule_answer_500(self):
        result, rule = compile_rule(
            f"""
            backendRefs: [{ONE}]
            filters: [{{type: URLRewrite, urlRewrite: {{hostname: a.example}}}}]
            """,
            features=frozenset({"RequestHeaderModifier"}),
        )
        (err,) = result.errors
        assert err.field == "spec.rules[0]" and "URLRewrite" in err.message
        assert "URLRewrite" in rule.invalid_reason
        assert rule.rewrite is not None  # still compiled: gw check and gw routes show it


# --- paths -------------------------------------------------------------------------------------------


# The spec's table for ReplacePrefixMatch (HTTPPathModifier.ReplacePrefixMatch).
PREFIX_TABLE = [
    ("/foo/bar", "/foo", "/xyz", "/xyz/bar"),
    ("/foo/bar", "/foo", "/xyz/", "/xyz/bar"),
    ("/foo/bar", "/foo/", "/xyz", "/xyz/bar"),
    ("/foo/bar", "/foo/", "/xyz/", "/xyz/bar"),
    ("/foo", "/foo", "/xyz", "/xyz"),
    ("/foo/", "/foo", "/xyz", "/xyz/"),
    ("/foo/bar", "/foo", "", "/bar"),
    ("/foo/", "/foo", "", "/"),
    ("/foo", "/foo", "", "/"),
    ("/foo/", "/foo", "/", "/"),
    ("/foo", "/foo", "/", "/"),
]


class TestPathModifier:
    @pytest.mark.parametrize(("path", "prefix", "replacement", "expected"), PREFIX_TABLE)
    def test_replace_prefix_match_follows_the_spec_table(self, path, prefix, replacement, expected):
        assert PathModifier("ReplacePrefixMatch", replacement, prefix).apply(path) == expected

    def test_replace_prefix_of_root(self):
        assert PathModifier("ReplacePrefixMatch", "/v1", "/").apply("/users") == "/v1/users"

    def test_replace_full_path(self):
        assert PathModifier("ReplaceFullPath", "/new").apply("/old/path") == "/new"

    def test_replace_prefix_match_needs_one_path_prefix_match(self):
        result, rule = compile_rule(
            f"""
            matches: [{{path: {{type: Exact, value: /a}}}}]
            backendRefs: [{ONE}]
            filters:
            - type: URLRewrite
              urlRewrite: {{path: {{type: ReplacePrefixMatch, replacePrefixMatch: /b}}}}
            """
        )
        assert fields(result) == ["spec.rules[0].filters[0].urlRewrite.path.type"]
        assert rule.invalid_reason

    def test_replace_prefix_match_with_two_matches_is_invalid(self):
        result, _ = compile_rule(
            f"""
            matches: [{{path: {{type: PathPrefix, value: /a}}}}, {{path: {{type: PathPrefix, value: /b}}}}]
            backendRefs: [{ONE}]
            filters:
            - type: URLRewrite
              urlRewrite: {{path: {{type: ReplacePrefixMatch, replacePrefixMatch: /c}}}}
            """
        )
        assert fields(result) == ["spec.rules[0].filters[0].urlRewrite.path.type"]

    def test_path_modifier_value_must_match_its_type(self):
        result, _ = compile_rule(
            f"""
            backendRefs: [{ONE}]
            filters:
            - type: URLRewrite
              urlRewrite: {{path: {{type: ReplaceFullPath, replacePrefixMatch: /c}}}}
            """
        )
        assert "spec.rules[0].filters[0].urlRewrite.path.replacePrefixMatch" in fields(result)


# --- URLRewrite ---------------------------------------------------------------------------------------


class TestURLRewrite:
    def test_rewrite_prefix_keeps_the_rest_and_the_query(self):
        _, rule = compile_rule(
            f"""
            matches: [{{path: {{type: PathPrefix, value: /api/}}}}]
            backendRefs: [{ONE}]
            filters:
            - type: URLRewrite
              urlRewrite: {{hostname: internal.example, path: {{type: ReplacePrefixMatch, replacePrefixMatch: /v2}}}}
            """
        )
        assert rule.rewrite.target("/api/users", b"id=1") == b"/v2/users?id=1"
        assert rule.rewrite.target("/api", b"") == b"/v2"
        assert rule.rewrite.host == b"internal.example"

    def test_rewrite_hostname_only_keeps_the_path(self):
        rewrite = URLRewrite("b.example")
        assert rewrite.target("/x", b"q") == b"/x?q"

    def test_rewrite_hostname_must_be_precise(self):
        result, _ = compile_rule(
            f"""
            backendRefs: [{ONE}]
            filters: [{{type: URLRewrite, urlRewrite: {{hostname: "*.example.com"}}}}]
            """
        )
        assert fields(result) == ["spec.rules[0].filters[0].urlRewrite.hostname"]


# --- RequestRedirect ------------------------------------------------------------------------------------


class TestRedirect:
    def test_default_status_is_302_and_request_parts_are_kept(self):
        _, rule = compile_rule("filters: [{type: RequestRedirect, requestRedirect: {hostname: b.example}}]")
        redirect = rule.redirect
        assert rule.invalid_reason is None  # a redirect rule needs no backendRefs
        assert redirect.status == 302 and redirect.reason == b"Found"
        assert redirect.location("http", "a.example", 8080, "/p", b"x=1") == b"http://b.example:8080/p?x=1"

    def test_scheme_change_uses_the_schemes_well_known_port_and_omits_it(self):
        redirect = Redirect(301, scheme="https")
        assert redirect.location("http", "a.example", 80, "/", b"") == b"https://a.example/"
        assert redirect.location("http", "a.example", 8080, "/", b"") == b"https://a.example/"

    def test_without_scheme_the_listener_port_is_used_and_default_ports_omitted(self):
        assert Redirect().location("http", "a.example", 80, "/x") == b"http://a.example/x"
        assert Redirect().location("https", "a.example", 443, "/x") == b"https://a.example/x"
        assert Redirect().location("https", "a.example", 8443, "/x") == b"https://a.example:8443/x"

    def test_explicit_port_wins(self):
        assert Redirect(scheme="https", port=8443).location("http", "a", 80, "/") == b"https://a:8443/"
        assert Redirect(port=80).location("http", "a", 8080, "/") == b"http://a/"

    @pytest.mark.parametrize("code", [301, 302, 303, 307, 308])
    def test_status_codes(self, code):
        _, rule = compile_rule(f"filters: [{{type: RequestRedirect, requestRedirect: {{statusCode: {code}}}}}]")
        assert rule.redirect.status == code

    def test_unsupported_status_code(self):
        result, rule = compile_rule("filters: [{type: RequestRedirect, requestRedirect: {statusCode: 305}}]")
        assert fields(result) == ["spec.rules[0].filters[0].requestRedirect.statusCode"]
        assert rule.invalid_reason

    def test_redirect_replace_prefix(self):
        _, rule = compile_rule(
            """
            matches: [{path: {type: PathPrefix, value: /old}}]
            filters:
            - type: RequestRedirect
              requestRedirect: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /new}, statusCode: 301}
            """
        )
        assert rule.redirect.location("http", "a", 80, "/old/page") == b"http://a/new/page"

    def test_redirect_full_path(self):
        redirect = Redirect(path=PathModifier("ReplaceFullPath", "/moved"))
        assert redirect.location("http", "a", 80, "/any/thing", b"q=1") == b"http://a/moved?q=1"

    def test_invalid_scheme(self):
        result, _ = compile_rule("filters: [{type: RequestRedirect, requestRedirect: {scheme: ftp}}]")
        assert fields(result) == ["spec.rules[0].filters[0].requestRedirect.scheme"]


# --- RequestMirror -----------------------------------------------------------------------------------------


class TestMirror:
    def test_several_mirrors_resolve_like_backend_refs(self):
        _, rule = compile_rule(
            f"""
            backendRefs: [{ONE}]
            filters:
            - {{type: RequestMirror, requestMirror: {{backendRef: {TWO}}}}}
            - {{type: RequestMirror, requestMirror: {{backendRef: {ONE}, percent: 10}}}}
            """
        )
        first, second = rule.mirrors
        assert first.backend.endpoints[0].port == 18082
        assert (second.numerator, second.denominator) == (10, 100)

    def test_unresolved_mirror_is_dropped_with_a_condition(self):
        result, rule = compile_rule(
            f"""
            backendRefs: [{ONE}]
            filters:
            - {{type: RequestMirror, requestMirror: {{backendRef: {{group: gw.dev, kind: Backend, name: nope}}}}}}
            """
        )
        assert rule.mirrors == () and rule.invalid_reason is None
        (err,) = result.errors
        assert err.field == "spec.rules[0].filters[0].requestMirror.backendRef"
        conds = {(c.type, c.status, c.reason) for c in result.conditions["HTTPRoute default/r"]}
        assert ("ResolvedRefs", False, "BackendNotFound") in conds

    def test_percent_and_fraction_are_exclusive(self):
        result, _ = compile_rule(
            f"""
            backendRefs: [{ONE}]
            filters:
            - type: RequestMirror
              requestMirror: {{backendRef: {TWO}, percent: 5, fraction: {{numerator: 1}}}}
            """
        )
        assert fields(result) == ["spec.rules[0].filters[0].requestMirror"]

    def test_fraction(self):
        _, rule = compile_rule(
            f"""
            backendRefs: [{ONE}]
            filters:
            - {{type: RequestMirror, requestMirror: {{backendRef: {TWO}, fraction: {{numerator: 1, denominator: 4}}}}}}
            """
        )
        (mirror,) = rule.mirrors
        assert mirror.take(lambda: 0.2) is True
        assert mirror.take(lambda: 0.3) is False

    def test_a_mirror_of_the_primary_backend_balances_on_its_own(self):
        # Copies picking from the primary's balancer would shift the primary's round robin.
        _, rule = compile_rule(
            f"""
            backendRefs: [{ONE}]
            filters:
            - {{type: RequestMirror, requestMirror: {{backendRef: {ONE}}}}}
            """
        )
        (mirror,) = rule.mirrors
        primary = rule.backend_refs[0].backend
        assert mirror.backend is not primary
        assert mirror.backend.endpoints == primary.endpoints  # the same endpoints, pools and health

    def test_take_at_100_percent_needs_no_random_draw(self):
        def boom() -> float:
            raise AssertionError("no draw expected")

        assert Mirror("m", None).take(boom) is True
        assert Mirror("m", None, 0).take(boom) is False


# --- CORS --------------------------------------------------------------------------------------------------


class TestCORS:
    def test_exact_origin_is_echoed(self):
        cors = CORS(allow_origins=("https://app.example",), allow_methods=("GET", "PUT"), max_age=60)
        headers = dict(cors.preflight(b"https://app.example", b"PUT", None))
        assert headers[b"access-control-allow-origin"] == b"https://app.example"
        assert headers[b"access-control-allow-methods"] == b"GET, PUT"
        assert headers[b"access-control-max-age"] == b"60"

    def test_default_ports_are_equivalent(self):
        cors = CORS(allow_origins=("https://app.example",))
        assert cors.allows(b"https://app.example:443")
        assert not cors.allows(b"https://app.example:8443")
        assert not cors.allows(b"http://app.example")

    def test_wildcard_is_greedy_to_the_left(self):
        cors = CORS(allow_origins=("https://*.example.com",))
        assert cors.allows(b"https://a.example.com")
        assert cors.allows(b"https://a.b.example.com")
        assert not cors.allows(b"https://example.org")

    def test_disallowed_origin_gets_no_cors_fields(self):
        cors = CORS(allow_origins=("https://app.example",))
        assert cors.preflight(b"https://evil.example", b"GET", None) == []
        assert cors.response(b"https://evil.example") == []

    def test_star_without_credentials_answers_star(self):
        cors = CORS(allow_origins=("*",), allow_methods=("*",))
        headers = dict(cors.preflight(b"https://x.example", b"DELETE", None))
        assert headers[b"access-control-allow-origin"] == b"*"
        assert headers[b"access-control-allow-methods"] == b"*"

    def test_star_with_credentials_echoes_instead(self):
        cors = CORS(allow_origins=("*",), allow_methods=("*",), allow_headers=("*",), allow_credentials=True)
        headers = dict(cors.preflight(b"https://x.example", b"DELETE", b"x-a, x-b"))
        assert headers[b"access-control-allow-origin"] == b"https://x.example"
        assert headers[b"access-control-allow-credentials"] == b"true"
        assert headers[b"access-control-allow-methods"] == b"DELETE"
        assert headers[b"access-control-allow-headers"] == b"x-a, x-b"

    def test_credentials_omitted_when_false(self):
        cors = CORS(allow_origins=("https://a.example",))
        assert b"access-control-allow-credentials" not in dict(cors.response(b"https://a.example"))

    def test_expose_headers_on_actual_responses(self):
        cors = CORS(allow_origins=("https://a.example",), expose_headers=("X-Total",))
        assert dict(cors.response(b"https://a.example"))[b"access-control-expose-headers"] == b"X-Total"

    def test_max_age_defaults_to_5(self):
        _, rule = compile_rule(
            f"""
            backendRefs: [{ONE}]
            filters: [{{type: CORS, cors: {{allowOrigins: ["https://a.example"]}}}}]
            """
        )
        assert dict(rule.cors.preflight(b"https://a.example", b"GET", None))[b"access-control-max-age"] == b"5"

    def test_star_cannot_be_combined(self):
        result, _ = compile_rule(
            f"""
            backendRefs: [{ONE}]
            filters: [{{type: CORS, cors: {{allowOrigins: ["*", "https://a.example"]}}}}]
            """
        )
        assert fields(result) == ["spec.rules[0].filters[0].cors.allowOrigins"]

    def test_invalid_origin(self):
        result, _ = compile_rule(
            f"""
            backendRefs: [{ONE}]
            filters: [{{type: CORS, cors: {{allowOrigins: ["ftp://a.example"]}}}}]
            """
        )
        assert fields(result) == ["spec.rules[0].filters[0].cors.allowOrigins[0]"]

    def test_is_preflight(self):
        assert CORS.is_preflight(b"OPTIONS", b"GET")
        assert not CORS.is_preflight(b"OPTIONS", None)
        assert not CORS.is_preflight(b"GET", b"GET")


# --- ExtensionRef -------------------------------------------------------------------------------------------


POLICY = """
apiVersion: gw.dev/v1alpha1
kind: ExamplePolicy
metadata: {name: slow, namespace: default}
spec: {requests: 10}
"""


class TestExtensionRef:
    def test_resolves_to_a_gw_policy_object(self):
        _, rule = compile_rule(
            f"""
            backendRefs: [{ONE}]
            filters: [{{type: ExtensionRef, extensionRef: {{group: gw.dev, kind: ExamplePolicy, name: slow}}}}]
            """,
            POLICY,
        )
        (ext,) = rule.extensions
        assert (ext.kind, ext.namespace, ext.name, ext.spec) == ("ExamplePolicy", "default", "slow", {"requests": 10})
        assert rule.invalid_reason is None

    def test_missing_policy_makes_the_rule_answer_500(self):
        result, rule = compile_rule(
            f"""
            backendRefs: [{ONE}]
            filters: [{{type: ExtensionRef, extensionRef: {{group: gw.dev, kind: ExamplePolicy, name: nope}}}}]
            """
        )
        assert rule.invalid_reason and "not found" in rule.invalid_reason
        assert fields(result) == ["spec.rules[0].filters[0].extensionRef"]

    def test_a_backend_traffic_policy_is_not_a_filter(self):
        policy = """
---
apiVersion: gw.dev/v1alpha1
kind: BackendTrafficPolicy
metadata: {name: bt, namespace: default}
spec:
  targetRefs: [{group: gw.dev, kind: Backend, name: nowhere}]
  circuitBreaker: {failureRatio: 0.5}
"""
        result, rule = compile_rule(
            f"""
            backendRefs: [{ONE}]
            filters: [{{type: ExtensionRef, extensionRef: {{group: gw.dev, kind: BackendTrafficPolicy, name: bt}}}}]
            """,
            policy,
        )
        assert rule.invalid_reason and "attaches by its targetRefs" in rule.invalid_reason
        assert "spec.rules[0].filters[0].extensionRef" in fields(result)

    def test_foreign_group_is_invalid_kind(self):
        result, rule = compile_rule(
            f"""
            backendRefs: [{ONE}]
            filters: [{{type: ExtensionRef, extensionRef: {{group: example.net, kind: Thing, name: x}}}}]
            """
        )
        assert rule.invalid_reason
        conds = {(c.type, c.status, c.reason) for c in result.conditions["HTTPRoute default/r"]}
        assert ("ResolvedRefs", False, "InvalidKind") in conds


# --- filters on backendRefs ----------------------------------------------------------------------------------


class TestBackendRefFilters:
    def test_header_modifiers_per_backend(self):
        _, rule = compile_rule(
            f"""
            backendRefs:
            - group: gw.dev
              kind: Backend
              name: one
              filters: [{{type: RequestHeaderModifier, requestHeaderModifier: {{set: [{{name: X-Pool, value: one}}]}}}}]
            - {TWO}
            """
        )
        one, two = rule.backend_refs
        assert one.request_headers is not None and two.request_headers is None
        assert rule.request_headers is None and chain_kinds(rule) == ["request-header-modifier"]
        headers = []
        one.request_headers.apply(headers)
        assert headers == [(b"x-pool", b"one")]

    def test_backend_filters_are_validated(self):
        result, rule = compile_rule(
            """
            backendRefs:
            - {group: gw.dev, kind: Backend, name: one, filters: [{type: RequestHeaderModifier}]}
            """
        )
        assert fields(result) == ["spec.rules[0].backendRefs[0].filters[0].requestHeaderModifier"]
        assert rule.invalid_reason


# --- retry and timeouts ------------------------------------------------------------------------------------------


class TestRetryAndTimeouts:
    def test_retry_compiled(self):
        _, rule = compile_rule(
            f"""
            backendRefs: [{ONE}]
            retry: {{attempts: 3, codes: [502, 503], backoff: 100ms}}
            timeouts: {{request: 10s, backendRequest: 2s}}
            """
        )
        retry = rule.retry
        assert (retry.attempts, retry.codes, retry.backoff) == (3, frozenset({502, 503}), 0.1)
        assert (rule.request_timeout, rule.backend_timeout) == (10.0, 2.0)

    def test_should_retry_counts_attempts(self):
        retry = Retry(2, frozenset({503}), None)
        assert retry.should_retry(503, 0) and retry.should_retry(503, 1)
        assert not retry.should_retry(503, 2)
        assert not retry.should_retry(500, 0)

    def test_backoff_grows_and_stays_at_least_the_base(self):
        retry = Retry(5, frozenset({503}), 0.1)
        assert retry.delay(0, lambda: 0.99) == pytest.approx(0.1)
        assert retry.delay(3, lambda: 1.0) == pytest.approx(0.8)
        assert retry.delay(30, lambda: 1.0) == pytest.approx(Retry.MAX_BACKOFF)
        assert Retry(1, frozenset(), None).delay(0) == 0.0

    def test_zero_attempts_disables_retries(self):
        _, rule = compile_rule(f"backendRefs: [{ONE}]\nretry: {{attempts: 0, codes: [503]}}")
        assert rule.retry is None

    @pytest.mark.parametrize("code", [399, 600, "503"])
    def test_retry_codes_must_be_4xx_or_5xx(self, code):
        result, rule = compile_rule(f"backendRefs: [{ONE}]\nretry: {{codes: [{code!r}]}}")
        assert fields(result) == ["spec.rules[0].retry.codes[0]"]
        assert rule.invalid_reason

    def test_zero_request_timeout_allows_any_backend_timeout(self):
        result, rule = compile_rule(f"backendRefs: [{ONE}]\ntimeouts: {{request: 0s, backendRequest: 5s}}")
        assert result.errors == []
        assert (rule.request_timeout, rule.backend_timeout) == (0.0, 5.0)
