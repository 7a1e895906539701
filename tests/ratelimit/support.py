"""A worker's side of rate limiting without a proxy: limiters on a real Redis, requests as plain objects."""

from __future__ import annotations

import asyncio
from collections import Counter
from types import SimpleNamespace
from typing import Any

from gw.config.ratelimit import CLIENT_ADDRESS, GCRA, KeyPart, Limit, RateLimitPolicy
from gw.config.resources import Meta
from gw.policies.ratelimit import PolicyLimiter, Verdict
from gw.policies.ratelimit.limiter import SCRIPT
from gw.state import Keys
from gw.state.batch import ScriptBatcher


class Worker:
    """The Shared a PolicyLimiter runs on (what Limiters lends it in a real worker)."""

    def __init__(self, redis: Any, guard: Any, keys: Keys, local_workers: int = 1, fleet: Any = None) -> None:
        self.loop = asyncio.get_running_loop()
        self.redis = redis
        self.guard = guard
        self.keys = keys
        self.fleet = fleet
        self.local_workers = local_workers
        self.counters: dict[Any, int] = {}
        self.batcher = ScriptBatcher(self.loop, SCRIPT, redis, guard)

    @property
    def outcomes(self) -> Counter[str]:
        """Decisions by outcome, from the counters a limiter bumps."""
        return Counter({dict(labels)["outcome"]: n for (_, labels), n in self.counters.items()})


def make_policy(
    requests: int, per: float, *, algorithm: str = GCRA, burst: int | None = None, name: str = "p", **options: Any
) -> Any:
    """One limit keyed by client address, named "default/<name>" with limit "l"."""
    limit = Limit("l", requests, per, burst or requests, (KeyPart(CLIENT_ADDRESS),))
    return RateLimitPolicy(Meta("RateLimitPolicy", name, "default"), (), (limit,), algorithm=algorithm, **options)


def request(client: bytes = b"10.0.0.1") -> Any:
    return SimpleNamespace(client_host=client, method=b"GET", query=b"", rule=SimpleNamespace(route="default/api"))


async def decide(limiter: PolicyLimiter, req: Any = None, fields: list[tuple[bytes, bytes]] | None = None) -> Verdict:
    """The verdict, now or once Redis answered."""
    later: asyncio.Future[Verdict] = asyncio.get_running_loop().create_future()
    verdict = limiter.decide(req or request(), fields or [], lambda _req, v: later.set_result(v))
    return verdict if verdict is not None else await asyncio.wait_for(later, 5)


def script_calls(server: Any) -> int:
    """EVALSHA + EVAL calls the server has run (INFO commandstats)."""
    with server.client() as c:
        stats = c.info("commandstats")
    return sum(stats.get(f"cmdstat_{name}", {}).get("calls", 0) for name in ("evalsha", "eval"))
