"""Every replica's record in Redis: its supervisor beats it whatever the config, /fleet reads them.

The workers' heartbeats (gw.state.fleet) exist only while a RateLimitPolicy falls back to local
counting; these records exist for every replica, so a plain deployment's fleet is visible too. A
record is a small JSON object (`record`); the set of members holds each replica's last beat on
Redis's clock, and both expire after TTL, so a replica that dies drops out on its own while one
that stops cleanly leaves at once (`leave`).
"""

from __future__ import annotations

from typing import Any

import orjson

from gw.state.keys import Keys
from gw.state.scripts import load

BEAT = load("replica_beat")
LEAVE = load("replica_leave")
INTERVAL = 2.0  # seconds between a supervisor's beats
TTL = 7.0  # seconds of silence after which a replica no longer counts (three missed beats)


def replica_id(host: str, supervisor_pid: int) -> str:
    """A replica's id, "host:supervisor pid": what gw.state.fleet.replica_of makes of its workers' ids."""
    return f"{host}:{supervisor_pid}"


async def beat(client: Any, keys: Keys, replica: str, record: dict[str, Any], ttl: float = TTL) -> int:
    """Store this replica's record and beat; the server time (ms) of the beat."""
    members = keys.replicas
    return int(
        await BEAT(client, [members.members, members.record(replica)], [replica, orjson.dumps(record), int(ttl * 1000)])
    )


async def leave(client: Any, keys: Keys, replica: str) -> bool:
    """Remove this replica's record now (a clean stop); whether it was there."""
    members = keys.replicas
    return bool(await LEAVE(client, [members.members, members.record(replica)], [replica]))


async def read_replicas(client: Any, keys: Keys, ttl: float = TTL) -> tuple[int, list[tuple[str, int, dict[str, Any]]]]:
    """Redis's clock (ms) and the replicas that beat within `ttl` of it, as (id, last beat in ms,
    record): read, not trimmed (trimming is the beat's). A member whose record expired or does not
    parse is left out: it is on its way out."""
    seconds, micros = await client.time()
    now = int(seconds) * 1000 + int(micros) // 1000
    members = keys.replicas
    live = await client.zrangebyscore(members.members, now - int(ttl * 1000), "+inf", withscores=True)
    if not live:
        return now, []
    ids = [_str(member) for member, _ in live]
    # One family: the records share the set's slot, so one MGET reads them on a Cluster too.
    records = await client.mget([members.record(replica) for replica in ids])
    found = []
    for replica, (_, beat_ms), raw in zip(ids, live, records, strict=True):
        if raw is None:
            continue
        try:
            record = orjson.loads(raw)
        except orjson.JSONDecodeError:
            continue
        if isinstance(record, dict):
            found.append((replica, int(beat_ms), record))
    return now, found


def _str(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
