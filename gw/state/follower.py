"""Follow the current config version: pub/sub events for speed, a periodic poll so nothing is missed.

The supervisor runs one (its workers hear of versions from it alone). A change event triggers a
check at once; the poll every GW_CONFIG_POLL_INTERVAL heals a missed event (dropped connection,
failover, a message published while resubscribing). When Redis goes away the follower keeps the
last version and reconnects; when Redis comes back without any version it says so (`empty`,
`on_empty`) so the config source can republish. A source serving content Redis does not hold yet
sets `pending`: the next answer hands on the current version even when its number is the one we
serve, so the source can publish. A version this process cannot open (sealed with a key it does
not hold, or corrupt) is refused: the one served stays, `refused` says why, and the next check
tries again.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from redis.exceptions import RedisError

from gw.state.config_store import ConfigStore, ConfigStoreError, Version, VersionCorrupt, VersionSealed

log = logging.getLogger("gw.state")

OnVersion = Callable[[Version], Awaitable[None] | None]
OnEmpty = Callable[[], Awaitable[None] | None]

STOP_ATTEMPTS = 40
RECONNECT_MIN = 0.05  # first retry after Redis went away; doubles up to the poll interval


class ConfigFollower:
    """Calls `on_version(version)` for every new current version, in order, from one task."""

    def __init__(
        self,
        store: ConfigStore,
        on_version: OnVersion,
        *,
        poll_interval: float = 5.0,
        on_empty: OnEmpty | None = None,
        version: int = 0,
    ) -> None:
        self.store = store
        self.on_version = on_version
        self.on_empty = on_empty
        self.poll_interval = poll_interval
        self.version = version  # the version last handed to on_version (0: none yet)
        self.checksum = ""
        # The source serves content Redis does not hold (a HUP while Redis was away): hand on the
        # current version (or report an empty Redis) at the next answer, whatever its number.
        self.pending = False
        self.connected = False  # the last check reached Redis
        self.empty = False  # Redis answered but holds no current version: the source should publish
        self.checks = 0  # completed checks (tests and /status can watch progress)
        self.error = ""  # why the last check could not reach Redis, for /status
        self.apply_error = ""  # why on_version failed for `version` ("" once one succeeds)
        self.refused = ""  # why the current version cannot be opened here ("" once one can)
        self._refused_number = 0  # the version `refused` is about, so it is logged once
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._stopped = False

    def start(self) -> asyncio.Task[None]:
        self._task = asyncio.get_running_loop().create_task(self.run(), name="gw-config-follower")
        return self._task

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is None:
            return
        self._stopped = True
        # Cancel until it takes: on Python 3.11 a cancellation that lands while a timeout expires
        # (asyncio.timeout here, async_timeout inside redis-py) can be swallowed, and a follower
        # reconnecting to a dead Redis meets timeouts all the time.
        for _ in range(STOP_ATTEMPTS):
            task.cancel()
            done, _pending = await asyncio.wait({task}, timeout=0.05)
            if done:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    task.result()
                return
        log.warning("gw: config follower did not stop; abandoning it")

    def poke(self) -> None:
        """Check now rather than at the next poll (e.g. after the supervisor published)."""
        self._wake.set()

    async def run(self) -> None:
        """Listen and poll until cancelled; never raises for Redis trouble."""
        backoff = RECONNECT_MIN
        while not self._stopped:
            pubsub: Any = None
            try:
                # A Cluster client must know the slot map before it can place a pub/sub connection.
                await self.store.client.initialize()
                pubsub = self.store.client.pubsub()
                await pubsub.subscribe(self.store.channel)
                # Whatever changed while we were not subscribed is caught by this first check.
                await self.check()
                backoff = RECONNECT_MIN
                await self._listen(pubsub)
            except (RedisError, OSError, ConfigStoreError) as exc:
                self._failed(exc)
            finally:
                if pubsub is not None:
                    with contextlib.suppress(Exception):
                        await pubsub.aclose()
            # Backing off is the point here, not synchronisation: Redis is unreachable.
            await self._sleep(backoff)
            backoff = min(backoff * 2, self.poll_interval)

    async def _listen(self, pubsub: Any) -> None:
        loop = asyncio.get_running_loop()
        next_poll = loop.time() + self.poll_interval
        while True:
            timeout = max(0.0, next_poll - loop.time())
            if self._wake.is_set():
                self._wake.clear()
                timeout = 0.0
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=min(timeout, 0.5))
            # The 0.5 s cap lets poke() be seen without a second task; pub/sub reads stay cheap.
            if message is not None or loop.time() >= next_poll or timeout == 0.0:
                await self.check()
                next_poll = loop.time() + self.poll_interval

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._wake.wait()
        self._wake.clear()

    async def check(self) -> None:
        """Compare `current` with ours; fetch, verify and hand on a different one."""
        current = await self.store.current()
        self.connected = True
        self.error = ""
        if current == 0:
            if not self.empty or self.pending:
                if not self.empty:
                    log.warning("gw: Redis holds no config version (fresh or emptied); the source should publish")
                self.empty = True
                self.pending = False  # on_empty sets it again if it cannot publish
                await _maybe_await(self.on_empty() if self.on_empty else None)
        else:
            self.empty = False
            # A Redis that came back empty and was republished restarts numbering: any difference
            # counts, not only a higher number.
            if current != self.version or self.pending:
                try:
                    version = await self.store.fetch(current)
                except (VersionSealed, VersionCorrupt) as exc:
                    self._refuse(current, exc)
                    self.checks += 1
                    return
                self.refused = ""
                if not self.pending and (version.number, version.checksum) == (self.version, self.checksum):
                    self.checks += 1
                    return  # the source published it while it was read (it set ours): not the fleet's
                # Before the callback, which may publish and move us on (or set `pending` again).
                self.version = version.number
                self.checksum = version.checksum
                self.pending = False
                try:
                    await _maybe_await(self.on_version(version))
                    self.apply_error = ""
                except Exception as exc:
                    # The callback's failure (a compile error) is not Redis's: keep serving the old
                    # snapshot and do not retry this version on every poll.
                    log.exception("gw: applying config %s failed", version.label)
                    self.apply_error = f"{version.label}: {exc}"
        self.checks += 1

    def _refuse(self, number: int, exc: ConfigStoreError) -> None:
        """Keep serving our version; say once per version why the current one cannot be used."""
        if number != self._refused_number:
            log.error("gw: refusing config version %d, keeping version %d: %s", number, self.version, exc)
            self._refused_number = number
        self.refused = str(exc)

    def _failed(self, exc: BaseException) -> None:
        if self.connected or not self.error:
            log.warning("gw: config follower lost Redis (%s); keeping version %d", exc, self.version)
        self.connected = False
        self.error = str(exc) or type(exc).__name__
        self.checks += 1


async def _maybe_await(result: Awaitable[None] | None) -> None:
    if inspect.isawaitable(result):
        await result
