"""Config versions in Redis: immutable numbered snapshots, a `current` pointer moved by compare-and-set.

A version is the config's source files as (name, bytes) pairs plus who published it, when, from
where, how (`origin`: the files of a replica, `gw config push`, a rollback, a replica
republishing what it served into an emptied Redis, or `gw controller` rendering the cluster's
objects) and the version it was built on; stored as
msgpack with a sha256 of the files. Publishing
content identical to the current version creates nothing; a rollback is a new version with old
content, so history stays linear. The caller validates and compiles before publishing.

Secret material is sealed here (gw.state.sealing, GW_CONFIG_KEYS) on the way in and opened on the
way out, whoever publishes or reads; the checksum stays over the plain files, so the same config
sealed twice (fresh nonces) is still "unchanged". `view` reads a version with its secrets hidden,
without keys, for the CLI.
"""

from __future__ import annotations

import difflib
import getpass
import hashlib
import logging
import os
import socket
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import msgpack
import yaml

from gw.config.snapshot import Snapshot, Source, sources_checksum
from gw.state import scripts, sealing
from gw.state.connect import Client
from gw.state.keys import Keys
from gw.state.sealing import SealingKeys

log = logging.getLogger("gw.state")

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
_reseal = scripts.load("config_reseal")


def local_author() -> str:
    """"user@host" of this process, for a version's author: a UID without a passwd entry (a
    container's arbitrary UID) is "uid<N>", not a crash."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = f"uid{os.getuid()}"
    return f"{user}@{socket.gethostname()}"


class ConfigStoreError(Exception):
    """A config version cannot be read or written as asked."""


class VersionMissing(ConfigStoreError):
    """The version does not exist (never published, or trimmed from history)."""


class VersionCorrupt(ConfigStoreError):
    """The stored files do not match the version's checksum."""


