"""Client-certificate validation on HTTPS listeners (the Gateway's spec.tls.frontend, GEP-91): the
status the spec asks for, and real handshakes through a real gateway to a real upstream, with
trustme CAs for the server and for clients (another CA for a client the gateway must not trust)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import socket
import ssl
from collections.abc import Iterator
from typing import Any

import pytest
import trustme
import yaml

from gw.config import load_text
from gw.config.filters import ALL_FEATURES
from gw.config.parse import parse_documents
from tests.conftest import StartGateway
from tests.support.gateway import Client, GatewayProcess, Response, free_port
from tests.support.upstream import Upstream
from tests.test_https_proxy import _secret

GATEWAY_API = "gateway.networking.k8s.io/v1"
HOST = "a.test"
REFUSED = "client refused in the TLS handshake"


@pytest.fixture(scope="module")
def server_ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def clients_ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def good(clients_ca: trustme.CA) -> trustme.LeafCert:
    return clients_ca.issue_cert("alice@example.test", "alice.clients.test", common_name="alice")


@pytest.fixture(scope="module")
def stranger() -> trustme.LeafCert:
    """A client certificate from a CA the gateway is not told about."""
    return trustme.CA().issue_cert("mallory@example.test", common_name="mallory")


def ca_ref(name: str, kind: str = "ConfigMap", **more: str) -> dict[str, str]:
    return {"group": "", "kind": kind, "name": name, **more}


def validation(*refs: dict[str, str], mode: str | None = None) -> dict[str, Any]:
    val: dict[str, Any] = {"caCertificateRefs": list(refs)}
    if mode is not None:
        val["mode"] = mode
    return {"validation": val}


def config_map(name: str, ca: trustme.CA, namespace: str = "default") -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": namespace},
            "data": {"ca.crt": ca.cert_pem.bytes().decode()}}  # fmt: skip


def documents(
    ports: list[int], frontend: dict[str, Any] | None, server_ca: trustme.CA, upstream_port: int, *extra: Any
) -> list[dict[str, Any]]:
    """A Gateway with one HTTPS listener per port (each named p<port>), all routed to the upstream."""
    listeners = [
        {"name": f"p{port}", "port": port, "protocol": "HTTPS", "hostname": HOST,
         "tls": {"certificateRefs": [{"name": "server-cert"}]}}
        for port in ports
    ]  # fmt: skip
    spec: dict[str, Any] = {"gatewayClassName": "gw", "listeners": listeners}
    if frontend is not None:
        spec["tls"] = {"frontend": frontend}
    return [
        {"apiVersion": GATEWAY_API, "kind": "GatewayClass", "metadata": {"name": "gw"},
         "spec": {"controllerName": "gw.dev/gateway-controller"}},
        {"apiVersion": GATEWAY_API, "kind": "Gateway", "metadata": {"name": "edge", "namespace": "default"},
         "spec": spec},
        _secret("server-cert", server_ca.issue_cert(HOST)),
        {"apiVersion": "gw.dev/v1alpha1", "kind": "Backend", "metadata": {"name": "up", "namespace": "default"},
         "spec": {"endpoints": [{"address": "127.0.0.1", "port": upstream_port}]}},
        {"apiVersion": GATEWAY_API, "kind": "HTTPRoute", "metadata": {"name": "site", "namespace": "default"},
         "spec": {"parentRefs": [{"name": "edge"}],
                  "rules": [{"backendRefs": [{"group": "gw.dev", "kind": "Backend", "name": "up"}]}]}},
        *extra,
    ]  # fmt: skip


def request(port: int, server_ca: trustme.CA, leaf: trustme.LeafCert | None) -> Response | None:
    """One GET over a fresh TLS connection presenting `leaf`; None when the gateway refuses it (in
    the handshake, or, in TLS 1.3, by closing right after the client thinks it is done)."""
    ctx = ssl.create_default_context()
    server_ca.configure_trust(ctx)
    ctx.set_alpn_protocols(["http/1.1"])
    if leaf is not None:
        leaf.configure_cert(ctx)
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        with ctx.wrap_socket(raw, server_hostname=HOST) as tls:
            return Client(tls).request("GET", "/", headers={"Host": HOST})
    except (ssl.SSLError, ConnectionError):
        return None
    finally:
        raw.close()


# -- config: parsing and status -----------------------------------------------------------------


def load(docs: list[dict[str, Any]]) -> Any:
    return load_text(yaml.safe_dump_all(docs), features=ALL_FEATURES)


def conditions(result: Any, key: str) -> set[tuple[str, bool, str]]:
    found = result.listener_conditions[key] if key.count("/") == 2 else result.conditions[key]
    return {(c.type, c.status, c.reason) for c in found}


def test_default_and_per_port_reach_the_ports_listeners(server_ca: trustme.CA, clients_ca: trustme.CA) -> None:
    frontend = {"default": validation(ca_ref("clients")),
                "perPort": [{"port": 8444, "tls": validation(ca_ref("clients"), mode="AllowInsecureFallback")},
                            {"port": 8445, "tls": {}}]}  # fmt: skip
    result = load(documents([8443, 8444, 8445], frontend, server_ca, 9, config_map("clients", clients_ca)))
    assert not result.errors
    clients = {p.declared_port: p.tls.client for p in result.config.ports}
    assert clients[8443].mode == "AllowValidOnly" and clients[8443].required
    assert clients[8443].ca_certificates == clients_ca.cert_pem.bytes()
    assert clients[8444].mode == "AllowInsecureFallback" and not clients[8444].required
    assert clients[8445] is None  # a perPort entry without validation turns it off on its port
    assert ("ResolvedRefs", True, "ResolvedRefs") in conditions(result, "default/edge/p8443")
    # AllowInsecureFallback anywhere: the Gateway says so (GEP-91).
    insecure = ("InsecureFrontendValidationMode", True, "ConfigurationChanged")
    assert insecure in conditions(result, "Gateway default/edge")


def test_secure_gateway_has_no_insecure_condition(server_ca: trustme.CA, clients_ca: trustme.CA) -> None:
    frontend = {"default": validation(ca_ref("clients", kind="Secret"))}
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "clients", "namespace": "default"},
              "stringData": {"ca.crt": clients_ca.cert_pem.bytes().decode()}}  # fmt: skip
    result = load(documents([8443], frontend, server_ca, 9, secret))
    assert result.config.ports[0].tls.client.ca_certificates == clients_ca.cert_pem.bytes()
    assert not any(c[0] == "InsecureFrontendValidationMode" for c in conditions(result, "Gateway default/edge"))


def test_a_missing_ca_config_map_fails_closed_with_the_spec_reasons(server_ca: trustme.CA) -> None:
    result = load(documents([8443], {"default": validation(ca_ref("nowhere"))}, server_ca, 9))
    listener = conditions(result, "default/edge/p8443")
    assert ("ResolvedRefs", False, "InvalidCACertificateRef") in listener
    assert ("Accepted", False, "NoValidCACertificate") in listener
    assert ("Programmed", False, "Invalid") in listener
    client = result.config.ports[0].tls.client
    assert client.refusal and "ConfigMap default/nowhere not found" in client.refusal and client.required
    assert any("caCertificateRefs" in e.field and "nowhere" in e.message for e in result.errors)


def test_one_valid_ca_of_two_serves_and_reports_the_other(server_ca: trustme.CA, clients_ca: trustme.CA) -> None:
    frontend = {"default": validation(ca_ref("clients"), {"group": "example.com", "kind": "Vault", "name": "v"})}
    result = load(documents([8443], frontend, server_ca, 9, config_map("clients", clients_ca)))
    listener = conditions(result, "default/edge/p8443")
    assert ("ResolvedRefs", False, "InvalidCACertificateKind") in listener
    assert ("Accepted", True, "Accepted") in listener
    assert result.config.ports[0].tls.client.refusal is None


def test_another_namespace_needs_a_reference_grant(server_ca: trustme.CA, clients_ca: trustme.CA) -> None:
    frontend = {"default": validation(ca_ref("clients", namespace="pki"))}
    cm = config_map("clients", clients_ca, namespace="pki")
    result = load(documents([8443], frontend, server_ca, 9, cm))
    assert ("ResolvedRefs", False, "RefNotPermitted") in conditions(result, "default/edge/p8443")
    assert result.config.ports[0].tls.client.refusal is not None
    grant = {"apiVersion": "gateway.networking.k8s.io/v1beta1", "kind": "ReferenceGrant",
             "metadata": {"name": "cas", "namespace": "pki"},
             "spec": {"from": [{"group": "gateway.networking.k8s.io", "kind": "Gateway", "namespace": "default"}],
                      "to": [{"group": "", "kind": "ConfigMap"}]}}  # fmt: skip
    result = load(documents([8443], frontend, server_ca, 9, cm, grant))
    assert ("ResolvedRefs", True, "ResolvedRefs") in conditions(result, "default/edge/p8443")
    assert result.config.ports[0].tls.client.refusal is None


@pytest.mark.parametrize(
    ("frontend", "field", "message"),
    [
        ({"perPort": []}, "spec.tls.frontend.default", "is required"),
        ({"default": {"validation": {"caCertificateRefs": []}}}, "caCertificateRefs", "at least one"),
        ({"default": validation(ca_ref("c"), mode="Sometimes")}, "mode", "is not one of"),
        ({"default": {}, "perPort": [{"port": 1, "tls": {}}, {"port": 1, "tls": {}}]}, "perPort", "unique"),
    ],
)
def test_what_the_crd_refuses_refuses_the_gateway(
    server_ca: trustme.CA, frontend: dict[str, Any], field: str, message: str
) -> None:
    with pytest.raises(Exception, match="no Gateway to serve"):
        load(documents([8443], frontend, server_ca, 9))
    _, errors = parse_documents(documents([8443], frontend, server_ca, 9))
    assert any(field in e.field and message in e.message for e in errors), errors


def test_listener_frontend_validation_is_refused_not_ignored(server_ca: trustme.CA) -> None:
    docs = documents([8443, 8444], None, server_ca, 9)
    docs[1]["spec"]["listeners"][0]["tls"]["frontendValidation"] = {"caCertificateRefs": [ca_ref("c")]}
    result = load(docs)
    assert [p.declared_port for p in result.config.ports] == [8444]  # the listener is not served
    assert any("frontendValidation" in e.field and "spec.tls.frontend" in e.message for e in result.errors)


# -- the data plane: real handshakes ------------------------------------------------------------


@pytest.fixture(scope="module")
def gateway(
    server_ca: trustme.CA, clients_ca: trustme.CA, module_upstream: Upstream, module_start_gateway: StartGateway
) -> Iterator[GatewayProcess]:
    """Port `strict`: the default (AllowValidOnly); `fallback`: AllowInsecureFallback (perPort);
    `broken`: perPort naming a ConfigMap that does not exist."""
    strict, fallback, broken = free_port(), free_port(), free_port()
    frontend = {"default": validation(ca_ref("clients")),
                "perPort": [{"port": fallback, "tls": validation(ca_ref("clients"), mode="AllowInsecureFallback")},
                            {"port": broken, "tls": validation(ca_ref("nowhere"))}]}  # fmt: skip
    docs = documents(
        [strict, fallback, broken], frontend, server_ca, module_upstream.port, config_map("clients", clients_ca)
    )
    gw = module_start_gateway({}, [], yaml_text=yaml.safe_dump_all(docs))
    gw.ports = {"strict": strict, "fallback": fallback, "broken": broken}  # type: ignore[attr-defined]
    yield gw


def test_a_valid_client_certificate_reaches_the_upstream(
    gateway: GatewayProcess, server_ca: trustme.CA, good: trustme.LeafCert
) -> None:
    for port in ("strict", "fallback"):
        resp = request(gateway.ports[port], server_ca, good)  # type: ignore[attr-defined]
        assert resp is not None and resp.status == 200, port
        headers = {n.lower(): v for n, v in json.loads(resp.body)["headers"]}
        assert headers["x-forwarded-proto"] == "https"


def test_the_upstream_is_told_the_verified_certificate_and_a_forged_claim_is_dropped(
    gateway: GatewayProcess, server_ca: trustme.CA, good: trustme.LeafCert
) -> None:
    port = gateway.ports["fallback"]  # type: ignore[attr-defined]
    ctx = ssl.create_default_context()
    server_ca.configure_trust(ctx)
    good.configure_cert(ctx)
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    with ctx.wrap_socket(raw, server_hostname=HOST) as tls:
        client = Client(tls)
        forged = {"Host": HOST, "X-Forwarded-Client-Cert": 'Hash=00;Subject="CN=admin"'}
        for headers in ({"Host": HOST}, forged):  # the fast path, then the general one
            seen = json.loads(client.request("GET", "/", headers=headers).body)["headers"]
            values = [v for n, v in seen if n.lower() == "x-forwarded-client-cert"]
            der = ssl.PEM_cert_to_DER_cert(good.cert_chain_pems[0].bytes().decode())
            subject = r'Subject="CN=alice,OU=Testing cert #[^,"]+,O=trustme v[0-9.]+"'
            assert len(values) == 1, values
            assert re.fullmatch(f"Hash={hashlib.sha256(der).hexdigest()};{subject};DNS=alice.clients.test", values[0])
    # Without a certificate (AllowInsecureFallback), nothing is claimed, and a client's claim is dropped.
    ctx = ssl.create_default_context()
    server_ca.configure_trust(ctx)
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    with ctx.wrap_socket(raw, server_hostname=HOST) as tls:
        seen = json.loads(Client(tls).request("GET", "/", headers=forged).body)["headers"]
        assert [v for n, v in seen if n.lower() == "x-forwarded-client-cert"] == []


def test_allow_valid_only_refuses_no_certificate_and_a_foreign_one(
    gateway: GatewayProcess, server_ca: trustme.CA, stranger: trustme.LeafCert
) -> None:
    assert request(gateway.ports["strict"], server_ca, None) is None  # type: ignore[attr-defined]
    assert request(gateway.ports["strict"], server_ca, stranger) is None  # type: ignore[attr-defined]


def test_allow_insecure_fallback_serves_a_client_without_certificate(
    gateway: GatewayProcess, server_ca: trustme.CA, stranger: trustme.LeafCert
) -> None:
    resp = request(gateway.ports["fallback"], server_ca, None)  # type: ignore[attr-defined]
    assert resp is not None and resp.status == 200
    # OpenSSL offers no way to accept a certificate that fails verification: refused (README says so).
    assert request(gateway.ports["fallback"], server_ca, stranger) is None  # type: ignore[attr-defined]


def test_a_port_without_valid_ca_refuses_everyone(
    gateway: GatewayProcess, server_ca: trustme.CA, good: trustme.LeafCert
) -> None:
    for leaf in (None, good):
        assert request(gateway.ports["broken"], server_ca, leaf) is None  # type: ignore[attr-defined]


def test_the_worker_survives_bad_handshakes_and_says_why_once(
    gateway: GatewayProcess, server_ca: trustme.CA, good: trustme.LeafCert, stranger: trustme.LeafCert
) -> None:
    pid = gateway.worker_pid
    port = gateway.ports["strict"]  # type: ignore[attr-defined]
    mark = len(gateway.log)
    for i in range(50):
        assert request(port, server_ca, stranger if i % 2 else None) is None
    resp = request(port, server_ca, good)
    assert resp is not None and resp.status == 200
    assert gateway.worker_pid == pid
    # One line per reason (this module's earlier tests may have written them), then quiet for a while.
    source = "Gateway default/edge spec.tls.frontend.default.validation"
    for why in ("no client certificate", "unable to get local issuer certificate"):
        line = f"gw[worker 0 pid {pid}]: HTTPS port {port}: {REFUSED} ({source}): {why}"
        gateway.wait_for_log(line)
        assert gateway.log.count(line) == 1, gateway.log
    assert len(gateway.log) - mark <= 2
    assert not any("Traceback" in x for x in gateway.log)


def test_a_reload_that_changes_the_ca_takes_effect(
    server_ca: trustme.CA, clients_ca: trustme.CA, good: trustme.LeafCert, upstream: Upstream,
    start_gateway: StartGateway,
) -> None:  # fmt: skip
    port = free_port()
    second_ca = trustme.CA()
    newcomer = second_ca.issue_cert("bob@example.test")

    def config(ca: trustme.CA | None) -> str:
        frontend = {"default": validation(ca_ref("clients"))} if ca is not None else None
        extra = [config_map("clients", ca)] if ca is not None else []
        return yaml.safe_dump_all(documents([port], frontend, server_ca, upstream.port, *extra))

    def reload(text: str) -> None:
        gw.config_path.write_text(text)
        mark = len(gw.log)
        os.kill(gw.pid, signal.SIGHUP)
        gw.wait_for_log("gw: config reloaded", after=mark)

    gw = start_gateway({}, [], yaml_text=config(None))
    assert request(port, server_ca, None) is not None  # no validation yet: anyone is served
    # A TLS 1.2 session from then, kept to be resumed after the reload.
    old_ctx = ssl.create_default_context()
    server_ca.configure_trust(old_ctx)
    old_ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    with old_ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=10), server_hostname=HOST) as tls:
        assert Client(tls).request("GET", "/", headers={"Host": HOST}).status == 200
        session = tls.session

    reload(config(clients_ca))
    assert request(port, server_ca, None) is None
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        with old_ctx.wrap_socket(raw, server_hostname=HOST, session=session) as tls:
            Client(tls).request("GET", "/", headers={"Host": HOST})
        raise AssertionError("a session from before the reload was served without a certificate")
    except (ssl.SSLError, ConnectionError):
        pass
    assert request(port, server_ca, newcomer) is None
    resp = request(port, server_ca, good)
    assert resp is not None and resp.status == 200

    reload(config(second_ca))
    assert request(port, server_ca, good) is None
    resp = request(port, server_ca, newcomer)
    assert resp is not None and resp.status == 200


def test_the_controller_renders_the_ca_objects_the_frontend_names(
    server_ca: trustme.CA, clients_ca: trustme.CA
) -> None:
    """In a cluster, the CA ConfigMaps and Secrets reach the config only when something names them."""
    from gw.config import DEFAULT_CONTROLLER_NAME
    from gw.controller.cache import Cache
    from gw.controller.render import selection

    more = ca_ref("more", kind="Secret", namespace="pki")
    frontend = {"default": validation(ca_ref("clients")), "perPort": [{"port": 8444, "tls": validation(more)}]}
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "more", "namespace": "pki"},
              "type": "Opaque", "data": {}}  # fmt: skip
    docs = documents([8443, 8444], frontend, server_ca, 9, config_map("clients", clients_ca), secret,
                     config_map("unrelated", clients_ca))  # fmt: skip
    cache = Cache()
    for doc in docs:
        cache.apply(doc["kind"], "ADDED", {**doc, "metadata": {"creationTimestamp": "2026-01-01T00:00:00Z",
                                                               **doc["metadata"]}})  # fmt: skip
    chosen = selection(cache, DEFAULT_CONTROLLER_NAME)
    assert chosen["ConfigMap"] == [("default", "clients")]
    assert ("pki", "more") in chosen["Secret"]


def test_subject_values_are_escaped_for_rfc_4514_and_for_a_header() -> None:
    from gw.proxy.client_tls import _escape, _printable

    assert _escape('Acme, Inc. "R+D" <x>;') == 'Acme\\, Inc. \\"R\\+D\\" \\<x\\>\\;'
    assert _escape(" #lead trail ") == "\\ #lead trail\\ "
    assert _escape("Zoë\r\nX-Admin: 1") == "Zo\\C3\\AB\\0D\\0AX-Admin: 1"  # never a line break in the head
    assert _printable("spiffe://example.test/ns/default") == "spiffe://example.test/ns/default"
