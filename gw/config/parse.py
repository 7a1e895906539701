"""Parse YAML documents (plain dicts) into typed resources, collecting errors that name their field.

Rejection is as narrow as the problem: a bad object is dropped alone; in an HTTPRoute a rule whose
matches are unusable is left out, and a rule with any other problem is kept but marked invalid (it
answers 500, as the spec asks for rules that cannot be honoured) so its traffic does not silently
fall through to some other route.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Callable, Iterable
from typing import Any

from gw.config import validate as v
from gw.config.errors import ConfigError
from gw.config.resources import (
    CORE_GROUP,
    DISCOVERY_GROUP,
    GATEWAY_GROUP,
    GW_GROUP,
    MAX_BODY_SIZE_ANNOTATION,
    NAMESPACE_NAME_LABEL,
    SERVICE_NAME_LABEL,
    Backend,
    BackendRefSpec,
    EndpointSlice,
    Gateway,
    GatewayClass,
    GrantFrom,
    GrantTo,
    HTTPRoute,
    LabelSelector,
    Listener,
    Meta,
    Namespace,
    ParentRef,
    ReferenceGrant,
    Resource,
    Resources,
    RouteGroupKind,
    RouteRule,
    Service,
    ServicePort,
    SliceEndpoint,
    SlicePort,
    StaticEndpoint,
)
from gw.config.units import parse_duration, parse_quantity
from gw.routing.match import PATH_EXACT, PATH_PREFIX, PATH_REGEX, RouteMatch, ValueMatch

Document = tuple[str, Any]  # (file it came from, the parsed YAML document)

# Cluster-scoped kinds have no namespace; every other object defaults to "default".
_CLUSTER_SCOPED = frozenset({"GatewayClass", "Namespace"})
# Rule and listener fields of the spec that gw does not implement yet: refusing them loudly
# beats silently ignoring, say, a redirect.
_UNSUPPORTED_RULE_FIELDS = ("filters", "retry", "sessionPersistence")
_UNSUPPORTED_REF_FIELDS = ("filters",)


class Reader:
    """Typed access to one object's fields; every problem becomes a ConfigError naming the field."""

    def __init__(self, file: str, label: str, errors: list[ConfigError]) -> None:
        self.file = file
        self.label = label
        self.errors = errors
        self.count = 0  # errors recorded by this reader; callers compare before/after a section

    def error(self, field: str, message: str) -> None:
        self.errors.append(ConfigError(self.file, self.label, field, message))
        self.count += 1

    def map(self, value: Any, field: str) -> dict[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.error(field, f"must be a mapping, not {_type_name(value)}")
            return {}
        return value

    def list(self, value: Any, field: str) -> list[Any]:
        if value is None:
            return []
        if not isinstance(value, list):
            self.error(field, f"must be a list, not {_type_name(value)}")
            return []
        return value

    def str(
        self,
        obj: dict[str, Any],
        key: str,
        field: str,
        *,
        default: str | None = None,
        required: bool = False,
        check: Callable[[str], str | None] | None = None,
        choices: Iterable[str] | None = None,
    ) -> str | None:
        path = _join(field, key)
        value = obj.get(key)
        if value is None:
            if required:
                self.error(path, "is required")
            return default
        if not isinstance(value, str):
            self.error(path, f"must be a string, not {_type_name(value)}")
            return default
        if choices is not None and value not in choices:
            self.error(path, f"{value!r} is not one of {', '.join(sorted(choices))}")
            return default
        if check is not None:
            problem = check(value)
            if problem:
                self.error(path, problem)
                return default
        return value

    def int(
        self,
        obj: dict[str, Any],
        key: str,
        field: str,
        *,
        default: int | None = None,
        required: bool = False,
        lo: int | None = None,
        hi: int | None = None,
    ) -> int | None:
        path = _join(field, key)
        value = obj.get(key)
        if value is None:
            if required:
                self.error(path, "is required")
            return default
        if not isinstance(value, int) or isinstance(value, bool):
            self.error(path, f"must be an integer, not {_type_name(value)}")
            return default
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            self.error(path, f"{value} is out of range [{lo}, {hi}]")
            return default
        return value


def _join(field: str, key: str) -> str:
    return f"{field}.{key}" if field else key


def _type_name(value: Any) -> str:
    return {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean"}.get(
        type(value), type(value).__name__
    )


def parse_documents(documents: Iterable[Document | dict[str, Any]]) -> tuple[Resources, list[ConfigError]]:
    """Typed resources from YAML documents; a bare dict counts as coming from file "<memory>".

    `kind: List` documents are unpacked. Kinds gw does not read are listed in `ignored`.
    """
    resources = Resources()
    errors: list[ConfigError] = []
    for item in documents:
        file, doc = item if isinstance(item, tuple) else ("<memory>", item)
        for where, obj in _unpack(file, doc, "", errors):
            before = len(errors)
            parsed = parse_object(file, obj, errors, where)
            if parsed is None:
                if len(errors) == before:
                    resources.ignored.append(_describe(obj))
                continue
            resources.add(parsed)
    return resources, errors


def _unpack(file: str, doc: Any, where: str, errors: list[ConfigError]) -> list[tuple[str, Any]]:
    if doc is None:
        return []  # an empty document ("---" at the end of a file)
    if isinstance(doc, dict) and doc.get("kind") == "List":
        items = doc.get("items")
        if not isinstance(items, list):
            errors.append(ConfigError(file, "List", _join(where, "items"), "must be a list"))
            return []
        return [(f"items[{i}]", item) for i, item in enumerate(items)]
    return [(where, doc)]


def _group(api_version: Any) -> str | None:
    """ "gw.dev/v1alpha1" → "gw.dev", "v1" → "" (core); None when absent (accepted leniently)."""
    if not isinstance(api_version, str) or not api_version:
        return None
    group, sep, _ = api_version.rpartition("/")
    return group if sep else CORE_GROUP


def _describe(obj: Any) -> str:
    if not isinstance(obj, dict):
        return repr(obj)
    meta = obj.get("metadata") if isinstance(obj.get("metadata"), dict) else {}
    return f"{obj.get('kind')} {meta.get('namespace', 'default')}/{meta.get('name')}"


def parse_object(file: str, obj: Any, errors: list[ConfigError], where: str = "") -> Resource | None:
    """One object; None when its kind is not gw's or it is too broken to use (errors say why)."""
    if not isinstance(obj, dict):
        errors.append(ConfigError(file, "", where, f"a document must be a mapping, not {_type_name(obj)}"))
        return None
    kind = obj.get("kind")
    if not isinstance(kind, str) or not kind:
        errors.append(ConfigError(file, "", _join(where, "kind"), "is required"))
        return None
    parser = _PARSERS.get(kind)
    if parser is None or _group(obj.get("apiVersion")) not in (None, KIND_GROUPS[kind]):
        return None  # not a kind gw reads, or a same-named kind of another API group
    meta_raw = obj.get("metadata")
    name = meta_raw.get("name") if isinstance(meta_raw, dict) else None
    namespace = "" if kind in _CLUSTER_SCOPED else "default"
    if isinstance(meta_raw, dict) and isinstance(meta_raw.get("namespace"), str) and namespace:
        namespace = meta_raw["namespace"]
    label = f"{kind} {namespace}/{name}" if namespace else f"{kind} {name}"
    r = Reader(file, label, errors)
    prefix = f"{where}." if where else ""
    meta = _parse_meta(r, kind, meta_raw, namespace, prefix)
    if meta is None:
        return None
    before = r.count
    spec = r.map(obj.get("spec"), f"{prefix}spec")
    result = parser(r, meta, spec, obj, f"{prefix}spec")
    if result is None and r.count == before:
        r.error(f"{prefix}spec", "is not usable")
    return result


def _parse_meta(r: Reader, kind: str, raw: Any, namespace: str, prefix: str) -> Meta | None:
    field = f"{prefix}metadata"
    if not isinstance(raw, dict):
        r.error(field, "is required (with at least a name)")
        return None
    name = r.str(raw, "name", field, required=True, check=v.check_object_name)
    if name is None:
        return None
    if namespace and v.check_object_name(namespace):
        r.error(f"{field}.namespace", f"{namespace!r} is not a valid namespace name")
        return None
    labels = _string_map(r, raw.get("labels"), f"{field}.labels")
    annotations = _string_map(r, raw.get("annotations"), f"{field}.annotations")
    created = math.inf
    stamp = raw.get("creationTimestamp")
    if isinstance(stamp, dt.datetime):  # YAML turns unquoted timestamps into datetimes
        created = (stamp if stamp.tzinfo else stamp.replace(tzinfo=dt.UTC)).timestamp()
    elif isinstance(stamp, str):
        try:
            parsed = dt.datetime.fromisoformat(stamp.replace("Z", "+00:00"))
            created = (parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)).timestamp()
        except ValueError:
            r.error(f"{field}.creationTimestamp", f"{stamp!r} is not an RFC 3339 timestamp")
    elif stamp is not None:
        r.error(f"{field}.creationTimestamp", "must be an RFC 3339 timestamp")
    return Meta(kind, name, namespace, r.file, labels, annotations, created)


