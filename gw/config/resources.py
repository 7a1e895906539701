"""Typed forms of the Kubernetes objects gw reads: Gateway API kinds, Service, EndpointSlice, Backend."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from gw.config.backend_policy import BackendTrafficPolicy
from gw.config.backend_tls import BackendTLSPolicy
from gw.config.filters import CORS, HeaderModifier, Redirect, Retry, URLRewrite
from gw.config.ratelimit import RateLimitPolicy
from gw.config.security_policy import SecurityPolicy
from gw.config.session import SessionPersistence
from gw.routing.match import RouteMatch

if TYPE_CHECKING:
    from gw.config.frontend_tls import FrontendTLS

GATEWAY_GROUP = "gateway.networking.k8s.io"
GW_GROUP = "gw.dev"
CORE_GROUP = ""
DISCOVERY_GROUP = "discovery.k8s.io"
SERVICE_NAME_LABEL = "kubernetes.io/service-name"
TLS_SECRET_TYPE = "kubernetes.io/tls"
NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"
MAX_BODY_SIZE_ANNOTATION = "gw.dev/max-body-size"


@dataclass(frozen=True, slots=True)
class Meta:
    """Identity and provenance of one object: which file, and which document in it."""

    kind: str
    name: str
    namespace: str
    file: str = ""
    labels: dict[str, str] = field(default_factory=dict, compare=False)
    annotations: dict[str, str] = field(default_factory=dict, compare=False)
    # Seconds since the epoch; objects without one rank after those with one.
    created: float = math.inf

    @property
    def key(self) -> str:
        """ "namespace/name", the form the spec sorts routes by."""
        return f"{self.namespace}/{self.name}"

    @property
    def label(self) -> str:
        """ "Kind namespace/name" ("Kind name" when cluster-scoped), the form every error message uses."""
        return f"{self.kind} {self.namespace}/{self.name}" if self.namespace else f"{self.kind} {self.name}"


@dataclass(frozen=True, slots=True)
class GatewayClass:
    meta: Meta
    controller_name: str


@dataclass(frozen=True, slots=True)
class RouteGroupKind:
    group: str
    kind: str


@dataclass(frozen=True, slots=True)
class LabelSelector:
    """metav1.LabelSelector: matchLabels and matchExpressions (In, NotIn, Exists, DoesNotExist)."""

    match_labels: tuple[tuple[str, str], ...] = ()
    match_expressions: tuple[tuple[str, str, tuple[str, ...]], ...] = ()

    def matches(self, labels: dict[str, str]) -> bool:
        for key, value in self.match_labels:
            if labels.get(key) != value:
                return False
        for key, op, values in self.match_expressions:
            present = key in labels
            if op == "In" and not (present and labels[key] in values):
                return False
            if op == "NotIn" and present and labels[key] in values:
                return False
            if op == "Exists" and not present:
                return False
            if op == "DoesNotExist" and present:
                return False
        return True


@dataclass(frozen=True, slots=True)
class SecretRef:
    """A listener's tls.certificateRefs entry (SecretObjectReference)."""

    name: str
    namespace: str
    group: str = CORE_GROUP
    kind: str = "Secret"
    index: int = 0

    @property
    def label(self) -> str:
        return f"{self.kind} {self.namespace}/{self.name}"


@dataclass(frozen=True, slots=True)
class Listener:
    name: str
    port: int
    protocol: str
    hostname: str | None = None
    allowed_from: str = "Same"  # All | Same | Selector
    allowed_selector: LabelSelector | None = None
    allowed_kinds: tuple[RouteGroupKind, ...] = ()  # empty = the protocol's default (HTTPRoute)
    index: int = 0  # position in spec.listeners, for error fields
    tls_mode: str | None = None  # Terminate | Passthrough; None without a tls section
    certificate_refs: tuple[SecretRef, ...] = ()


@dataclass(frozen=True, slots=True)
class Gateway:
    meta: Meta
    class_name: str
    listeners: tuple[Listener, ...]
    # spec.tls.backend.clientCertificateRef: what it presents to backends reached over TLS
    client_certificate_ref: SecretRef | None = None
    # spec.tls.frontend: client-certificate validation on its HTTPS listeners (gw.config.frontend_tls)
    frontend_tls: FrontendTLS | None = None


@dataclass(frozen=True, slots=True)
class ParentRef:
    name: str
    namespace: str
    group: str = GATEWAY_GROUP
    kind: str = "Gateway"
    section_name: str | None = None
    port: int | None = None


