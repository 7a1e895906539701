"""Attach BackendTLSPolicies to the backends compiled rules reach: each backend's UpstreamTLS, and the
policies' status (Accepted, ResolvedRefs, per ancestor Gateway).

A policy targets a Service (all its ports, or the port named by sectionName) or a gw Backend. A
backend takes the policy of its most specific target (a named port before the whole Service).
Policies selecting the same target and sectionName conflict: the oldest (then by namespace/name)
takes it, and a policy that takes none of its targets is not Accepted (Conflicted), as the spec says.

The CA bundle comes from each caCertificateRefs entry (a ConfigMap or a Secret of the policy's
namespace, key ca.crt). An entry that does not resolve, or of another kind, makes ResolvedRefs
False (InvalidCACertificateRef, InvalidKind); the valid entries are used. With none valid, or a
wellKnownCACertificates other than System, the policy is not Accepted (NoValidCACertificate,
Invalid) and its backends still get an UpstreamTLS, one that refuses: connections fail with 502
rather than go out in plain text.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

from gw.config import model
from gw.config.backend_attach import rule_backends
from gw.config.backend_tls import SYSTEM, BackendTLSPolicy, UpstreamTLS
from gw.config.backends import backend_name
from gw.config.ca_refs import ca_bundle
from gw.config.errors import Condition, ConfigError
from gw.config.policy_attach import ACCEPTED, TARGET_NOT_FOUND, CompiledRoute
from gw.config.ratelimit import TargetRef
from gw.config.resources import ConfigMap, Secret, Service
from gw.config.tls import Certificate

CONFLICTED = "Conflicted"
INVALID = "Invalid"
NO_VALID_CA = "NoValidCACertificate"
RESOLVED_REFS = "ResolvedRefs"
INVALID_KIND = "InvalidKind"


@dataclass(slots=True)
class _Verdict:
    """What one policy amounts to once its references are resolved."""

    tls: UpstreamTLS
    accepted: Condition
    resolved: Condition


def attach_backend_tls(
    policies: Sequence[BackendTLSPolicy],
    routes: Sequence[CompiledRoute],
    services: Sequence[Service],
    config_maps: Sequence[ConfigMap],
    secrets: Sequence[Secret],
    conditions: dict[str, list[Condition]],
    ancestors: dict[str, list[tuple[str, str]]],
    errors: list[ConfigError],
    client_certificates: dict[tuple[str, str], Certificate] | None = None,
) -> None:
    """Set `backend.tls` on every backend a policy reaches; each policy's conditions and ancestors
    (the Gateways whose routes reach its backends). `client_certificates`: the Gateways' certificates
    for backends (spec.tls.backend.clientCertificateRef), presented to the backends they reach."""
    client_certificates = client_certificates or {}
    by_name: dict[str, list[model.Backend]] = {}
    gateways_of: dict[str, set[tuple[str, str]]] = {}
    for compiled in routes:
        for _, rule in compiled.rules:
            for backend in [*rule_backends(rule), *_ext_auth_backends(rule)]:
                known = by_name.setdefault(backend.name, [])
                if all(b is not backend for b in known):
                    known.append(backend)
                gateways_of.setdefault(backend.name, set()).update(compiled.gateways)
    service_ports = {(s.meta.namespace, s.meta.name): s.ports for s in services}
    stores = {
        **{("ConfigMap", c.meta.namespace, c.meta.name): c.data for c in config_maps},
        **{("Secret", s.meta.namespace, s.meta.name): s.data for s in secrets},
    }

    owners: dict[tuple[str, str, str, str | None], BackendTLSPolicy] = {}
    # backend name → (rank, policy): rank 0 for a target with a sectionName, 1 without
    chosen: dict[str, tuple[int, BackendTLSPolicy]] = {}
    for policy in sorted(policies, key=lambda p: (p.meta.created, p.meta.key)):
        label, ns = policy.meta.label, policy.meta.namespace
        reached: set[str] = set()
        lost: list[str] = []
        missing: list[str] = []
        for t in policy.targets:
            names, what = _reached(t, ns, service_ports, by_name)
            if not names:
                missing.append(what)
                errors.append(
                    ConfigError(
                        policy.meta.file,
                        label,
                        f"spec.targetRefs[{t.index}]",
                        f"{what} reaches no backend served by this gw ({TARGET_NOT_FOUND})",
                    )
                )
                continue
            key = (ns, t.kind, t.name, t.section_name)
            owner = owners.setdefault(key, policy)
            if owner is not policy:
                lost.append(f"{what} is taken by BackendTLSPolicy {owner.meta.key}")
                continue
            rank = 0 if t.section_name else 1
            for name in names:
                reached.add(name)
                if name not in chosen or rank < chosen[name][0]:
                    chosen[name] = (rank, policy)
        verdict = _verdict(policy, stores)
        policy_conditions = conditions.setdefault(label, [])
        ancestors[label] = sorted({g for name in reached for g in gateways_of.get(name, ())})
        if reached:
            accepted = verdict.accepted
            notes = [n for n in ("; ".join(lost), ("not found: " + ", ".join(missing)) if missing else "") if n]
            if notes:
                accepted = Condition(
                    accepted.type, accepted.status, accepted.reason, "; ".join([accepted.message, *notes])
                )
            policy_conditions.append(accepted)
        elif lost:
            message = "; ".join(lost) + " (the oldest policy for a target and sectionName wins, then by namespace/name)"
            policy_conditions.append(Condition(ACCEPTED, False, CONFLICTED, message))
        else:
            policy_conditions.append(Condition(ACCEPTED, False, TARGET_NOT_FOUND, "not found: " + ", ".join(missing)))
        policy_conditions.append(verdict.resolved)
        for name in reached:
            if chosen[name][1] is policy:
                tls = _with_client_certificate(verdict.tls, name, gateways_of.get(name, set()), client_certificates)
                for backend in by_name[name]:
                    backend.tls = tls


def _reached(
    t: TargetRef,
    namespace: str,
    service_ports: dict[tuple[str, str], tuple],
    by_name: dict[str, list[model.Backend]],
) -> tuple[set[str], str]:
    what = f"{t.kind} {namespace}/{t.name}"
    if t.kind == "Backend":
        name = backend_name("Backend", namespace, t.name)
        return ({name} if name in by_name else set()), what
    ports = service_ports.get((namespace, t.name), ())
    if t.section_name is not None:
        what += f" port {t.section_name!r}"
        ports = tuple(p for p in ports if p.name == t.section_name)
    return {n for p in ports if (n := backend_name("Service", namespace, t.name, p.port)) in by_name}, what


def _verdict(policy: BackendTLSPolicy, stores: dict[tuple[str, str, str], dict[str, bytes]]) -> _Verdict:
    ns, key = policy.meta.namespace, policy.meta.key
    base = UpstreamTLS(key, policy.hostname, policy.subject_alt_names, min_version=policy.min_version)
    if policy.well_known is not None:
        resolved = Condition(RESOLVED_REFS, True, RESOLVED_REFS)
        if policy.well_known != SYSTEM:
            why = f"wellKnownCACertificates {policy.well_known!r} is not supported (gw knows System)"
            return _Verdict(_refusing(base, why), Condition(ACCEPTED, False, INVALID, why), resolved)
        tls = UpstreamTLS(
            key, policy.hostname, policy.subject_alt_names, well_known=SYSTEM, min_version=policy.min_version
        )
        return _Verdict(
            tls, Condition(ACCEPTED, True, ACCEPTED, "verified against the system's CA certificates"), resolved
        )
    bundle, problems = ca_bundle(policy.ca_refs, ns, stores, kind_reason=INVALID_KIND)
    if problems:
        resolved = Condition(RESOLVED_REFS, False, problems[0][0], "; ".join(m for _, m in problems))
    else:
        resolved = Condition(RESOLVED_REFS, True, RESOLVED_REFS)
    if not bundle:
        why = "no valid CA certificate: " + "; ".join(m for _, m in problems)
        return _Verdict(_refusing(base, why), Condition(ACCEPTED, False, NO_VALID_CA, why), resolved)
    tls = UpstreamTLS(key, policy.hostname, policy.subject_alt_names, bundle, min_version=policy.min_version)
    valid = len(policy.ca_refs) - len(problems)
    return _Verdict(tls, Condition(ACCEPTED, True, ACCEPTED, f"verified against {valid} CA bundle(s)"), resolved)


def _with_client_certificate(
    tls: UpstreamTLS,
    name: str,
    gateways: set[tuple[str, str]],
    client_certificates: dict[tuple[str, str], Certificate],
) -> UpstreamTLS:
    """`tls` presenting the client certificate of the Gateways reaching backend `name`. A backend is
    one object whichever Gateway reaches it: when several with different certificates do, the first
    by namespace/name is the one presented (gw serves one Gateway per instance as a rule)."""
    for gateway in sorted(gateways):
        cert = client_certificates.get(gateway)
        if cert is not None:
            return dataclasses.replace(tls, client_certificate=cert.cert_pem, client_key=cert.key_pem)
    return tls


def _refusing(base: UpstreamTLS, why: str) -> UpstreamTLS:
    return UpstreamTLS(base.policy, base.hostname, base.subject_alt_names, min_version=base.min_version, refusal=why)


def _ext_auth_backends(rule: model.Rule) -> list[model.Backend]:
    """The external authorization services a rule calls: a BackendTLSPolicy on their Service applies."""
    found = [rule.ext_auth.backend] if rule.ext_auth is not None else []
    security = rule.security
    if security is not None and security.ext_auth is not None:
        found.append(security.ext_auth.backend)
    return found
