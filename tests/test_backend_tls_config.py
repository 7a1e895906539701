"""BackendTLSPolicy in config: fields validated with file/object/field as the CRD does, each backend's
UpstreamTLS from its most specific policy, the spec's conditions and reasons per ancestor Gateway."""

from __future__ import annotations

from typing import Any

import pytest
import trustme

from gw.config import compile_resources, status_document
from gw.config.backend_tls import SYSTEM, UpstreamTLS, san_mismatch
from gw.config.parse import parse_documents
from gw.config.status import status_lines
from gw.config.unserved import unserved

GATEWAY = "gateway.networking.k8s.io/v1"
CA = trustme.CA()
CA_PEM = CA.cert_pem.bytes().decode()
BASE = [
    {"apiVersion": GATEWAY, "kind": "GatewayClass", "metadata": {"name": "gw"},
     "spec": {"controllerName": "gw.dev/gateway-controller"}},
    {"apiVersion": GATEWAY, "kind": "Gateway", "metadata": {"name": "edge"},
     "spec": {"gatewayClassName": "gw", "listeners": [{"name": "http", "port": 8080, "protocol": "HTTP"}]}},
    {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "orders"},
     "spec": {"ports": [{"name": "https", "port": 443}, {"name": "admin", "port": 9000}]}},
    {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
     "metadata": {"name": "orders-1", "labels": {"kubernetes.io/service-name": "orders"}},
     "ports": [{"name": "https", "port": 8443}, {"name": "admin", "port": 9001}],
     "endpoints": [{"addresses": ["10.0.0.1"]}]},
    {"apiVersion": "gw.dev/v1alpha1", "kind": "Backend", "metadata": {"name": "app"},
     "spec": {"endpoints": [{"address": "127.0.0.1", "port": 9}]}},
    {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "ca"}, "data": {"ca.crt": CA_PEM}},
    {"apiVersion": GATEWAY, "kind": "HTTPRoute", "metadata": {"name": "api"},
     "spec": {"parentRefs": [{"name": "edge"}], "rules": [
         {"matches": [{"path": {"type": "PathPrefix", "value": "/orders"}}],
          "backendRefs": [{"kind": "Service", "name": "orders", "port": 443}]},
         {"matches": [{"path": {"type": "PathPrefix", "value": "/admin"}}],
          "backendRefs": [{"kind": "Service", "name": "orders", "port": 9000}]},
         {"matches": [{"path": {"type": "PathPrefix", "value": "/app"}}],
          "backendRefs": [{"group": "gw.dev", "kind": "Backend", "name": "app"}]}]}},
]  # fmt: skip
ORDERS, ADMIN, APP = "Service default/orders:443", "Service default/orders:9000", "Backend default/app"
CA_REF = {"group": "", "kind": "ConfigMap", "name": "ca"}


def policy(name: str, targets: list[dict[str, Any]], created: str | None = None, **validation: Any) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, **({"creationTimestamp": created} if created else {})}
    validation = {"hostname": "orders.internal", "caCertificateRefs": [CA_REF], **validation}
    return {"apiVersion": GATEWAY, "kind": "BackendTLSPolicy", "metadata": meta,
            "spec": {"targetRefs": targets,
                     "validation": {k: v for k, v in validation.items() if v is not None}}}  # fmt: skip


def on(kind: str, name: str, section: str | None = None) -> dict[str, Any]:
    group = "gw.dev" if kind == "Backend" else ""
    return {"group": group, "kind": kind, "name": name, **({"sectionName": section} if section else {})}


def compiled(*docs: dict[str, Any]) -> Any:
    resources, errors = parse_documents([("tls.yaml", d) for d in [*BASE, *docs]])
    return compile_resources(resources, errors=errors)


def tls_of(result: Any, name: str) -> UpstreamTLS | None:
    found = [
        r.backend for rule in result.config.rules for r in rule.backend_refs if r.backend and r.backend.name == name
    ]
    assert found
    return found[0].tls  # type: ignore[no-any-return]


def conditions(result: Any, name: str) -> list[str]:
    return [str(c) for c in result.conditions.get(f"BackendTLSPolicy default/{name}", [])]


def errors_of(*docs: dict[str, Any]) -> list[tuple[str, str, str]]:
    _, errors = parse_documents([("tls.yaml", d) for d in docs])
    return [(e.file, e.obj, e.field) for e in errors]


