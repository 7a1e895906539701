"""JSON access log: one orjson line per request, buffered, sampled, switchable off."""

from __future__ import annotations

import os
import random
import select
import stat
import sys
from typing import IO, Any

import orjson

FLUSH_BYTES = 64 * 1024  # write once this much is buffered (and at least every sweep)

# One line per request. Strings that come from the client are escaped by orjson once per distinct
# value (see `members`); the rest is numbers and ids made of token characters, formatted directly:
# a third of the cost of building a dict and serialising it for every request.
LINE = (
    b'{"time":%.6f,"request_id":"%b",%b,"status":%d,"bytes_in":%d,"bytes_out":%d,"duration_ms":%.3f,%b,%b,%b%b}\n'
)
NULL_UPSTREAM = b'"upstream":null'
# Who a SecurityPolicy authenticated (gw.policies.security.identity carries its member, escaped once).
NULL_CONSUMER = b'"consumer":null'


def members(**fields: Any) -> bytes:
    """JSON object members, without the braces, for splicing into LINE."""
    return orjson.dumps(fields)[1:-1]


class AccessLog:
    """Buffers lines and writes them in large blocks; `enabled` is checked before building a record."""

    def __init__(self, destination: str, sample: float = 1.0) -> None:
        self.sample = sample
        self.enabled = destination != "off" and sample > 0.0
        self._buffer: list[bytes] = []
        self._size = 0
        self._stream: IO[bytes] | None = None
        self._fd = -1
        if not self.enabled:
            return
        if destination == "stdout":
            self._fd = sys.stdout.fileno()
        elif destination == "stderr":
            self._fd = sys.stderr.fileno()
        else:
            self._stream = open(destination, "ab")  # noqa: SIM115 - lives as long as the worker
            self._fd = self._stream.fileno()
        # Every worker writes to the same stdout. A file opened for appending takes each write
        # whole; a pipe only up to PIPE_BUF bytes, so there lines go in blocks of at most that
        # size, or two workers' lines could interleave mid-line.
        self._pipe = stat.S_ISFIFO(os.fstat(self._fd).st_mode)

    def sampled(self) -> bool:
        """Whether this request is logged; only then is its record built."""
        return self.sample >= 1.0 or random.random() < self.sample

    def write(self, record: dict[str, Any]) -> None:
        self.write_line(orjson.dumps(record, option=orjson.OPT_APPEND_NEWLINE))

    def write_line(self, line: bytes) -> None:
        self._buffer.append(line)
        self._size += len(line)
        if self._size >= FLUSH_BYTES:
            self.flush()

    def flush(self) -> None:
        if not self._buffer:
            return
        blocks = _pipe_blocks(self._buffer) if self._pipe else [b"".join(self._buffer)]
        self._buffer.clear()
        self._size = 0
        try:
            for data in blocks:
                while data:
                    written = os.write(self._fd, data)
                    data = data[written:]
        except BlockingIOError:
            pass  # a stalled log reader must not stall the data plane: the rest is dropped
        except OSError as exc:
            print(f"gw: access log write failed: {exc}", file=sys.stderr)

    def close(self) -> None:
        self.flush()
        if self._stream is not None:
            self._stream.close()


def _pipe_blocks(lines: list[bytes]) -> list[bytes]:
    """Whole lines joined into blocks of at most PIPE_BUF bytes (a longer line goes alone)."""
    blocks: list[bytes] = []
    block: list[bytes] = []
    size = 0
    for line in lines:
        if size + len(line) > select.PIPE_BUF and block:
            blocks.append(b"".join(block))
            block, size = [], 0
        block.append(line)
        size += len(line)
    if block:
        blocks.append(b"".join(block))
    return blocks
