"""Supervisor parts on their own: the CPU count, the control channel with descriptors, a drain, /status."""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
from pathlib import Path
from typing import Any

import pytest
import uvloop

from gw.config import load_with
from gw.control import Channel, Message
from gw.listen import bind_listener
from gw.observe.metrics import Registry
from gw.settings import Settings
from gw.state import SharedState
from gw.supervisor.arbiter import Supervisor
from gw.supervisor.cpus import available_cpus, cgroup_quota
from gw.supervisor.process import EXITED, WorkerProcess
from gw.worker import Worker
from tests.support.gateway import REPO, config_yaml, free_port, runtime_dir
from tests.support.upstream import Upstream


@pytest.mark.parametrize(
    ("files", "quota"),
    [
        ({"cpu.max": "max 100000\n"}, None),
        ({"cpu.max": "150000 100000\n"}, 1.5),
        ({"cpu/cpu.cfs_quota_us": "200000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 2.0),
        ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),
        ({}, None),
    ],
)
def test_cgroup_quota_v1_and_v2(tmp_path: Path, files: dict[str, str], quota: float | None) -> None:
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert cgroup_quota(tmp_path) == quota


def test_workers_default_to_the_quota_rounded_up_within_the_affinity(tmp_path: Path) -> None:
    (tmp_path / "cpu.max").write_text("50000 100000\n")  # half a CPU still needs one worker
    assert available_cpus(tmp_path) == 1
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert available_cpus(tmp_path) == len(os.sched_getaffinity(0))


def test_the_quota_of_the_process_own_cgroup_counts_not_only_the_root(tmp_path: Path) -> None:
    """A systemd unit's CPUQuota on a cgroup v2 host sits on the unit's cgroup, not on the root."""
    unit = tmp_path / "system.slice" / "gw.service"
    unit.mkdir(parents=True)
    (unit / "cpu.max").write_text("150000 100000\n")
    (tmp_path / "cpu.max").write_text("max 100000\n")
    proc = tmp_path / "proc-self-cgroup"
    proc.write_text("0::/system.slice/gw.service\n")
    assert cgroup_quota(tmp_path, proc) == 1.5
    (tmp_path / "system.slice" / "cpu.max").write_text("100000 100000\n")  # a tighter parent wins
    assert cgroup_quota(tmp_path, proc) == 1.0
    v1 = tmp_path / "v1"
    (v1 / "cpu" / "kubepods" / "pod1").mkdir(parents=True)
    (v1 / "cpu" / "kubepods" / "pod1" / "cpu.cfs_quota_us").write_text("200000\n")
    (v1 / "cpu" / "kubepods" / "pod1" / "cpu.cfs_period_us").write_text("100000\n")
    proc.write_text("2:cpu,cpuacct:/kubepods/pod1\n0::/\n")
    assert cgroup_quota(v1, proc) == 2.0


async def test_frames_carry_their_descriptors_in_order() -> None:
    left, right = socket.socketpair()
    got: list[tuple[Message, list[int]]] = []
    arrived = asyncio.Event()

    def on_message(message: Message, fds: list[int]) -> None:
        got.append((message, fds))
        if len(got) == 4:
            arrived.set()

    sender = Channel(left, lambda m, f: None, lambda: None)
    receiver = Channel(right, on_message, lambda: None)
    listeners = [socket.socket() for _ in range(3)]
    for sock in listeners:
        sock.bind(("127.0.0.1", 0))
    big = b"x" * (3 << 20)  # larger than a socket buffer: split across many reads
    sender.send({"t": "config", "blob": big})
    sender.send({"t": "listeners", "n": 2}, [listeners[0].fileno(), listeners[1].fileno()])
    sender.send({"t": "plain"})
    sender.send({"t": "listeners", "n": 1}, [listeners[2].fileno()])
    await asyncio.wait_for(arrived.wait(), 10)
    assert [m["t"] for m, _ in got] == ["config", "listeners", "plain", "listeners"]
    assert got[0][0]["blob"] == big and got[2][1] == []
    received = [fd for _, fds in got for fd in fds]
    ports = [socket.socket(fileno=fd).getsockname()[1] for fd in received]
    assert ports == [s.getsockname()[1] for s in listeners]  # each descriptor with its own frame
    for sock in listeners:
        sock.close()
    sender.close()
    receiver.close()


async def test_a_request_gets_its_reply_and_a_closed_channel_fails_waiters() -> None:
    left, right = socket.socketpair()
    closed = asyncio.Event()
    responder: Channel

    def answer(message: Message, fds: list[int]) -> None:
        responder.reply(message, {"t": "pong", "echo": message["n"]})

    requester = Channel(left, lambda m, f: None, closed.set)
    responder = Channel(right, answer, lambda: None)
    replies = await asyncio.gather(*(requester.request({"t": "ping", "n": i}, 5) for i in range(5)))
    assert [r["echo"] for r in replies] == list(range(5))
    responder.on_message = lambda m, f: None  # stops answering
    waiting = asyncio.ensure_future(requester.request({"t": "ping", "n": 9}, 5))
    await asyncio.sleep(0)
    responder.close()
    with pytest.raises(ConnectionError):
        await waiting
    assert closed.is_set()


async def test_a_drain_answers_a_connection_opened_just_before_it(tmp_path: Path, upstream: Upstream) -> None:
    """The keep-alive race: a client that connected but has not sent yet is about to; closing its
    connection at once would fail that request. The drain gives it IDLE_GRACE from its opening."""
    port = free_port()
    path = tmp_path / "gw.yaml"
    routes = [{"name": "all", "rules": [{"backendRefs": [{"backend": "up"}]}]}]
    path.write_text(config_yaml(port, {"up": [("127.0.0.1", upstream.port)]}, routes))
    settings = Settings.from_env({"GW_CONFIG": str(path), "GW_ACCESS_LOG": "off"})
    result = load_with(settings)
    worker = Worker(settings)
    worker.add_socket(port, 0, bind_listener("127.0.0.1", port))
    worker.install(result, version=1)
    await worker.bind(result.config)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    while not worker.plane.connections:  # accepted by the worker's loop (this loop)
        await asyncio.sleep(0)
    drain = asyncio.create_task(worker.drain(5.0))
    await asyncio.sleep(0)  # the drain's first sweep runs before the client's request is sent
    assert not drain.done()
    writer.write(b"GET /echo HTTP/1.1\r\nHost: x\r\n\r\n")
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    assert head.startswith(b"HTTP/1.1 200") and b"connection: close" in head.lower()
    await asyncio.wait_for(drain, 10)
    writer.close()


def test_status_lists_a_slot_whose_restart_is_due_at_once(tmp_path: Path) -> None:
    """A first failure restarts at once: uvloop's call_later(0) returns a Handle, which has no
    when(). /status asked in that loop turn answered 500 (on the supervisor's loop: uvloop)."""

    async def status_after_a_first_exit() -> dict[str, object]:
        supervisor = Supervisor(Settings(config=str(tmp_path), workers=1))
        supervisor.serving = True
        dead = WorkerProcess(0, supervisor._worker_exited)  # a worker just reaped: SIGKILLed
        dead.state, dead.exit_code = EXITED, -9
        supervisor.workers[0] = dead
        supervisor._worker_exited(dead)
        # No worker is live, so status() awaits nothing and runs before the restart does.
        status = await supervisor.status()
        supervisor.stopping = True  # the restart itself is not this test's business
        return status

    status = uvloop.run(status_after_a_first_exit())
    (waiting,) = status["restarting"]  # type: ignore[misc]
    assert waiting == {"slot": 0, "last_exit": "signal SIGKILL", "failures_in_a_row": 1, "next_start_in_seconds": 0.0}


async def test_a_snapshot_a_worker_cannot_install_is_not_claimed(tmp_path: Path) -> None:
    """A bug in building what a snapshot needs (a phase's build) leaves the worker serving, and
    saying it serves, the snapshot it had: a later push of the same files must not be taken for
    one it already serves."""
    first, second = tmp_path / "a.yaml", tmp_path / "b.yaml"
    for path, name in ((first, "a"), (second, "b")):
        routes = [{"name": name, "rules": [{"backendRefs": [{"backend": "up"}]}]}]
        path.write_text(config_yaml(free_port(), {"up": [("127.0.0.1", 9)]}, routes))
    settings = Settings.from_env({"GW_ACCESS_LOG": "off"})
    worker = Worker(settings)
    try:
        served = load_with(settings, str(first))
        worker.install(served, 1)

        def broken(rule: Any, services: Any) -> Any:
            raise RuntimeError("a bug in a phase's build")

        worker.plane.phases = (("broken", broken),)
        with pytest.raises(RuntimeError):
            worker.install(load_with(settings, str(second)), 2)
        assert (worker.version, worker.checksum) == (1, served.config.checksum)
        assert worker.plane.config is served.config
    finally:
        worker.plane.stop()


async def test_a_worker_is_built_with_its_redis_client_guard_and_keys() -> None:
    """The policies' Redis pieces are handed to the data plane when it is built, not set on it later."""
    settings = Settings.from_env({"GW_REDIS_URL": "redis://127.0.0.1:1/0", "GW_REDIS_PREFIX": "pfx"})
    assert SharedState.from_settings(Settings.from_env({})) is None  # no Redis: policies' failure modes
    metrics = Registry()
    shared = SharedState.from_settings(settings, metrics)
    assert shared is not None and shared.keys.prefix == "pfx"
    worker = Worker(settings, metrics=metrics, shared=shared)
    limits = worker.plane.limiters
    assert (limits.redis, limits.guard, limits.keys) == (shared.redis, shared.guard, shared.keys)
    assert worker.plane.metrics is metrics and "gw_redis_breaker_open" in metrics.render().decode()
    await shared.redis.aclose()


async def test_a_hup_hashes_the_files_once(
    tmp_path: Path, upstream: Upstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A HUP reads the files into one snapshot whose checksum travels with it: read, compile,
    compare, publish and hand to the workers without hashing the files again."""
    port = free_port()
    path = tmp_path / "gw.yaml"
    backends = {"up": [("127.0.0.1", upstream.port)]}
    path.write_text(config_yaml(port, backends, [{"name": "a", "rules": [{"backendRefs": [{"backend": "up"}]}]}]))
    env = {"GW_CONFIG": str(path), "GW_WORKERS": "2", "GW_ACCESS_LOG": "off", "GW_DRAIN_TIMEOUT": "5s",
           "GW_RUNTIME_DIR": runtime_dir(), "PYTHONPATH": str(REPO)}  # fmt: skip
    for name, value in env.items():  # the workers' environment too
        monkeypatch.setenv(name, value)
    supervisor = Supervisor(Settings.from_env(), listen_host="127.0.0.1")
    await supervisor.start()
    try:
        path.write_text(config_yaml(port, backends, [{"name": "b", "rules": [{"backendRefs": [{"backend": "up"}]}]}]))
        hashes = 0
        sha256 = hashlib.sha256

        def counted(*args: Any, **kwargs: Any) -> Any:
            nonlocal hashes
            hashes += 1
            return sha256(*args, **kwargs)

        monkeypatch.setattr(hashlib, "sha256", counted)
        await supervisor.reload()
        monkeypatch.setattr(hashlib, "sha256", sha256)
        assert supervisor.version == 2
        stats = await supervisor._stats()
        assert sorted(s["version"] for s in stats.values()) == [2, 2]
        assert hashes == 1
    finally:
        await supervisor.shutdown()
        supervisor.sockets.close()
        await supervisor.publisher.stop()


def test_a_tally_is_the_same_series_as_its_counter() -> None:
    """A hot-path tally and a counter of one series add up in what a worker reports and renders, and
    the supervisor, absorbing the worker's snapshot, sees the sum."""
    worker = Registry()
    tally = worker.tally("gw_auth_decisions_total", result="authenticated", policy="default/p")
    assert worker.tally("gw_auth_decisions_total", policy="default/p", result="authenticated") is tally
    tally.n += 3
    worker.inc("gw_auth_decisions_total", policy="default/p", result="authenticated")
    line = 'gw_auth_decisions_total{policy="default/p",result="authenticated"} 4'
    assert line in worker.render().decode()
    supervisor = Registry()
    supervisor.absorb(worker.snapshot())
    supervisor.absorb(worker.snapshot())
    assert 'gw_auth_decisions_total{policy="default/p",result="authenticated"} 8' in supervisor.render().decode()
