"""Real Valkey servers for the shared-state tests: one of each kind per session, isolated by key prefix."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from gw.state import Client, Keys, connect
from tests.support import valkey


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[valkey.Server]:
    """A standalone server on TCP shared by the session; tests keep apart by key prefix."""
    s = valkey.standalone(tmp_path_factory.mktemp("valkey"))
    yield s
    s.stop()


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[valkey.Cluster]:
    c = valkey.cluster(tmp_path_factory.mktemp("cluster"))
    yield c
    c.stop()


@pytest.fixture
def own_server(tmp_path: Path) -> Iterator[valkey.Server]:
    """A server of this test's own, for tests that pause, kill or restart it."""
    s = valkey.standalone(tmp_path / "own")
    yield s
    s.stop()


@pytest.fixture
def keys() -> Keys:
    return Keys(f"t{uuid.uuid4().hex[:10]}")


@pytest.fixture
async def client(server: valkey.Server) -> AsyncIterator[Client]:
    c = connect(server.url)
    yield c
    await c.aclose()
