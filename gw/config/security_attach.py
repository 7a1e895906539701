"""Attach SecurityPolicies to compiled rules: the most specific policy reaching a rule wins it whole.

As Envoy Gateway does (no mergeType), sections are not merged: a rule takes every setting of one
policy, the one targeting the rule itself (sectionName) over one targeting its route over one
targeting its Gateway. Two policies at the same level conflict (GEP-713): the oldest wins, then
by namespace/name, and the other's status has a Conflicted condition naming the winner. A policy
that is invalid, reads a Secret it cannot, or asks for a mechanism gw does not serve yet still
wins its rules: they answer 500 saying why (fail closed), and its Accepted condition is False.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from gw.config import model
from gw.config.backends import BackendResolver, Unresolved
from gw.config.errors import Condition, ConfigError
from gw.config.oidc import CLIENT_SECRET_KEY
from gw.config.policy_attach import ACCEPTED, TARGET_NOT_FOUND, CompiledRoute
from gw.config.resources import Secret
from gw.config.security_policy import HTPASSWD_KEY, Security, SecurityPolicy

CONFLICTED, OVERRIDDEN, INVALID = "Conflicted", "Overridden", "Invalid"
RULE, ROUTE, GATEWAY = 0, 1, 2  # how specific a target is: lower wins
BCRYPT_PREFIXES = (b"$2y$", b"$2b$", b"$2a$")
SHA_PREFIX = b"{SHA}"


@dataclass(slots=True)
class _Reach:
    policy: SecurityPolicy
    ranks: dict[int, int] = field(default_factory=dict)  # id(rule) → rank of the policy's most specific target
    rules: dict[int, tuple[str, model.Rule]] = field(default_factory=dict)  # id(rule) → (its name, rule)
    won: list[str] = field(default_factory=list)
    lost: dict[str, list[str]] = field(default_factory=dict)  # winner key → rules it took at the same level
    overridden: dict[str, list[str]] = field(default_factory=dict)  # winner key → rules it took as more specific
    missing: list[str] = field(default_factory=list)  # targets not found


def attach_security_policies(
    policies: Sequence[SecurityPolicy],
    routes: Sequence[CompiledRoute],
    secrets: Sequence[Secret],
    conditions: dict[str, list[Condition]],
    errors: list[ConfigError],
    resolver: BackendResolver | None = None,
) -> None:
    """Set `rule.security` (and, for a policy that cannot be served, `rule.invalid_reason`) on every
    rule a policy reaches; each policy's Accepted condition, and Conflicted / Overridden ones."""
    by_secret = {(s.meta.namespace, s.meta.name): s for s in secrets}
    reaches = [_reach(p, routes, errors) for p in sorted(policies, key=lambda p: (p.meta.created, p.meta.key))]
    rules: dict[int, tuple[str, model.Rule]] = {}
    for reach in reaches:
        rules.update(reach.rules)
    compiled: dict[int, tuple[Security | None, str | None]] = {}
    for rid, (name, rule) in rules.items():
        contenders = [r for r in reaches if rid in r.ranks]
        best = min(r.ranks[rid] for r in contenders)
        winner = next(r for r in contenders if r.ranks[rid] == best)  # oldest first
        winner.won.append(name)
        for other in contenders:
            if other is winner:
                continue
            place = other.lost if other.ranks[rid] == best else other.overridden
            place.setdefault(winner.policy.meta.key, []).append(name)
        key = id(winner.policy)
        if key not in compiled:
            compiled[key] = _compile(winner.policy, by_secret, errors, resolver)
        security, problem = compiled[key]
        rule.security = security
        if problem is not None and not rule.invalid_reason:
            rule.invalid_reason = problem
    for reach in reaches:
        _report(reach, compiled.get(id(reach.policy), (None, None))[1], conditions)


