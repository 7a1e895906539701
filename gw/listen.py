"""Listening TCP sockets as gw opens them: the data plane's (SO_REUSEPORT) and the admin port's."""

from __future__ import annotations

import socket

LISTEN_BACKLOG = 4096


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
