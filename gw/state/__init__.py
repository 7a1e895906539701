"""Shared state in Redis/Valkey: connection, keys, scripts, guard, batching, heartbeats, config versions.

Also the embedded server; `batch` sends one loop turn's script calls as one pipeline, `fleet` is
the workers' heartbeat and live count.

Dependencies point inward: policies, the worker, the supervisor and the `gw config` command use
this package; it imports only gw.config (the source snapshot type and checksum), gw.observe
(metrics) and gw.children (the embedded server's process), never the settings or the command
line: what it needs from GW_* variables it is handed.
"""

from gw.state.config_store import (
    ConfigStore,
    ConfigStoreError,
    PublishResult,
    Version,
    VersionConflict,
    VersionCorrupt,
    VersionMissing,
    VersionSealed,
)
from gw.state.connect import Client, RedisURLError, connect, connect_request_path
from gw.state.embedded import EmbeddedValkey, EmbeddedValkeyError, runtime_dir, socket_path
from gw.state.follower import ConfigFollower
from gw.state.guard import RedisGuard, RedisUnavailable
from gw.state.keys import ConfigKeys, Keys
from gw.state.shared import SharedState

__all__ = [
    "Client",
    "ConfigFollower",
    "ConfigKeys",
    "ConfigStore",
    "ConfigStoreError",
    "EmbeddedValkey",
    "EmbeddedValkeyError",
    "Keys",
    "PublishResult",
    "RedisGuard",
    "RedisURLError",
    "RedisUnavailable",
    "SharedState",
    "Version",
    "VersionConflict",
    "VersionCorrupt",
    "VersionMissing",
    "VersionSealed",
    "connect",
    "connect_request_path",
    "runtime_dir",
    "socket_path",
]
