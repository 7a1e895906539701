"""HTTPRoute RequestMirror (GEP-3171): copies of requests go to mirror backends, their answers are
dropped, and nothing a mirror does reaches the client. Real gateway, real upstreams."""

from __future__ import annotations

import hashlib
import json
import socket
import struct
import time
from collections.abc import Callable, Iterator

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import StartGateway
from tests.support.gateway import GatewayProcess, free_port
from tests.support.servers import Peer, ScriptedServer
from tests.support.upstream import Seen, Upstream

UP = {"backend": "up"}


def mirror_to(backend: str, **sampling: object) -> dict[str, object]:
    ref = {"group": "gw.dev", "kind": "Backend", "name": backend}
    return {"type": "RequestMirror", "requestMirror": {"backendRef": ref, **sampling}}


def prefix(path: str) -> list[dict[str, object]]:
    return [{"path": {"type": "PathPrefix", "value": path}}]


def reset(peer: Peer) -> None:
    """Answer the request with a TCP reset."""
    peer.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    peer.sock.close()


def stall(peer: Peer) -> None:
    """Read nothing more and never answer: the sender's buffers fill up."""
    peer.closed.wait(60)


class Mirrors:
    """The mirror backends of the module's gateway."""

    def __init__(self) -> None:
        self.shadow = Upstream("shadow").start()
        self.shadow2 = Upstream("shadow2").start()
        self.hanging = ScriptedServer(lambda peer: peer.wait_for_close())
        self.resetting = ScriptedServer(reset)
        self.stalled = ScriptedServer(stall)
        self.refused = free_port()

    def stop(self) -> None:
        for server in (self.hanging, self.resetting, self.stalled):
            server.stop()
        self.shadow.stop()
        self.shadow2.stop()


@pytest.fixture(scope="module")
def mirrors() -> Iterator[Mirrors]:
    m = Mirrors()
    yield m
    m.stop()


@pytest.fixture(scope="module")
def gw(module_upstream: Upstream, mirrors: Mirrors, module_start_gateway: StartGateway) -> GatewayProcess:
    def rule(path: str, *filters: dict[str, object], **extra: object) -> dict[str, object]:
        return {"matches": prefix(path), "filters": list(filters), "backendRefs": [UP], **extra}

    rules = [
        rule("/mirrored", mirror_to("shadow")),
        rule(
            "/rewritten",
            {"type": "RequestHeaderModifier", "requestHeaderModifier": {"set": [{"name": "X-Set", "value": "gw"}]}},
            {"type": "URLRewrite", "urlRewrite": {"path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/n"}}},
            mirror_to("shadow"),
        ),
        rule("/two", mirror_to("shadow"), mirror_to("shadow2")),
        rule("/unsampled", mirror_to("shadow", percent=0)),
        rule("/half", mirror_to("shadow", fraction={"numerator": 1, "denominator": 2})),
        rule("/refused", mirror_to("refused")),
        rule("/hanging", mirror_to("hanging"), timeouts={"backendRequest": "500ms"}),
        rule("/resetting", mirror_to("resetting")),
        rule("/stalled", mirror_to("stalled")),
        {
            "matches": prefix("/per-backend"),
            "backendRefs": [{"group": "gw.dev", "kind": "Backend", "name": "up", "filters": [mirror_to("shadow2")]}],
        },
        {"backendRefs": [UP]},
    ]
    backends = {
        "up": [("127.0.0.1", module_upstream.port)],
        "shadow": [("127.0.0.1", mirrors.shadow.port)],
        "shadow2": [("127.0.0.1", mirrors.shadow2.port)],
        "refused": [("127.0.0.1", mirrors.refused)],
        "hanging": [("127.0.0.1", mirrors.hanging.port)],
        "resetting": [("127.0.0.1", mirrors.resetting.port)],
        "stalled": [("127.0.0.1", mirrors.stalled.port)],
    }
    return module_start_gateway(backends, [{"name": "mirroring", "rules": rules}])


def metric(gateway: GatewayProcess, name: str, **labels: str) -> float:
    text = httpx.get(f"http://127.0.0.1:{gateway.admin}/metrics", timeout=10).text
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


def eventually(condition: Callable[[], object], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.01)


def settled(gateway: GatewayProcess) -> None:
    """Wait until no mirror copy is in flight: every one sent has been answered or abandoned."""
    eventually(lambda: metric(gateway, "gw_mirror_requests_in_flight") == 0)


