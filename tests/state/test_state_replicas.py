"""Replica records against a real Valkey (standalone and Cluster): beat, read back, expire, leave; and
the supervisor's beat (gw.supervisor.replica) that keeps them."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from types import SimpleNamespace

from gw.observe.metrics import Registry
from gw.state import Keys, connect
from gw.state.replicas import beat, leave, read_replicas
from gw.supervisor.replica import ReplicaBeat
from tests.support import valkey


async def test_replicas_beat_read_back_and_leave(server: valkey.Server, keys: Keys) -> None:
    client = connect(server.url)
    try:
        first = await beat(client, keys, "a:1", {"replica": "a:1", "workers": {"configured": 2, "alive": 2}})
        await beat(client, keys, "b:2", {"replica": "b:2"})
        now, found = await read_replicas(client, keys)
        assert now >= first
        assert {(replica, record["replica"]) for replica, _, record in found} == {("a:1", "a:1"), ("b:2", "b:2")}
        assert next(record for replica, _, record in found if replica == "a:1")["workers"]["alive"] == 2
        assert await leave(client, keys, "a:1") is True
        assert [replica for replica, _, _ in (await read_replicas(client, keys))[1]] == ["b:2"]
        assert await client.exists(keys.replicas.record("a:1")) == 0
        assert await leave(client, keys, "a:1") is False
    finally:
        await client.aclose()


async def test_a_silent_replica_drops_out_after_the_ttl(server: valkey.Server, keys: Keys) -> None:
    client = connect(server.url)
    try:
        await beat(client, keys, "gone:1", {"replica": "gone:1"}, ttl=0.2)
        deadline = asyncio.get_running_loop().time() + 10
        while (await read_replicas(client, keys, ttl=0.2))[1]:  # the record's own PX ends it
            assert asyncio.get_running_loop().time() < deadline, "the record did not expire"
            await asyncio.sleep(0.01)
        assert await client.exists(keys.replicas.record("gone:1")) == 0
        # The next beat of a replica with that TTL trims the silent member from the set as well.
        await beat(client, keys, "live:2", {"replica": "live:2"}, ttl=0.2)
        assert await client.zrange(keys.replicas.members, 0, -1) == [b"live:2"]
    finally:
        await client.aclose()


async def test_replica_records_work_on_a_cluster(cluster: valkey.Cluster, keys: Keys) -> None:
    client = connect(cluster.url)
    try:
        await beat(client, keys, "a:1", {"replica": "a:1"})
        await beat(client, keys, "b:2", {"replica": "b:2"})
        _now, found = await read_replicas(client, keys)
        assert sorted(replica for replica, _, _ in found) == ["a:1", "b:2"]
        assert await leave(client, keys, "b:2") is True
        assert [replica for replica, _, _ in (await read_replicas(client, keys))[1]] == ["a:1"]
    finally:
        await client.aclose()


async def test_the_supervisors_beat_stores_a_change_when_woken_and_stop_removes_the_record(
    server: valkey.Server, keys: Keys
) -> None:
    client = connect(server.url)
    served = {"number": 1}
    # An hour between beats: only the first beat and wake() can store anything in this test.
    replica = ReplicaBeat(lambda: SimpleNamespace(client=client), keys, "h:1", lambda: {"config": dict(served)},  # type: ignore[arg-type,return-value]
                          Registry(), interval=3600)  # fmt: skip

    async def stored() -> int | None:
        found = {r: record for r, _, record in (await read_replicas(client, keys))[1]}
        return found["h:1"]["config"]["number"] if "h:1" in found else None

    try:
        replica.start()
        await _until(lambda: stored(), 1)
        served["number"] = 2
        replica.wake()
        await _until(lambda: stored(), 2)
        await replica.stop()
        assert await stored() is None and replica.failing == "" and replica.beats == 2
    finally:
        await replica.stop()
        await client.aclose()


async def test_a_beat_redis_does_not_answer_is_counted_and_fails_quietly(own_server: valkey.Server, keys: Keys) -> None:
    client = connect(own_server.url)
    metrics = Registry()
    replica = ReplicaBeat(lambda: SimpleNamespace(client=client), keys, "h:1", dict, metrics)  # type: ignore[arg-type,return-value]
    try:
        assert await replica.beat() is True
        own_server.stop()
        assert await replica.beat() is False and await replica.beat() is False
        assert replica.failing and metrics.counters[("gw_fleet_beats_failed_total", ())] == 2
        await replica.stop()  # the removal fails quietly too
    finally:
        await client.aclose()


async def _until(read: Callable[[], Awaitable[object]], expected: object, timeout: float = 10.0) -> None:
    """Poll an async read until it returns `expected` (a deadline, not a sleep)."""
    async with asyncio.timeout(timeout):
        while await read() != expected:
            await asyncio.sleep(0.01)
