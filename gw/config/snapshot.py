"""A config snapshot as it travels: the source files, their checksum, and where they came from.

The files are hashed once, when they are read (or, from Redis, verified once when fetched); the
checksum goes along with them, from the read to the compile, the comparison with what is served,
the publish and the workers, which is why it is a field and not a method.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, replace

Source = tuple[str, bytes]  # (file name, its bytes)


def sources_checksum(sources: Iterable[Source]) -> str:
    """sha256 over names and bytes: equal for equal snapshots, wherever they were read."""
    digest = hashlib.sha256()
    for name, data in sources:
        digest.update(name.encode() + b"\0" + data + b"\0")
    return digest.hexdigest()


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Files, their sources_checksum, and the name compile errors and /status give them."""

    files: tuple[Source, ...]
    checksum: str
    source: str  # a path as configured, "version 7", "gw config push PATH"

    @classmethod
    def of(cls, files: Iterable[Source], source: str) -> Snapshot:
        """The snapshot of `files`, hashed here (the one place files are hashed)."""
        files = tuple(files)
        return cls(files, sources_checksum(files), source)

    def named(self, source: str) -> Snapshot:
        """The same files under another name (a push publishes what it validated as its path)."""
        return replace(self, source=source)


NOTHING = Snapshot((), "", "")  # what a process serves before its first config
