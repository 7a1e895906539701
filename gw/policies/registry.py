"""The phase kinds gw serves, in the one order they run, and the chain each rule gets from them.

Order: external authorization → authentication → authorization → rate limit → session →
CORS/redirect → request edits → mirror (tracing is not a phase: gw.observe.tracing). Later phases
read what earlier ones established (a rate-limit key reads the identity authentication set); the
request edits come after every phase that may answer, so nothing is edited for a request that
never goes upstream; mirrors copy the request as it finally goes upstream.

To add a feature: write its module under gw/policies/ (a Phase subclass and a `build(rule,
services)` that returns the phase for a rule, or None when the rule does not use the feature),
add one line below, and give it its config (a filter or a policy kind in gw/config/).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

from gw.policies import cors, header_modifier, mirror, redirect, session, url_rewrite
from gw.policies.phase import Chain, Phase
from gw.policies.ratelimit import phase as rate_limit
from gw.policies.security import api_key, authorization, basic, ext_auth, jwt, oidc


class Services(Protocol):
    """What a worker lends phase builders: its long-lived runtime state, kept across reloads."""

    loop: Any  # the worker's event loop (a phase that waits on a thread: basicAuth's bcrypt)
    metrics: Any  # gw.observe.metrics.Registry: counters kept across reloads
    limiters: Any  # gw.policies.ratelimit.Limiters, installed for the snapshot being built
    settings: Any  # gw.settings.Settings (GW_SESSION_KEYS)
    key_sets: Any  # gw.auth.jwks.KeySets: JWT providers' keys, fetched once per worker, not per snapshot
    oidc_providers: Any  # gw.auth.oidc.ProviderClients: OpenID providers' endpoints and keys, per worker
    shared: Any  # gw.state.SharedState: Redis, its guard and key schema (None without Redis)

    def auth_call(self, backend: Any, head: bytes, head_only: bool, exchange: Any, timeout: float, done: Any) -> None:
        """Send a bodiless request `head` to `backend` (an external authorization service, a
        gw.config.model.Backend); done(status, head block, body, None) or done(0, b"", b"", reason)
        later, once, from the loop (gw.proxy.auth_call)."""
        ...

    def session_table(self, persistence: Any) -> Any:
        """The worker's table of a header-type session name (gw.policies.session_table)."""
        ...

    def session_counts(self, rule: str, kind: str) -> Any:
        """A rule's session counters in the worker's metrics (gw.policies.session_table.SessionCounts)."""
        ...


Build = Callable[[Any, Services], Phase | None]

PHASES: tuple[tuple[str, Build], ...] = (
    # SecurityPolicy: external authorization first (as Envoy Gateway orders ext_authz), then
    # authentication, then authorization, before the rate limit (keyed by Consumer or JWTClaim).
    ("ext-auth", ext_auth.build),
    ("external-auth", ext_auth.build_filter),  # an HTTPRoute ExternalAuth filter (GEP-1494)
    ("basic-auth", basic.build),
    ("api-key-auth", api_key.build),
    ("jwt", jwt.build),
    ("oidc", oidc.build),
    ("authorization", authorization.build),
    ("rate-limit", rate_limit.build),
    ("session", session.build),  # after the limit: a refused request settles no session
    ("cors", cors.build),
    ("redirect", redirect.build),
    ("request-header-modifier", header_modifier.build_request),
    ("url-rewrite", url_rewrite.build),
    ("response-header-modifier", header_modifier.build_response),
    ("mirror", mirror.build),
)


def build_chain(rule: Any, services: Services, phases: Sequence[tuple[str, Build]] = PHASES) -> Chain | None:
    """The chain of `rule` (gw.config.model.Rule), or None when no phase applies to it."""
    built = []
    for kind, build in phases:
        phase = build(rule, services)
        if phase is not None:
            phase.kind = phase.kind or kind
            built.append(phase)
    return Chain(built) if built else None
