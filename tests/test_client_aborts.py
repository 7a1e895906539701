"""A client that leaves in the middle of its request: the exchange ends at once, nothing is held.

The upstream is a scripted server that reads the request head and then only waits for its
connection to close, so what it sees is what the gateway did with the partial request.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from dataclasses import dataclass

import psutil
import pytest

from tests.support.gateway import GatewayProcess, http_request
from tests.support.servers import Peer, ScriptedServer, launch_gateway
from tests.support.wait import wait_until


@dataclass
class Setup:
    gateway: GatewayProcess
    upstream: ScriptedServer


def hold_until_closed(peer: Peer) -> None:
    peer.wait_for_close()


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    upstream = ScriptedServer(hold_until_closed)
    gateway = launch_gateway(
        tmp_path_factory.mktemp("client-aborts"),
        {"up": [("127.0.0.1", upstream.port)]},
        [{"name": "all", "rules": [{"backendRefs": [{"backend": "up"}]}]}],
    )
    yield Setup(gateway, upstream)
    gateway.stop()
    upstream.stop()




def close_wait_sockets(gateway: GatewayProcess) -> list[object]:
    """The worker's TCP sockets whose peer closed and which the worker has not closed yet."""
    return [c for c in psutil.Process(gateway.worker_pid).net_connections("tcp") if c.status == "CLOSE_WAIT"]


def logged_statuses(gateway: GatewayProcess) -> list[int]:
    if not gateway.access_log.exists():
        return []
    return [json.loads(line)["status"] for line in gateway.access_log.read_text().splitlines() if line]


PARTIAL_BODIES = [
    pytest.param(http_request("POST", "/upload", {"Content-Length": "1000"}) + b"x" * 10, id="content-length"),
    pytest.param(http_request("POST", "/upload", {"Transfer-Encoding": "chunked"}) + b"a\r\nxxxx", id="chunked"),
]


@pytest.mark.parametrize("how", ["half-close", "close"])
@pytest.mark.parametrize("partial", PARTIAL_BODIES)
def test_client_closing_before_its_body_is_complete_ends_the_exchange_at_once(
    setup: Setup, partial: bytes, how: str
) -> None:
    """Its body can never be completed: the upstream connection, which holds a partial request, is
    dropped, the client connection closed (no CLOSE-WAIT), and the exchange logged as 499."""
    logged = logged_statuses(setup.gateway).count(499)
    setup.upstream.connected.clear()
    client = socket.create_connection(("127.0.0.1", setup.gateway.port), timeout=10)
    client.sendall(partial)
    assert setup.upstream.connected.wait(10)
    peer = setup.upstream.peers[-1]
    if how == "half-close":
        client.shutdown(socket.SHUT_WR)
        assert client.recv(1) == b""  # the gateway closed its side too
    else:
        client.close()
    assert peer.closed.wait(10), "the upstream connection was held"
    wait_until(lambda: not close_wait_sockets(setup.gateway), what="no socket left in CLOSE-WAIT")
    wait_until(lambda: logged_statuses(setup.gateway).count(499) > logged, what="a 499 in the access log")
    client.close()
