"""Remote JWKS (gw.auth.jwks) against a real HTTP server whose keys rotate: one shared, rate-limited refetch
for unknown kids (envoyproxy/gateway#4180), background refresh, and old keys kept when the server fails."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from gw.auth import jwt as j
from gw.auth.jwks import KeySets, RemoteKeySet
from gw.auth.provider import LocalJWKS, Provider, RemoteJWKS
from tests.support.jwtkit import JWKSServer, Signer, jwks, make_signer

HOUR = 3600.0


class Clock:
    """The rate limiter's clock, moved by the test: no sleeping through intervals."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def old() -> Signer:
    return make_signer("ES256", "old")


@pytest.fixture
async def server(old: Signer) -> AsyncIterator[JWKSServer]:
    s = await JWKSServer(jwks(old)).start()
    yield s
    await s.stop()


@pytest.fixture
async def keyset(server: JWKSServer) -> AsyncIterator[RemoteKeySet]:
    ks = RemoteKeySet(RemoteJWKS(server.uri, cache_duration=HOUR), clock=Clock())
    ks.start()
    await ks.fetch()
    assert ks.loaded and server.fetches == 1
    yield ks
    await ks.close()


def claims(**more: Any) -> dict[str, Any]:
    return {"sub": "alice", "exp": 4_000_000_000, **more}


async def outcome(verifier: j.Verifier, token: bytes) -> j.Verified | j.Refused:
    """verify, and when it is Pending, what its callback is called with."""
    result = verifier.verify(token)
    if isinstance(result, j.Pending):
        done: asyncio.Future[j.Verified | j.Refused] = asyncio.get_running_loop().create_future()
        result.then(done.set_result)
        return await done
    return result


async def test_the_first_request_waits_for_the_first_fetch(server: JWKSServer, old: Signer) -> None:
    ks = RemoteKeySet(RemoteJWKS(server.uri, cache_duration=HOUR))
    ks.start()
    try:
        v = j.Verifier(Provider("p"), ks)
        result = v.verify(old.token(claims()))
        assert isinstance(result, j.Pending)  # the start's fetch is under way: the request shares it
        done: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        result.then(done.set_result)
        assert isinstance(await done, j.Verified)
        assert server.fetches == 1
    finally:
        await ks.close()


async def test_a_token_with_a_rotated_in_kid_is_accepted_after_exactly_one_refetch(
    server: JWKSServer, keyset: RemoteKeySet, old: Signer
) -> None:
    v = j.Verifier(Provider("p"), keyset)
    assert isinstance(await outcome(v, old.token(claims())), j.Verified)
    new = make_signer("EdDSA", "new")
    server.document = jwks(old, new)
    result = await outcome(v, new.token(claims()))
    assert isinstance(result, j.Verified), result
    assert server.fetches == 2
    assert isinstance(await outcome(v, old.token(claims(n=2))), j.Verified)
    assert server.fetches == 2


async def test_fifty_concurrent_unknown_kids_share_one_fetch(server: JWKSServer, keyset: RemoteKeySet) -> None:
    new = make_signer("ES256", "new")
    server.document = jwks(new)
    v = j.Verifier(Provider("p"), keyset)
    tokens = [new.token(claims(n=i)) for i in range(50)]
    pending = [v.verify(t) for t in tokens]
    assert all(isinstance(p, j.Pending) for p in pending)
    results = await asyncio.gather(*(outcome(v, t) for t in tokens))
    assert all(isinstance(r, j.Verified) for r in results)
    assert server.fetches == 2  # the start's, and one for all fifty


async def test_a_flood_of_made_up_kids_fetches_at_most_once_per_interval(
    server: JWKSServer, keyset: RemoteKeySet, old: Signer
) -> None:
    clock = keyset.clock
    assert isinstance(clock, Clock)
    v = j.Verifier(Provider("p"), keyset)
    start = clock.now
    while clock.now < start + 35:  # 0, 10, 20 and 30 s into the flood may fetch
        tokens = [make_signer_token(old, str(uuid.uuid4())) for _ in range(5)]
        results = await asyncio.gather(*(outcome(v, t) for t in tokens))
        assert {r.reason for r in results if isinstance(r, j.Refused)} == {j.UNKNOWN_KID}
        clock.now += 0.5
    assert server.fetches == 1 + 4


def make_signer_token(signer: Signer, kid: str) -> bytes:
    return signer.token(claims(), kid=kid)


async def test_with_the_server_down_the_old_keys_still_verify(
    server: JWKSServer, keyset: RemoteKeySet, old: Signer
) -> None:
    v = j.Verifier(Provider("p"), keyset)
    await server.stop()
    unknown = make_signer("ES256", "new").token(claims())
    result = await outcome(v, unknown)
    assert isinstance(result, j.Refused) and result.reason == j.UNKNOWN_KID
    assert keyset.failures == 1 and keyset.last_error
    assert isinstance(await outcome(v, old.token(claims())), j.Verified)


