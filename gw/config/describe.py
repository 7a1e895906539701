"""Render a compiled config as text, one line per match in lookup order (`gw routes`)."""

from __future__ import annotations

from gw.balancing.kinds import ROUND_ROBIN
from gw.config.model import Backend, CompiledConfig, Rule
from gw.routing.table import HostTable


def describe_rule(rule: Rule) -> str:
    name = f"{rule.route}#{rule.index}" + (f" ({rule.name})" if rule.name else "")
    if rule.invalid_reason:
        return f"{name} → 500: {rule.invalid_reason}"
    if rule.redirect is not None:
        return f"{name} → {rule.redirect.describe()}"
    targets = []
    for ref in rule.backend_refs:
        if ref.backend is None:
            targets.append(f"{ref.name} w={ref.weight} [unresolved → 500]")
        else:
            targets.append(f"{ref.name} w={ref.weight} [{_backend(ref.backend)}]")
    limits = []
    if rule.request_timeout is not None:
        limits.append(f"timeout={rule.request_timeout:g}s")
    if rule.backend_timeout is not None:
        limits.append(f"backend-timeout={rule.backend_timeout:g}s")
    if rule.max_body_size:
        limits.append(f"max-body={rule.max_body_size}")
    if rule.retry is not None:
        limits.append(rule.retry.describe())
    if rule.session_persistence is not None:
        limits.append(rule.session_persistence.describe())
    if rule.trace_sample is not None:
        limits.append(f"trace-sample={rule.trace_sample:g}")
    for label, f in (("request headers", rule.request_headers), ("response headers", rule.response_headers)):
        if f is not None:
            limits.append(f"{label}: {f.describe()}")
    for f in (rule.rewrite, rule.cors, *rule.mirrors, *rule.extensions):
        if f is not None:
            limits.append(f.describe())
    policies = _policies(rule)
    if policies:
        limits.append("policies: " + ", ".join(policies))
    suffix = f" ({', '.join(limits)})" if limits else ""
    return f"{name} → {', '.join(targets)}{suffix}"


def _backend(backend: Backend) -> str:
    """A backend's endpoint count and balancer: "4 endpoints, LeastRequest"."""
    n = len(backend.endpoints)
    lb = backend.resilience.load_balancer if backend.resilience is not None else None
    return f"{n} endpoint{'' if n == 1 else 's'}, {lb.describe() if lb is not None else ROUND_ROBIN}"


def _policies(rule: Rule) -> list[str]:
    """The policy objects that apply to the rule: its rate limits (by targetRefs or ExtensionRef)
    and the BackendTrafficPolicies of its backends, each once."""
    names = [f"SecurityPolicy {rule.security.policy}"] if rule.security is not None else []
    names += [f"RateLimitPolicy {p.meta.namespace}/{p.meta.name}" for p in rule.rate_limit_policies]
    for ref in rule.backend_refs:
        if ref.backend is not None and ref.backend.resilience is not None:
            names += [f"BackendTrafficPolicy {source}" for source in ref.backend.resilience.sources]
    return list(dict.fromkeys(names))


def describe(config: CompiledConfig) -> list[str]:
    """Every port, host and match of the config in the order a lookup tries them."""
    lines: list[str] = []
    for port in config.ports:
        bound = f" (bound to {port.bind_port})" if port.bind_port != port.declared_port else ""
        lines.append(f"port {port.declared_port}{bound} {port.protocol}: listeners {', '.join(port.listeners)}")
        table = port.table
        if not isinstance(table, HostTable):
            lines.append(f"  {table!r}")
            continue
        for key, hostname, entries in table.describe():
            via = "" if hostname == key else f" (via {hostname})"
            lines.append(f"  host {key}{via}" + ("" if entries else ": no routes (404)"))
            for entry in entries:
                lines.append(f"    {entry.match.describe()} → {describe_rule(entry.rule)}")
    return lines