class TestAttachment:
    def test_a_policy_on_a_service_gives_every_port_tls_and_no_other_backend(self) -> None:
        result = compiled(policy("p", [on("Service", "orders")]))
        tls = tls_of(result, ORDERS)
        assert (
            tls is not None
            and tls.hostname == "orders.internal"
            and tls.ca_certificates.strip() == CA_PEM.strip().encode()
        )
        assert tls_of(result, ADMIN) == tls and tls_of(result, APP) is None
        assert conditions(result, "p") == [
            "Accepted=True (Accepted): verified against 1 CA bundle(s)",
            "ResolvedRefs=True (ResolvedRefs)",
        ]

    def test_a_section_name_picks_the_service_port_by_name(self) -> None:
        result = compiled(policy("p", [on("Service", "orders", "admin")]))
        assert tls_of(result, ORDERS) is None and tls_of(result, ADMIN) is not None

    def test_a_gw_backend_can_be_targeted(self) -> None:
        result = compiled(policy("p", [on("Backend", "app")], wellKnownCACertificates=SYSTEM, caCertificateRefs=None))
        tls = tls_of(result, APP)
        assert tls is not None and tls.well_known == SYSTEM and not tls.ca_certificates

    def test_a_named_port_beats_the_whole_service(self) -> None:
        result = compiled(
            policy("whole", [on("Service", "orders")], "2026-01-01T00:00:00Z"),
            policy("port", [on("Service", "orders", "https")], "2026-01-02T00:00:00Z", hostname="port.internal"),
        )
        assert tls_of(result, ORDERS).hostname == "port.internal"  # type: ignore[union-attr]
        assert tls_of(result, ADMIN).hostname == "orders.internal"  # type: ignore[union-attr]
        assert conditions(result, "whole")[0].startswith("Accepted=True")

    def test_the_same_target_twice_goes_to_the_oldest_and_the_other_is_conflicted(self) -> None:
        result = compiled(
            policy("b-new", [on("Service", "orders")], "2026-01-02T00:00:00Z", hostname="new.internal"),
            policy("a-old", [on("Service", "orders")], "2026-01-01T00:00:00Z"),
        )
        assert tls_of(result, ORDERS).hostname == "orders.internal"  # type: ignore[union-attr]
        assert conditions(result, "b-new")[0] == (
            "Accepted=False (Conflicted): Service default/orders is taken by BackendTLSPolicy default/a-old "
            "(the oldest policy for a target and sectionName wins, then by namespace/name)"
        )

    def test_equal_ages_go_by_namespace_and_name(self) -> None:
        result = compiled(
            policy("b", [on("Service", "orders")], hostname="b.internal"), policy("a", [on("Service", "orders")])
        )
        assert tls_of(result, ORDERS).hostname == "orders.internal"  # type: ignore[union-attr]
        assert conditions(result, "b")[0].startswith("Accepted=False (Conflicted)")

    def test_a_target_not_served_is_an_error_and_not_accepted(self) -> None:
        result = compiled(policy("p", [on("Service", "nothing")]))
        assert [(e.obj, e.field) for e in result.errors] == [("BackendTLSPolicy default/p", "spec.targetRefs[0]")]
        assert conditions(result, "p")[0] == "Accepted=False (TargetNotFound): not found: Service default/nothing"


