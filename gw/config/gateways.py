"""Which GatewayClasses and Gateways this instance serves, their listeners, certificates and conditions."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from gw.config.backend_tls import CARef
from gw.config.errors import Condition, ConfigError
from gw.config.filters import HTTPS
from gw.config.frontend_tls import (
    CONFIGURATION_CHANGED,
    INSECURE_MODE,
    NO_VALID_CA,
    ClientValidation,
    resolve_validation,
)
from gw.config.resources import GATEWAY_GROUP, Gateway, Listener, ReferenceGrant, Resources, SecretRef
from gw.config.tls import REF_NOT_PERMITTED, Certificate, CertificateResolver, granted
from gw.config.validate import SUPPORTED_PROTOCOLS, check_listeners
from gw.routing.hostnames import hostname_matches

INVALID_CLIENT_CERTIFICATE_REF = "InvalidClientCertificateRef"  # the Gateway's ResolvedRefs reason

ROUTE_KINDS = (("gateway.networking.k8s.io", "HTTPRoute"),)  # what gw's listeners can attach


@dataclass(slots=True)
class ServedGateways:
    """The Gateways this instance serves, with their usable listeners and what became of the others."""

    # (namespace, name) → (gateway, its servable listeners)
    gateways: dict[tuple[str, str], tuple[Gateway, tuple[Listener, ...]]] = field(default_factory=dict)
    # "namespace/gateway/listener" → resolved certificates (HTTPS listeners)
    certificates: dict[str, tuple[Certificate, ...]] = field(default_factory=dict)
    # "namespace/gateway/listener" → conditions
    listener_conditions: dict[str, list[Condition]] = field(default_factory=dict)
    # (namespace, name) → the client certificate it presents to TLS backends (spec.tls.backend)
    client_certificates: dict[tuple[str, str], Certificate] = field(default_factory=dict)
    # declared port → how its HTTPS listeners verify client certificates (spec.tls.frontend)
    client_validation: dict[int, ClientValidation] = field(default_factory=dict)


def serve_gateways(
    resources: Resources,
    *,
    controller_name: str,
    only: str | None,
    features: frozenset[str],
    source: str,
    errors: list[ConfigError],
    conditions: dict[str, list[Condition]],
) -> ServedGateways:
    """Select, validate and resolve the served Gateways; conditions go to `conditions` by object label.

    Raises ConfigError when no Gateway is served or two served Gateways declare the same port.
    """
    classes = set()
    for gc in resources.gateway_classes:
        if gc.controller_name == controller_name:
            classes.add(gc.meta.name)
            conditions[gc.meta.label] = [Condition("Accepted", True, "Accepted")]
    # Oldest first, then by namespace/name (the spec's tie-break): in a port conflict the newcomer
    # is the one named, whatever the order of the files.
    served = sorted(
        (g for g in resources.gateways if g.class_name in classes), key=lambda g: (g.meta.created, g.meta.key)
    )
    if only is not None:
        served = [g for g in served if g.meta.key == only]
        if not served:
            raise ConfigError(source, "", "", f"Gateway {only} is not defined or not served by {controller_name}")
    if not served:
        raise ConfigError(
            source,
            "",
            "",
            f"no Gateway to serve: none has a gatewayClassName naming a GatewayClass whose "
            f"controllerName is {controller_name!r}",
        )
    protocols = SUPPORTED_PROTOCOLS | ({"HTTPS"} if HTTPS in features else set())
    certs = CertificateResolver(resources.secrets, resources.reference_grants)
    result = ServedGateways()
    port_owner: dict[int, Gateway] = {}
    stores = {
        **{("ConfigMap", c.meta.namespace, c.meta.name): c.data for c in resources.config_maps},
        **{("Secret", s.meta.namespace, s.meta.name): s.data for s in resources.secrets},
    }
    for gw in served:
        listeners, listener_errors, by_name = check_listeners(gw, protocols)
        errors += listener_errors
        frontend = _Frontend(gw, stores, resources.reference_grants, errors)
        usable = []
        refusing = 0
        for li in listeners:
            owner = port_owner.setdefault(li.port, gw)
            if owner is not gw:
                raise ConfigError(
                    gw.meta.file,
                    gw.meta.label,
                    f"spec.listeners[{li.index}].port",
                    f"port {li.port} is also declared by {owner.meta.label}; serve one of them per "
                    "instance (GW_GATEWAY=namespace/name)",
                )
            status = by_name[li.name]
            client, ca_problems = frontend.port(li.port) if li.protocol == "HTTPS" else (None, [])
            ok = _resolve_refs(gw, li, certs, result, status, errors, ca_problems)
            if client is not None:
                result.client_validation[li.port] = client
            if ok and client is not None and client.refusal is not None:
                # Served all the same, refusing every handshake: clients are never let in unverified.
                why = f"{client.refusal} (every TLS handshake is refused)"
                status[:] = [c for c in status if c.type != "Accepted"]
                status.append(Condition("Accepted", False, NO_VALID_CA, why))
                status.append(Condition("Programmed", False, "Invalid", why))
                refusing += 1
            else:
                status.append(Condition("Programmed", ok, "Programmed" if ok else "Invalid"))
            if ok:
                usable.append(li)
        _overlapping_tls(usable, by_name)
        for name, status in by_name.items():
            if not any(c.type == "Programmed" for c in status):
                status.append(Condition("Programmed", False, "Invalid"))
            result.listener_conditions[f"{gw.meta.key}/{name}"] = status
        result.gateways[(gw.meta.namespace, gw.meta.name)] = (gw, tuple(usable))
        all_ok = len(usable) == len(gw.listeners) and not refusing
        conditions[gw.meta.label] = [
            Condition("Accepted", True, "Accepted" if all_ok else "ListenersNotValid"),
            Condition("Programmed", bool(usable), "Programmed" if usable else "Invalid"),
        ]
        if gw.frontend_tls is not None and gw.frontend_tls.insecure:
            conditions[gw.meta.label].append(
                Condition(
                    INSECURE_MODE,
                    True,
                    CONFIGURATION_CHANGED,
                    "spec.tls.frontend allows AllowInsecureFallback: clients without a certificate are served",
                )
            )
        if gw.client_certificate_ref is not None:
            conditions[gw.meta.label].append(_client_certificate(gw, gw.client_certificate_ref, certs, result, errors))
    return result


def _client_certificate(
    gw: Gateway, ref: SecretRef, certs: CertificateResolver, result: ServedGateways, errors: list[ConfigError]
) -> Condition:
    """The Gateway's ResolvedRefs for spec.tls.backend.clientCertificateRef. Unresolved, TLS
    backends are reached without a client certificate (and refuse, if they require one)."""
    cert, reason, message = certs.resolve(gw, ref)
    if cert is None:
        reason = reason if reason == REF_NOT_PERMITTED else INVALID_CLIENT_CERTIFICATE_REF
        errors.append(ConfigError(gw.meta.file, gw.meta.label, "spec.tls.backend.clientCertificateRef", message))
        return Condition("ResolvedRefs", False, reason, message)
    result.client_certificates[(gw.meta.namespace, gw.meta.name)] = cert
    return Condition("ResolvedRefs", True, "ResolvedRefs", f"client certificate for backends: {cert.name}")


def _resolve_refs(
    gw: Gateway,
    li: Listener,
    certs: CertificateResolver,
    result: ServedGateways,
    status: list[Condition],
    errors: list[ConfigError],
    ca_problems: list[tuple[str, str]],
) -> bool:
    """Route kinds, certificateRefs and the client-validation caCertificateRefs of its port (their
    problems given) → the listener's ResolvedRefs; False when it cannot serve."""
    field = f"spec.listeners[{li.index}]"
    problems: list[tuple[str, str]] = [(r, f"client certificate validation: {m}") for r, m in ca_problems]
    if li.allowed_kinds and not any((k.group, k.kind) in ROUTE_KINDS for k in li.allowed_kinds):
        kinds = ", ".join(k.kind for k in li.allowed_kinds)
        problems.append(("InvalidRouteKinds", f"none of the route kinds {kinds} is supported (HTTPRoute is)"))
        errors.append(ConfigError(gw.meta.file, gw.meta.label, f"{field}.allowedRoutes.kinds", problems[-1][1]))
    elif li.allowed_kinds:
        for k in li.allowed_kinds:
            if (k.group, k.kind) not in ROUTE_KINDS:
                problems.append(("InvalidRouteKinds", f"route kind {k.kind} is not supported"))
    resolved = []
    for ref in li.certificate_refs:
        cert, reason, message = certs.resolve(gw, ref)
        if cert is None:
            problems.append((reason, message))
            errors.append(
                ConfigError(
                    gw.meta.file, gw.meta.label, f"{field}.tls.certificateRefs[{ref.index}]", f"{message} ({reason})"
                )
            )
        else:
            resolved.append(cert)
    if li.protocol == "HTTPS":
        result.certificates[f"{gw.meta.key}/{li.name}"] = tuple(resolved)
    if problems:
        # RefNotPermitted wins over InvalidCertificateRef: the spec reserves the latter for allowed refs.
        reason = next((r for r, _ in problems if r == "RefNotPermitted"), problems[0][0])
        status.append(Condition("ResolvedRefs", False, reason, "; ".join(m for _, m in problems)))
    else:
        status.append(Condition("ResolvedRefs", True, "ResolvedRefs"))
    return not (li.protocol == "HTTPS" and not resolved)