@dataclass(frozen=True, slots=True)
class BackendRefSpec:
    name: str
    namespace: str
    group: str = CORE_GROUP
    kind: str = "Service"
    port: int | None = None
    weight: int = 1
    index: int = 0  # position in the rule's backendRefs, for error fields
    filters: FilterSpecs | None = None

    @property
    def label(self) -> str:
        port = f":{self.port}" if self.port is not None else ""
        return f"{self.kind} {self.namespace}/{self.name}{port}"


@dataclass(frozen=True, slots=True)
class MirrorSpec:
    """A RequestMirror filter before its backendRef is resolved."""

    ref: BackendRefSpec
    numerator: int = 100
    denominator: int = 100
    field: str = ""  # the filter's field path, for errors


@dataclass(frozen=True, slots=True)
class ExtensionRefSpec:
    """An ExtensionRef filter before it is resolved against gw's policy objects."""

    group: str
    kind: str
    name: str
    field: str = ""


@dataclass(frozen=True, slots=True)
class FilterSpecs:
    """The filters of a rule or of one backendRef: compiled where possible, refs still to resolve."""

    types: tuple[str, ...] = ()  # filter types present, in order
    request_headers: HeaderModifier | None = None
    response_headers: HeaderModifier | None = None
    redirect: Redirect | None = None
    rewrite: URLRewrite | None = None
    cors: CORS | None = None
    mirrors: tuple[MirrorSpec, ...] = ()
    extensions: tuple[ExtensionRefSpec, ...] = ()
    external_auth: object = None  # gw.config.security_policy.ExtAuth, its backendRef still to resolve


NO_FILTERS = FilterSpecs()


# The source file a reload adds for objects whose running version it keeps (gw.config.fallback).
KEPT_FILE = "(running version kept)"


@dataclass(frozen=True, slots=True)
class RouteRule:
    index: int  # position in spec.rules
    matches: tuple[RouteMatch, ...]
    backend_refs: tuple[BackendRefSpec, ...]
    name: str | None = None
    request_timeout: float | None = None  # seconds; 0.0 = disabled ("0s"), None = not set
    backend_timeout: float | None = None
    # Set when a value of the rule is invalid or unsupported: the rule is dropped (the spec's
    # "Dropped Rule" approach to a PartiallyInvalid route), and the route's status says why.
    invalid_reason: str | None = None
    filters: FilterSpecs = NO_FILTERS
    retry: Retry | None = None
    session_persistence: SessionPersistence | None = None  # the rule's own (gw.config.session)


@dataclass(frozen=True, slots=True)
class HTTPRoute:
    meta: Meta
    parent_refs: tuple[ParentRef, ...]
    hostnames: tuple[str, ...]
    rules: tuple[RouteRule, ...]  # the valid rules, the ones served
    max_body_size: int | None = None  # from the gw.dev/max-body-size annotation
    dropped: tuple[RouteRule, ...] = ()  # rules with an invalid value (invalid_reason says which)


@dataclass(frozen=True, slots=True)
class ServicePort:
    port: int
    name: str = ""
    target_port: int | str | None = None
    protocol: str = "TCP"


@dataclass(frozen=True, slots=True)
class Service:
    meta: Meta
    ports: tuple[ServicePort, ...]
    session_affinity: str = "None"  # spec.sessionAffinity: None | ClientIP (conflicts with sessionPersistence)


@dataclass(frozen=True, slots=True)
class SliceEndpoint:
    addresses: tuple[str, ...]
    ready: bool = True


@dataclass(frozen=True, slots=True)
class SlicePort:
    port: int | None
    name: str = ""
    protocol: str = "TCP"


@dataclass(frozen=True, slots=True)
class EndpointSlice:
    meta: Meta
    service_name: str  # the kubernetes.io/service-name label
    ports: tuple[SlicePort, ...]
    endpoints: tuple[SliceEndpoint, ...]


@dataclass(frozen=True, slots=True)
class StaticEndpoint:
    address: str
    port: int
    weight: int = 1


@dataclass(frozen=True, slots=True)
class StaticBackend:
    """gw.dev/v1alpha1 kind Backend: static addresses (IPs or DNS names) for use outside Kubernetes.

    StaticBackend in code, apart from gw.config.model.Backend: what a Service or this object
    compiles into, the endpoints requests are balanced over.
    """

    meta: Meta
    endpoints: tuple[StaticEndpoint, ...]


