"""Attach gw's policies to compiled rules by targetRefs (GEP-713): a Gateway, an HTTPRoute, or one named rule.

A policy applies to every rule its targets reach; a rule reached twice by one policy (through its
Gateway and its route) gets it once. Several policies on a rule all apply, each counting on its
own: a Gateway-wide budget and a per-route tenant limit can coexist. The policy's Accepted
condition says what it attaches to, which `gw check` prints.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from gw.config import model
from gw.config.errors import Condition, ConfigError
from gw.config.ratelimit import RateLimitPolicy
from gw.config.resources import HTTPRoute, RouteRule

ACCEPTED = "Accepted"
TARGET_NOT_FOUND = "TargetNotFound"


@dataclass(slots=True)
class CompiledRoute:
    """One route as compile left it: its rules and the Gateways ((namespace, name)) it is attached to."""

    route: HTTPRoute
    rules: list[tuple[RouteRule, model.Rule]]
    gateways: set[tuple[str, str]]


def attach_rate_limits(
    policies: Sequence[RateLimitPolicy],
    routes: Sequence[CompiledRoute],
    conditions: dict[str, list[Condition]],
    errors: list[ConfigError],
) -> None:
    """Add each policy to `rule.rate_limit_policies` of the rules it reaches; conditions and errors for the rest."""
    by_route = {(c.route.meta.namespace, c.route.meta.name): c for c in routes}
    for policy in sorted(policies, key=lambda p: (p.meta.created, p.meta.key)):
        ns = policy.meta.namespace
        reached: dict[int, model.Rule] = {}
        attached: list[str] = []
        missing: list[str] = []
        for t in policy.targets:
            rules = _target_rules(t.kind, ns, t.name, t.section_name, routes, by_route)
            what = f"{t.kind} {ns}/{t.name}" + (f" rule {t.section_name!r}" if t.section_name else "")
            if not rules:
                missing.append(what)
                errors.append(
                    ConfigError(
                        policy.meta.file,
                        policy.meta.label,
                        f"spec.targetRefs[{t.index}]",
                        f"{what} is not served by this gw ({TARGET_NOT_FOUND})",
                    )
                )
                continue
            attached.append(f"{what} ({len(rules)} rule{'s' if len(rules) != 1 else ''})")
            for rule in rules:
                reached.setdefault(id(rule), rule)
        for rule in reached.values():
            rule.rate_limit_policies = (*rule.rate_limit_policies, policy)
        if not policy.targets:
            message = "no targetRefs: applies to the rules whose ExtensionRef filters name it"
            conditions.setdefault(policy.meta.label, []).append(Condition("Accepted", True, ACCEPTED, message))
            continue
        message = "attached to " + ", ".join(attached) if attached else ""
        if missing:
            message = "; ".join(m for m in (message, "not found: " + ", ".join(missing)) if m)
        reason = ACCEPTED if attached else TARGET_NOT_FOUND
        conditions.setdefault(policy.meta.label, []).append(Condition("Accepted", bool(attached), reason, message))


def attach_extension_rate_limits(routes: Sequence[CompiledRoute]) -> None:
    """A rule's ExtensionRef filter naming a RateLimitPolicy applies that policy to the rule.

    The same policy reached by targetRefs as well counts once; its counters are the policy's
    whichever way it attaches (per policy and key, never per route).
    """
    for compiled in routes:
        for _spec, rule in compiled.rules:
            for ext in rule.extensions:
                policy = ext.target
                if isinstance(policy, RateLimitPolicy) and all(p is not policy for p in rule.rate_limit_policies):
                    rule.rate_limit_policies = (*rule.rate_limit_policies, policy)


def _target_rules(
    kind: str,
    namespace: str,
    name: str,
    section: str | None,
    routes: Sequence[CompiledRoute],
    by_route: dict[tuple[str, str], CompiledRoute],
) -> list[model.Rule]:
    if kind == "Gateway":
        if section is not None:
            return []  # a listener section: gw attaches rate limits to Gateways, routes and rules
        return [rule for c in routes if (namespace, name) in c.gateways for _, rule in c.rules]
    compiled = by_route.get((namespace, name))
    if compiled is None:
        return []
    return [rule for spec, rule in compiled.rules if section is None or spec.name == section]
