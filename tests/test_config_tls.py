"""HTTPS listeners: certificateRefs to kubernetes.io/tls Secrets, validation, SNI selection, real handshakes."""

from __future__ import annotations

import asyncio
import base64
import ssl
import textwrap

import pytest
import trustme

from gw.config import build_ssl_context, load_text
from gw.config.filters import ALL_FEATURES

CLASS = """
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: gw}
spec: {controllerName: gw.dev/gateway-controller}
---
apiVersion: gw.dev/v1alpha1
kind: Backend
metadata: {name: one, namespace: default}
spec: {endpoints: [{address: 127.0.0.1, port: 18081}]}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: r, namespace: default}
spec:
  parentRefs: [{name: gw}]
  rules: [{backendRefs: [{group: gw.dev, kind: Backend, name: one}]}]
"""


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def secret(name: str, cert: bytes, key: bytes, namespace: str = "default", type: str = "kubernetes.io/tls") -> str:
    return textwrap.dedent(
        f"""
        apiVersion: v1
        kind: Secret
        metadata: {{name: {name}, namespace: {namespace}}}
        type: {type}
        data:
          tls.crt: {base64.b64encode(cert).decode()}
          tls.key: {base64.b64encode(key).decode()}
        """
    )


def pems(issued: trustme.LeafCert) -> tuple[bytes, bytes]:
    return b"".join(b.bytes() for b in issued.cert_chain_pems), issued.private_key_pem.bytes()


def gateway(listeners: str) -> str:
    return (
        "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: gw, namespace: default}\n"
        "spec:\n  gatewayClassName: gw\n  listeners:\n" + textwrap.indent(textwrap.dedent(listeners).strip(), "  ")
    )


def load(*docs: str, features=ALL_FEATURES):
    return load_text(CLASS + "".join(f"\n---\n{d}" for d in docs), features=features)


def listener_conditions(result, name="https"):
    return {(c.type, c.status, c.reason) for c in result.listener_conditions[f"default/gw/{name}"]}


HTTPS_ONE = """
- name: https
  port: 8443
  protocol: HTTPS
  tls: {certificateRefs: [{name: site}]}
"""


