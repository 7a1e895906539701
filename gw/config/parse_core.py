"""Parsers for Kubernetes core kinds (Service, EndpointSlice, Namespace, Secret, ConfigMap) and gw's static Backend."""

from __future__ import annotations

import base64
import binascii
from typing import Any

from gw.config import fields
from gw.config import validate as v
from gw.config.reader import Reader
from gw.config.resources import (
    NAMESPACE_NAME_LABEL,
    SERVICE_NAME_LABEL,
    ConfigMap,
    EndpointSlice,
    Meta,
    Namespace,
    Policy,
    Secret,
    Service,
    ServicePort,
    SliceEndpoint,
    SlicePort,
    StaticBackend,
    StaticEndpoint,
)


def parse_service(r: Reader, meta: Meta, spec: dict[str, Any], obj: Any, field: str) -> Service | None:
    ports = []
    for i, p in enumerate(r.list(spec.get("ports"), f"{field}.ports")):
        p_field = f"{field}.ports[{i}]"
        p = r.map(p, p_field)
        port = r.int(p, "port", p_field, required=True, lo=1, hi=65535)
        name = r.str(p, "name", p_field, default="") or ""
        target = p.get("targetPort")
        if target is not None and not isinstance(target, int | str):
            r.error(f"{p_field}.targetPort", "must be a port number or a port name")
            target = None
        protocol = r.str(p, "protocol", p_field, default="TCP") or "TCP"
        if port is not None:
            ports.append(ServicePort(port, name, target, protocol))
    affinity = r.str(spec, "sessionAffinity", field, default="None", choices=("None", "ClientIP")) or "None"
    return Service(meta, tuple(ports), affinity)


def parse_endpoint_slice(r: Reader, meta: Meta, spec: dict[str, Any], obj: Any, field: str) -> EndpointSlice | None:
    # EndpointSlice keeps its fields at the top level, not under spec.
    root = field.removesuffix("spec")
    service = meta.labels.get(SERVICE_NAME_LABEL)
    if not service:
        r.error(f"{root}metadata.labels[{SERVICE_NAME_LABEL}]", "is required: it names the Service of this slice")
        return None
    ports = []
    for i, p in enumerate(r.list(obj.get("ports"), f"{root}ports")):
        p_field = f"{root}ports[{i}]"
        p = r.map(p, p_field)
        port = r.int(p, "port", p_field, lo=1, hi=65535)
        ports.append(
            SlicePort(
                port,
                r.str(p, "name", p_field, default="") or "",
                r.str(p, "protocol", p_field, default="TCP") or "TCP",
            )
        )
    endpoints = []
    for i, e in enumerate(r.list(obj.get("endpoints"), f"{root}endpoints")):
        e_field = f"{root}endpoints[{i}]"
        e = r.map(e, e_field)
        addresses = []
        for j, a in enumerate(r.list(e.get("addresses"), f"{e_field}.addresses")):
            problem = v.check_address(a) if isinstance(a, str) else "must be a string"
            if problem:
                r.error(f"{e_field}.addresses[{j}]", problem)
            else:
                addresses.append(a)
        conditions = r.map(e.get("conditions"), f"{e_field}.conditions")
        ready = conditions.get("ready")
        if ready is not None and not isinstance(ready, bool):
            r.error(f"{e_field}.conditions.ready", "must be true or false")
            ready = False
        if addresses:
            # A missing ready condition means ready: consumers must treat unknown as ready.
            endpoints.append(SliceEndpoint(tuple(addresses), ready is not False))
    return EndpointSlice(meta, service, tuple(ports), tuple(endpoints))


def parse_backend(r: Reader, meta: Meta, spec: dict[str, Any], obj: Any, field: str) -> StaticBackend | None:
    before = r.count
    endpoints = []
    for i, e in enumerate(r.list(spec.get("endpoints"), f"{field}.endpoints")):
        e_field = f"{field}.endpoints[{i}]"
        e = r.map(e, e_field, fields.STATIC_ENDPOINT)
        address = r.str(e, "address", e_field, required=True, check=v.check_address)
        port = r.int(e, "port", e_field, required=True, lo=1, hi=65535)
        weight = r.int(e, "weight", e_field, default=1, lo=0, hi=1_000_000)
        if address is not None and port is not None and weight is not None:
            endpoints.append(StaticEndpoint(address, port, weight))
    if r.count != before:
        return None  # a half-read endpoint list would shift traffic silently; reject the Backend
    return StaticBackend(meta, tuple(endpoints))


def parse_namespace(r: Reader, meta: Meta, spec: dict[str, Any], obj: Any, field: str) -> Namespace:
    labels = {**meta.labels, NAMESPACE_NAME_LABEL: meta.name}
    return Namespace(Meta(meta.kind, meta.name, meta.namespace, meta.file, labels, meta.annotations))


def parse_secret(r: Reader, meta: Meta, spec: dict[str, Any], obj: Any, field: str) -> Secret | None:
    # Secrets keep data at the top level: data (base64) and stringData (plain), as kubectl accepts.
    root = field.removesuffix("spec")
    secret_type = r.str(obj, "type", root.rstrip("."), default="Opaque") or "Opaque"
    data: dict[str, bytes] = {}
    for key, value in r.map(obj.get("data"), f"{root}data").items():
        if not isinstance(value, str):
            r.error(f"{root}data.{key}", "must be a base64 string")
            continue
        try:
            data[str(key)] = base64.b64decode("".join(value.split()), validate=True)
        except (binascii.Error, ValueError):
            r.error(f"{root}data.{key}", "is not valid base64")
    for key, value in r.map(obj.get("stringData"), f"{root}stringData").items():
        if not isinstance(value, str):
            r.error(f"{root}stringData.{key}", "must be a string")
            continue
        data[str(key)] = value.encode()
    return Secret(meta, secret_type, data)


def parse_config_map(r: Reader, meta: Meta, spec: dict[str, Any], obj: Any, field: str) -> ConfigMap:
    # ConfigMaps keep data (text) and binaryData (base64) at the top level.
    root = field.removesuffix("spec")
    data: dict[str, bytes] = {}
    for key, value in r.map(obj.get("data"), f"{root}data").items():
        if not isinstance(value, str):
            r.error(f"{root}data.{key}", "must be a string")
            continue
        data[str(key)] = value.encode()
    for key, value in r.map(obj.get("binaryData"), f"{root}binaryData").items():
        if not isinstance(value, str):
            r.error(f"{root}binaryData.{key}", "must be a base64 string")
            continue
        try:
            data[str(key)] = base64.b64decode("".join(value.split()), validate=True)
        except (binascii.Error, ValueError):
            r.error(f"{root}binaryData.{key}", "is not valid base64")
    return ConfigMap(meta, data)


def parse_policy(r: Reader, meta: Meta, spec: dict[str, Any], obj: Any, field: str) -> Policy:
    return Policy(meta, dict(spec))
