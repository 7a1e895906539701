"""BackendTrafficPolicy (gw.dev/v1alpha1), typed: what gw.config.parse_backend_policy reads from YAML.

Field names follow Envoy Gateway's BackendTrafficPolicy (users move between gateways); the fleet-wide
breaker fields are gw's own, and the retry budget is the Gateway API's (XBackendTrafficPolicy
`retryConstraint`, GEP-3388).

    apiVersion: gw.dev/v1alpha1
    kind: BackendTrafficPolicy
    metadata: {name: orders, namespace: default}
    spec:
      targetRefs:                          # a Service or gw Backend: the backend whatever route reaches it;
      - {group: "", kind: Service, name: orders}   # a Gateway or HTTPRoute: defaults for the backends they reach
      circuitBreaker:
        maxConnections: 1024               # per backend, per replica (Envoy's thresholds)
        maxPendingRequests: 1024
        maxParallelRequests: 1024
        maxParallelRetries: 1024
        failureRatio: 0.5                  # the fleet-wide breaker: share of failed calls in `window`
        slowCallDuration: 2s               #   a call slower than this is slow;
        slowCallRatio: 0.8                 #   this share of slow calls opens it too
        window: 10s
        minimumRequests: 20                #   calls in the window before a ratio counts
        openDuration: 30s
        halfOpenRequests: 3                #   trial calls, fleet-wide
      healthCheck:
        panicThreshold: 50                 # percent: below this share of healthy endpoints, health is ignored
        passive:                           # outlier detection, per endpoint, fleet-wide
          consecutive5XxErrors: 5
          consecutiveGatewayErrors: 0      # 502/503/504 and local-origin failures; 0 = off
          consecutiveLocalOriginFailures: 5
          interval: 3s
          baseEjectionTime: 30s            # times the times ejected
          maxEjectionPercent: 10
        active:
          type: HTTP                       # HTTP | TCP
          http: {path: /healthz, method: GET, hostname: orders.internal, expectedStatuses: [200]}
          interval: 3s
          timeout: 1s
          unhealthyThreshold: 3
          healthyThreshold: 1
          initialJitter: 1s
      retry:                               # also accepted as `retryConstraint` (the Gateway API's name)
        budget: {percent: 20, interval: 10s}
        minRetryRate: {count: 10, interval: 1s}
      sessionPersistence:                  # GEP-1619, as on a route rule (gw.config.session); a rule's
        type: Cookie                       #   own sessionPersistence overrides it
      loadBalancer:
        type: ConsistentHash               # RoundRobin (the default) | Random | LeastRequest | ConsistentHash
        consistentHash:                    # only with type ConsistentHash, and required by it
          type: Header                     # SourceIP | Header | Cookie | QueryParams: what is hashed
          header: {name: X-User}           # with type Header
          # cookie: {name: session, ttl: 1h}     with type Cookie
          # queryParams: [{name: user}]          with type QueryParams
          tableSize: 65537                 # Maglev's table: a prime, at most 5000011
        # slowStart: {window: 30s}         # RoundRobin and LeastRequest: a new endpoint's weight ramps up

Tracing is per route rule, not per backend: `telemetry.tracing.samplingFraction` is the share of a
rule's requests without a sampled parent that start a trace (parent-based, as GW_TRACE_SAMPLE is for
the rules no policy reaches). Its policy targets HTTPRoutes, named rules and Gateways only:

    apiVersion: gw.dev/v1alpha1
    kind: BackendTrafficPolicy
    metadata: {name: checkout-traces, namespace: default}
    spec:
      targetRefs:
      - {group: gateway.networking.k8s.io, kind: HTTPRoute, name: shop, sectionName: checkout}
      telemetry:
        tracing:
          samplingFraction: {numerator: 1, denominator: 10}   # a Gateway API Fraction (denominator: 100)

Attachment and precedence (gw.config.backend_attach): a policy targeting the backend itself wins
over one on an HTTPRoute reaching it, which wins over one on its Gateway (at each level, a target
with a sectionName over one without: a Service port, a route rule); each section (circuitBreaker,
healthCheck.passive, healthCheck.active, healthCheck.panicThreshold, retry, sessionPersistence,
loadBalancer) is taken whole from the most specific policy that sets it. Two policies at the same
level for the same backend conflict: the oldest (then by namespace/name) wins, as GEP-713 says, and
the other's status names the conflict. `telemetry.tracing` goes the same way per rule: the rule's
own section (an HTTPRoute target with its sectionName), then its HTTPRoute, then its Gateway.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from gw.balancing.kinds import (  # noqa: F401  (the names parse_backend_policy and users import from here)
    CONSISTENT_HASH,
    COOKIE,
    HEADER,
    LEAST_REQUEST,
    MAX_TABLE_SIZE,
    QUERY_PARAMS,
    RANDOM,
    ROUND_ROBIN,
    SOURCE_IP,
    TABLE_SIZE,
)
from gw.config.ratelimit import TargetRef
from gw.config.session import SessionPersistence

if TYPE_CHECKING:
    from gw.config.resources import Meta

KIND = "BackendTrafficPolicy"
HTTP, TCP = "HTTP", "TCP"
# Precedence of a target kind, most specific first (lower wins).
SPECIFICITY = {"Service": 0, "Backend": 0, "HTTPRoute": 1, "Gateway": 2}


@dataclass(frozen=True, slots=True)
class CircuitBreaker:
    """Envoy's per-replica concurrency thresholds (0 = unlimited) and gw's fleet-wide breaker.

    The breaker is on when `failure_ratio` or `slow_call_ratio` is set (> 0).
    """

    max_connections: int = 0
    max_pending_requests: int = 0
    max_parallel_requests: int = 0
    max_parallel_retries: int = 0
    failure_ratio: float = 0.0  # 0 < r <= 1; 0 = the failure ratio does not open it
    slow_call_duration: float = 0.0  # seconds; 0 = no call is slow
    slow_call_ratio: float = 0.0
    window: float = 10.0
    minimum_requests: int = 20
    open_duration: float = 30.0
    half_open_requests: int = 3

    @property
    def breaks(self) -> bool:
        """Whether the fleet-wide breaker is configured (not only concurrency thresholds)."""
        return self.failure_ratio > 0 or (self.slow_call_ratio > 0 and self.slow_call_duration > 0)

    @property
    def limits_concurrency(self) -> bool:
        return bool(
            self.max_connections or self.max_pending_requests or self.max_parallel_requests or self.max_parallel_retries
        )


@dataclass(frozen=True, slots=True)
class PassiveHealthCheck:
    """Envoy's outlier detection by consecutive errors, decided once for the fleet (0 = that check off)."""

    consecutive_5xx_errors: int = 5
    consecutive_gateway_errors: int = 0
    consecutive_local_origin_failures: int = 5
    interval: float = 3.0  # a healthy interval takes one off the times-ejected multiplier
    base_ejection_time: float = 30.0
    max_ejection_percent: int = 10


