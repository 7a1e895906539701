"""Resolve backendRefs to Backends: Service port → EndpointSlice endpoints, or gw's static Backend.

Backends are shared between every rule that names the same target, so balancing position and
passive endpoint health are per target, not per rule.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from gw.config import model
from gw.config.resources import (
    CORE_GROUP,
    GATEWAY_GROUP,
    GW_GROUP,
    BackendRefSpec,
    EndpointSlice,
    HTTPRoute,
    Resources,
    Service,
    StaticBackend,
)

# Gateway API condition reasons for ResolvedRefs=False.
INVALID_KIND = "InvalidKind"
BACKEND_NOT_FOUND = "BackendNotFound"
REF_NOT_PERMITTED = "RefNotPermitted"


def backend_name(kind: str, namespace: str, name: str, port: int | None = None) -> str:
    """The name of the model.Backend a Service port or gw Backend compiles into: its identity in
    logs, metrics and Redis (BackendTrafficPolicy state), the same for every rule reaching it."""
    return f"{kind} {namespace}/{name}" + (f":{port}" if port is not None else "")


@dataclass(frozen=True, slots=True)
class Unresolved:
    """Why a backendRef has no backend: a ResolvedRefs reason and a message naming the target."""

    reason: str
    message: str


class BackendResolver:
    """Indexes Services, EndpointSlices, Backends and ReferenceGrants once; resolves refs by key."""

    def __init__(self, resources: Resources) -> None:
        self._services = {(s.meta.namespace, s.meta.name): s for s in resources.services}
        self._backends = {(b.meta.namespace, b.meta.name): b for b in resources.backends}
        self._slices: dict[tuple[str, str], list[EndpointSlice]] = {}
        for s in resources.endpoint_slices:
            self._slices.setdefault((s.meta.namespace, s.service_name), []).append(s)
        self._grants = resources.reference_grants
        self._cache: dict[tuple[str, str, str, int | None], model.Backend] = {}

    def resolve(self, route: HTTPRoute, ref: BackendRefSpec) -> model.Backend | Unresolved:
        target = (ref.group, ref.kind)
        if target not in ((CORE_GROUP, "Service"), (GW_GROUP, "Backend")):
            group = ref.group or "core"
            return Unresolved(INVALID_KIND, f"{ref.kind} ({group}) is not a backend kind gw supports")
        if ref.namespace != route.meta.namespace and not self.grant_allows(route, ref):
            return Unresolved(
                REF_NOT_PERMITTED,
                f"{ref.label} is in another namespace and no ReferenceGrant in {ref.namespace!r} allows it",
            )
        key = (ref.kind, ref.namespace, ref.name, ref.port if ref.kind == "Service" else None)
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        result = self._service_backend(ref) if ref.kind == "Service" else self._static_backend(ref)
        if isinstance(result, model.Backend):
            self._cache[key] = result
        return result

    def resolve_own(self, owner: HTTPRoute, refs: Sequence[BackendRefSpec]) -> model.Backend | Unresolved:
        """One backend over the endpoints of every ref (an external authorization service's), with
        its own balancer: calls to it never shift the round robin of requests to the same target."""
        endpoints: dict[tuple[str, int], model.Endpoint] = {}
        names = []
        for ref in refs:
            backend = self.resolve(owner, ref)
            if isinstance(backend, Unresolved):
                return backend
            names.append(backend.name)  # one target: its name, which a BackendTLSPolicy finds it by
            for e in backend.endpoints:
                endpoints.setdefault(e.key, model.Endpoint(e.address, e.port, e.weight))
        return model.Backend(" + ".join(names), list(endpoints.values()))

    def grant_allows(self, route: HTTPRoute, ref: BackendRefSpec) -> bool:
        for grant in self._grants:
            if grant.meta.namespace != ref.namespace:
                continue
            if not any(
                f.group == GATEWAY_GROUP and f.kind == "HTTPRoute" and f.namespace == route.meta.namespace
                for f in grant.from_
            ):
                continue
            if any(t.group == ref.group and t.kind == ref.kind and t.name in (None, ref.name) for t in grant.to):
                return True
        return False

    def _service_backend(self, ref: BackendRefSpec) -> model.Backend | Unresolved:
        service: Service | None = self._services.get((ref.namespace, ref.name))
        if service is None:
            return Unresolved(BACKEND_NOT_FOUND, f"Service {ref.namespace}/{ref.name} not found")
        port = next((p for p in service.ports if p.port == ref.port), None)
        if port is None:
            return Unresolved(BACKEND_NOT_FOUND, f"Service {ref.namespace}/{ref.name} has no port {ref.port}")
        endpoints: dict[tuple[str, int], model.Endpoint] = {}
        for slice_ in self._slices.get((ref.namespace, ref.name), ()):
            # The Service port and the slice port are the same port when their names agree
            # (both empty for a Service with a single unnamed port).
            slice_port = next((p for p in slice_.ports if p.name == port.name), None)
            if slice_port is None or slice_port.port is None:
                continue
            for endpoint in slice_.endpoints:
                if not endpoint.ready:
                    continue
                for address in endpoint.addresses:
                    endpoints.setdefault((address, slice_port.port), model.Endpoint(address, slice_port.port))
        return model.Backend(backend_name("Service", ref.namespace, ref.name, port.port), list(endpoints.values()))

    def _static_backend(self, ref: BackendRefSpec) -> model.Backend | Unresolved:
        backend: StaticBackend | None = self._backends.get((ref.namespace, ref.name))
        if backend is None:
            return Unresolved(BACKEND_NOT_FOUND, f"Backend {ref.namespace}/{ref.name} not found")
        endpoints = [model.Endpoint(e.address, e.port, e.weight) for e in backend.endpoints if e.weight > 0]
        return model.Backend(backend_name("Backend", ref.namespace, ref.name), endpoints)
