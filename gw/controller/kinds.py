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
    # Narrows the list/watch on the server (Secrets: TLS ones only; the API has no "these names").
    field_selector: str = ""

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
NAMESPACE = Kind("Namespace", "v1", "namespaces", namespaced=False)
BACKEND = Kind("Backend", GW_API, "backends")
RATE_LIMIT_POLICY = Kind("RateLimitPolicy", GW_API, "ratelimitpolicies")
BACKEND_TRAFFIC_POLICY = Kind("BackendTrafficPolicy", GW_API, "backendtrafficpolicies")
BACKEND_TLS_POLICY = Kind("BackendTLSPolicy", GATEWAY_API, "backendtlspolicies")
CONFIG_MAP = Kind("ConfigMap", "v1", "configmaps")  # BackendTLSPolicy CA bundles
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
    NAMESPACE,
    BACKEND,
    RATE_LIMIT_POLICY,
    BACKEND_TRAFFIC_POLICY,
    BACKEND_TLS_POLICY,
    CONFIG_MAP,
)

BY_NAME = {k.kind: k for k in WATCHED}