@dataclass(frozen=True, slots=True)
class ActiveHealthCheck:
    """Probes of every endpoint, by one checker for the whole fleet (gw.balancing.probe)."""

    type: str = HTTP
    path: str = "/"
    method: str = "GET"
    hostname: str | None = None  # Host of the probe; default: the endpoint's address:port
    expected_statuses: tuple[int, ...] = (200,)
    interval: float = 3.0
    timeout: float = 1.0
    unhealthy_threshold: int = 3
    healthy_threshold: int = 1
    initial_jitter: float = 0.0


@dataclass(frozen=True, slots=True)
class RetryBudget:
    """GEP-3388: retries may be at most `percent` of the requests in `interval`, but `min_count`
    per `min_interval` are always allowed."""

    percent: int = 20
    interval: float = 10.0
    min_count: int = 10
    min_interval: float = 1.0


@dataclass(frozen=True, slots=True)
class ConsistentHash:
    """What a request is hashed on to pick its endpoint (Maglev, gw.balancing.maglev).

    `name` is the header (lower-case), cookie or query parameter read, per `type`; `params` are the
    query parameters' names for QueryParams (their values joined in this order form the key)."""

    type: str = SOURCE_IP
    name: str = ""
    params: tuple[str, ...] = ()
    cookie_ttl: float | None = None  # seconds; Envoy's cookie.ttl (the Max-Age of a generated cookie)
    table_size: int = TABLE_SIZE


