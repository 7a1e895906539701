"""Header handling of a gateway (RFC 9110 §7.6): hop-by-hop fields stay on their hop, the
X-Forwarded-* family describes the client's hop, X-Request-ID ties client, gateway and upstream."""

from __future__ import annotations

import re
import socket
from collections.abc import Iterator

import pytest
import yaml

from gw.proxy.request import forwarded_element, forwarded_for
from tests.conftest import StartGateway
from tests.support.gateway import GatewayProcess, Wire, config_yaml, free_port, http_request, wire
from tests.support.shapes import SHAPES, send_shaped, settle
from tests.support.upstream import Seen, Upstream

# Hop-by-hop fields of RFC 9110 §7.6.1 and the legacy Proxy-* ones a gateway must not forward.
HOP_BY_HOP_REQUEST = [
    ("Keep-Alive", "timeout=5"),
    ("TE", "trailers"),
    ("Trailer", "X-Checksum"),
    ("Upgrade", "h2c"),
    ("Proxy-Authorization", "Basic c2VjcmV0"),
    ("Proxy-Connection", "keep-alive"),
]


ROUTE_ALL: list[dict[str, object]] = [{"name": "all", "rules": [{"backendRefs": [{"backend": "up"}]}]}]


@pytest.fixture(scope="module")
def gw(module_gateway: GatewayProcess) -> GatewayProcess:
    return module_gateway


@pytest.fixture
def conn(gw: GatewayProcess) -> Iterator[Wire]:
    c = wire(gw)
    yield c
    c.close()


def forward(conn: Wire, upstream: Upstream, marker: str, headers: list[tuple[str, str]]) -> Seen:
    """Send a GET through the gateway; return the request as the upstream saw it."""
    conn.send(http_request("GET", f"/echo?{marker}", headers))
    assert conn.read_response().status == 200
    (seen,) = [s for s in upstream.seen if s.target == f"/echo?{marker}"]
    return seen


# -- hop-by-hop fields -----------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "value"), HOP_BY_HOP_REQUEST, ids=[n for n, _ in HOP_BY_HOP_REQUEST])
def test_hop_by_hop_request_field_is_not_forwarded(
    conn: Wire, module_upstream: Upstream, name: str, value: str
) -> None:
    """RFC 9110 §7.6.1: a proxy removes hop-by-hop fields before forwarding."""
    seen = forward(conn, module_upstream, f"hop-{name}", [(name, value), ("X-End-To-End", "kept")])
    assert seen.header(name) is None
    assert seen.header("x-end-to-end") == "kept"


def test_connection_field_is_not_forwarded(conn: Wire, module_upstream: Upstream) -> None:
    seen = forward(conn, module_upstream, "hop-connection", [("Connection", "keep-alive")])
    assert seen.header("connection") in (None, "keep-alive")  # the gateway's own hop may say keep-alive
    assert "x-" not in (seen.header("connection") or "").lower()


def test_fields_named_in_connection_are_not_forwarded(conn: Wire, module_upstream: Upstream) -> None:
    """RFC 9110 §7.6.1: fields listed in Connection are hop-by-hop too, whatever their name."""
    seen = forward(
        conn,
        module_upstream,
        "named-in-connection",
        [
            ("Connection", "keep-alive, X-Named-A"),
            ("Connection", "x-named-b"),
            ("X-Named-A", "secret-a"),
            ("X-Named-B", "secret-b"),
            ("X-Other", "kept"),
        ],
    )
    assert seen.header("x-named-a") is None
    assert seen.header("x-named-b") is None
    assert seen.header("x-other") == "kept"


def test_hop_by_hop_response_fields_are_not_passed_to_client(conn: Wire) -> None:
    """RFC 9110 §7.6.1 applies to responses too, including fields named in the upstream's Connection."""
    conn.send(http_request("GET", "/hop-all"))
    resp = conn.read_response()
    assert resp.status == 200
    assert resp.body == b"ok"
    for name in ("Keep-Alive", "Proxy-Connection", "Proxy-Authenticate", "TE", "Trailer", "Upgrade"):
        assert resp.header(name) is None, name
    assert resp.header("x-named-a") is None
    assert resp.header("x-named-b") is None
    assert "x-named" not in (resp.header("connection") or "").lower()
    assert resp.header("x-end-to-end") == "kept"


# -- X-Forwarded-* ---------------------------------------------------------------------------------


