"""Config versions: publish, dedupe, compare-and-set under races, history trim, rollback, verification."""

from __future__ import annotations

import asyncio

import msgpack
import pytest

from gw.config import Snapshot
from gw.config.loader import sources_checksum
from gw.state import (
    Client,
    ConfigStore,
    Keys,
    VersionConflict,
    VersionCorrupt,
    VersionMissing,
    connect,
)
from tests.support import valkey


def files(text: str) -> list[tuple[str, bytes]]:
    return [("gateway.yaml", b"kind: Gateway\n"), ("routes.yaml", text.encode())]


@pytest.fixture
def store(client: Client, keys: Keys) -> ConfigStore:
    return ConfigStore(client, keys, history=5)


async def test_first_publish_creates_version_1_and_makes_it_current(store: ConfigStore) -> None:
    assert await store.current() == 0
    result = await store.publish(Snapshot.of(files("a"), "test"), author="alice")
    assert (result.version, result.created) == (1, True)
    assert await store.current() == 1
    version = await store.fetch(1)
    assert version.files == tuple(files("a"))
    assert (version.author, version.source, version.parent) == ("alice", "test", 0)
    assert version.checksum == sources_checksum(files("a"))


async def test_publishing_the_current_content_again_creates_no_version(store: ConfigStore) -> None:
    await store.publish(Snapshot.of(files("a"), "s"), author="a")
    again = await store.publish(Snapshot.of(files("a"), "other"), author="b")
    assert (again.version, again.created) == (1, False)
    assert await store.history() == [1]


async def test_a_stale_expected_version_is_a_conflict_and_writes_nothing(store: ConfigStore) -> None:
    await store.publish(Snapshot.of(files("a"), "s"), author="a")
    await store.publish(Snapshot.of(files("b"), "s"), author="a")
    with pytest.raises(VersionConflict) as caught:
        await store.publish(Snapshot.of(files("c"), "s"), author="a", expected=1)
    assert caught.value.current == 2
    assert await store.current() == 2
    assert await store.history() == [2, 1]


async def test_concurrent_publishers_produce_a_linear_history_without_lost_updates(
    server: valkey.Server, keys: Keys
) -> None:
    clients = [connect(server.url) for _ in range(2)]
    stores = [ConfigStore(c, keys, history=100) for c in clients]
    try:
        # Two publishers racing, each with its own content per round: every publish gets a version.
        await asyncio.gather(
            *(stores[i % 2].publish(Snapshot.of(files(f"content {i}"), "race"), author=f"p{i % 2}") for i in range(20))
        )
        history = await stores[0].history()
        assert history == list(range(20, 0, -1))
        versions = [await stores[0].fetch(n) for n in reversed(history)]
        # Each version was built on the one before it: the CAS made the publishers take turns.
        assert [v.parent for v in versions] == list(range(20))
        assert sorted(v.files[1][1] for v in versions) == sorted(f"content {i}".encode() for i in range(20))
    finally:
        for c in clients:
            await c.aclose()


async def test_history_is_trimmed_to_the_configured_length(store: ConfigStore, client: Client, keys: Keys) -> None:
    for i in range(8):
        await store.publish(Snapshot.of(files(str(i)), "s"), author="a")
    assert await store.history() == [8, 7, 6, 5, 4]
    with pytest.raises(VersionMissing):
        await store.fetch(3)
    # Trimmed versions' blobs are gone from Redis, not just from the list.
    assert await client.hlen(keys.config.versions) == 5
    assert await client.hlen(keys.config.checksums) == 5


async def test_rollback_is_a_new_version_with_the_old_content(store: ConfigStore) -> None:
    await store.publish(Snapshot.of(files("a"), "s"), author="a")
    await store.publish(Snapshot.of(files("b"), "s"), author="a")
    result = await store.rollback(1, author="ops")
    assert (result.version, result.created) == (3, True)
    rolled = await store.fetch(3)
    assert rolled.files == tuple(files("a"))
    assert (rolled.parent, rolled.author, rolled.source) == (2, "ops", "rollback to version 1")
    assert await store.history() == [3, 2, 1]


async def test_rollback_to_the_current_content_changes_nothing(store: ConfigStore) -> None:
    await store.publish(Snapshot.of(files("a"), "s"), author="a")
    assert (await store.rollback(1, author="ops")).created is False
    assert await store.current() == 1


async def test_fetch_refuses_a_version_whose_files_do_not_match_its_checksum(
    store: ConfigStore, client: Client, keys: Keys
) -> None:
    await store.publish(Snapshot.of(files("a"), "s"), author="a")
    blob = msgpack.unpackb(await client.hget(keys.config.versions, "1"))
    blob["files"][1][1] = b"tampered"
    await client.hset(keys.config.versions, "1", msgpack.packb(blob, use_bin_type=True))
    with pytest.raises(VersionCorrupt, match="checksum"):
        await store.fetch(1)


async def test_publish_announces_the_new_version_on_the_change_channel(store: ConfigStore, client: Client) -> None:
    pubsub = client.pubsub()
    await pubsub.subscribe(store.channel)
    try:
        await store.publish(Snapshot.of(files("a"), "s"), author="a")
        await store.publish(Snapshot.of(files("a"), "s"), author="a")  # unchanged: no event
        await store.publish(Snapshot.of(files("b"), "s"), author="a")
        messages = []
        async with asyncio.timeout(5):
            while len(messages) < 2:
                # None: the subscribe confirmation was skipped, or the read timed out; read on.
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1)
                if message is not None:
                    messages.append(message["data"])
        assert messages == [b"1", b"2"]
    finally:
        await pubsub.aclose()


async def test_a_flushed_script_cache_is_reloaded_transparently(store: ConfigStore, client: Client) -> None:
    await store.publish(Snapshot.of(files("a"), "s"), author="a")
    await client.script_flush()
    assert (await store.publish(Snapshot.of(files("b"), "s"), author="a")).version == 2
    # ... and cached again: the next call goes by SHA.
    from gw.state.config_store import _publish

    assert (await client.script_exists(_publish.sha)) == [True]


async def test_the_config_store_works_on_a_cluster(cluster: valkey.Cluster, keys: Keys) -> None:
    client = connect(cluster.url)
    store = ConfigStore(client, keys, history=2)
    try:
        for text in ("a", "b", "c"):
            await store.publish(Snapshot.of(files(text), "s"), author="a")
        assert await store.history() == [3, 2]
        assert (await store.fetch(await store.current())).files == tuple(files("c"))
        assert (await store.rollback(2, author="ops")).version == 4
        await client.script_flush()  # on every master
        assert (await store.publish(Snapshot.of(files("d"), "s"), author="a")).version == 5
    finally:
        await client.aclose()


async def test_a_version_records_its_origin_and_files_published_before_are_found_by_checksum(
    store: ConfigStore,
) -> None:
    from gw.config.loader import sources_checksum
    from gw.state.config_store import FILES, PUSH, ROLLBACK

    await store.publish(Snapshot.of(files("a"), "gw.yaml"), author="replica")  # 1, from files
    await store.publish(Snapshot.of(files("b"), "gw config push b.yaml"), author="op", origin=PUSH)  # 2
    await store.rollback(1, author="op")  # 3: a's content again, from a rollback
    assert [(await store.fetch(n)).origin for n in (1, 2, 3)] == [FILES, PUSH, ROLLBACK]
    assert await store.published_from_files(sources_checksum(files("a"))) == 1  # not 3: that was a rollback
    assert await store.published_from_files(sources_checksum(files("b"))) is None  # pushed, never from files
