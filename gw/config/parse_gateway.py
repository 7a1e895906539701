"""Parsers for the Gateway API kinds: GatewayClass, Gateway, HTTPRoute, ReferenceGrant."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from gw.config import fields
from gw.config import validate as v
from gw.config.frontend_tls import parse_frontend
from gw.config.parse_filters import parse_filters, parse_retry
from gw.config.reader import Reader, string_map
from gw.config.resources import (
    CORE_GROUP,
    GATEWAY_GROUP,
    MAX_BODY_SIZE_ANNOTATION,
    NO_FILTERS,
    BackendRefSpec,
    Gateway,
    GatewayClass,
    GrantFrom,
    GrantTo,
    HTTPRoute,
    LabelSelector,
    Listener,
    Meta,
    ParentRef,
    ReferenceGrant,
    RouteGroupKind,
    RouteRule,
    SecretRef,
)
from gw.config.session import parse_session_persistence
from gw.config.units import parse_duration, parse_quantity
from gw.routing.match import PATH_EXACT, PATH_PREFIX, PATH_REGEX, RouteMatch, ValueMatch
from gw.routing.paths import normal_route_path

# The API server's limits for an HTTPRoute (CRD maxItems and CEL rules of gateway-api v1).
MAX_RULES = 16
MAX_MATCHES = 64  # per rule
MAX_MATCHES_PER_ROUTE = 127  # "the total number of matches across all rules in a route must be less than 128"
MAX_BACKEND_REFS = 16


def parse_gateway_class(r: Reader, meta: Meta, spec: dict[str, Any], obj: Any, field: str) -> GatewayClass | None:
    name = r.str(spec, "controllerName", field, required=True)
    return GatewayClass(meta, name) if name is not None else None


def parse_gateway(r: Reader, meta: Meta, spec: dict[str, Any], obj: Any, field: str) -> Gateway | None:
    before = r.count
    class_name = r.str(spec, "gatewayClassName", field, required=True)
    raw_listeners = r.list(spec.get("listeners"), f"{field}.listeners")
    if not raw_listeners and r.count == before:
        r.error(f"{field}.listeners", "at least one listener is required")
    listeners = []
    for i, raw in enumerate(raw_listeners):
        listener = _listener(r, raw, f"{field}.listeners[{i}]", i, meta.namespace)
        if listener is not None:
            listeners.append(listener)
    client_ref = _backend_tls(r, spec.get("tls"), f"{field}.tls", meta.namespace)
    frontend_before = r.count
    frontend = None
    if isinstance(spec.get("tls"), dict):
        frontend = parse_frontend(r, spec["tls"].get("frontend"), f"{field}.tls.frontend")
    if class_name is None or r.count != frontend_before:
        return None  # a half-read frontend would verify clients otherwise than written (or not at all)
    return Gateway(meta, class_name, tuple(listeners), client_ref, frontend)


def _backend_tls(r: Reader, raw: Any, field: str, namespace: str) -> SecretRef | None:
    """spec.tls.backend.clientCertificateRef."""
    tls = r.map(raw, field, fields.GATEWAY_TLS)
    b_field = f"{field}.backend"
    backend = r.map(tls.get("backend"), b_field, fields.GATEWAY_BACKEND_TLS)
    if backend.get("clientCertificateRef") is None:
        return None
    c_field = f"{b_field}.clientCertificateRef"
    ref = r.map(backend["clientCertificateRef"], c_field, fields.SECRET_REF)
    name = r.str(ref, "name", c_field, required=True, check=v.check_object_name)
    if name is None:
        return None
    return SecretRef(
        name,
        r.str(ref, "namespace", c_field, default=namespace) or namespace,
        r.str(ref, "group", c_field, default=CORE_GROUP) or CORE_GROUP,
        r.str(ref, "kind", c_field, default="Secret") or "Secret",
    )


def _listener(r: Reader, raw: Any, field: str, index: int, namespace: str) -> Listener | None:
    before = r.count
    raw = r.map(raw, field, fields.LISTENER)
    name = r.str(raw, "name", field, required=True, check=v.check_section_name)
    port = r.int(raw, "port", field, required=True, lo=1, hi=65535)
    protocol = r.str(raw, "protocol", field, required=True)
    hostname = r.str(raw, "hostname", field, check=v.check_hostname)
    allowed = r.map(raw.get("allowedRoutes"), f"{field}.allowedRoutes", fields.ALLOWED_ROUTES)
    namespaces = r.map(allowed.get("namespaces"), f"{field}.allowedRoutes.namespaces", fields.ROUTE_NAMESPACES)
    ns_field = f"{field}.allowedRoutes.namespaces"
    allowed_from = r.str(namespaces, "from", ns_field, default="Same", choices=("All", "Same", "Selector"))
    selector = None
    if allowed_from == "Selector":
        if namespaces.get("selector") is None:
            r.error(f"{ns_field}.selector", "is required when from is Selector")
        else:
            selector = _selector(r, namespaces.get("selector"), f"{ns_field}.selector")
    kinds = []
    for i, k in enumerate(r.list(allowed.get("kinds"), f"{field}.allowedRoutes.kinds")):
        k_field = f"{field}.allowedRoutes.kinds[{i}]"
        k = r.map(k, k_field, fields.ROUTE_GROUP_KIND)
        kind = r.str(k, "kind", k_field, required=True)
        group = r.str(k, "group", k_field, default=GATEWAY_GROUP)
        if kind is not None and group is not None:
            kinds.append(RouteGroupKind(group, kind))
    tls_mode, cert_refs = _listener_tls(r, raw, field, protocol, namespace)
    if r.count != before or name is None or port is None or protocol is None:
        return None
    return Listener(
        name, port, protocol, hostname, allowed_from or "Same", selector, tuple(kinds), index, tls_mode, cert_refs
    )


def _listener_tls(
    r: Reader, raw: dict[str, Any], field: str, protocol: str | None, namespace: str
) -> tuple[str | None, tuple[SecretRef, ...]]:
    """tls.mode and tls.certificateRefs, with the CRD's rules for HTTP and HTTPS listeners."""
    t_field = f"{field}.tls"
    if raw.get("tls") is None:
        if protocol == "HTTPS":
            r.error(t_field, "is required for an HTTPS listener (tls.certificateRefs names its certificates)")
        return None, ()
    if protocol == "HTTP":
        r.error(t_field, "must not be set for an HTTP listener")
        return None, ()
    tls = r.map(raw.get("tls"), t_field, fields.LISTENER_TLS)
    if tls.get("frontendValidation") is not None:
        # Refused, not ignored: a listener written to require client certificates must not serve
        # without. GEP-91 (v1.6) moved the field to the Gateway.
        r.error(
            f"{t_field}.frontendValidation",
            "is not part of the Gateway API at v1.6: client certificate validation is configured on the "
            "Gateway, spec.tls.frontend (default, perPort)",
        )
    mode = r.str(tls, "mode", t_field, default="Terminate", choices=("Terminate", "Passthrough"))
    if protocol == "HTTPS" and mode == "Passthrough":
        r.error(f"{t_field}.mode", "must be Terminate for an HTTPS listener (Passthrough is for TLS listeners)")
    refs = []
    for i, ref in enumerate(r.list(tls.get("certificateRefs"), f"{t_field}.certificateRefs")):
        c_field = f"{t_field}.certificateRefs[{i}]"
        ref = r.map(ref, c_field, fields.SECRET_REF)
        name = r.str(ref, "name", c_field, required=True)
        if name is None:
            continue
        refs.append(
            SecretRef(
                name,
                r.str(ref, "namespace", c_field, default=namespace) or namespace,
                r.str(ref, "group", c_field, default=CORE_GROUP) or CORE_GROUP,
                r.str(ref, "kind", c_field, default="Secret") or "Secret",
                i,
            )
        )
    if mode == "Terminate" and not tls.get("certificateRefs") and not tls.get("options"):
        r.error(f"{t_field}.certificateRefs", "certificateRefs or options must be specified when mode is Terminate")
    if len(refs) > 64:
        r.error(f"{t_field}.certificateRefs", "at most 64 entries")
    return mode, tuple(refs)


