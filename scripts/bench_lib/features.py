"""scripts/bench --features: one gw per feature, its route carrying that feature, against the plain gw.

Each feature adds Gateway API documents to the one-route config (attached to the HTTPRoute `bench`)
and the request fields wrk sends so that every request passes the feature (a valid API key, the
same valid token), so the row's CPU per request is the feature's cost on a request it lets through. `token-only`
sends the jwt row's token to the plain route: what the longer head costs without any policy.
The forward-auth row asks the upstream nginx itself (any path answers 200): a fast local auth
server, so what the row shows is gw's side of the extra round trip.

The tracing rows (issue 18) set environment variables instead of documents: GW_OTLP_ENDPOINT points
at an OTLP sink the bench starts for the row (bench_lib.otlp_sink, its own process) and
GW_TRACE_SAMPLE is the row's ratio. `trace-0` is tracing on with nothing sampled (the bar: no
regression against the plain gw), `trace-1` 1%, `trace-100` every request; `trace-parent-00` sends
a `traceparent` whose sampled flag is 00 (a caller that did not sample: parent-based, never recorded,
though the ratio is 100%); `traceparent-only` sends that field to a gw without tracing (what the
field costs when gw only forwards it, as token-only is to jwt).
"""

from __future__ import annotations

import functools
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
# Issues 17 and 19: each feature at most 10% more CPU per request than the plain route, all of
# them together on one route at most 30% more.
GOALS = {"api-key": 1.10, "jwt": 1.10, "ratelimit-leased": 1.10, "resilience": 1.10, "session-cookie": 1.10,
         "all": 1.30}


@dataclass(frozen=True)
class Feature:
    name: str
    documents: str  # YAML appended to the config (starts with ---)
    headers: tuple[str, ...]  # "Name: value" lines wrk sends
    env: tuple[tuple[str, str], ...] = ()  # extra environment of the gw process
    otlp_sink: bool = False  # start an OTLP sink for the row; GW_OTLP_ENDPOINT is set to it
    spans_per_request: float | None = None  # what the sink should receive (2: server + client span)
    rule: str = ""  # YAML lines added to the route's one rule (indented as its other fields)
    session: str = ""  # a cookie session's name: wrk sends the cookie gw set on a first request
    ratelimited: bool = False  # the route has a rate limit: count its decisions after the runs


KEYS_SECRET = """
---
apiVersion: v1
kind: Secret
metadata: {name: bench-keys, namespace: default}
stringData: {alice: bench-key-alice-0123456789, bob: bench-key-bob-0123456789}
"""

API_KEY = KEYS_SECRET + """
---
apiVersion: gw.dev/v1alpha1
kind: SecurityPolicy
metadata: {name: bench-api-key, namespace: default}
spec:
  targetRefs: [{group: gateway.networking.k8s.io, kind: HTTPRoute, name: bench}]
  apiKeyAuth: {credentialRefs: [{name: bench-keys}], extractFrom: [{headers: [X-Api-Key]}]}
"""

JWT = """
---
apiVersion: gw.dev/v1alpha1
kind: SecurityPolicy
metadata: {name: bench-jwt, namespace: default}
spec:
  targetRefs: [{group: gateway.networking.k8s.io, kind: HTTPRoute, name: bench}]
  jwt:
    providers:
    - {name: idp, issuer: https://idp.bench, audiences: [api], localJWKS: {inline: '%s'}}
"""

# Both sections in one policy: two SecurityPolicies on one route conflict (the oldest wins whole).
API_KEY_JWT = KEYS_SECRET + """
---
apiVersion: gw.dev/v1alpha1
kind: SecurityPolicy
metadata: {name: bench-api-key-jwt, namespace: default}
spec:
  targetRefs: [{group: gateway.networking.k8s.io, kind: HTTPRoute, name: bench}]
  apiKeyAuth: {credentialRefs: [{name: bench-keys}], extractFrom: [{headers: [X-Api-Key]}]}
  jwt:
    providers:
    - {name: idp, issuer: https://idp.bench, audiences: [api], localJWKS: {inline: '%s'}}
"""

# A limit no run comes near (10^12 a minute; a run is ~10^5 a second), as scripts/hotpath --leased
# and bench-ratelimit's cost mode have it: each worker spends leased tokens, refilled from Redis.
LEASED = """
---
apiVersion: gw.dev/v1alpha1
kind: RateLimitPolicy
metadata: {name: bench-leased, namespace: default}
spec:
  targetRefs: [{group: gateway.networking.k8s.io, kind: HTTPRoute, name: bench}]
  mode: Leased
  algorithm: SlidingWindow
  limits: [{name: w, requests: 1000000000000, per: 1m}]
"""

