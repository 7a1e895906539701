"""Render the cached cluster objects that concern gw as the YAML files `gw run` serves.

Only GatewayClasses with gw's controllerName and what hangs off them: their Gateways, the
HTTPRoutes attached to those, the Services, EndpointSlices and Backends the routes and policies
name, the TLS Secrets the listeners name, the CA ConfigMaps (or Secrets) of the Gateways'
spec.tls.frontend, gw's own policy kinds, BackendTLSPolicies and the ConfigMaps (or Secrets) their
caCertificateRefs name, the Secrets (API keys, htpasswd) of the
SecurityPolicies that target gw's Gateways and routes, ReferenceGrants, and Namespaces when a
listener selects namespaces by label. A Secret no selected object names is never rendered: the
cache holds every TLS and Opaque Secret of the cluster (gw.controller.kinds), Redis only these.
Which object is valid, attached or served is not decided here: the files go through the same
parse and compile as `gw check` and `gw run`.

Each object is one file, `Kind/namespace/name.yaml`, written with sorted keys: equal objects give
equal bytes, so an unchanged cluster gives an unchanged checksum and no new version. What the
API server adds (status, resourceVersion, uid, generation, managedFields, kubectl's
last-applied copy) is left out; creationTimestamp stays, as route precedence (and GEP-713 policy
precedence) orders by it.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import yaml

from gw.config.resources import GATEWAY_GROUP, GW_GROUP, SERVICE_NAME_LABEL
from gw.config.snapshot import Snapshot
from gw.controller import kinds
from gw.controller.cache import Cache, Key, Object

KEPT_METADATA = ("name", "namespace", "labels", "annotations", "creationTimestamp")
DROPPED_ANNOTATIONS = frozenset({"kubectl.kubernetes.io/last-applied-configuration"})
SOURCE = "cluster"  # the snapshot's name in compile errors, /status and `gw config history`

_Dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


def clean(obj: Object) -> Object:
    """The object as a user would write it: no status, no server-managed metadata."""
    meta = obj.get("metadata") or {}
    kept: dict[str, Any] = {k: meta[k] for k in KEPT_METADATA if meta.get(k)}
    if "annotations" in kept:
        annotations = {k: v for k, v in kept["annotations"].items() if k not in DROPPED_ANNOTATIONS}
        if annotations:
            kept["annotations"] = annotations
        else:
            del kept["annotations"]
    return {**{k: v for k, v in obj.items() if k not in ("metadata", "status")}, "metadata": kept}


def file_name(kind: str, key: Key) -> str:
    namespace, name = key
    return f"{kind}/{namespace}/{name}.yaml" if namespace else f"{kind}/{name}.yaml"


def selection(cache: Cache, controller_name: str) -> dict[str, list[Key]]:
    """The objects gw's config is made of, per kind."""
    classes = {
        key[1]
        for key, obj in cache.of("GatewayClass").items()
        if (obj.get("spec") or {}).get("controllerName") == controller_name
    }
    gateways = [
        key for key, obj in cache.of("Gateway").items() if (obj.get("spec") or {}).get("gatewayClassName") in classes
    ]
    ours = set(gateways)
    routes = [key for key, obj in cache.of("HTTPRoute").items() if ours & set(_parents(obj))]
    policy_kinds = (kinds.RATE_LIMIT_POLICY, kinds.BACKEND_TRAFFIC_POLICY, kinds.BACKEND_TLS_POLICY,
                    kinds.SECURITY_POLICY)  # fmt: skip
    policies = {k.kind: list(cache.of(k.kind)) for k in policy_kinds}
    backends: set[tuple[str, str, str]] = set()  # (kind, namespace, name)
    for key in routes:
        backends.update(_backend_refs(cache.of("HTTPRoute")[key]))
    for kind, keys in policies.items():
        for key in keys:
            backends.update(_targets(cache.of(kind)[key]))
    for key in policies["SecurityPolicy"]:
        policy = cache.of("SecurityPolicy")[key]
        ext_auth = (policy.get("spec") or {}).get("extAuth")
        if isinstance(ext_auth, dict):  # the external authorization service's Service or Backend
            backends.update(_backend_refs({"metadata": policy.get("metadata"), "spec": ext_auth}))
    services = sorted((ns, name) for kind, ns, name in backends if kind == "Service")
    wanted = set(services)
    slices = [
        key
        for key, obj in cache.of("EndpointSlice").items()
        if (key[0], ((obj.get("metadata") or {}).get("labels") or {}).get(SERVICE_NAME_LABEL, "")) in wanted
    ]
    secrets: set[Key] = set()
    config_maps: set[Key] = set()
    for key in policies["BackendTLSPolicy"]:
        for kind, ref in _ca_refs(cache.of("BackendTLSPolicy")[key]):
            (config_maps if kind == "ConfigMap" else secrets).add((key[0], ref))
    served = {("Gateway", *key) for key in gateways} | {("HTTPRoute", *key) for key in routes}
    for key in policies["SecurityPolicy"]:
        policy = cache.of("SecurityPolicy")[key]
        if served & set(_security_targets(policy)):
            secrets.update((key[0], name) for name in _credential_refs(policy))
    selects_namespaces = False
    for key in gateways:
        spec = cache.of("Gateway")[key].get("spec") or {}
        client = ((spec.get("tls") or {}).get("backend") or {}).get("clientCertificateRef")
        if isinstance(client, dict) and client.get("kind", "Secret") == "Secret" and not client.get("group"):
            secrets.add((str(client.get("namespace") or key[0]), str(client.get("name"))))  # mTLS to backends
        for kind, namespace, name in _frontend_ca_refs(spec, key[0]):  # clients' CAs (spec.tls.frontend)
            (config_maps if kind == "ConfigMap" else secrets).add((namespace, name))
        for listener in spec.get("listeners") or ():
            if not isinstance(listener, dict):
                continue
            allowed = ((listener.get("allowedRoutes") or {}).get("namespaces") or {}).get("from")
            selects_namespaces = selects_namespaces or allowed == "Selector"
            for ref in (listener.get("tls") or {}).get("certificateRefs") or ():
                if isinstance(ref, dict) and ref.get("kind", "Secret") == "Secret" and not ref.get("group"):
                    secrets.add((str(ref.get("namespace") or key[0]), str(ref.get("name"))))
    known_secrets = all_secrets(cache)
    return {
        "GatewayClass": [("", name) for name in classes],
        "Gateway": gateways,
        "HTTPRoute": routes,
        "ReferenceGrant": list(cache.of("ReferenceGrant")),
        "Service": [key for key in services if key in cache.of("Service")],
        "EndpointSlice": slices,
        "Backend": [
            (ns, name) for kind, ns, name in backends if kind == "Backend" and (ns, name) in cache.of("Backend")
        ],
        "Secret": [key for key in secrets if key in known_secrets],
        "ConfigMap": [key for key in config_maps if key in cache.of("ConfigMap")],
        "Namespace": list(cache.of("Namespace")) if selects_namespaces else [],
        **policies,
    }