def _selector(r: Reader, raw: Any, field: str) -> LabelSelector:
    raw = r.map(raw, field, fields.LABEL_SELECTOR)
    labels = tuple(sorted(string_map(r, raw.get("matchLabels"), f"{field}.matchLabels").items()))
    expressions = []
    for i, e in enumerate(r.list(raw.get("matchExpressions"), f"{field}.matchExpressions")):
        e_field = f"{field}.matchExpressions[{i}]"
        e = r.map(e, e_field, fields.LABEL_SELECTOR_REQUIREMENT)
        key = r.str(e, "key", e_field, required=True)
        op = r.str(e, "operator", e_field, required=True, choices=("In", "NotIn", "Exists", "DoesNotExist"))
        values = tuple(str(x) for x in r.list(e.get("values"), f"{e_field}.values"))
        if key is not None and op is not None:
            expressions.append((key, op, values))
    return LabelSelector(labels, tuple(expressions))


def parse_http_route(r: Reader, meta: Meta, spec: dict[str, Any], obj: Any, field: str) -> HTTPRoute | None:
    before = r.count
    parents = []
    for i, raw in enumerate(r.list(spec.get("parentRefs"), f"{field}.parentRefs")):
        p_field = f"{field}.parentRefs[{i}]"
        raw = r.map(raw, p_field, fields.PARENT_REF)
        name = r.str(raw, "name", p_field, required=True)
        parents.append(
            ParentRef(
                name=name or "",
                namespace=r.str(raw, "namespace", p_field, default=meta.namespace) or meta.namespace,
                group=r.str(raw, "group", p_field, default=GATEWAY_GROUP) or GATEWAY_GROUP,
                kind=r.str(raw, "kind", p_field, default="Gateway") or "Gateway",
                section_name=r.str(raw, "sectionName", p_field),
                port=r.int(raw, "port", p_field, lo=1, hi=65535),
            )
        )
    hostnames = []
    for i, h in enumerate(r.list(spec.get("hostnames"), f"{field}.hostnames")):
        h_field = f"{field}.hostnames[{i}]"
        if not isinstance(h, str):
            r.error(h_field, "must be a string")
            continue
        problem = v.check_hostname(h)
        if problem:
            r.error(h_field, problem)
        else:
            hostnames.append(h)
    max_body = None
    if MAX_BODY_SIZE_ANNOTATION in meta.annotations:
        try:
            max_body = parse_quantity(meta.annotations[MAX_BODY_SIZE_ANNOTATION])
        except ValueError as exc:
            root = field.removesuffix("spec")
            r.error(f"{root}metadata.annotations[{MAX_BODY_SIZE_ANNOTATION}]", str(exc))
    if r.count != before:
        return None  # route-level problems: which hosts and gateways it means is unknown
    raw_rules = spec.get("rules")
    if raw_rules is None:
        raw_rules = [{}]  # the spec's default: one rule matching PathPrefix "/"
    raw_rules = r.list(raw_rules, f"{field}.rules")
    if len(raw_rules) > MAX_RULES:
        r.error(f"{field}.rules", f"has {len(raw_rules)} rules; at most {MAX_RULES} are allowed")
        return None
    rules = [_rule(r, meta, raw, f"{field}.rules[{i}]", i) for i, raw in enumerate(raw_rules)]
    rules_parsed = r.count
    named: dict[str, int] = {}
    for rule in rules:
        if rule.name is None:
            continue
        if rule.name in named:
            r.error(
                f"{field}.rules[{rule.index}].name",
                f"{rule.name!r} is also the name of rules[{named[rule.name]}]: rule names must be unique in a route",
            )
        named.setdefault(rule.name, rule.index)
    matches = sum(len(rule.matches) for rule in rules)
    if matches > MAX_MATCHES_PER_ROUTE:
        r.error(f"{field}.rules", f"has {matches} matches in all; at most {MAX_MATCHES_PER_ROUTE} are allowed")
    if r.count != rules_parsed:
        return None  # a route-level problem: the whole object is rejected, as the API server would
    return HTTPRoute(
        meta,
        tuple(parents),
        tuple(hostnames),
        tuple(rule for rule in rules if rule.invalid_reason is None),
        max_body,
        tuple(rule for rule in rules if rule.invalid_reason is not None),
    )


