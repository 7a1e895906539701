"""Hypothesis feeds one gateway malformed and mutated requests; no input crashes it or gets
anything but a well-formed answer, and the worker keeps serving normal requests throughout.

Each input is classified by a reference HTTP/1.1 parser (httptools, without gw's own checks, any
HTTP/x.y version let through as gw lets it through, to serve 1.x as 1.1 or answer 505):
- malformed before any complete request → exactly one 4xx (or 501) answer, then the close;
- holding complete requests → well-formed answers, 2xx from the upstream or 4xx/501/505 from gw;
- a mere prefix of a request → at most a 4xx (the client's half-close ends the wait), and
  nothing at all for empty input.
The client half-closes after its bytes, so incomplete input costs no timeout.
"""

from __future__ import annotations

import socket

import pytest
from httptools import HttpParserError, HttpParserUpgrade, HttpRequestParser
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import StartGateway
from tests.support.gateway import GatewayProcess, Response, http_request, parse_responses, wire
from tests.support.upstream import Upstream

FUZZ = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    print_blob=True,
)
TEMPLATES = [
    b"GET /fuzz?a=1 HTTP/1.1\r\nHost: example.test\r\nUser-Agent: fuzz\r\nAccept: */*\r\n\r\n",
    b"POST /fuzz HTTP/1.1\r\nHost: example.test\r\nContent-Length: 5\r\n\r\nhello",
    b"POST /fuzz HTTP/1.1\r\nHost: example.test\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    b"GET /fuzz HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
    b"GET /fuzz HTTP/1.1\r\nHost: example.test\r\n\r\nGET /fuzz?second HTTP/1.1\r\nHost: example.test\r\n\r\n",
]
# Bytes that matter to HTTP/1.1 framing, for mutations to insert.
TRICKS = [
    b"\r\n",
    b"\n",
    b"\r",
    b"\x00",
    b" ",
    b"\t",
    b":",
    b",",
    b";",
    b"0",
    b"f",
    b"\x7f",
    b"\xff",
    b"chunked",
    b"Content-Length: 3\r\n",
    b"Transfer-Encoding: chunked\r\n",
    b"Host: other.test\r\n",
]
HEAD_CHUNKED = b"POST /fuzz HTTP/1.1\r\nHost: example.test\r\nTransfer-Encoding: chunked\r\n\r\n"


@pytest.fixture(scope="module")
def gw(module_upstream: Upstream, module_start_gateway: StartGateway) -> GatewayProcess:
    """One gateway for the module, with short timeouts so a request left incomplete is over fast."""
    return module_start_gateway(
        {"up": [("127.0.0.1", module_upstream.port)]},
        [{"name": "all", "rules": [{"backendRefs": [{"backend": "up"}]}]}],
        env={
            "GW_HEADER_TIMEOUT": "500ms",
            "GW_BODY_TIMEOUT": "500ms",
            "GW_KEEPALIVE_TIMEOUT": "500ms",
            "GW_ACCESS_LOG": "off",
        },
    )


# -- strategies ------------------------------------------------------------------------------------


@st.composite
def mutated_requests(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(TEMPLATES)))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "insert", "delete", "duplicate"]))
        i = draw(st.integers(0, len(data) - 1)) if data else 0
        if op == "flip" and data:
            data[i] = draw(st.integers(0, 255))
        elif op == "insert":
            data[i:i] = draw(st.one_of(st.sampled_from(TRICKS), st.binary(min_size=1, max_size=4)))
        elif op == "delete":
            del data[i : i + draw(st.integers(1, 4))]
        else:
            data[i:i] = data[i : i + draw(st.integers(1, 8))]
    return bytes(data)


@st.composite
def random_fields(draw: st.DrawFn) -> bytes:
    token = st.text(
        alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_!#$%&'*+.^`|~", min_size=1
    )
    fields = []
    for _ in range(draw(st.integers(1, 4))):
        name = draw(st.one_of(token.map(str.encode), st.binary(max_size=16)))
        value = draw(st.binary(max_size=32))
        fields.append(name + b":" + draw(st.sampled_from([b" ", b"", b"\t", b"  "])) + value + b"\r\n")
    return b"GET /fuzz HTTP/1.1\r\nHost: example.test\r\n" + b"".join(fields) + b"\r\n"


