"""Helper processes that only their parent stops: the embedded Valkey, the demo upstreams.

A terminal's Ctrl-C sends SIGINT to its whole foreground process group. The supervisor answers
it by draining its workers (which ignore SIGINT), and the servers they depend on must outlive
that drain: so each helper runs in a session of its own, out of reach of the group's signals, and
the parent stops it by PID when it is done with it. A parent killed with SIGKILL cannot do that;
the kernel then sends the helper SIGTERM, so no orphan keeps a socket or a port.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
from collections.abc import Sequence
from typing import Any

_PR_SET_PDEATHSIG = 1


def _die_with_parent(parent: int) -> None:
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:  # the parent died before the request above: nobody will stop us
        os.kill(os.getpid(), signal.SIGTERM)


def start_helper(args: Sequence[str], **popen: Any) -> subprocess.Popen[bytes]:
    """Popen `args` in its own session, sent SIGTERM by the kernel if this process dies first."""
    parent = os.getpid()
    return subprocess.Popen(args, start_new_session=True, preexec_fn=lambda: _die_with_parent(parent), **popen)
