"""The gw supervisor: pre-forked SO_REUSEPORT workers, signals, zero-downtime reload and upgrade.

`gw run` starts it; see gw.supervisor.arbiter for the process model and gw.supervisor.signals for
what each signal does. This folder is imported as gw.supervisor, never as `supervisor`, which is
supervisord's name (pyproject.toml's package-dir; gw/__init__.py in a checkout).
"""

from __future__ import annotations

import uvloop

from gw.settings import Settings


def run(settings: Settings) -> int:
    """Serve until TERM/INT/QUIT; the process exit code."""
    from gw.supervisor.arbiter import serve
    from gw.supervisor.log import log

    if not settings.config:
        log("GW_CONFIG is not set: point it at a Gateway API YAML file or directory")
        return 2
    return uvloop.run(serve(settings))
