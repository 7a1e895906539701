"""RateLimitPolicy (gw.dev/v1alpha1), typed: what gw.config.parse_ratelimit reads from YAML.

    apiVersion: gw.dev/v1alpha1
    kind: RateLimitPolicy
    metadata: {name: api, namespace: default}
    spec:
      targetRefs:                      # GEP-713: a Gateway, an HTTPRoute, or a named rule of one
      - {group: gateway.networking.k8s.io, kind: HTTPRoute, name: api, sectionName: orders}
      algorithm: GCRA                  # GCRA (token bucket) | SlidingWindow
      mode: Exact                      # Exact (one Redis call per decision) | Leased
      scope: Global                    # Global (per policy and key, fleet-wide) | Local (per replica)
      failureMode: Open                # Open | Closed | Local, when Redis cannot answer in budget
      responseHeaders: true            # RateLimit / RateLimit-Policy on every response
      trustedProxies: [10.0.0.0/8]     # whose X-Forwarded-For is believed for ClientAddress
      limits:
      - name: per-second
        requests: 10
        per: 1s
        burst: 20                      # GCRA only; default: requests
        key: [{type: ClientAddress}, {type: Header, name: X-Api-Key}]

Key types: ClientAddress, Header (name), QueryParam (name), Method, Route, Consumer (who the
rule's SecurityPolicy authenticated: an API key's client id, a basic-auth user, a token's `sub`;
requests without one share the key ""), JWTClaim (name: a claim of the token the rule's jwt
verified, a dotted path into nested objects allowed; a string, number or boolean counts, anything
else and an anonymous request count under "").
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gw.config.resources import Meta

KIND = "RateLimitPolicy"
GCRA, SLIDING_WINDOW = "GCRA", "SlidingWindow"
EXACT, LEASED = "Exact", "Leased"
GLOBAL, LOCAL = "Global", "Local"
OPEN, CLOSED = "Open", "Closed"  # failureMode; LOCAL is the third

CLIENT_ADDRESS, HEADER, QUERY_PARAM, METHOD, ROUTE = "ClientAddress", "Header", "QueryParam", "Method", "Route"
CONSUMER, JWT_CLAIM = "Consumer", "JWTClaim"
KEY_TYPES = (CLIENT_ADDRESS, HEADER, QUERY_PARAM, METHOD, ROUTE, CONSUMER, JWT_CLAIM)
KEY_TYPES_NAMED = (HEADER, QUERY_PARAM, JWT_CLAIM)
# The extension point for identity-based keys: a key type added here needs an extractor in
# gw.policies.ratelimit.identify and the authenticated request to carry it.
KEY_TYPES_LATER: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class TargetRef:
    group: str
    kind: str
    name: str
    section_name: str | None = None
    index: int = 0  # position in spec.targetRefs, for error fields

    @property
    def label(self) -> str:
        section = f" rule {self.section_name!r}" if self.section_name else ""
        return f"{self.kind} {self.name}{section}"


@dataclass(frozen=True, slots=True)
class KeyPart:
    """One component of a limit's key: its type and, for Header/QueryParam, the field name."""

    type: str
    name: str = ""  # headers lower-cased; query parameters as written


@dataclass(frozen=True, slots=True)
class Limit:
    name: str
    requests: int
    period: float  # seconds
    burst: int  # GCRA bucket depth in requests (sliding window: == requests)
    key: tuple[KeyPart, ...]  # () = one counter for every request the policy sees


@dataclass(frozen=True, slots=True)
class RateLimitPolicy:
    meta: Meta
    targets: tuple[TargetRef, ...]
    limits: tuple[Limit, ...]
    algorithm: str = GCRA
    mode: str = EXACT
    scope: str = GLOBAL
    failure_mode: str = OPEN
    response_headers: bool = False
    trusted_proxies: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
