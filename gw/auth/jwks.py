"""The key sets a verifier trusts: a local JWKS, or a remote one fetched, kept fresh and refetched on demand.

A remote set is fetched when it starts and refreshed in the background before its cacheDuration
ends, so a request never waits for it once it is loaded. A token whose `kid` is unknown asks for
one refetch (envoyproxy/gateway#4180: a token signed with a freshly rotated key must not wait for
the cache to expire): requests that ask while a fetch is under way share it, and a worker fetches
for unknown kids at most once per UNKNOWN_KID_INTERVAL, so a flood of made-up kids cannot turn
into a flood of fetches. A failed fetch keeps the keys already held.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

import httpx
import orjson

from gw.auth.keys import JWKError, Key, key_from_jwk
from gw.auth.provider import Provider, RemoteJWKS

LOG = logging.getLogger("gw.auth")

FETCH_TIMEOUT = 5.0  # seconds for one whole fetch: connect, request, body
UNKNOWN_KID_INTERVAL = 10.0  # at least this long between two fetches asked for by unknown kids
REFRESH_AT = 0.9  # of cacheDuration: the background refresh lands before the keys are stale
MAX_JWKS_BYTES = 1 << 20
MAX_KEYS = 100


def parse_jwks(document: str | bytes) -> tuple[tuple[Key, ...], list[str]]:
    """The usable keys of a JWKS document and a note for each key skipped. JWKError if none is usable."""
    try:
        jwks = orjson.loads(document)
    except orjson.JSONDecodeError as exc:
        raise JWKError(f"not JSON: {exc}") from None
    if not isinstance(jwks, dict) or not isinstance(jwks.get("keys"), list):
        raise JWKError('a JWKS is a JSON object with a "keys" list')
    if len(jwks["keys"]) > MAX_KEYS:
        raise JWKError(f"{len(jwks['keys'])} keys: at most {MAX_KEYS}")
    keys, skipped = [], []
    for i, jwk in enumerate(jwks["keys"]):
        try:
            keys.append(key_from_jwk(jwk))
        except JWKError as exc:
            kid = jwk.get("kid") if isinstance(jwk, dict) else None
            skipped.append(f"keys[{i}]{f' (kid {kid!r})' if isinstance(kid, str) else ''}: {exc}")
    if not keys:
        raise JWKError("no usable key: " + ("; ".join(skipped) if skipped else "the keys list is empty"))
    return tuple(keys), skipped


class KeySet:
    """Keys by kid. `version` changes whenever the keys do, so verifiers can drop what they cached."""

    def __init__(self, keys: Iterable[Key] = ()) -> None:
        self.version = 0
        self.keys: tuple[Key, ...] = ()
        self._by_kid: dict[str, tuple[Key, ...]] = {}
        self._install(tuple(keys))

    def find(self, kid: str | None) -> tuple[Key, ...]:
        """The keys a token naming `kid` may be signed with (every key for a token naming none)."""
        if kid is None:
            return self.keys
        return self._by_kid.get(kid, ())

    def refetch(self) -> asyncio.Future[bool] | None:
        """A fetch to wait for before giving up on an unknown kid, or None when there will be none."""
        return None

    def _install(self, keys: tuple[Key, ...]) -> None:
        if [k.material for k in keys] == [k.material for k in self.keys] and [k.kid for k in keys] == [
            k.kid for k in self.keys
        ]:
            return
        by_kid: dict[str, tuple[Key, ...]] = {}
        for key in keys:
            if key.kid is not None:
                by_kid[key.kid] = (*by_kid.get(key.kid, ()), key)
        self.keys, self._by_kid = keys, by_kid
        self.version += 1


class LocalKeySet(KeySet):
    """A JWKS written into the config (localJWKS.inline)."""

    @classmethod
    def from_document(cls, document: str | bytes) -> LocalKeySet:
        return cls(parse_jwks(document)[0])


class RemoteKeySet(KeySet):
    """A JWKS fetched from `remote.uri` by this worker; start() it on a running loop, close() it when done."""

    def __init__(
        self,
        remote: RemoteJWKS,
        *,
        timeout: float = FETCH_TIMEOUT,
        unknown_kid_interval: float = UNKNOWN_KID_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self.remote = remote
        self.timeout = timeout
        self.unknown_kid_interval = unknown_kid_interval
        self.clock = clock
        self.fetches = 0  # attempts, for tests and metrics
        self.failures = 0
        self.last_error: str | None = None
        self.loaded = False
        self._inflight: asyncio.Task[bool] | None = None
        self._last_asked = -float("inf")  # when an unknown kid last started a fetch
        self._refresher: asyncio.Task[None] | None = None
        self._client: httpx.AsyncClient | None = None

    def start(self) -> None:
        if self._refresher is None:
            self._refresher = asyncio.get_running_loop().create_task(self._refresh())

    async def close(self) -> None:
        for task in (self._refresher, self._inflight):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._refresher = self._inflight = None
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    def refetch(self) -> asyncio.Future[bool] | None:
        if self._inflight is not None:
            return self._inflight
        # Before the first keys arrive, a request may ask as often as a failed fetch may be retried.
        interval = self.unknown_kid_interval if self.loaded else self.remote.failed_refetch_duration
        now = self.clock()
        if now - self._last_asked < interval:
            return None
        self._last_asked = now
        return self.fetch()

    def fetch(self) -> asyncio.Task[bool]:
        """The fetch under way, or a new one: True when it brought keys."""
        if self._inflight is None:
            task = asyncio.get_running_loop().create_task(self._fetch())
            task.add_done_callback(self._fetched)
            self._inflight = task
        return self._inflight

    def _fetched(self, task: asyncio.Task[bool]) -> None:
        if self._inflight is task:
            self._inflight = None

    async def _refresh(self) -> None:
        """Keep the keys fresh: every REFRESH_AT of cacheDuration, sooner (backing off) after a failure."""
        retry = self.remote.failed_refetch_duration
        while True:
            if await asyncio.shield(self.fetch()):
                retry = self.remote.failed_refetch_duration
                await asyncio.sleep(self.remote.cache_duration * REFRESH_AT)
            else:
                await asyncio.sleep(retry)
                retry = min(retry * 2, max(self.remote.cache_duration * REFRESH_AT, retry))

    async def _fetch(self) -> bool:
        self.fetches += 1
        try:
            async with asyncio.timeout(self.timeout):
                body = await self._get()
            keys, skipped = parse_jwks(body)
        except TimeoutError:
            return self._failed(f"no answer within {self.timeout:g}s")
        except Exception as exc:  # whatever goes wrong, the refresh loop lives on and the keys stay
            return self._failed(str(exc) or type(exc).__name__)
        if skipped and not self.loaded:
            LOG.warning("JWKS %s: skipped %s", self.remote.uri, "; ".join(skipped))
        if self.last_error is not None:
            LOG.warning("JWKS %s: fetched again after failing (%s)", self.remote.uri, self.last_error)
        self.last_error = None
        self.loaded = True
        self._install(keys)
        return True

    def _failed(self, why: str) -> bool:
        self.failures += 1
        if why != self.last_error:  # one line per change of trouble, not one per retry
            kept = f"keeping {len(self.keys)} keys" if self.keys else "no keys yet"
            LOG.warning("JWKS %s: fetch failed (%s); %s", self.remote.uri, why, kept)
        self.last_error = why
        return False

    async def _get(self) -> bytes:
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=httpx.Timeout(self.timeout), follow_redirects=True)
        async with self._client.stream("GET", self.remote.uri, headers={"accept": "application/json"}) as response:
            if response.status_code != 200:
                raise JWKError(f"HTTP status {response.status_code}")
            body = bytearray()
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) > MAX_JWKS_BYTES:
                    raise JWKError(f"larger than {MAX_JWKS_BYTES} bytes")
            return bytes(body)


class KeySets:
    """A worker's key sets, shared by every provider that names the same JWKS and kept across config
    versions: a reload neither refetches a remote JWKS nor forgets the keys a refetch brought."""

    def __init__(self, **remote_options: Any) -> None:
        self._remote: dict[RemoteJWKS, RemoteKeySet] = {}
        self._local: dict[str, LocalKeySet] = {}
        self._options = remote_options  # RemoteKeySet's keywords (timeouts, clock), for tests

    def for_provider(self, provider: Provider) -> KeySet:
        """The provider's key set; a remote one is started (call on the worker's running loop)."""
        if provider.remote_jwks is not None:
            ks = self._remote.get(provider.remote_jwks)
            if ks is None:
                ks = self._remote[provider.remote_jwks] = RemoteKeySet(provider.remote_jwks, **self._options)
                ks.start()
            return ks
        assert provider.local_jwks is not None, "a provider has remote or local keys (gw.config.parse_jwt)"
        document = provider.local_jwks.inline
        local = self._local.get(document)
        if local is None:
            local = self._local[document] = LocalKeySet.from_document(document)
        return local

    async def retain(self, providers: Iterable[Provider]) -> None:
        """Close the key sets no provider of the new config uses."""
        for dropped in self.release(providers):
            await dropped.close()

    def release(self, providers: Iterable[Provider]) -> list[RemoteKeySet]:
        """Forget the key sets no provider of the new config uses; the remote ones returned are the
        caller's to close (a worker installing a snapshot cannot await)."""
        providers = list(providers)
        remote = {p.remote_jwks for p in providers if p.remote_jwks is not None}
        local = {p.local_jwks.inline for p in providers if p.local_jwks is not None}
        self._local = {d: ks for d, ks in self._local.items() if d in local}
        return [self._remote.pop(spec) for spec in [r for r in self._remote if r not in remote]]

    async def close(self) -> None:
        await self.retain(())