def test_x_forwarded_for_is_the_client_address_when_absent(conn: Wire, module_upstream: Upstream) -> None:
    seen = forward(conn, module_upstream, "xff-absent", [])
    assert seen.header_list("x-forwarded-for") == ["127.0.0.1"]


def test_x_forwarded_for_appends_the_client_address(conn: Wire, module_upstream: Upstream) -> None:
    """The existing chain is kept and the address of this hop's client is appended."""
    seen = forward(conn, module_upstream, "xff-append", [("X-Forwarded-For", "203.0.113.7, 198.51.100.2")])
    assert seen.header_list("x-forwarded-for") == ["203.0.113.7, 198.51.100.2, 127.0.0.1"]


def test_x_forwarded_for_fields_are_combined_in_order(conn: Wire, module_upstream: Upstream) -> None:
    """RFC 9110 §5.3: several field lines of a list field are one comma-joined value."""
    seen = forward(
        conn, module_upstream, "xff-multi", [("X-Forwarded-For", "203.0.113.7"), ("X-Forwarded-For", "198.51.100.2")]
    )
    assert seen.header_list("x-forwarded-for") == ["203.0.113.7, 198.51.100.2, 127.0.0.1"]


def test_x_forwarded_proto_is_set_by_the_gateway(conn: Wire, module_upstream: Upstream) -> None:
    seen = forward(conn, module_upstream, "xfp", [("X-Forwarded-Proto", "https")])
    assert seen.header_list("x-forwarded-proto") == ["http"]


def test_x_forwarded_host_is_the_request_host(conn: Wire, module_upstream: Upstream) -> None:
    seen = forward(conn, module_upstream, "xfh", [("Host", "api.example.test:8443"), ("X-Forwarded-Host", "evil.test")])
    assert seen.header_list("x-forwarded-host") == ["api.example.test:8443"]


def test_x_forwarded_port_is_the_listener_port(conn: Wire, module_upstream: Upstream, gw: GatewayProcess) -> None:
    seen = forward(conn, module_upstream, "xfport", [("X-Forwarded-Port", "1")])
    assert seen.header_list("x-forwarded-port") == [str(gw.port)]


def test_the_same_head_on_two_listeners_is_forwarded_with_each_listener_s_port(
    start_gateway: StartGateway, upstream: Upstream
) -> None:
    """A worker remembers heads it analysed (gw.proxy.request.HEADS) for the listener they came on:
    the same bytes on another listener get that listener's X-Forwarded-Port and Forwarded."""
    ports = [free_port(), free_port()]
    docs = list(yaml.safe_load_all(config_yaml(ports[0], {"up": [("127.0.0.1", upstream.port)]}, ROUTE_ALL)))
    gateway_doc = next(d for d in docs if d["kind"] == "Gateway")
    gateway_doc["spec"]["listeners"].append({"name": "other", "port": ports[1], "protocol": "HTTP"})
    gw = start_gateway({}, [], yaml_text=yaml.safe_dump_all(docs))
    for n, port in enumerate([*ports, *ports]):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            conn = Wire(sock)
            for key in ("a", "b"):  # two heads: the second is not the connection's last one
                conn.send(http_request("GET", f"/echo?{n}{key}", [("X-Key", key)]))
                assert conn.read_response().status == 200
                (seen,) = [s for s in upstream.seen if s.target == f"/echo?{n}{key}"]
                assert seen.header_list("x-forwarded-port") == [str(port)], (n, key)
    assert gw.alive()


def test_host_is_passed_through_unchanged(conn: Wire, module_upstream: Upstream) -> None:
    """No rewrite configured: the upstream gets the client's Host exactly, case and port included."""
    seen = forward(conn, module_upstream, "host", [("Host", "Api.Example.TEST:8080")])
    assert seen.header_list("host") == ["Api.Example.TEST:8080"]


def test_absolute_form_target_authority_is_the_host(conn: Wire, module_upstream: Upstream) -> None:
    """RFC 9112 §3.2.2: with an absolute-form target, its authority is the request's host."""
    conn.send(b"GET http://api.example.test/echo?absolute-form HTTP/1.1\r\nHost: other.test\r\n\r\n")
    assert conn.read_response().status == 200
    (seen,) = [s for s in module_upstream.seen if s.target == "/echo?absolute-form"]
    assert seen.header_list("host") == ["api.example.test"]


