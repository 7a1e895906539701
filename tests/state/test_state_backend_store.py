"""The backend hashes read back as events, the active checker's lease and its probe-result scripts,
against a real Valkey."""

from __future__ import annotations

import asyncio
from typing import Any

from gw.state import Client, Keys, connect
from gw.state.backend_events import decode
from gw.state.backend_store import hold_lease, probe_result, probe_resync, read_events, release_lease
from tests.support import valkey

BACKEND = "Backend default/api"


async def test_read_events_turns_the_circuit_and_endpoint_hashes_into_events(client: Client, keys: Keys) -> None:
    backend = keys.backend(BACKEND)
    now = int((await client.time())[0]) * 1000
    await client.hset(backend.circuit, mapping={
        "s": "open", "v": 7, "since": now - 10, "until": now + 30000,
        "why": "failure ratio 0.6 over 40 calls", "by": "w1", "granted": 0,
    })  # fmt: skip
    await client.hset(backend.endpoints, mapping={
        "10.0.0.1:80|c5": 3,  # counts are not events
        "10.0.0.1:80|ev": 5, "10.0.0.1:80|until": now + 60000, "10.0.0.1:80|since": now - 5,
        "10.0.0.1:80|times": 1, "10.0.0.1:80|why": "5 consecutive 5xx", "10.0.0.1:80|by": "w2",
        "10.0.0.2:80|ev": 4, "10.0.0.2:80|until": now - 1000, "10.0.0.2:80|why": "x", "10.0.0.2:80|by": "w3",
        "10.0.0.2:80|pv": 6, "10.0.0.2:80|pok": "0", "10.0.0.2:80|psince": now - 3,
        "10.0.0.2:80|pwhy": "3 consecutive failures: status 500", "10.0.0.2:80|pby": "c1",
    })  # fmt: skip
    events = await read_events(client, keys, [BACKEND, "Backend default/none"])
    assert all(abs(e.pop("now") - now) < 60000 for e in events)  # Redis's clock, whatever ours says
    assert events == [
        {"b": BACKEND, "k": "circuit", "v": 7, "s": "open", "until": now + 30000, "since": now - 10,
         "why": "failure ratio 0.6 over 40 calls", "by": "w1"},
        {"b": BACKEND, "k": "eject", "e": "10.0.0.1:80", "v": 5, "s": "ejected", "until": now + 60000,
         "since": now - 5, "why": "5 consecutive 5xx", "by": "w2"},
        {"b": BACKEND, "k": "eject", "e": "10.0.0.2:80", "v": 4, "s": "returned", "until": now - 1000,
         "why": "x", "by": "w3"},
        {"b": BACKEND, "k": "probe", "e": "10.0.0.2:80", "v": 6, "s": "unhealthy", "since": now - 3,
         "why": "3 consecutive failures: status 500", "by": "c1"},
    ]  # fmt: skip


async def test_one_checker_holds_a_lease_until_it_releases_it(client: Client, keys: Keys) -> None:
    assert await hold_lease(client, keys, BACKEND, "a", 10.0)
    assert not await hold_lease(client, keys, BACKEND, "b", 10.0)
    assert await hold_lease(client, keys, BACKEND, "a", 10.0)  # renewed
    assert not await release_lease(client, keys, BACKEND, "b")  # not b's to release
    assert await release_lease(client, keys, BACKEND, "a")
    assert await hold_lease(client, keys, BACKEND, "b", 10.0)


async def test_a_lease_not_renewed_passes_to_another_checker_when_it_expires(client: Client, keys: Keys) -> None:
    assert await hold_lease(client, keys, BACKEND, "a", 0.05)
    assert 0 < await client.pttl(keys.backend(BACKEND).lease) <= 50
    took = False
    for _ in range(200):
        if await hold_lease(client, keys, BACKEND, "b", 10.0):
            took = True
            break
        await asyncio.sleep(0.01)  # waiting out a TTL on Redis's clock: nothing to await
    assert took


async def subscribe(client: Client, keys: Keys) -> Any:
    pubsub = client.pubsub()
    await pubsub.subscribe(keys.backend_events)
    return pubsub


