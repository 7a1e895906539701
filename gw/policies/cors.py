"""CORS (HTTPRoute filter): the gateway answers preflights and adds the CORS fields to actual requests."""

from __future__ import annotations

from typing import Any

from gw.config.filters import CORS
from gw.policies.phase import ANSWERED, CONTINUE, Exchange, Phase


class CORSPhase(Phase):
    kind = "cors"

    def __init__(self, cors: CORS) -> None:
        self.cors = cors

    def on_request(self, ex: Exchange) -> int:
        origin = ex.field(b"origin")
        if origin is None:
            return CONTINUE  # not a cross-origin request
        cors = self.cors
        asked = ex.field(b"access-control-request-method")
        if cors.is_preflight(ex.method, asked):
            ex.answer(204, cors.preflight(origin, asked, ex.field(b"access-control-request-headers")))
            return ANSWERED
        ex.add_response_fields(cors.response(origin))
        return CONTINUE


def build(rule: Any, services: Any) -> Phase | None:
    return CORSPhase(rule.cors) if rule.cors is not None else None
