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

from redis.asyncio import Redis
from redis.exceptions import NoScriptError, ResponseError

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
        execute = _on_one_connection if isinstance(self.redis, Redis) else _by_redis_py
        # Not pipe.evalsha(): redis-py's Cluster pipeline refuses it by name (the command itself
        # routes by its first key like any other).
        replies = await execute(
            self.redis, [("EVALSHA", script.sha, len(keys), *keys, *args) for keys, args, _, _ in calls]
        )
        missing = [i for i, r in enumerate(replies) if isinstance(r, NoScriptError)]
        if missing:
            evals = [("EVAL", script.source, len(calls[i][0]), *calls[i][0], *calls[i][1]) for i in missing]
            for i, reply in zip(missing, await execute(self.redis, evals), strict=True):
                replies[i] = reply
        # Connection trouble raises out of execute (the guard counts it); an error reply (a
        # read-only replica, a script bug) fails only its own decision.
        return [RedisUnavailable("error", str(r)) if isinstance(r, Exception) else r for r in replies]


async def _on_one_connection(redis: Redis, commands: list[tuple[Any, ...]]) -> list[Any]:
    """The commands written at once on one pooled connection, their replies read in order.

    What redis-py's pipeline does, without its last step: it returns the connection to the pool
    through asyncio.shield, a task of its own, so the replies reach the caller a loop turn after
    they were read, and on a saturated worker a loop turn is milliseconds of the budget.
    """
    pool = redis.connection_pool
    conn = await pool.get_connection()
    try:
        await conn.send_packed_command(conn.pack_commands(commands), check_health=False)
        replies: list[Any] = []
        for _ in commands:
            try:
                replies.append(await conn.read_response())
            except ResponseError as exc:  # this command's error reply (NOSCRIPT among them)
                replies.append(exc)
    except BaseException:
        # Cut short (an error, the budget, a stopping worker): replies may be left unread on it.
        await conn.disconnect(nowait=True)
        raise
    finally:
        await pool.release(conn)
    return replies


async def _by_redis_py(redis: Any, commands: list[tuple[Any, ...]]) -> list[Any]:
    """A Cluster: redis-py's pipeline routes each command to its node by its first key."""
    pipe = redis.pipeline(transaction=False)
    for command in commands:
        pipe.execute_command(*command)
    return list(await pipe.execute(raise_on_error=False))


def _overdue(calls: list[Call]) -> None:
    for call in calls:
        if call[3] is not None:
            call[3]()
