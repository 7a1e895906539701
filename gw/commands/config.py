"""`gw config`: inspect, push and roll back the config versions stored in Redis."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from gw.commands import settings as read_settings
from gw.settings import Settings

if TYPE_CHECKING:
    from gw.config import Snapshot
    from gw.state.config_store import ConfigStore, PublishResult, Version

Command = Callable[["ConfigStore", argparse.Namespace], Awaitable[int]]

EXIT_INVALID = 1  # invalid config, unknown version
EXIT_NO_REDIS = 2  # nothing to talk to, or it did not answer


def register(sub: Any) -> None:
    """Register `gw config ...` on the top-level subparsers."""
    config = sub.add_parser("config", help="Inspect, push and roll back config versions in Redis.")
    commands = config.add_subparsers(dest="config_command", required=True)
    commands.add_parser("current", help="Print the current version.")
    commands.add_parser("history", help="List the versions kept, newest first (* = current).")
    show = commands.add_parser("show", help="Print a version's metadata and files (Secrets' data hidden).")
    show.add_argument("version", type=int)
    diff = commands.add_parser("diff", help="Unified diff of two versions' files.")
    diff.add_argument("a", type=int)
    diff.add_argument("b", type=int)
    push = commands.add_parser("push", help="Validate and compile a config, then publish it as a new version.")
    push.add_argument("path", help="config file or directory")
    rollback = commands.add_parser("rollback", help="Publish an old version's content as a new version.")
    rollback.add_argument("version", type=int)
    commands.add_parser(
        "reseal",
        help="Seal every kept version's secrets with the first GW_CONFIG_KEYS key (after a rotation, or "
        "when keys were set after Secrets were published in the clear).",
    )
    from gw.state.config_store import local_author  # here: `gw --help` need not load the state layer

    for parser in (push, rollback):
        parser.add_argument("--author", default=local_author(), help="recorded with the version (%(default)s)")
    config.set_defaults(func=cmd_config)


def redis_url(settings: Settings) -> str | None:
    """GW_REDIS_URL, else the embedded server of a gw running on this host, else None."""
    from gw.state.embedded import ping, socket_path

    if settings.redis_url:
        return settings.redis_url
    path = socket_path(settings)
    return f"unix://{path}" if ping(path) else None


def cmd_config(args: argparse.Namespace) -> int:
    """Run one `gw config` command."""
    from redis.exceptions import RedisError

    from gw.state.config_store import ConfigStoreError

    settings = read_settings()
    if args.config_command == "push":
        # Validation needs no Redis: an invalid config is refused even when Redis is down.
        args.snapshot = _validated(settings, args.path)
        if args.snapshot is None:
            return EXIT_INVALID
    url = redis_url(settings)
    if url is None:
        from gw.state.embedded import socket_path

        print(
            "gw config: no Redis to talk to: GW_REDIS_URL is not set and no running gw's embedded Valkey "
            f"answers on {socket_path(settings)}",
            file=sys.stderr,
        )
        return EXIT_NO_REDIS
    command: Command = _COMMANDS[args.config_command]
    try:
        return asyncio.run(_with_store(settings, url, command, args))
    except ConfigStoreError as exc:
        print(f"gw config: {exc}", file=sys.stderr)
        return EXIT_INVALID
    except (RedisError, OSError) as exc:
        print(f"gw config: Redis at {url}: {exc}", file=sys.stderr)
        return EXIT_NO_REDIS


def _validated(settings: Settings, path: str) -> Snapshot | None:
    from gw.config import ConfigError, compile_snapshot, read_snapshot

    if not os.path.exists(path):  # nothing to validate: not "invalid"
        print(f"gw config: {path}: no such file or directory: nothing pushed", file=sys.stderr)
        return None
    try:
        snapshot = read_snapshot(path)
        errors = compile_snapshot(snapshot, settings).errors
    except ConfigError as exc:
        errors = [exc]
    for error in errors:
        print(f"error: {error}", file=sys.stderr)
    if errors:
        print(f"gw config: {path} is invalid: not pushed", file=sys.stderr)
        return None
    return snapshot


async def _with_store(settings: Settings, url: str, command: Command, args: argparse.Namespace) -> int:
    from gw.state.config_store import ConfigStore
    from gw.state.connect import connect

    client = connect(url)
    try:
        return await command(ConfigStore.from_settings(client, settings), args)
    finally:
        await client.aclose()


def _describe(version: Version, current: int) -> str:
    when = time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(version.created))
    mark = "*" if version.number == current else " "
    return (
        f"{mark} {version.number:>4}  {when}  {version.checksum[:12]}  parent {version.parent}  "
        f"by {version.author}  from {version.source}" + ("  (secrets sealed)" if version.sealed else "")
    )


async def _current(store: ConfigStore, args: argparse.Namespace) -> int:
    current = await store.current()
    if not current:
        print("no config version published")
        return EXIT_INVALID
    print(_describe(await store.view(current), current))
    return 0


async def _history(store: ConfigStore, args: argparse.Namespace) -> int:
    current = await store.current()
    for number in await store.history():
        print(_describe(await store.view(number), current))
    return 0


async def _show(store: ConfigStore, args: argparse.Namespace) -> int:
    # Secrets' data is shown hidden, sealed or not: a terminal is no place for private keys.
    version = await store.view(args.version)
    print(_describe(version, await store.current()))
    for name, data in version.files:
        print(f"--- {name} ({len(data)} bytes)")
        sys.stdout.write(data.decode(errors="replace"))
        if data and not data.endswith(b"\n"):
            print()
    return 0


async def _diff(store: ConfigStore, args: argparse.Namespace) -> int:
    from gw.state.config_store import version_diff

    sys.stdout.write(version_diff(await store.view(args.a), await store.view(args.b)))
    return 0


async def _push(store: ConfigStore, args: argparse.Namespace) -> int:
    from gw.state.config_store import PUSH

    # Read as the supervisor reads its files: equal content, equal checksum.
    snapshot = args.snapshot.named(f"gw config push {args.path}")
    result = await store.publish(snapshot, author=args.author, origin=PUSH)
    _print_publish(result)
    return 0


async def _rollback(store: ConfigStore, args: argparse.Namespace) -> int:
    result = await store.rollback(args.version, author=args.author)
    _print_publish(result)
    return 0


async def _reseal(store: ConfigStore, args: argparse.Namespace) -> int:
    done = await store.reseal()
    key = store.config_keys.ids[0]  # type: ignore[union-attr]  # reseal refuses to run without keys
    if done:
        print(f"resealed with key {key}: version{'s' if len(done) > 1 else ''} {', '.join(map(str, done))}")
    else:
        print(f"every kept version's secrets are sealed with key {key} already")
    return 0


def _print_publish(result: PublishResult) -> None:
    if result.created:
        print(f"published version {result.version}")
    else:
        print(f"unchanged: version {result.version} is current with the same content")


_COMMANDS: dict[str, Command] = {
    "current": _current,
    "history": _history,
    "show": _show,
    "diff": _diff,
    "push": _push,
    "rollback": _rollback,
    "reseal": _reseal,
}
