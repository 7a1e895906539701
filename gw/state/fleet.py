"""How many workers the fleet has now: each worker heartbeats into Redis and reads the live count.

The count divides a limit when a policy falls back to local counting (failureMode: Local), so
the fleet as a whole still admits about the limit while Redis is gone: the last count read
before Redis went away is the one used.

A worker's id is "host:supervisor pid:pid:random": the part before the last two fields names its
replica (one supervisor), so the fleet view (`read_workers`, the supervisor's /fleet) tells
replicas apart even when two share a machine.
"""

from __future__ import annotations

import asyncio
import os
import socket
from typing import Any

from gw.state.guard import RedisUnavailable
from gw.state.scripts import load

SCRIPT = load("heartbeat")
INTERVAL = 1.0  # seconds between heartbeats
TTL = 3.5  # seconds of silence after which a worker no longer counts (three missed beats)


class Fleet:
    """This worker's heartbeat and the live worker count it reads back."""

    def __init__(self, loop: asyncio.AbstractEventLoop, redis: Any, guard: Any, key: str) -> None:
        self.loop = loop
        self.redis = redis
        self.guard = guard
        self.key = key
        self.id = f"{socket.gethostname()}:{os.getppid()}:{os.getpid()}:{os.urandom(4).hex()}"
        self.live = 0  # 0: not known yet
        self._timer: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._timer is None and self._task is None:
            self._beat()

    def _beat(self) -> None:
        self._timer = None
        self._task = self.loop.create_task(self._send())

    async def _send(self) -> None:
        try:
            self.live = int(await self.guard.call(SCRIPT, self.redis, [self.key], [self.id, int(TTL * 1000)]))
        except RedisUnavailable:
            pass  # keep the last count: it is what the local fallback divides by
        finally:
            self._task = None
            self._timer = self.loop.call_later(INTERVAL, self._beat)

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._task is not None:
            self._task.cancel()
            self._task = None


def replica_of(worker: str) -> str:
    """The replica a worker id belongs to: "host:supervisor pid" (just "host" for an id of a gw
    from before the supervisor pid was in it)."""
    return worker.rsplit(":", 2)[0]


async def read_workers(client: Any, key: str) -> tuple[int, list[tuple[str, int]]]:
    """Redis's clock (ms) and the workers that beat within TTL of it, as (id, last beat in ms):
    read, not trimmed (trimming is the heartbeat's), so a reader changes nothing."""
    seconds, micros = await client.time()
    now = int(seconds) * 1000 + int(micros) // 1000
    live = await client.zrangebyscore(key, now - int(TTL * 1000), "+inf", withscores=True)
    return now, [(_str(worker), int(beat)) for worker, beat in live]


def _str(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
