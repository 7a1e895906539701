"""RequestMirror (HTTPRoute filter): which mirrors get a copy of the request (gw.proxy.mirror sends it)."""

from __future__ import annotations

from typing import Any

from gw.config.filters import Mirror
from gw.policies.phase import Exchange, Phase


class MirrorPhase(Phase):
    kind = "mirror"

    def __init__(self, mirrors: tuple[Mirror, ...]) -> None:
        self.mirrors = mirrors  # the rule's; the chosen backendRef's follow

    def on_upstream_request(self, ex: Exchange) -> None:
        if ex.upgrade:
            return  # an upgrade is a conversation, not a request to copy
        own = ex.ref.mirrors
        mirrors = self.mirrors + own if own else self.mirrors
        if mirrors:
            ex.mirror(mirrors)


def build(rule: Any, services: Any) -> Phase | None:
    if not rule.mirrors and not any(r.mirrors for r in rule.backend_refs):
        return None
    return MirrorPhase(rule.mirrors)
