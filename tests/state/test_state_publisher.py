"""The supervisor's publisher settling a snapshot Redis could not take, against a real Valkey.

The follower's task is stopped and its checks are driven by hand, so that what other publishers do
while this replica could not reach Redis happens in a known order.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from gw.config import Snapshot
from gw.settings import Settings
from gw.state import ConfigStore, Keys, Version, connect
from gw.state.config_store import PUSH
from gw.supervisor.publisher import Publisher
from tests.support import valkey


def files(text: str) -> list[tuple[str, bytes]]:
    return [("/etc/gw/routes.yaml", text.encode())]


def read(text: str) -> Snapshot:
    """The files as the supervisor reads them at start or on HUP."""
    return Snapshot.of(files(text), "routes.yaml")


class Served:
    """What the publisher hands the supervisor to serve."""

    def __init__(self) -> None:
        self.versions: list[Version] = []

    async def on_version(self, version: Version) -> None:
        self.versions.append(version)


@pytest.fixture
async def store(own_server: valkey.Server, keys: Keys) -> AsyncIterator[ConfigStore]:
    """Another publisher on the same keys (`gw config push`), which Redis always answers."""
    store = ConfigStore(connect(own_server.url), keys)
    yield store
    await store.client.aclose()


@pytest.fixture
async def publisher(own_server: valkey.Server, keys: Keys) -> AsyncIterator[tuple[Publisher, Served]]:
    served = Served()
    settings = Settings.from_env({"GW_REDIS_URL": own_server.url, "GW_REDIS_PREFIX": keys.prefix})
    publisher = Publisher(settings, served.on_version)
    publisher.start_server()
    assert await publisher.publish(read("a"), start=True) == 1
    publisher.follow(1, publisher.files_checksum, lambda: read("a"))
    assert publisher.follower is not None
    await publisher.follower.stop()  # checks are driven by the test
    yield publisher, served
    await publisher.stop()


async def hup_while_redis_is_paused(publisher: Publisher, server: valkey.Server, text: str) -> None:
    server.pause()
    try:
        assert await publisher.publish(read(text)) is None
    finally:
        server.resume()
    assert publisher.unpublished is not None and publisher.describe(1) == "unpublished, based on version 1"


async def test_a_hup_redis_could_not_take_is_published_over_its_base_when_redis_answers(
    publisher: tuple[Publisher, Served], own_server: valkey.Server, store: ConfigStore
) -> None:
    pub, served = publisher
    await hup_while_redis_is_paused(pub, own_server, "b")
    assert pub.follower is not None and pub.follower.pending
    await pub.follower.check()  # Redis answers, still at version 1
    assert await store.current() == 2 and (await store.fetch(2)).files == tuple(files("b"))
    assert pub.unpublished is None and [v.number for v in served.versions] == [2]


async def test_a_push_made_after_the_unpublished_hup_wins(
    publisher: tuple[Publisher, Served], own_server: valkey.Server, store: ConfigStore
) -> None:
    pub, served = publisher
    await hup_while_redis_is_paused(pub, own_server, "b")
    await store.publish(Snapshot.of(files("pushed"), "gw config push x.yaml"), author="op", origin=PUSH)  # version 2
    assert pub.follower is not None
    await pub.follower.check()
    assert await store.current() == 2  # the HUP's content was not published over the newer push
    assert pub.unpublished is None and [v.number for v in served.versions] == [2]


async def test_an_unpublished_hup_wins_over_a_push_made_before_it(
    publisher: tuple[Publisher, Served], own_server: valkey.Server, store: ConfigStore
) -> None:
    pub, served = publisher
    # Published while this replica did not see it (its follower is not checking), then the HUP.
    await store.publish(Snapshot.of(files("pushed"), "gw config push x.yaml"), author="op", origin=PUSH)  # version 2
    await hup_while_redis_is_paused(pub, own_server, "b")
    assert pub.follower is not None
    await pub.follower.check()
    current = await store.fetch(await store.current())
    assert current.number == 3 and current.files == tuple(files("b")) and current.parent == 2
    assert pub.unpublished is None and [v.number for v in served.versions] == [3]


async def test_files_read_again_unchanged_after_a_reload_that_kept_objects_are_unchanged(
    publisher: tuple[Publisher, Served],
) -> None:
    """A reload publishes the files plus the running copies it kept; the next HUP reads only the files."""
    from gw.config.resources import KEPT_FILE

    pub, _ = publisher
    kept = Snapshot.of([*files("b"), (KEPT_FILE, b"kind: Namespace\nmetadata: {name: kept}\n")], "routes.yaml")
    assert await pub.publish(kept, read=read("b").checksum) == 2
    assert pub.files_unchanged(read("b"))  # else a HUP of untouched files would publish over a later push
