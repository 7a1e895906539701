"""HTTPS listeners served by the proxy: TLS termination, certificate by SNI, 421 for a Host that
belongs to another listener than the SNI chose, X-Forwarded-Proto https (Gateway API tls.mode
Terminate), against real TLS handshakes with trustme certificates."""

from __future__ import annotations

import base64
import json
import socket
import ssl
from collections.abc import Iterator

import pytest
import trustme
import yaml

from tests.conftest import StartGateway
from tests.support.gateway import Client, GatewayProcess, free_port
from tests.support.upstream import Upstream


def _secret(name: str, leaf: trustme.LeafCert) -> dict[str, object]:
    cert = b"".join(b.bytes() for b in leaf.cert_chain_pems)
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": "default"},
        "type": "kubernetes.io/tls",
        "data": {
            "tls.crt": base64.b64encode(cert).decode(),
            "tls.key": base64.b64encode(leaf.private_key_pem.bytes()).decode(),
        },
    }


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def https(ca: trustme.CA, module_upstream: Upstream, module_start_gateway: StartGateway) -> Iterator[GatewayProcess]:
    port = free_port()
    docs = [
        {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "GatewayClass", "metadata": {"name": "gw"},
         "spec": {"controllerName": "gw.dev/gateway-controller"}},
        {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
         "metadata": {"name": "tls", "namespace": "default"},
         "spec": {"gatewayClassName": "gw", "listeners": [
             {"name": "a", "port": port, "protocol": "HTTPS", "hostname": "a.test",
              "tls": {"mode": "Terminate", "certificateRefs": [{"name": "a-cert"}]}},
             {"name": "b", "port": port, "protocol": "HTTPS", "hostname": "*.b.test",
              "tls": {"mode": "Terminate", "certificateRefs": [{"name": "b-cert"}]}},
         ]}},
        _secret("a-cert", ca.issue_cert("a.test")),
        _secret("b-cert", ca.issue_cert("*.b.test")),
        {"apiVersion": "gw.dev/v1alpha1", "kind": "Backend", "metadata": {"name": "up", "namespace": "default"},
         "spec": {"endpoints": [{"address": "127.0.0.1", "port": module_upstream.port}]}},
        {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
         "metadata": {"name": "site", "namespace": "default"},
         "spec": {"parentRefs": [{"name": "tls"}],
                  "rules": [{"backendRefs": [{"group": "gw.dev", "kind": "Backend", "name": "up"}]}]}},
    ]
    gw = module_start_gateway({}, [], yaml_text=yaml.safe_dump_all(docs))
    gw.port = port
    yield gw


def connect(gw: GatewayProcess, ca: trustme.CA, server_name: str, **options: object) -> Client:
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    ctx.set_alpn_protocols(["http/1.1"])
    for name, value in options.items():
        setattr(ctx, name, value)
    raw = socket.create_connection(("127.0.0.1", gw.port), timeout=10)
    return Client(ctx.wrap_socket(raw, server_hostname=server_name))


def test_request_over_tls_reaches_the_upstream_as_https(https: GatewayProcess, ca: trustme.CA) -> None:
    client = connect(https, ca, "a.test")
    assert client.sock.selected_alpn_protocol() == "http/1.1"  # type: ignore[attr-defined]
    resp = client.request("GET", "/hello", headers={"Host": "a.test"})
    assert resp.status == 200
    headers = {n.lower(): v for n, v in json.loads(resp.body)["headers"]}
    assert headers["x-forwarded-proto"] == "https"
    assert headers["forwarded"] == "for=127.0.0.1;proto=https;host=a.test"
    # keep-alive over TLS
    assert client.request("GET", "/again", headers={"Host": "a.test"}).status == 200


def test_the_certificate_is_chosen_by_sni(https: GatewayProcess, ca: trustme.CA) -> None:
    # The handshake verifies the presented certificate against the name: *.b.test must be served.
    client = connect(https, ca, "shop.b.test")
    cert = client.sock.getpeercert()  # type: ignore[attr-defined]
    assert ("DNS", "*.b.test") in cert["subjectAltName"]
    assert client.request("GET", "/", headers={"Host": "shop.b.test"}).status == 200


def test_host_of_another_listener_than_the_sni_is_misdirected(https: GatewayProcess, ca: trustme.CA) -> None:
    client = connect(https, ca, "a.test")
    resp = client.request("GET", "/", headers={"Host": "shop.b.test"})
    assert resp.status == 421
    assert resp.header("content-type") == "application/problem+json"
    assert json.loads(resp.body)["request_id"] == resp.header("x-request-id")


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # naming TLS 1.0/1.1 is the point
def test_tls_below_1_2_is_refused(https: GatewayProcess, ca: trustme.CA) -> None:
    with pytest.raises(ssl.SSLError):
        connect(https, ca, "a.test", minimum_version=ssl.TLSVersion.TLSv1, maximum_version=ssl.TLSVersion.TLSv1_1)


def test_plain_http_on_the_tls_port_does_not_reach_the_upstream(
    https: GatewayProcess, module_upstream: Upstream
) -> None:
    before = len(module_upstream.seen)
    raw = socket.create_connection(("127.0.0.1", https.port), timeout=10)
    raw.sendall(b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n")
    assert Client(raw).read_until_close()[:8] != b"HTTP/1.1"
    assert len(module_upstream.seen) == before
    assert https.alive()


def test_certificates_reload_with_the_config_without_new_sockets(
    ca: trustme.CA, upstream: Upstream, start_gateway: StartGateway
) -> None:
    """HUP with a new certificate: new handshakes get it, an open TLS connection keeps working."""
    import os
    import signal

    port = free_port()

    def config(leaf: trustme.LeafCert) -> str:
        docs = [
            {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "GatewayClass", "metadata": {"name": "gw"},
             "spec": {"controllerName": "gw.dev/gateway-controller"}},
            {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
             "metadata": {"name": "tls", "namespace": "default"},
             "spec": {"gatewayClassName": "gw", "listeners": [
                 {"name": "a", "port": port, "protocol": "HTTPS", "hostname": "a.test",
                  "tls": {"certificateRefs": [{"name": "a-cert"}]}}]}},
            _secret("a-cert", leaf),
            {"apiVersion": "gw.dev/v1alpha1", "kind": "Backend", "metadata": {"name": "up", "namespace": "default"},
             "spec": {"endpoints": [{"address": "127.0.0.1", "port": upstream.port}]}},
            {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
             "metadata": {"name": "site", "namespace": "default"},
             "spec": {"parentRefs": [{"name": "tls"}],
                      "rules": [{"backendRefs": [{"group": "gw.dev", "kind": "Backend", "name": "up"}]}]}},
        ]
        return yaml.safe_dump_all(docs)

    first, second = ca.issue_cert("a.test"), ca.issue_cert("a.test")
    gw = start_gateway({}, [], yaml_text=config(first))
    gw.port = port
    old = connect(gw, ca, "a.test")
    serial = old.sock.getpeercert()["serialNumber"]  # type: ignore[attr-defined]
    assert old.request("GET", "/", headers={"Host": "a.test"}).status == 200

    gw.config_path.write_text(config(second))
    mark = len(gw.log)
    os.kill(gw.pid, signal.SIGHUP)
    gw.wait_for_log("gw: config reloaded", after=mark)

    fresh = connect(gw, ca, "a.test")
    assert fresh.sock.getpeercert()["serialNumber"] != serial  # type: ignore[attr-defined]
    assert fresh.request("GET", "/", headers={"Host": "a.test"}).status == 200
    assert old.request("GET", "/", headers={"Host": "a.test"}).status == 200