def _rule(r: Reader, meta: Meta, raw: Any, field: str, index: int) -> RouteRule:
    """One rule; a problem in it is recorded as its invalid_reason (the rule is then dropped)."""
    before = r.count
    raw = r.map(raw, field, fields.HTTP_ROUTE_RULE)
    name = r.str(raw, "name", field, check=v.check_rule_name)
    raw_matches = raw.get("matches")
    matches = []
    raw_matches = r.list(raw_matches, f"{field}.matches") if raw_matches is not None else [{}]
    if len(raw_matches) > MAX_MATCHES:
        r.error(f"{field}.matches", f"has {len(raw_matches)} matches; at most {MAX_MATCHES} are allowed")
    for i, m in enumerate(raw_matches):
        match = _match(r, m, f"{field}.matches[{i}]")
        if match is not None:
            matches.append(match)
    if r.count != before:
        return RouteRule(index, (), (), name, invalid_reason=_first_problem(r, before))
    # ReplacePrefixMatch needs the matched prefix: allowed only with exactly one PathPrefix match.
    prefix = matches[0].path if len(matches) == 1 and matches[0].path_type == PATH_PREFIX else None

    def object_ref(r: Reader, ref: Any, ref_field: str, i: int) -> BackendRefSpec | None:
        return _backend_ref(r, meta, ref, ref_field, i, prefix=None)

    filters = NO_FILTERS
    if raw.get("filters") is not None:
        filters = parse_filters(r, raw.get("filters"), f"{field}.filters", prefix=prefix, backend_ref=object_ref)
    refs = []
    raw_refs = r.list(raw.get("backendRefs"), f"{field}.backendRefs")
    if len(raw_refs) > MAX_BACKEND_REFS:
        r.error(f"{field}.backendRefs", f"has {len(raw_refs)} entries; at most {MAX_BACKEND_REFS} are allowed")
    for i, ref in enumerate(raw_refs):
        parsed = _backend_ref(r, meta, ref, f"{field}.backendRefs[{i}]", i, prefix=prefix, own_filters=True)
        if parsed is not None:
            refs.append(parsed)
    if filters.redirect is not None and raw.get("backendRefs"):
        r.error(f"{field}.backendRefs", "RequestRedirect filter must not be used together with backendRefs")
    retry = parse_retry(r, raw.get("retry"), f"{field}.retry") if raw.get("retry") is not None else None
    timeouts = r.map(raw.get("timeouts"), f"{field}.timeouts", fields.TIMEOUTS)
    request = _duration(r, timeouts, "request", f"{field}.timeouts")
    backend = _duration(r, timeouts, "backendRequest", f"{field}.timeouts")
    if request and backend and backend > request:
        r.error(f"{field}.timeouts.backendRequest", "must not be longer than timeouts.request")
    session = parse_session_persistence(r, raw.get("sessionPersistence"), f"{field}.sessionPersistence")
    return RouteRule(
        index=index,
        matches=tuple(matches),
        backend_refs=tuple(refs),
        name=name,
        request_timeout=request,
        backend_timeout=backend,
        invalid_reason=_first_problem(r, before) if r.count != before else None,
        filters=filters,
        retry=retry,
        session_persistence=session,
    )


