"""Compile one HTTPRoute rule: resolve its backendRefs, mirrors and ExtensionRefs, attach its filters."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

from gw.config import model
from gw.config.backend_policy import KIND as BACKEND_TRAFFIC_POLICY
from gw.config.backends import BACKEND_NOT_FOUND, INVALID_KIND, BackendResolver, Unresolved
from gw.config.errors import Condition, ConfigError
from gw.config.filters import EXTENSION_REF, RETRY, SERVED_EXTENSION_KINDS, ExtensionRef, Mirror
from gw.config.ratelimit import KIND as RATE_LIMIT_KIND
from gw.config.ratelimit import RateLimitPolicy
from gw.config.resources import GW_GROUP, FilterSpecs, HTTPRoute, Policy, RouteRule

# Records an unresolved reference: (field, ResolvedRefs reason, message, consequence).
Report = Callable[[str, str, str, str], None]


class RuleCompiler:
    """Turns RouteRules into model.Rules; one per compile, sharing the backend resolver's cache."""

    def __init__(
        self,
        resolver: BackendResolver,
        policies: Sequence[Policy],
        features: frozenset[str],
        rate_limits: Sequence[RateLimitPolicy] = (),
    ) -> None:
        self._resolver = resolver
        self._policies: dict[tuple[str, str, str], Any] = {
            (p.meta.kind, p.meta.namespace, p.meta.name): p for p in policies
        }
        # RateLimitPolicies are ExtensionRef targets too: the filter applies the policy to its rule.
        self._policies.update({(RATE_LIMIT_KIND, p.meta.namespace, p.meta.name): p for p in rate_limits})
        self._features = features
        # (route key, rule index) of rules that are invalid as configured (not merely unresolved).
        self.invalid: set[tuple[str, int]] = set()

    def compile(
        self,
        route: HTTPRoute,
        spec: RouteRule,
        max_body_size: int,
        conditions: dict[str, list[Condition]],
        errors: list[ConfigError],
    ) -> model.Rule:
        field = f"spec.rules[{spec.index}]"
        problems: list[str] = []

        def unresolved(where: str, reason: str, message: str, consequence: str) -> None:
            conditions[route.meta.label].append(Condition("ResolvedRefs", False, reason, message))
            errors.append(ConfigError(route.meta.file, route.meta.label, where, f"{message} ({reason}); {consequence}"))

        refs = []
        unresolved_refs: list[str] = []
        for ref in spec.backend_refs:
            ref_field = f"{field}.backendRefs[{ref.index}]"
            backend = self._resolver.resolve(route, ref)
            if isinstance(backend, Unresolved):
                unresolved_refs.append(f"{backend.message} ({backend.reason})")
                unresolved(ref_field, backend.reason, backend.message, "requests sent to it get 500")
                backend = None
            f = ref.filters
            if f is None:
                refs.append(model.BackendRef(ref.label, ref.weight, backend))
                continue
            mirrors = self._mirrors(route, f, unresolved)
            problems += self._extension_problems(route, f, unresolved)
            refs.append(
                model.BackendRef(
                    ref.label,
                    ref.weight,
                    backend,
                    request_headers=f.request_headers,
                    response_headers=f.response_headers,
                    rewrite=f.rewrite,
                    mirrors=mirrors,
                )
            )
        f = spec.filters
        mirrors = self._mirrors(route, f, unresolved)
        ext_auth = f.external_auth
        if ext_auth is not None:
            auth_backend = self._resolver.resolve_own(route, ext_auth.refs)
            if isinstance(auth_backend, Unresolved):
                # The rule must not go out unauthorized: it answers 500.
                unresolved(f"{ext_auth.field}.backendRef", auth_backend.reason, auth_backend.message,
                           "the rule answers 500")  # fmt: skip
                problems.append(auth_backend.message)
                ext_auth = None
            else:
                ext_auth = replace(ext_auth, backend=auth_backend)
        extensions = self._extensions(route, f)
        problems += self._extension_problems(route, f, unresolved)
        missing = sorted(self._needs(spec) - self._features)
        if missing:
            message = f"{', '.join(missing)} not applied by this gw's data plane yet; the rule answers 500"
            errors.append(ConfigError(route.meta.file, route.meta.label, field, message))
            problems.append(message)
        if problems or spec.invalid_reason:
            self.invalid.add((route.meta.key, spec.index))
        invalid = spec.invalid_reason
        if invalid is None and problems:
            invalid = f"rule {spec.index} of {route.meta.label} is invalid: {problems[0]}"
        if invalid is None and f.redirect is None:
            if not refs:
                invalid = "the rule has no backendRefs"
            elif all(r.backend is None for r in refs):
                invalid = "no backendRef can be resolved: " + "; ".join(unresolved_refs)
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
            request_headers=f.request_headers,
            response_headers=f.response_headers,
            redirect=f.redirect,
            rewrite=f.rewrite,
            mirrors=mirrors,
            cors=f.cors,
            extensions=extensions,
            retry=spec.retry,
            ext_auth=ext_auth,
        )

    def _needs(self, spec: RouteRule) -> set[str]:
        needs = set(spec.filters.types)
        if EXTENSION_REF in needs and all(
            e.group == GW_GROUP and e.kind in SERVED_EXTENSION_KINDS for e in spec.filters.extensions
        ):
            needs.discard(EXTENSION_REF)  # the rule's policy filters that the data plane applies
        for ref in spec.backend_refs:
            if ref.filters is not None:
                needs.update(ref.filters.types)
        if spec.retry is not None:
            needs.add(RETRY)
        return needs

    def _mirrors(self, route: HTTPRoute, f: FilterSpecs, unresolved: Report) -> tuple[Mirror, ...]:
        # "If the referent cannot be found, this BackendRef is invalid and must be dropped": the
        # rule still serves, without that mirror.
        mirrors = []
        for m in f.mirrors:
            backend = self._resolver.resolve(route, m.ref)
            if isinstance(backend, Unresolved):
                unresolved(f"{m.field}.backendRef", backend.reason, backend.message, "the mirror is dropped")
                continue
            # Its own balancer over the same endpoints: copies picking from the primary's Backend
            # would shift the primary's round robin (with two endpoints, all primaries on one).
            own = model.Backend(backend.name, backend.endpoints)
            mirrors.append(Mirror(m.ref.label, own, m.numerator, m.denominator))
        return tuple(mirrors)

    def _extensions(self, route: HTTPRoute, f: FilterSpecs) -> tuple[ExtensionRef, ...]:
        found = []
        for e in f.extensions:
            policy = self._policies.get((e.kind, route.meta.namespace, e.name)) if e.group == GW_GROUP else None
            if policy is not None:
                spec = policy.spec if isinstance(policy, Policy) else {}
                found.append(ExtensionRef(e.group, e.kind, e.name, route.meta.namespace, spec, policy))
        return tuple(found)

    def _extension_problems(self, route: HTTPRoute, f: FilterSpecs, unresolved: Report) -> list[str]:
        # An unresolvable ExtensionRef must not be skipped: the rule answers 500.
        problems = []
        for e in f.extensions:
            if e.group != GW_GROUP:
                message = f"ExtensionRef {e.kind} ({e.group or 'core'}) is not a gw policy kind (group {GW_GROUP})"
                reason = INVALID_KIND
            elif e.kind == BACKEND_TRAFFIC_POLICY:
                # It protects a backend whatever route reaches it, so it is not a filter of one rule.
                message = (
                    f"ExtensionRef {e.kind} {route.meta.namespace}/{e.name}: a {e.kind} attaches by its "
                    "targetRefs (a Service, Backend, HTTPRoute or Gateway), not as a rule's filter"
                )
                reason = INVALID_KIND
            elif (e.kind, route.meta.namespace, e.name) not in self._policies:
                message = f"ExtensionRef {e.kind} {route.meta.namespace}/{e.name} not found"
                reason = BACKEND_NOT_FOUND
            else:
                continue
            unresolved(f"{e.field}", reason, message, "the rule answers 500")
            problems.append(message)
        return problems
