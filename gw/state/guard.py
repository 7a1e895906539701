"""The guard around every Redis call on a request path: a time budget and a breaker around Redis.

A slow Redis costs a request at most the budget (GW_REDIS_BUDGET) of Redis's own time:

    added latency <= budget + the worker's own lateness + one loop turn

The budget counts Redis's time, not the machine's. On a saturated machine (a flood) the worker
waits for a CPU for milliseconds at a time, and so does a Redis that runs on the same machine (the
embedded Valkey, a sidecar): neither is Redis being slow. So the longer of the times this thread
and a local Redis process (`watch_server`) spent runnable but off a CPU (Linux's schedstat run
delay, read when the budget timer runs) is not charged: the timer re-arms for the part of the
budget not yet spent, and so it does when it runs early (uvloop measures a timer from the time its
loop turn began). A stopped or hung Redis is not runnable, so its outage is charged in full. The budget
timer starts when the call is made, in the same step that writes its command (the request-path
client has no socket timeout of its own: redis-py would send through a task of asyncio.wait_for,
a loop turn later). When the budget is spent and the call has no answer yet, the call is not
failed at once: due timers run before the loop looks at its sockets (uvloop polls I/O, then runs
timers, then the callbacks the poll queued), so a reply that came within the budget may be in the
socket or read and not yet handed on. The call gets the next loop turn (one I/O poll and the
callbacks it queues); at the start of the turn after, it fails unless its task has a reply to
process (it waits on nothing, or on something done), which it may then finish, for at most
GRACE_TURNS turns in all. "Own lateness" is what no timer can avoid: how long the worker ran other
callbacks past the deadline. A call that waits through tasks of its own (a Cluster pipeline: one
per node) gets the turn but not the extra steps.

A caller that can use a late answer passes `overdue`: when the budget is spent, `overdue()` is
called (the caller decides its requests without Redis) and the call goes on, for at most
LATE_LIMIT, so that Redis's answer still updates what the caller knows (a rate limiter's tokens
and over-limit keys); past LATE_LIMIT it is abandoned. Without `overdue` the call is cancelled.

After FAILURES_TO_OPEN consecutive failures or overdue calls the breaker opens and calls fail at
once, without touching the network, until COOLDOWN has passed; then one call probes (half-open)
and its outcome closes or reopens the breaker; an answer, even a late one, closes it. Callers get
RedisUnavailable and apply their policy's failureMode.
"""

from __future__ import annotations

import asyncio
import os
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
LATE_LIMIT = 1.0  # seconds an overdue call may still answer before it is abandoned
SCHEDSTAT = "/proc/thread-self/schedstat"  # "<ns on CPU> <ns runnable, waiting for a CPU> <slices>"

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


class CpuWait:
    """Seconds spent runnable but waiting for a CPU, from Linux's schedstat (0.0 where it does not
    say): this thread's, and the Redis server's when it runs on this machine (`watch_server`).

    A saturated machine delays both; neither is Redis being slow. Opened by the thread that reads
    it (the worker's loop): /proc/thread-self names the opener.
    """

    __slots__ = ("own", "server")

    def __init__(self) -> None:
        self.own = _open(SCHEDSTAT)
        self.server: int | None = None

    def watch_server(self, pid: int) -> bool:
        """Also read the local Redis process `pid` (its main thread runs the commands), if it is one."""
        try:
            comm = open(f"/proc/{pid}/comm").read()  # noqa: SIM115 - one read
        except OSError:
            return False
        if not any(name in comm for name in ("redis", "valkey")):
            return False  # a pid of another pid namespace (Redis in a container of its own)
        if self.server is not None:
            os.close(self.server)
        self.server = _open(f"/proc/{pid}/schedstat")
        return self.server is not None

    def __call__(self) -> tuple[float, float]:
        return _run_delay(self.own), _run_delay(self.server)



def _open(path: str) -> int | None:
    try:
        return os.open(path, os.O_RDONLY)
    except OSError:
        return None


