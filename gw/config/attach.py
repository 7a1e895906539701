"""Attach HTTPRoutes to listeners: parentRef → Gateway → listeners allowed by allowedRoutes and hostnames."""

from __future__ import annotations

from dataclasses import dataclass

from gw.config.resources import (
    GATEWAY_GROUP,
    NAMESPACE_NAME_LABEL,
    Gateway,
    HTTPRoute,
    Listener,
    Namespace,
    ParentRef,
)
from gw.routing.hostnames import intersect_hostnames

# Gateway API reasons for a route's Accepted=False condition.
NO_MATCHING_PARENT = "NoMatchingParent"
NOT_ALLOWED_BY_LISTENERS = "NotAllowedByListeners"
NO_MATCHING_LISTENER_HOSTNAME = "NoMatchingListenerHostname"


@dataclass(frozen=True, slots=True)
class Attachment:
    """A route attached to one listener, with the hostnames it serves there (() = any)."""

    gateway: Gateway
    listener: Listener
    hostnames: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ParentResult:
    """What became of one parentRef: the attachments, or why there are none."""

    parent: str  # "Gateway ns/name" plus "/section" when a sectionName is given
    attachments: tuple[Attachment, ...]
    reason: str = "Accepted"
    message: str = ""


class Attacher:
    def __init__(
        self, gateways: dict[tuple[str, str], tuple[Gateway, tuple[Listener, ...]]], namespaces: list[Namespace]
    ) -> None:
        # gateways: the served ones, (namespace, name) → (gateway, its servable listeners)
        self._gateways = gateways
        self._ns_labels = {n.meta.name: n.meta.labels for n in namespaces}

    def is_ours(self, ref: ParentRef) -> bool:
        return ref.group == GATEWAY_GROUP and ref.kind == "Gateway" and (ref.namespace, ref.name) in self._gateways

    def attach(self, route: HTTPRoute, ref: ParentRef) -> ParentResult:
        gateway, listeners = self._gateways[(ref.namespace, ref.name)]
        parent = f"Gateway {ref.namespace}/{ref.name}" + (f"/{ref.section_name}" if ref.section_name else "")
        candidates = [
            li
            for li in listeners
            if (ref.section_name is None or li.name == ref.section_name) and (ref.port is None or li.port == ref.port)
        ]
        if not candidates:
            what = []
            if ref.section_name is not None:
                what.append(f"named {ref.section_name!r}")
            if ref.port is not None:
                what.append(f"on port {ref.port}")
            return ParentResult(parent, (), NO_MATCHING_PARENT, f"the Gateway has no listener {' '.join(what)}")
        allowed = [li for li in candidates if self._allows(gateway, li, route)]
        if not allowed:
            return ParentResult(
                parent,
                (),
                NOT_ALLOWED_BY_LISTENERS,
                f"no listener allows routes from namespace {route.meta.namespace!r}",
            )
        attachments = []
        for li in allowed:
            hostnames = intersect_hostnames(li.hostname, route.hostnames)
            if hostnames is not None:
                attachments.append(Attachment(gateway, li, hostnames))
        if not attachments:
            return ParentResult(
                parent,
                (),
                NO_MATCHING_LISTENER_HOSTNAME,
                "none of the route's hostnames intersects a listener hostname",
            )
        return ParentResult(parent, tuple(attachments))

    def _allows(self, gateway: Gateway, listener: Listener, route: HTTPRoute) -> bool:
        if listener.allowed_kinds and not any(
            k.group == GATEWAY_GROUP and k.kind == "HTTPRoute" for k in listener.allowed_kinds
        ):
            return False
        ns = route.meta.namespace
        if listener.allowed_from == "All":
            return True
        if listener.allowed_from == "Same":
            return ns == gateway.meta.namespace
        if listener.allowed_selector is None:
            return False
        labels = self._ns_labels.get(ns, {NAMESPACE_NAME_LABEL: ns})
        return listener.allowed_selector.matches(labels)
