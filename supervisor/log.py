"""The supervisor's log: one line on stderr per event, `gw: ` first (tests and the README match it)."""

from __future__ import annotations

import contextlib
import sys


def log(message: str) -> None:
    """One line on stderr. Never raises: once stderr's reader has left, lines are dropped."""
    with contextlib.suppress(OSError, ValueError):  # a closed pipe, or a stream closed under us
        print(f"gw: {message}", file=sys.stderr, flush=True)
