"""Every metric family gw exports: its type, its help, and the series that exist from the start.

A counter that appears only with its first increment hides that increment from `increase()` and
`rate()`, so an alert on the first worker restart or the first proxy error would never fire.
Unlabelled counters, and counters whose label values are a fixed set, are therefore exported at 0
from the first scrape; a family labelled by what the config names (route, endpoint, backend,
policy) has its HELP and TYPE until its first series. The label values here must name what the
code counts: tests/test_observability.py checks them against it.
"""

from __future__ import annotations

from dataclasses import dataclass

COUNTER, GAUGE, HISTOGRAM = "counter", "gauge", "histogram"


@dataclass(frozen=True)
class Family:
    type: str
    help: str
    label: str = ""  # its first label: "" for an unlabelled family
    values: tuple[str, ...] = ()  # that label's values when fixed: each series exported at 0 from the start

    def zero_series(self) -> list[tuple[tuple[str, str], ...]]:
        """The label sets of the series this family has before anything is counted."""
        if self.type != COUNTER:
            return []
        if not self.label:
            return [()]
        return [((self.label, value),) for value in self.values]


# Proxy errors answered with a 5xx status (gw.errors: the `kind` of each ProxyError).
PROXY_ERROR_KINDS = (
    "auth-overloaded",
    "backend-overflow",
    "circuit-open",
    "http-version-not-supported",
    "internal-error",
    "not-implemented",
    "no-healthy-endpoint",
    "oidc-provider-unavailable",
    "overloaded",
    "phase-timeout",
    "rate-limit-unavailable",
    "route-misconfigured",
    "session-store-unavailable",
    "upstream-connect-failed",
    "upstream-protocol-error",
    "upstream-timeout",
    "upstream-tls-failed",
)
# A retry's reason: a status among the rule's codes, a pooled connection found closed, or the
# kind of the failed attempt (the ProxyErrors with attempt_failed).
RETRY_REASONS = (
    "status",
    "stale-connection",
    "upstream-connect-failed",
    "upstream-protocol-error",
    "upstream-timeout",
    "upstream-tls-failed",
)
# gw_sessions_total's results (gw.policies.session): a new session; one moved off an endpoint gone,
# ejected or refusing; a cookie that failed verification (tampered, expired, another rule's or
# key's); a request whose header id went by the hash because Redis did not answer.
SESSION_RESULTS = ("created", "repinned", "invalid", "hashed")
# gw_trace_spans_dropped_total's reasons (gw.observe.tracing).
TRACE_DROP_REASONS = ("queue-full", "export-failed")
TIMEOUT_KINDS = ("request", "header", "body", "phase", "connect", "response", "response-body")

