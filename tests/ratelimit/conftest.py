"""Rate-limit tests run against the real Valkey servers of tests/state (same fixtures)."""

from tests.state.conftest import client, cluster, keys, own_server, server

__all__ = ["client", "cluster", "keys", "own_server", "server"]