def _string_map(r: Reader, raw: Any, field: str) -> dict[str, str]:
    result: dict[str, str] = {}
    for key, value in r.map(raw, field).items():
        if not isinstance(value, str):
            r.error(f"{field}.{key}", "must be a string (quote numbers and booleans)")
            continue
        result[str(key)] = value
    return result


# --- Gateway API ---------------------------------------------------------------------------------


def _gateway_class(r: Reader, meta: Meta, spec: dict[str, Any], obj: Any, field: str) -> GatewayClass | None:
    name = r.str(spec, "controllerName", field, required=True)
    return GatewayClass(meta, name) if name is not None else None


def _gateway(r: Reader, meta: Meta, spec: dict[str, Any], obj: Any, field: str) -> Gateway | None:
    before = r.count
    class_name = r.str(spec, "gatewayClassName", field, required=True)
    raw_listeners = r.list(spec.get("listeners"), f"{field}.listeners")
    if not raw_listeners and r.count == before:
        r.error(f"{field}.listeners", "at least one listener is required")
    listeners = []
    for i, raw in enumerate(raw_listeners):
        listener = _listener(r, raw, f"{field}.listeners[{i}]", i)
        if listener is not None:
            listeners.append(listener)
    if class_name is None:
        return None
    return Gateway(meta, class_name, tuple(listeners))