class TestReferences:
    @pytest.mark.parametrize(
        ("extra", "ref", "why"),
        [
            ([], {"group": "", "kind": "ConfigMap", "name": "missing"},
             "caCertificateRefs[0] ConfigMap default/missing not found"),
            ([{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "empty"}, "data": {}}],
             {"group": "", "kind": "ConfigMap", "name": "empty"},
             "caCertificateRefs[0] ConfigMap default/empty has no key ca.crt"),
            ([{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "junk"}, "data": {"ca.crt": "hello"}}],
             {"group": "", "kind": "ConfigMap", "name": "junk"},
             "caCertificateRefs[0] ConfigMap default/junk: ca.crt holds no PEM certificate"),
        ],
    )  # fmt: skip
    def test_a_single_invalid_ca_ref_is_no_valid_ca_certificate_and_refuses_connections(self, extra, ref, why) -> None:
        result = compiled(*extra, policy("p", [on("Service", "orders")], caCertificateRefs=[ref]))
        assert conditions(result, "p") == [
            f"Accepted=False (NoValidCACertificate): no valid CA certificate: {why}",
            f"ResolvedRefs=False (InvalidCACertificateRef): {why}",
        ]
        tls = tls_of(result, ORDERS)
        assert tls is not None and tls.refusal == f"no valid CA certificate: {why}"  # never plain text

    def test_an_unsupported_kind_is_invalid_kind(self) -> None:
        ref = {"group": "example.com", "kind": "Bundle", "name": "x"}
        result = compiled(policy("p", [on("Service", "orders")], caCertificateRefs=[ref]))
        assert conditions(result, "p")[1] == (
            "ResolvedRefs=False (InvalidKind): caCertificateRefs[0] Bundle default/x: "
            "Bundle (example.com) is not a kind gw reads CA certificates from (ConfigMap, Secret)"
        )
        assert conditions(result, "p")[0].startswith("Accepted=False (NoValidCACertificate)")

    def test_one_valid_ref_among_invalid_ones_is_accepted_with_refs_unresolved(self) -> None:
        refs = [{"group": "", "kind": "ConfigMap", "name": "missing"}, CA_REF]
        result = compiled(policy("p", [on("Service", "orders")], caCertificateRefs=refs))
        assert conditions(result, "p")[0].startswith("Accepted=True")
        assert conditions(result, "p")[1].startswith("ResolvedRefs=False (InvalidCACertificateRef)")
        assert tls_of(result, ORDERS).refusal is None  # type: ignore[union-attr]

    def test_a_secret_holds_a_ca_bundle_too(self) -> None:
        secret = {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "ca-secret"},
            "stringData": {"ca.crt": CA_PEM},
        }
        result = compiled(
            secret,
            policy(
                "p", [on("Service", "orders")], caCertificateRefs=[{"group": "", "kind": "Secret", "name": "ca-secret"}]
            ),
        )
        assert conditions(result, "p")[1] == "ResolvedRefs=True (ResolvedRefs)"

    def test_a_config_map_with_binary_data_is_read(self) -> None:
        import base64

        cm = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "bin"},
              "binaryData": {"ca.crt": base64.b64encode(CA_PEM.encode()).decode()}}  # fmt: skip
        result = compiled(
            cm,
            policy(
                "p", [on("Service", "orders")], caCertificateRefs=[{"group": "", "kind": "ConfigMap", "name": "bin"}]
            ),
        )
        assert conditions(result, "p")[1] == "ResolvedRefs=True (ResolvedRefs)"

    def test_an_unsupported_well_known_set_is_invalid(self) -> None:
        result = compiled(
            policy("p", [on("Service", "orders")], caCertificateRefs=None, wellKnownCACertificates="example.com/cas")
        )
        assert conditions(result, "p")[0] == (
            "Accepted=False (Invalid): wellKnownCACertificates 'example.com/cas' is not supported (gw knows System)"
        )
        assert tls_of(result, ORDERS).refusal is not None  # type: ignore[union-attr]


class TestStatusDocument:
    def test_ancestors_are_the_gateways_whose_routes_reach_the_backends(self) -> None:
        result = compiled(policy("p", [on("Service", "orders")]))
        (doc,) = [p for p in status_document(result)["policies"] if p["kind"] == "BackendTLSPolicy"]
        (ancestor,) = doc["ancestors"]
        assert ancestor["ancestorRef"] == {
            "group": GATEWAY.split("/")[0],
            "kind": "Gateway",
            "namespace": "default",
            "name": "edge",
        }
        assert [c["type"] for c in ancestor["conditions"]] == ["Accepted", "ResolvedRefs"]
        assert (
            "BackendTLSPolicy default/p: Accepted=True (Accepted): verified against 1 CA bundle(s); "
            "ResolvedRefs=True (ResolvedRefs)"
            in status_lines(result)
        )


