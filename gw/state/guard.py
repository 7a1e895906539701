"""The guard around every Redis call on a request path: a time budget and a breaker around Redis.

A slow Redis costs a request at most the budget (GW_REDIS_BUDGET); after FAILURES_TO_OPEN
consecutive failures or timeouts the breaker opens and calls fail at once, without touching the
network, until COOLDOWN has passed; then one call probes (half-open) and its outcome closes or
reopens the breaker. Callers get RedisUnavailable and apply their policy's failureMode.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import (
    ReadOnlyError,
    RedisClusterException,
    TryAgainError,
)
from redis.exceptions import TimeoutError as RedisTimeoutError

from gw.observe.metrics import Histogram, Registry

T = TypeVar("T")

FAILURES_TO_OPEN = 5
COOLDOWN = 1.0

CLOSED, HALF_OPEN, OPEN = "closed", "half-open", "open"
# Redis answers in tens of µs to a few ms; the budget is a few ms.
LATENCY_BOUNDS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1)

# Errors that say "Redis is not usable now" (as opposed to a script or type error, which is a bug
# and must not trip the breaker): dropped or refused connections, a demoted master, a Cluster
# mid-resharding. redis.ConnectionError covers busy-loading and authentication failures too.
_UNAVAILABLE: tuple[type[BaseException], ...] = (
    RedisConnectionError,
    RedisTimeoutError,
    OSError,
    ReadOnlyError,
    TryAgainError,
    RedisClusterException,
)


class RedisUnavailable(Exception):
    """A guarded Redis call did not complete: `reason` is "timeout", "error" or "open" (breaker)."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"redis {reason}" + (f": {detail}" if detail else ""))
        self.reason = reason


class RedisGuard:
    """Budget and breaker for one process's Redis calls; one instance per worker, shared by all callers."""

    __slots__ = (
        "_failures",
        "_open_until",
        "_probing",
        "budget",
        "clock",
        "cooldown",
        "failures_to_open",
        "latency",
        "metrics",
        "state",
    )

    def __init__(
        self,
        budget: float,
        *,
        failures_to_open: int = FAILURES_TO_OPEN,
        cooldown: float = COOLDOWN,
        metrics: Registry | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.budget = budget
        self.failures_to_open = failures_to_open
        self.cooldown = cooldown
        self.clock = clock
        self.state = CLOSED
        self._failures = 0
        self._open_until = 0.0
        self._probing = False
        self.metrics = metrics
        self.latency: Histogram | None = None
        if metrics is not None:
            # A gauge per process, summed by the supervisor: how many workers see Redis as unusable.
            metrics.gauge("gw_redis_breaker_open", lambda: float(self.state != CLOSED))
            self.latency = metrics.histogram(
                "gw_redis_call_duration_seconds", "Redis calls on request paths that got an answer.", LATENCY_BOUNDS
            )

    @classmethod
    def from_settings(cls, settings: Any, metrics: Registry | None = None) -> RedisGuard:
        return cls(settings.redis_budget, metrics=metrics)

    @property
    def degraded(self) -> bool:
        """True while Redis is considered unusable (readiness reports this; serving goes on)."""
        return self.state != CLOSED

    def refuses(self) -> bool:
        """True when a call now would fail at once (breaker open, cool-down running or a probe out).

        Lets a caller take its failure path without creating a task for a call bound to fail.
        """
        return self.state != CLOSED and (self._probing or (self.state == OPEN and self.clock() < self._open_until))

    async def call(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """`await fn(*args)` within the budget; raises RedisUnavailable instead of waiting on Redis.

        `fn` is called only when the breaker lets the call through, so an open breaker costs no
        coroutine, no task and no I/O.
        """
        if self.state != CLOSED and not self._admit():
            self._count("open")
            raise RedisUnavailable("open")
        start = time.perf_counter()
        try:
            async with asyncio.timeout(self.budget):
                result = await fn(*args)
        except TimeoutError:
            self._failed()
            self._count("timeout")
            raise RedisUnavailable("timeout", f"no answer within {self.budget * 1000:g} ms") from None
        except _UNAVAILABLE as exc:
            self._failed()
            self._count("error")
            raise RedisUnavailable("error", str(exc) or type(exc).__name__) from exc
        except BaseException:
            # Not Redis's fault (a script error, a cancelled request): release a probe slot.
            self._probing = False
            raise
        self._succeeded()
        if self.latency is not None:
            self.latency.observe(time.perf_counter() - start)
        return result

    def _admit(self) -> bool:
        """Open: nothing passes until the cool-down ends; then exactly one probe at a time."""
        if self._probing:
            return False
        if self.state == OPEN:
            if self.clock() < self._open_until:
                return False
            self.state = HALF_OPEN
        self._probing = True
        return True

    def _failed(self) -> None:
        self._failures += 1
        self._probing = False
        if self.state == HALF_OPEN or self._failures >= self.failures_to_open:
            if self.state != OPEN and self.metrics is not None:
                self.metrics.inc("gw_redis_breaker_opened_total")
            self.state = OPEN
            self._open_until = self.clock() + self.cooldown

    def _succeeded(self) -> None:
        self._failures = 0
        self._probing = False
        self.state = CLOSED

    def _count(self, outcome: str) -> None:
        if self.metrics is not None:
            self.metrics.inc("gw_redis_calls_total", outcome=outcome)