class TestCertificateRefs:
    def test_https_listener_compiles_to_an_https_port(self, ca):
        cert, key = pems(ca.issue_cert("a.example"))
        result = load(secret("site", cert, key), gateway(HTTPS_ONE))
        assert result.errors == []
        (port,) = result.config.ports
        assert port.protocol == "HTTPS"
        assert port.tls.default.cert_pem == cert and port.tls.default.key_pem == key
        assert port.tls.default.hostnames == ("a.example",)
        assert ("ResolvedRefs", True, "ResolvedRefs") in listener_conditions(result)
        assert ("Programmed", True, "Programmed") in listener_conditions(result)

    def test_key_not_matching_the_certificate(self, ca):
        cert, _ = pems(ca.issue_cert("a.example"))
        _, other_key = pems(ca.issue_cert("b.example"))
        with pytest.raises(Exception, match="does not match"):
            load(secret("site", cert, other_key), gateway(HTTPS_ONE))

    def test_invalid_certificate_leaves_other_listeners_serving(self, ca):
        cert, _ = pems(ca.issue_cert("a.example"))
        _, other_key = pems(ca.issue_cert("b.example"))
        result = load(
            secret("site", cert, other_key),
            gateway(HTTPS_ONE + "- {name: http, port: 8080, protocol: HTTP}\n"),
        )
        (err,) = result.errors
        assert (err.obj, err.field) == ("Gateway default/gw", "spec.listeners[0].tls.certificateRefs[0]")
        assert "does not match" in err.message
        assert ("ResolvedRefs", False, "InvalidCertificateRef") in listener_conditions(result)
        assert ("Programmed", False, "Invalid") in listener_conditions(result)
        assert [p.declared_port for p in result.config.ports] == [8080]

    @pytest.mark.parametrize(
        ("doc", "problem"),
        [
            ("", "not found"),
            ("apiVersion: v1\nkind: Secret\nmetadata: {name: site}\ntype: Opaque\ndata: {a: YQ==}\n", "Opaque"),
            ("apiVersion: v1\nkind: Secret\nmetadata: {name: site}\ntype: kubernetes.io/tls\n", "lacks"),
            (
                "apiVersion: v1\nkind: Secret\nmetadata: {name: site}\ntype: kubernetes.io/tls\n"
                "data: {tls.crt: bm90IGEgY2VydA==, tls.key: bm90IGEga2V5}\n",
                "not PEM",
            ),
        ],
    )
    def test_unusable_secrets_are_invalid_certificate_refs(self, doc, problem):
        result = load(doc, gateway(HTTPS_ONE + "- {name: http, port: 8080, protocol: HTTP}\n"))
        (err,) = result.errors
        assert problem in err.message
        assert ("ResolvedRefs", False, "InvalidCertificateRef") in listener_conditions(result)

    def test_cross_namespace_secret_needs_a_reference_grant(self, ca):
        cert, key = pems(ca.issue_cert("a.example"))
        listeners = """
        - name: https
          port: 8443
          protocol: HTTPS
          tls: {certificateRefs: [{name: site, namespace: certs}]}
        - {name: http, port: 8080, protocol: HTTP}
        """
        result = load(secret("site", cert, key, namespace="certs"), gateway(listeners))
        assert ("ResolvedRefs", False, "RefNotPermitted") in listener_conditions(result)
        grant = """
apiVersion: gateway.networking.k8s.io/v1beta1
kind: ReferenceGrant
metadata: {name: gw-certs, namespace: certs}
spec:
  from: [{group: gateway.networking.k8s.io, kind: Gateway, namespace: default}]
  to: [{group: "", kind: Secret}]
"""
        result = load(secret("site", cert, key, namespace="certs"), grant, gateway(listeners))
        assert result.errors == []
        assert ("ResolvedRefs", True, "ResolvedRefs") in listener_conditions(result)

    def test_https_listener_requires_tls(self):
        result = load(gateway("- {name: https, port: 8443, protocol: HTTPS}\n- {name: http, port: 80, protocol: HTTP}"))
        assert [e.field for e in result.errors] == ["spec.listeners[0].tls"]

    def test_https_listener_must_terminate(self, ca):
        listeners = """
        - name: https
          port: 8443
          protocol: HTTPS
          tls: {mode: Passthrough, certificateRefs: [{name: site}]}
        - {name: http, port: 80, protocol: HTTP}
        """
        result = load(gateway(listeners))
        assert [e.field for e in result.errors] == ["spec.listeners[0].tls.mode"]

    def test_https_is_not_served_until_the_data_plane_terminates_tls(self, ca):
        cert, key = pems(ca.issue_cert("a.example"))
        result = load(
            secret("site", cert, key),
            gateway(HTTPS_ONE + "- {name: http, port: 8080, protocol: HTTP}\n"),
            features=frozenset(),
        )
        (err,) = result.errors
        assert err.field == "spec.listeners[0].protocol" and "not supported yet" in err.message
        assert ("Accepted", False, "UnsupportedProtocol") in listener_conditions(result)


TWO_LISTENERS = """
- name: a
  port: 8443
  protocol: HTTPS
  hostname: a.example
  tls: {certificateRefs: [{name: a}]}
- name: wild
  port: 8443
  protocol: HTTPS
  hostname: "*.b.example"
  tls: {certificateRefs: [{name: b}, {name: c}]}
"""


@pytest.fixture(scope="module")
def two_listener_port(ca):
    a = pems(ca.issue_cert("a.example"))
    b = pems(ca.issue_cert("*.b.example"))
    c = pems(ca.issue_cert("special.b.example"))
    result = load(secret("a", *a), secret("b", *b), secret("c", *c), gateway(TWO_LISTENERS))
    assert result.errors == []
    (port,) = result.config.ports
    return port, a, b, c