def _reach(policy: SecurityPolicy, routes: Sequence[CompiledRoute], errors: list[ConfigError]) -> _Reach:
    reach = _Reach(policy)
    ns = policy.meta.namespace
    missing = []
    for t in policy.targets:
        what = f"{t.kind} {ns}/{t.name}" + (f" rule {t.section_name!r}" if t.section_name else "")
        found = 0
        for compiled in routes:
            route = compiled.route
            if t.kind == "Gateway":
                if (ns, t.name) not in compiled.gateways:
                    continue
                rank = GATEWAY
            elif (route.meta.namespace, route.meta.name) != (ns, t.name):
                continue
            else:
                rank = RULE if t.section_name else ROUTE
            for spec, rule in compiled.rules:
                if rank == RULE and spec.name != t.section_name:
                    continue
                found += 1
                rid = id(rule)
                reach.ranks[rid] = min(rank, reach.ranks.get(rid, rank))
                label = f"HTTPRoute {route.meta.key} rule {spec.name or spec.index}"
                reach.rules[rid] = (label, rule)
        if not found:
            missing.append(what)
            errors.append(
                ConfigError(
                    policy.meta.file,
                    policy.meta.label,
                    f"spec.targetRefs[{t.index}]",
                    f"{what} is not served by this gw ({TARGET_NOT_FOUND})",
                )
            )
    reach.missing = missing
    return reach


def _report(reach: _Reach, problem: str | None, conditions: dict[str, list[Condition]]) -> None:
    policy = reach.policy
    out = conditions.setdefault(policy.meta.label, [])
    missing = reach.missing
    problem = problem or policy.invalid
    if reach.won:
        message = f"attached to {len(reach.won)} rule{'s' if len(reach.won) != 1 else ''}: " + ", ".join(reach.won)
    else:
        message = ""
    if missing:
        message = "; ".join(m for m in (message, "not found: " + ", ".join(missing)) if m)
    if problem is not None:
        out.append(Condition("Accepted", False, INVALID, f"{problem}; the rules it wins answer 500. {message}".strip()))
    elif reach.won:
        out.append(Condition("Accepted", True, ACCEPTED, message))
    elif reach.ranks:
        message = "every rule it reaches takes another policy (see Conflicted, Overridden)"
        out.append(Condition("Accepted", False, CONFLICTED, message))
    else:
        out.append(Condition("Accepted", False, TARGET_NOT_FOUND, message))
    if reach.lost:
        text = "; ".join(f"SecurityPolicy {w} wins {', '.join(rules)}" for w, rules in sorted(reach.lost.items()))
        message = f"{text} (at the same level the oldest policy wins, then by namespace/name)"
        out.append(Condition(CONFLICTED, True, CONFLICTED, message))
    if reach.overridden:
        text = "; ".join(f"SecurityPolicy {w} wins {', '.join(rules)}" for w, rules in sorted(reach.overridden.items()))
        out.append(Condition(OVERRIDDEN, True, OVERRIDDEN, f"{text} (a more specific policy wins a rule whole)"))


