"""The `gw` command's verbs, one module per family: run, demo, check and routes, config.

Each module registers its subcommands on the top-level parser (gw.cli) and runs them: it reads the
GW_* settings and calls into gw.config, gw.state or the supervisor, which know nothing of the
command line. Modules import what a verb needs when it runs, so `gw --help` stays quick.
"""

from __future__ import annotations

import sys

from gw.settings import Settings, SettingsError

EXIT_SETTINGS = 2  # a GW_* variable gw cannot use


def settings() -> Settings:
    """The GW_* settings; a bad one ends the command with exit code 2, naming the variable."""
    try:
        return Settings.from_env()
    except SettingsError as exc:
        print(f"gw: {exc}", file=sys.stderr)
        raise SystemExit(EXIT_SETTINGS) from None
