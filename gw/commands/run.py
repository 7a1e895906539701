"""`gw run`: the gateway, a supervisor and its workers, on GW_CONFIG."""

from __future__ import annotations

import argparse
from dataclasses import replace
from typing import Any

from gw.commands import settings


def register(sub: Any) -> None:
    run = sub.add_parser("run", help=cmd_run.__doc__)
    run.add_argument("--config", help="config file or directory (default: $GW_CONFIG)")
    run.set_defaults(func=cmd_run)


def cmd_run(args: argparse.Namespace) -> int:
    """Start the gateway on GW_CONFIG: the supervisor and its workers."""
    from gw.supervisor import run

    current = settings()
    if args.config:
        current = replace(current, config=args.config)
    return run(current)
