"""URLRewrite (HTTPRoute filter): the request goes upstream with another path and/or Host.

A backendRef's rewrite replaces the rule's (the more specific filter wins).
"""

from __future__ import annotations

from typing import Any

from gw.config.filters import URLRewrite
from gw.policies.phase import Exchange, Phase


class URLRewritePhase(Phase):
    kind = "url-rewrite"

    def __init__(self, rewrite: URLRewrite | None) -> None:
        self.rewrite = rewrite

    def on_upstream_request(self, ex: Exchange) -> None:
        rewrite = ex.ref.rewrite or self.rewrite
        if rewrite is None:
            return
        ex.url = rewrite.target(ex.path, ex.query)
        host = rewrite.host
        if host is not None:
            fields = ex.edit_fields()
            fields[:] = [(n, v) for n, v in fields if n.lower() != b"host"]
            fields.insert(0, (b"Host", host))
            ex.host_header = host


def build(rule: Any, services: Any) -> Phase | None:
    if rule.rewrite is None and all(r.rewrite is None for r in rule.backend_refs):
        return None
    return URLRewritePhase(rule.rewrite)
