"""Secrets in config versions are sealed in Redis (GW_CONFIG_KEYS) and open only where a key is held."""

from __future__ import annotations

import base64
import logging
import os

import msgpack
import pytest
import trustme

from gw.config import Snapshot
from gw.settings import Settings, SettingsError
from gw.state import Client, ConfigFollower, ConfigStore, Keys, Version, VersionCorrupt, VersionSealed
from gw.state.sealing import SealingKeys, Tampered, key_id, open_file, seal_file
from tests.support.valkey import eventually

OLD, NEW = os.urandom(32), os.urandom(32)
ROUTES = b"apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: r}\nspec: {}\n"


def tls_secret(name: str, cert: bytes, key: bytes) -> bytes:
    return (
        f"apiVersion: v1\nkind: Secret\nmetadata: {{name: {name}, namespace: default}}\ntype: kubernetes.io/tls\n"
        f"data:\n  tls.crt: {base64.b64encode(cert).decode()}\n  tls.key: {base64.b64encode(key).decode()}\n"
    ).encode()


@pytest.fixture(scope="module")
def pair() -> tuple[bytes, bytes]:
    issued = trustme.CA().issue_cert("example.test")
    return issued.cert_chain_pems[0].bytes(), issued.private_key_pem.bytes()


@pytest.fixture
def snapshot(pair: tuple[bytes, bytes]) -> Snapshot:
    cert, key = pair
    text = (
        tls_secret("a", cert, key) + b"---\n" + ROUTES + b"---\n"
        b"apiVersion: v1\nkind: Secret\nmetadata: {name: plain}\nstringData:\n  password: hunter2-not-in-redis\n"
    )
    return Snapshot.of([("tls.yaml", text), ("routes.yaml", ROUTES)], "files")


def store(client: Client, keys: Keys, *sealing: bytes) -> ConfigStore:
    return ConfigStore(client, keys, config_keys=SealingKeys(sealing) if sealing else None)


async def stored(client: Client, keys: Keys, number: int) -> dict[str, object]:
    return msgpack.unpackb(await client.hget(keys.config.versions, str(number)), raw=False)  # type: ignore[no-any-return]


async def restore(client: Client, keys: Keys, number: int, data: dict[str, object]) -> None:
    await client.hset(keys.config.versions, str(number), msgpack.packb(data, use_bin_type=True))


async def test_the_stored_version_holds_no_private_key_and_a_replica_reads_the_original(
    client: Client, keys: Keys, snapshot: Snapshot, pair: tuple[bytes, bytes]
) -> None:
    result = await store(client, keys, NEW).publish(snapshot, author="a")
    raw = await client.hget(keys.config.versions, str(result.version))
    cert, key = pair
    for secret in (b"PRIVATE KEY", base64.b64encode(key)[:40], base64.b64encode(cert)[:40], b"hunter2"):
        assert secret not in raw
    replica = await store(client, keys, NEW).fetch(result.version)
    assert replica.files == snapshot.files and replica.checksum == snapshot.checksum and replica.sealed
    # What is not secret stays readable in Redis (an operator can still see which config it is).
    assert b"kind: HTTPRoute" in raw and b"metadata: {name: a, namespace: default}" in raw


async def test_the_same_config_sealed_again_is_unchanged(client: Client, keys: Keys, snapshot: Snapshot) -> None:
    publisher = store(client, keys, NEW)
    assert (await publisher.publish(snapshot, author="a")).created
    again = await publisher.publish(snapshot, author="b")
    assert (again.version, again.created) == (1, False)
    assert await publisher.published_from_files(snapshot.checksum) == 1


