"""The guard around every Redis call on a request path: a time budget and a breaker around Redis.

A slow Redis costs a request at most the budget (GW_REDIS_BUDGET), precisely:

    added latency <= budget + the budget timer's lateness + one loop turn

The budget timer starts when the call is made, in the same step that writes its command (the
request-path client has no socket timeout of its own: redis-py would send through a task of
asyncio.wait_for, a loop turn later). When the timer runs and the call has no answer yet, the
call is not failed at once: a worker that was descheduled or busy when the deadline passed runs
due timers before it looks at its sockets (uvloop polls I/O, then runs timers, then the
callbacks the poll queued), so a reply that came within the budget may be in the socket or read
and not yet handed on. The call gets the next loop turn (one I/O poll and the callbacks it
queues); at the start of the turn after, it fails unless its task has a reply to process (it
waits on nothing, or on something done), which it may then finish, for at most GRACE_TURNS turns
in all. "Lateness" is what no timer can avoid: how long past the deadline the process was busy
or off the CPU. A call that waits through tasks of its own (a Cluster pipeline: one per node)
gets the turn but not the extra steps, so a reply arriving then may still be dropped.

After FAILURES_TO_OPEN consecutive failures or timeouts the breaker opens and calls fail at once,
without touching the network, until COOLDOWN has passed; then one call probes (half-open) and its
outcome closes or reopens the breaker. Callers get RedisUnavailable and apply their policy's
failureMode.
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
GRACE_TURNS = 4  # loop turns a call past its budget may take while its reply is being read

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
        task = asyncio.current_task()
        assert task is not None
        budget = Budget(task, self.budget)
        try:
            result = await fn(*args)
        except asyncio.CancelledError:
            if budget.expired and task.uncancel() == 0:
                self._failed()
                self._count("timeout")
                raise RedisUnavailable("timeout", f"no answer within {self.budget * 1000:g} ms") from None
            self._probing = False  # cancelled from outside (a request gone, a worker stopping)
            raise
        except _UNAVAILABLE as exc:
            self._failed()
            self._count("error")
            raise RedisUnavailable("error", str(exc) or type(exc).__name__) from exc
        except BaseException:
            # Not Redis's fault (a script error): release a probe slot.
            self._probing = False
            raise
        finally:
            budget.handle.cancel()
        if budget.expired:  # an answer despite the cancellation (fn swallowed it): not ours to keep
            task.uncancel()
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


class Budget:
    """The deadline of one guarded call: cancels its task once the loop has looked for its reply.

    See the module's docstring for the turns a late reply is given and why.
    """

    __slots__ = ("expired", "handle", "task", "turns")

    def __init__(self, task: asyncio.Task[Any], seconds: float) -> None:
        self.task = task
        self.turns = 0
        self.expired = False
        self.handle: asyncio.Handle = task.get_loop().call_later(seconds, self._due)

    def _due(self) -> None:
        # Due timers run before the callbacks of the poll that read a reply (uvloop): wait a turn.
        self.handle = self.task.get_loop().call_soon(self._check)

    def _check(self) -> None:
        self.turns += 1
        if self.turns < 2 or (self.turns < GRACE_TURNS and self._has_reply()):
            self.handle = self.task.get_loop().call_soon(self._check)
            return
        self.expired = True
        self.task.cancel()

    def _has_reply(self) -> bool:
        """True when the task is about to run: what it waited on (a socket read) is done."""
        waiter = getattr(self.task, "_fut_waiter", None)  # asyncio.Task's own, in C and Python
        return waiter is None or waiter.done()