def render(cache: Cache, controller_name: str) -> Snapshot:
    """The snapshot of the selected objects, one YAML file each, in a fixed order."""
    files = []
    for kind, keys in selection(cache, controller_name).items():
        store = all_secrets(cache) if kind == "Secret" else cache.of(kind)
        for key in set(keys):
            data = yaml.dump(clean(store[key]), Dumper=_Dumper, sort_keys=True, default_flow_style=False)
            files.append((file_name(kind, key), data.encode()))
    files.sort()
    return Snapshot.of(files, SOURCE)


def all_secrets(cache: Cache) -> dict[Key, Object]:
    """The Secrets of both watches (TLS, Opaque): the type selectors keep them apart."""
    return {**cache.of(kinds.OPAQUE_SECRET.cache_name), **cache.of(kinds.SECRET.cache_name)}


def _parents(route: Object) -> Iterator[Key]:
    namespace = (route.get("metadata") or {}).get("namespace") or "default"
    for ref in (route.get("spec") or {}).get("parentRefs") or ():
        if not isinstance(ref, dict):
            continue
        if ref.get("group", GATEWAY_GROUP) == GATEWAY_GROUP and ref.get("kind", "Gateway") == "Gateway":
            yield str(ref.get("namespace") or namespace), str(ref.get("name"))


