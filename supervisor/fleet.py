"""The fleet view: what the replicas share through Redis, as this supervisor reads it (/fleet, gw_fleet_*).

Replicas from the records their supervisors beat whatever the config (gw.state.replicas), each
with its workers heartbeating for the rate limits where there are any (what local counting
divides by, gw.state.fleet); the config version Redis holds as current next to the one each
replica serves; the backends' fleet-wide circuits, ejections and probe health
(gw.state.backend_store). Read off the data plane, when /fleet is asked and on a slow timer for
the metrics, each read bounded by READ_TIMEOUT so a Redis that does not answer makes /fleet say
so instead of hanging it or a scrape.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from collections.abc import Callable, Iterable
from typing import Any

from redis.exceptions import RedisError

from gw.state import ConfigStore, Keys
from gw.state.backend_events import CIRCUIT, CLOSED, EJECT, EJECTED, PROBE, UNHEALTHY
from gw.state.backend_store import read_events
from gw.state.config_store import ConfigStoreError, VersionMissing
from gw.state.fleet import TTL, read_workers, replica_of
from gw.state.replicas import TTL as RECORD_TTL
from gw.state.replicas import read_replicas, replica_id
from gw.supervisor.log import log

READ_TIMEOUT = 1.0  # /fleet and the metrics' refresh give Redis this long, then say it is unavailable
REFRESH = 5.0  # seconds between the reads behind the gw_fleet_* gauges
UNREACHABLE = (RedisError, OSError, ConfigStoreError, TimeoutError)


def _iso(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


class FleetView:
    """Reads the fleet's shared state from Redis; `last` is the newest read, for the metrics."""

    def __init__(
        self,
        store: Callable[[], ConfigStore | None],
        keys: Keys,
        served: Callable[[], tuple[int, str]],
        backends: Callable[[], Iterable[str]],
        mode: Callable[[], str],
    ) -> None:
        self.store = store  # the publisher's (None before it connects): its client reads the rest
        self.keys = keys
        self.served = served  # (version, checksum) this replica serves
        self.backends = backends  # the backends with a BackendTrafficPolicy in the served config
        self.mode = mode
        # This supervisor as its record and its workers' ids name it (gw.state.fleet.replica_of).
        self.replica = replica_id(socket.gethostname(), os.getpid())
        self.last: dict[str, Any] | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._refresh())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _refresh(self) -> None:
        while True:
            try:
                self.last = await self.read()
            except Exception as exc:  # a bug here must not end the refreshes
                log(f"fleet view: {exc!r}")
                self.last = None
            await asyncio.sleep(REFRESH)

    async def read(self) -> dict[str, Any]:
        """The /fleet document. With Redis away: `redis.available` false, its error, and what this
        replica knows alone (the version it serves); never an exception."""
        version, checksum = self.served()
        served = {"number": version, "checksum": checksum}
        redis: dict[str, Any] = {"available": False, "mode": self.mode(), "latency_ms": None, "error": None}
        document: dict[str, Any] = {
            "replica": self.replica,
            "redis": redis,
            "read_at": _iso(time.time()),
            "beat_ttl_seconds": RECORD_TTL,
            "heartbeat_ttl_seconds": TTL,
            "workers": None,
            "workers_alive": None,
            "replicas": [],
            "config": {"current": None, "served": served, "differs": None},
            "backends": [],
            "circuits_open": None,
            "endpoints_ejected": None,
        }
        store = self.store()
        if store is None:
            redis["error"] = "no Redis client yet"
            return document
        started = time.perf_counter()
        try:
            async with asyncio.timeout(READ_TIMEOUT):
                now, records = await read_replicas(store.client, self.keys)
                _, workers = await read_workers(store.client, self.keys.fleet.workers)
                number = await store.current()
                current = None
                with contextlib.suppress(VersionMissing):  # trimmed, or Redis came back empty
                    current = await store.summary(number) if number else None
                names = sorted(self.backends())
                events = await read_events(store.client, self.keys, names)
        except UNREACHABLE as exc:
            redis["error"] = f"Redis did not answer within {READ_TIMEOUT:g} s: {exc!r:.200}"
            return document
        redis["latency_ms"] = round((time.perf_counter() - started) * 1000, 3)
        redis["available"] = True
        document["workers"] = len(workers)
        document["replicas"] = replicas = _replicas(
            records, workers, now, self.replica, current.number if current is not None else None
        )
        for entry in replicas:
            if entry["this"]:  # what this replica serves now: its record may be a beat behind a reload
                entry["served"] = dict(served)
                entry["differs"] = current.number != version if current is not None else None
        document["workers_alive"] = sum(r["workers"] or 0 for r in replicas)
        if current is not None:
            document["config"]["current"] = {
                "number": current.number,
                "checksum": current.checksum,
                "origin": current.origin,
                "author": current.author,
                "source": current.source,
                "created": _iso(current.created),
            }
            document["config"]["differs"] = current.number != version
        backends = _backends(names, events)
        document["backends"] = backends
        document["circuits_open"] = sum(1 for b in backends if b["circuit"] and b["circuit"]["state"] != CLOSED)
        document["endpoints_ejected"] = sum(len(b["ejected"]) for b in backends)
        return document

    def gauges(self) -> dict[str, float]:
        """gw_fleet_* from the newest timed read; none while Redis did not answer it (unknown, not 0)."""
        last = self.last
        if last is None or not last["redis"]["available"]:
            return {}
        gauges = {
            "gw_fleet_workers": float(last["workers"]),
            "gw_fleet_replicas": float(len(last["replicas"])),
            "gw_fleet_circuits_open": float(last["circuits_open"]),
            "gw_fleet_endpoints_ejected": float(last["endpoints_ejected"]),
        }
        if (current := last["config"]["current"]) is not None:
            gauges["gw_fleet_config_version"] = float(current["number"])
        return gauges


