"""RequestHeaderModifier and ResponseHeaderModifier (HTTPRoute filters): the rule's, then the backendRef's."""

from __future__ import annotations

from typing import Any

from gw.config.filters import HeaderModifier
from gw.policies.phase import Exchange, Fields, Phase


class RequestHeaderPhase(Phase):
    kind = "request-header-modifier"

    def __init__(self, modifier: HeaderModifier | None) -> None:
        self.modifier = modifier  # the rule's; the chosen backendRef may have its own

    def on_upstream_request(self, ex: Exchange) -> None:
        own = ex.ref.request_headers
        if self.modifier is None and own is None:
            return  # another backendRef of the rule has one; this one does not
        fields = ex.edit_fields()
        if self.modifier is not None:
            self.modifier.apply(fields)
        if own is not None:
            own.apply(fields)


class ResponseHeaderPhase(Phase):
    kind = "response-header-modifier"

    def __init__(self, modifier: HeaderModifier | None) -> None:
        self.modifier = modifier

    def on_response_head(self, ex: Exchange, fields: Fields) -> None:
        if self.modifier is not None:
            self.modifier.apply(fields)
        own = ex.ref.response_headers
        if own is not None:
            own.apply(fields)


def build_request(rule: Any, services: Any) -> Phase | None:
    if rule.request_headers is None and all(r.request_headers is None for r in rule.backend_refs):
        return None
    return RequestHeaderPhase(rule.request_headers)


def build_response(rule: Any, services: Any) -> Phase | None:
    if rule.response_headers is None and all(r.response_headers is None for r in rule.backend_refs):
        return None
    return ResponseHeaderPhase(rule.response_headers)
