"""Compile validated resources into the immutable CompiledConfig a worker serves.

Served Gateways → their listeners grouped by bound port → routes attached per listener → one
route table per port. Problems in single objects become errors and conditions and leave the
rest serving; only a config with nothing to serve raises.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass, field

from gw.config import model
from gw.config.attach import Attacher, Attachment
from gw.config.backend_attach import attach_backend_policies
from gw.config.backend_tls_attach import attach_backend_tls
from gw.config.backends import BackendResolver
from gw.config.errors import Condition, ConfigError
from gw.config.filters import DATA_PLANE_FEATURES
from gw.config.gateways import serve_gateways
from gw.config.policy_attach import CompiledRoute, attach_extension_rate_limits, attach_rate_limits
from gw.config.resources import Gateway, HTTPRoute, Listener, Resources
from gw.config.rules import RuleCompiler
from gw.config.security_attach import attach_security_policies
from gw.config.session import settle_sessions
from gw.config.tls import port_tls
from gw.config.validate import check_duplicates
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
    # "namespace/gateway/listener" → the listener's conditions (Accepted, Conflicted, ResolvedRefs, Programmed).
    listener_conditions: dict[str, list[Condition]] = field(default_factory=dict)
    # "Kind namespace/name" of a policy with ancestors in its status (BackendTLSPolicy) → the
    # Gateways ((namespace, name)) it is reported under.
    ancestors: dict[str, list[tuple[str, str]]] = field(default_factory=dict)


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
    features: frozenset[str] = DATA_PLANE_FEATURES,
) -> LoadResult:
    """Compile parsed resources. `gateway` ("namespace/name") serves that Gateway only.

    `features` names the filters and protocols the data plane implements (gw.config.filters):
    rules needing others answer 500, listeners needing others are not served.
    Raises ConfigError when nothing can be served (no Gateway of the class, no usable listener)
    or when two served Gateways declare the same port.
    """
    errors = [*errors, *check_duplicates(resources)]
    conditions: dict[str, list[Condition]] = {}
    served = serve_gateways(
        resources,
        controller_name=controller_name,
        only=gateway or None,
        features=features,
        source=source,
        errors=errors,
        conditions=conditions,
    )
    gateways = served.gateways
    if not any(listeners for _, listeners in gateways.values()):
        raise ConfigError(source, "", "", "no listener can be served: " + "; ".join(str(e) for e in errors))

    attacher = Attacher(gateways, resources.namespaces)
    resolver = BackendResolver(resources)
    rules_compiler = RuleCompiler(resolver, resources.policies, features, resources.rate_limit_policies)
    known_gateways = {(g.meta.namespace, g.meta.name) for g in resources.gateways}
    per_listener: dict[tuple[str, str, str], list[RouteEntry]] = {}
    all_rules: list[model.Rule] = []
    compiled_routes: list[CompiledRoute] = []
    for route in sorted(resources.http_routes, key=lambda r: (r.meta.created, r.meta.key)):
        attachments = _attach(route, attacher, known_gateways, conditions, errors)
        if not attachments:
            continue
        if route.dropped and not _report_dropped(route, conditions[route.meta.label]):
            continue  # every rule is invalid: the route is not accepted and serves nothing
        max_body = route.max_body_size if route.max_body_size is not None else default_max_body_size
        rules = [(spec, rules_compiler.compile(route, spec, max_body, conditions, errors)) for spec in route.rules]
        route_conditions = conditions[route.meta.label]
        if not any(c.type == "ResolvedRefs" for c in route_conditions):
            route_conditions.append(Condition("ResolvedRefs", True, "ResolvedRefs"))
        all_rules += [rule for _, rule in rules]
        compiled_routes.append(CompiledRoute(route, rules, {_gw_key(att.gateway) for att in attachments}))
        for att in attachments:
            entries = per_listener.setdefault((*_gw_key(att.gateway), att.listener.name), [])
            for spec, rule in rules:
                for m_index, match in enumerate(spec.matches):
                    order = (route.meta.created, route.meta.key, spec.index, m_index)
                    entries.append(RouteEntry(att.hostnames, match, rule, order))

    attach_security_policies(
        resources.security_policies, compiled_routes, resources.secrets, conditions, errors, resolver
    )
    attach_rate_limits(resources.rate_limit_policies, compiled_routes, conditions, errors)
    attach_extension_rate_limits(compiled_routes)
    attach_backend_policies(resources.backend_traffic_policies, compiled_routes, resources.services, conditions, errors)
    ancestors: dict[str, list[tuple[str, str]]] = {}
    attach_backend_tls(
        resources.backend_tls_policies, compiled_routes, resources.services,
        resources.config_maps, resources.secrets, conditions, ancestors, errors, served.client_certificates,
    )  # fmt: skip
    # After backend policies: a rule's own sessionPersistence overrides its backends' (GEP-1619).
    settle_sessions(compiled_routes, resources.services, features, conditions, errors)

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
        protocol = ports[port][0][1].protocol  # listeners sharing a port share it (check_listeners)
        tls = None
        if protocol == "HTTPS":
            tls = port_tls([(li, served.certificates.get(f"{gw.meta.key}/{li.name}", ())) for gw, li in ports[port]])
            client = served.client_validation.get(port)
            if tls is not None and client is not None:
                tls = dataclasses.replace(tls, client=client)
        port_configs.append(
            model.PortConfig(
                declared_port=port,
                bind_port=port + port_offset,
                protocol=protocol,
                table=build_table(routes),
                listeners=tuple(r.name for r in routes),
                tls=tls,
            )
        )
    for gw, _ in gateways.values():
        for li in gw.listeners:
            attached.setdefault(f"{gw.meta.key}/{li.name}", 0)
    config = model.CompiledConfig(tuple(port_configs), tuple(all_rules), source, checksum)
    return LoadResult(config, errors, conditions, attached, resources, served.listener_conditions, ancestors)


def _report_dropped(route: HTTPRoute, route_conditions: list[Condition]) -> bool:
    """Status for a route with invalid rules; False when none is left to serve.

    gw takes the spec's "Dropped Rule" approach: invalid rules are left out (their requests may
    match another rule or route) and the route's other rules are served. A route with no valid rule
    left is not Accepted (UnsupportedValue).
    """
    dropped, why = describe_dropped(route)
    if route.rules:
        message = f"Dropped Rule {dropped}: {why}"
        route_conditions.append(Condition("PartiallyInvalid", True, "UnsupportedValue", message))
        return True
    message = f"every rule is invalid (Dropped Rule {dropped}: {why})"
    for i, c in enumerate(route_conditions):
        if c.type == "Accepted" and c.status:
            route_conditions[i] = Condition("Accepted", False, "UnsupportedValue", message, c.parent)
    return False


def describe_dropped(route: HTTPRoute) -> tuple[str, str]:
    """The dropped rules of a route ("1 (name), 3") and why ("field: message; ...")."""
    dropped = ", ".join(str(rule.index) + (f" ({rule.name})" if rule.name else "") for rule in route.dropped)
    return dropped, "; ".join(rule.invalid_reason or "" for rule in route.dropped)


def _gw_key(gw: Gateway) -> tuple[str, str]:
    return gw.meta.namespace, gw.meta.name


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
