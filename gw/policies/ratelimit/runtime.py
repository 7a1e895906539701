"""A worker's rate limiters: one PolicyLimiter per policy, reused across reloads while it is unchanged.

Counted per policy and key: every rule a policy attaches to shares its limiter, and its counters
in Redis are named by the policy, never by the route or the worker. A reload that leaves a policy
as it was keeps its leases and its cache of over-limit keys.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence
from typing import Any

from gw.config.model import CompiledConfig
from gw.config.ratelimit import LOCAL, RateLimitPolicy
from gw.policies.ratelimit.limiter import SCRIPT, Done, Fields, PolicyLimiter, Verdict
from gw.state.batch import ScriptBatcher
from gw.state.connect import local_server_pid
from gw.state.fleet import Fleet
from gw.state.shared import SharedState

WARM_TIMEOUT = 2.0


class Limiters:
    """The rate-limit state of one worker: what its limiters share (gw.policies.ratelimit.limiter.Shared)."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, settings: Any, metrics: Any, shared: SharedState | None
    ) -> None:
        self.loop = loop
        # The worker's Redis client, guard and key schema; without Redis (None) every decision
        # takes its policy's failureMode.
        self.redis = shared.redis if shared is not None else None
        self.guard = shared.guard if shared is not None else None
        self.keys = shared.keys if shared is not None else None
        self.counters: dict[Any, int] = metrics.counters  # the worker's, kept across reloads
        self.limiters: dict[str, PolicyLimiter] = {}
        self.needs_fleet = False
        self.fleet: Fleet | None = None
        self._batcher: ScriptBatcher | None = None
        self._warm_task: asyncio.Task[None] | None = None
        workers = settings.workers
        self.local_workers = workers if workers > 0 else len(os.sched_getaffinity(0))

    @property
    def batcher(self) -> ScriptBatcher:
        batcher = self._batcher
        if batcher is None:
            batcher = self._batcher = ScriptBatcher(self.loop, SCRIPT, self.redis, self.guard)
        return batcher

    def install(self, config: CompiledConfig) -> None:
        """Make the limiters of a new snapshot's policies; unchanged policies keep theirs."""
        old, self.limiters = self.limiters, {}
        for rule in config.rules:
            for policy in rule.rate_limit_policies:
                self._limiter(policy, old)
        self.needs_fleet = any(limiter.policy.failure_mode == LOCAL for limiter in self.limiters.values())
        if self.limiters and self.redis is not None and self._warm_task is None:
            self.loop.call_soon(self._prepare)

    def _prepare(self) -> None:
        """Start heartbeats, load the script, open a connection: off the request path, so the first
        decision does not pay a connect and a NOSCRIPT within its budget (and fail open or closed)."""
        if self.needs_fleet and self.fleet is None:
            self.fleet = Fleet(self.loop, self.redis, self.guard, self.keys.fleet.workers)
            self.fleet.start()
        self._warm_task = self.loop.create_task(self._warm())

    async def _warm(self) -> None:
        try:
            async with asyncio.timeout(WARM_TIMEOUT):
                await self.redis.script_load(SCRIPT.source)
                # A Redis on this machine waits for a CPU when the machine is saturated (by a
                # flood, say): that is not Redis being slow, and the guard does not charge it.
                pid = await local_server_pid(self.redis)
        except Exception:  # Redis away: decisions take their failureMode until it answers
            self._warm_task = None  # the next snapshot with limits tries again
            return
        if pid is not None:
            self.guard.watch_server(pid)

    def for_policies(self, policies: Sequence[RateLimitPolicy]) -> PolicyLimiter | LimiterGroup:
        """What decides for a rule with these policies (installed): one limiter, or a group of them."""
        limiters = [self.limiters[policy.meta.key] for policy in policies]
        return limiters[0] if len(limiters) == 1 else LimiterGroup(limiters)

    def _limiter(self, policy: RateLimitPolicy, old: dict[str, PolicyLimiter]) -> PolicyLimiter:
        key = policy.meta.key
        limiter = self.limiters.get(key)
        if limiter is None:
            limiter = old.get(key)
            if limiter is None or limiter.policy != policy:
                limiter = PolicyLimiter(policy, self)
            self.limiters[key] = limiter
        return limiter

    def stop(self) -> None:
        if self.fleet is not None:
            self.fleet.stop()


class LimiterGroup:
    """Several policies on one rule: each decides; the first that limits answers, in policy order."""

    def __init__(self, limiters: Sequence[PolicyLimiter]) -> None:
        self.limiters = tuple(limiters)
        self.reads_fields = any(limiter.reads_fields for limiter in self.limiters)

    def decide(self, req: Any, fields: Fields, done: Done) -> Verdict | None:
        results: list[Verdict | None] = [None] * len(self.limiters)
        pending = 0

        def arrived(i: int) -> Done:
            def record(_req: Any, verdict: Verdict) -> None:
                nonlocal pending
                results[i] = verdict
                pending -= 1
                if pending == 0:
                    done(req, _combine(results))

            return record

        for i, limiter in enumerate(self.limiters):
            verdict = limiter.decide(req, fields, arrived(i))
            if verdict is None:
                pending += 1
            else:
                results[i] = verdict
        return _combine(results) if pending == 0 else None


def _combine(results: list[Verdict | None]) -> Verdict:
    fields = []
    for verdict in results:
        assert verdict is not None
        if not verdict.allowed:
            return verdict
        fields += verdict.fields
    return Verdict(True, fields)
