"""Attach BackendTrafficPolicies to the backends compiled rules reach: each backend's effective Resilience.

A backend is known by its name (gw.config.backends.backend_name), which is also its identity in
Redis: every model.Backend of one name (a rule's, a mirror's) gets the same Resilience, whichever
route reaches it. Each section (circuitBreaker, healthCheck.passive, healthCheck.active,
healthCheck.panicThreshold, retry, sessionPersistence, loadBalancer) is taken whole from the most
specific policy setting it for that backend: one on the Service or Backend itself, then one on an
HTTPRoute reaching it, then one on a Gateway; at each level a target with a sectionName (a Service
port, a route rule) is more specific than one without (GEP-713). Two policies at the same level
setting one section for one backend conflict: the oldest (then by namespace/name) wins, and the
other's status says which policy won for which backend, so a conflict is visible in `gw check` and
/status.

`telemetry.tracing` belongs to route rules, not backends (a policy setting it targets no Service or
Backend: gw.config.parse_backend_policy): each compiled rule's `trace_sample` is the sampling
fraction of the most specific policy reaching the rule (its HTTPRoute with the rule's sectionName,
its HTTPRoute, its Gateway), ties to the oldest as above; None, GW_TRACE_SAMPLE, when none does.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from gw.config import model
from gw.config.backend_policy import SPECIFICITY, BackendTrafficPolicy, Resilience
from gw.config.backends import backend_name
from gw.config.errors import Condition, ConfigError
from gw.config.policy_attach import ACCEPTED, TARGET_NOT_FOUND, CompiledRoute
from gw.config.ratelimit import TargetRef
from gw.config.resources import Service

CONFLICTED = "Conflicted"

# The sections a policy may set, in the order `sources` lists them: YAML name and the attribute
# of BackendTrafficPolicy and Resilience that holds it.
SECTIONS = (
    ("circuitBreaker", "circuit_breaker"),
    ("healthCheck.passive", "passive"),
    ("healthCheck.active", "active"),
    ("healthCheck.panicThreshold", "panic_threshold"),
    ("retry", "retry_budget"),
    ("sessionPersistence", "session_persistence"),
    ("loadBalancer", "load_balancer"),
)
TRACING = "telemetry.tracing"  # the one section set per rule

Rank = tuple[int, int]  # (SPECIFICITY of the target's kind, 0 with a sectionName else 1): lower wins


@dataclass(slots=True)
class _Reach:
    """What one policy reaches: the rank of its most specific target for each backend name."""

    policy: BackendTrafficPolicy
    ranks: dict[str, Rank] = field(default_factory=dict)
    # With telemetry.tracing: the rank of its most specific target for each rule (by label).
    rule_ranks: dict[str, Rank] = field(default_factory=dict)
    # section → backend name (rule label for TRACING) → the policy that won it at the same rank (this one lost)
    lost: dict[str, dict[str, str]] = field(default_factory=dict)
    used: bool = False  # some backend (or rule) takes a section from it


def attach_backend_policies(
    policies: Sequence[BackendTrafficPolicy],
    routes: Sequence[CompiledRoute],
    services: Sequence[Service],
    conditions: dict[str, list[Condition]],
    errors: list[ConfigError],
) -> None:
    """Set `backend.resilience` on every backend the rules of `routes` reach (None when no policy
    reaches it); each policy's Accepted condition, and a Conflicted one when it lost somewhere."""
    index = _BackendIndex(routes, services)
    reaches = [
        _reach(policy, index, conditions, errors)
        for policy in sorted(policies, key=lambda p: (p.meta.created, p.meta.key))
    ]
    for name, backends in index.by_name.items():
        resilience = _resolve(name, [r for r in reaches if name in r.ranks])
        for backend in backends:
            backend.resilience = resilience
    tracing = [r for r in reaches if r.rule_ranks]
    for label, rule in index.rules.items():
        rule.trace_sample = _resolve_tracing(label, [r for r in tracing if label in r.rule_ranks])
    for reach in reaches:
        if reach.lost:
            _report_conflicts(reach, conditions)