async def test_a_fetch_that_gets_no_answer_gives_up_after_the_timeout(server: JWKSServer, old: Signer) -> None:
    ks = RemoteKeySet(RemoteJWKS(server.uri, cache_duration=HOUR), timeout=0.3, clock=Clock())
    try:
        assert await ks.fetch()
        server.hang = True
        v = j.Verifier(Provider("p"), ks)
        result = await outcome(v, make_signer("ES256", "new").token(claims()))
        assert isinstance(result, j.Refused) and result.reason == j.UNKNOWN_KID
        assert ks.last_error == "no answer within 0.3s"
        assert isinstance(await outcome(v, old.token(claims())), j.Verified)
    finally:
        await ks.close()


@pytest.mark.parametrize("answer", ["status", "garbage", "no usable key"])
async def test_a_bad_answer_keeps_the_old_keys(
    server: JWKSServer, keyset: RemoteKeySet, old: Signer, answer: str
) -> None:
    if answer == "status":
        server.status = 503
    elif answer == "garbage":
        server.document = {"keys": "nope"}  # type: ignore[dict-item]
    else:
        server.document = {"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}
    assert not await keyset.fetch()
    assert keyset.last_error
    v = j.Verifier(Provider("p"), keyset)
    assert isinstance(await outcome(v, old.token(claims())), j.Verified)


async def test_a_key_removed_from_the_jwks_takes_its_cached_tokens_with_it(
    server: JWKSServer, keyset: RemoteKeySet, old: Signer
) -> None:
    v = j.Verifier(Provider("p"), keyset)
    token = old.token(claims())
    assert isinstance(await outcome(v, token), j.Verified)
    new = make_signer("ES256", "new")
    server.document = jwks(new)  # the old key is withdrawn
    assert isinstance(await outcome(v, new.token(claims())), j.Verified)
    result = await outcome(v, token)
    assert isinstance(result, j.Refused) and result.reason == j.UNKNOWN_KID


async def test_the_keys_are_refreshed_in_the_background_before_cache_duration_ends(
    server: JWKSServer, old: Signer
) -> None:
    ks = RemoteKeySet(RemoteJWKS(server.uri, cache_duration=0.2))
    ks.start()
    try:
        new = make_signer("ES256", "new")
        for _ in range(2):  # the start's fetch, then a refresh nobody asked for
            await asyncio.wait_for(server.fetched.wait(), 10)
            server.fetched.clear()
            server.document = jwks(old, new)
        await asyncio.wait_for(server.fetched.wait(), 10)
        assert ks.find("new")
    finally:
        await ks.close()


async def test_a_request_pending_on_a_refetch_is_remembered_by_its_header(
    server: JWKSServer, keyset: RemoteKeySet
) -> None:
    new = make_signer("ES256", "new")
    server.document = jwks(new)
    v = j.Verifier(Provider("p"), keyset)
    head = {b"authorization": b"Bearer " + new.token(claims())}.get
    result = v.authenticate(head, b"")
    assert isinstance(result, j.Pending)
    done: asyncio.Future[j.Verified | j.Refused] = asyncio.get_running_loop().create_future()
    result.then(done.set_result)
    assert not done.done()  # never called back from inside authenticate
    verified = await done
    assert isinstance(verified, j.Verified)
    assert v.authenticate(head, b"") is verified
    assert v.verifications == 1 and server.fetches == 2


async def test_providers_naming_one_jwks_share_its_keys_across_config_versions(server: JWKSServer, old: Signer) -> None:
    sets = KeySets()
    remote = RemoteJWKS(server.uri, cache_duration=HOUR)
    a, b = Provider("a", remote_jwks=remote), Provider("b", issuer="x", remote_jwks=remote)
    local = Provider("c", local_jwks=LocalJWKS(json.dumps(jwks(old))))
    try:
        shared = sets.for_provider(a)
        assert sets.for_provider(b) is shared and sets.for_provider(local) is sets.for_provider(local)
        assert isinstance(await outcome(j.Verifier(a, shared), old.token(claims())), j.Verified)
        # The next config version keeps `b`: the same keys, no new fetch.
        await sets.retain([b])
        assert sets.for_provider(b) is shared and server.fetches == 1
        await sets.retain([local])
        assert isinstance(shared, RemoteKeySet) and shared._refresher is None  # closed
        assert sets.for_provider(a) is not shared
    finally:
        await sets.close()


async def test_an_unusable_uri_is_a_failed_fetch_not_a_dead_refresher() -> None:
    ks = RemoteKeySet(RemoteJWKS("http://[::1/jwks"), clock=Clock())
    try:
        assert not await ks.fetch()
        assert ks.failures == 1 and ks.last_error
    finally:
        await ks.close()


async def test_a_token_of_another_issuer_does_not_make_a_provider_refetch(
    server: JWKSServer, keyset: RemoteKeySet
) -> None:
    v = j.Verifier(Provider("p", issuer="https://ours.example"), keyset)
    theirs = make_signer("ES256", "theirs").token(claims(iss="https://theirs.example"))
    result = await outcome(v, theirs)
    assert isinstance(result, j.Refused) and result.reason == j.WRONG_ISSUER
    assert server.fetches == 1
    new = make_signer("ES256", "new")
    server.document = jwks(new)
    assert isinstance(await outcome(v, new.token(claims(iss="https://ours.example"))), j.Verified)
    assert server.fetches == 2
