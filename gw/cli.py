"""The `gw` command: run the gateway, run the demo, check a config, print the route table, manage versions,
watch a cluster."""

from __future__ import annotations

import argparse
import os

from gw import __version__
from gw.commands import check, config, controller, demo, run
from gw.stdio import quiet_when_closed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gw", description="gw: an API gateway for Kubernetes")
    parser.add_argument("--version", action="version", version=f"gw {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for family in (run, demo, check, config, controller):  # the order `gw --help` lists them in
        family.register(sub)
    args = parser.parse_args(argv)
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    quiet_when_closed()
    return int(args.func(args))