def _compile(
    policy: SecurityPolicy,
    secrets: dict[tuple[str, str], Secret],
    errors: list[ConfigError],
    resolver: BackendResolver | None = None,
) -> tuple[Security | None, str | None]:
    """The policy as rules apply it (its Secrets read), and why its rules answer 500 (None: they need not)."""
    if policy.invalid is not None:
        return None, policy.invalid
    if policy.unserved:
        what = ", ".join(policy.unserved)
        message = f"{what}: not served by gw yet"
        errors.append(ConfigError(policy.meta.file, policy.meta.label, policy.unserved[0].split(" ")[0], message))
        return None, f"{policy.meta.label}: {message}"
    ns = policy.meta.namespace
    problems: list[str] = []

    def error(where: str, message: str) -> None:
        errors.append(ConfigError(policy.meta.file, policy.meta.label, where, message))
        problems.append(f"{where}: {message}")

    security = Security(policy.meta.key, authorization=policy.authorization, jwt=policy.jwt)
    if policy.jwt is not None:
        security.realm = policy.meta.key
    api = policy.api_key_auth
    if api is not None:
        security.api_key_auth = api
        for ref in api.credential_refs:
            secret = secrets.get((ns, ref.name))
            if secret is None:
                error(ref.field, f"Secret {ns}/{ref.name} not found")
                continue
            for client, key in secret.data.items():
                if not key:
                    error(ref.field, f"Secret {ns}/{ref.name} holds an empty key for client {client!r}")
                    continue
                security.api_keys.setdefault(client, key)  # a client in two Secrets: the first (Envoy Gateway)
        keys = list(security.api_keys.values())
        if len(set(keys)) != len(keys):
            error("spec.apiKeyAuth.credentialRefs", "two clients share one key: a key must name one client")
    basic = policy.basic_auth
    if basic is not None:
        security.basic_auth = basic
        security.realm = policy.meta.key
        ref = basic.users
        secret = secrets.get((ns, ref.name))
        if secret is None:
            error(ref.field, f"Secret {ns}/{ref.name} not found")
        elif HTPASSWD_KEY not in secret.data:
            error(ref.field, f"Secret {ns}/{ref.name} has no {HTPASSWD_KEY} key")
        else:
            for where, message in read_htpasswd(secret.data[HTPASSWD_KEY], security.users):
                error(ref.field, f"Secret {ns}/{ref.name} {HTPASSWD_KEY} {where}: {message}")
    ext = policy.ext_auth
    if ext is not None:
        backend = resolver.resolve_own(policy, ext.refs) if resolver is not None else None  # type: ignore[arg-type]
        if isinstance(backend, Unresolved) or backend is None:
            error(ext.field, backend.message if backend is not None else "its backend cannot be resolved here")
        else:
            # Without ready endpoints it is kept, as a rule's backend: calls fail (closed, or failOpen).
            security.ext_auth = replace(ext, backend=backend)
    oidc = policy.oidc
    if oidc is not None:
        security.oidc = oidc
        secret = secrets.get((ns, oidc.client_secret))
        if secret is None:
            error("spec.oidc.clientSecret", f"Secret {ns}/{oidc.client_secret} not found")
        elif not secret.data.get(CLIENT_SECRET_KEY):
            error("spec.oidc.clientSecret", f"Secret {ns}/{oidc.client_secret} has no {CLIENT_SECRET_KEY} key")
        else:
            security.oidc_client_secret = secret.data[CLIENT_SECRET_KEY]
    if problems:
        return None, f"{policy.meta.label} is invalid: {problems[0]}"
    return security, None


def read_htpasswd(data: bytes, users: dict[str, bytes]) -> list[tuple[str, str]]:
    """Fill `users` (name → hash entry) from an htpasswd file; (where, problem) for each bad line.

    Problems never quote a hash: they name the line and the user.
    """
    problems = []
    for number, raw in enumerate(data.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith(b"#"):
            continue
        user, sep, entry = line.partition(b":")
        where = f"line {number}"
        if not sep or not user or not entry:
            problems.append((where, "is not user:hash"))
            continue
        name = user.decode("utf-8", "replace")
        if entry.startswith(BCRYPT_PREFIXES):
            if len(entry) != 60:
                problems.append((where, f"user {name!r}: a bcrypt entry is 60 characters"))
                continue
        elif entry.startswith(SHA_PREFIX):
            try:
                digest = base64.b64decode(entry[len(SHA_PREFIX) :], validate=True)
            except ValueError:
                digest = b""
            if len(digest) != hashlib.sha1().digest_size:
                problems.append((where, f"user {name!r}: a {{SHA}} entry is the base64 of a SHA-1 digest"))
                continue
        else:
            kind = "an MD5 ($apr1$)" if entry.startswith(b"$apr1$") else "a crypt or plain"
            problems.append((where, f"user {name!r}: {kind} entry; gw verifies bcrypt ($2y$, $2b$) and {{SHA}}"))
            continue
        users.setdefault(name, entry)
    return problems
