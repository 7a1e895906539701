"""An example phase, as a feature module is written: a response field naming the route that matched.

Registered by a test with one registry line: ("route-echo", route_echo.build).
"""

from __future__ import annotations

from typing import Any

from gw.policies.phase import Exchange, Fields, Phase


class RouteEchoPhase(Phase):
    kind = "route-echo"

    def __init__(self, route: str) -> None:
        self.value = route.encode()  # encoded once, when the chain is built

    def on_response_head(self, ex: Exchange, fields: Fields) -> None:
        fields.append((b"X-Route", self.value))


def build(rule: Any, services: Any) -> Phase | None:
    return RouteEchoPhase(rule.route)
