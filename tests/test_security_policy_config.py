"""SecurityPolicy in config: fields validated with file/object/field, the most specific policy wins a rule whole,
same-level conflicts to the oldest, mechanisms not served yet fail closed (the rule answers 500), `gw check`."""

from __future__ import annotations

import base64
import hashlib
import textwrap
from pathlib import Path
from typing import Any

import pytest

from gw.cli import main
from gw.config import compile_resources
from gw.config.parse import parse_documents

GATEWAY = "gateway.networking.k8s.io/v1"
BASE = [
    {"apiVersion": GATEWAY, "kind": "GatewayClass", "metadata": {"name": "gw"},
     "spec": {"controllerName": "gw.dev/gateway-controller"}},
    {"apiVersion": GATEWAY, "kind": "Gateway", "metadata": {"name": "edge"},
     "spec": {"gatewayClassName": "gw", "listeners": [{"name": "http", "port": 8080, "protocol": "HTTP"}]}},
    {"apiVersion": "gw.dev/v1alpha1", "kind": "Backend", "metadata": {"name": "app"},
     "spec": {"endpoints": [{"address": "127.0.0.1", "port": 9}]}},
    {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "keys"},
     "stringData": {"alice": "key-a", "bob": "key-b"}},
    {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "users"},
     "stringData": {".htpasswd": "carol:{SHA}" + base64.b64encode(hashlib.sha1(b"pw").digest()).decode() + "\n"}},
]  # fmt: skip
APP_REF = {"group": "gw.dev", "kind": "Backend", "name": "app"}
API_KEY = {"credentialRefs": [{"name": "keys"}], "extractFrom": [{"headers": ["X-Api-Key"]}]}


def route(name: str, *rule_names: str) -> dict[str, Any]:
    rules = [
        {"name": n, "matches": [{"path": {"type": "PathPrefix", "value": f"/{name}/{n}"}}], "backendRefs": [APP_REF]}
        for n in rule_names
    ]
    return {"apiVersion": GATEWAY, "kind": "HTTPRoute", "metadata": {"name": name},
            "spec": {"parentRefs": [{"name": "edge"}], "rules": rules}}  # fmt: skip


def policy(name: str, targets: list[dict[str, Any]], created: str | None = None, **spec: Any) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if created:
        meta["creationTimestamp"] = created
    return {"apiVersion": "gw.dev/v1alpha1", "kind": "SecurityPolicy", "metadata": meta,
            "spec": {"targetRefs": targets, **spec}}  # fmt: skip


def on(kind: str, name: str, section: str | None = None) -> dict[str, Any]:
    return {"group": "gateway.networking.k8s.io", "kind": kind, "name": name,
            **({"sectionName": section} if section else {})}  # fmt: skip


def compiled(*docs: dict[str, Any]) -> Any:
    resources, errors = parse_documents([("sec.yaml", d) for d in [*BASE, *docs]])
    return compile_resources(resources, errors=errors)


def rules(result: Any) -> dict[str, Any]:
    return {f"{r.route}/{r.name}": r for r in result.config.rules}


def conditions(result: Any, name: str) -> dict[str, Any]:
    return {c.type: c for c in result.conditions[f"SecurityPolicy default/{name}"]}


