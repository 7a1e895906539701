"""Parse YAML documents (plain dicts) into typed resources, collecting errors that name their field.

Rejection is as narrow as the problem: a bad object is dropped alone (what the API server's schema
would refuse, the object is refused); in an HTTPRoute a rule with an invalid value is dropped and
the route's other rules are served (the spec's "Dropped Rule" approach, reported in the route's
PartiallyInvalid condition). References are resolved later: a rule whose backend cannot be resolved
answers 500, as the spec asks.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Callable, Iterable
from typing import Any

from gw.config import fields
from gw.config import validate as v
from gw.config.backend_policy import KIND as BACKEND_TRAFFIC_POLICY
from gw.config.backend_tls import KIND as BACKEND_TLS_POLICY
from gw.config.errors import ConfigError
from gw.config.parse_backend_policy import parse_backend_traffic_policy
from gw.config.parse_backend_tls import parse_backend_tls_policy
from gw.config.parse_core import (
    parse_backend,
    parse_config_map,
    parse_endpoint_slice,
    parse_namespace,
    parse_policy,
    parse_secret,
    parse_service,
)
from gw.config.parse_gateway import (
    parse_gateway,
    parse_gateway_class,
    parse_http_route,
    parse_reference_grant,
)
from gw.config.parse_ratelimit import parse_rate_limit_policy
from gw.config.parse_security_policy import parse_security_policy
from gw.config.ratelimit import KIND as RATE_LIMIT_POLICY
from gw.config.reader import Reader, join, string_map, type_name
from gw.config.resources import (
    CORE_GROUP,
    DISCOVERY_GROUP,
    GATEWAY_GROUP,
    GW_GROUP,
    Meta,
    Resource,
    Resources,
)
from gw.config.security_policy import KIND as SECURITY_POLICY

Document = tuple[str, Any]  # (file it came from, the parsed YAML document)

# Cluster-scoped kinds have no namespace; every other object defaults to "default".
_CLUSTER_SCOPED = frozenset({"GatewayClass", "Namespace"})


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
                elif (label := object_label(obj)) is not None:
                    resources.rejected.append(label)
                continue
            if getattr(parsed, "invalid", None) and (label := object_label(obj)) is not None:
                # Refused, yet kept: the rules it targets answer 500 (a SecurityPolicy fails closed).
                resources.rejected.append(label)
            resources.add(parsed)
    return resources, errors


def _unpack(file: str, doc: Any, where: str, errors: list[ConfigError]) -> list[tuple[str, Any]]:
    if doc is None:
        return []  # an empty document ("---" at the end of a file)
    if isinstance(doc, dict) and doc.get("kind") == "List":
        items = doc.get("items")
        if not isinstance(items, list):
            errors.append(ConfigError(file, "List", join(where, "items"), "must be a list"))
            return []
        return [(f"items[{i}]", item) for i, item in enumerate(items)]
    return [(where, doc)]


def _group(api_version: Any) -> str | None:
    """ "gw.dev/v1alpha1" → "gw.dev", "v1" → "" (core); None when absent (accepted leniently)."""
    if not isinstance(api_version, str) or not api_version:
        return None
    group, sep, _ = api_version.rpartition("/")
    return group if sep else CORE_GROUP


def object_label(obj: Any) -> str | None:
    """ "Kind namespace/name" of a document of one of gw's kinds (as parse_object labels it), else None."""
    if not isinstance(obj, dict) or obj.get("kind") not in _PARSERS:
        return None
    kind = obj["kind"]
    meta = obj.get("metadata")
    name = meta.get("name") if isinstance(meta, dict) else None
    if not isinstance(name, str):
        return None
    if kind in _CLUSTER_SCOPED:
        return f"{kind} {name}"
    namespace = meta.get("namespace")  # type: ignore[union-attr]
    return f"{kind} {namespace if isinstance(namespace, str) else 'default'}/{name}"


def _describe(obj: Any) -> str:
    if not isinstance(obj, dict):
        return repr(obj)
    meta = obj.get("metadata") if isinstance(obj.get("metadata"), dict) else {}
    return f"{obj.get('kind')} {meta.get('namespace', 'default')}/{meta.get('name')}"


