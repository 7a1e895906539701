"""Compile validated resources into the immutable CompiledConfig a worker serves.

Served Gateways → their listeners grouped by bound port → routes attached per listener → one
route table per port. Problems in single objects become errors and conditions and leave the
rest serving; only a config with nothing to serve raises.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from gw.config import model
from gw.config.attach import Attacher, Attachment
from gw.config.backends import BackendResolver, Unresolved
from gw.config.errors import Condition, ConfigError
from gw.config.resources import Gateway, HTTPRoute, Listener, Resources, RouteRule
from gw.config.validate import check_duplicates, check_listeners
from gw.routing.table import ListenerRoutes, RouteEntry, build_table

DEFAULT_CONTROLLER_NAME = "gw.dev/gateway-controller"


@dataclass(slots=True)
class LoadResult:
    """A compiled config plus what went wrong in it and the status of every object."""

    config: model.CompiledConfig
    errors: list[ConfigError]
    # "Kind namespace/name" → its Gateway API conditions (routes: one set per parent).
    conditions: dict[str, list[Condition]] = field(default_factory=dict)
    # "namespace/gateway/listener" → number of routes attached (the listener's attachedRoutes).
    attached_routes: dict[str, int] = field(default_factory=dict)
    resources: Resources | None = None


def compile_resources(
    resources: Resources,
    *,
    port_offset: int = 0,
    controller_name: str = DEFAULT_CONTROLLER_NAME,
    default_max_body_size: int = 0,
    gateway: str | None = None,
    errors: Iterable[ConfigError] = (),
    source: str = "",
    checksum: str = "",
) -> LoadResult:
    """Compile parsed resources. `gateway` ("namespace/name") serves that Gateway only.

    Raises ConfigError when nothing can be served (no Gateway of the class, no usable listener)
    or when two served Gateways declare the same port.
    """
    errors = [*errors, *check_duplicates(resources)]
    conditions: dict[str, list[Condition]] = {}
    served = _served_gateways(resources, controller_name, gateway, source)

    gateways: dict[tuple[str, str], tuple[Gateway, tuple[Listener, ...]]] = {}
    port_owner: dict[int, Gateway] = {}
    for gw in served:
        listeners, listener_errors = check_listeners(gw)
        errors += listener_errors
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
        gateways[(gw.meta.namespace, gw.meta.name)] = (gw, listeners)
        ok = len(listeners) == len(gw.listeners)
        conditions[gw.meta.label] = [
            Condition("Accepted", True, "Accepted" if ok else "ListenersNotValid"),
            Condition("Programmed", bool(listeners), "Programmed" if listeners else "Invalid"),
        ]
    if not any(listeners for _, listeners in gateways.values()):
        raise ConfigError(source, "", "", "no listener can be served: " + "; ".join(str(e) for e in errors))

    attacher = Attacher(gateways, resources.namespaces)
    resolver = BackendResolver(resources)
    known_gateways = {(g.meta.namespace, g.meta.name) for g in resources.gateways}
    per_listener: dict[tuple[str, str, str], list[RouteEntry]] = {}
    all_rules: list[model.Rule] = []
    for route in sorted(resources.http_routes, key=lambda r: (r.meta.created, r.meta.key)):
        attachments = _attach(route, attacher, known_gateways, conditions, errors)
        if not attachments:
            continue
        max_body = route.max_body_size if route.max_body_size is not None else default_max_body_size
        rules = [(spec, _compile_rule(route, spec, resolver, max_body, conditions, errors)) for spec in route.rules]
        route_conditions = conditions[route.meta.label]
        if not any(c.type == "ResolvedRefs" for c in route_conditions):
            route_conditions.append(Condition("ResolvedRefs", True, "ResolvedRefs"))
        all_rules += [rule for _, rule in rules]
        for att in attachments:
            entries = per_listener.setdefault((*_gw_key(att.gateway), att.listener.name), [])
            for spec, rule in rules:
                for m_index, match in enumerate(spec.matches):
                    order = (route.meta.created, route.meta.key, spec.index, m_index)
                    entries.append(RouteEntry(att.hostnames, match, rule, order))

    ports: dict[int, list[tuple[Gateway, Listener]]] = {}
    for gw, listeners in gateways.values():
        for li in listeners:
            ports.setdefault(li.port, []).append((gw, li))
    attached = {}
    port_configs = []
    for port in sorted(ports):
        routes = []
        for gw, li in ports[port]:
            entries = per_listener.get((*_gw_key(gw), li.name), [])
            attached[f"{gw.meta.key}/{li.name}"] = len({e.order[1] for e in entries})
            routes.append(ListenerRoutes(f"{gw.meta.key}/{li.name}", li.hostname, entries))
        port_configs.append(
            model.PortConfig(
                declared_port=port,
                bind_port=port + port_offset,
                protocol="HTTP",
                table=build_table(routes),
                listeners=tuple(r.name for r in routes),
            )
        )
    config = model.CompiledConfig(tuple(port_configs), tuple(all_rules), source, checksum)
    return LoadResult(config, errors, conditions, attached, resources)


def _gw_key(gw: Gateway) -> tuple[str, str]:
    return gw.meta.namespace, gw.meta.name


def _served_gateways(resources: Resources, controller_name: str, only: str | None, source: str) -> list[Gateway]:
    classes = {c.meta.name for c in resources.gateway_classes if c.controller_name == controller_name}
    served = [g for g in resources.gateways if g.class_name in classes]
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
    return served


def _attach(
    route: HTTPRoute,
    attacher: Attacher,
    known_gateways: set[tuple[str, str]],
    conditions: dict[str, list[Condition]],
    errors: list[ConfigError],
) -> list[Attachment]:
    attachments: list[Attachment] = []
    route_conditions = conditions.setdefault(route.meta.label, [])
    for i, ref in enumerate(route.parent_refs):
        if not attacher.is_ours(ref):
            if ref.kind == "Gateway" and (ref.namespace, ref.name) not in known_gateways:
                errors.append(
                    ConfigError(
                        route.meta.file,
                        route.meta.label,
                        f"spec.parentRefs[{i}]",
                        f"Gateway {ref.namespace}/{ref.name} not found",
                    )
                )
            continue  # another controller's Gateway: not ours to report on
        result = attacher.attach(route, ref)
        accepted = bool(result.attachments)
        route_conditions.append(Condition("Accepted", accepted, result.reason, result.message, result.parent))
        if not accepted:
            errors.append(
                ConfigError(
                    route.meta.file,
                    route.meta.label,
                    f"spec.parentRefs[{i}]",
                    f"not attached to {result.parent}: {result.message} ({result.reason})",
                )
            )
        for att in result.attachments:
            if att not in attachments:
                attachments.append(att)
    return attachments


def _compile_rule(
    route: HTTPRoute,
    spec: RouteRule,
    resolver: BackendResolver,
    max_body_size: int,
    conditions: dict[str, list[Condition]],
    errors: list[ConfigError],
) -> model.Rule:
    refs = []
    unresolved: list[str] = []
    for ref in spec.backend_refs:
        backend = resolver.resolve(route, ref)
        if isinstance(backend, Unresolved):
            unresolved.append(f"{backend.message} ({backend.reason})")
            conditions[route.meta.label].append(Condition("ResolvedRefs", False, backend.reason, backend.message))
            errors.append(
                ConfigError(
                    route.meta.file,
                    route.meta.label,
                    f"spec.rules[{spec.index}].backendRefs[{ref.index}]",
                    f"{backend.message} ({backend.reason}); requests sent to it get 500",
                )
            )
            refs.append(model.BackendRef(ref.label, ref.weight, None))
        else:
            refs.append(model.BackendRef(ref.label, ref.weight, backend))
    invalid = spec.invalid_reason
    if invalid is None:
        if not refs:
            invalid = "the rule has no backendRefs"
        elif all(r.backend is None for r in refs):
            invalid = "no backendRef can be resolved: " + "; ".join(unresolved)
        elif all(r.weight == 0 for r in refs):
            invalid = "every backendRef has weight 0"
    return model.Rule(
        route.meta.key,
        spec.index,
        refs,
        name=spec.name,
        max_body_size=max_body_size,
        request_timeout=spec.request_timeout,
        backend_timeout=spec.backend_timeout,
        invalid_reason=invalid,
    )
