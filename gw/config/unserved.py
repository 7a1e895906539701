"""What a config says that gw accepts but does not serve: Gateway API kinds it skips, fields it reads past.

`gw check` warns about each, so that "ok" never hides a GRPCRoute that nothing serves or a
Gateway `spec.addresses` that binds nothing. The list follows parse.py and fields.py: a field
leaves it when gw starts to serve it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from gw.config.parse import _OTHER_GATEWAY_API_KINDS
from gw.config.resources import GATEWAY_GROUP

_GATEWAY_API_GROUPS = (GATEWAY_GROUP, "gateway.networking.x-k8s.io")

# Kind → (field path under spec, why it does nothing here). Listener fields use "listeners[].".
_IGNORED_FIELDS: dict[str, tuple[tuple[str, str], ...]] = {
    "GatewayClass": (("parametersRef", "no parameters are read"),),
    "Gateway": (
        ("addresses", "listeners bind GW_LISTENER_ADDRESS"),
        ("infrastructure", "gw creates no infrastructure"),
        ("backendTLS", "the experimental name: gw reads tls.backend"),
        ("allowedListeners", "ListenerSets are not served"),
        ("listeners[].tls.options", "TLS options are not applied"),
    ),
}


def unserved(documents: Iterable[tuple[str, Any]]) -> list[str]:
    """'Kind namespace/name[: field]: accepted, not served by gw (why)' for every such thing, in file order."""
    found = []
    for _file, doc in documents:
        for obj in _objects(doc):
            kind, group = obj.get("kind"), str(obj.get("apiVersion") or "").rpartition("/")[0]
            meta = obj.get("metadata") if isinstance(obj.get("metadata"), dict) else {}
            label = f"{kind} {meta.get('namespace', 'default')}/{meta.get('name')}"
            if kind == "GatewayClass":
                label = f"{kind} {meta.get('name')}"
            if kind in _OTHER_GATEWAY_API_KINDS and group in _GATEWAY_API_GROUPS:
                found.append(f"{label}: accepted, not served by gw (skipped; gw serves HTTPRoute)")
                continue
            if group not in ("", *_GATEWAY_API_GROUPS) or not isinstance(obj.get("spec"), dict):
                continue
            for path, why in _IGNORED_FIELDS.get(str(kind), ()):
                if _present(obj["spec"], path):
                    found.append(f"{label}: spec.{path}: accepted, not served by gw ({why})")
    return found


def _objects(doc: Any) -> list[dict[str, Any]]:
    if isinstance(doc, dict) and doc.get("kind") == "List" and isinstance(doc.get("items"), list):
        return [item for item in doc["items"] if isinstance(item, dict)]
    return [doc] if isinstance(doc, dict) else []


def _present(spec: dict[str, Any], path: str) -> bool:
    head, _, rest = path.partition("[].")
    if not rest:
        value: Any = spec
        for part in path.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        return value not in (None, [], {})
    items = spec.get(head)
    return isinstance(items, list) and any(isinstance(i, dict) and _present(i, rest) for i in items)
