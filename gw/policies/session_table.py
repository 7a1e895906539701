"""Header-type sessions (GEP-1619 `type: Header`): the application's session id → the endpoint it is
pinned to, settled once for the fleet in Redis and cached by each worker.

The first worker to see a new id proposes its balancer's pick; `session_assign.lua` keeps the
first proposal (two replicas seeing a new id at once agree) with the session's timeout. A worker
asks Redis only for an id it has not cached, or to extend an idle timeout at most every quarter of
it, or to re-pin a session whose endpoint is gone. Without Redis (the guard's budget or breaker)
the endpoint is a rendezvous hash of the id over the endpoints, the same on every replica, and the
log says so once per outage. An answer later than the budget (a loaded worker) still counts: the
request went on by the hash, but the fleet's answer is remembered, and the settlement of an id a
response issued, which no request waits for, is not lost.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Callable, Sequence
from time import monotonic
from typing import Any

from gw.observe.families import SESSION_RESULTS
from gw.state import SharedState
from gw.state.batch import ScriptBatcher
from gw.state.guard import RedisUnavailable
from gw.state.scripts import load

SCRIPT = load("session_assign")
CACHE_SIZE = 100_000  # ids per worker and session name; the oldest go first
LOG = logging.getLogger("gw.sessions")

Settled = Callable[[str, bool], None]  # (endpoint "address:port", decided by the fleet)
CounterKey = tuple[str, tuple[tuple[str, str], ...]]


class SessionCounts:
    """One rule's session counters in the worker's metrics (gw_sessions_total{rule,type,result}),
    their keys built once: counting is one dict update, and the counts outlive reloads."""

    __slots__ = ("counters", "keys")

    def __init__(self, counters: dict[CounterKey, int] | None, rule: str, kind: str) -> None:
        self.counters: dict[CounterKey, int] = counters if counters is not None else {}
        self.keys = {r: ("gw_sessions_total", (("result", r), ("rule", rule), ("type", kind))) for r in SESSION_RESULTS}

    def add(self, result: str) -> None:
        key = self.keys[result]
        self.counters[key] = self.counters.get(key, 0) + 1

    def __getitem__(self, result: str) -> int:
        return self.counters.get(self.keys[result], 0)


def rendezvous(session_id: bytes, endpoints: Sequence[str]) -> str | None:
    """The endpoint with the highest hash of (id, endpoint): every replica computes the same, and
    removing an endpoint moves only the sessions that were on it."""
    best, best_score = None, b""
    for label in endpoints:
        score = hashlib.blake2b(session_id + b"\0" + label.encode(), digest_size=8).digest()
        if best is None or score > best_score:
            best, best_score = label, score
    return best


class SessionTable:
    """One session name's table in one worker (see the module docstring)."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        shared: SharedState | None,
        name: str,
        timeout: float,
        idle: bool,
        counts: SessionCounts | None = None,
    ) -> None:
        self.name = name
        self.timeout = timeout
        self.idle = idle
        self.shared = shared
        self.stem = shared.keys.sessions(name) if shared is not None else ""
        self.batcher = ScriptBatcher(loop, SCRIPT, shared.redis, shared.guard) if shared is not None else None
        # id → (endpoint, monotonic time until which it is used without asking Redis again)
        self.cache: dict[bytes, tuple[str, float]] = {}
        self.degraded = False  # the last settlement fell back to the hash (logged once per outage)
        self.counts = counts if counts is not None else SessionCounts(None, name, "Header")

    @property
    def created(self) -> int:
        return self.counts["created"]

    @property
    def repinned(self) -> int:
        return self.counts["repinned"]

    def cached(self, session_id: bytes, now: float) -> str | None:
        entry = self.cache.get(session_id)
        if entry is None or entry[1] <= now:
            return None
        return entry[0]

    def settle(self, session_id: bytes, proposed: str, endpoints: Sequence[str], then: Settled, gone: str = "") -> None:
        """Ask the fleet which endpoint `session_id` is pinned to (proposing `proposed`, or re-pinning
        it from `gone`); `then(endpoint, fleet)` gets the answer, or the hash's without Redis."""
        if self.batcher is None:
            self._fallback(session_id, endpoints, then, "no Redis")
            return
        decided = False  # `then` was called (by the hash, at the budget, or with the answer)

        def overdue() -> None:
            nonlocal decided
            if not decided:
                decided = True
                self._fallback(session_id, endpoints, then, f"no answer within the budget ({self.name})")

        def answered(reply: Any) -> None:
            nonlocal decided
            if isinstance(reply, RedisUnavailable):
                if not decided:
                    decided = True
                    self._fallback(session_id, endpoints, then, str(reply))
                return
            pinned, by_us = reply
            endpoint = pinned.decode() if isinstance(pinned, bytes) else str(pinned)
            if self.degraded:
                self.degraded = False
                LOG.warning("sessions %s: Redis answers again; ids are settled by the fleet", self.name)
            if by_us:
                self.counts.add("repinned" if gone else "created")
            self._remember(session_id, endpoint)
            if not decided:
                decided = True
                then(endpoint, True)

        key = f"{self.stem}:{session_id.decode('latin-1')}".encode("latin-1")
        args = [proposed, int(self.timeout * 1000), "1" if self.idle else "0", gone]
        self.batcher.submit([key], args, answered, overdue)

    def _fallback(self, session_id: bytes, endpoints: Sequence[str], then: Settled, why: str) -> None:
        if not self.degraded:
            self.degraded = True
            LOG.warning(
                "sessions %s: Redis unavailable (%s): ids go by a hash of the id until it answers", self.name, why
            )
        endpoint = rendezvous(session_id, sorted(endpoints))
        if endpoint is not None:
            self.counts.add("hashed")
            then(endpoint, False)

    def _remember(self, session_id: bytes, endpoint: str) -> None:
        cache = self.cache
        if len(cache) >= CACHE_SIZE:
            del cache[next(iter(cache))]
        # An idle timeout is extended in Redis at most every quarter of it; an absolute one holds.
        hold = self.timeout / 4 if self.idle else self.timeout
        cache[session_id] = (endpoint, monotonic() + hold)

    def forget(self, session_id: bytes) -> None:
        self.cache.pop(session_id, None)
