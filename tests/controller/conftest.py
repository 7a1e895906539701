"""Fixtures for the controller's tests: a FAKE API server, a real Valkey, controllers run in the test's loop."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from gw.controller.api import Api, connect_http
from gw.controller.controller import Controller
from gw.settings import Settings
from gw.state import Client, Keys, connect
from gw.state.config_store import ConfigStore, Version
from tests.support import valkey
from tests.support.fake_apiserver import FakeApiServer

# Short election timings: a takeover within a second or two, not client-go's 15 s.
FAST = {
    "GW_LEADER_ELECTION_LEASE_DURATION": "1s",
    "GW_LEADER_ELECTION_RENEW_DEADLINE": "0.6s",
    "GW_LEADER_ELECTION_RETRY_PERIOD": "0.1s",
    "GW_CONFIG_POLL_INTERVAL": "0.5s",
}


@pytest.fixture
def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeApiServer]:
    """The fake API server, and KUBECONFIG pointing at it (the controller reads it as outside a cluster)."""
    server = FakeApiServer().start()
    monkeypatch.setenv("KUBECONFIG", str(server.kubeconfig(tmp_path / "kubeconfig")))
    yield server
    server.close()


@pytest.fixture(scope="session")
def valkey_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[valkey.Server]:
    s = valkey.standalone(tmp_path_factory.mktemp("valkey"))
    yield s
    s.stop()


@pytest.fixture
async def redis(valkey_server: valkey.Server) -> AsyncIterator[Client]:
    client = connect(valkey_server.url)
    yield client
    await client.aclose()


@pytest.fixture
def prefix() -> str:
    return f"c{uuid.uuid4().hex[:10]}"


@pytest.fixture
def store(redis: Client, prefix: str) -> ConfigStore:
    return ConfigStore(redis, Keys(prefix))


def settings(prefix: str, **env: str) -> Settings:
    return Settings.from_env({**FAST, "GW_REDIS_PREFIX": prefix, **env})


@contextlib.asynccontextmanager
async def running(controller: Controller) -> AsyncIterator[Controller]:
    """The controller's loop as a task; cancelled at the end without releasing its Lease (a crash)."""
    task = asyncio.get_running_loop().create_task(controller.run())
    try:
        yield controller
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await controller.api.aclose()


def new_controller(store: ConfigStore, prefix: str, holder: str = "", **env: str) -> Controller:
    return Controller(settings(prefix, **env), Api(connect_http()), store, holder=holder or None, backoff_cap=0.5)


async def versions(store: ConfigStore) -> list[Version]:
    """Every version kept, oldest first."""
    return [await store.fetch(n) for n in reversed(await store.history())]


async def eventually(condition: object, what: str, timeout: float = 10.0) -> None:
    """Await until `condition()` (sync or async) is truthy; fail naming `what` at the deadline."""
    try:
        async with asyncio.timeout(timeout):
            while True:
                result = condition()  # type: ignore[operator]
                if asyncio.iscoroutine(result):
                    result = await result
                if result:
                    return
                await asyncio.sleep(0.02)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None