# -- X-Request-ID ----------------------------------------------------------------------------------


def test_request_id_is_generated_returned_and_forwarded(conn: Wire, module_upstream: Upstream) -> None:
    """Absent: the gateway makes one, passes it upstream and returns the same value to the client."""
    conn.send(http_request("GET", "/echo?rid-generated"))
    resp = conn.read_response()
    returned = resp.header("x-request-id")
    assert returned
    (seen,) = [s for s in module_upstream.seen if s.target == "/echo?rid-generated"]
    assert seen.header_list("x-request-id") == [returned]


def test_request_ids_are_unique(conn: Wire) -> None:
    ids = set()
    for _ in range(5):
        conn.send(http_request("GET", "/echo?rid-unique"))
        ids.add(conn.read_response().header("x-request-id"))
    assert len(ids) == 5


def test_valid_request_id_is_passed_through(conn: Wire, module_upstream: Upstream) -> None:
    conn.send(http_request("GET", "/echo?rid-kept", [("X-Request-ID", "abc-123_XYZ.7")]))
    resp = conn.read_response()
    assert resp.header("x-request-id") == "abc-123_XYZ.7"
    (seen,) = [s for s in module_upstream.seen if s.target == "/echo?rid-kept"]
    assert seen.header_list("x-request-id") == ["abc-123_XYZ.7"]


@pytest.mark.parametrize(
    "bad",
    ["has space", 'quote"d', "x" * 201, "<script>", "semi;colon"],
    ids=["space", "quote", "too-long", "angle-brackets", "semicolon"],
)
def test_invalid_request_id_is_replaced(conn: Wire, module_upstream: Upstream, bad: str) -> None:
    """An id that is not a short token is not echoed into logs and responses: a fresh one replaces it."""
    marker = f"rid-bad-{len(bad)}-{re.sub(r'[^a-z]', '', bad)[:8]}"
    conn.send(http_request("GET", f"/echo?{marker}", [("X-Request-ID", bad)]))
    resp = conn.read_response()
    returned = resp.header("x-request-id")
    assert returned and returned != bad
    (seen,) = [s for s in module_upstream.seen if s.target == f"/echo?{marker}"]
    assert seen.header_list("x-request-id") == [returned]
    assert not any(bad in value for _, value in seen.headers)


# -- Host (RFC 9112 §3.2, RFC 3986 §3.2.2) ---------------------------------------------------------

INVALID_HOSTS = {
    "empty": "",
    "space": "a b",
    "path": "a/b",
    "userinfo": "a@evil.test",
    "unclosed-ipv6": "[::1",
    "not-ipv6": "[::g]",
    "ipv4-in-brackets": "[127.0.0.1]",
    "no-name-big-port": ":99999",
    "port-not-digits": "host:abc",
    "port-too-large": "host:65536",
    "two-ports": "host:80:80",
    "query": "host?x",
    "backslash": "host\\x",
    "non-ascii": "hôst.test",
}
VALID_HOSTS = {
    "name": "api.example.test",
    "name-port": "api.example.test:8080",
    "fqdn": "api.example.test.",
    "ipv4": "127.0.0.1",
    "ipv6-port": "[::1]:8080",
    "ipv4-mapped-ipv6": "[::ffff:127.0.0.1]",
    "idna": "xn--bcher-kva.example",
    "sub-delims": "a_b~c!d.example",
}


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("case", list(INVALID_HOSTS))
def test_invalid_host_is_refused(
    case: str, shape: str, conn: Wire, gw: GatewayProcess, module_upstream: Upstream
) -> None:
    """RFC 9112 §3.2: 400 for a Host that is not uri-host [":" port]. An empty Host is refused too
    (it stands for a target without authority, which an http URI never is: RFC 9110 §4.2.1)."""
    marker = f"bad-host-{case}-{shape}"
    head = f"GET /echo?{marker} HTTP/1.1\r\nHost: {INVALID_HOSTS[case]}\r\n\r\n".encode()
    resp = send_shaped(conn, shape, head, marker)
    assert resp.status == 400
    assert resp.header("content-type") == "application/problem+json"
    assert conn.closed_by_peer()
    settle(gw, marker)
    assert not [s for s in module_upstream.seen if s.target == f"/echo?{marker}"]


