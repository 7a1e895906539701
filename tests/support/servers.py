"""Raw-socket peers for failure and tunnel tests: servers that misbehave in ways asyncio would hide.

- `BlackholeListener`: a port whose accept queue is full, so connects hang (SYNs dropped).
- `ScriptedServer`: each accepted connection reads a request head and runs a script in a thread;
  it records heads, counts bytes a script sends, and says when the peer closed.
- WebSocket frame reading for clients, and module-scoped gateway launching.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.gateway import Client, GatewayProcess, config_yaml, free_port
from tests.support.upstream import PATTERN


class BlackholeListener:
    """A listening socket with listen(0) that never accepts, its backlog filled first.

    Linux drops a SYN while the accept queue is full, so a further connect neither succeeds
    nor is refused: it hangs until the connecting side gives up (a connect timeout).
    """

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(0)
        self.port: int = self.sock.getsockname()[1]
        self.fillers: list[socket.socket] = []
        for _ in range(16):
            s = socket.socket()
            s.settimeout(0.5)
            try:
                s.connect(("127.0.0.1", self.port))
            except TimeoutError:
                s.close()
                return  # the queue is full: this SYN was dropped
            self.fillers.append(s)
        raise RuntimeError("could not fill the accept queue of a listen(0) socket")

    def close(self) -> None:
        for s in self.fillers:
            s.close()
        self.sock.close()


Script = Callable[["Peer"], None]


@dataclass
class Peer:
    """One accepted connection of a ScriptedServer, as its script sees it."""

    sock: socket.socket
    head: bytes
    rest: bytes  # bytes read after the head (start of a body or of tunnelled data)
    sent: int = 0  # body bytes written by `send_pattern`
    closed: threading.Event = field(default_factory=threading.Event)  # the other side closed

    def send_pattern(self, n: int) -> None:
        """Write n bytes of PATTERN, counting them as they are accepted by the kernel."""
        view = memoryview(PATTERN)
        while n > 0:
            piece = view[: min(n, len(PATTERN))]
            self.sock.sendall(piece)
            self.sent += len(piece)
            n -= len(piece)

    def wait_for_close(self) -> None:
        """Read (and discard) until the other side closes; then set `closed`."""
        try:
            while self.sock.recv(1 << 16):
                pass
        except OSError:
            pass
        self.closed.set()


class ScriptedServer:
    """A threaded TCP server; every connection reads one request head, then runs `script(peer)`."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.port: int = self.listener.getsockname()[1]
        self.peers: list[Peer] = []
        self.connected = threading.Event()  # set once a script started (its peer is in `peers`)
        self._stopped = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(sock,), daemon=True).start()

    def _serve(self, sock: socket.socket) -> None:
        sock.settimeout(30)
        data = b""
        try:
            while b"\r\n\r\n" not in data:
                got = sock.recv(65536)
                if not got:
                    sock.close()
                    return
                data += got
            head, _, rest = data.partition(b"\r\n\r\n")
            peer = Peer(sock, head, rest)
            self.peers.append(peer)
            self.connected.set()
            self.script(peer)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                sock.close()

    def stop(self) -> None:
        self.listener.close()
        for peer in self.peers:
            hang_up(peer)


def hang_up(peer: Peer) -> None:
    """Close this peer's connection from the server side (FIN), as if the server went away."""
    with contextlib.suppress(OSError):
        peer.sock.shutdown(socket.SHUT_RDWR)


# -- WebSocket frames, as a client reads them --------------------------------------------------


def read_exactly(client: Client, n: int) -> bytes:
    while len(client.buffer) < n:
        data = client.sock.recv(1 << 20)
        if not data:
            raise ConnectionError(f"connection closed with {len(client.buffer)} of {n} bytes read")
        client.buffer += data
    out, client.buffer = client.buffer[:n], client.buffer[n:]
    return out


def read_ws_frame(client: Client) -> tuple[int, bytes]:
    """One (unmasked, server-to-client) frame: (opcode, payload)."""
    b0, b1 = read_exactly(client, 2)
    length = b1 & 0x7F
    if length == 126:
        length = int.from_bytes(read_exactly(client, 2), "big")
    elif length == 127:
        length = int.from_bytes(read_exactly(client, 8), "big")
    mask = read_exactly(client, 4) if b1 & 0x80 else b""
    payload = read_exactly(client, length)
    if mask:
        payload = bytes(c ^ mask[i % 4] for i, c in enumerate(payload))
    return b0 & 0x0F, payload


# -- gateways that outlive one test ------------------------------------------------------------


def launch_gateway(
    directory: Path,
    backends: dict[str, list[tuple[str, int]]],
    routes: list[dict[str, object]],
    *,
    env: dict[str, str] | None = None,
    extra_yaml: str = "",
    name: str = "gateway",
) -> GatewayProcess:
    """Start a gateway like the `start_gateway` fixture does, for module-scoped fixtures.

    extra_yaml: more YAML documents (Services, EndpointSlices, …) appended to the config.
    The caller stops it.
    """
    port = free_port()
    text = config_yaml(port, backends, routes)
    if extra_yaml:
        text += "---\n" + extra_yaml
    path = directory / f"{name}.yaml"
    path.write_text(text)
    gw = GatewayProcess(
        config_path=path, port=port, admin=free_port(), env=dict(env or {}), access_log=directory / f"{name}.log"
    )
    return gw.start()
