"""TLS towards backends (BackendTLSPolicy) through a real gateway to a real TLS upstream with a
trustme CA: verified connections serve and are reused, every verification failure is a 502
(upstream-tls-failed) with one log line saying why, and new connections resume the TLS session."""

from __future__ import annotations

import json
import ssl
from collections.abc import Iterator

import pytest
import trustme
import yaml

from tests.conftest import StartGateway
from tests.support.gateway import GatewayProcess, free_port
from tests.support.upstream import Upstream

GATEWAY_API = "gateway.networking.k8s.io/v1"
NAME = "orders.internal"  # what the upstream's certificate is issued for


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def tls_upstream(ca: trustme.CA) -> Iterator[Upstream]:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(NAME, "*.wild.internal").configure_cert(ctx)
    up = Upstream("tls-up", tls=ctx).start()
    yield up
    up.stop()


def config(port: int, upstream_port: int, ca: trustme.CA) -> str:
    """One route per case (its path names it), each to its own Backend (all the same TLS upstream)
    under its own BackendTLSPolicy; /plain goes to a Backend without one."""
    other_ca = trustme.CA()
    cases: dict[str, dict[str, object]] = {
        "ok": {"hostname": NAME, "caCertificateRefs": [{"group": "", "kind": "ConfigMap", "name": "ca"}]},
        "wrong-ca": {"hostname": NAME, "caCertificateRefs": [{"group": "", "kind": "ConfigMap", "name": "other-ca"}]},
        "wrong-name": {"hostname": "billing.internal",
                       "caCertificateRefs": [{"group": "", "kind": "ConfigMap", "name": "ca"}]},
        "san-match": {"hostname": "sni-only.internal", "subjectAltNames": [
                          {"type": "Hostname", "hostname": "nothing.internal"},
                          {"type": "Hostname", "hostname": "shop.wild.internal"}],
                      "caCertificateRefs": [{"group": "", "kind": "ConfigMap", "name": "ca"}]},
        "san-mismatch": {"hostname": NAME, "subjectAltNames": [{"type": "Hostname", "hostname": "billing.internal"}],
                         "caCertificateRefs": [{"group": "", "kind": "ConfigMap", "name": "ca"}]},
        "system": {"hostname": NAME, "wellKnownCACertificates": "System"},
        "no-ca": {"hostname": NAME, "caCertificateRefs": [{"group": "", "kind": "ConfigMap", "name": "missing"}]},
    }  # fmt: skip
    docs: list[dict[str, object]] = [
        {"apiVersion": GATEWAY_API, "kind": "GatewayClass", "metadata": {"name": "gw"},
         "spec": {"controllerName": "gw.dev/gateway-controller"}},
        {"apiVersion": GATEWAY_API, "kind": "Gateway", "metadata": {"name": "edge", "namespace": "default"},
         "spec": {"gatewayClassName": "gw", "listeners": [{"name": "http", "port": port, "protocol": "HTTP"}]}},
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "ca", "namespace": "default"},
         "data": {"ca.crt": ca.cert_pem.bytes().decode()}},
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "other-ca", "namespace": "default"},
         "data": {"ca.crt": other_ca.cert_pem.bytes().decode()}},
    ]  # fmt: skip
    rules = []
    for name in [*cases, "plain"]:
        docs.append(
            {"apiVersion": "gw.dev/v1alpha1", "kind": "Backend", "metadata": {"name": name, "namespace": "default"},
             "spec": {"endpoints": [{"address": "127.0.0.1", "port": upstream_port}]}}
        )  # fmt: skip
        rules.append(
            {"matches": [{"path": {"type": "PathPrefix", "value": f"/{name}"}}],
             "backendRefs": [{"group": "gw.dev", "kind": "Backend", "name": name}]}
        )  # fmt: skip
    for name, validation in cases.items():
        docs.append(
            {"apiVersion": GATEWAY_API, "kind": "BackendTLSPolicy", "metadata": {"name": name, "namespace": "default"},
             "spec": {"targetRefs": [{"group": "gw.dev", "kind": "Backend", "name": name}], "validation": validation}}
        )  # fmt: skip
    docs.append(
        {"apiVersion": GATEWAY_API, "kind": "HTTPRoute", "metadata": {"name": "all", "namespace": "default"},
         "spec": {"parentRefs": [{"name": "edge"}], "rules": rules}}
    )  # fmt: skip
    return yaml.safe_dump_all(docs)