class TestParse:
    def test_api_key_auth_reads_its_secrets_and_sources(self) -> None:
        spec = {**API_KEY, "extractFrom": [{"headers": ["X-Api-Key"]}, {"params": ["key"]}, {"cookies": ["k"]}],
                "forwardClientIDHeader": "X-Client", "sanitize": True}  # fmt: skip
        result = compiled(route("api", "a"), policy("p", [on("HTTPRoute", "api")], apiKeyAuth=spec))
        assert result.errors == []
        security = rules(result)["default/api/a"].security
        assert security.api_keys == {"alice": b"key-a", "bob": b"key-b"}
        sources = security.api_key_auth.extract_from
        assert [s.headers for s in sources] == [("x-api-key",), (), ()]
        assert [s.params for s in sources] == [(), ("key",), ()]
        assert [s.cookies for s in sources] == [(), (), ("k",)]
        assert security.api_key_auth.forward_client_id_header == "x-client"
        assert security.api_key_auth.sanitize

    def test_basic_auth_reads_the_htpasswd_secret(self) -> None:
        basic = {"users": {"name": "users"}}
        result = compiled(route("api", "a"), policy("p", [on("HTTPRoute", "api")], basicAuth=basic))
        assert result.errors == []
        assert list(rules(result)["default/api/a"].security.users) == ["carol"]

    def test_an_unknown_field_is_refused_by_name_and_the_rule_answers_500(self) -> None:
        result = compiled(route("api", "a"), policy("p", [on("HTTPRoute", "api")], apiKeyAuth=API_KEY, apiKey={}))
        assert [(e.obj, e.field) for e in result.errors] == [("SecurityPolicy default/p", "spec.apiKey")]
        assert "did you mean 'apiKeyAuth'" in result.errors[0].message
        assert "spec.apiKey" in rules(result)["default/api/a"].invalid_reason
        assert conditions(result, "p")["Accepted"].status is False

    def test_a_bad_field_names_its_path(self) -> None:
        bad = {**API_KEY, "extractFrom": [{"headers": ["x"], "params": ["y"]}]}
        result = compiled(route("api", "a"), policy("p", [on("HTTPRoute", "api")], apiKeyAuth=bad))
        assert [(e.field, e.message) for e in result.errors] == [
            ("spec.apiKeyAuth.extractFrom[0]", "exactly one of headers, params, or cookies must be specified")
        ]

    @pytest.mark.parametrize(
        ("section", "value"),
        [("cors", {"allowOrigins": ["https://a.example"]}), ("csrf", {})],
    )  # fmt: skip
    def test_a_mechanism_not_served_yet_fails_closed(self, section: str, value: Any) -> None:
        result = compiled(route("api", "a"), policy("p", [on("HTTPRoute", "api")], **{section: value}))
        assert [(e.field, e.message.endswith("not served by gw yet")) for e in result.errors] == [
            (f"spec.{section}", True)
        ]
        rule = rules(result)["default/api/a"]
        assert "not served by gw yet" in rule.invalid_reason and f"spec.{section}" in rule.invalid_reason
        assert conditions(result, "p")["Accepted"].reason == "Invalid"

    @pytest.mark.parametrize(
        ("rule", "field", "message"),
        [({"action": "Allow", "principal": {}}, "principal",
          "at least one of clientCIDRs, jwt, headers, or clientIPGeoLocations must be specified"),
         ({"action": "Allow", "principal": {"clientCIDRs": ["10.0.0.0/8"]}, "operation": {}}, "operation",
          "at least one of methods or path must be specified")],
    )  # fmt: skip
    def test_an_empty_principal_or_operation_is_refused_not_matched_by_every_request(
        self, rule: dict[str, Any], field: str, message: str
    ) -> None:
        result = compiled(route("api", "a"), policy("p", [on("HTTPRoute", "api")], authorization={"rules": [rule]}))
        assert [(e.field, e.message) for e in result.errors] == [(f"spec.authorization.rules[0].{field}", message)]
        assert "is invalid" in rules(result)["default/api/a"].invalid_reason

    def test_a_jwt_principal_without_the_policys_jwt_provider_fails_closed(self) -> None:
        authz = {"rules": [{"action": "Allow", "principal": {"jwt": {"provider": "p", "scopes": ["read"]}}}]}
        result = compiled(route("api", "a"), policy("p", [on("HTTPRoute", "api")], authorization=authz))
        assert [(e.field, e.message) for e in result.errors] == [
            ("spec.authorization.rules[0].principal.jwt.provider", "'p' is not a provider of this policy's jwt")
        ]
        assert "spec.authorization.rules[0].principal.jwt" in rules(result)["default/api/a"].invalid_reason

    def test_a_missing_secret_fails_closed(self) -> None:
        spec = {**API_KEY, "credentialRefs": [{"name": "nope"}]}
        result = compiled(route("api", "a"), policy("p", [on("HTTPRoute", "api")], apiKeyAuth=spec))
        assert [(e.field, e.message) for e in result.errors] == [
            ("spec.apiKeyAuth.credentialRefs[0]", "Secret default/nope not found")
        ]
        assert "Secret default/nope not found" in rules(result)["default/api/a"].invalid_reason

    def test_an_unsupported_htpasswd_entry_is_named_without_its_hash(self) -> None:
        secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "md5"},
                  "stringData": {".htpasswd": "dave:$apr1$abc$secrethash\n"}}  # fmt: skip
        basic = {"users": {"name": "md5"}}
        result = compiled(route("api", "a"), secret, policy("p", [on("HTTPRoute", "api")], basicAuth=basic))
        assert len(result.errors) == 1
        message = result.errors[0].message
        assert "line 1: user 'dave': an MD5 ($apr1$) entry" in message and "secrethash" not in message

    def test_authorization_default_action_is_deny(self) -> None:
        authz = {"rules": [{"action": "Allow", "principal": {"clientCIDRs": ["10.0.0.0/8"]}}]}
        result = compiled(route("api", "a"), policy("p", [on("HTTPRoute", "api")], authorization=authz))
        assert rules(result)["default/api/a"].security.authorization.default_action == "Deny"