def seen_at(upstream: Upstream, target: str) -> list[Seen]:
    """Requests the upstream received for `target`, once their bodies were read."""
    return [s for s in list(upstream.seen) if s.target == target and s.body_sha256]


def mirrored(upstream: Upstream, target: str) -> Seen:
    eventually(lambda: seen_at(upstream, target))
    (seen,) = seen_at(upstream, target)
    return seen


def test_the_mirror_receives_method_target_headers_and_body(gw: GatewayProcess, mirrors: Mirrors) -> None:
    body = b"mirrored body " * 1000
    resp = gw.connect().request("PUT", "/mirrored/a?b=c", headers={"X-Client": "yes"}, body=body)
    copy = mirrored(mirrors.shadow, "/mirrored/a?b=c")
    assert copy.method == "PUT"
    assert copy.header("x-client") == "yes"
    assert copy.header("host") == "example.test"  # no "-shadow" suffix: see gw/proxy/mirror.py
    assert copy.header("x-request-id") == resp.header("x-request-id")
    assert copy.body_bytes == len(body)
    assert copy.body_sha256 == hashlib.sha256(body).hexdigest()


def test_the_client_gets_the_primary_backends_answer(gw: GatewayProcess, mirrors: Mirrors) -> None:
    resp = gw.connect().request("GET", "/mirrored/who")
    assert resp.status == 200
    assert json.loads(resp.body)["upstream"] == "up"
    mirrored(mirrors.shadow, "/mirrored/who")


def test_a_chunked_body_is_mirrored_whole(gw: GatewayProcess, mirrors: Mirrors) -> None:
    client = gw.connect()
    client.send(
        b"POST /mirrored/chunked HTTP/1.1\r\nHost: example.test\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n"
    )
    client.send(b"6\r\n world\r\n0\r\n\r\n")
    assert client.read_response().status == 200
    copy = mirrored(mirrors.shadow, "/mirrored/chunked")
    assert copy.body_sha256 == hashlib.sha256(b"hello world").hexdigest()


def test_the_mirror_gets_the_request_as_sent_upstream(gw: GatewayProcess, mirrors: Mirrors) -> None:
    resp = gw.connect().request("GET", "/rewritten/page", headers={"X-Set": "client"})
    assert json.loads(resp.body)["target"] == "/n/page"
    copy = mirrored(mirrors.shadow, "/n/page")
    assert copy.header("x-set") == "gw"


def test_the_mirrors_connection_is_reused(gw: GatewayProcess, mirrors: Mirrors) -> None:
    client = gw.connect()
    client.request("GET", "/mirrored/reuse-1")
    first = mirrored(mirrors.shadow, "/mirrored/reuse-1")
    settled(gw)
    client.request("GET", "/mirrored/reuse-2")
    second = mirrored(mirrors.shadow, "/mirrored/reuse-2")
    assert second.connection == first.connection and second.nth > first.nth


def test_every_mirror_of_a_rule_receives_a_copy(gw: GatewayProcess, mirrors: Mirrors) -> None:
    assert gw.connect().request("POST", "/two/x", body=b"both").status == 200
    for shadow in (mirrors.shadow, mirrors.shadow2):
        assert mirrored(shadow, "/two/x").body_sha256 == hashlib.sha256(b"both").hexdigest()


def test_a_mirror_on_a_backend_ref_copies_requests_sent_to_that_backend(gw: GatewayProcess, mirrors: Mirrors) -> None:
    resp = gw.connect().request("GET", "/per-backend/x")
    assert json.loads(resp.body)["upstream"] == "up"
    assert mirrored(mirrors.shadow2, "/per-backend/x").method == "GET"


def test_percent_zero_mirrors_nothing(gw: GatewayProcess, mirrors: Mirrors) -> None:
    client = gw.connect()
    for _ in range(20):
        assert client.request("GET", "/unsampled/x").status == 200
    settled(gw)
    assert not [s for s in mirrors.shadow.seen if s.target.startswith("/unsampled")]


def test_a_fraction_of_one_half_mirrors_about_half(gw: GatewayProcess, mirrors: Mirrors) -> None:
    client = gw.connect()
    n = 200
    for _ in range(n):
        assert client.request("GET", "/half/x").status == 200
    settled(gw)
    copies = len(seen_at(mirrors.shadow, "/half/x"))
    # Binomial(200, 1/2): sd ≈ 7; ±40 is more than 5.5 sd, a false failure about once in 10⁸ runs.
    assert n / 2 - 40 <= copies <= n / 2 + 40