@pytest.fixture(scope="module")
def gateway(ca: trustme.CA, tls_upstream: Upstream, module_start_gateway: StartGateway) -> GatewayProcess:
    port = free_port()
    gw = module_start_gateway({}, [], yaml_text=config(port, tls_upstream.port, ca))
    gw.port = port
    return gw


def seen(upstream: Upstream, prefix: str) -> list:
    return [s for s in upstream.seen if s.target.startswith(prefix)]


def test_a_verified_backend_is_reached_over_tls(gateway: GatewayProcess, tls_upstream: Upstream) -> None:
    resp = gateway.connect().request("GET", "/ok/1", headers={"Host": "a.test"})
    assert resp.status == 200
    (request,) = seen(tls_upstream, "/ok/1")
    assert request.tls in ("TLSv1.2", "TLSv1.3")


def test_a_backend_without_a_policy_is_still_plain_http(gateway: GatewayProcess, tls_upstream: Upstream) -> None:
    before = tls_upstream.connections
    resp = gateway.connect().request("GET", "/plain", headers={"Host": "a.test"})
    assert resp.status == 502  # plain HTTP against a TLS server: no response, not a TLS connection
    assert json.loads(resp.body)["type"] == "urn:gw:problem:upstream-protocol-error"
    assert tls_upstream.connections >= before


def test_keep_alive_connections_are_reused_over_tls(gateway: GatewayProcess, tls_upstream: Upstream) -> None:
    client = gateway.connect()
    for i in range(5):
        assert client.request("GET", f"/ok/keep/{i}", headers={"Host": "a.test"}).status == 200
    requests = seen(tls_upstream, "/ok/keep/")
    assert len(requests) == 5 and len({r.connection for r in requests}) == 1


@pytest.mark.parametrize(
    ("path", "why"),
    [
        ("/wrong-ca", "certificate verify failed: unable to get local issuer certificate"),
        ("/wrong-name", "Hostname mismatch, certificate is not valid for 'billing.internal'"),
        ("/san-mismatch", "certificate subjectAltNames (DNS:orders.internal, DNS:*.wild.internal) match none of "
                          "the policy's (DNS:billing.internal)"),
        ("/system", "certificate verify failed"),  # a private CA is not in the system's store
        ("/no-ca", "no valid CA certificate: caCertificateRefs[0] ConfigMap default/missing not found"),
    ],
)  # fmt: skip
def test_a_backend_that_cannot_be_verified_is_a_502_and_the_log_says_why(
    gateway: GatewayProcess, tls_upstream: Upstream, path: str, why: str
) -> None:
    after = len(gateway.log)
    resp = gateway.connect().request("GET", path, headers={"Host": "a.test"})
    assert resp.status == 502
    problem = json.loads(resp.body)
    assert problem["type"] == "urn:gw:problem:upstream-tls-failed" and why in problem["detail"]
    policy = path.strip("/")
    line = gateway.wait_for_log("gw[worker", after=after)
    assert f"failed (BackendTLSPolicy default/{policy}): " in line and why in line
    assert seen(tls_upstream, path) == []  # nothing was sent over an unverified connection


def test_a_failure_is_logged_once_until_it_changes(gateway: GatewayProcess) -> None:
    client = gateway.connect()
    assert client.request("GET", "/wrong-ca/a", headers={"Host": "a.test"}).status == 502
    after = len(gateway.log)
    for i in range(3):
        assert client.request("GET", f"/wrong-ca/{i}", headers={"Host": "a.test"}).status == 502
    assert client.request("GET", "/ok/after", headers={"Host": "a.test"}).status == 200  # the log is caught up
    assert [line for line in gateway.log[after:] if "wrong-ca" in line] == []


def test_one_matching_subject_alt_name_is_enough_and_the_hostname_is_not_checked(
    gateway: GatewayProcess, tls_upstream: Upstream
) -> None:
    # The policy's hostname (sni-only.internal) is in no SAN of the certificate: with subjectAltNames
    # it is the SNI only; shop.wild.internal matches the certificate's *.wild.internal.
    resp = gateway.connect().request("GET", "/san-match", headers={"Host": "a.test"})
    assert resp.status == 200
    assert seen(tls_upstream, "/san-match")[0].tls is not None