FAMILIES: dict[str, Family] = {
    # -- requests (per route: gw.observe.metrics.RouteStats) ---------------------------------
    "gw_http_requests_total": Family(COUNTER, "Requests answered, by route and status class.", "route"),
    "gw_http_request_duration_seconds": Family(HISTOGRAM, "Time from request start to response end.", "route"),
    "gw_http_request_size_bytes": Family(
        HISTOGRAM, "Request body bytes read, of requests that reached a backend, by route (0: no body).", "route"
    ),
    "gw_http_response_size_bytes": Family(
        HISTOGRAM, "Response body bytes sent, of requests that reached a backend, by route.", "route"
    ),
    # -- per backend (gw.observe.metrics.BackendStats), by the name the config gives it -----------
    "gw_backend_requests_total": Family(
        COUNTER, "Requests that reached an endpoint of a backend, by backend and status class.", "backend"
    ),
    "gw_backend_request_duration_seconds": Family(
        HISTOGRAM,
        "Time from request start to response end, of requests that reached an endpoint, by backend.",
        "backend",
    ),
    "gw_upstream_duration_seconds": Family(
        HISTOGRAM, "Time from the request head written upstream to the response head read, by backend.", "backend"
    ),
    "gw_upstream_connect_duration_seconds": Family(
        HISTOGRAM, "Time to open an upstream connection (TLS handshake included), by backend.", "backend"
    ),
    "gw_backend_pool_connections": Family(
        GAUGE, "Upstream connections of a backend's endpoints, by state: idle (pooled) or busy (lent).", "backend"
    ),
    # -- proxy errors, retries, timeouts -----------------------------------------------------
    "gw_proxy_errors_total": Family(
        COUNTER, "Requests the gateway answered itself with a 5xx, by error kind.", "kind", PROXY_ERROR_KINDS
    ),
    "gw_internal_errors_total": Family(COUNTER, "Unexpected exceptions caught on a request path."),
    "gw_timeouts_total": Family(COUNTER, "Deadlines that passed, by what was awaited.", "kind", TIMEOUT_KINDS),
    "gw_upstream_retries_total": Family(COUNTER, "Upstream attempts retried, by reason.", "reason", RETRY_REASONS),
    "gw_upstream_connect_errors_total": Family(COUNTER, "Upstream connections that failed, by endpoint.", "endpoint"),
    # -- backend resilience (BackendTrafficPolicy: gw.balancing.resilience) ----------------------
    "gw_circuit_state": Family(
        GAUGE, "A backend's circuit as this replica sees it: 0 closed, 1 open, 2 half-open.", "backend"
    ),
    "gw_circuit_transitions_total": Family(
        COUNTER, "Circuit transitions decided by this replica, by backend and state entered.", "backend"
    ),
    "gw_endpoint_health": Family(
        GAUGE, "An endpoint's health as this replica sees it: 1 usable, 0 ejected or failing its probes.", "backend"
    ),
    "gw_endpoint_ejections_total": Family(
        COUNTER, "Outlier ejections decided by this replica (fleet-wide ejections count once), by endpoint.", "backend"
    ),
    "gw_backend_event_delay_seconds": Family(
        HISTOGRAM, "From a backend event's decision (Redis's clock) to a worker applying it (circuit, ejection, probe)."
    ),
    "gw_retries_refused_total": Family(
        COUNTER, "Retries not sent: over the retry budget or maxParallelRetries, by backend.", "backend"
    ),
    # -- load balancing and sessions (gw.balancing.picker, gw.policies.session) ------------------
    "gw_backend_load_balancer": Family(
        GAUGE,
        "1 for each backend of the served config, labelled with its loadBalancer type (RoundRobin by default).",
        "backend",
    ),
    "gw_endpoint_in_flight": Family(
        GAUGE, "Requests in flight to an endpoint of a LeastRequest backend, over this replica's workers.", "backend"
    ),
    "gw_sessions_total": Family(
        COUNTER,
        "Sessions (sessionPersistence) by rule, type and result: created, repinned (its endpoint gone, ejected or "
        "refusing), invalid (a cookie tampered, expired or another rule's), hashed (a request whose id went by "
        "the hash: no Redis).",
        "rule",
    ),
    "gw_upstream_protocol_errors_total": Family(COUNTER, "Upstream responses that were not valid HTTP/1.1."),
    "gw_upstream_resets_total": Family(COUNTER, "Upstream connections lost in the middle of a response."),
    # -- connections -------------------------------------------------------------------------
    "gw_client_connections": Family(GAUGE, "Open client connections."),
    "gw_upstream_connections": Family(GAUGE, "Open upstream connections, busy and idle."),
    "gw_upstream_connections_idle": Family(GAUGE, "Idle upstream connections kept for reuse."),
    # -- mirrors -----------------------------------------------------------------------------
    "gw_mirror_requests_total": Family(
        COUNTER, "Mirrored copies of requests, by mirror backend and result.", "backend"
    ),
    "gw_mirror_requests_in_flight": Family(GAUGE, "Mirrored copies under way."),
    "gw_auth_calls_in_flight": Family(GAUGE, "External authorization calls (extAuth, ExternalAuth) under way."),
    # -- tracing (GW_OTLP_ENDPOINT: gw.observe.tracing) ------------------------------------------
    "gw_trace_spans_exported_total": Family(COUNTER, "Spans the OTLP collector accepted."),
    "gw_trace_spans_dropped_total": Family(
        COUNTER,
        "Spans dropped, by reason: queue-full (the export queue was full: the collector slow or down), "
        "export-failed (the collector refused a batch or could not be reached).",
        "reason",
        TRACE_DROP_REASONS,
    ),
    # -- authentication and authorization (SecurityPolicy: gw.policies.security) ---------------
    "gw_auth_decisions_total": Family(
        COUNTER,
        "SecurityPolicy decisions, by policy and result: authenticated, unauthenticated (401), allowed, denied "
        "(403, or the external authorization service's answer), overloaded (503: password checks or external "
        "authorization calls queued past the bound), error (the external authorization service did not answer).",
        "policy",
    ),
    "gw_auth_password_checks_total": Family(
        COUNTER,
        "Password hashes verified (basicAuth), by policy: a credential answered from the cache checks none.",
        "policy",
    ),
    "gw_auth_jwt_refusals_total": Family(
        COUNTER,
        "Requests a SecurityPolicy jwt did not authenticate, by policy and reason: missing (no token), malformed, "
        "alg_not_allowed, unknown_kid, bad_signature, expired, not_yet_valid, wrong_issuer, wrong_audience.",
        "policy",
    ),
    "gw_auth_oidc_events_total": Family(
        COUNTER,
        "OpenID Connect sessions of a SecurityPolicy oidc, by policy and event: login, login_refused (401 at the "
        "callback), refreshed (an access token renewed), logout.",
        "policy",
    ),
    # -- rate limits and Redis ---------------------------------------------------------------
    "gw_ratelimit_decisions_total": Family(COUNTER, "Rate-limit decisions, by policy and outcome.", "policy"),
    "gw_redis_calls_total": Family(
        COUNTER,
        "Redis calls on request paths that got no answer in their budget, by outcome (late: answered after it).",
        "outcome",
        ("timeout", "late", "error", "open"),
    ),
    "gw_redis_call_duration_seconds": Family(HISTOGRAM, "Redis calls on request paths that got an answer."),
    "gw_redis_breaker_open": Family(GAUGE, "Workers whose Redis breaker is not closed."),
    "gw_redis_breaker_opened_total": Family(COUNTER, "Times a worker's Redis breaker opened."),
    "gw_redis_connected": Family(
        GAUGE, "1 while the supervisor follows the config versions in Redis; 0 while Redis is unreachable."
    ),
    # The fleet view (/fleet): what Redis holds for every replica, read by the supervisor every few
    # seconds; absent while Redis does not answer (unknown, not 0).
    "gw_fleet_workers": Family(
        GAUGE, "Live workers of the whole fleet per their Redis heartbeats (what local rate limits divide by)."
    ),
    "gw_fleet_replicas": Family(
        GAUGE, "Replicas (supervisors) whose record in Redis is live: each beats it every 2 s, whatever its config."
    ),
    "gw_fleet_beats_failed_total": Family(
        COUNTER, "Beats of this replica's record that Redis did not take in time (this replica is missing from /fleet)."
    ),
    "gw_fleet_config_version": Family(
        GAUGE, "The config version Redis holds as the fleet's current one (compare gw_config_version)."
    ),
    "gw_fleet_circuits_open": Family(GAUGE, "Backends whose fleet-wide circuit in Redis is not closed."),
    "gw_fleet_endpoints_ejected": Family(GAUGE, "Endpoints ejected fleet-wide per Redis, over every backend."),
    # -- supervisor --------------------------------------------------------------------------
    "gw_workers": Family(GAUGE, "Worker slots."),
    # At 0 per slot from the start too: the slots are the supervisor's to name (render_metrics).
    "gw_worker_restarts_total": Family(COUNTER, "Workers restarted after an unexpected exit, by slot.", "slot"),
    "gw_worker_recycled_total": Family(
        COUNTER, "Workers replaced gracefully for exceeding a limit, by reason.", "reason", ("rss",)
    ),
    "gw_config_version": Family(GAUGE, "The config version the supervisor serves."),
    "gw_config_unpublished": Family(
        GAUGE, "1 while the supervisor serves a snapshot Redis does not hold yet (based on gw_config_version)."
    ),
    "gw_worker_config_version": Family(GAUGE, "The config version each worker serves.", "slot"),
    # Fixed values: gw.balancing.probe's PASS, FAIL (an unexpected status), ERROR (no valid answer in time).
    "gw_health_checks_total": Family(
        COUNTER,
        "Active health probes this replica sent, by result: pass, fail (an unexpected status), error (no answer).",
        "result",
        ("pass", "fail", "error"),
    ),
    "gw_config_reloads_total": Family(
        COUNTER,
        "Config reloads, by result: applied (a HUP's new config), unchanged, rejected, fleet (a version from Redis).",
        "result",
        ("applied", "unchanged", "rejected", "fleet"),
    ),
}
