"""One worker process as the supervisor sees it: the child, its control channel, its lifecycle."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from typing import Any

from gw.control import Channel, ChannelClosed, Message

STARTING, READY, DRAINING, EXITED = "starting", "ready", "draining", "exited"


class WorkerProcess:
    """A `python -m gw.worker` child. Fresh interpreter each time, so USR2 picks up new code."""

    def __init__(self, slot: int, on_exit: Callable[[WorkerProcess], None]) -> None:
        self.slot = slot
        self.on_exit = on_exit
        self.state = STARTING
        self.pid = 0
        self.version = 0
        self.started = time.time()
        self.ready_at = 0.0
        self.proc: asyncio.subprocess.Process | None = None
        self.channel: Channel | None = None
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.final_metrics: dict[str, Any] | None = None
        self.exit_code: int | None = None
        self.exited = asyncio.Event()

    async def spawn(self, env: dict[str, str]) -> None:
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "gw.worker",
                "--slot",
                str(self.slot),
                "--control-fd",
                str(child.fileno()),
                pass_fds=(child.fileno(),),
                stdin=asyncio.subprocess.DEVNULL,
                env=env,
            )
        finally:
            child.close()
        self.pid = self.proc.pid
        self.channel = Channel(parent, self._on_message, self._on_channel_closed)
        asyncio.get_running_loop().create_task(self._watch())

    async def _watch(self) -> None:
        assert self.proc is not None
        self.exit_code = await self.proc.wait()
        self.state = EXITED
        if self.channel is not None:
            self.channel.close()
        if not self.ready.done():
            self.ready.set_exception(RuntimeError(self.exit_before_ready()))
            self.ready.exception()  # retrieved: whoever waits sees it; nobody waiting is fine too
        self.exited.set()
        self.on_exit(self)

    def exit_before_ready(self) -> str:
        return f"worker {self.slot} (pid {self.pid}) exited with {exit_text(self.exit_code)} before it was ready"

    def _on_message(self, message: Message, fds: list[int]) -> None:
        for fd in fds:  # workers never send descriptors; do not leak any
            os.close(fd)
        kind = message.get("t")
        if kind == "ready":
            self.version = int(message.get("version", 0))
            if self.state == STARTING:
                self.state = READY
                self.ready_at = time.time()
            if not self.ready.done():
                self.ready.set_result(None)
        elif kind == "exiting":
            self.final_metrics = message.get("metrics")

    def _on_channel_closed(self) -> None:
        pass  # the process watcher decides what an exit means

    def send(self, message: Message, fds: list[int] | tuple[int, ...] = ()) -> bool:
        if self.channel is None or self.channel.closed:
            return False
        try:
            self.channel.send(message, fds)
        except ChannelClosed:
            return False
        return True

    async def request(self, message: Message, timeout: float) -> Message | None:
        if self.channel is None or self.channel.closed:
            return None
        try:
            return await self.channel.request(message, timeout)
        except (ChannelClosed, TimeoutError):
            return None

    def drain(self, timeout: float) -> None:
        """Stop accepting and finish in-flight work; the process exits when done."""
        if self.state in (DRAINING, EXITED):
            return
        self.state = DRAINING
        if not self.send({"t": "drain", "timeout": timeout}):
            self.signal(signal.SIGTERM)

    def signal(self, sig: int) -> None:
        if self.proc is not None and self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(sig)

    def kill(self) -> None:
        self.signal(signal.SIGKILL)


def exit_text(code: int | None) -> str:
    """A process's return code as the log says it: "code 1", "signal SIGKILL"."""
    if code is None:
        return "an unknown status"
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"code {code}"