def test_new_connections_resume_the_tls_session(
    ca: trustme.CA, tls_upstream: Upstream, start_gateway: StartGateway
) -> None:
    port = free_port()
    gw = start_gateway({}, [], env={"GW_UPSTREAM_MAX_REQUESTS": "1"}, yaml_text=config(port, tls_upstream.port, ca))
    gw.port = port
    client = gw.connect()
    for i in range(3):  # one request per upstream connection: three handshakes
        assert client.request("GET", f"/ok/resume/{i}", headers={"Host": "a.test"}).status == 200
    requests = seen(tls_upstream, "/ok/resume/")
    assert len({r.connection for r in requests}) == 3
    assert [r.tls_resumed for r in requests] == [False, True, True]


# -- the Gateway's client certificate (spec.tls.backend.clientCertificateRef): mTLS to backends ---


@pytest.fixture(scope="module")
def mtls_upstream(ca: trustme.CA) -> Iterator[Upstream]:
    """A TLS upstream that requires a client certificate issued by `ca`."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(NAME).configure_cert(ctx)
    ca.configure_trust(ctx)
    ctx.verify_mode = ssl.CERT_REQUIRED
    up = Upstream("mtls-up", tls=ctx).start()
    yield up
    up.stop()


def mtls_config(port: int, upstream_port: int, ca: trustme.CA, client: trustme.LeafCert | None) -> str:
    listener = {"name": "http", "port": port, "protocol": "HTTP"}
    gateway: dict[str, object] = {"gatewayClassName": "gw", "listeners": [listener]}
    docs: list[dict[str, object]] = [
        {"apiVersion": GATEWAY_API, "kind": "GatewayClass", "metadata": {"name": "gw"},
         "spec": {"controllerName": "gw.dev/gateway-controller"}},
        {"apiVersion": GATEWAY_API, "kind": "Gateway", "metadata": {"name": "edge", "namespace": "default"},
         "spec": gateway},
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "ca", "namespace": "default"},
         "data": {"ca.crt": ca.cert_pem.bytes().decode()}},
        {"apiVersion": "gw.dev/v1alpha1", "kind": "Backend", "metadata": {"name": "mtls", "namespace": "default"},
         "spec": {"endpoints": [{"address": "127.0.0.1", "port": upstream_port}]}},
        {"apiVersion": GATEWAY_API, "kind": "BackendTLSPolicy", "metadata": {"name": "mtls", "namespace": "default"},
         "spec": {"targetRefs": [{"group": "gw.dev", "kind": "Backend", "name": "mtls"}],
                  "validation": {"hostname": NAME,
                                 "caCertificateRefs": [{"group": "", "kind": "ConfigMap", "name": "ca"}]}}},
        {"apiVersion": GATEWAY_API, "kind": "HTTPRoute", "metadata": {"name": "all", "namespace": "default"},
         "spec": {"parentRefs": [{"name": "edge"}],
                  "rules": [{"backendRefs": [{"group": "gw.dev", "kind": "Backend", "name": "mtls"}]}]}},
    ]  # fmt: skip
    if client is not None:
        gateway["tls"] = {"backend": {"clientCertificateRef": {"name": "gw-client"}}}
        docs.append(
            {"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
             "metadata": {"name": "gw-client", "namespace": "default"},
             "stringData": {"tls.crt": b"".join(b.bytes() for b in client.cert_chain_pems).decode(),
                            "tls.key": client.private_key_pem.bytes().decode()}}
        )  # fmt: skip
    return yaml.safe_dump_all(docs)


def test_the_gateway_presents_its_client_certificate_to_tls_backends(
    ca: trustme.CA, mtls_upstream: Upstream, start_gateway: StartGateway
) -> None:
    port = free_port()
    client = ca.issue_cert("gw-client.internal")
    gw = start_gateway({}, [], yaml_text=mtls_config(port, mtls_upstream.port, ca, client))
    gw.port = port
    assert gw.connect().request("GET", "/mtls/with", headers={"Host": "a.test"}).status == 200
    assert seen(mtls_upstream, "/mtls/with")[0].tls is not None


def test_without_a_client_certificate_a_backend_that_requires_one_is_a_502(
    ca: trustme.CA, mtls_upstream: Upstream, start_gateway: StartGateway
) -> None:
    port = free_port()
    gw = start_gateway({}, [], yaml_text=mtls_config(port, mtls_upstream.port, ca, None))
    gw.port = port
    assert gw.connect().request("GET", "/mtls/without", headers={"Host": "a.test"}).status == 502
    assert seen(mtls_upstream, "/mtls/without") == []