class TestParsing:
    def test_a_full_policy_parses(self) -> None:
        resources, errors = parse_documents([("tls.yaml", policy(
            "p", [on("Service", "orders", "https")],
            subjectAltNames=[{"type": "Hostname", "hostname": "*.internal"}, {"type": "URI", "uri": "spiffe://cluster/ns/a/sa/b"}],
        ))])  # fmt: skip
        assert errors == []
        (p,) = resources.backend_tls_policies
        assert p.subject_alt_names == (("Hostname", "*.internal"), ("URI", "spiffe://cluster/ns/a/sa/b"))
        assert p.targets[0].section_name == "https"

    @pytest.mark.parametrize(
        ("change", "field"),
        [
            ({"hostname": None}, "spec.validation.hostname"),
            ({"hostname": "*.wild.internal"}, "spec.validation.hostname"),
            ({"caCertificateRefs": None}, "spec.validation"),  # neither
            ({"wellKnownCACertificates": SYSTEM}, "spec.validation"),  # both
            ({"wellKnownCACertificates": "Sys tem", "caCertificateRefs": None},
             "spec.validation.wellKnownCACertificates"),
            ({"subjectAltNames": [{"type": "Hostname"}]}, "spec.validation.subjectAltNames[0].hostname"),
            ({"subjectAltNames": [{"type": "URI", "uri": "spiffe://x", "hostname": "a.b"}]},
             "spec.validation.subjectAltNames[0].hostname"),
            ({"subjectAltNames": [{"type": "URI", "uri": "not a uri"}]}, "spec.validation.subjectAltNames[0].uri"),
            ({"subjectAltNames": [{"type": "IP", "ip": "10.0.0.1"}]}, "spec.validation.subjectAltNames[0].type"),
            ({"subjectAltNames": [{"type": "Hostname", "hostname": f"h{i}.x"} for i in range(6)]},
             "spec.validation.subjectAltNames"),
            ({"hostName": "typo"}, "spec.validation.hostName"),
        ],
    )  # fmt: skip
    def test_bad_validation_rejects_the_policy_naming_the_field(self, change, field) -> None:
        found = errors_of(policy("p", [on("Service", "orders")], **change))
        assert ("tls.yaml", "BackendTLSPolicy default/p", field) in found

    @pytest.mark.parametrize(
        ("targets", "field"),
        [
            ([], "spec.targetRefs"),
            ([{"group": "", "kind": "ConfigMap", "name": "x"}], "spec.targetRefs[0].kind"),
            ([{"group": "gateway.networking.k8s.io", "kind": "Service", "name": "x"}], "spec.targetRefs[0].group"),
            ([{"group": "", "kind": "Service", "name": "x", "namespace": "other"}], "spec.targetRefs[0].namespace"),
            ([on("Service", "x"), on("Service", "x", "https")], "spec.targetRefs"),
            ([on("Service", "x", "https"), on("Service", "x", "https")], "spec.targetRefs"),
            ([on("Backend", "app", "a")], "spec.targetRefs[0].sectionName"),
        ],
    )
    def test_bad_targets_reject_the_policy_naming_the_field(self, targets, field) -> None:
        assert ("tls.yaml", "BackendTLSPolicy default/p", field) in errors_of(policy("p", targets))

    def test_options_take_the_minimum_version_and_refuse_unknown_keys(self) -> None:
        doc = policy("p", [on("Service", "orders")])
        doc["spec"]["options"] = {"gw.dev/min-tls-version": "1.3"}
        resources, errors = parse_documents([("tls.yaml", doc)])
        assert errors == [] and resources.backend_tls_policies[0].min_version == "1.3"
        doc["spec"]["options"] = {"example.com/ciphers": "all"}
        assert errors_of(doc) == [("tls.yaml", "BackendTLSPolicy default/p", "spec.options[example.com/ciphers]")]


class TestSubjectAltNames:
    def tls(self, *sans: tuple[str, str]) -> UpstreamTLS:
        return UpstreamTLS("default/p", "ignored.internal", sans)

    def cert(self, *names: tuple[str, str]) -> dict[str, Any]:
        return {"subjectAltName": names}

    def test_one_listed_name_matching_is_enough(self) -> None:
        tls = self.tls(("Hostname", "a.internal"), ("URI", "spiffe://c/ns/x/sa/y"))
        assert san_mismatch(tls, self.cert(("DNS", "b.internal"), ("URI", "spiffe://c/ns/x/sa/y"))) is None
        assert san_mismatch(tls, self.cert(("DNS", "A.Internal"))) is None

    def test_a_certificate_wildcard_covers_one_label(self) -> None:
        tls = self.tls(("Hostname", "orders.internal"))
        assert san_mismatch(tls, self.cert(("DNS", "*.internal"))) is None
        assert san_mismatch(self.tls(("Hostname", "a.orders.internal")), self.cert(("DNS", "*.internal"))) is not None

    def test_no_match_says_what_the_certificate_has(self) -> None:
        why = san_mismatch(self.tls(("URI", "spiffe://c/a")), self.cert(("DNS", "x.internal"), ("URI", "spiffe://c/b")))
        assert why == (
            "certificate subjectAltNames (DNS:x.internal, URI:spiffe://c/b) match none of the policy's (URI:spiffe://c/a)"
        )