def _backend_refs(route: Object) -> Iterator[tuple[str, str, str]]:
    """(kind, namespace, name) of every backendRef in the route: rules' and filters' (mirrors)."""
    namespace = (route.get("metadata") or {}).get("namespace") or "default"

    def walk(value: Any, is_ref: bool) -> Iterator[tuple[str, str, str]]:
        if isinstance(value, dict):
            if is_ref and isinstance(value.get("name"), str):
                group = value.get("group") or ""
                kind = value.get("kind") or "Service"
                if (group, kind) in (("", "Service"), (GW_GROUP, "Backend")):
                    yield kind, str(value.get("namespace") or namespace), value["name"]
            for k, v in value.items():
                if k == "backendRefs" and isinstance(v, list):
                    for item in v:
                        yield from walk(item, True)
                else:
                    yield from walk(v, k == "backendRef")
        elif isinstance(value, list):
            for item in value:
                yield from walk(item, False)

    yield from walk(route.get("spec") or {}, False)


def _ca_refs(policy: Object) -> Iterator[tuple[str, str]]:
    """(kind, name) of a BackendTLSPolicy's caCertificateRefs that gw reads (in the policy's namespace)."""
    validation = (policy.get("spec") or {}).get("validation") or {}
    for ref in validation.get("caCertificateRefs") or ():
        kind, name = (ref.get("kind"), ref.get("name")) if isinstance(ref, dict) else (None, None)
        if kind in ("ConfigMap", "Secret") and not ref.get("group") and isinstance(name, str):
            yield kind, name


def _frontend_ca_refs(spec: Object, namespace: str) -> Iterator[tuple[str, str, str]]:
    """(kind, namespace, name) of the caCertificateRefs of a Gateway's spec.tls.frontend (default, perPort)."""
    frontend = (spec.get("tls") or {}).get("frontend") or {}
    if not isinstance(frontend, dict):
        return
    configs = [frontend.get("default")]
    configs += [p.get("tls") for p in frontend.get("perPort") or () if isinstance(p, dict)]
    for config in configs:
        validation = (config.get("validation") if isinstance(config, dict) else None) or {}
        for ref in validation.get("caCertificateRefs") or () if isinstance(validation, dict) else ():
            kind, name = (ref.get("kind"), ref.get("name")) if isinstance(ref, dict) else (None, None)
            if kind in ("ConfigMap", "Secret") and not ref.get("group") and isinstance(name, str):
                yield kind, str(ref.get("namespace") or namespace), name


def _targets(policy: Object) -> Iterator[tuple[str, str, str]]:
    namespace = (policy.get("metadata") or {}).get("namespace") or "default"
    for ref in (policy.get("spec") or {}).get("targetRefs") or ():
        if isinstance(ref, dict) and ref.get("kind") in ("Service", "Backend") and isinstance(ref.get("name"), str):
            yield ref["kind"], namespace, ref["name"]


def _security_targets(policy: Object) -> Iterator[tuple[str, str, str]]:
    """(kind, namespace, name) of a SecurityPolicy's Gateway and HTTPRoute targets (its namespace: GEP-713)."""
    namespace = (policy.get("metadata") or {}).get("namespace") or "default"
    for ref in (policy.get("spec") or {}).get("targetRefs") or ():
        if isinstance(ref, dict) and ref.get("kind") in ("Gateway", "HTTPRoute") and isinstance(ref.get("name"), str):
            yield ref["kind"], namespace, ref["name"]


def _credential_refs(policy: Object) -> Iterator[str]:
    """Names of the Secrets a SecurityPolicy reads, in its namespace: apiKeyAuth's keys, basicAuth's htpasswd."""
    spec = policy.get("spec") or {}
    api_key = spec.get("apiKeyAuth")
    refs = list(api_key.get("credentialRefs") or ()) if isinstance(api_key, dict) else []
    basic = spec.get("basicAuth")
    if isinstance(basic, dict):
        refs.append(basic.get("users"))
    for ref in refs:
        if (isinstance(ref, dict) and ref.get("kind", "Secret") == "Secret" and ref.get("group", "") in ("", "core")
                and isinstance(ref.get("name"), str)):  # fmt: skip
            yield ref["name"]