def _first_problem(r: Reader, before: int) -> str:
    first = r.errors[len(r.errors) - (r.count - before)]
    return f"{first.field}: {first.message}"


def _duration(r: Reader, obj: dict[str, Any], key: str, field: str) -> float | None:
    raw = obj.get(key)
    if raw is None:
        return None
    try:
        return parse_duration(raw)
    except ValueError as exc:
        r.error(f"{field}.{key}", str(exc))
        return None


def _match(r: Reader, raw: Any, field: str) -> RouteMatch | None:
    before = r.count
    raw = r.map(raw, field, fields.HTTP_ROUTE_MATCH)
    path = r.map(raw.get("path"), f"{field}.path", fields.PATH_MATCH)
    path_type = r.str(path, "type", f"{field}.path", default=PATH_PREFIX, choices=(PATH_EXACT, PATH_PREFIX, PATH_REGEX))
    value = r.str(path, "value", f"{field}.path", default="/")
    if path_type is not None and value is not None:
        problem = v.check_path(path_type, value)
        if problem:
            r.error(f"{field}.path.value", problem)
    headers = _value_matches(r, raw.get("headers"), f"{field}.headers", v.check_header_name)
    query = _value_matches(r, raw.get("queryParams"), f"{field}.queryParams", None)
    method = r.str(raw, "method", field, choices=v.METHODS)
    if r.count != before or path_type is None or value is None:
        return None
    if path_type != PATH_REGEX:
        value = normal_route_path(value)  # the form requests are matched in: "/%7euser" is "/~user"
    return RouteMatch(path_type, value, method, headers, query)