async def next_events(pubsub: Any, n: int) -> list[dict[str, Any]]:
    events = []
    async with asyncio.timeout(5):
        while len(events) < n:
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
            if message is not None:
                event = decode(message["data"])
                assert event is not None, message
                events.append(event)
    return events


async def test_a_probe_result_is_numbered_stored_and_published(client: Client, keys: Keys) -> None:
    pubsub = await subscribe(client, keys)
    try:
        assert await hold_lease(client, keys, BACKEND, "c1", 10.0)
        v1 = await probe_result(client, keys, BACKEND, "10.0.0.1:80", False, "3 consecutive failures: status 500", "c1")
        v2 = await probe_result(client, keys, BACKEND, "10.0.0.1:80", True, "1 consecutive pass", "c1")
        assert 0 < v1 < v2
        first, second = await next_events(pubsub, 2)
        assert first["b"] == BACKEND and first["k"] == "probe" and first["e"] == "10.0.0.1:80"
        assert (first["v"], first["s"], first["why"], first["by"]) == (
            v1, "unhealthy", "3 consecutive failures: status 500", "c1"
        )
        assert (second["v"], second["s"]) == (v2, "healthy")
        stored = await read_events(client, keys, [BACKEND])
        assert [(e["k"], e["e"], e["v"], e["s"], e["by"]) for e in stored] == [
            ("probe", "10.0.0.1:80", v2, "healthy", "c1")
        ]
    finally:
        await pubsub.aclose()


async def test_a_checker_that_lost_its_lease_writes_nothing(client: Client, keys: Keys) -> None:
    assert await hold_lease(client, keys, BACKEND, "successor", 10.0)
    assert await probe_result(client, keys, BACKEND, "10.0.0.1:80", False, "late", "stalled") == 0
    assert await read_events(client, keys, [BACKEND]) == []
    assert await client.get(keys.backend(BACKEND).version) is None


async def test_resync_renumbers_stored_health_above_a_local_floor(client: Client, keys: Keys) -> None:
    assert await hold_lease(client, keys, BACKEND, "c1", 10.0)
    await probe_result(client, keys, BACKEND, "10.0.0.1:80", False, "3 consecutive failures", "c1")
    pubsub = await subscribe(client, keys)
    try:
        # A replica that numbered events of its own up to 100 while Redis was away comes back.
        last = await probe_resync(client, keys, BACKEND, ["10.0.0.1:80", "10.0.0.2:80"], 100, "c2")
        one, two = await next_events(pubsub, 2)
        assert (one["e"], one["s"], one["why"], one["by"], one["v"]) == (
            "10.0.0.1:80", "unhealthy", "3 consecutive failures", "c1", 101
        )
        assert (two["e"], two["s"], two["by"], two["v"]) == ("10.0.0.2:80", "healthy", "c2", 102)
        assert last == 102
        # Later changes outrank the floor too, and the heal reads carry the new numbers.
        assert await probe_result(client, keys, BACKEND, "10.0.0.1:80", True, "1 consecutive pass", "c1") == 103
        stored = {(e["e"], e["v"], e["s"]) for e in await read_events(client, keys, [BACKEND])}
        assert stored == {("10.0.0.1:80", 103, "healthy"), ("10.0.0.2:80", 102, "healthy")}
    finally:
        await pubsub.aclose()


async def test_the_backend_store_works_on_a_cluster(cluster: valkey.Cluster, keys: Keys) -> None:
    client = connect(cluster.url)
    try:
        await client.initialize()
        pubsub = client.pubsub()
        await pubsub.subscribe(keys.backend_events)
        try:
            names = [f"Backend default/b{i}" for i in range(6)]  # spread over the nodes' slots
            for name in names:
                assert await hold_lease(client, keys, name, "c1", 10.0)
                assert await probe_result(client, keys, name, "10.0.0.1:80", False, "down", "c1") == 1
            assert {e["b"] for e in await next_events(pubsub, len(names))} == set(names)
            stored = await read_events(client, keys, names)
            assert sorted((e["b"], e["v"], e["s"]) for e in stored) == [(n, 1, "unhealthy") for n in names]
            assert await probe_resync(client, keys, names[0], ["10.0.0.1:80"], 10, "c2") == 11
        finally:
            await pubsub.aclose()
    finally:
        await client.aclose()
