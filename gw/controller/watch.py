"""Keep one kind of the cache in step with the API server: list, then watch from the list's resourceVersion.

client-go's reflector, reduced to what gw needs. A watch the server ends (its timeout) or that
drops resumes from the last resourceVersion seen, an event's or a bookmark's; 410 Gone (that
version is older than the server keeps) relists, which replaces the kind's objects whole so
deletions missed meanwhile are seen. Errors retry with exponential backoff and full jitter. A
failure never empties the cache: what was last seen stays until the server says otherwise.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable

from gw.controller.api import Api, ApiError, Gone
from gw.controller.cache import Cache
from gw.controller.kinds import Kind

log = logging.getLogger("gw.controller")

WATCH_TIMEOUT = (300, 600)  # seconds the server keeps a watch open, drawn per watch (client-go: 5-10 min)


class Backoff:
    """Exponential backoff with full jitter: the n-th retry waits up to base·2ⁿ, at most `cap`."""

    def __init__(self, base: float = 0.2, cap: float = 30.0) -> None:
        self.base, self.cap = base, cap
        self.failures = 0

    def next(self) -> float:
        self.failures += 1
        return random.uniform(0, min(self.cap, self.base * 2**self.failures))

    def reset(self) -> None:
        self.failures = 0


class Reflector:
    """List and watch one kind into the cache, forever (until cancelled)."""

    def __init__(
        self,
        api: Api,
        kind: Kind,
        cache: Cache,
        *,
        backoff: Backoff | None = None,
        on_restart: Callable[[str, str], None] = lambda kind, why: None,
    ) -> None:
        self.api = api
        self.kind = kind
        self.cache = cache
        self.backoff = backoff or Backoff()
        self.on_restart = on_restart
        self.resource_version = ""  # "" → the next round lists
        self.synced = False  # listed once: the cache holds this kind
        self.reachable = False  # the last request got an answer
        self.error = ""
        self.lists = 0
        self.restarts = 0

    async def run(self) -> None:
        while True:
            try:
                if not self.resource_version:
                    items, self.resource_version = await self.api.list(self.kind)
                    self.cache.replace(self.kind.cache_name, items)
                    self.lists += 1
                    self.synced = self.reachable = True
                    self.error = ""
                    self.backoff.reset()
                await self._watch()
                self._restart("watch ended")
            except Gone as exc:
                self.resource_version = ""  # relist at once: the server answered
                self._restart(f"resourceVersion expired ({exc}): relisting")
            except ApiError as exc:
                # Resume from the same resourceVersion: a short outage needs no relist.
                self.reachable = False
                self.error = str(exc)
                delay = self.backoff.next()
                self._restart(f"{exc}; retrying in {delay:.2f}s")
                await asyncio.sleep(delay)

    async def _watch(self) -> None:
        timeout = random.randint(*WATCH_TIMEOUT)
        async for event, obj in self.api.watch(self.kind, self.resource_version, timeout):
            self.reachable = True
            self.error = ""
            self.backoff.reset()
            if event == "OPEN":
                continue
            version = (obj.get("metadata") or {}).get("resourceVersion")
            if event != "BOOKMARK":
                typed = {"apiVersion": self.kind.api_version, "kind": self.kind.kind, **obj}
                self.cache.apply(self.kind.cache_name, event, typed)
            if version:
                self.resource_version = str(version)

    def _restart(self, why: str) -> None:
        self.restarts += 1
        log.info("watch %s: %s", self.kind.label, why)
        self.on_restart(self.kind.label, why)
