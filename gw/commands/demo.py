"""`gw demo`: two echo upstreams and the gateway on the bundled example config."""

from __future__ import annotations

import argparse
import os
import socket
import sys
from dataclasses import replace
from importlib import resources
from typing import Any

from gw.commands import settings

DEMO_UPSTREAMS = (("blue", 18081), ("green", 18082))


def register(sub: Any) -> None:
    sub.add_parser("demo", help=cmd_demo.__doc__).set_defaults(func=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> int:
    """Start two echo upstreams and the gateway on the bundled example config."""
    from gw.children import start_helper
    from gw.supervisor import run

    config = str(resources.files("gw") / "examples" / "demo.yaml")
    demo_settings = replace(settings(), config=config)
    if not os.environ.get("GW_LISTENER_ADDRESS"):
        # A demo is for this machine: its routes (and its rate-limited API) stay off the network.
        demo_settings = replace(demo_settings, listener_address="127.0.0.1")
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
    bound = "" if demo_settings.listener_address == "127.0.0.1" else f" (bound to {demo_settings.listener_address})"
    print(
        f"gw demo: upstreams blue :18081 and green :18082; gateway on http://127.0.0.1:8080{bound}\n"
        "  try: curl -s http://127.0.0.1:8080/echo   curl -s http://127.0.0.1:8080/api/users\n"
        "       curl -s http://127.0.0.1:9901/metrics   (Ctrl-C stops everything)",
        file=sys.stderr,
        flush=True,
    )
    try:
        return run(demo_settings)
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
