"""The faulty upstream does what each mode says, switched through its control port."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest

from tests.support.faulty_upstream import RESET_BODY, Control, FaultyUpstream, spawn
from tests.support.wait import wait_until


@pytest.fixture
def faulty() -> Iterator[tuple[FaultyUpstream, Control]]:
    up = FaultyUpstream(["a", "b"]).start()
    yield up, Control(up.control_port)
    up.stop()


def exchange(port: int, path: str = "/", timeout: float = 10.0) -> tuple[int, dict[str, str], bytes, socket.socket]:
    """One GET on a new connection: (status, fields, body, the still open socket)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(4096)
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    fields = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    while len(body) < int(fields["content-length"]):
        chunk = sock.recv(4096)
        if not chunk:
            break
        body += chunk
    return int(lines[0].split()[1]), fields, body, sock


def test_ok_answers_200_naming_the_endpoint_and_counts_health_probes_apart(
    faulty: tuple[FaultyUpstream, Control],
) -> None:
    up, control = faulty
    status, fields, body, sock = exchange(up.port("a"))
    sock.close()
    exchange(up.port("a"), "/healthz")[3].close()
    exchange(up.port("a"), "/healthz?x=1")[3].close()
    assert (status, fields["x-endpoint"], body) == (200, "a", b"ok\n")
    counts = control.counts()
    assert (counts["a"]["requests"], counts["a"]["health"], counts["a"]["connections"]) == (1, 2, 3)
    assert len(counts["a"]["health_times"]) == 2 and counts["a"]["last_request"] > 0
    assert counts["b"]["requests"] == counts["b"]["health"] == 0


def test_status_answers_the_given_status_on_every_path_and_only_on_that_endpoint(
    faulty: tuple[FaultyUpstream, Control],
) -> None:
    up, control = faulty
    control.switch("a", "status", status=503)
    assert exchange(up.port("a"))[0] == 503
    assert exchange(up.port("a"), "/healthz")[0] == 503
    assert exchange(up.port("b"))[0] == 200
    control.switch("a", "ok")
    assert exchange(up.port("a"))[0] == 200


def test_refuse_stops_listening_resets_open_connections_and_ok_listens_again(
    faulty: tuple[FaultyUpstream, Control],
) -> None:
    up, control = faulty
    pooled = socket.create_connection(("127.0.0.1", up.port("a")))
    pooled.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
    assert pooled.recv(4096).startswith(b"HTTP/1.1 200")  # the endpoint now holds this connection
    control.switch("a", "refuse")
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", up.port("a")))
    with pytest.raises(ConnectionResetError):
        pooled.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        pooled.recv(4096)
    pooled.close()
    control.switch("a", "ok")
    assert exchange(up.port("a"))[0] == 200


def test_slow_answers_after_the_delay(faulty: tuple[FaultyUpstream, Control]) -> None:
    up, control = faulty
    control.switch("a", "slow", delay=0.3)
    started = time.monotonic()
    status, _, _, sock = exchange(up.port("a"))
    sock.close()
    assert status == 200 and time.monotonic() - started >= 0.3


def test_hang_counts_the_request_and_never_answers(faulty: tuple[FaultyUpstream, Control]) -> None:
    up, control = faulty
    control.switch("a", "hang")
    sock = socket.create_connection(("127.0.0.1", up.port("a")), timeout=10)
    sock.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
    wait_until(lambda: control.counts()["a"]["requests"] == 1, what="the request to arrive")
    sock.settimeout(0.2)
    with pytest.raises(TimeoutError):
        sock.recv(4096)
    sock.close()


def test_reset_sends_the_head_and_part_of_the_body_then_resets(faulty: tuple[FaultyUpstream, Control]) -> None:
    up, control = faulty
    control.switch("a", "reset")
    sock = socket.create_connection(("127.0.0.1", up.port("a")), timeout=10)
    sock.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
    data = b""
    with pytest.raises(ConnectionResetError):
        while chunk := sock.recv(4096):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    assert f"Content-Length: {2 * RESET_BODY}".encode() in head and len(body) == RESET_BODY


def test_runs_as_a_process_switched_by_its_control_port() -> None:
    proc, control, ports = spawn(["e1", "e2"])
    try:
        control.switch("*", "status", status=500)
        assert exchange(ports["e1"])[0] == exchange(ports["e2"])[0] == 500
        assert {n: c["requests"] for n, c in control.counts().items()} == {"e1": 1, "e2": 1}
        control.reset()
        assert control.counts()["e1"]["requests"] == 0
    finally:
        proc.terminate()
        assert proc.wait(10) == 0