async def test_rotation_a_version_sealed_with_the_old_key_opens_while_the_old_key_is_listed(
    client: Client, keys: Keys, snapshot: Snapshot
) -> None:
    await store(client, keys, OLD).publish(snapshot, author="a")
    assert (await store(client, keys, NEW, OLD).fetch(1)).files == snapshot.files
    with pytest.raises(VersionSealed) as refused:
        await store(client, keys, NEW).fetch(1)
    where = "version 1: tls.yaml document 1 Secret default/a data"
    assert f"{where} is sealed with key {key_id(OLD)}" in str(refused.value)
    assert f"it holds {key_id(NEW)}" in str(refused.value)
    with pytest.raises(VersionSealed, match=r"GW_CONFIG_KEYS does not hold .*it is not set"):
        await store(client, keys).fetch(1)
    # Publishing the same content again creates nothing, so it would leave version 1 needing the old
    # key: reseal seals the kept versions again with the new key, and the old one can go.
    rotated = store(client, keys, NEW, OLD)
    assert not (await rotated.publish(snapshot, author="a")).created
    assert await rotated.reseal() == [1]
    assert await rotated.reseal() == []
    version = await store(client, keys, NEW).fetch(1)
    assert (version.files, version.number, version.author) == (snapshot.files, 1, "a")


async def test_reseal_seals_versions_published_in_the_clear_before_keys_were_set(
    client: Client, keys: Keys, snapshot: Snapshot
) -> None:
    await store(client, keys).publish(snapshot, author="a")
    await store(client, keys).publish(Snapshot.of([("routes.yaml", ROUTES)], "s"), author="a")
    assert await store(client, keys, NEW).reseal() == [1]
    assert b"hunter2" not in await client.hget(keys.config.versions, "1")
    assert (await store(client, keys, NEW).fetch(1)).files == snapshot.files
    assert (await store(client, keys).fetch(2)).files == (("routes.yaml", ROUTES),)


async def test_a_changed_byte_in_a_sealed_value_is_refused(client: Client, keys: Keys, snapshot: Snapshot) -> None:
    await store(client, keys, NEW).publish(snapshot, author="a")
    data = await stored(client, keys, 1)
    files = data["files"]
    name, content = files[0]  # type: ignore[index]
    at = content.index(b"gw.dev/sealed:v1:") + 40
    files[0] = [name, content[:at] + bytes([content[at] ^ 1]) + content[at + 1 :]]  # type: ignore[index]
    await restore(client, keys, 1, data)
    with pytest.raises(VersionCorrupt, match=r"version 1: .* does not open"):
        await store(client, keys, NEW).fetch(1)


async def test_a_sealed_value_moved_to_another_secret_is_refused(client: Client, keys: Keys) -> None:
    two = b"".join(
        f"---\nkind: Secret\nmetadata: {{name: {n}}}\nstringData: {{password: same-length-{n}}}\n".encode()
        for n in "ab"
    )
    await store(client, keys, NEW).publish(Snapshot.of([("s.yaml", two)], "files"), author="a")
    data = await stored(client, keys, 1)
    name, content = data["files"][0]  # type: ignore[index]
    lines = content.split(b"\n")
    sealed = [i for i, line in enumerate(lines) if b"gw.dev/sealed" in line]
    lines[sealed[0]], lines[sealed[1]] = lines[sealed[1]], lines[sealed[0]]
    data["files"][0] = [name, b"\n".join(lines)]  # type: ignore[index]
    await restore(client, keys, 1, data)
    with pytest.raises(VersionCorrupt, match="document 1 Secret default/a stringData: the sealed value does not open"):
        await store(client, keys, NEW).fetch(1)


def test_associated_data_binds_a_value_to_its_file_object_and_field() -> None:
    keys = SealingKeys((NEW,))
    text = b"kind: Secret\nmetadata: {name: a}\ndata: {k: dmFsdWU=}\n"
    sealed, how = seal_file("one.yaml", text, keys)  # type: ignore[misc]
    assert open_file("one.yaml", sealed, how, keys) == text
    with pytest.raises(Tampered):
        open_file("two.yaml", sealed, how, keys)
    with pytest.raises(Tampered):
        open_file("one.yaml", sealed.replace(b"name: a", b"name: b"), how, keys)


