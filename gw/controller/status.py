"""Turn `status_document` (what `gw check` and /status show) into the status stanzas of the cluster's objects.

The conditions are gw.config's, unchanged; this module adds what only the cluster has: each
condition's observedGeneration (the object's metadata.generation) and lastTransitionTime (kept
from the object's current status while the condition's status stays), the Gateway's addresses
(the gateway Service's load-balancer ingress), and the entries of other controllers in a route's
`parents[]` or a policy's `ancestors[]`, which are carried over untouched, and the GatewayClass's
SupportedVersion (gw.controller.versions). A status is written only when it differs from the one
the object has.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gw.config.resources import CORE_GROUP, GATEWAY_GROUP, GW_GROUP
from gw.controller import kinds
from gw.controller.cache import Cache, Object
from gw.controller.kinds import Kind
from gw.controller.versions import Verdict

TARGET_GROUPS = {"Service": CORE_GROUP, "Backend": GW_GROUP, "Gateway": GATEWAY_GROUP, "HTTPRoute": GATEWAY_GROUP}


@dataclass(frozen=True, slots=True)
class StatusUpdate:
    """One object's new status (the keys gw owns) and the resourceVersion it was computed against."""

    kind: Kind
    namespace: str
    name: str
    status: dict[str, Any]
    resource_version: str

    def patch(self) -> dict[str, Any]:
        # The resourceVersion makes the merge patch conditional: parents[] and ancestors[] are
        # replaced whole, so another controller's entry written meanwhile must not be lost (409).
        return {"metadata": {"resourceVersion": self.resource_version}, "status": self.status}


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _conditions(wanted: list[dict[str, str]], current: Any, generation: int, stamp: str) -> list[dict[str, Any]]:
    before = {c.get("type"): c for c in current or () if isinstance(c, dict)}
    result = []
    for c in wanted:
        old = before.get(c["type"])
        kept = old.get("lastTransitionTime") if old and old.get("status") == c["status"] else None
        result.append({**c, "observedGeneration": generation, "lastTransitionTime": kept or stamp})
    return result


def _generation(obj: Object) -> int:
    return int((obj.get("metadata") or {}).get("generation") or 0)


def _addresses(cache: Cache, gateway_service: str) -> list[dict[str, str]] | None:
    if not gateway_service:
        return None
    namespace, _, name = gateway_service.partition("/")
    service = cache.get("Service", namespace, name)
    if service is None:
        return None
    addresses = []
    for ingress in ((service.get("status") or {}).get("loadBalancer") or {}).get("ingress") or ():
        if ingress.get("ip"):
            addresses.append({"type": "IPAddress", "value": ingress["ip"]})
        elif ingress.get("hostname"):
            addresses.append({"type": "Hostname", "value": ingress["hostname"]})
    return addresses


def _wanted(found: list[StatusUpdate], cache: Cache) -> Callable[[Kind, str, str, dict[str, Any]], None]:
    """`want(kind, namespace, name, status)`: adds the write to `found` unless the object has that status."""

    def want(kind: Kind, namespace: str, name: str, status: dict[str, Any]) -> None:
        obj = cache.get(kind.kind, namespace if kind.namespaced else "", name)
        if obj is None:
            return  # gone from the cluster since the render
        current = obj.get("status") or {}
        if any(current.get(k) != v for k, v in status.items()):
            rv = str((obj.get("metadata") or {}).get("resourceVersion", ""))
            found.append(StatusUpdate(kind, namespace if kind.namespaced else "", name, status, rv))

    return want


def _class_status(cache: Cache, name: str, conditions: list[dict[str, str]], stamp: str) -> dict[str, Any]:
    obj = cache.get("GatewayClass", "", name) or {}
    current = (obj.get("status") or {}).get("conditions")
    return {"conditions": _conditions(conditions, current, _generation(obj), stamp)}


def refusals(cache: Cache, controller_name: str, verdict: Verdict) -> list[StatusUpdate]:
    """The status of gw's GatewayClasses when the CRDs' version is outside gw's range: not Accepted, and why."""
    stamp = now()
    found: list[StatusUpdate] = []
    want = _wanted(found, cache)
    refused = {"type": "Accepted", "status": "False", "reason": "UnsupportedVersion", "message": verdict.message}
    for (_, name), obj in sorted(cache.of("GatewayClass").items()):
        if (obj.get("spec") or {}).get("controllerName") == controller_name:
            want(kinds.GATEWAY_CLASS, "", name, _class_status(cache, name, [refused, verdict.condition()], stamp))
    return found