def primary_unaffected(gw: GatewayProcess, path: str) -> None:
    """The client sees what it would see without the mirror, promptly, on a connection that lasts."""
    client = gw.connect(timeout=5)
    for i in range(3):
        started = time.monotonic()
        body = b"x" * 1000
        resp = client.request("POST", f"{path}/{i}", body=body)
        assert time.monotonic() - started < 2
        assert resp.status == 200
        echoed = json.loads(resp.body)
        assert (echoed["upstream"], echoed["target"]) == ("up", f"{path}/{i}")
        assert echoed["body_sha256"] == hashlib.sha256(body).hexdigest()


def test_a_mirror_that_refuses_connections_does_not_affect_the_client(gw: GatewayProcess) -> None:
    before = metric(gw, "gw_mirror_requests_total", result="connect-failed")
    primary_unaffected(gw, "/refused")
    eventually(lambda: metric(gw, "gw_mirror_requests_total", result="connect-failed") - before == 3)


def test_a_mirror_that_never_answers_does_not_affect_the_client(gw: GatewayProcess, mirrors: Mirrors) -> None:
    before = metric(gw, "gw_mirror_requests_total", result="timeout")
    primary_unaffected(gw, "/hanging")
    # The copies are abandoned at the rule's backendRequest timeout (500ms, checked by the sweeper).
    eventually(lambda: metric(gw, "gw_mirror_requests_total", result="timeout") - before == 3)
    eventually(lambda: sum(p.closed.is_set() for p in mirrors.hanging.peers) >= 3)


def test_a_mirror_that_resets_does_not_affect_the_client(gw: GatewayProcess) -> None:
    before = metric(gw, "gw_mirror_requests_total", result="lost")
    primary_unaffected(gw, "/resetting")
    eventually(lambda: metric(gw, "gw_mirror_requests_total", result="lost") - before == 3)


def test_a_mirror_that_cannot_keep_up_with_a_big_body_is_abandoned(gw: GatewayProcess) -> None:
    before = metric(gw, "gw_mirror_requests_total", result="overflow")
    body = bytes(range(256)) * (64 * 1024)  # 16 MiB: more than the kernel buffers of a stalled reader
    client = gw.connect(timeout=30)
    resp = client.request("POST", "/stalled/big", body=body)
    assert resp.status == 200
    assert json.loads(resp.body)["body_sha256"] == hashlib.sha256(body).hexdigest()
    eventually(lambda: metric(gw, "gw_mirror_requests_total", result="overflow") - before == 1)
    assert client.request("GET", "/stalled/after").status == 200


def test_pipelined_requests_are_mirrored_with_their_bodies(gw: GatewayProcess, mirrors: Mirrors) -> None:
    client = gw.connect()
    client.send(
        b"POST /mirrored/pipe-1 HTTP/1.1\r\nHost: example.test\r\nContent-Length: 3\r\n\r\none"
        b"POST /mirrored/pipe-2 HTTP/1.1\r\nHost: example.test\r\nContent-Length: 3\r\n\r\ntwo"
    )
    data = b""
    while data.count(b'"upstream": "up"') < 2:
        data += client.sock.recv(1 << 16)
    for target, body in (("/mirrored/pipe-1", b"one"), ("/mirrored/pipe-2", b"two")):
        assert mirrored(mirrors.shadow, target).body_sha256 == hashlib.sha256(body).hexdigest()


def test_a_client_that_leaves_mid_body_abandons_the_copy(gw: GatewayProcess, mirrors: Mirrors) -> None:
    before = metric(gw, "gw_mirror_requests_total", result="incomplete")
    client = gw.connect()
    client.send(b"POST /mirrored/left HTTP/1.1\r\nHost: example.test\r\nContent-Length: 1000\r\n\r\npartial")
    eventually(lambda: [s for s in mirrors.shadow.seen if s.target == "/mirrored/left"])
    client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    client.close()  # a reset: the gateway's side of the exchange ends at once
    eventually(lambda: metric(gw, "gw_mirror_requests_total", result="incomplete") - before == 1)


def test_mirrors_raised_no_internal_error(gw: GatewayProcess) -> None:
    assert metric(gw, "gw_internal_errors_total") == 0
    assert not [line for line in gw.log if "Traceback" in line]
