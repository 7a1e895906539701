"""This replica's record in Redis (gw.state.replicas), beaten every INTERVAL by the supervisor whatever the config.

Off the data plane: one script call per beat from the supervisor's loop, each bounded by
BEAT_TIMEOUT, so a Redis that is slow or gone costs a failed beat (counted in
gw_fleet_beats_failed_total, logged once per outage) and nothing else; the next beat after Redis
answers again puts the record back. A clean stop removes the record at once; a replica that dies
drops out after gw.state.replicas.TTL.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

from redis.exceptions import RedisError

from gw.observe.metrics import Registry
from gw.state import ConfigStore, Keys
from gw.state.replicas import INTERVAL, beat, leave
from gw.supervisor.log import log

BEAT_TIMEOUT = 1.0  # a beat taking longer counts as failed: the loop never waits on Redis for more
UNREACHABLE = (RedisError, OSError, TimeoutError)


class ReplicaBeat:
    """Beats `record()` under `replica` into Redis from one task until stopped."""

    def __init__(
        self,
        store: Callable[[], ConfigStore | None],
        keys: Keys,
        replica: str,
        record: Callable[[], dict[str, Any]],
        metrics: Registry,
        *,
        interval: float = INTERVAL,
    ) -> None:
        self.store = store  # the publisher's: its client is the supervisor's Redis connection
        self.keys = keys
        self.replica = replica
        self.record = record
        self.metrics = metrics
        self.interval = interval
        self.beats = 0  # beats Redis took
        self.failing = ""  # the error of the outage in progress ("" while beats go through)
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._poke = asyncio.Event()  # stop, or beat now rather than at the next interval

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="gw-replica-beat")

    def wake(self) -> None:
        """Beat now: what the replica serves changed, and other replicas' /fleet should see it at once."""
        self._poke.set()

    async def stop(self) -> None:
        """Stop beating and remove the record (the replica leaves /fleet at once); bounded, never raises."""
        task, self._task = self._task, None
        if task is None:
            return
        self._stopping = True
        self._poke.set()
        # The beat in flight finishes (within BEAT_TIMEOUT) rather than being cut off mid-call,
        # so it cannot land after the removal below.
        done, _ = await asyncio.wait({task}, timeout=BEAT_TIMEOUT + 1.0)
        if not done:
            task.cancel()
        store = self.store()
        if store is None:
            return
        with contextlib.suppress(*UNREACHABLE):
            async with asyncio.timeout(BEAT_TIMEOUT):
                await leave(store.client, self.keys, self.replica)

    async def _run(self) -> None:
        while not self._stopping:
            self._poke.clear()
            try:
                await self.beat()
            except Exception as exc:  # a bug here must not end the beats
                log(f"replica record: {exc!r}")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.interval):
                    await self._poke.wait()

    async def beat(self) -> bool:
        """One beat; whether Redis took it."""
        store = self.store()
        if store is None:
            return False
        try:
            async with asyncio.timeout(BEAT_TIMEOUT):
                await beat(store.client, self.keys, self.replica, self.record())
        except UNREACHABLE as exc:
            self.metrics.inc("gw_fleet_beats_failed_total")
            if not self.failing:
                log(f"replica record: Redis unavailable ({exc!r:.200}); this replica is missing from /fleet meanwhile")
            self.failing = repr(exc) or type(exc).__name__
            return False
        if self.failing:
            log("replica record: Redis answers again; this replica is back in /fleet")
            self.failing = ""
        self.beats += 1
        return True