class TestSNISelection:
    def test_select_by_exact_and_wildcard_names(self, two_listener_port):
        port, a, b, c = two_listener_port
        tls = port.tls
        assert tls.select("a.example").cert_pem == a[0]
        assert tls.select("x.b.example").cert_pem == b[0]
        assert tls.select("special.b.example").cert_pem == c[0]
        assert tls.select(None).cert_pem == a[0]  # no catch-all listener: the first certificate
        assert tls.select("unknown.example").cert_pem == a[0]

    def test_overlapping_https_hostnames_are_reported(self, ca):
        cert, key = pems(ca.issue_cert("x.example"))
        listeners = """
        - {name: one, port: 8443, protocol: HTTPS, hostname: foo.example.com, tls: {certificateRefs: [{name: s}]}}
        - {name: two, port: 8443, protocol: HTTPS, hostname: foo.example.org, tls: {certificateRefs: [{name: s}]}}
        - {name: three, port: 8443, protocol: HTTPS, hostname: "*.example.com", tls: {certificateRefs: [{name: s}]}}
        """
        result = load(secret("s", cert, key), gateway(listeners))
        overlap = ("OverlappingTLSConfig", True, "OverlappingHostnames")
        assert overlap in listener_conditions(result, "one")
        assert overlap not in listener_conditions(result, "two")
        assert overlap in listener_conditions(result, "three")

    def test_misdirected_when_host_selects_another_listener_than_sni(self, two_listener_port):
        tls = two_listener_port[0].tls
        assert tls.misdirected("a.example", "x.b.example")
        assert not tls.misdirected("x.b.example", "y.b.example")  # same listener
        assert not tls.misdirected("a.example", "a.example")
        assert not tls.misdirected(None, "a.example")


async def handshake(ctx: ssl.SSLContext, client: ssl.SSLContext, server_name: str | None) -> ssl.SSLObject:
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=ctx)
    port = server.sockets[0].getsockname()[1]
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client, server_hostname=server_name)
        ssl_object = writer.get_extra_info("ssl_object")
        writer.close()
        return ssl_object
    finally:
        server.close()
        await server.wait_closed()


def client_context(ca: trustme.CA) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    ctx.set_alpn_protocols(["h2", "http/1.1"])
    return ctx


class TestHandshake:
    async def test_sni_picks_the_certificate_and_alpn_is_http11(self, ca, two_listener_port):
        ctx = build_ssl_context(two_listener_port[0])
        for name in ("a.example", "x.b.example", "special.b.example"):
            conn = await handshake(ctx, client_context(ca), name)  # verification checks the name
            assert conn.selected_alpn_protocol() == "http/1.1"
            assert conn.version() in ("TLSv1.2", "TLSv1.3")

    async def test_unknown_sni_gets_the_default_certificate(self, ca, two_listener_port):
        ctx = build_ssl_context(two_listener_port[0])
        client = client_context(ca)
        client.check_hostname = False
        conn = await handshake(ctx, client, "unknown.example")
        cert = conn.getpeercert()
        assert ("DNS", "a.example") in cert["subjectAltName"]

    @pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1_1 is deprecated:DeprecationWarning")
    async def test_tls_1_1_is_refused(self, ca, two_listener_port):
        ctx = build_ssl_context(two_listener_port[0])
        client = client_context(ca)
        client.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
        client.maximum_version = ssl.TLSVersion.TLSv1_1
        with pytest.raises((ssl.SSLError, ConnectionError)):
            await handshake(ctx, client, "a.example")

    def test_port_without_tls_has_no_context(self):
        from types import SimpleNamespace

        with pytest.raises(ValueError):
            build_ssl_context(SimpleNamespace(tls=None, declared_port=80))