def _reach(
    policy: BackendTrafficPolicy,
    index: _BackendIndex,
    conditions: dict[str, list[Condition]],
    errors: list[ConfigError],
) -> _Reach:
    reach = _Reach(policy)
    ns = policy.meta.namespace
    missing: list[str] = []
    # A policy setting telemetry.tracing alone attaches to rules only: no backend takes anything from it.
    for_backends = policy.tracing is None or any(getattr(policy, attr) is not None for _, attr in SECTIONS)
    reached = "backend" if policy.tracing is None else "backend or route rule" if for_backends else "route rule"
    for t in policy.targets:
        names, what = index.reached(t, ns)
        if not for_backends:
            names = set()
        rules = index.reached_rules(t, ns) if policy.tracing is not None else []
        rank = (SPECIFICITY[t.kind], 0 if t.section_name else 1)
        for label in rules:
            reach.rule_ranks[label] = min(rank, reach.rule_ranks.get(label, rank))
        if not names and not rules:
            missing.append(what)
            errors.append(
                ConfigError(
                    policy.meta.file,
                    policy.meta.label,
                    f"spec.targetRefs[{t.index}]",
                    f"{what} reaches no {reached} served by this gw ({TARGET_NOT_FOUND})",
                )
            )
            continue
        for name in names:
            reach.ranks[name] = min(rank, reach.ranks.get(name, rank))
    parts = ["attached to " + ", ".join(sorted(reach.ranks))] if reach.ranks else []
    if reach.rule_ranks:
        parts.append("tracing for " + ", ".join(sorted(reach.rule_ranks)))
    if missing:
        parts.append("not found: " + ", ".join(missing))
    found = bool(reach.ranks or reach.rule_ranks)
    reason = ACCEPTED if found else TARGET_NOT_FOUND
    conditions.setdefault(policy.meta.label, []).append(Condition("Accepted", found, reason, "; ".join(parts)))
    return reach


def _resolve(name: str, reaches: list[_Reach]) -> Resilience | None:
    """The Resilience of backend `name` from the policies reaching it (oldest first)."""
    chosen: dict[str, Any] = {}
    sources: list[str] = []
    for section, attr in SECTIONS:
        setting = [r for r in reaches if getattr(r.policy, attr) is not None]
        if not setting:
            continue
        best = min(r.ranks[name] for r in setting)
        winner, *losers = [r for r in setting if r.ranks[name] == best]  # oldest first: sorted by the caller
        chosen[attr] = getattr(winner.policy, attr)
        winner.used = True
        if winner.policy.meta.key not in sources:
            sources.append(winner.policy.meta.key)
        for loser in losers:
            loser.lost.setdefault(section, {})[name] = winner.policy.meta.key
    if not chosen:
        return None
    return Resilience(**chosen, sources=tuple(sources))


def _resolve_tracing(label: str, reaches: list[_Reach]) -> float | None:
    """The sampling ratio of rule `label` from the policies with telemetry.tracing reaching it (oldest first)."""
    if not reaches:
        return None
    best = min(r.rule_ranks[label] for r in reaches)
    winner, *losers = [r for r in reaches if r.rule_ranks[label] == best]
    winner.used = True
    for loser in losers:
        loser.lost.setdefault(TRACING, {})[label] = winner.policy.meta.key
    return winner.policy.tracing.ratio if winner.policy.tracing is not None else None


def _report_conflicts(reach: _Reach, conditions: dict[str, list[Condition]]) -> None:
    # One clause per (winner, backend or rule): "default/a wins circuitBreaker, retry for Service default/x:80".
    clauses: dict[tuple[str, str], list[str]] = {}
    for section in [*(s for s, _ in SECTIONS), TRACING]:
        for name, winner in reach.lost.get(section, {}).items():
            clauses.setdefault((winner, name), []).append(section)
    text = "; ".join(
        f"BackendTrafficPolicy {winner} wins {', '.join(sections)} for {name}"
        for (winner, name), sections in sorted(clauses.items(), key=lambda item: (item[0][1], item[0][0]))
    )
    message = f"{text} (at the same precedence level the oldest policy wins, then by namespace/name)"
    label = reach.policy.meta.label
    policy_conditions = conditions.setdefault(label, [])
    policy_conditions.append(Condition(CONFLICTED, True, CONFLICTED, message))
    if not reach.used:
        # No backend takes anything from it, and at least part of that is for a same-level conflict.
        for i, c in enumerate(policy_conditions):
            if c.type == "Accepted" and c.status:
                policy_conditions[i] = Condition(
                    "Accepted", False, CONFLICTED, f"{c.message}; nothing takes a section from it (see Conflicted)"
                )