# scripts/hotpath --resilience's policy: the fleet-wide breaker and passive checks, the circuit closed.
RESILIENCE = """
---
apiVersion: gw.dev/v1alpha1
kind: BackendTrafficPolicy
metadata: {name: bench-resilience, namespace: default}
spec:
  targetRefs: [{group: gw.dev, kind: Backend, name: upstream}]
  circuitBreaker: {failureRatio: 0.5, window: 10s, minimumRequests: 20, openDuration: 30s, halfOpenRequests: 3}
  healthCheck: {passive: {consecutive5XxErrors: 5, consecutiveLocalOriginFailures: 5}}
"""

SESSION_NAME = "gw-bench-session"
SESSION_RULE = f"    sessionPersistence: {{sessionName: {SESSION_NAME}}}\n"
API_KEY_FIELD = "X-Api-Key: bench-key-alice-0123456789"

EXT_AUTH = """
---
apiVersion: gw.dev/v1alpha1
kind: SecurityPolicy
metadata: {name: bench-ext-auth, namespace: default}
spec:
  targetRefs: [{group: gateway.networking.k8s.io, kind: HTTPRoute, name: bench}]
  extAuth:
    http:
      backendRefs: [{group: gw.dev, kind: Backend, name: upstream}]
      path: /auth
"""


# A caller's trace whose parent did not sample (flags 00): the same on every request, as wrk sends it.
UNSAMPLED_PARENT = "traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"
# Tracing rows: GW_TRACE_SAMPLE and the fields wrk sends.
TRACING: dict[str, tuple[str, tuple[str, ...]]] = {
    "trace-0": ("0", ()),
    "trace-1": ("0.01", ()),
    "trace-100": ("1.0", ()),
    "trace-parent-00": ("1.0", (UNSAMPLED_PARENT,)),
}


@functools.cache
def _token() -> tuple[str, str]:
    """A JWKS and a valid token signed by its key (one per run: the jwt and token-only rows share it)."""
    # The test kit's signer: the bench runs from a checkout, as scripts/bench-jwt does.
    sys.path.insert(0, str(REPO))
    from tests.support.jwtkit import jwks, make_signer

    signer = make_signer("ES256", "bench")
    claims: dict[str, Any] = {"iss": "https://idp.bench", "aud": "api", "sub": "alice", "exp": int(time.time()) + 86400}
    return json.dumps(jwks(signer)), signer.token(claims).decode()


def build(name: str) -> Feature:
    if name == "api-key":
        return Feature(name, API_KEY, (API_KEY_FIELD,))
    if name == "jwt":
        keys, token = _token()
        return Feature(name, JWT % keys, (f"Authorization: Bearer {token}",))
    if name == "token-only":
        return Feature(name, "", (f"Authorization: Bearer {_token()[1]}",))
    if name == "ext-auth":
        return Feature(name, EXT_AUTH, ())
    if name == "traceparent-only":
        return Feature(name, "", (UNSAMPLED_PARENT,))
    if name in TRACING:
        sample, headers = TRACING[name]
        # A sampled request has a server span and one client span per upstream attempt (one here).
        return Feature(name, "", headers, env=(("GW_TRACE_SAMPLE", sample),), otlp_sink=True,
                       spans_per_request=2 * float(sample) if not headers else 0.0)
    if name == "ratelimit-leased":
        return Feature(name, LEASED, (), ratelimited=True)
    if name == "resilience":
        return Feature(name, RESILIENCE, ())
    if name == "session-cookie":
        return Feature(name, "", (), rule=SESSION_RULE, session=SESSION_NAME)
    if name == "all":
        keys, token = _token()
        return Feature(name, API_KEY_JWT % keys + LEASED + RESILIENCE,
                       (API_KEY_FIELD, f"Authorization: Bearer {token}"), rule=SESSION_RULE,
                       session=SESSION_NAME, ratelimited=True)
    raise ValueError(f"unknown feature {name!r}; known: {', '.join(NAMES)}")


def with_feature(config: str, feature: Feature) -> str:
    """The one-route config (bench_lib.configs.gw_config) with the feature's documents and rule fields."""
    if feature.rule:
        rule_end = "    - {group: gw.dev, kind: Backend, name: upstream}\n"  # the rule's last line
        if config.count(rule_end) != 1:
            raise ValueError(f"{feature.name}: the config has no single rule to add fields to")
        config = config.replace(rule_end, rule_end + feature.rule)
    return config + feature.documents


NAMES = ("api-key", "jwt", "token-only", "ext-auth", *TRACING, "traceparent-only", "ratelimit-leased", "resilience",
         "session-cookie", "all")
