"""Starting, accounting and stopping the processes of a benchmark, all by PID."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")

# Every child ever started, registered before anything can fail, so cleanup never misses one.
STARTED: list[Process] = []


class BenchError(RuntimeError):
    """A set-up step failed; the message says what and where to look."""


def free_port() -> int:
    """A loopback port free right now (bound then released: the small race is acceptable here)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _stat_fields(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # comm (field 2) may contain spaces and parentheses: split after the last ')'.
    return raw[raw.rindex(")") + 2 :].split()


def descendants(root: int) -> list[int]:
    """root and every process below it, found by scanning /proc for parent PIDs."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        fields = _stat_fields(int(entry))
        if fields is not None:
            children.setdefault(int(fields[1]), []).append(int(entry))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, ()))
    return found


def cpu_ticks(root: int) -> tuple[int, int]:
    """(user, system) CPU clock ticks of root's live process tree plus its reaped children.

    Counting the root's cutime/cstime keeps a worker that exited mid-run from vanishing from the total.
    The split matters: system time is mostly loopback TCP work that no Python change can remove.
    """
    user = system = 0
    for pid in descendants(root):
        fields = _stat_fields(pid)
        if fields is None:
            continue
        # After the ')' split, utime is index 11, stime 12, cutime 13, cstime 14 (fields 14-17 of stat).
        user += int(fields[11])
        system += int(fields[12])
        if pid == root:
            user += int(fields[13])
            system += int(fields[14])
    return user, system


class Process:
    """A child started in its own session so that it and its children are stopped together."""

    def __init__(self, name: str, argv: Sequence[str], log: Path, env: dict[str, str] | None = None,
                 cwd: Path | None = None) -> None:
        self.name = name
        self.log = log
        self._logf = open(log, "ab")  # noqa: SIM115 - lives as long as the process
        try:
            self.popen = subprocess.Popen(
                list(argv), stdout=self._logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=env, cwd=cwd, start_new_session=True,
            )
        except OSError as exc:
            self._logf.close()
            raise BenchError(f"cannot start {name} ({argv[0]}): {exc}") from None
        STARTED.append(self)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, grace: float = 5.0) -> None:
        """TERM the process group this child leads (only its own descendants), KILL it after grace."""
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGTERM)
            try:
                self.popen.wait(grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.pid, signal.SIGKILL)
                self.popen.wait(grace)
        else:
            # The leader is gone; members of its group (e.g. nginx workers) may remain.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, signal.SIGKILL)
        self._logf.close()


def http_get(url: str, timeout: float = 2.0, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def wait_http(proc: Process, url: str, timeout: float, headers: dict[str, str] | None = None) -> None:
    """Poll url until it answers 200 or the process dies or timeout passes."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if not proc.alive():
            raise BenchError(
                f"{proc.name} exited with status {proc.popen.returncode} before {url} answered; "
                f"its output ({proc.log}):\n{proc.log_tail()}"
            )
        try:
            status, _ = http_get(url, headers=headers)
            if status == 200:
                return
            last = f"status {status}"
        except (OSError, ValueError) as exc:
            last = str(exc)
        time.sleep(0.1)
    raise BenchError(f"{proc.name}: {url} not ready after {timeout:.0f}s ({last}); "
                     f"its output ({proc.log}):\n{proc.log_tail()}")


def stop_all() -> None:
    """Stop every started child, newest first (proxies before the upstream they use)."""
    for proc in reversed(STARTED):
        with contextlib.suppress(Exception):
            proc.stop()