def _listener(r: Reader, raw: Any, field: str, index: int) -> Listener | None:
    before = r.count
    raw = r.map(raw, field)
    name = r.str(raw, "name", field, required=True, check=v.check_section_name)
    port = r.int(raw, "port", field, required=True, lo=1, hi=65535)
    protocol = r.str(raw, "protocol", field, required=True)
    hostname = r.str(raw, "hostname", field, check=v.check_hostname)
    allowed = r.map(raw.get("allowedRoutes"), f"{field}.allowedRoutes")
    namespaces = r.map(allowed.get("namespaces"), f"{field}.allowedRoutes.namespaces")
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
        k = r.map(k, k_field)
        kind = r.str(k, "kind", k_field, required=True)
        group = r.str(k, "group", k_field, default=GATEWAY_GROUP)
        if kind is not None and group is not None:
            kinds.append(RouteGroupKind(group, kind))
    if r.count != before or name is None or port is None or protocol is None:
        return None
    return Listener(name, port, protocol, hostname, allowed_from or "Same", selector, tuple(kinds), index)


def _selector(r: Reader, raw: Any, field: str) -> LabelSelector:
    raw = r.map(raw, field)
    labels = tuple(sorted(_string_map(r, raw.get("matchLabels"), f"{field}.matchLabels").items()))
    expressions = []
    for i, e in enumerate(r.list(raw.get("matchExpressions"), f"{field}.matchExpressions")):
        e_field = f"{field}.matchExpressions[{i}]"
        e = r.map(e, e_field)
        key = r.str(e, "key", e_field, required=True)
        op = r.str(e, "operator", e_field, required=True, choices=("In", "NotIn", "Exists", "DoesNotExist"))
        values = tuple(str(x) for x in r.list(e.get("values"), f"{e_field}.values"))
        if key is not None and op is not None:
            expressions.append((key, op, values))
    return LabelSelector(labels, tuple(expressions))


def _http_route(r: Reader, meta: Meta, spec: dict[str, Any], obj: Any, field: str) -> HTTPRoute | None:
    before = r.count
    parents = []
    for i, raw in enumerate(r.list(spec.get("parentRefs"), f"{field}.parentRefs")):
        p_field = f"{field}.parentRefs[{i}]"
        raw = r.map(raw, p_field)
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
    rules = []
    for i, raw in enumerate(r.list(raw_rules, f"{field}.rules")):
        rule = _rule(r, meta, raw, f"{field}.rules[{i}]", i)
        if rule is not None:
            rules.append(rule)
    return HTTPRoute(meta, tuple(parents), tuple(hostnames), tuple(rules), max_body)