class _BackendIndex:
    """The backends compiled rules reach, by name, and which names each target reaches; the rules
    themselves, by label ("HTTPRoute default/shop rule 'checkout'"), and which each target reaches."""

    def __init__(self, routes: Sequence[CompiledRoute], services: Sequence[Service]) -> None:
        self.by_name: dict[str, list[model.Backend]] = {}
        self.rules: dict[str, model.Rule] = {}
        # (namespace, route name) → [(rule name, backend names of that rule)]
        self._routes: dict[tuple[str, str], list[tuple[str | None, set[str]]]] = {}
        self._gateways: dict[tuple[str, str], set[str]] = {}
        # (namespace, route name) → [(rule name, rule label)]; Gateway → rule labels
        self._route_rules: dict[tuple[str, str], list[tuple[str | None, str]]] = {}
        self._gateway_rules: dict[tuple[str, str], list[str]] = {}
        self._services = {(s.meta.namespace, s.meta.name): s for s in services}
        for compiled in routes:
            key = (compiled.route.meta.namespace, compiled.route.meta.name)
            rules = self._routes.setdefault(key, [])
            labels = self._route_rules.setdefault(key, [])
            for spec, rule in compiled.rules:
                label = f"{compiled.route.meta.label} rule " + (repr(spec.name) if spec.name else str(spec.index))
                self.rules[label] = rule
                labels.append((spec.name, label))
                for gateway in compiled.gateways:
                    self._gateway_rules.setdefault(gateway, []).append(label)
                names = set()
                for backend in rule_backends(rule):
                    known = self.by_name.setdefault(backend.name, [])
                    if all(b is not backend for b in known):
                        known.append(backend)
                    names.add(backend.name)
                rules.append((spec.name, names))
                for gateway in compiled.gateways:
                    self._gateways.setdefault(gateway, set()).update(names)

    def reached(self, t: TargetRef, namespace: str) -> tuple[set[str], str]:
        """The names of the served backends target `t` (of a policy in `namespace`) reaches, and
        the target as messages name it."""
        what = f"{t.kind} {namespace}/{t.name}"
        if t.kind == "Backend":
            name = backend_name("Backend", namespace, t.name)
            return ({name} if name in self.by_name else set()), what
        if t.kind == "Service":
            service = self._services.get((namespace, t.name))
            ports = service.ports if service is not None else ()
            if t.section_name is not None:
                what += f" port {t.section_name!r}"
                ports = tuple(p for p in ports if p.name == t.section_name)
            return {n for p in ports if (n := backend_name("Service", namespace, t.name, p.port)) in self.by_name}, what
        if t.kind == "Gateway":
            return set(self._gateways.get((namespace, t.name), ())), what
        rules = self._routes.get((namespace, t.name), [])
        if t.section_name is not None:
            what += f" rule {t.section_name!r}"
            rules = [(n, names) for n, names in rules if n == t.section_name]
        return _union(names for _, names in rules), what

    def reached_rules(self, t: TargetRef, namespace: str) -> list[str]:
        """The labels of the compiled rules target `t` (an HTTPRoute, a rule of one, or a Gateway) reaches."""
        if t.kind == "Gateway":
            return self._gateway_rules.get((namespace, t.name), [])
        if t.kind != "HTTPRoute":
            return []
        rules = self._route_rules.get((namespace, t.name), [])
        return [label for name, label in rules if t.section_name is None or name == t.section_name]


def rule_backends(rule: model.Rule) -> list[model.Backend]:
    """Every backend a rule sends to: its backendRefs' and its mirrors' (the rule's and each ref's)."""
    found = [m.backend for m in rule.mirrors]
    for ref in rule.backend_refs:
        if ref.backend is not None:
            found.append(ref.backend)
        found += [m.backend for m in ref.mirrors]
    return found


def _union(sets: Iterable[set[str]]) -> set[str]:
    result: set[str] = set()
    for s in sets:
        result |= s
    return result
