"""Config versions in Redis: immutable numbered snapshots, a `current` pointer moved by compare-and-set.

A version is the config's source files as (name, bytes) pairs plus who published it, when, from
where, how (`origin`: the files of a replica, `gw config push`, a rollback, a replica
republishing what it served into an emptied Redis, or `gw controller` rendering the cluster's
objects) and the version it was built on; stored as
msgpack with a sha256 of the files. Publishing
content identical to the current version creates nothing; a rollback is a new version with old
content, so history stays linear. The caller validates and compiles before publishing.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import msgpack

from gw.config.snapshot import Snapshot, Source, sources_checksum
from gw.state import scripts
from gw.state.connect import Client
from gw.state.keys import Keys

FORMAT = 1
# A publisher that loses the compare-and-set rebuilds on the new current and tries again; this
# many losses in a row means something publishes in a loop.
MAX_ATTEMPTS = 20

# How a version came to be (Version.origin). Only FILES is a replica's config files as read: a
# replica restarting with files already published this way does not publish them again.
FILES = "files"
PUSH = "push"
ROLLBACK = "rollback"
REPUBLISH = "republish"  # what a replica served, written back into a Redis that came back empty
CONTROLLER = "controller"  # rendered from the cluster's objects by `gw controller`

_publish = scripts.load("config_publish")


class ConfigStoreError(Exception):
    """A config version cannot be read or written as asked."""


class VersionMissing(ConfigStoreError):
    """The version does not exist (never published, or trimmed from history)."""


class VersionCorrupt(ConfigStoreError):
    """The stored files do not match the version's checksum."""


class VersionConflict(ConfigStoreError):
    """`current` moved away from the version the publisher built on."""

    def __init__(self, expected: int, current: int) -> None:
        super().__init__(f"current version is {current}, not {expected}")
        self.expected = expected
        self.current = current


@dataclass(frozen=True, slots=True)
class Version:
    """One published config snapshot."""

    number: int
    files: tuple[Source, ...]
    checksum: str
    author: str
    created: float  # unix time
    source: str  # where it came from: a path, "gw config push PATH", "rollback of 3"
    parent: int  # the current version when it was published (0: none)
    origin: str = FILES  # FILES, PUSH, ROLLBACK, REPUBLISH or CONTROLLER

    @property
    def label(self) -> str:
        """The name compile errors and /status use for this snapshot."""
        return f"version {self.number}"

    @property
    def snapshot(self) -> Snapshot:
        """Its files as a snapshot named by its label (verified against the checksum when fetched)."""
        return Snapshot(self.files, self.checksum, self.label)


@dataclass(frozen=True, slots=True)
class PublishResult:
    version: int
    created: bool  # False: the content equalled the current version's, nothing was written


def encode(
    files: Sequence[Source], checksum: str, author: str, created: float, source: str, parent: int, origin: str = FILES
) -> bytes:
    return msgpack.packb(
        {
            "format": FORMAT,
            "files": [[name, data] for name, data in files],
            "checksum": checksum,
            "author": author,
            "time": created,
            "source": source,
            "parent": parent,
            "origin": origin,
        },
        use_bin_type=True,
    )


def decode(number: int, blob: bytes) -> Version:
    """The version stored as `blob`, its checksum verified (VersionCorrupt otherwise)."""
    try:
        data = msgpack.unpackb(blob, raw=False)
        files = tuple((str(name), bytes(content)) for name, content in data["files"])
        source = data["source"]
        version = Version(
            number, files, data["checksum"], data["author"], float(data["time"]), source, int(data["parent"]),
            data.get("origin") or _origin_of(source),
        )  # fmt: skip
    except (ValueError, KeyError, TypeError, msgpack.UnpackException) as exc:
        raise VersionCorrupt(f"version {number} cannot be decoded: {exc}") from None
    if sources_checksum(files) != version.checksum:
        raise VersionCorrupt(f"version {number}: files do not match checksum {version.checksum}")
    return version


def _origin_of(source: str) -> str:
    """The origin of a version stored before versions recorded one, from its source text."""
    if source.startswith("gw config push "):
        return PUSH
    if source.startswith("rollback to version "):
        return ROLLBACK
    return FILES


class ConfigStore:
    """Publish, read and roll back config versions under one key prefix."""

    def __init__(self, client: Client, keys: Keys, *, history: int = 50) -> None:
        self.client = client
        self.keys = keys.config
        self.history_limit = history

    @classmethod
    def from_settings(cls, client: Client, settings: Any) -> ConfigStore:
        return cls(client, Keys(settings.redis_prefix), history=settings.config_history)

    @property
    def channel(self) -> str:
        return self.keys.channel

    async def current(self) -> int:
        """The current version number; 0 when nothing is published (a fresh or emptied Redis)."""
        value = await self.client.get(self.keys.current)
        return int(value) if value is not None else 0

    async def fetch(self, number: int) -> Version:
        """Version `number`, verified against its checksum."""
        blob = await self.client.hget(self.keys.versions, str(number))
        if blob is None:
            raise VersionMissing(f"version {number} does not exist (never published or trimmed from history)")
        return decode(number, blob)

    async def history(self) -> list[int]:
        """Version numbers kept, newest first."""
        return [int(n) for n in await self.client.lrange(self.keys.history, 0, -1)]

    async def published_from_files(self, checksum: str) -> int | None:
        """The newest version in history whose files a replica published with this checksum."""
        checksums = await self.client.hgetall(self.keys.checksums)
        numbers = [int(n) for n, c in checksums.items() if c.decode() == checksum]
        for number in sorted(numbers, reverse=True):
            try:
                if (await self.fetch(number)).origin == FILES:
                    return number
            except VersionMissing:  # trimmed since the read above
                continue
        return None

    async def publish(
        self, snapshot: Snapshot, *, author: str, expected: int | None = None, origin: str = FILES
    ) -> PublishResult:
        """Store `snapshot` as the new current version unless the current one has its content.

        The snapshot's source is recorded as the version's, its checksum as the files' (not hashed again).

        `expected`: the version the caller based this on; if current has moved, VersionConflict.
        None: build on whatever is current, retrying when another publisher wins the race (every
        publish still gets its own version, each recording the one before it as parent).
        """
        checksum = snapshot.checksum
        parent = expected if expected is not None else await self.current()
        for _ in range(MAX_ATTEMPTS):
            blob = encode(snapshot.files, checksum, author, time.time(), snapshot.source, parent, origin)
            k = self.keys
            status, number = await _publish(
                self.client,
                [k.seq, k.current, k.versions, k.checksums, k.history],
                [parent, checksum, blob, self.history_limit, k.channel],
            )
            status = status.decode() if isinstance(status, bytes) else status
            if status == "created":
                return PublishResult(int(number), True)
            if status == "unchanged":
                return PublishResult(int(number), False)
            if expected is not None:
                raise VersionConflict(expected, int(number))
            parent = int(number)
        raise ConfigStoreError(f"gave up after losing {MAX_ATTEMPTS} compare-and-set races in a row")

    async def rollback(self, number: int, *, author: str) -> PublishResult:
        """Make version `number`'s content current again, as a new version (history stays linear)."""
        old = await self.fetch(number)
        return await self.publish(old.snapshot.named(f"rollback to version {number}"), author=author, origin=ROLLBACK)