def _rule(r: Reader, meta: Meta, raw: Any, field: str, index: int) -> RouteRule | None:
    before = r.count
    raw = r.map(raw, field)
    raw_matches = raw.get("matches")
    matches = []
    for i, m in enumerate(r.list(raw_matches, f"{field}.matches") if raw_matches is not None else [{}]):
        match = _match(r, m, f"{field}.matches[{i}]")
        if match is not None:
            matches.append(match)
    if r.count != before:
        return None  # cannot place a rule whose matches are unusable
    problems = []
    name = r.str(raw, "name", field, check=v.check_rule_name)
    refs = []
    for i, ref in enumerate(r.list(raw.get("backendRefs"), f"{field}.backendRefs")):
        parsed = _backend_ref(r, meta, ref, f"{field}.backendRefs[{i}]", i)
        if parsed is not None:
            refs.append(parsed)
    timeouts = r.map(raw.get("timeouts"), f"{field}.timeouts")
    request = _duration(r, timeouts, "request", f"{field}.timeouts")
    backend = _duration(r, timeouts, "backendRequest", f"{field}.timeouts")
    if request and backend and backend > request:
        r.error(f"{field}.timeouts.backendRequest", "must not be longer than timeouts.request")
    for key in _UNSUPPORTED_RULE_FIELDS:
        if raw.get(key):
            r.error(f"{field}.{key}", f"{key} are not supported yet; the rule answers 500")
    if r.count != before:
        problems.append(f"rule {index} of {meta.label} is invalid: {r.errors[-1].field}: {r.errors[-1].message}")
    return RouteRule(
        index=index,
        matches=tuple(matches),
        backend_refs=tuple(refs),
        name=name,
        request_timeout=request,
        backend_timeout=backend,
        invalid_reason=problems[0] if problems else None,
    )


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
    raw = r.map(raw, field)
    path = r.map(raw.get("path"), f"{field}.path")
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
    return RouteMatch(path_type, value, method, headers, query)


def _value_matches(
    r: Reader, raw: Any, field: str, check_name: Callable[[str], str | None] | None
) -> tuple[ValueMatch, ...]:
    result = []
    for i, m in enumerate(r.list(raw, field)):
        m_field = f"{field}[{i}]"
        m = r.map(m, m_field)
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


def _backend_ref(r: Reader, meta: Meta, raw: Any, field: str, index: int) -> BackendRefSpec | None:
    before = r.count
    raw = r.map(raw, field)
    name = r.str(raw, "name", field, required=True)
    group = r.str(raw, "group", field, default=CORE_GROUP)
    kind = r.str(raw, "kind", field, default="Service")
    namespace = r.str(raw, "namespace", field, default=meta.namespace)
    port = r.int(raw, "port", field, lo=1, hi=65535)
    weight = r.int(raw, "weight", field, default=1, lo=0, hi=1_000_000)
    if group == CORE_GROUP and kind == "Service" and raw.get("port") is None:
        r.error(f"{field}.port", "is required for a Service reference")
    for key in _UNSUPPORTED_REF_FIELDS:
        if raw.get(key):
            r.error(f"{field}.{key}", f"{key} on backendRefs are not supported yet")
    if r.count != before or name is None:
        return None
    return BackendRefSpec(name, namespace or meta.namespace, group or "", kind or "Service", port, weight or 0, index)


def _reference_grant(r: Reader, meta: Meta, spec: dict[str, Any], obj: Any, field: str) -> ReferenceGrant | None:
    froms, tos = [], []
    for i, f in enumerate(r.list(spec.get("from"), f"{field}.from")):
        f_field = f"{field}.from[{i}]"
        f = r.map(f, f_field)
        group = r.str(f, "group", f_field, required=True)
        kind = r.str(f, "kind", f_field, required=True)
        namespace = r.str(f, "namespace", f_field, required=True)
        if group is not None and kind is not None and namespace is not None:
            froms.append(GrantFrom(group, kind, namespace))
    for i, t in enumerate(r.list(spec.get("to"), f"{field}.to")):
        t_field = f"{field}.to[{i}]"
        t = r.map(t, t_field)
        group = r.str(t, "group", t_field, required=True)
        kind = r.str(t, "kind", t_field, required=True)
        if group is not None and kind is not None:
            tos.append(GrantTo(group, kind, r.str(t, "name", t_field)))
    return ReferenceGrant(meta, tuple(froms), tuple(tos))


# --- Kubernetes core and gw's own kinds ----------------------------------------------------------