def _replicas(
    records: list[tuple[str, int, dict[str, Any]]],
    workers: list[tuple[str, int]],
    now: int,
    me: str,
    current: int | None,
) -> list[dict[str, Any]]:
    """One entry per replica record: what the replica serves, its workers alive, its last beat's age,
    and its workers heartbeating for the rate limits (none without a `failureMode: Local` policy).
    Heartbeats of a replica without a record (one that just stopped, or a gw from before the
    records) count in the fleet's `workers` but list no replica."""
    groups: dict[str, list[tuple[str, int]]] = {}
    for worker, beat in workers:
        groups.setdefault(replica_of(worker), []).append((worker, beat))
    out = []
    for replica, beat, record in sorted(records, key=lambda found: found[0]):
        config = record.get("config") or {}
        number = config.get("number")
        counts = record.get("workers") or {}
        members = groups.get(replica, [])
        out.append(
            {
                "replica": replica,
                "host": record.get("host") or replica.rsplit(":", 1)[0],
                "pod": record.get("pod"),
                "this": replica == me,
                "started": record.get("started"),
                "gw_version": record.get("gw_version"),
                "admin": record.get("admin"),
                "served": {"number": number, "checksum": config.get("checksum")},
                "differs": None if current is None or number is None else number != current,
                "workers": counts.get("alive"),
                "workers_configured": counts.get("configured"),
                "beat_age_seconds": _age(now, beat),
                "heartbeats": len(members),
                "heartbeat_age_seconds": _age(now, max(b for _, b in members)) if members else None,
                "worker_ids": sorted(worker for worker, _ in members),
            }
        )
    return out


def _age(now: int, beat: int) -> float:
    return round(max(0, now - beat) / 1000, 3)


def _backends(names: list[str], events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Backend events (gw.state.backend_events) as one entry per backend of `names`: its circuit
    (None: Redis holds none, it never tripped), the endpoints ejected now, and the endpoints the
    active checks found unhealthy."""
    found = {name: {"backend": name, "circuit": None, "ejected": [], "unhealthy": []} for name in names}
    for event in events:
        entry = found[event["b"]]
        now = event.get("now", 0)
        if event["k"] == CIRCUIT:
            entry["circuit"] = {"state": event["s"], "why": event.get("why", ""), "by": event.get("by", "")}
            if until := event.get("until"):
                entry["circuit"]["seconds_left"] = round(max(0, until - now) / 1000, 3)
        elif event["k"] == EJECT and event["s"] == EJECTED:
            left = round(max(0, event.get("until", 0) - now) / 1000, 3)
            entry["ejected"].append({"endpoint": event["e"], "seconds_left": left, "why": event.get("why", "")})
        elif event["k"] == PROBE and event["s"] == UNHEALTHY:
            entry["unhealthy"].append({"endpoint": event["e"], "why": event.get("why", "")})
    return list(found.values())
