"""The two shapes a request head reaches the gateway in, since it parses them on two code paths.

"alone": the head is the whole of one write, so (on loopback) the gateway reads exactly one head
and takes its fast path (on_raw_headers_complete, analyze_raw). "pipelined": the head follows
another request in the same write, so the gateway's full parser reads it (on_headers_complete,
prepare). A test of head handling runs in both.
"""

from __future__ import annotations

from tests.support.gateway import GatewayProcess, Response, Wire, http_request, wire

SHAPES = ("alone", "pipelined")


def send_shaped(conn: Wire, shape: str, data: bytes, marker: str) -> Response:
    """Send `data` (a head, and anything meant to follow it in the same write) in `shape`; return
    the response to it. The request ahead of a pipelined one is answered and checked here."""
    if shape == "alone":
        conn.send(data)
    else:
        conn.send(http_request("GET", f"/echo?ahead-of-{marker}") + data)
        ahead = conn.read_response()
        assert ahead.status == 200, ahead
    return conn.read_response()


def settle(gateway: GatewayProcess, marker: str) -> None:
    """A request on a fresh connection, answered after anything an earlier attempt sent upstream."""
    check = wire(gateway, timeout=5)
    check.send(http_request("GET", f"/echo?after-{marker}"))
    assert check.read_response().status == 200
    check.close()