def _service(r: Reader, meta: Meta, spec: dict[str, Any], obj: Any, field: str) -> Service | None:
    ports = []
    for i, p in enumerate(r.list(spec.get("ports"), f"{field}.ports")):
        p_field = f"{field}.ports[{i}]"
        p = r.map(p, p_field)
        port = r.int(p, "port", p_field, required=True, lo=1, hi=65535)
        name = r.str(p, "name", p_field, default="") or ""
        target = p.get("targetPort")
        if target is not None and not isinstance(target, int | str):
            r.error(f"{p_field}.targetPort", "must be a port number or a port name")
            target = None
        protocol = r.str(p, "protocol", p_field, default="TCP") or "TCP"
        if port is not None:
            ports.append(ServicePort(port, name, target, protocol))
    return Service(meta, tuple(ports))


def _endpoint_slice(r: Reader, meta: Meta, spec: dict[str, Any], obj: Any, field: str) -> EndpointSlice | None:
    # EndpointSlice keeps its fields at the top level, not under spec.
    root = field.removesuffix("spec")
    service = meta.labels.get(SERVICE_NAME_LABEL)
    if not service:
        r.error(f"{root}metadata.labels[{SERVICE_NAME_LABEL}]", "is required: it names the Service of this slice")
        return None
    ports = []
    for i, p in enumerate(r.list(obj.get("ports"), f"{root}ports")):
        p_field = f"{root}ports[{i}]"
        p = r.map(p, p_field)
        port = r.int(p, "port", p_field, lo=1, hi=65535)
        ports.append(
            SlicePort(
                port,
                r.str(p, "name", p_field, default="") or "",
                r.str(p, "protocol", p_field, default="TCP") or "TCP",
            )
        )
    endpoints = []
    for i, e in enumerate(r.list(obj.get("endpoints"), f"{root}endpoints")):
        e_field = f"{root}endpoints[{i}]"
        e = r.map(e, e_field)
        addresses = []
        for j, a in enumerate(r.list(e.get("addresses"), f"{e_field}.addresses")):
            problem = v.check_address(a) if isinstance(a, str) else "must be a string"
            if problem:
                r.error(f"{e_field}.addresses[{j}]", problem)
            else:
                addresses.append(a)
        conditions = r.map(e.get("conditions"), f"{e_field}.conditions")
        ready = conditions.get("ready")
        if ready is not None and not isinstance(ready, bool):
            r.error(f"{e_field}.conditions.ready", "must be true or false")
            ready = False
        if addresses:
            # A missing ready condition means ready: consumers must treat unknown as ready.
            endpoints.append(SliceEndpoint(tuple(addresses), ready is not False))
    return EndpointSlice(meta, service, tuple(ports), tuple(endpoints))


def _backend(r: Reader, meta: Meta, spec: dict[str, Any], obj: Any, field: str) -> Backend | None:
    before = r.count
    endpoints = []
    for i, e in enumerate(r.list(spec.get("endpoints"), f"{field}.endpoints")):
        e_field = f"{field}.endpoints[{i}]"
        e = r.map(e, e_field)
        address = r.str(e, "address", e_field, required=True, check=v.check_address)
        port = r.int(e, "port", e_field, required=True, lo=1, hi=65535)
        weight = r.int(e, "weight", e_field, default=1, lo=0, hi=1_000_000)
        if address is not None and port is not None and weight is not None:
            endpoints.append(StaticEndpoint(address, port, weight))
    if r.count != before:
        return None  # a half-read endpoint list would shift traffic silently; reject the Backend
    return Backend(meta, tuple(endpoints))


def _namespace(r: Reader, meta: Meta, spec: dict[str, Any], obj: Any, field: str) -> Namespace:
    labels = {**meta.labels, NAMESPACE_NAME_LABEL: meta.name}
    return Namespace(Meta(meta.kind, meta.name, meta.namespace, meta.file, labels, meta.annotations))


_Parser = Callable[[Reader, Meta, dict[str, Any], Any, str], Resource | None]

_PARSERS: dict[str, _Parser] = {
    "GatewayClass": _gateway_class,
    "Gateway": _gateway,
    "HTTPRoute": _http_route,
    "ReferenceGrant": _reference_grant,
    "Service": _service,
    "EndpointSlice": _endpoint_slice,
    "Backend": _backend,
    "Namespace": _namespace,
}

# The API groups gw reads each kind from; a same-named kind from another group is not ours.
KIND_GROUPS = {
    "GatewayClass": GATEWAY_GROUP,
    "Gateway": GATEWAY_GROUP,
    "HTTPRoute": GATEWAY_GROUP,
    "ReferenceGrant": GATEWAY_GROUP,
    "Service": CORE_GROUP,
    "EndpointSlice": DISCOVERY_GROUP,
    "Backend": GW_GROUP,
    "Namespace": CORE_GROUP,
}
