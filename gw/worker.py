"""A proxy worker process: one uvloop event loop serving the data plane on its listening sockets.

Until the supervisor lands, `gw run` runs one worker in-process; it binds its own sockets
(SO_REUSEPORT, so a supervisor can later hand them over unchanged) and serves the admin app.
"""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import socket
import sys
import time
from typing import Any

import uvloop

from gw.admin import AdminApp, admin_server
from gw.config import ConfigError, LoadResult, load_config, status_document
from gw.config.model import CompiledConfig
from gw.proxy.downstream import ClientConnection
from gw.proxy.gateway import Gateway
from gw.settings import Settings

LISTEN_BACKLOG = 4096
GC_THRESHOLD = 20000  # young-generation allocations between collections (CPython's default: 700)


def bind_listener(host: str, port: int, *, reuse_port: bool = True) -> socket.socket:
    """A listening TCP socket (SO_REUSEPORT for the data plane), non-blocking, ready to serve."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(LISTEN_BACKLOG)
    sock.setblocking(False)
    return sock


def load(settings: Settings, path: str | None = None) -> LoadResult:
    """Load the config at `path` (default GW_CONFIG) as the GW_* settings say."""
    return load_config(
        path or settings.config,
        port_offset=settings.listener_port_offset,
        default_max_body_size=settings.max_body_size,
        controller_name=settings.controller_name,
        gateway=settings.gateway or None,
    )


def report(result: LoadResult) -> None:
    for error in result.errors:
        print(f"gw: config: {error}", file=sys.stderr)


class Worker:
    """Owns the loop-level pieces: gateway state, servers per port, admin, signals."""

    def __init__(self, settings: Settings, listen_host: str = "0.0.0.0") -> None:
        self.settings = settings
        self.listen_host = listen_host
        self.loop = asyncio.get_running_loop()
        self.gateway = Gateway(self.loop, settings)
        self.servers: dict[int, asyncio.base_events.Server] = {}
        self.ready = False
        self.started = time.time()
        self.stopping = asyncio.Event()
        self.reloads = 0
        self.result: LoadResult | None = None

    async def serve(self, result: LoadResult) -> None:
        self.result = result
        config = result.config
        self.gateway.install(config)
        self.gateway.start()
        await self._bind(config)
        host, port = self.settings.admin_addr
        admin_sock = bind_listener(host, port, reuse_port=False)  # fails loudly if taken
        admin = admin_server(AdminApp(self._ready, self.gateway.metrics.render, self._status), host, port)
        admin_task = asyncio.create_task(admin.serve(sockets=[admin_sock]))
        for sig in (signal.SIGTERM, signal.SIGINT):
            self.loop.add_signal_handler(sig, self.stopping.set)
        self.loop.add_signal_handler(signal.SIGHUP, self.reload)
        self.ready = True
        print(
            f"gw: serving {', '.join(str(p) for p in self.servers)} (admin {host}:{port}, pid {os.getpid()})",
            file=sys.stderr,
            flush=True,
        )
        await self.stopping.wait()
        self.ready = False
        await self._drain()
        admin.should_exit = True
        await admin_task

    async def _bind(self, config: CompiledConfig) -> None:
        for port in config.ports:
            if port.bind_port in self.servers:
                continue
            sock = bind_listener(self.listen_host, port.bind_port)
            bind_port, declared = port.bind_port, port.declared_port
            tls = port.tls is not None
            scheme = b"https" if tls else b"http"
            self.servers[bind_port] = await self.loop.create_server(
                lambda b=bind_port, d=declared, s=scheme: ClientConnection(self.gateway, b, d, s),  # type: ignore[misc]
                sock=sock,
                backlog=LISTEN_BACKLOG,
                ssl=self.gateway.listener_context(bind_port) if tls else None,
                ssl_handshake_timeout=self.settings.header_timeout if tls else None,
            )

    def reload(self) -> None:
        """SIGHUP: load the config again; a failure keeps the running config and says why."""
        try:
            result = load(self.settings)
        except ConfigError as exc:
            print(f"gw: reload rejected, keeping the running config: {exc}", file=sys.stderr, flush=True)
            self.gateway.metrics.inc("gw_config_reloads_total", result="rejected")
            return
        report(result)
        self.result = result
        self.gateway.install(result.config)
        self.loop.create_task(self._bind(result.config))
        self.reloads += 1
        self.gateway.metrics.inc("gw_config_reloads_total", result="applied")
        print(f"gw: config reloaded ({len(result.config.rules)} rules)", file=sys.stderr, flush=True)

    async def _drain(self) -> None:
        """Stop accepting, let in-flight exchanges finish, close idle keep-alive connections."""
        gw = self.gateway
        gw.draining = True
        for server in self.servers.values():
            server.close()
        deadline = self.loop.time() + 10.0
        while self.loop.time() < deadline:
            busy = False
            for conn in list(gw.connections):
                if conn.active is None:
                    conn.transport.close()
                else:
                    busy = True
            if not busy:
                break
            await asyncio.sleep(0.05)
        for conn in list(gw.connections):
            conn.transport.abort()
        gw.stop()

    def _ready(self) -> tuple[bool, str]:
        if not self.ready:
            return False, "starting" if self.gateway.config is None else "draining"
        return True, "ready"

    def _status(self) -> dict[str, Any]:
        config = self.gateway.config
        return {
            "pid": os.getpid(),
            "uptime_seconds": round(time.time() - self.started, 3),
            "config": {
                "source": config.source if config else None,
                "checksum": config.checksum if config else None,
                "reloads": self.reloads,
            },
            "listeners": [
                {"declared_port": p.declared_port, "bind_port": p.bind_port, "listeners": list(p.listeners)}
                for p in (config.ports if config else ())
            ],
            "connections": len(self.gateway.connections),
            # Gateway API conditions of every object, as `gw check` reports them.
            "gatewayAPI": status_document(self.result, self.settings.controller_name) if self.result else None,
        }


def run(settings: Settings) -> int:
    """Load the config, then serve until SIGTERM/SIGINT. Returns the process exit code."""
    if not settings.config:
        print("gw: GW_CONFIG is not set: point it at a Gateway API YAML file or directory", file=sys.stderr)
        return 2
    try:
        result = load(settings)
    except ConfigError as exc:
        print(f"gw: config: {exc}", file=sys.stderr)
        return 1
    report(result)

    async def main() -> None:
        await Worker(settings).serve(result)

    # The config and the modules loaded so far live as long as the worker: move them out of the
    # collector's sight, and collect young objects less often (the data plane makes no cycles
    # per request; a collection every few hundred requests only adds latency).
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_THRESHOLD, 20, 20)

    try:
        uvloop.run(main())
    except OSError as exc:
        print(f"gw: cannot listen: {exc}", file=sys.stderr)
        return 1
    return 0
