"""gw's proxy worker under gunicorn, for teams that standardise on gunicorn as their process runner.

    GW_CONFIG=gateway.yaml gunicorn -k gw.gunicorn_worker.GwWorker -w 4 -b 0.0.0.0:8080 gw.gunicorn_worker:app

gunicorn binds the sockets (`-b`, one per Gateway listener port; with GW_LISTENER_PORT_OFFSET the
shifted port) and manages the processes; each worker is the same data plane `gw run` runs. gunicorn
reloads by replacing workers on HUP (new workers read GW_CONFIG again) rather than in place, and
its admin and metrics are its own: the gw supervisor (`gw run`) stays the primary, supported
runner. `app` is a placeholder gunicorn requires on its command line; it is never called.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from typing import Any

import uvloop
from gunicorn.workers.base import Worker as GunicornWorker

from gw.config import ConfigError, load_with
from gw.settings import Settings, SettingsError
from gw.worker import Worker

WORKER_BOOT_ERROR = 3  # gunicorn's arbiter stops, rather than respawning a worker that cannot boot
HEARTBEAT = 1.0  # gunicorn kills a worker that has not notified within its --timeout


def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:  # pragma: no cover - never called
    start_response("500 Internal Server Error", [("Content-Type", "text/plain")])
    return [b"gw.gunicorn_worker:app is a placeholder: run gunicorn with -k gw.gunicorn_worker.GwWorker\n"]


class GwWorker(GunicornWorker):
    """A gunicorn worker class serving gw's data plane on gunicorn's listening sockets."""

    def load_wsgi(self) -> None:
        self.wsgi = None  # the data plane is not a WSGI app

    def init_signals(self) -> None:
        super().init_signals()
        # uvloop installs its own handlers below; Ctrl-C reaches every worker of a terminal's group.
        signal.signal(signal.SIGINT, signal.SIG_IGN)

    def run(self) -> None:
        try:
            settings = Settings.from_env()
            result = load_with(settings)
        except (SettingsError, ConfigError) as exc:
            print(f"gw: {exc}", file=sys.stderr, flush=True)
            sys.exit(WORKER_BOOT_ERROR)
        for error in result.errors:  # those objects are left out; the rest serves
            print(f"gw: config: {error}", file=sys.stderr, flush=True)
        uvloop.run(self._serve(settings, result))

    async def _serve(self, settings: Settings, result: Any) -> None:
        worker = Worker(settings, slot=self.age)
        for index, listener in enumerate(self.sockets):
            sock = listener.sock.dup()  # ours to close; gunicorn keeps its own
            worker.add_socket(sock.getsockname()[1], index, sock)
        worker.install(result, version=1)
        await worker.bind(result.config)
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        quick = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop.set)  # gunicorn's graceful stop
        loop.add_signal_handler(signal.SIGQUIT, lambda: (quick.set(), stop.set()))
        while not stop.is_set() and self.alive:
            self.notify()
            if self.ppid != os.getppid():  # the arbiter is gone
                break
            try:
                async with asyncio.timeout(HEARTBEAT):
                    await stop.wait()
            except TimeoutError:
                pass
        self.alive = False
        await worker.drain(0.0 if quick.is_set() else settings.drain_timeout)