def test_a_secret_aliased_from_outside_its_field_is_sealed_with_the_whole_file() -> None:
    keys = SealingKeys((NEW,))
    text = b"kind: Secret\nmetadata: {name: a, labels: {x: &k c2VjcmV0}}\ndata: {k: *k}\n"
    sealed, how = seal_file("a.yaml", text, keys)  # type: ignore[misc]
    assert how == "file" and b"c2VjcmV0" not in sealed
    assert open_file("a.yaml", sealed, how, keys) == text


async def test_a_follower_without_the_key_keeps_its_version_and_says_why(
    client: Client, keys: Keys, snapshot: Snapshot
) -> None:
    publisher = store(client, keys, OLD)
    await publisher.publish(Snapshot.of([("routes.yaml", ROUTES)], "files"), author="a")
    seen: list[Version] = []
    follower = ConfigFollower(store(client, keys, NEW), seen.append, poll_interval=3600)
    follower.start()
    try:
        await eventually(lambda: [v.number for v in seen] == [1], "version 1")
        await publisher.publish(snapshot, author="a")
        await eventually(lambda: bool(follower.refused), "version 2 refused")
        assert follower.version == 1 and follower.connected and [v.number for v in seen] == [1]
        assert f"version 2: tls.yaml document 1 Secret default/a data is sealed with key {key_id(OLD)}" in (
            follower.refused
        )
        await publisher.publish(Snapshot.of([("routes.yaml", ROUTES + b"# 3\n")], "files"), author="a")
        await eventually(lambda: [v.number for v in seen] == [1, 3], "version 3")
        assert follower.refused == ""
    finally:
        await follower.stop()


async def test_without_keys_secrets_are_stored_in_the_clear_and_a_warning_says_so_once(
    client: Client, keys: Keys, snapshot: Snapshot, caplog: pytest.LogCaptureFixture
) -> None:
    clear = store(client, keys)
    with caplog.at_level(logging.WARNING, logger="gw.state"):
        await clear.publish(snapshot, author="a")
        await clear.publish(Snapshot.of([*snapshot.files, ("more.yaml", ROUTES)], "files"), author="a")
    assert [r.getMessage() for r in caplog.records if "GW_CONFIG_KEYS" in r.getMessage()] == [
        "gw: publishing a config with Secrets in the clear: set GW_CONFIG_KEYS to seal them in Redis"
    ]
    assert b"hunter2" in await client.hget(keys.config.versions, "1")
    assert not (await clear.fetch(1)).sealed


async def test_view_hides_secrets_sealed_or_not_and_needs_no_key(
    client: Client, keys: Keys, snapshot: Snapshot
) -> None:
    await store(client, keys).publish(snapshot, author="a")
    await store(client, keys, NEW).publish(Snapshot.of([*snapshot.files, ("x.yaml", ROUTES)], "s"), author="a")
    for number in (1, 2):
        shown = dict((await store(client, keys).view(number)).files)
        assert b"hunter2" not in shown["tls.yaml"] and b"PRIVATE" not in base64.b64decode(
            base64.b64encode(shown["tls.yaml"])
        )
        assert b'data:\n  "(hidden: data)"\n' in shown["tls.yaml"]
        assert b'stringData:\n  "(hidden: stringData)"\n' in shown["tls.yaml"]
        assert shown["routes.yaml"] == ROUTES


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("abc", "key 1 is not 32 bytes"),
        (f"{NEW.hex()},{base64.b64encode(OLD[:16]).decode()}", "key 2 is not 32 bytes"),
        (",", "no key"),
    ],
)
def test_gw_config_keys_that_are_not_32_byte_keys_are_refused_by_name(value: str, problem: str) -> None:
    with pytest.raises(SettingsError, match=f"GW_CONFIG_KEYS=\\(secret\\): {problem}"):
        Settings.from_env({"GW_CONFIG_KEYS": value})


def test_gw_config_keys_accepts_hex_and_both_base64_alphabets() -> None:
    text = f"{NEW.hex()}, {base64.b64encode(OLD).decode()},{base64.urlsafe_b64encode(OLD).decode().rstrip('=')}"
    assert Settings.from_env({"GW_CONFIG_KEYS": text}).config_keys == (NEW, OLD, OLD)
