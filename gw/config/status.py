"""Gateway API status of a compiled config: a document for the admin /status endpoint and lines for `gw check`."""

from __future__ import annotations

from typing import Any

from gw.config.compile import LoadResult
from gw.config.errors import Condition
from gw.config.gateways import supported_kinds

DEFAULT_CONTROLLER = "gw.dev/gateway-controller"
GATEWAY_API_GROUP = "gateway.networking.k8s.io"


def _condition(c: Condition) -> dict[str, str]:
    return {"type": c.type, "status": "True" if c.status else "False", "reason": c.reason, "message": c.message}


def status_document(result: LoadResult, controller_name: str = DEFAULT_CONTROLLER) -> dict[str, Any]:
    """The status gw would write for every object it is responsible for, as plain JSON-able data.

    Shapes follow the Gateway API status stanzas: GatewayClass and Gateway `conditions`, Gateway
    `listeners[]` with `attachedRoutes`/`supportedKinds`/`conditions`, HTTPRoute `parents[]` with
    `parentRef`/`controllerName`/`conditions`. `errors` lists every config error.
    """
    resources = result.resources
    conditions = result.conditions
    doc: dict[str, Any] = {"gatewayClasses": [], "gateways": [], "httpRoutes": [], "policies": [], "errors": []}
    if resources is not None:
        for gc in resources.gateway_classes:
            if gc.meta.label in conditions:
                doc["gatewayClasses"].append(
                    {"name": gc.meta.name, "conditions": [_condition(c) for c in conditions[gc.meta.label]]}
                )
        for gw in resources.gateways:
            if gw.meta.label not in conditions:
                continue  # not served by this instance
            listeners = []
            for li in gw.listeners:
                key = f"{gw.meta.key}/{li.name}"
                if any(entry["name"] == li.name for entry in listeners):
                    continue  # a second listener of one name is refused (the errors say so): one entry
                listeners.append(
                    {
                        "name": li.name,
                        "attachedRoutes": result.attached_routes.get(key, 0),
                        "supportedKinds": supported_kinds(li),
                        "conditions": [_condition(c) for c in result.listener_conditions.get(key, [])],
                    }
                )
            doc["gateways"].append(
                {
                    "namespace": gw.meta.namespace,
                    "name": gw.meta.name,
                    "conditions": [_condition(c) for c in conditions[gw.meta.label]],
                    "listeners": listeners,
                }
            )
        for route in resources.http_routes:
            parents = _route_parents(conditions.get(route.meta.label, []))
            if not parents:
                continue  # attached to no Gateway of ours
            doc["httpRoutes"].append(
                {
                    "namespace": route.meta.namespace,
                    "name": route.meta.name,
                    "parents": [
                        {
                            "parentRef": _parent_ref(parent),
                            "controllerName": controller_name,
                            "conditions": [_condition(c) for c in conds],
                        }
                        for parent, conds in parents.items()
                    ],
                }
            )
        for policy in [
            *resources.rate_limit_policies,
            *resources.backend_traffic_policies,
            *resources.backend_tls_policies,
            *resources.security_policies,
        ]:
            # GEP-713 policy status, reduced to what gw knows: its targets and its conditions.
            policy_conditions = [_condition(c) for c in conditions.get(policy.meta.label, [])]
            entry: dict[str, Any] = {
                "kind": policy.meta.kind,
                "namespace": policy.meta.namespace,
                "name": policy.meta.name,
                "targetRefs": [
                    {"kind": t.kind, "name": t.name, **({"sectionName": t.section_name} if t.section_name else {})}
                    for t in policy.targets
                ],
                "conditions": policy_conditions,
            }
            if policy.meta.label in result.ancestors:
                # PolicyStatus.ancestors: the same conditions under each Gateway reaching its backends.
                entry["ancestors"] = [
                    {
                        "ancestorRef": {"group": GATEWAY_API_GROUP, "kind": "Gateway", "namespace": ns, "name": name},
                        "controllerName": controller_name,
                        "conditions": policy_conditions,
                    }
                    for ns, name in result.ancestors[policy.meta.label]
                ]
            doc["policies"].append(entry)
    for e in result.errors:
        doc["errors"].append({"file": e.file, "object": e.obj, "field": e.field, "message": e.message})
    return doc


def _route_parents(conditions: list[Condition]) -> dict[str, list[Condition]]:
    """Per-parent conditions: Accepted is per parent; the others are about the route and apply to each."""
    parents: dict[str, list[Condition]] = {}
    for c in conditions:
        if c.type == "Accepted" and c.parent:
            parents.setdefault(c.parent, []).append(c)
    shared = _merge([c for c in conditions if not c.parent])
    for conds in parents.values():
        conds += shared
    return parents


def _merge(conditions: list[Condition]) -> list[Condition]:
    """One condition per type: a False one wins over True (its messages joined), as status has one per type."""
    by_type: dict[str, Condition] = {}
    for c in conditions:
        seen = by_type.get(c.type)
        if seen is None or (seen.status and not c.status):
            by_type[c.type] = c
        elif seen.status == c.status and c.message and c.message not in seen.message:
            by_type[c.type] = Condition(c.type, c.status, seen.reason, f"{seen.message}; {c.message}".strip("; "))
    return list(by_type.values())


def _parent_ref(parent: str) -> dict[str, str]:
    # "Gateway ns/name" or "Gateway ns/name/section"
    _, _, rest = parent.partition(" ")
    namespace, _, rest = rest.partition("/")
    name, _, section = rest.partition("/")
    ref = {"group": "gateway.networking.k8s.io", "kind": "Gateway", "namespace": namespace, "name": name}
    if section:
        ref["sectionName"] = section
    return ref


def _line(conds: list[dict[str, str]]) -> str:
    parts = []
    for c in conds:
        text = f"{c['type']}={c['status']} ({c['reason']})"
        parts.append(f"{text}: {c['message']}" if c["message"] else text)
    return "; ".join(parts) if parts else "(no conditions)"


def status_lines(result: LoadResult, controller_name: str = DEFAULT_CONTROLLER) -> list[str]:
    """The status document as text, one object (and listener or parent) per line, for `gw check`."""
    doc = status_document(result, controller_name)
    lines = []
    for gc in doc["gatewayClasses"]:
        lines.append(f"GatewayClass {gc['name']}: {_line(gc['conditions'])}")
    for gw in doc["gateways"]:
        lines.append(f"Gateway {gw['namespace']}/{gw['name']}: {_line(gw['conditions'])}")
        for li in gw["listeners"]:
            lines.append(f"  listener {li['name']} (attachedRoutes={li['attachedRoutes']}): {_line(li['conditions'])}")
    for route in doc["httpRoutes"]:
        lines.append(f"HTTPRoute {route['namespace']}/{route['name']}:")
        for parent in route["parents"]:
            ref = parent["parentRef"]
            where = f"{ref['namespace']}/{ref['name']}" + (f"/{ref['sectionName']}" if "sectionName" in ref else "")
            lines.append(f"  parent Gateway {where}: {_line(parent['conditions'])}")
    for policy in doc["policies"]:
        lines.append(f"{policy['kind']} {policy['namespace']}/{policy['name']}: {_line(policy['conditions'])}")
    return lines
