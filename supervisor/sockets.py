"""The listening sockets of every worker slot, created once here and never closed while we run.

One SO_REUSEPORT socket per (slot, listener port): the kernel spreads new connections over them.
A replaced worker hands over to its successor on the same sockets; closing one would reset the
connections waiting in its accept queue. So when TTOU removes a slot, its sockets stay open and
slot 0 adopts them; a later TTIN gives them back to the slot that comes back.
"""

from __future__ import annotations

import errno
import os
import socket

from gw.config.model import CompiledConfig
from gw.listen import bind_listener
from gw.settings import SettingsError


def bind_ports(config: CompiledConfig) -> list[int]:
    """The ports `config` binds; one that GW_LISTENER_PORT_OFFSET moved out of 1-65535 is refused.

    The offset is a setting, the ports come with each config version: they meet here, at every
    load, so a reload that brings such a port is rejected and a start with one exits as a bad
    setting does.
    """
    for port in config.ports:
        if not 0 < port.bind_port < 65536:
            offset = port.bind_port - port.declared_port
            raise SettingsError(
                f"GW_LISTENER_PORT_OFFSET={offset}: listener {', '.join(port.listeners)} (port "
                f"{port.declared_port}) would bind port {port.bind_port}, outside 1-65535"
            )
    return [port.bind_port for port in config.ports]


class ListenerSockets:
    """Sockets by (slot, bind port). `for_worker` says which ones a worker of a slot serves."""

    def __init__(self, host: str, *, share: bool = False) -> None:
        self.host = host
        self.share = share  # GW_SHARE_PORTS: join another process's SO_REUSEPORT group on purpose
        self.sockets: dict[tuple[int, int], socket.socket] = {}

    def ensure(self, slots: int, ports: list[int]) -> None:
        """Create what is missing for slots 0..slots-1 on `ports`.

        Raises ListenError, naming the port, when one cannot be bound or when another process
        listens on a port we do not hold yet: SO_REUSEPORT would let us join its socket group
        and split its traffic with a gateway that serves another config. Our own sockets (held
        across USR2, which replaces workers, not the supervisor) are the only ones we share.
        """
        held = set(self.ports())
        for port in ports:
            if port not in held and not self.share:
                refuse_if_listened(self.host, port)
        for slot in range(slots):
            for port in ports:
                if (slot, port) not in self.sockets:
                    try:
                        self.sockets[(slot, port)] = bind_listener(self.host, port)
                    except OSError as exc:
                        raise ListenError(f"cannot listen on {_addr(self.host, port)}: {exc.strerror}") from None

    def for_worker(self, slot: int, slots: int) -> list[tuple[int, int, socket.socket]]:
        """(bind port, socket id, socket) a worker of `slot` serves while `slots` slots run."""
        return [
            (port, owner, sock)
            for (owner, port), sock in sorted(self.sockets.items())
            if owner == slot or (slot == 0 and owner >= slots)
        ]

    def ports(self) -> list[int]:
        return sorted({port for _, port in self.sockets})

    def close(self) -> None:
        for sock in self.sockets.values():
            sock.close()
        self.sockets.clear()


class ListenError(OSError):
    """A listener port gw cannot bind, or one another process already listens on; the message names it."""


def refuse_if_listened(host: str, port: int) -> None:
    """Raise ListenError if a socket not ours listens on `port` where `host` would bind.

    A bind without SO_REUSEPORT fails on a port another socket listens on, whatever that socket's
    options, so this probe sees what the SO_REUSEPORT bind would silently join.
    """
    probe = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT is no listener
        probe.bind((host, port))
    except OSError as exc:
        if exc.errno != errno.EADDRINUSE:
            raise ListenError(f"cannot listen on {_addr(host, port)}: {exc.strerror}") from None
        owner = listener_owner(port)
        raise ListenError(
            f"port {port} is already in use{f' by {owner}' if owner else ''}: joining it (SO_REUSEPORT) would "
            "split its connections with this gw; stop it, give this gw other ports (GW_LISTENER_PORT_OFFSET), "
            "or set GW_SHARE_PORTS=true for replicas of one fleet on this host"
        ) from None
    finally:
        probe.close()


def listener_owner(port: int) -> str | None:
    """'pid P (command line)' of a process listening on TCP `port`, from /proc; None where unknown."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as lines:
                next(lines, None)
                for line in lines:
                    fields = line.split()
                    # local_address is ADDR:PORT in hex; state 0A is LISTEN; the 10th field is the inode.
                    if len(fields) > 9 and fields[3] == "0A" and int(fields[1].rpartition(":")[2], 16) == port:
                        inodes.add(f"socket:[{fields[9]}]")
        except OSError:
            continue
    if not inodes:
        return None
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if any(_fd_target(pid, fd) in inodes for fd in os.listdir(f"/proc/{pid}/fd")):
                with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
                    command = cmdline.read().replace(b"\0", b" ").decode(errors="replace").strip()
                return f"pid {pid} ({command})" if command else f"pid {pid}"
        except OSError:  # gone meanwhile, or not ours to look at
            continue
    return None


def _fd_target(pid: str, fd: str) -> str:
    try:
        return os.readlink(f"/proc/{pid}/fd/{fd}")
    except OSError:  # closed meanwhile
        return ""


def _addr(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