class _Frontend:
    """One Gateway's spec.tls.frontend resolved per port, each port once (errors reported once)."""

    def __init__(
        self,
        gw: Gateway,
        stores: dict[tuple[str, str, str], dict[str, bytes]],
        grants: tuple[ReferenceGrant, ...] | list[ReferenceGrant],
        errors: list[ConfigError],
    ) -> None:
        self.gw, self.stores, self.grants, self.errors = gw, stores, grants, errors
        self.ports: dict[int, tuple[ClientValidation | None, list[tuple[str, str]]]] = {}

    def port(self, port: int) -> tuple[ClientValidation | None, list[tuple[str, str]]]:
        found = self.ports.get(port)
        if found is None:
            found = self.ports[port] = self._resolve(port)
        return found

    def _resolve(self, port: int) -> tuple[ClientValidation | None, list[tuple[str, str]]]:
        gw, frontend = self.gw, self.gw.frontend_tls
        validation = frontend.for_port(port) if frontend is not None else None
        if validation is None:
            return None, []
        ns = gw.meta.namespace

        def permitted(ref: CARef) -> bool:
            return granted(self.grants, ns, ref.namespace or ns, ref.kind, ref.name)

        source = f"{gw.meta.label} {validation.field}"
        client, problems = resolve_validation(validation, ns, self.stores, permitted, source)
        at = f"{validation.field}.caCertificateRefs"
        self.errors += [ConfigError(gw.meta.file, gw.meta.label, at, f"{m} ({r})") for r, m in problems]
        return client, problems


def _overlapping_tls(listeners: Iterable[Listener], by_name: dict[str, list[Condition]]) -> None:
    """OverlappingTLSConfig on HTTPS listeners of one port whose hostnames overlap (the spec's MUST)."""
    https = [li for li in listeners if li.protocol == "HTTPS"]
    for a in https:
        for b in https:
            if a is b or a.port != b.port:
                continue
            if a.hostname is None or b.hostname is None or _overlap(a.hostname, b.hostname):
                by_name[a.name].append(
                    Condition("OverlappingTLSConfig", True, "OverlappingHostnames", f"overlaps listener {b.name!r}")
                )
                break


def _overlap(a: str, b: str) -> bool:
    return hostname_matches(a, b) or hostname_matches(b, a)


def supported_kinds(li: Listener) -> list[dict[str, str]]:
    """The listener's status.supportedKinds."""
    if not li.allowed_kinds:
        return [{"group": GATEWAY_GROUP, "kind": "HTTPRoute"}]
    return [{"group": k.group, "kind": k.kind} for k in li.allowed_kinds if (k.group, k.kind) in ROUTE_KINDS]