class TestGatewayClientCertificate:
    """Gateway spec.tls.backend.clientCertificateRef: the certificate presented to TLS backends."""

    def gateway(self, ref: dict[str, Any] | None = None, **tls: Any) -> dict[str, Any]:
        spec: dict[str, Any] = {"gatewayClassName": "gw",
                                "listeners": [{"name": "http", "port": 8080, "protocol": "HTTP"}]}  # fmt: skip
        if ref is not None:
            tls["backend"] = {"clientCertificateRef": ref}
        if tls:
            spec["tls"] = tls
        return {"apiVersion": GATEWAY, "kind": "Gateway", "metadata": {"name": "edge"}, "spec": spec}

    def compiled(self, gateway: dict[str, Any], *docs: dict[str, Any]) -> Any:
        base = [d for d in BASE if d["kind"] != "Gateway"]
        resources, errors = parse_documents([("tls.yaml", d) for d in [*base, gateway, *docs]])
        return compile_resources(resources, errors=errors)

    def secret(self, name: str = "client", namespace: str = "default") -> dict[str, Any]:
        leaf = CA.issue_cert("gw.internal")
        chain = b"".join(b.bytes() for b in leaf.cert_chain_pems).decode()
        return {"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
                "metadata": {"name": name, "namespace": namespace},
                "stringData": {"tls.crt": chain, "tls.key": leaf.private_key_pem.bytes().decode()}}  # fmt: skip

    def test_tls_backends_reached_through_the_gateway_present_its_certificate(self) -> None:
        result = self.compiled(self.gateway({"name": "client"}), self.secret(), policy("p", [on("Service", "orders")]))
        tls = tls_of(result, ORDERS)
        assert tls is not None and tls.client_certificate.startswith(b"-----BEGIN CERTIFICATE-----") and tls.client_key
        assert "ResolvedRefs=True (ResolvedRefs): client certificate for backends: Secret default/client" in [
            str(c) for c in result.conditions["Gateway default/edge"]
        ]
        assert tls_of(result, APP) is None  # no policy, no TLS: the certificate changes nothing

    def test_a_missing_secret_is_invalid_client_certificate_ref(self) -> None:
        result = self.compiled(self.gateway({"name": "nothing"}), policy("p", [on("Service", "orders")]))
        assert "ResolvedRefs=False (InvalidClientCertificateRef): Secret default/nothing not found" in [
            str(c) for c in result.conditions["Gateway default/edge"]
        ]
        fields = [(e.obj, e.field) for e in result.errors]
        assert ("Gateway default/edge", "spec.tls.backend.clientCertificateRef") in fields
        assert tls_of(result, ORDERS).client_certificate == b""  # type: ignore[union-attr]

    def test_another_namespace_needs_a_reference_grant(self) -> None:
        result = self.compiled(self.gateway({"name": "client", "namespace": "certs"}), self.secret(namespace="certs"))
        (resolved,) = [c for c in result.conditions["Gateway default/edge"] if c.type == "ResolvedRefs"]
        assert (resolved.status, resolved.reason) == (False, "RefNotPermitted")

    def test_unknown_fields_are_refused_and_frontend_is_served(self) -> None:
        _, errors = parse_documents([("tls.yaml", self.gateway(backend={"clientCertificate": {"name": "x"}}))])
        assert [(e.obj, e.field) for e in errors] == [("Gateway default/edge", "spec.tls.backend.clientCertificate")]
        doc = self.gateway(frontend={"default": {}})  # served since spec.tls.frontend is (test_frontend_tls.py)
        _, errors = parse_documents([("tls.yaml", doc)])
        assert errors == [] and unserved([("tls.yaml", doc)]) == []