class VersionSealed(ConfigStoreError):
    """The version's secret material is sealed with a key this process does not hold."""


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
    sealed: bool = False  # its secret material is stored sealed

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
    files: Sequence[Source],
    checksum: str,
    author: str,
    created: float,
    source: str,
    parent: int,
    origin: str = FILES,
    sealed: Mapping[str, str] | None = None,
) -> bytes:
    """The stored form; `files` as stored (sealed ones sealed), `sealed` says which and how."""
    return msgpack.packb(
        {
            "format": FORMAT,
            **({"sealed": dict(sealed)} if sealed else {}),
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


def decode(
    number: int, blob: bytes, keys: SealingKeys | None = None, *, reveal: bool = True, files: bool = True
) -> Version:
    """The version stored as `blob`, opened with `keys` and its checksum verified.

    VersionSealed: a sealed value's key is not in `keys`; VersionCorrupt: the blob does not decode,
    a sealed value does not open, or the files do not match the checksum. reveal=False: the files
    with their secret fields hidden instead, no key needed (a sealed version is then not verified).
    """
    try:
        data = msgpack.unpackb(blob, raw=False)
        stored = tuple((str(name), bytes(content)) for name, content in data["files"])
        how = {str(name): str(h) for name, h in (data.get("sealed") or {}).items()}
        source = data["source"]
        version = Version(
            number, stored, data["checksum"], data["author"], float(data["time"]), source, int(data["parent"]),
            data.get("origin") or _origin_of(source), bool(how),
        )  # fmt: skip
    except (ValueError, KeyError, TypeError, AttributeError, msgpack.UnpackException) as exc:
        raise VersionCorrupt(f"version {number} cannot be decoded: {exc}") from None
    if not files:
        return replace(version, files=())  # what it is, not its files: nothing to verify or open
    if not reveal:
        if not how:
            _verify(version)
        hidden = tuple((name, sealing.redact(name, content, how.get(name))) for name, content in stored)
        return replace(version, files=hidden)
    if how:
        version = replace(version, files=_open(number, stored, how, keys))
    _verify(version)
    return version


def _open(
    number: int, stored: Sequence[Source], how: Mapping[str, str], keys: SealingKeys | None
) -> tuple[Source, ...]:
    files: list[Source] = []
    try:
        for name, content in stored:
            files.append((name, sealing.open_file(name, content, how[name], keys) if name in how else content))
    except sealing.KeyMissing as exc:
        held = f"it holds {', '.join(keys.ids)}" if keys is not None else "it is not set"
        raise VersionSealed(f"version {number}: {exc} ({held})") from None
    except (sealing.SealingError, ValueError, yaml.YAMLError) as exc:
        raise VersionCorrupt(f"version {number}: {exc}") from None
    return tuple(files)


def _verify(version: Version) -> None:
    if sources_checksum(version.files) != version.checksum:
        raise VersionCorrupt(f"version {version.number}: files do not match checksum {version.checksum}")


def _origin_of(source: str) -> str:
    """The origin of a version stored before versions recorded one, from its source text."""
    if source.startswith("gw config push "):
        return PUSH
    if source.startswith("rollback to version "):
        return ROLLBACK
    return FILES


class ConfigStore:
    """Publish, read and roll back config versions under one key prefix."""

    def __init__(
        self, client: Client, keys: Keys, *, history: int = 50, config_keys: SealingKeys | None = None
    ) -> None:
        self.client = client
        self.keys = keys.config
        self.history_limit = history
        self.config_keys = config_keys  # GW_CONFIG_KEYS; None: secret material is stored in the clear
        self._warned = False

    @classmethod
    def from_settings(cls, client: Client, settings: Any) -> ConfigStore:
        keys = SealingKeys(settings.config_keys) if settings.config_keys else None
        return cls(client, Keys(settings.redis_prefix), history=settings.config_history, config_keys=keys)

    @property
    def channel(self) -> str:
        return self.keys.channel

    async def current(self) -> int:
        """The current version number; 0 when nothing is published (a fresh or emptied Redis)."""
        value = await self.client.get(self.keys.current)
        return int(value) if value is not None else 0

    async def fetch(self, number: int) -> Version:
        """Version `number`, opened and verified against its checksum (VersionSealed: a key is missing)."""
        return decode(number, await self._blob(number), self.config_keys)

    async def view(self, number: int) -> Version:
        """Version `number` with its secret fields hidden, for showing (no key needed)."""
        return decode(number, await self._blob(number), reveal=False)

    async def summary(self, number: int) -> Version:
        """Version `number` without its files (number, checksum, author, time, source, origin): what
        a view refreshed every few seconds shows, with no hash of the files each time."""
        return decode(number, await self._blob(number), files=False)

    async def _blob(self, number: int) -> bytes:
        blob = await self.client.hget(self.keys.versions, str(number))
        if blob is None:
            raise VersionMissing(f"version {number} does not exist (never published or trimmed from history)")
        return blob  # type: ignore[no-any-return]

    async def history(self) -> list[int]:
        """Version numbers kept, newest first."""
        return [int(n) for n in await self.client.lrange(self.keys.history, 0, -1)]

    async def published_from_files(self, checksum: str) -> int | None:
        """The newest version in history whose files a replica published with this checksum."""
        checksums = await self.client.hgetall(self.keys.checksums)
        numbers = [int(n) for n, c in checksums.items() if c.decode() == checksum]
        for number in sorted(numbers, reverse=True):
            try:
                if (await self.view(number)).origin == FILES:  # its origin only: no key needed
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
        files, how = self._seal(snapshot.files)
        parent = expected if expected is not None else await self.current()
        for _ in range(MAX_ATTEMPTS):
            blob = encode(files, checksum, author, time.time(), snapshot.source, parent, origin, how)
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

    def _seal(self, files: Sequence[Source]) -> tuple[tuple[Source, ...], dict[str, str]]:
        """The files as stored, and which are sealed how; without keys, as they are (said once)."""
        if self.config_keys is None:
            if not self._warned and any(sealing.holds_secrets(name, data) for name, data in files):
                self._warned = True
                log.warning(
                    "gw: publishing a config with Secrets in the clear: set GW_CONFIG_KEYS to seal them in Redis"
                )
            return tuple(files), {}
        stored: list[Source] = []
        how: dict[str, str] = {}
        for name, data in files:
            sealed = sealing.seal_file(name, data, self.config_keys)
            if sealed is None:
                stored.append((name, data))
            else:
                stored.append((name, sealed[0]))
                how[name] = sealed[1]
        return tuple(stored), how

    async def reseal(self) -> list[int]:
        """Seal every kept version's secrets with the first key, where they are not yet: the numbers done.

        Rotation (a new key put first) and a fleet that set GW_CONFIG_KEYS after publishing Secrets
        in the clear: afterwards no kept version needs an older key, nor holds a secret in the clear.
        """
        if self.config_keys is None:
            raise ConfigStoreError("GW_CONFIG_KEYS is not set: there is no key to seal with")
        first = self.config_keys.ids[0]
        done = []
        for number in await self.history():
            try:
                blob = await self._blob(number)
            except VersionMissing:
                continue  # trimmed since the history was read
            raw = msgpack.unpackb(blob, raw=False)
            how = raw.get("sealed") or {}
            unsealed = any(n not in how and sealing.holds_secrets(n, d) for n, d in raw["files"])
            if not unsealed and all(sealing.key_ids_in(bytes(d)) <= {first} for n, d in raw["files"] if n in how):
                continue
            version = decode(number, blob, self.config_keys)
            files, how = self._seal(version.files)
            new = encode(
                files, version.checksum, version.author, version.created, version.source, version.parent,
                version.origin, how,
            )  # fmt: skip
            if await _reseal(self.client, [self.keys.versions], [number, hashlib.sha1(blob).hexdigest(), new]):
                done.append(number)
        return done

    async def rollback(self, number: int, *, author: str) -> PublishResult:
        """Make version `number`'s content current again, as a new version (history stays linear)."""
        old = await self.fetch(number)
        return await self.publish(old.snapshot.named(f"rollback to version {number}"), author=author, origin=ROLLBACK)


def version_diff(a: Version, b: Version) -> str:
    """Unified diff of two versions' files (secret fields hidden when they come from view()).

    `gw config diff` prints it and the admin's /config/diff serves it; identical files say so.
    """
    files_a, files_b = dict(a.files), dict(b.files)
    out: list[str] = []
    for name in sorted(files_a.keys() | files_b.keys()):
        old = files_a.get(name, b"").decode(errors="replace").splitlines(keepends=True)
        new = files_b.get(name, b"").decode(errors="replace").splitlines(keepends=True)
        lines = difflib.unified_diff(old, new, f"{a.number}:{name}", f"{b.number}:{name}")
        out.extend(line if line.endswith("\n") else line + "\n" for line in lines)
    if out:
        return "".join(out)
    if a.checksum != b.checksum:
        return f"versions {a.number} and {b.number} differ only in secret material (not shown)\n"
    return f"versions {a.number} and {b.number} have identical files\n"