@dataclass(frozen=True, slots=True)
class LoadBalancer:
    """Envoy Gateway's loadBalancer: the algorithm that picks an endpoint of the backend."""

    type: str = ROUND_ROBIN
    consistent_hash: ConsistentHash | None = None  # set exactly when type is ConsistentHash
    slow_start_window: float = 0.0  # seconds; 0 = a new endpoint takes its full weight at once

    def describe(self) -> str:
        """One line for `gw routes`: "ConsistentHash(Header x-user, table 65537), slowStart 30s"."""
        text = self.type
        ch = self.consistent_hash
        if ch is not None:
            key = ",".join(ch.params) if ch.type == QUERY_PARAMS else ch.name
            text += f"({ch.type}{' ' + key if key else ''}, table {ch.table_size})"
        if self.slow_start_window:
            text += f", slowStart {self.slow_start_window:g}s"
        return text

    def status(self) -> dict[str, object]:
        """The balancer as /status shows it, in the policy's own field names."""
        out: dict[str, object] = {"type": self.type}
        ch = self.consistent_hash
        if ch is not None:
            hashed: dict[str, object] = {"type": ch.type, "tableSize": ch.table_size}
            if ch.type == QUERY_PARAMS:
                hashed["queryParams"] = list(ch.params)
            elif ch.name:
                hashed[ch.type.lower()] = {"name": ch.name}
            out["consistentHash"] = hashed
        if self.slow_start_window:
            out["slowStart"] = {"window": f"{self.slow_start_window:g}s"}
        return out


@dataclass(frozen=True, slots=True)
class Tracing:
    """Envoy Gateway's `telemetry.tracing` as gw applies it: its samplingFraction (a Gateway API
    Fraction, 0 <= numerator <= denominator), the share of a rule's requests without a sampled
    parent that start a trace. It becomes the rule's `trace_sample` (gw.config.backend_attach)."""

    numerator: int
    denominator: int = 100

    @property
    def ratio(self) -> float:
        return self.numerator / self.denominator


@dataclass(frozen=True, slots=True)
class BackendTrafficPolicy:
    """One policy object as written; None sections are not set by it (a less specific one may)."""

    meta: Meta
    targets: tuple[TargetRef, ...]
    circuit_breaker: CircuitBreaker | None = None
    passive: PassiveHealthCheck | None = None
    active: ActiveHealthCheck | None = None
    panic_threshold: int | None = None  # percent
    retry_budget: RetryBudget | None = None
    session_persistence: SessionPersistence | None = None
    load_balancer: LoadBalancer | None = None
    tracing: Tracing | None = None  # per rule, not per backend: never in a Resilience


@dataclass(frozen=True, slots=True)
class Resilience:
    """What applies to one backend after precedence: each section from the most specific policy
    setting it. `sources` names those policies ("ns/name"), for /status and logs."""

    circuit_breaker: CircuitBreaker | None = None
    passive: PassiveHealthCheck | None = None
    active: ActiveHealthCheck | None = None
    panic_threshold: int = 50  # Envoy's default
    retry_budget: RetryBudget | None = None
    load_balancer: LoadBalancer | None = None  # None: smooth weighted round robin, as without a policy
    sources: tuple[str, ...] = ()
    # Not for the backend's run-time state: gw.config.session settles it onto each rule reaching it.
    session_persistence: SessionPersistence | None = None