def updates(
    doc: dict[str, Any], cache: Cache, controller_name: str, gateway_service: str = "", *, verdict: Verdict
) -> list[StatusUpdate]:
    """The status writes the document asks for, leaving out those the objects have already."""
    stamp = now()
    found: list[StatusUpdate] = []
    want = _wanted(found, cache)

    for gc in doc["gatewayClasses"]:
        conditions = [*gc["conditions"], verdict.condition()]
        want(kinds.GATEWAY_CLASS, "", gc["name"], _class_status(cache, gc["name"], conditions, stamp))

    addresses = _addresses(cache, gateway_service)
    for gw in doc["gateways"]:
        obj = cache.get("Gateway", gw["namespace"], gw["name"]) or {}
        generation, current = _generation(obj), obj.get("status") or {}
        old_listeners = {li.get("name"): li for li in current.get("listeners") or () if isinstance(li, dict)}
        listeners = [
            {
                "name": li["name"],
                "attachedRoutes": li["attachedRoutes"],
                "supportedKinds": li["supportedKinds"],
                "conditions": _conditions(
                    li["conditions"], (old_listeners.get(li["name"]) or {}).get("conditions"), generation, stamp
                ),
            }
            for li in gw["listeners"]
        ]
        status: dict[str, Any] = {
            "conditions": _conditions(gw["conditions"], current.get("conditions"), generation, stamp),
            "listeners": listeners,
        }
        if addresses is not None:
            status["addresses"] = addresses
        want(kinds.GATEWAY, gw["namespace"], gw["name"], status)

    written = set()
    for route in doc["httpRoutes"]:
        written.add((route["namespace"], route["name"]))
        obj = cache.get("HTTPRoute", route["namespace"], route["name"]) or {}
        generation, current = _generation(obj), (obj.get("status") or {}).get("parents") or []
        ours = []
        for parent in route["parents"]:
            old = next((p for p in current if _ours(p, controller_name) and p.get("parentRef") == parent["parentRef"]),
                       {})  # fmt: skip
            ours.append({**parent, "conditions": _conditions(parent["conditions"], old.get("conditions"), generation,
                                                             stamp)})  # fmt: skip
        others = [p for p in current if not _ours(p, controller_name)]
        want(kinds.HTTP_ROUTE, route["namespace"], route["name"], {"parents": others + ours})
    for (namespace, name), obj in cache.of("HTTPRoute").items():
        # Detached from gw's Gateways (or they went away): gw's entries go, other controllers' stay.
        current = (obj.get("status") or {}).get("parents") or []
        if (namespace, name) not in written and any(_ours(p, controller_name) for p in current):
            want(kinds.HTTP_ROUTE, namespace, name, {"parents": [p for p in current if not _ours(p, controller_name)]})

    for policy in doc["policies"]:
        kind = kinds.BY_NAME[policy["kind"]]
        obj = cache.get(kind.kind, policy["namespace"], policy["name"]) or {}
        generation, current = _generation(obj), (obj.get("status") or {}).get("ancestors") or []
        ours = []
        # A BackendTLSPolicy's ancestors are the Gateways reaching its backends (the status
        # document names them); gw's own policies are reported under their targets.
        refs = [a["ancestorRef"] for a in policy["ancestors"]] if "ancestors" in policy else [
            {"group": TARGET_GROUPS.get(t["kind"], GATEWAY_GROUP), "namespace": policy["namespace"], **t}
            for t in policy["targetRefs"]
        ]  # fmt: skip
        for ref in refs:
            old = next((a for a in current if _ours(a, controller_name) and a.get("ancestorRef") == ref), {})
            conditions = _conditions(policy["conditions"], old.get("conditions"), generation, stamp)
            ours.append({"ancestorRef": ref, "controllerName": controller_name, "conditions": conditions})
        others = [a for a in current if not _ours(a, controller_name)]
        want(kind, policy["namespace"], policy["name"], {"ancestors": others + ours})
    return found


def _ours(entry: Any, controller_name: str) -> bool:
    return isinstance(entry, dict) and entry.get("controllerName") == controller_name