def parse_object(file: str, obj: Any, errors: list[ConfigError], where: str = "") -> Resource | None:
    """One object; None when its kind is not gw's or it is too broken to use (errors say why)."""
    if not isinstance(obj, dict):
        errors.append(ConfigError(file, "", where, f"a document must be a mapping, not {type_name(obj)}"))
        return None
    kind = obj.get("kind")
    if not isinstance(kind, str) or not kind:
        errors.append(ConfigError(file, "", join(where, "kind"), "is required"))
        return None
    parser = _PARSERS.get(kind)
    group = _group(obj.get("apiVersion"))
    if parser is None and group == GATEWAY_GROUP and kind not in _OTHER_GATEWAY_API_KINDS:
        # A typo (HTTPRoutes, Httproute) would otherwise be skipped as "a kind gw does not read".
        known = ", ".join(
            sorted({*_OTHER_GATEWAY_API_KINDS, *(k for k, g in KIND_GROUPS.items() if g == GATEWAY_GROUP)})
        )
        errors.append(
            ConfigError(
                file,
                _describe(obj),
                join(where, "kind"),
                f"{kind!r} is not a kind of {GATEWAY_GROUP} (known: {known})",
            )
        )
        return None
    if parser is None and group == GW_GROUP:
        parser = parse_policy  # gw's own policy kinds: kept for ExtensionRef filters to point at
    elif parser is None or group not in (None, KIND_GROUPS[kind]):
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
    schema = _SPEC_FIELDS.get(kind)
    if schema is not None:
        r.map(obj, where, _TOP_LEVEL_FIELDS)
    spec = r.map(obj.get("spec"), f"{prefix}spec", schema)
    if r.count != before:
        return None  # a field the schema does not know: the API server would refuse the object
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
    labels = string_map(r, raw.get("labels"), f"{field}.labels")
    annotations = string_map(r, raw.get("annotations"), f"{field}.annotations")
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


_Parser = Callable[[Reader, Meta, dict[str, Any], Any, str], Resource | None]

_PARSERS: dict[str, _Parser] = {
    "GatewayClass": parse_gateway_class,
    "Gateway": parse_gateway,
    "HTTPRoute": parse_http_route,
    "ReferenceGrant": parse_reference_grant,
    "Service": parse_service,
    "EndpointSlice": parse_endpoint_slice,
    "Backend": parse_backend,
    "Namespace": parse_namespace,
    "Secret": parse_secret,
    "ConfigMap": parse_config_map,
    RATE_LIMIT_POLICY: parse_rate_limit_policy,
    BACKEND_TRAFFIC_POLICY: parse_backend_traffic_policy,
    BACKEND_TLS_POLICY: parse_backend_tls_policy,
    SECURITY_POLICY: parse_security_policy,
}

# Strict validation of the spec of the kinds whose schema gw owns or follows to the letter (core
# kinds are read for a few fields only and may carry any of Kubernetes' others).
_TOP_LEVEL_FIELDS = frozenset({"apiVersion", "kind", "metadata", "spec", "status"})
_SPEC_FIELDS = {
    "GatewayClass": fields.GATEWAY_CLASS_SPEC,
    "Gateway": fields.GATEWAY_SPEC,
    "HTTPRoute": fields.HTTP_ROUTE_SPEC,
    "ReferenceGrant": fields.REFERENCE_GRANT_SPEC,
    "Backend": fields.BACKEND_SPEC,
    BACKEND_TRAFFIC_POLICY: fields.BACKEND_TRAFFIC_POLICY_SPEC,
    BACKEND_TLS_POLICY: fields.BACKEND_TLS_POLICY_SPEC,
}

# Gateway API kinds gw does not serve (yet): skipped, and listed as ignored by `gw check`.
_OTHER_GATEWAY_API_KINDS = frozenset(
    {
        "GRPCRoute",
        "TLSRoute",
        "TCPRoute",
        "UDPRoute",
        "BackendLBPolicy",
        "ListenerSet",
        "XListenerSet",
        "XBackendTrafficPolicy",
        "BackendTrafficPolicy",
        "XMesh",
    }
)

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
    "Secret": CORE_GROUP,
    "ConfigMap": CORE_GROUP,
    RATE_LIMIT_POLICY: GW_GROUP,
    BACKEND_TRAFFIC_POLICY: GW_GROUP,
    BACKEND_TLS_POLICY: GATEWAY_GROUP,
    SECURITY_POLICY: GW_GROUP,
}
