"""Read a config source — a YAML file or a directory of them — and run it through the pipeline."""

from __future__ import annotations

import os
from collections.abc import Hashable, Iterable, Sequence
from pathlib import Path
from typing import Any, Protocol

import yaml

from gw.config.compile import DEFAULT_CONTROLLER_NAME, LoadResult, compile_resources
from gw.config.errors import ConfigError
from gw.config.parse import Document, parse_documents
from gw.config.snapshot import Snapshot, Source, sources_checksum

YAML_SUFFIXES = (".yaml", ".yml")


def config_files(path: str) -> list[Path]:
    """The files a config path names: itself, or every *.yaml/*.yml below it, sorted.

    Names are absolute (so `gw.yaml`, `./gw.yaml` and `/etc/gw/gw.yaml` are one snapshot) but not
    resolved through symlinks: a Kubernetes ConfigMap volume links `gw.yaml` to
    `..2026_11_29_…/gw.yaml`, a directory named anew on every update and on every node, and the
    link's name is the one replicas share. Entries whose name starts with a dot (the ConfigMap's
    `..data` and timestamped directories, editors' lock and swap files) are skipped.
    """
    root = Path(os.path.abspath(path))
    if root.is_dir():
        found = []
        for directory, subdirs, files in os.walk(root):  # symlinked directories: not followed (cycles)
            subdirs[:] = sorted(d for d in subdirs if not d.startswith("."))
            for name in files:
                file = Path(directory, name)
                if not name.startswith(".") and file.suffix in YAML_SUFFIXES and file.is_file():
                    found.append(file)
        return sorted(found)
    if root.is_file():
        return [root]
    raise ConfigError(path, "", "", "no such file or directory")


def read_sources(path: str) -> list[Source]:
    """The bytes of every file a config path names, each with the name errors will quote."""
    sources = []
    for file in config_files(path):
        name = str(file)
        try:
            sources.append((name, file.read_bytes()))
        except OSError as exc:
            raise ConfigError(name, "", "", f"cannot read: {exc.strerror or exc}") from None
    return sources


def read_snapshot(path: str) -> Snapshot:
    """The files a config path names as one snapshot, named by the path as given."""
    return Snapshot.of(read_sources(path), os.fspath(path))


def parse_files(sources: Iterable[Source]) -> list[Document]:
    """All YAML documents of a snapshot's files.

    A file that is not valid YAML makes the whole config unusable (raises ConfigError with its
    line and column): serving half a directory would silently drop routes.
    """
    documents: list[Document] = []
    for name, data in sources:
        documents += [(name, doc) for doc in parse_yaml(data, name)]
    return documents


def read_documents(path: str) -> tuple[list[Document], str]:
    """All YAML documents under `path` and a checksum of the bytes they came from."""
    snapshot = read_snapshot(path)
    return parse_files(snapshot.files), snapshot.checksum


class _StrictLoader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
    """YAML's safe loader (libyaml's when present), refusing a key given twice in one mapping.

    PyYAML keeps the last of duplicate keys silently; kubectl refuses such a manifest ("mapping
    key already defined"), and so does gw: a second `rules:` would otherwise replace the first.
    """

    def construct_mapping(self, node: Any, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, Hashable) and key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"mapping key {key!r} is given more than once", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def parse_yaml(data: bytes | str, file: str = "<memory>") -> list[Any]:
    try:
        return list(yaml.load_all(data, Loader=_StrictLoader))
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        raise ConfigError(file, "", "", f"invalid YAML: {where}{exc.problem or exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(file, "", "", f"invalid YAML: {exc}") from None


def load_config(
    path: str,
    *,
    port_offset: int = 0,
    controller_name: str = DEFAULT_CONTROLLER_NAME,
    default_max_body_size: int = 0,
    gateway: str | None = None,
) -> LoadResult:
    """Read, parse, validate and compile the config at `path` (a file or a directory).

    Errors in single objects are returned in `LoadResult.errors` and those objects are left out
    or marked invalid; ConfigError is raised only when nothing usable remains.
    """
    return compile_sources(
        read_sources(path),
        source=os.fspath(path),
        port_offset=port_offset,
        controller_name=controller_name,
        default_max_body_size=default_max_body_size,
        gateway=gateway,
    )


def compile_sources(
    sources: Sequence[Source],
    *,
    source: str = "",
    checksum: str | None = None,
    port_offset: int = 0,
    controller_name: str = DEFAULT_CONTROLLER_NAME,
    default_max_body_size: int = 0,
    gateway: str | None = None,
) -> LoadResult:
    """Parse, validate and compile files (as read_sources returns them); compile_snapshot for a Snapshot.

    `source` names where they came from (a path, "version 7"); errors name the files in `sources`.
    `checksum`: their sources_checksum when the caller has it already.
    """
    resources, errors = parse_documents(parse_files(sources))
    if checksum is None:
        checksum = sources_checksum(sources)
    return compile_resources(
        resources,
        port_offset=port_offset,
        controller_name=controller_name,
        default_max_body_size=default_max_body_size,
        gateway=gateway,
        errors=errors,
        source=source,
        checksum=checksum,
    )


class CompileSettings(Protocol):
    """The GW_* settings a compile reads (gw.settings.Settings; config does not import the settings)."""

    @property
    def config(self) -> str: ...
    @property
    def listener_port_offset(self) -> int: ...
    @property
    def max_body_size(self) -> int: ...
    @property
    def controller_name(self) -> str: ...
    @property
    def gateway(self) -> str: ...


def compile_options(settings: CompileSettings) -> dict[str, Any]:
    """The options of compile_sources and load_config that the settings decide."""
    return {
        "port_offset": settings.listener_port_offset,
        "default_max_body_size": settings.max_body_size,
        "controller_name": settings.controller_name,
        "gateway": settings.gateway or None,
    }


def compile_snapshot(snapshot: Snapshot, settings: CompileSettings) -> LoadResult:
    """Compile a config snapshot exactly as `load_with` would compile its files, without hashing them."""
    return compile_sources(
        snapshot.files, source=snapshot.source, checksum=snapshot.checksum, **compile_options(settings)
    )


def load_with(settings: CompileSettings, path: str | None = None) -> LoadResult:
    """Load the config at `path` (default GW_CONFIG) as the GW_* settings say."""
    return load_config(path or settings.config, **compile_options(settings))


def load_text(text: str, **options: Any) -> LoadResult:
    """Compile a config given as YAML text (tests, `gw check -`)."""
    resources, errors = parse_documents(("<memory>", doc) for doc in parse_yaml(text))
    return compile_resources(resources, errors=errors, source="<memory>", **options)
