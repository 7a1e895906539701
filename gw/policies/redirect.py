"""RequestRedirect (HTTPRoute filter): the rule answers with a redirect; nothing goes upstream."""

from __future__ import annotations

from typing import Any

from gw.config.filters import Redirect
from gw.policies.phase import ANSWERED, Exchange, Phase


class RedirectPhase(Phase):
    kind = "redirect"

    def __init__(self, redirect: Redirect) -> None:
        self.redirect = redirect

    def on_request(self, ex: Exchange) -> int:
        redirect = self.redirect
        # The declared port, not the bound one: Location is what the client reaches.
        location = redirect.location(ex.scheme.decode(), ex.host or "localhost", ex.listener_port, ex.path, ex.query)
        ex.answer(redirect.status, [(b"Location", location)])
        return ANSWERED


def build(rule: Any, services: Any) -> Phase | None:
    return RedirectPhase(rule.redirect) if rule.redirect is not None else None
