"""Script calls of one event-loop turn sent together: one pipeline, one round trip, one connection.

Under load a worker has many exact decisions in flight at once; a call (and a pooled connection)
each would spend the round trips and connections Redis and the budget can least afford. Calls
made while the loop runs callbacks are queued and sent when that turn ends, at most MAX_BATCH per
pipeline, each pipeline one guarded call: a slow Redis costs every decision in it at most the
budget. A call may pass `overdue`: called when its pipeline passes the budget, after which the
pipeline goes on (gw.state.guard, LATE_LIMIT) and `then` still gets the late answer. A NOSCRIPT
answer (a restarted or flushed server) re-sends those calls by EVAL, once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from redis.exceptions import NoScriptError

from gw.state.guard import RedisUnavailable
from gw.state.scripts import Script

MAX_BATCH = 256

Then = Callable[[Any], None]  # receives the script's reply or a RedisUnavailable
Overdue = Callable[[], None]
Call = tuple[list[bytes], list[Any], Then, Overdue | None]


class ScriptBatcher:
    """Queues calls of one script and sends each loop turn's calls as one pipeline."""

    def __init__(self, loop: asyncio.AbstractEventLoop, script: Script, redis: Any, guard: Any) -> None:
        self.loop = loop
        self.script = script
        self.redis = redis
        self.guard = guard
        self.queue: list[Call] = []
        self.tasks: set[asyncio.Task[None]] = set()

    def submit(self, keys: list[bytes], args: list[Any], then: Then, overdue: Overdue | None = None) -> None:
        if not self.queue:
            # The task's first step runs after this turn's callbacks: it takes what they queued.
            self._start(self._flush())
        self.queue.append((keys, args, then, overdue))

    def _start(self, coro: Any) -> None:
        task = self.loop.create_task(coro)
        self.tasks.add(task)  # a reference until done: the loop keeps only weak ones
        task.add_done_callback(self.tasks.discard)

    async def _flush(self) -> None:
        queue, self.queue = self.queue, []
        for start in range(MAX_BATCH, len(queue), MAX_BATCH):
            self._start(self._send(queue[start : start + MAX_BATCH]))
        await self._send(queue[:MAX_BATCH])

    async def _send(self, calls: list[Call]) -> None:
        overdue = None
        if any(call[3] is not None for call in calls):
            overdue = lambda: _overdue(calls)  # noqa: E731 - one per pipeline, not per call
        try:
            replies: list[Any] = await self.guard.call(self._pipeline, calls, overdue=overdue)
        except RedisUnavailable as exc:
            replies = [exc] * len(calls)
        except Exception as exc:  # a bug, not an outage; the requests must still be decided
            replies = [RedisUnavailable("error", f"{type(exc).__name__}: {exc}")] * len(calls)
        for call, reply in zip(calls, replies, strict=True):
            call[2](reply)

    async def _pipeline(self, calls: list[Call]) -> list[Any]:
        script = self.script
        pipe = self.redis.pipeline(transaction=False)
        for keys, args, _, _ in calls:
            # Not pipe.evalsha(): redis-py's Cluster pipeline refuses it by name (the command
            # itself routes by its first key like any other).
            pipe.execute_command("EVALSHA", script.sha, len(keys), *keys, *args)
        replies = await pipe.execute(raise_on_error=False)
        missing = [i for i, r in enumerate(replies) if isinstance(r, NoScriptError)]
        if missing:
            pipe = self.redis.pipeline(transaction=False)
            for i in missing:
                keys, args, _, _ = calls[i]
                pipe.eval(script.source, len(keys), *keys, *args)
            for i, reply in zip(missing, await pipe.execute(raise_on_error=False), strict=True):
                replies[i] = reply
        # Connection trouble raises out of execute() (the guard counts it); an error reply (a
        # read-only replica, a script bug) fails only its own decision.
        return [RedisUnavailable("error", str(r)) if isinstance(r, Exception) else r for r in replies]


def _overdue(calls: list[Call]) -> None:
    for call in calls:
        if call[3] is not None:
            call[3]()
