"""`gw check` and `gw routes`: a config compiled offline, as the gateway would, and reported."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from gw.commands import settings

if TYPE_CHECKING:
    from gw.config import LoadResult


def register(sub: Any) -> None:
    check = sub.add_parser("check", help=cmd_check.__doc__)
    check.add_argument("path", nargs="?", help="config file or directory (default: $GW_CONFIG)")
    check.set_defaults(func=cmd_check)
    routes = sub.add_parser("routes", help=cmd_routes.__doc__)
    routes.add_argument("path", nargs="?", help="config file or directory (default: $GW_CONFIG)")
    routes.set_defaults(func=cmd_routes)


def _loaded(path: str | None) -> LoadResult | None:
    """The config at `path` (or GW_CONFIG) compiled as `gw run` would; None (said) when nothing in it can be served."""
    from gw.config import ConfigError, load_with

    current = settings()
    path = path or current.config
    if not path:
        print("error: no config given: name a file or directory, or set GW_CONFIG")
        return None
    try:
        return load_with(current, path)
    except ConfigError as exc:
        print(f"error: {exc}")
        return None


def cmd_check(args: argparse.Namespace) -> int:
    """Validate a config offline; print every error and each object's conditions; exit non-zero on error."""
    from gw.config.status import status_lines

    result = _loaded(args.path)
    if result is None:
        return 1
    rules = len(result.config.rules)
    ports = ", ".join(f"{p.declared_port}/{p.protocol}" for p in result.config.ports)
    print(f"{'invalid' if result.errors else 'ok'}: {rules} rules on ports {ports or '(none)'}")
    for error in result.errors:
        print(f"error: {error}")
    for warning in _unserved(args.path or settings().config):
        print(f"warning: {warning}")
    for line in status_lines(result):
        print(line)
    return 1 if result.errors else 0


def cmd_routes(args: argparse.Namespace) -> int:
    """Print the compiled route table in precedence order."""
    from gw.config import describe

    result = _loaded(args.path)
    if result is None:
        return 1
    for line in describe(result.config):
        print(line)
    return 0


def _unserved(path: str) -> list[str]:
    """What the config at `path` asks for that gw accepts but does not serve (gw.config.unserved)."""
    from gw.config import ConfigError
    from gw.config.loader import parse_files, read_sources
    from gw.config.unserved import unserved

    try:
        return unserved(parse_files(read_sources(path)))
    except ConfigError:  # reported by the load already
        return []