@pytest.mark.parametrize("shape", SHAPES)
def test_empty_host_is_refused_in_http10(shape: str, conn: Wire, gw: GatewayProcess, module_upstream: Upstream) -> None:
    """HTTP/1.0 may leave Host out (the gateway then names the endpoint); an empty one is still invalid."""
    marker = f"http10-empty-host-{shape}"
    resp = send_shaped(conn, shape, f"GET /echo?{marker} HTTP/1.0\r\nHost:\r\n\r\n".encode(), marker)
    assert resp.status == 400
    settle(gw, marker)
    assert not [s for s in module_upstream.seen if s.target == f"/echo?{marker}"]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("case", list(VALID_HOSTS))
def test_valid_host_is_forwarded_once_and_unchanged(
    case: str, shape: str, conn: Wire, module_upstream: Upstream
) -> None:
    marker = f"good-host-{case}-{shape}"
    host = VALID_HOSTS[case]
    resp = send_shaped(conn, shape, f"GET /echo?{marker} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode(), marker)
    assert resp.status == 200
    (seen,) = [s for s in module_upstream.seen if s.target == f"/echo?{marker}"]
    assert seen.header_list("host") == [host]
    assert seen.header_list("x-forwarded-host") == [host]


INVALID_AUTHORITIES = {
    "userinfo": "http://user@api.example.test",
    "empty": "http://",
    "unclosed-ipv6": "http://[::1",
    "port-too-large": "http://api.example.test:99999",
    "port-not-digits": "http://api.example.test:abc",
}


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("case", list(INVALID_AUTHORITIES))
def test_absolute_form_with_invalid_authority_is_refused(
    case: str, shape: str, conn: Wire, gw: GatewayProcess, module_upstream: Upstream
) -> None:
    """RFC 9112 §3.2.2: the target's authority is the request's host, so it is held to the same
    grammar; userinfo in a target is an error (RFC 9110 §4.2.4)."""
    marker = f"absolute-{case}-{shape}"
    head = f"GET {INVALID_AUTHORITIES[case]}/echo?{marker} HTTP/1.1\r\nHost: api.example.test\r\n\r\n"
    resp = send_shaped(conn, shape, head.encode(), marker)
    assert resp.status == 400
    assert conn.closed_by_peer()
    settle(gw, marker)
    assert not [s for s in module_upstream.seen if s.target == f"/echo?{marker}"]


# -- Connection cannot take away what the request depends on --------------------------------------


@pytest.mark.parametrize("shape", SHAPES)
def test_connection_naming_host_is_refused(
    shape: str, conn: Wire, gw: GatewayProcess, module_upstream: Upstream
) -> None:
    """Removing Host as Connection asks would send the upstream an HTTP/1.1 request without one."""
    marker = f"connection-host-{shape}"
    head = f"GET /echo?{marker} HTTP/1.1\r\nHost: example.test\r\nConnection: close, Host\r\n\r\n".encode()
    resp = send_shaped(conn, shape, head, marker)
    assert resp.status == 400
    settle(gw, marker)
    assert not [s for s in module_upstream.seen if s.target == f"/echo?{marker}"]


@pytest.mark.parametrize("shape", SHAPES)
def test_gateway_fields_survive_connection_naming_them(shape: str, conn: Wire, module_upstream: Upstream) -> None:
    """A client's fields named in Connection are dropped; the ones the gateway sets are its own."""
    marker = f"connection-gw-fields-{shape}"
    names = "X-Forwarded-For, X-Forwarded-Proto, X-Forwarded-Host, X-Forwarded-Port, X-Request-ID, Forwarded, X-Real-IP"
    head = http_request(
        "GET",
        f"/echo?{marker}",
        [("Connection", names), ("X-Forwarded-Host", "evil.test"), ("X-Real-IP", "203.0.113.9"), ("X-Other", "kept")],
    )
    resp = send_shaped(conn, shape, head, marker)
    assert resp.status == 200
    (seen,) = [s for s in module_upstream.seen if s.target == f"/echo?{marker}"]
    assert seen.header_list("x-forwarded-for")[-1].endswith("127.0.0.1")
    assert seen.header_list("x-forwarded-proto") == ["http"]
    assert seen.header_list("x-forwarded-host") == ["example.test"]
    assert len(seen.header_list("x-forwarded-port")) == 1
    assert seen.header_list("x-request-id") == [resp.header("x-request-id")]
    assert seen.header_list("forwarded") == ["for=127.0.0.1;proto=http;host=example.test"]
    assert seen.header_list("x-real-ip") == ["127.0.0.1"]
    assert seen.header("x-other") == "kept"
    assert seen.header_list("host") == ["example.test"]


# -- Forwarded (RFC 7239) and X-Real-IP ------------------------------------------------------------


@pytest.mark.parametrize("shape", SHAPES)
def test_forwarded_is_this_hops_element_when_absent(shape: str, conn: Wire, module_upstream: Upstream) -> None:
    marker = f"forwarded-absent-{shape}"
    resp = send_shaped(conn, shape, http_request("GET", f"/echo?{marker}", host="api.example.test:8443"), marker)
    assert resp.status == 200
    (seen,) = [s for s in module_upstream.seen if s.target == f"/echo?{marker}"]
    # host=: a Host with a port is not a token, so it is quoted (RFC 7239 §4).
    assert seen.header_list("forwarded") == ['for=127.0.0.1;proto=http;host="api.example.test:8443"']


@pytest.mark.parametrize("shape", SHAPES)
def test_forwarded_appends_this_hops_element(shape: str, conn: Wire, module_upstream: Upstream) -> None:
    """As X-Forwarded-For: the client's elements are kept (several fields joined in order) and
    the element of this hop is appended, so the last element is the one the gateway vouches for."""
    marker = f"forwarded-append-{shape}"
    fields = [("Forwarded", 'for="[2001:db8::7]";proto=https'), ("Forwarded", "for=198.51.100.2")]
    resp = send_shaped(conn, shape, http_request("GET", f"/echo?{marker}", fields), marker)
    assert resp.status == 200
    (seen,) = [s for s in module_upstream.seen if s.target == f"/echo?{marker}"]
    assert seen.header_list("forwarded") == [
        'for="[2001:db8::7]";proto=https, for=198.51.100.2, for=127.0.0.1;proto=http;host=example.test'
    ]


@pytest.mark.parametrize("shape", SHAPES)
def test_forwarded_with_an_open_quote_is_refused(
    shape: str, conn: Wire, gw: GatewayProcess, module_upstream: Upstream
) -> None:
    """An unterminated quoted-string would swallow the element the gateway appends."""
    marker = f"forwarded-open-quote-{shape}"
    resp = send_shaped(conn, shape, http_request("GET", f"/echo?{marker}", [("Forwarded", 'for="203.0.113.7')]), marker)
    assert resp.status == 400
    settle(gw, marker)
    assert not [s for s in module_upstream.seen if s.target == f"/echo?{marker}"]


@pytest.mark.parametrize("shape", SHAPES)
def test_x_real_ip_is_the_client_address(shape: str, conn: Wire, module_upstream: Upstream) -> None:
    """The client's own X-Real-IP is a claim anyone can make: the gateway sets the address it sees."""
    for spoofed in (False, True):
        marker = f"x-real-ip-{shape}-{spoofed}"
        fields = [("X-Real-IP", "203.0.113.9")] if spoofed else []
        resp = send_shaped(conn, shape, http_request("GET", f"/echo?{marker}", fields), marker)
        assert resp.status == 200
        (seen,) = [s for s in module_upstream.seen if s.target == f"/echo?{marker}"]
        assert seen.header_list("x-real-ip") == ["127.0.0.1"]


@pytest.mark.parametrize(
    ("client", "host", "element"),
    [
        (b"2001:db8::1", b"api.example.test", b'for="[2001:db8::1]";proto=http;host=api.example.test'),
        (b"fe80::1%eth0", b"[::1]:8080", b'for="[fe80::1]";proto=http;host="[::1]:8080"'),
        (b"unix", b"api.example.test", b"for=unknown;proto=http;host=api.example.test"),
        (b"192.0.2.7", b"", b"for=192.0.2.7;proto=http"),
    ],
    ids=["ipv6", "ipv6-zone", "unix-socket", "no-host"],
)
def test_forwarded_element_forms(client: bytes, host: bytes, element: bytes) -> None:
    """RFC 7239 §6: an IPv6 node is quoted and bracketed (a zone is no part of it); a peer without an
    address is "unknown"; HTTP/1.0 without Host has no host parameter. (The test gateway listens on
    127.0.0.1 only, so these shapes are checked on the function that builds the element.)"""
    assert forwarded_element(forwarded_for(client, b"http"), host) == element
