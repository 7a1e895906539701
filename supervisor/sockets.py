"""The listening sockets of every worker slot, created once here and never closed while we run.

One SO_REUSEPORT socket per (slot, listener port): the kernel spreads new connections over them.
A replaced worker hands over to its successor on the same sockets; closing one would reset the
connections waiting in its accept queue. So when TTOU removes a slot, its sockets stay open and
slot 0 adopts them; a later TTIN gives them back to the slot that comes back.
"""

from __future__ import annotations

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

    def __init__(self, host: str) -> None:
        self.host = host
        self.sockets: dict[tuple[int, int], socket.socket] = {}

    def ensure(self, slots: int, ports: list[int]) -> None:
        """Create what is missing for slots 0..slots-1 on `ports` (raises OSError if a port is taken)."""
        for slot in range(slots):
            for port in ports:
                if (slot, port) not in self.sockets:
                    self.sockets[(slot, port)] = bind_listener(self.host, port)

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
