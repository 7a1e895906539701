"""`gw controller`: watch the cluster and publish its Gateway API objects as config versions."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

from gw.commands import settings


def register(sub: Any) -> None:
    controller = sub.add_parser("controller", help=cmd_controller.__doc__)
    controller.set_defaults(func=cmd_controller)


def cmd_controller(args: argparse.Namespace) -> int:
    """Watch the cluster (service account, or KUBECONFIG outside), publish config versions, write status."""
    import uvloop

    from gw.commands.config import EXIT_NO_REDIS, redis_url
    from gw.controller import serve

    current = settings()
    url = redis_url(current)
    if url is None:
        print("gw controller: GW_REDIS_URL is not set (the replicas' Redis, where versions are published)",
              file=sys.stderr)  # fmt: skip
        return EXIT_NO_REDIS
    logging.basicConfig(level=logging.INFO, format="gw controller: %(message)s", stream=sys.stderr)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("httpx2").setLevel(logging.WARNING)
    return uvloop.run(serve(current, url))
