"""A proxy worker process: one uvloop event loop serving the data plane on sockets it is handed.

The supervisor starts `python -m gw.worker --slot N --control-fd FD`. Over the control channel
(gw.control) it hands the worker its listening sockets (created once, by the supervisor, so that
replacing a worker never closes one) and each config version as a snapshot of the source files
with their checksum: the one way a config reaches a worker, at start, on HUP and for versions
the supervisor follows in Redis (it opens their new ports first, or refuses them). The worker
compiles a version and swaps it in by reference, answers statistics requests, and drains when
told to. Nothing here talks to the admin port: the supervisor serves it. Redis, for the worker,
is only the policies' shared state.

Signals, for operators who address a worker directly: TERM drains and exits, QUIT exits at once;
INT, HUP, USR2, TTIN and TTOU are the supervisor's business and ignored here (a Ctrl-C in a
terminal reaches the whole process group; the supervisor turns it into an orderly drain).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import signal
import socket
import sys
import time

import uvloop

from gw.config import ConfigError, LoadResult, Snapshot, compile_snapshot
from gw.config.model import CompiledConfig
from gw.control import Channel, Message
from gw.listen import LISTEN_BACKLOG
from gw.observe.metrics import Registry
from gw.proxy.dataplane import DataPlane
from gw.proxy.downstream import IDLE, TUNNEL, ClientConnection
from gw.settings import Settings, SettingsError
from gw.state import SharedState
from gw.stdio import quiet_when_closed
from gw.titles import set_title

GC_THRESHOLD = 20000  # young-generation allocations between collections (CPython's default: 700)
# While draining, a keep-alive connection idle for less than this may have a request on its way:
# it is closed after its next response (which says Connection: close) instead of under that request.
IDLE_GRACE = 1.0
IGNORED_SIGNALS = (signal.SIGINT, signal.SIGHUP, signal.SIGUSR2, signal.SIGTTIN, signal.SIGTTOU)
# For tests only: a worker started while the file this names exists exits at once with code 3, as a
# worker of a broken install would (the supervisor has imported everything already, so breaking the
# installed files cannot stand in for it at start).
TEST_EXIT_AT_START = "GW_TEST_ONLY_WORKER_EXIT_IF_FILE"


class Worker:
    """The data plane of one process: gateway state, a server per listener port, draining."""

    def __init__(
        self, settings: Settings, slot: int = 0, *, metrics: Registry | None = None, shared: SharedState | None = None
    ) -> None:
        self.settings = settings
        self.slot = slot
        self.loop = asyncio.get_running_loop()
        self.plane = DataPlane(self.loop, settings, metrics=metrics, shared=shared)
        # Listening sockets by (bind port, the supervisor's socket id): a worker may serve several
        # sockets of one port (those of a slot removed by TTOU are adopted by slot 0, so that no
        # listening socket ever closes while connections wait in its queue).
        self.sockets: dict[tuple[int, int], socket.socket] = {}
        self.servers: dict[tuple[int, int], asyncio.base_events.Server] = {}
        self.started = time.time()
        self.version = 0
        self.checksum = ""
        self.result: LoadResult | None = None
        self.draining = False
        self._frozen = False

    def add_socket(self, bind_port: int, socket_id: int, sock: socket.socket) -> None:
        key = (bind_port, socket_id)
        if key in self.sockets or self.draining:
            sock.close()  # a duplicate (the supervisor resends on reload) or too late to serve it
            return
        sock.setblocking(False)
        self.sockets[key] = sock

    def install(self, result: LoadResult, version: int) -> None:
        """Serve `result` from the next request on; requests in flight finish on the old config."""
        self.plane.install(result.config)  # first: a snapshot it cannot install is not claimed below
        self.result = result
        self.version = version
        self.checksum = result.config.checksum
        if not self._frozen:
            self._frozen = True
            self.plane.start()
            # The config and the modules loaded so far live as long as the worker: move them out
            # of the collector's sight, and collect young objects less often (the data plane makes
            # no cycles per request; a collection every few hundred requests only adds latency).
            gc.collect()
            gc.freeze()
            gc.set_threshold(GC_THRESHOLD, 20, 20)
        set_title(f"gw: worker {self.slot} [config v{version}]")

    async def bind(self, config: CompiledConfig) -> None:
        """Serve every port of `config` whose socket we hold and do not serve yet."""
        if self.draining:
            return
        ports = {port.bind_port: port for port in config.ports}
        for key, sock in list(self.sockets.items()):
            port = ports.get(key[0])
            if port is None or key in self.servers:
                continue
            bind_port, declared = port.bind_port, port.declared_port
            tls = port.tls is not None
            scheme = b"https" if tls else b"http"
            self.servers[key] = await self.loop.create_server(
                lambda b=bind_port, d=declared, s=scheme: ClientConnection(self.plane, b, d, s),  # type: ignore[misc]
                sock=sock,
                backlog=LISTEN_BACKLOG,
                ssl=self.plane.listener_context(bind_port) if tls else None,
                ssl_handshake_timeout=self.settings.header_timeout if tls else None,
            )

    def renumber(self, version: int) -> None:
        """The content we serve got a (new) version number from Redis: only the label changes."""
        self.version = version
        set_title(f"gw: worker {self.slot} [config v{version}]")

    def stop_accepting(self) -> None:
        """Close this process's listening sockets; the supervisor's copies keep them open."""
        self.draining = True
        self.plane.draining = True
        for server in self.servers.values():
            server.close()
        for sock in self.sockets.values():
            sock.close()

    async def drain(self, timeout: float) -> None:
        """Finish in-flight exchanges and close keep-alive connections; tunnels last to the deadline.

        A connection that just finished a response may have its next request on the wire: closing
        it then would fail that request, so it is closed after answering it (Connection: close)
        unless it stays idle for IDLE_GRACE. WebSockets and other tunnels are left alone until the
        deadline: their clients reconnect to another worker only when they must.
        """
        self.stop_accepting()
        gw = self.plane
        deadline = self.loop.time() + timeout
        while self.loop.time() < deadline:
            now = time.monotonic()
            busy = False
            for conn in list(gw.connections):
                # A connection just opened counts from its opening: its client may be about to
                # send (closing it then is the keep-alive race that fails a request).
                idle = conn.phase == IDLE and conn.active is None
                if idle and (now - conn.idle_since >= IDLE_GRACE or conn.closed):
                    conn.transport.close()
                    continue
                busy = True
            if not busy:
                break
            await asyncio.sleep(0.05)
        for conn in list(gw.connections):
            conn.transport.abort()
        gw.stop()

    def stats(self) -> Message:
        gw = self.plane
        tunnels = sum(1 for c in gw.connections if c.phase == TUNNEL)
        return {
            "pid": os.getpid(),
            "slot": self.slot,
            "version": self.version,
            "started": self.started,
            "connections": len(gw.connections),
            "tunnels": tunnels,
            "requests": sum(sum(s.counts) for s in gw.metrics.routes.values()),
            "metrics": gw.metrics.snapshot(),
            # Backends with a BackendTrafficPolicy as this worker sees them (/status, gauges for /metrics).
            "backends": gw.backend_states.status(),
            "backend_gauges": [[n, list(labels), v] for (n, labels), v in gw.backend_states.gauges().items()],
        }


class SupervisedWorker:
    """A Worker driven by the supervisor's control channel."""

    def __init__(self, settings: Settings, slot: int, control_fd: int) -> None:
        self.settings = settings
        # The policies' Redis: GW_REDIS_URL, which the supervisor sets (its own, or its embedded Valkey's).
        metrics = Registry()
        self.worker = Worker(settings, slot, metrics=metrics, shared=SharedState.from_settings(settings, metrics))
        self.done = asyncio.Event()
        self.ready_sent = False
        self.channel = Channel(socket.socket(fileno=control_fd), self.on_message, self.on_supervisor_lost)
        loop = self.worker.loop
        loop.add_signal_handler(signal.SIGTERM, self.begin_drain, settings.drain_timeout)
        loop.add_signal_handler(signal.SIGQUIT, self.done.set)

    def on_message(self, message: Message, fds: list[int]) -> None:
        kind = message.get("t")
        if kind == "listeners":
            sockets = message["sockets"]  # [[bind port, socket id], ...], one per descriptor
            for (port, socket_id), fd in zip(sockets, fds, strict=False):
                self.worker.add_socket(port, socket_id, socket.socket(fileno=fd))
            for fd in fds[len(sockets) :]:
                os.close(fd)
            if self.worker.result is not None:  # a reload's new ports: serve them now
                self.worker.loop.create_task(self.worker.bind(self.worker.result.config))
        elif kind == "config":
            self.apply_config(message)
        elif kind == "stats":
            stats = self.worker.stats()
            guard = self.worker.plane.limiters.guard
            if guard is not None:
                stats["redis"] = {"breaker": guard.state}
            self.channel.reply(message, {"t": "stats", **stats})
        elif kind == "backend-events":
            self.worker.plane.apply_backend_events(message.get("events", []))
        elif kind == "drain":
            self.begin_drain(float(message.get("timeout", self.settings.drain_timeout)))
        elif kind == "backend-events":  # the fleet's circuits, ejections, probe health (gw.state.backend_events)
            self.worker.plane.apply_backend_events(message["events"])

    def apply_config(self, message: Message) -> None:
        """The supervisor's snapshot (at start, on HUP, or a fleet version it follows)."""
        version = int(message["version"])
        if message["checksum"] == self.worker.checksum:
            self.worker.renumber(version)
            self.channel.reply(message, {"t": "config", "ok": True, "version": version})
            return
        # The supervisor hashed these files when it read or fetched them: its checksum is theirs.
        files = tuple((name, data) for name, data in message["files"])
        try:
            result = compile_snapshot(Snapshot(files, message["checksum"], message["source"]), self.settings)
        except ConfigError as exc:
            self.channel.reply(message, {"t": "config", "ok": False, "version": version, "error": str(exc)})
            return
        try:
            self.worker.install(result, version)
        except Exception as exc:  # a bug in building what the snapshot needs (a phase's build, say)
            logging.getLogger("gw").exception("cannot install config version %d", version)
            error = f"cannot install: {exc!r}"
            self.channel.reply(message, {"t": "config", "ok": False, "version": version, "error": error})
            return
        task = self.worker.loop.create_task(self.worker.bind(result.config))
        task.add_done_callback(lambda t: self._bound(t, message, version))

    def _bound(self, task: asyncio.Task[None], message: Message, version: int) -> None:
        exc = task.exception()
        if exc is not None:
            error = f"cannot serve: {exc}"
            self.channel.reply(message, {"t": "config", "ok": False, "version": version, "error": error})
            return
        self.channel.reply(message, {"t": "config", "ok": True, "version": version})
        if not self.ready_sent:
            self.ready_sent = True
            self.channel.send({"t": "ready", "pid": os.getpid(), "version": version})

    def begin_drain(self, timeout: float) -> None:
        if self.worker.draining:
            return
        set_title(f"gw: worker {self.worker.slot} [config v{self.worker.version}] draining")
        task = self.worker.loop.create_task(self.worker.drain(timeout))
        task.add_done_callback(lambda _t: self.done.set())

    def on_supervisor_lost(self) -> None:
        """The supervisor died: stop taking connections, finish what is in flight, exit."""
        if not self.done.is_set():
            self.begin_drain(self.settings.drain_timeout)

    async def run(self) -> None:
        await self.done.wait()
        if not self.channel.closed:
            self.channel.send({"t": "exiting", "metrics": self.worker.plane.metrics.snapshot()})


