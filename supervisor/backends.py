"""Relay the fleet's backend events (circuits, ejections, probe health) from Redis to this replica's workers.

Scripts on any replica publish every change on `Keys.backend_events`; the supervisor subscribes
once for its workers and hands each batch on over their control channels (`{"t":
"backend-events", "events": [...]}`), so a replica holds one subscription, not one per worker.
Pub/sub loses what is published while the connection is down or resubscribing: right after
(re)subscribing and every HEAL_INTERVAL the relay reads the hashes of every backend the config
gives a policy (gw.state.backend_store.read_events) and hands on the items newer than what it
relayed. Workers keep the higher version of an item, so a resent event changes nothing.

Redis gone: the relay retries with backoff and workers keep what they have (the checker, in
gw.supervisor.health, then probes for this replica alone and relays its own events through
`deliver`).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterable
from typing import Any

from redis.exceptions import RedisError

from gw.config.model import Backend, CompiledConfig
from gw.state import Keys
from gw.state.backend_events import decode, item
from gw.state.backend_store import read_events
from gw.supervisor.log import log

Event = dict[str, Any]

HEAL_INTERVAL = 1.0
RECONNECT_MIN = 0.05  # first retry after Redis went away; doubles up to HEAL_INTERVAL
STOP_ATTEMPTS = 40
BATCH = 1000  # events read off the subscription before a batch is handed on


def backends_with_policy(config: CompiledConfig | None) -> dict[str, Backend]:
    """Every backend of `config` a BackendTrafficPolicy applies to (`resilience` set), by name."""
    found: dict[str, Backend] = {}
    if config is None:
        return found
    for rule in config.rules:
        for ref in rule.backend_refs:
            for backend in (ref.backend, *(m.backend for m in ref.mirrors)):
                if backend is not None and backend.resilience is not None:
                    found.setdefault(backend.name, backend)
        for mirror in rule.mirrors:
            if mirror.backend.resilience is not None:
                found.setdefault(mirror.backend.name, mirror.backend)
    return found


class BackendRelay:
    """Calls `send(events)` with every batch of backend events, from one task."""

    def __init__(
        self, client: Any, keys: Keys, send: Callable[[list[Event]], None], *, heal_interval: float = HEAL_INTERVAL
    ) -> None:
        self.client = client
        self.keys = keys
        self.send = send
        self.heal_interval = heal_interval
        self.names: tuple[str, ...] = ()  # backends with a policy in the served config: what heals read
        # The highest-version event of each item (backend, kind, endpoint) and when it arrived
        # (monotonic): a worker that starts gets them all, and a heal hands on only what is newer.
        self.latest: dict[tuple[str, str, str], tuple[Event, float]] = {}
        self.top: dict[str, int] = {}  # per backend, the highest version relayed (Redis's or the checker's own)
        self.connected = False
        self.error = ""
        self.relayed = 0  # events handed on
        self.heals = 0  # completed heal reads
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._stopped = False

    # -- what the supervisor calls ---------------------------------------------------------

    def update(self, names: Iterable[str]) -> None:
        """The served config changed: heal these backends from now on (at once, not at the next tick)."""
        names = tuple(sorted(names))
        if names != self.names:
            self.names = names
            self._wake.set()

    def deliver(self, events: list[Event]) -> None:
        """Hand events on to the workers and remember them (what a subscription or heal brought, or
        what the checker decided on its own while Redis is away)."""
        if not events:
            return
        now = time.monotonic()
        latest, top = self.latest, self.top
        for event in events:
            key = item(event)
            known = latest.get(key)
            if known is None or known[0]["v"] < event["v"]:
                latest[key] = (event, now)
            if event["v"] > top.get(event["b"], 0):
                top[event["b"]] = event["v"]
        self.relayed += len(events)
        self.send(events)

    def snapshot(self) -> list[Event]:
        """The latest event of every item, for a worker that starts or installs a config; `now` is
        moved on by the time each has waited here, so `until - now` is still the time left."""
        clock = time.monotonic()
        out = []
        for event, received in self.latest.values():
            if "now" in event:
                event = {**event, "now": event["now"] + int((clock - received) * 1000)}
            out.append(event)
        return out

    def status(self) -> dict[str, Any]:
        return {"connected": self.connected, "error": self.error, "relayed": self.relayed, "heals": self.heals}

    # -- the task --------------------------------------------------------------------------

    def start(self) -> asyncio.Task[None]:
        self._task = asyncio.get_running_loop().create_task(self.run(), name="gw-backend-relay")
        return self._task

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is None:
            return
        self._stopped = True
        # As the config follower does: a cancellation landing while a timeout expires may be
        # swallowed on Python 3.11, and a relay reconnecting to a dead Redis meets timeouts often.
        for _ in range(STOP_ATTEMPTS):
            task.cancel()
            done, _pending = await asyncio.wait({task}, timeout=0.05)
            if done:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    task.result()
                return
        log("backend relay did not stop; abandoning it")

    async def run(self) -> None:
        """Listen and heal until stopped; never raises for Redis trouble."""
        backoff = RECONNECT_MIN
        while not self._stopped:
            pubsub: Any = None
            try:
                await self.client.initialize()
                pubsub = self.client.pubsub()
                await pubsub.subscribe(self.keys.backend_events)
                await self.heal()  # what was published while we were not subscribed
                backoff = RECONNECT_MIN
                await self._listen(pubsub)
            except (RedisError, OSError) as exc:
                self._failed(exc)
            finally:
                if pubsub is not None:
                    with contextlib.suppress(Exception):
                        await pubsub.aclose()
            with contextlib.suppress(TimeoutError):  # backing off: Redis is unreachable
                async with asyncio.timeout(backoff):
                    await asyncio.Event().wait()
            backoff = min(backoff * 2, self.heal_interval)

    async def _listen(self, pubsub: Any) -> None:
        loop = asyncio.get_running_loop()
        next_heal = loop.time() + self.heal_interval
        while True:
            if self._wake.is_set():
                self._wake.clear()
                next_heal = loop.time()
            timeout = max(0.0, next_heal - loop.time())
            # Capped so that update() is seen soon without a second task.
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=min(timeout, 0.2))
            batch: list[Event] = []
            while message is not None:
                self._decoded(message, batch)
                if len(batch) >= BATCH:
                    break
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.0)
            self.deliver(batch)
            if loop.time() >= next_heal:
                await self.heal()
                next_heal = loop.time() + self.heal_interval

    def _decoded(self, message: dict[str, Any], batch: list[Event]) -> None:
        if message.get("type") != "message":
            return
        event = decode(message["data"])
        if event is None:
            log(f"backend relay: ignored a message that is not a backend event: {message['data']!r:.200}")
            return
        batch.append(event)

    async def heal(self) -> None:
        """Read the stored state of the config's backends; hand on what is newer than what we relayed."""
        names = self.names
        events = await read_events(self.client, self.keys, names) if names else []
        self.connected, self.error = True, ""
        self.heals += 1
        latest = self.latest
        self.deliver([e for e in events if (known := latest.get(item(e))) is None or known[0]["v"] < e["v"]])

    def _failed(self, exc: BaseException) -> None:
        if self.connected or not self.error:
            log(f"backend relay lost Redis ({exc}); workers keep the backend state they have")
        self.connected = False
        self.error = str(exc) or type(exc).__name__
