"""The rate-limit phase on a real limiter and Valkey: what it answers a refused request with."""

from __future__ import annotations

import asyncio
from time import monotonic
from typing import Any

from gw.errors import ProxyError
from gw.policies.phase import ANSWERED, WAIT
from gw.policies.ratelimit import PolicyLimiter
from gw.policies.ratelimit.phase import RateLimitPhase
from gw.state import Client, Keys, RedisGuard
from tests.ratelimit.support import Worker, make_policy, request

HOUR = 3600.0


class Recorded:
    """An exchange as the phase sees it, keeping what the phase did to it."""

    def __init__(self) -> None:
        req = request()
        self.client_host, self.method, self.query, self.rule = req.client_host, req.method, req.query, req.rule
        self.failed: list[ProxyError] = []
        self.resumed = asyncio.Event()

    def fail(self, error: ProxyError) -> None:
        self.failed.append(error)
        self.resumed.set()

    def add_response_fields(self, fields: Any) -> None:
        pass

    def resume(self) -> None:
        self.resumed.set()


def refusals(phase: RateLimitPhase, n: int) -> list[ProxyError]:
    """The errors of n requests the phase refuses from the over-limit cache."""
    out = []
    for _ in range(n):
        ex = Recorded()
        assert phase.on_request(ex) == ANSWERED  # type: ignore[arg-type]
        out.extend(ex.failed)
    return out


async def test_each_refusal_carries_the_retry_after_of_its_own_verdict(client: Client, keys: Keys) -> None:
    """Refusals from the cache share their answer while the verdict is the same, and only then."""
    limiter = PolicyLimiter(make_policy(1, HOUR), Worker(client, RedisGuard(1.0), keys))
    phase = RateLimitPhase(limiter)
    for _ in range(2):  # allowed, then refused by Redis (the key is cached as over the limit)
        ex = Recorded()
        if phase.on_request(ex) == WAIT:  # type: ignore[arg-type]
            await asyncio.wait_for(ex.resumed.wait(), 5)
    assert [e.status for e in ex.failed] == [429]
    key = request().client_host
    limiter.blocked[key] = monotonic() + 100.0
    first = refusals(phase, 3)
    limiter.blocked[key] = monotonic() + 50.0
    later = refusals(phase, 2)
    assert [dict(e.fields)[b"Retry-After"] for e in first + later] == [b"100"] * 3 + [b"50"] * 2
    answers = {(e.status, e.kind, e.detail) for e in first + later}
    assert answers == {(429, "rate-limited", "rate limit default/p exceeded")}
