"""Who the caller is, once a SecurityPolicy's authentication established it: `ex.identity`.

One object per distinct credential, made once and cached by the mechanism that verified it, so a
request carries it at the cost of a reference. JWT authentication joins by setting `claims`.
"""

from __future__ import annotations

from typing import Any

from gw.observe.accesslog import members


class Identity:
    """The consumer (an API key's client id, a basic-auth user name, later a token's subject)."""

    __slots__ = ("claims", "consumer", "key", "log_member", "source")

    def __init__(self, consumer: str, source: str, claims: dict[str, Any] | None = None) -> None:
        self.consumer = consumer
        self.key = consumer.encode()  # what a RateLimitPolicy `Consumer` key counts under
        self.source = source  # "api-key", "basic"
        self.claims = claims
        self.log_member = members(consumer=consumer)  # the access log's, escaped once

    def __repr__(self) -> str:
        return f"Identity({self.consumer!r}, {self.source})"


class Decisions:
    """gw_auth_decisions_total of one policy: a tally per result (a decision bumps an integer; a
    phase on the hot path keeps its most common result's tally and bumps `.n` itself)."""

    __slots__ = ("tallies",)

    RESULTS = ("authenticated", "unauthenticated", "allowed", "denied", "overloaded", "error")

    def __init__(self, metrics: Any, policy: str) -> None:
        self.tallies = {r: metrics.tally("gw_auth_decisions_total", policy=policy, result=r) for r in self.RESULTS}

    def add(self, result: str) -> None:
        self.tallies[result].n += 1