class _WorkerLogFormat(logging.Formatter):
    """`gw[worker 1 pid 4242]: …`: the supervisor and every worker may log the same lines (gw.state's,
    say), and the reader must know who says it; the supervisor's say `gw: …`."""

    def __init__(self, slot: int) -> None:
        super().__init__()
        self.speaker = f"gw[worker {slot} pid {os.getpid()}]: "

    def format(self, record: logging.LogRecord) -> str:
        return self.speaker + super().format(record).removeprefix("gw: ")


def log_as_worker(slot: int) -> None:
    """Log records of this process (gw's loggers) name the worker that writes them."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_WorkerLogFormat(slot))
    logger = logging.getLogger("gw")
    logger.addHandler(handler)
    logger.propagate = False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gw.worker", description="a gw proxy worker (started by the supervisor)")
    parser.add_argument("--slot", type=int, required=True)
    parser.add_argument("--control-fd", type=int, required=True)
    args = parser.parse_args(argv)
    for sig in IGNORED_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    quiet_when_closed()  # a supervisor's stderr whose reader left must not kill the worker's logging
    log_as_worker(args.slot)
    set_title(f"gw: worker {args.slot} [starting]")
    broken = os.environ.get(TEST_EXIT_AT_START)
    if broken and os.path.exists(broken):
        print(f"gw: worker {args.slot}: {TEST_EXIT_AT_START} names {broken}, which exists: exiting", file=sys.stderr)
        return 3
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        print(f"gw: {exc}", file=sys.stderr)
        return 2

    async def serve() -> None:
        worker = SupervisedWorker(settings, args.slot, args.control_fd)
        await worker.run()
        # Let the final frame leave before the process does.
        for _ in range(100):
            if not worker.channel.pending:
                break
            await asyncio.sleep(0.01)

    uvloop.run(serve())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
