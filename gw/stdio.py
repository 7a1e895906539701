"""Standard streams whose reader may leave: a closed pipe drops what is left instead of raising."""

from __future__ import annotations

import os
import sys
from typing import Any


class QuietWhenClosed:
    """A stream whose reader may leave early (`gw check PATH | head -2`, `gw run 2>&1 | head -1`).

    What is written after the reader left is dropped, so the process runs to its usual end and
    exit code instead of meeting a BrokenPipeError on whichever write or flush, at exit included,
    first finds the pipe closed. For the supervisor it matters most: a log line must never stop a
    shutdown halfway.
    """

    def __init__(self, stream: Any) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        try:
            return int(self._stream.write(text))
        except BrokenPipeError:
            self._discard()
            return len(text)

    def flush(self) -> None:
        try:
            self._stream.flush()
        except BrokenPipeError:
            self._discard()

    def _discard(self) -> None:
        # Later writes, and the buffered bytes that failed, go to /dev/null from here on.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, self._stream.fileno())
        os.close(devnull)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def quiet_when_closed() -> None:
    """Make this process's stdout and stderr QuietWhenClosed (once)."""
    if not isinstance(sys.stdout, QuietWhenClosed):
        sys.stdout = QuietWhenClosed(sys.stdout)  # type: ignore[assignment]
    if not isinstance(sys.stderr, QuietWhenClosed):
        sys.stderr = QuietWhenClosed(sys.stderr)  # type: ignore[assignment]
