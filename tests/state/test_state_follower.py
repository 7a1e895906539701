"""The config follower: events for speed, polling for what events miss, and Redis coming and going."""

from __future__ import annotations

import dataclasses

from gw.config import Snapshot
from gw.state import Client, ConfigFollower, ConfigStore, Keys, Version, connect
from tests.support import valkey
from tests.support.valkey import eventually


def files(text: str) -> list[tuple[str, bytes]]:
    return [("routes.yaml", text.encode())]


class Seen:
    """Records what the follower hands on."""

    def __init__(self) -> None:
        self.versions: list[Version] = []
        self.empty = 0

    def on_version(self, version: Version) -> None:
        self.versions.append(version)

    def on_empty(self) -> None:
        self.empty += 1

    @property
    def numbers(self) -> list[int]:
        return [v.number for v in self.versions]


async def test_follower_hands_on_each_new_version_from_the_change_event(client: Client, keys: Keys) -> None:
    store = ConfigStore(client, keys)
    seen = Seen()
    # A poll interval far beyond the test: only the event can deliver in time.
    follower = ConfigFollower(store, seen.on_version, poll_interval=3600, on_empty=seen.on_empty)
    follower.start()
    try:
        await eventually(lambda: follower.checks >= 1, "the first check")
        assert follower.empty and seen.empty == 1  # nothing published yet: the source should publish
        await store.publish(Snapshot.of(files("a"), "s"), author="a")
        await eventually(lambda: seen.numbers == [1], "version 1")
        await store.publish(Snapshot.of(files("b"), "s"), author="a")
        await eventually(lambda: seen.numbers == [1, 2], "version 2")
        assert seen.versions[1].files == tuple(files("b"))
        assert follower.version == 2 and not follower.empty
    finally:
        await follower.stop()


async def test_follower_heals_a_missed_event_by_polling(client: Client, keys: Keys) -> None:
    store = ConfigStore(client, keys)
    seen = Seen()
    follower = ConfigFollower(store, seen.on_version, poll_interval=0.2)
    follower.start()
    # The same keys, but the change event goes to a channel nobody listens on: a lost message.
    silent = ConfigStore(client, keys)
    silent.keys = dataclasses.replace(keys.config, channel=f"{keys.prefix}:nobody-listens")
    try:
        await eventually(lambda: follower.checks >= 1, "the first check")
        await silent.publish(Snapshot.of(files("a"), "s"), author="a")
        await eventually(lambda: seen.numbers == [1], "version 1 by polling")
    finally:
        await follower.stop()


async def test_follower_keeps_its_version_while_redis_is_gone_and_reports_an_empty_redis(
    own_server: valkey.Server, keys: Keys
) -> None:
    client = connect(own_server.url)
    store = ConfigStore(client, keys)
    seen = Seen()
    follower = ConfigFollower(store, seen.on_version, poll_interval=0.1, on_empty=seen.on_empty)
    follower.start()
    try:
        await store.publish(Snapshot.of(files("a"), "s"), author="a")
        await store.publish(Snapshot.of(files("b"), "s"), author="a")
        await eventually(lambda: follower.version == 2, "version 2")
        empty_before = seen.empty

        own_server.stop()
        await eventually(lambda: not follower.connected, "the follower to notice Redis is gone")
        assert follower.version == 2 and follower.error

        own_server.start()  # same port, no persistence: Redis is back empty
        await eventually(lambda: follower.connected and follower.empty, "the follower to report an empty Redis")
        assert seen.empty == empty_before + 1
        assert follower.version == 2  # still serving what it had

        # The source republishes; numbering restarts at 1 and the follower takes it.
        await store.publish(Snapshot.of(files("b"), "republish"), author="source")
        await eventually(lambda: seen.numbers[-1:] == [1], "the republished version")
        assert not follower.empty
    finally:
        await follower.stop()
        await client.aclose()


async def test_a_failing_callback_does_not_stop_the_follower(client: Client, keys: Keys) -> None:
    store = ConfigStore(client, keys)
    seen = Seen()

    def picky(version: Version) -> None:
        if version.number == 1:
            raise ValueError("does not compile here")
        seen.on_version(version)

    follower = ConfigFollower(store, picky, poll_interval=3600)
    follower.start()
    try:
        await store.publish(Snapshot.of(files("a"), "s"), author="a")
        await eventually(lambda: follower.version == 1, "version 1 tried")
        assert "does not compile here" in follower.apply_error
        await store.publish(Snapshot.of(files("b"), "s"), author="a")
        await eventually(lambda: seen.numbers == [2], "version 2")
        assert follower.apply_error == ""
    finally:
        await follower.stop()


async def test_follower_on_a_cluster_sees_events(cluster: valkey.Cluster, keys: Keys) -> None:
    client = connect(cluster.url)
    store = ConfigStore(client, keys)
    seen = Seen()
    follower = ConfigFollower(store, seen.on_version, poll_interval=3600)
    follower.start()
    try:
        await eventually(lambda: follower.checks >= 1, "the first check")
        await store.publish(Snapshot.of(files("a"), "s"), author="a")
        await eventually(lambda: seen.numbers == [1], "version 1 via a Cluster event")
    finally:
        await follower.stop()
        await client.aclose()
