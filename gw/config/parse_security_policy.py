"""Parse SecurityPolicy objects (gw.config.security_policy has the shape), every problem naming its field.

A policy written wrong is not dropped quietly: it comes back with `invalid` set (and its errors
recorded), so the rules it targets answer 500 instead of going out unauthenticated; parse_documents
lists it as rejected, so a reload falls back to its running version when there is one.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from gw.config import fields as f
from gw.config import validate as v
from gw.config.parse_ext_auth import parse_ext_auth
from gw.config.parse_gateway import _backend_ref
from gw.config.parse_jwt import parse_jwt
from gw.config.parse_oidc import parse_oidc
from gw.config.parse_targets import refuse_namespace
from gw.config.ratelimit import TargetRef
from gw.config.reader import Reader
from gw.config.resources import GATEWAY_GROUP, Meta
from gw.config.security_policy import (
    ALLOW,
    DENY,
    STRING,
    STRING_ARRAY,
    APIKeyAuth,
    Authorization,
    AuthorizationRule,
    BasicAuth,
    ClaimMatch,
    ExtractFrom,
    HeaderMatch,
    JWTPrincipal,
    SecretName,
    SecurityPolicy,
)

TARGET_KINDS = ("Gateway", "HTTPRoute")
OTHER_TARGET_KINDS = ("GRPCRoute", "TCPRoute", "ListenerSet")  # Envoy Gateway's, not served by gw
# Spec sections gw reads past: a policy setting one makes the rules it wins answer 500.
UNSERVED = {
    "cors": "CORS in a SecurityPolicy (an HTTPRoute CORS filter is served)",
    "csrf": "CSRF protection",
}
MAX_RULES = 256


def parse_security_policy(r: Reader, meta: Meta, spec: dict[str, Any], obj: Any, field: str) -> SecurityPolicy | None:
    start = len(r.errors)
    r.map(obj, field.removesuffix("spec").rstrip("."), {"apiVersion", "kind", "metadata", "spec", "status"})
    r.map(spec, field, f.SECURITY_POLICY_SPEC)
    before_targets = r.count
    targets = _targets(r, spec, field)
    if r.count != before_targets or not targets:
        return None  # nothing to fail closed on: the errors say why
    for name in ("targetRef", "targetSelectors", "mergeType"):
        if spec.get(name) is not None:
            r.error(f"{field}.{name}", "is not served by gw yet (use targetRefs; the most specific policy wins whole)")
    unserved = []
    for name, what in UNSERVED.items():
        if spec.get(name) is not None:
            r.map(spec[name], f"{field}.{name}")
            unserved.append(f"{field}.{name} ({what})")
    api_key = _api_key_auth(r, spec.get("apiKeyAuth"), f"{field}.apiKeyAuth")
    basic = _basic_auth(r, spec.get("basicAuth"), f"{field}.basicAuth")
    jwt = parse_jwt(r, spec["jwt"], f"{field}.jwt") if spec.get("jwt") is not None else None
    # The providers a jwt principal may name (None: the jwt section is wrong, its errors say so).
    providers = {p.name for p in jwt.providers} if jwt is not None else None if spec.get("jwt") is not None else set()
    authorization = _authorization(r, spec.get("authorization"), f"{field}.authorization", unserved, providers)
    ext_auth = None
    if spec.get("extAuth") is not None:

        def object_ref(r: Reader, raw: Any, ref_field: str, i: int) -> Any:
            return _backend_ref(r, meta, raw, ref_field, i, prefix=None)

        ext_auth = parse_ext_auth(r, spec["extAuth"], f"{field}.extAuth", object_ref, unserved)
        for ref in ext_auth.refs if ext_auth is not None else ():
            if ref.namespace != meta.namespace:
                r.error(f"{field}.extAuth.http", f"{ref.label}: a backend in another namespace (ReferenceGrant) "
                        "is not served by gw yet")  # fmt: skip
    oidc = parse_oidc(r, spec["oidc"], f"{field}.oidc", unserved) if spec.get("oidc") is not None else None
    mechanisms = (api_key, basic, jwt, authorization, ext_auth, oidc)
    if not unserved and all(m is None for m in mechanisms) and len(r.errors) == start:
        r.error(field, "sets no mechanism (apiKeyAuth, basicAuth, jwt, extAuth, oidc, authorization)")
    invalid = None
    if len(r.errors) != start:
        first = r.errors[start]
        invalid = f"{meta.label} is invalid: {first.field}: {first.message}"
    return SecurityPolicy(meta, targets, api_key, basic, authorization, jwt, ext_auth, tuple(unserved), invalid, oidc)


def _targets(r: Reader, spec: dict[str, Any], field: str) -> tuple[TargetRef, ...]:
    given = spec.get("targetRefs")
    raw = r.list(given, f"{field}.targetRefs")
    if not raw and (given is None or isinstance(given, list)):
        r.error(f"{field}.targetRefs", "is required: at least one Gateway, HTTPRoute or HTTPRoute rule")
    targets = []
    for i, t in enumerate(raw):
        t_field = f"{field}.targetRefs[{i}]"
        t = r.map(t, t_field, f.POLICY_TARGET_REF)
        if t.get("kind") in OTHER_TARGET_KINDS:
            r.error(f"{t_field}.kind", f"{t['kind']!r}: gw serves HTTPRoutes; a SecurityPolicy targets a Gateway, "
                    "an HTTPRoute or one of its rules")  # fmt: skip
            continue
        group = r.str(t, "group", t_field, default=GATEWAY_GROUP)
        kind = r.str(t, "kind", t_field, required=True, choices=TARGET_KINDS)
        name = r.str(t, "name", t_field, required=True, check=v.check_object_name)
        section = r.str(t, "sectionName", t_field, check=v.check_section_name)
        if group != GATEWAY_GROUP:
            r.error(f"{t_field}.group", f"{group!r}: a SecurityPolicy targets gateway.networking.k8s.io kinds")
        refuse_namespace(r, t, t_field)
        if section is not None and kind == "Gateway":
            r.error(f"{t_field}.sectionName", "a listener section is not served by gw yet: target a Gateway or route")
        if kind and name:
            targets.append(TargetRef(GATEWAY_GROUP, kind, name, section, i))
    return tuple(targets)


def _secret(r: Reader, raw: Any, field: str) -> SecretName | None:
    ref = r.map(raw, field, f.SECRET_REF)
    if not ref:
        r.error(field, "is required: a Secret reference ({name: ...})")
        return None
    group = r.str(ref, "group", field, default="")
    kind = r.str(ref, "kind", field, default="Secret")
    name = r.str(ref, "name", field, required=True, check=v.check_object_name)
    if group not in ("", "core") or kind != "Secret":
        r.error(field, f"{kind} ({group or 'core'}) is not a Secret")
        return None
    if ref.get("namespace") is not None:
        r.error(f"{field}.namespace", "a Secret in another namespace (ReferenceGrant) is not served by gw yet")
        return None
    return SecretName(name, field) if name else None


def _header_name(r: Reader, obj: dict[str, Any], key: str, field: str) -> str | None:
    name = r.str(obj, key, field, check=v.check_header_name)
    return name.lower() if name else None


def _api_key_auth(r: Reader, raw: Any, field: str) -> APIKeyAuth | None:
    if raw is None:
        return None
    spec = r.map(raw, field, f.API_KEY_AUTH)
    refs_raw = r.list(spec.get("credentialRefs"), f"{field}.credentialRefs")
    if not refs_raw:
        r.error(f"{field}.credentialRefs", "is required: at least one Secret of client id → key")
    refs = tuple(s for i, ref in enumerate(refs_raw) if (s := _secret(r, ref, f"{field}.credentialRefs[{i}]")))
    sources_raw = r.list(spec.get("extractFrom"), f"{field}.extractFrom")
    if not sources_raw:
        r.error(f"{field}.extractFrom", "is required: at least one of headers, params, cookies")
    sources = []
    for i, item in enumerate(sources_raw):
        s_field = f"{field}.extractFrom[{i}]"
        item = r.map(item, s_field, f.EXTRACT_FROM)
        given = [k for k in ("headers", "params", "cookies") if item.get(k) is not None]
        if len(given) != 1:
            r.error(s_field, "exactly one of headers, params, or cookies must be specified")
            continue
        names = []
        for j, name in enumerate(r.list(item[given[0]], f"{s_field}.{given[0]}")):
            n_field = f"{s_field}.{given[0]}[{j}]"
            if not isinstance(name, str) or not name:
                r.error(n_field, "must be a non-empty string")
            elif given[0] == "headers" and (problem := v.check_header_name(name)):
                r.error(n_field, problem)
            else:
                names.append(name.lower() if given[0] == "headers" else name)
        if not names:
            r.error(f"{s_field}.{given[0]}", "must name at least one")
        sources.append(ExtractFrom(**{given[0]: tuple(names)}))
    forward = _header_name(r, spec, "forwardClientIDHeader", field)
    sanitize = spec.get("sanitize", False)
    if not isinstance(sanitize, bool):
        r.error(f"{field}.sanitize", "must be true or false")
        sanitize = False
    return APIKeyAuth(refs, tuple(sources), forward, sanitize)


def _basic_auth(r: Reader, raw: Any, field: str) -> BasicAuth | None:
    if raw is None:
        return None
    spec = r.map(raw, field, f.BASIC_AUTH)
    users = _secret(r, spec.get("users"), f"{field}.users")
    forward = _header_name(r, spec, "forwardUsernameHeader", field)
    return BasicAuth(users, forward) if users is not None else None


def _authorization(
    r: Reader, raw: Any, field: str, unserved: list[str], providers: set[str] | None
) -> Authorization | None:
    if raw is None:
        return None
    spec = r.map(raw, field, f.AUTHORIZATION)
    default = r.str(spec, "defaultAction", field, default=DENY, choices=(ALLOW, DENY)) or DENY
    raw_rules = r.list(spec.get("rules"), f"{field}.rules")
    if len(raw_rules) > MAX_RULES:
        r.error(f"{field}.rules", f"at most {MAX_RULES} rules")
    rules = []
    for i, item in enumerate(raw_rules[:MAX_RULES]):
        rule_field = f"{field}.rules[{i}]"
        item = r.map(item, rule_field, f.AUTHORIZATION_RULE)
        name = r.str(item, "name", rule_field, default=str(i)) or str(i)
        action = r.str(item, "action", rule_field, required=True, choices=(ALLOW, DENY))
        if item.get("cel") is not None:
            unserved.append(f"{rule_field}.cel (CEL expressions)")
        if item.get("principal") is None and item.get("cel") is None:
            r.error(rule_field, "at least one of principal or cel must be specified")
        operation = r.map(item.get("operation"), f"{rule_field}.operation", f.AUTHORIZATION_OPERATION)
        if operation.get("path") is not None:
            unserved.append(f"{rule_field}.operation.path (path matches in authorization)")
        methods = tuple(
            m for j, m in enumerate(r.list(operation.get("methods"), f"{rule_field}.operation.methods"))
            if _method(r, m, f"{rule_field}.operation.methods[{j}]")
        )  # fmt: skip
        # `{}` too: an empty operation or principal would match every request (Envoy Gateway refuses it).
        if item.get("operation") is not None and not operation.get("methods") and operation.get("path") is None:
            r.error(f"{rule_field}.operation", "at least one of methods or path must be specified")
        principal = r.map(item.get("principal"), f"{rule_field}.principal", f.PRINCIPAL)
        p_field = f"{rule_field}.principal"
        jwt = _jwt_principal(r, principal.get("jwt"), f"{p_field}.jwt")
        if jwt is not None and providers is not None and jwt.provider not in providers:
            # Envoy Gateway: a jwt principal reads the token this policy's own jwt verified.
            r.error(f"{p_field}.jwt.provider", f"{jwt.provider!r} is not a provider of this policy's jwt")
        if principal.get("clientIPGeoLocations") is not None:
            unserved.append(f"{p_field}.clientIPGeoLocations (geolocation)")
        cidrs = []
        for j, cidr in enumerate(r.list(principal.get("clientCIDRs"), f"{p_field}.clientCIDRs")):
            try:
                cidrs.append(ipaddress.ip_network(cidr, strict=False))
            except (TypeError, ValueError):
                r.error(f"{p_field}.clientCIDRs[{j}]", f"{cidr!r} is not a CIDR range")
        headers = []
        for j, h in enumerate(r.list(principal.get("headers"), f"{p_field}.headers")):
            h_field = f"{p_field}.headers[{j}]"
            h = r.map(h, h_field, f.AUTHORIZATION_HEADER_MATCH)
            hname = r.str(h, "name", h_field, required=True, check=v.check_header_name)
            values = r.list(h.get("values"), f"{h_field}.values")
            if not values or not all(isinstance(x, str) for x in values):
                r.error(f"{h_field}.values", "is required: a list of strings, one of which the header must equal")
            elif hname:
                headers.append(HeaderMatch(hname.lower(), tuple(values)))
        if item.get("principal") is not None and not any(principal.get(k) for k in f.PRINCIPAL):
            r.error(p_field, "at least one of clientCIDRs, jwt, headers, or clientIPGeoLocations must be specified")
        if action is not None:
            rules.append(AuthorizationRule(name, action, tuple(cidrs), tuple(headers), methods, jwt))
    return Authorization(tuple(rules), default)


def _jwt_principal(r: Reader, raw: Any, field: str) -> JWTPrincipal | None:
    if raw is None:
        return None
    spec = r.map(raw, field, f.JWT_PRINCIPAL)
    provider = r.str(spec, "provider", field, required=True)
    claims = []
    for i, item in enumerate(r.list(spec.get("claims"), f"{field}.claims")):
        c_field = f"{field}.claims[{i}]"
        item = r.map(item, c_field, f.JWT_CLAIM_MATCH)
        name = r.str(item, "name", c_field, required=True)
        kind = r.str(item, "valueType", c_field, default=STRING, choices=(STRING, STRING_ARRAY)) or STRING
        values = r.list(item.get("values"), f"{c_field}.values")
        if not values or not all(isinstance(x, str) and x for x in values):
            r.error(f"{c_field}.values", "is required: a list of strings, one of which the claim must equal")
        elif name:
            claims.append(ClaimMatch(name, kind, tuple(values)))
    scopes = r.list(spec.get("scopes"), f"{field}.scopes")
    if not all(isinstance(x, str) and x and " " not in x for x in scopes):
        r.error(f"{field}.scopes", "must be a list of scopes (non-empty strings without spaces)")
        scopes = []
    if not spec.get("claims") and not spec.get("scopes"):
        r.error(field, "at least one of claims or scopes must be specified")
    return JWTPrincipal(provider, tuple(claims), tuple(scopes)) if provider else None


def _method(r: Reader, value: Any, field: str) -> bool:
    if not isinstance(value, str) or not value or not value.isupper() or not value.isalpha():
        r.error(field, f"{value!r} is not an HTTP method")
        return False
    return True