@st.composite
def chunk_framings(draw: st.DrawFn) -> bytes:
    eol = st.sampled_from([b"\r\n", b"\r\n", b"\r\n", b"\n", b"\r", b""])
    parts = []
    for _ in range(draw(st.integers(0, 4))):
        data = draw(st.binary(max_size=24))
        how = draw(st.sampled_from(["exact", "exact", "upper", "padded", "delta", "junk", "huge"]))
        if how == "exact":
            size = b"%x" % len(data)
        elif how == "upper":
            size = b"%X" % len(data)
        elif how == "padded":
            size = b"000%x" % len(data)
        elif how == "delta":
            size = b"%x" % max(0, len(data) + draw(st.integers(-3, 3)))
        elif how == "junk":
            size = draw(st.text(alphabet='0123456789abcdefxX-+ ;=\t"', max_size=6)).encode()
        else:
            size = b"%x" % draw(st.integers(2**60, 2**72))
        ext = draw(st.sampled_from([b"", b"", b";a=b", b"; a", b';q="x;y"', b";\x00"]))
        parts.append(size + ext + draw(eol) + data + draw(eol))
    # A body cut short is answered 408 only when the body timeout fires: kept, but rare.
    last = draw(
        st.sampled_from([b"0\r\n\r\n", b"0\r\n\r\n", b"0\r\nX-Trailer: 1\r\n\r\n", b"0\n\n", b"00\r\n\r\n", b"0\r\n"])
    )
    return HEAD_CHUNKED + b"".join(parts) + last


# -- the oracle and the property -------------------------------------------------------------------


class _Count:
    def __init__(self) -> None:
        self.messages = 0

    def on_message_complete(self) -> None:
        self.messages += 1


def classify(data: bytes) -> tuple[bool, int]:
    """(malformed, complete requests) as a plain HTTP/1.1 parser reads `data`."""
    count = _Count()
    parser = HttpRequestParser(count)
    parser.set_dangerous_leniencies(lenient_version=True)
    try:
        parser.feed_data(data)
    except HttpParserUpgrade:
        return False, max(count.messages, 1)
    except HttpParserError:
        return True, count.messages
    return False, count.messages


def exchange(gw: GatewayProcess, data: bytes) -> list[Response]:
    """Send `data`, half-close, and read every answer until the gateway closes."""
    with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as sock:
        try:
            if data:
                sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the gateway already answered and closed; its answer is still readable
        received = []
        while True:
            try:
                chunk = sock.recv(1 << 16)
            except ConnectionResetError:
                break
            if not chunk:
                break
            received.append(chunk)
    raw = b"".join(received)
    try:
        return parse_responses(raw)
    except Exception as exc:
        raise AssertionError(f"not well-formed HTTP from the gateway: {raw[:300]!r}") from exc


def is_client_error(status: int) -> bool:
    # 501 (a method, CONNECT) and 505 (a version, HTTP/2.0 in an HTTP/1 line) answer the client's input too.
    return 400 <= status < 500 or status in (501, 505)


def check(gw: GatewayProcess, data: bytes) -> None:
    malformed, complete = classify(data)
    statuses = [r.status for r in exchange(gw, data)]
    if malformed and complete == 0:
        assert len(statuses) == 1 and is_client_error(statuses[0]), statuses
    elif complete:
        assert statuses, "a complete request got no answer"
        assert all(200 <= s < 300 or is_client_error(s) for s in statuses), statuses
    else:
        assert len(statuses) <= 1 and all(is_client_error(s) for s in statuses), statuses
    # the worker still serves a normal request on a fresh connection
    c = wire(gw, timeout=10)
    c.send(http_request("GET", "/echo?still-serving"))
    assert c.read_response().status == 200
    c.close()


# -- the fuzzers -----------------------------------------------------------------------------------


@FUZZ
@given(data=st.binary(max_size=300))
def test_random_bytes(gw: GatewayProcess, data: bytes) -> None:
    check(gw, data)


@FUZZ
@given(data=mutated_requests())
def test_mutated_requests(gw: GatewayProcess, data: bytes) -> None:
    check(gw, data)


@FUZZ
@given(data=random_fields())
def test_random_header_fields(gw: GatewayProcess, data: bytes) -> None:
    check(gw, data)


@FUZZ
@given(data=chunk_framings())
def test_random_chunk_framing(gw: GatewayProcess, data: bytes) -> None:
    check(gw, data)


def test_empty_input_is_closed_without_an_answer(gw: GatewayProcess) -> None:
    assert exchange(gw, b"") == []


def test_gateway_survived_the_fuzzing(gw: GatewayProcess) -> None:
    """Runs last: the process is alive and no input reached the last-resort crash handler."""
    assert gw.alive()
    assert not [line for line in gw.log if "Traceback" in line]
