"""The `gw` command: run the gateway, run the demo, check a config, print the route table."""

from __future__ import annotations

import argparse
import os
import socket
import sys
from importlib import resources

from gw.settings import Settings, SettingsError
from gw.stdio import quiet_when_closed

DEMO_UPSTREAMS = (("blue", 18081), ("green", 18082))


def _settings() -> Settings:
    try:
        return Settings.from_env()
    except SettingsError as exc:
        print(f"gw: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def cmd_run(args: argparse.Namespace) -> int:
    """Start the gateway on GW_CONFIG: the supervisor and its workers."""
    from supervisor import run

    settings = _settings()
    if args.config:
        settings = _replace(settings, config=args.config)
    return run(settings)


def cmd_demo(args: argparse.Namespace) -> int:
    """Start two echo upstreams and the gateway on the bundled example config."""
    from gw.children import start_helper
    from supervisor import run

    config = str(resources.files("gw") / "examples" / "demo.yaml")
    settings = _replace(_settings(), config=config)
    # The upstreams' ports are taken here, before anything starts: one already in use would
    # otherwise answer as "blue" or "green".
    sockets = []
    for name, port in DEMO_UPSTREAMS:
        try:
            sockets.append(_demo_socket(port))
        except OSError as exc:
            for sock in sockets:
                sock.close()
            print(f"gw demo: cannot listen on 127.0.0.1:{port} for upstream {name!r}: {exc.strerror}", file=sys.stderr)
            return 1
    # Their own sessions: a Ctrl-C drains the gateway first; they are stopped once it has.
    children = []
    for (name, _port), sock in zip(DEMO_UPSTREAMS, sockets, strict=True):
        with sock:
            upstream = [sys.executable, "-m", "gw.demo_upstream", "--fd", str(sock.fileno()), "--name", name]
            children.append(start_helper(upstream, pass_fds=(sock.fileno(),)))
    print(
        "gw demo: upstreams blue :18081 and green :18082; gateway on http://127.0.0.1:8080\n"
        "  try: curl -s http://127.0.0.1:8080/echo   curl -s http://127.0.0.1:8080/api/users\n"
        "       curl -s http://127.0.0.1:9901/metrics   (Ctrl-C stops everything)",
        file=sys.stderr,
        flush=True,
    )
    try:
        return run(settings)
    finally:
        for child in children:
            child.terminate()
        for child in children:
            child.wait()


def _demo_socket(port: int) -> socket.socket:
    sock = socket.socket()
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    return sock


def cmd_check(args: argparse.Namespace) -> int:
    """Validate a config offline; print every error and each object's conditions; exit non-zero on error."""
    from gw.config import ConfigError, load_with
    from gw.config.status import status_lines

    try:
        result = load_with(_settings(), args.path)
    except ConfigError as exc:
        print(f"error: {exc}")
        return 1
    rules = len(result.config.rules)
    ports = ", ".join(f"{p.declared_port}/{p.protocol}" for p in result.config.ports)
    print(f"{'invalid' if result.errors else 'ok'}: {rules} rules on ports {ports or '(none)'}")
    for error in result.errors:
        print(f"error: {error}")
    for line in status_lines(result):
        print(line)
    return 1 if result.errors else 0


def cmd_routes(args: argparse.Namespace) -> int:
    """Print the compiled route table in precedence order."""
    from gw.config import ConfigError, describe, load_with

    try:
        result = load_with(_settings(), args.path)
    except ConfigError as exc:
        print(f"error: {exc}")
        return 1
    for line in describe(result.config):
        print(line)
    return 0


def _replace(settings: Settings, **changes: object) -> Settings:
    from dataclasses import replace

    return replace(settings, **changes)  # type: ignore[arg-type]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gw", description="gw: an API gateway for Kubernetes")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help=cmd_run.__doc__)
    run.add_argument("--config", help="config file or directory (default: $GW_CONFIG)")
    run.set_defaults(func=cmd_run)
    sub.add_parser("demo", help=cmd_demo.__doc__).set_defaults(func=cmd_demo)
    check = sub.add_parser("check", help=cmd_check.__doc__)
    check.add_argument("path")
    check.set_defaults(func=cmd_check)
    routes = sub.add_parser("routes", help=cmd_routes.__doc__)
    routes.add_argument("path")
    routes.set_defaults(func=cmd_routes)
    from gw.state.cli import add_config_parser

    add_config_parser(sub)
    args = parser.parse_args(argv)
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    quiet_when_closed()
    return int(args.func(args))