@dataclass(frozen=True, slots=True)
class GrantFrom:
    group: str
    kind: str
    namespace: str


@dataclass(frozen=True, slots=True)
class GrantTo:
    group: str
    kind: str
    name: str | None = None


@dataclass(frozen=True, slots=True)
class ReferenceGrant:
    meta: Meta
    from_: tuple[GrantFrom, ...]
    to: tuple[GrantTo, ...]


@dataclass(frozen=True, slots=True)
class Namespace:
    meta: Meta


@dataclass(frozen=True, slots=True)
class Secret:
    """A core Secret; gw reads kubernetes.io/tls ones (data tls.crt / tls.key, base64 in the manifest)."""

    meta: Meta
    type: str
    data: dict[str, bytes] = field(default_factory=dict, compare=False)


@dataclass(frozen=True, slots=True)
class ConfigMap:
    """A core ConfigMap; gw reads CA bundles from them (BackendTLSPolicy caCertificateRefs, key ca.crt)."""

    meta: Meta
    data: dict[str, bytes] = field(default_factory=dict, compare=False)  # data and binaryData


@dataclass(frozen=True, slots=True)
class Policy:
    """An object of a gw.dev kind other than Backend: a target for ExtensionRef filters."""

    meta: Meta
    spec: dict = field(default_factory=dict, compare=False)


Resource = (
    GatewayClass
    | Gateway
    | HTTPRoute
    | Service
    | EndpointSlice
    | StaticBackend
    | ReferenceGrant
    | Namespace
    | Secret
    | ConfigMap
    | Policy
    | RateLimitPolicy
    | BackendTrafficPolicy
    | BackendTLSPolicy
    | SecurityPolicy
)


@dataclass(slots=True)
class Resources:
    """Everything parsed from a config source, by kind, in source order."""

    gateway_classes: list[GatewayClass] = field(default_factory=list)
    gateways: list[Gateway] = field(default_factory=list)
    http_routes: list[HTTPRoute] = field(default_factory=list)
    services: list[Service] = field(default_factory=list)
    endpoint_slices: list[EndpointSlice] = field(default_factory=list)
    backends: list[StaticBackend] = field(default_factory=list)
    reference_grants: list[ReferenceGrant] = field(default_factory=list)
    namespaces: list[Namespace] = field(default_factory=list)
    secrets: list[Secret] = field(default_factory=list)
    config_maps: list[ConfigMap] = field(default_factory=list)
    policies: list[Policy] = field(default_factory=list)
    rate_limit_policies: list[RateLimitPolicy] = field(default_factory=list)
    backend_traffic_policies: list[BackendTrafficPolicy] = field(default_factory=list)
    backend_tls_policies: list[BackendTLSPolicy] = field(default_factory=list)
    security_policies: list[SecurityPolicy] = field(default_factory=list)
    # Kinds gw does not read (Deployments in the same manifests, ...): "Kind ns/name" per object.
    ignored: list[str] = field(default_factory=list)
    # Objects of gw's kinds refused as invalid: "Kind ns/name" (see gw.config.fallback).
    rejected: list[str] = field(default_factory=list)

    def groups(self) -> tuple[list[Resource], ...]:
        """Every kind's list of objects (the kinds gw reads, one list each)."""
        return (
            self.gateway_classes,
            self.gateways,
            self.http_routes,
            self.services,
            self.endpoint_slices,
            self.backends,
            self.reference_grants,
            self.namespaces,
            self.secrets,
            self.config_maps,
            self.policies,
            self.rate_limit_policies,
            self.backend_traffic_policies,
            self.backend_tls_policies,
            self.security_policies,
        )

    def objects(self) -> list[Resource]:
        return [obj for group in self.groups() for obj in group]

    def add(self, obj: Resource) -> None:
        bucket = {
            GatewayClass: self.gateway_classes,
            Gateway: self.gateways,
            HTTPRoute: self.http_routes,
            Service: self.services,
            EndpointSlice: self.endpoint_slices,
            StaticBackend: self.backends,
            ReferenceGrant: self.reference_grants,
            Namespace: self.namespaces,
            Secret: self.secrets,
            ConfigMap: self.config_maps,
            Policy: self.policies,
            RateLimitPolicy: self.rate_limit_policies,
            BackendTrafficPolicy: self.backend_traffic_policies,
            BackendTLSPolicy: self.backend_tls_policies,
            SecurityPolicy: self.security_policies,
        }[type(obj)]
        bucket.append(obj)  # type: ignore[arg-type]
