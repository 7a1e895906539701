"""Objects of a small cluster for the controller's tests: Gateway API CRDs, gw's GatewayClass, a Gateway, a route."""

from __future__ import annotations

from typing import Any

from gw.config import DEFAULT_CONTROLLER_NAME

Object = dict[str, Any]
GATEWAY_API = "gateway.networking.k8s.io/v1"
BUNDLE_VERSION = "gateway.networking.k8s.io/bundle-version"
GATEWAY_API_CRDS = ("gatewayclasses", "gateways", "httproutes", "referencegrants")
# Read too, but not installed by basic(): a CRD not installed is not judged (BackendTLSPolicy is v1 from v1.4).
OPTIONAL_CRDS = ("backendtlspolicies",)


def crd(plural: str, version: str | None = "v1.6.1") -> Object:
    """A Gateway API CRD as the release bundle installs it (None: without the bundle-version annotation)."""
    annotations = {"gateway.networking.k8s.io/channel": "standard"}
    if version is not None:
        annotations[BUNDLE_VERSION] = version
    return {"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
            "metadata": {"name": f"{plural}.gateway.networking.k8s.io", "annotations": annotations},
            "spec": {"group": "gateway.networking.k8s.io", "names": {"plural": plural}}}  # fmt: skip


def crds(version: str | None = "v1.6.1") -> list[Object]:
    return [crd(plural, version) for plural in GATEWAY_API_CRDS]


def gateway_class(name: str = "gw", controller: str = DEFAULT_CONTROLLER_NAME) -> Object:
    return {"apiVersion": GATEWAY_API, "kind": "GatewayClass", "metadata": {"name": name},
            "spec": {"controllerName": controller}}  # fmt: skip


def gateway(port: int, name: str = "web", class_name: str = "gw", namespace: str = "default") -> Object:
    return {
        "apiVersion": GATEWAY_API,
        "kind": "Gateway",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "gatewayClassName": class_name,
            "listeners": [
                {"name": "http", "port": port, "protocol": "HTTP", "allowedRoutes": {"namespaces": {"from": "All"}}}
            ],
        },
    }


def route(name: str, service: str, *, hostname: str = "", path: str = "/", gateway: str = "web",
          namespace: str = "default") -> Object:  # fmt: skip
    spec: Object = {
        "parentRefs": [{"name": gateway, "namespace": "default"}],
        "rules": [{"matches": [{"path": {"type": "PathPrefix", "value": path}}],
                   "backendRefs": [{"name": service, "port": 80}]}],
    }  # fmt: skip
    if hostname:
        spec["hostnames"] = [hostname]
    return {"apiVersion": GATEWAY_API, "kind": "HTTPRoute", "metadata": {"name": name, "namespace": namespace},
            "spec": spec}  # fmt: skip


def service(name: str, namespace: str = "default") -> Object:
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": namespace},
            "spec": {"ports": [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"}]}}  # fmt: skip


def endpoint_slice(service: str, ports: list[int] | int, *, name: str = "", address: str = "127.0.0.1",
                   namespace: str = "default", ready: bool = True) -> Object:  # fmt: skip
    """One endpoint per port (tests' upstreams share an address and differ by port: one slice each)."""
    port_list = ports if isinstance(ports, list) else [ports]
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": name or f"{service}-abcde",
            "namespace": namespace,
            "labels": {"kubernetes.io/service-name": service},
        },
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": port_list[0], "protocol": "TCP"}],
        "endpoints": [{"addresses": [address], "conditions": {"ready": ready}}],
    }


def basic(port: int, upstream_port: int) -> list[Object]:
    """CRDs at v1.6.1, GatewayClass, Gateway on `port`, route / → Service app (one endpoint: `upstream_port`)."""
    return [*crds(), gateway_class(), gateway(port), route("app", "app"), service("app"),
            endpoint_slice("app", upstream_port)]  # fmt: skip