def _value_matches(
    r: Reader, raw: Any, field: str, check_name: Callable[[str], str | None] | None
) -> tuple[ValueMatch, ...]:
    result = []
    for i, m in enumerate(r.list(raw, field)):
        m_field = f"{field}[{i}]"
        m = r.map(m, m_field, fields.VALUE_MATCH)
        kind = r.str(m, "type", m_field, default="Exact", choices=("Exact", "RegularExpression"))
        name = r.str(m, "name", m_field, required=True, check=check_name)
        value = r.str(m, "value", m_field, required=True)
        if kind == "RegularExpression" and value is not None:
            problem = v.check_regex(value)
            if problem:
                r.error(f"{m_field}.value", problem)
                continue
        if kind is not None and name is not None and value is not None:
            result.append(ValueMatch(name, value, kind))
    return tuple(result)


def _backend_ref(
    r: Reader, meta: Meta, raw: Any, field: str, index: int, *, prefix: str | None, own_filters: bool = False
) -> BackendRefSpec | None:
    before = r.count
    # A rule's backendRef (HTTPBackendRef) has a weight and filters; a mirror's has neither.
    raw = r.map(raw, field, fields.HTTP_BACKEND_REF if own_filters else fields.BACKEND_OBJECT_REF)
    name = r.str(raw, "name", field, required=True)
    group = r.str(raw, "group", field, default=CORE_GROUP)
    kind = r.str(raw, "kind", field, default="Service")
    namespace = r.str(raw, "namespace", field, default=meta.namespace)
    port = r.int(raw, "port", field, lo=1, hi=65535)
    weight = r.int(raw, "weight", field, default=1, lo=0, hi=1_000_000)
    if group == CORE_GROUP and kind == "Service" and raw.get("port") is None:
        r.error(f"{field}.port", "is required for a Service reference")
    filters = None
    if raw.get("filters") is not None:

        def object_ref(r: Reader, ref: Any, ref_field: str, i: int) -> BackendRefSpec | None:
            return _backend_ref(r, meta, ref, ref_field, i, prefix=None)

        filters = parse_filters(r, raw.get("filters"), f"{field}.filters", prefix=prefix, backend_ref=object_ref)
        if own_filters:
            # Redirect and CORS answer the client without a backend: meaningless per backendRef.
            for filter_type, present in (
                ("RequestRedirect", filters.redirect), ("CORS", filters.cors), ("ExternalAuth", filters.external_auth)
            ):  # fmt: skip
                if present is not None:
                    r.error(f"{field}.filters", f"{filter_type} cannot be applied to a single backendRef")
    if r.count != before or name is None:
        return None
    return BackendRefSpec(
        name, namespace or meta.namespace, group or "", kind or "Service", port, weight or 0, index, filters
    )


def parse_reference_grant(r: Reader, meta: Meta, spec: dict[str, Any], obj: Any, field: str) -> ReferenceGrant | None:
    froms, tos = [], []
    for i, f in enumerate(r.list(spec.get("from"), f"{field}.from")):
        f_field = f"{field}.from[{i}]"
        f = r.map(f, f_field, fields.REFERENCE_GRANT_FROM)
        group = r.str(f, "group", f_field, required=True)
        kind = r.str(f, "kind", f_field, required=True)
        namespace = r.str(f, "namespace", f_field, required=True)
        if group is not None and kind is not None and namespace is not None:
            froms.append(GrantFrom(group, kind, namespace))
    for i, t in enumerate(r.list(spec.get("to"), f"{field}.to")):
        t_field = f"{field}.to[{i}]"
        t = r.map(t, t_field, fields.REFERENCE_GRANT_TO)
        group = r.str(t, "group", t_field, required=True)
        kind = r.str(t, "kind", t_field, required=True)
        if group is not None and kind is not None:
            tos.append(GrantTo(group, kind, r.str(t, "name", t_field)))
    return ReferenceGrant(meta, tuple(froms), tuple(tos))
