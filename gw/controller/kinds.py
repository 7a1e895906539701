"""The Kubernetes kinds the controller reads and writes, and the API paths they live at."""

from __future__ import annotations

from dataclasses import dataclass

from gw.config.resources import TLS_SECRET_TYPE


@dataclass(frozen=True, slots=True)
class Kind:
    """One resource type of the API server: its kind, its apiVersion and its collection's URL name."""

    kind: str
    api_version: str  # "gateway.networking.k8s.io/v1", "v1"
    plural: str
    namespaced: bool = True
    # Narrows the list/watch on the server (Secrets: by type; the API has no "these names").
    field_selector: str = ""
    # The cache's name for what this watch holds, when two watches read one kind (Secrets by type):
    # a relist replaces its own objects only. Empty: the kind.
    store: str = ""

    @property
    def cache_name(self) -> str:
        return self.store or self.kind

    @property
    def label(self) -> str:
        """The watch's name in /status, /readyz and logs: the plural, and its selector for a second watch of a kind."""
        return f"{self.plural} ({self.field_selector})" if self.store else self.plural

    @property
    def group(self) -> str:
        group, _, _ = self.api_version.rpartition("/")
        return group

    def path(self, namespace: str = "", name: str = "", subresource: str = "") -> str:
        """The URL path of the collection (every namespace when `namespace` is empty) or of one object."""
        base = f"/apis/{self.api_version}" if self.group else f"/api/{self.api_version}"
        if namespace and self.namespaced:
            base += f"/namespaces/{namespace}"
        base += f"/{self.plural}"
        if name:
            base += f"/{name}"
        if subresource:
            base += f"/{subresource}"
        return base


GATEWAY_API = "gateway.networking.k8s.io/v1"
GW_API = "gw.dev/v1alpha1"

GATEWAY_CLASS = Kind("GatewayClass", GATEWAY_API, "gatewayclasses", namespaced=False)
GATEWAY = Kind("Gateway", GATEWAY_API, "gateways")
HTTP_ROUTE = Kind("HTTPRoute", GATEWAY_API, "httproutes")
REFERENCE_GRANT = Kind("ReferenceGrant", "gateway.networking.k8s.io/v1beta1", "referencegrants")
SERVICE = Kind("Service", "v1", "services")
ENDPOINT_SLICE = Kind("EndpointSlice", "discovery.k8s.io/v1", "endpointslices")
SECRET = Kind("Secret", "v1", "secrets", field_selector=f"type={TLS_SECRET_TYPE}")
# SecurityPolicies' API keys and htpasswd files, and BackendTLSPolicies' CA bundles, are Opaque
# Secrets (the type Kubernetes gives a Secret written without one). Why a second watch by type,
# not every Secret, nor a watch per referenced name, nor a label users must add:
# - privilege: RBAC cannot narrow list/watch by selector, and resourceNames cannot follow names
#   that policies choose at run time, so each of these needs list/watch on secrets cluster-wide,
#   which listeners' certificateRefs (any namespace, with a ReferenceGrant) needed already: no new
#   verb or resource. (GET by name would add `get` on every Secret, as wide, and need polling.)
# - traffic: the type selector leaves out the bulk and the churn of a cluster's Secrets
#   (service-account tokens, Helm's release Secrets of hundreds of KB each, image-pull
#   dockerconfigs, bootstrap tokens), which watching all Secrets, as Envoy Gateway does, streams.
#   One watch per referenced Secret (fieldSelector metadata.name) would stream less, but holds a
#   connection to the API server per Secret, and needs starting and syncing as policies change
#   before a render, or a policy's rules answer 500 in a version published meanwhile.
# - no burden: a label selector would make users label every auth Secret, or see 500s.
# Only the Secrets a served policy or listener names are rendered (gw.controller.render), so the
# others never reach Redis; held in memory, they are no more than the RBAC grant reads.
OPAQUE_SECRET = Kind("Secret", "v1", "secrets", field_selector="type=Opaque", store="Secret/Opaque")
NAMESPACE = Kind("Namespace", "v1", "namespaces", namespaced=False)
BACKEND = Kind("Backend", GW_API, "backends")
RATE_LIMIT_POLICY = Kind("RateLimitPolicy", GW_API, "ratelimitpolicies")
BACKEND_TRAFFIC_POLICY = Kind("BackendTrafficPolicy", GW_API, "backendtrafficpolicies")
BACKEND_TLS_POLICY = Kind("BackendTLSPolicy", GATEWAY_API, "backendtlspolicies")
SECURITY_POLICY = Kind("SecurityPolicy", GW_API, "securitypolicies")
CONFIG_MAP = Kind("ConfigMap", "v1", "configmaps")  # CA bundles: BackendTLSPolicy, Gateway spec.tls.frontend
LEASE = Kind("Lease", "coordination.k8s.io/v1", "leases")

# Everything the config is rendered from. GRPCRoute and the other route kinds join when gw.config
# parses them (today it lists them as ignored): the controller renders what `gw check` reads.
WATCHED: tuple[Kind, ...] = (
    GATEWAY_CLASS,
    GATEWAY,
    HTTP_ROUTE,
    REFERENCE_GRANT,
    SERVICE,
    ENDPOINT_SLICE,
    SECRET,
    OPAQUE_SECRET,
    NAMESPACE,
    BACKEND,
    RATE_LIMIT_POLICY,
    BACKEND_TRAFFIC_POLICY,
    BACKEND_TLS_POLICY,
    SECURITY_POLICY,
    CONFIG_MAP,
)

BY_NAME = {k.kind: k for k in WATCHED if not k.store}  # a kind's status is written through its main watch
