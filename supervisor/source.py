"""The config source in file mode: the files under GW_CONFIG, read once per (re)load as a snapshot.

A snapshot is the files' names and bytes; workers compile exactly those bytes, so a file edited
while a reload is under way can never give two workers different configs.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from gw.config import ConfigError
from gw.config.loader import config_files


@dataclass(frozen=True)
class Snapshot:
    source: str
    files: list[tuple[str, bytes]]
    checksum: str


def read_snapshot(path: str) -> Snapshot:
    digest = hashlib.sha256()
    files: list[tuple[str, bytes]] = []
    for file in config_files(path):
        name = str(file)
        try:
            data = file.read_bytes()
        except OSError as exc:
            raise ConfigError(name, "", "", f"cannot read: {exc.strerror or exc}") from None
        digest.update(name.encode() + b"\0" + data + b"\0")
        files.append((name, data))
    return Snapshot(path, files, digest.hexdigest())