class TestAttach:
    def test_the_most_specific_policy_wins_a_rule_whole(self) -> None:
        result = compiled(
            route("api", "a", "b"),
            policy("gw-wide", [on("Gateway", "edge")], basicAuth={"users": {"name": "users"}}),
            policy("route", [on("HTTPRoute", "api")], apiKeyAuth=API_KEY),
            policy("rule", [on("HTTPRoute", "api", "b")], authorization={"defaultAction": "Allow"}),
        )
        assert result.errors == []
        a, b = rules(result)["default/api/a"].security, rules(result)["default/api/b"].security
        assert (a.policy, a.basic_auth, a.api_key_auth is not None) == ("default/route", None, True)
        # Not merged: rule b has the rule policy's authorization and no authentication at all.
        assert (b.policy, b.api_key_auth, b.basic_auth) == ("default/rule", None, None)
        assert "Overridden" in conditions(result, "gw-wide")
        assert "SecurityPolicy default/rule wins HTTPRoute default/api rule b" in conditions(result, "route")[
            "Overridden"
        ].message

    def test_same_level_policies_conflict_and_the_oldest_wins(self) -> None:
        result = compiled(
            route("api", "a"),
            policy("young", [on("HTTPRoute", "api")], "2026-02-01T00:00:00Z", apiKeyAuth=API_KEY),
            policy("old", [on("HTTPRoute", "api")], "2026-01-01T00:00:00Z", basicAuth={"users": {"name": "users"}}),
        )
        assert rules(result)["default/api/a"].security.policy == "default/old"
        young = conditions(result, "young")
        assert young["Conflicted"].message.startswith("SecurityPolicy default/old wins HTTPRoute default/api rule a")
        assert young["Accepted"].status is False
        assert conditions(result, "old")["Accepted"].status is True

    def test_a_route_without_a_policy_has_no_security(self) -> None:
        secured = policy("p", [on("HTTPRoute", "api")], apiKeyAuth=API_KEY)
        result = compiled(route("api", "a"), route("open", "x"), secured)
        assert rules(result)["default/open/x"].security is None

    def test_a_missing_target_is_reported(self) -> None:
        result = compiled(route("api", "a"), policy("p", [on("HTTPRoute", "nope")], apiKeyAuth=API_KEY))
        assert [(e.field, e.message) for e in result.errors] == [
            ("spec.targetRefs[0]", "HTTPRoute default/nope is not served by this gw (TargetNotFound)")
        ]
        assert conditions(result, "p")["Accepted"].reason == "TargetNotFound"


CHECKED = """\
    apiVersion: gateway.networking.k8s.io/v1
    kind: GatewayClass
    metadata: {name: gw}
    spec: {controllerName: gw.dev/gateway-controller}
    ---
    apiVersion: gateway.networking.k8s.io/v1
    kind: Gateway
    metadata: {name: edge}
    spec:
      gatewayClassName: gw
      listeners: [{name: http, port: 8080, protocol: HTTP}]
    ---
    apiVersion: gw.dev/v1alpha1
    kind: Backend
    metadata: {name: app}
    spec: {endpoints: [{address: 127.0.0.1, port: 9}]}
    ---
    apiVersion: gateway.networking.k8s.io/v1
    kind: HTTPRoute
    metadata: {name: api}
    spec:
      parentRefs: [{name: edge}]
      rules: [{name: main, backendRefs: [{group: gw.dev, kind: Backend, name: app}]}]
    ---
    apiVersion: v1
    kind: Secret
    metadata: {name: keys}
    stringData: {alice: key-a}
    ---
    apiVersion: gw.dev/v1alpha1
    kind: SecurityPolicy
    metadata: {name: keys}
    spec:
      targetRefs: [{group: gateway.networking.k8s.io, kind: HTTPRoute, name: api}]
      apiKeyAuth:
        credentialRefs: [{name: keys}]
        extractFrom: [{headers: [x-api-key]}]
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

    def test_gw_check_shows_accepted_and_the_attachment(self, tmp_path, capsys) -> None:
        code, out, _ = self.check(tmp_path, capsys, CHECKED)
        assert code == 0, out
        assert (
            "SecurityPolicy default/keys: Accepted=True (Accepted): attached to 1 rule: HTTPRoute default/api rule main"
        ) in out.splitlines()

    def test_gw_check_accepts_recompute_route(self, tmp_path, capsys) -> None:
        jwks = '{"keys": [{"kty": "OKP", "crv": "Ed25519", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}]}'
        text = CHECKED + (
            "      jwt: {providers: [{name: idp, recomputeRoute: true, localJWKS: {inline: '" + jwks + "'},\n"
            "             claimToHeaders: [{header: x-user, claim: sub}]}]}\n"
        )
        code, out, _ = self.check(tmp_path, capsys, text)
        assert code == 0, out
        assert "SecurityPolicy default/keys: Accepted=True (Accepted)" in out