def _run_delay(fd: int | None) -> float:
    if fd is None:
        return 0.0
    try:
        return int(os.pread(fd, 96, 0).split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return 0.0


class RedisUnavailable(Exception):
    """A guarded Redis call did not complete: `reason` is "timeout", "error" or "open" (breaker)."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"redis {reason}" + (f": {detail}" if detail else ""))
        self.reason = reason


class RedisGuard:
    """Budget and breaker for one process's Redis calls; one instance per worker, shared by all callers."""

    __slots__ = (
        "_cpu_wait",
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
        self._cpu_wait: CpuWait | None = None  # opened by the first call, in the loop's thread
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

    @property
    def cpu_wait(self) -> CpuWait:
        cpu_wait = self._cpu_wait
        if cpu_wait is None:  # opened in the loop's thread, by its first call
            cpu_wait = self._cpu_wait = CpuWait()
        return cpu_wait

    def watch_server(self, pid: int) -> bool:
        """Redis runs on this machine as process `pid`: the time it waits for a CPU is not charged."""
        return self.cpu_wait.watch_server(pid)

    def refuses(self) -> bool:
        """True when a call now would fail at once (breaker open, cool-down running or a probe out).

        Lets a caller take its failure path without creating a task for a call bound to fail.
        """
        return self.state != CLOSED and (self._probing or (self.state == OPEN and self.clock() < self._open_until))

    async def call(self, fn: Callable[..., Awaitable[T]], *args: Any, overdue: Callable[[], None] | None = None) -> T:
        """`await fn(*args)` within the budget; raises RedisUnavailable instead of waiting on Redis.

        `fn` is called only when the breaker lets the call through, so an open breaker costs no
        coroutine, no task and no I/O. With `overdue`, a call past its budget calls it and goes on
        (see the module's docstring); it raises RedisUnavailable only past LATE_LIMIT.
        """
        if self.state != CLOSED and not self._admit():
            self._count("open")
            raise RedisUnavailable("open")
        start = time.perf_counter()
        task = asyncio.current_task()
        assert task is not None
        budget = Budget(task, self.budget, self.cpu_wait, None if overdue is None else self._overdue_then(overdue))
        try:
            result = await fn(*args)
        except asyncio.CancelledError:
            if budget.expired and task.uncancel() == 0:
                if not budget.late:  # an overdue call was counted when it became overdue
                    self._failed()
                    self._count("timeout")
                raise RedisUnavailable("timeout", f"no answer within {self.budget * 1000:g} ms") from None
            self._probing = False  # cancelled from outside (a request gone, a worker stopping)
            raise
        except _UNAVAILABLE as exc:
            if not budget.late:
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
        if budget.late:
            self._count("late")
        self._succeeded()
        if self.latency is not None:
            self.latency.observe(time.perf_counter() - start)
        return result

    def _overdue_then(self, overdue: Callable[[], None]) -> Callable[[], None]:
        def became_overdue() -> None:
            self._failed()
            self._count("timeout")
            overdue()

        return became_overdue

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
    """The deadline of one guarded call: cancels its task (or reports it overdue) once the budget
    of Redis's time is spent and the loop has looked for its reply.

    See the module's docstring for what is charged, the turns a late reply is given, and why.
    """

    __slots__ = ("cpu_wait", "expired", "handle", "late", "overdue", "seconds", "start", "task", "turns", "waited")

    def __init__(
        self, task: asyncio.Task[Any], seconds: float, cpu_wait: CpuWait, overdue: Callable[[], None] | None = None
    ) -> None:
        self.task = task
        self.seconds = seconds
        self.cpu_wait = cpu_wait
        self.overdue = overdue
        self.turns = 0
        self.expired = False
        self.late = False
        self.start = time.perf_counter()
        self.waited: tuple[float, float] = cpu_wait()
        self.handle: asyncio.Handle = task.get_loop().call_later(seconds, self._due)

    def charged(self) -> float:
        """Seconds of the call so far, less the longer of the times this worker and a local Redis
        waited for a CPU (they may have waited at once: subtracting both could hide a stuck Redis)."""
        own, server = self.cpu_wait()
        return (time.perf_counter() - self.start) - max(own - self.waited[0], server - self.waited[1])

    def _due(self) -> None:
        left = self.seconds - self.charged()
        if left > 0:  # the timer ran early, or the worker was off the CPU: Redis has time left
            self.handle = self.task.get_loop().call_later(left, self._due)
            return
        # Due timers run before the callbacks of the poll that read a reply (uvloop): wait a turn.
        self.handle = self.task.get_loop().call_soon(self._check)

    def _check(self) -> None:
        self.turns += 1
        if self.turns < 2 or (self.turns < GRACE_TURNS and self._has_reply()):
            self.handle = self.task.get_loop().call_soon(self._check)
            return
        overdue = self.overdue
        if overdue is not None:  # the caller can use a late answer: let the call go on a while
            self.overdue = None
            self.late = True
            self.handle = self.task.get_loop().call_later(LATE_LIMIT, self._abandon)
            overdue()
            return
        self._abandon()

    def _abandon(self) -> None:
        self.expired = True
        self.task.cancel()

    def _has_reply(self) -> bool:
        """True when the task is about to run: what it waited on (a socket read) is done."""
        waiter = getattr(self.task, "_fut_waiter", None)  # asyncio.Task's own, in C and Python
        return waiter is None or waiter.done()
