"""Render a compiled config as text, one line per match in lookup order (`gw routes`)."""

from __future__ import annotations

from gw.config.model import CompiledConfig, Rule
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
            targets.append(f"{ref.name} w={ref.weight} [{len(ref.backend.endpoints)} endpoints]")
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
    for label, f in (("request headers", rule.request_headers), ("response headers", rule.response_headers)):
        if f is not None:
            limits.append(f"{label}: {f.describe()}")
    for f in (rule.rewrite, rule.cors, *rule.mirrors, *rule.extensions):
        if f is not None:
            limits.append(f.describe())
    suffix = f" ({', '.join(limits)})" if limits else ""
    return f"{name} → {', '.join(targets)}{suffix}"


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
