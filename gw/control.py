"""The control channel between the supervisor and a worker: msgpack frames over a unix socketpair.

Each frame is a 4-byte big-endian length and a msgpack map with a type in "t". A frame may carry
file descriptors (listening sockets handed to a worker): they travel as SCM_RIGHTS ancillary data
with the frame's first bytes, and the frame says how many in "nfds". The receiver keeps the
descriptors it was given in arrival order and hands each frame the ones it announced, so frames
and descriptors can never be paired wrongly however the stream is split into reads.

Both ends run on an event loop and never block: reads come from `add_reader`, and writes that the
kernel cannot take at once wait in a queue for `add_writer`.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import itertools
import os
import socket
from collections import deque
from collections.abc import Callable
from typing import Any

import msgpack

MAX_FRAME = 256 * 1024 * 1024  # a config snapshot of many thousands of routes fits comfortably
MAX_FDS_PER_READ = 64
_HEADER = 4

Message = dict[str, Any]


class ChannelClosed(ConnectionError):
    """The other end went away."""


class Channel:
    """One end of a control channel. `on_message(message, fds)` runs for every frame received."""

    def __init__(
        self,
        sock: socket.socket,
        on_message: Callable[[Message, list[int]], None],
        on_close: Callable[[], None],
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        self.sock = sock
        self.loop = loop or asyncio.get_running_loop()
        self.on_message = on_message
        self.on_close = on_close
        self.closed = False
        self._in = bytearray()
        self._fds: deque[int] = deque()
        self._out: deque[tuple[memoryview, list[int]]] = deque()
        self._writing = False
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[Message]] = {}
        sock.setblocking(False)
        self.loop.add_reader(sock.fileno(), self._readable)

    # -- sending ---------------------------------------------------------------------------

    def send(self, message: Message, fds: list[int] | tuple[int, ...] = ()) -> None:
        if self.closed:
            raise ChannelClosed("control channel closed")
        if fds:
            message = {**message, "nfds": len(fds)}
        body = msgpack.packb(message, use_bin_type=True)
        frame = len(body).to_bytes(_HEADER, "big") + body
        self._out.append((memoryview(frame), list(fds)))
        if not self._writing:
            self._flush()

    async def request(self, message: Message, timeout: float) -> Message:
        """Send a frame with a fresh "id" and wait for the reply carrying the same id."""
        rid = next(self._ids)
        future: asyncio.Future[Message] = self.loop.create_future()
        self._waiting[rid] = future
        try:
            self.send({**message, "id": rid})
            async with asyncio.timeout(timeout):
                return await future
        finally:
            self._waiting.pop(rid, None)

    @property
    def pending(self) -> int:
        """Frames not yet handed to the kernel."""
        return len(self._out)

    def reply(self, request: Message, message: Message) -> None:
        self.send({**message, "reply_to": request["id"]})

    def _flush(self) -> None:
        while self._out:
            data, fds = self._out[0]
            try:
                if fds:
                    sent = self.sock.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))])
                else:
                    sent = self.sock.send(data)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                self.close()
                return
            if sent < len(data):
                self._out[0] = (data[sent:], [])  # the descriptors went with the first byte
                break
            self._out.popleft()
        want = bool(self._out)
        if want and not self._writing:
            self.loop.add_writer(self.sock.fileno(), self._flush)
        elif not want and self._writing:
            self.loop.remove_writer(self.sock.fileno())
        self._writing = want

    # -- receiving -------------------------------------------------------------------------

    def _readable(self) -> None:
        try:
            data, ancdata, _flags, _addr = self.sock.recvmsg(
                1 << 20, socket.CMSG_SPACE(MAX_FDS_PER_READ * array.array("i").itemsize)
            )
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data, ancdata = b"", []
        for level, kind, payload in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds = array.array("i")
                fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
                self._fds.extend(fds)
        if not data:
            self.close()
            return
        buf = self._in
        buf += data
        while len(buf) >= _HEADER:
            size = int.from_bytes(buf[:_HEADER], "big")
            if size > MAX_FRAME:
                self.close()
                return
            if len(buf) < _HEADER + size:
                break
            message = msgpack.unpackb(bytes(buf[_HEADER : _HEADER + size]), raw=False)
            del buf[: _HEADER + size]
            fds = [self._fds.popleft() for _ in range(min(message.get("nfds", 0), len(self._fds)))]
            waiting = self._waiting.get(message.get("reply_to", 0))
            if waiting is not None:
                if not waiting.done():
                    waiting.set_result(message)
                continue
            self.on_message(message, fds)
            if self.closed:
                return

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        fileno = self.sock.fileno()
        if fileno >= 0:
            self.loop.remove_reader(fileno)
            if self._writing:
                self.loop.remove_writer(fileno)
        self.sock.close()
        for fd in self._fds:  # handed to us but never claimed by a frame
            _close_fd(fd)
        self._fds.clear()
        for future in self._waiting.values():
            if not future.done():
                future.set_exception(ChannelClosed("control channel closed"))
        self.on_close()


def _close_fd(fd: int) -> None:
    with contextlib.suppress(OSError):
        os.close(fd)
