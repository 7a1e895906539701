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
    """gw_auth_decisions_total of one policy, its label sets built once (a decision bumps an integer)."""

    __slots__ = ("counters", "keys")

    RESULTS = ("authenticated", "unauthenticated", "allowed", "denied", "overloaded", "error")

    def __init__(self, counters: dict[Any, int], policy: str) -> None:
        self.counters = counters
        self.keys = {r: ("gw_auth_decisions_total", (("policy", policy), ("result", r))) for r in self.RESULTS}

    def add(self, result: str) -> None:
        counters = self.counters
        key = self.keys[result]
        counters[key] = counters.get(key, 0) + 1
