"""Parse BackendTrafficPolicy objects (gw.config.backend_policy has the shape), every problem naming its field."""

from __future__ import annotations

import dataclasses
import re
from typing import Any

from gw.config import fields as f
from gw.config import validate as v
from gw.config.backend_policy import (
    CONSISTENT_HASH,
    COOKIE,
    HEADER,
    HTTP,
    LEAST_REQUEST,
    MAX_TABLE_SIZE,
    QUERY_PARAMS,
    RANDOM,
    ROUND_ROBIN,
    SOURCE_IP,
    TABLE_SIZE,
    TCP,
    ActiveHealthCheck,
    BackendTrafficPolicy,
    CircuitBreaker,
    ConsistentHash,
    LoadBalancer,
    PassiveHealthCheck,
    RetryBudget,
    Tracing,
)
from gw.config.parse_filters import parse_fraction
from gw.config.parse_targets import group_matches, refuse_namespace
from gw.config.ratelimit import TargetRef
from gw.config.reader import Reader, type_name
from gw.config.resources import CORE_GROUP, GATEWAY_GROUP, GW_GROUP, Meta
from gw.config.session import parse_session_persistence
from gw.config.units import parse_duration

# The group of each kind a policy may target; a Service's may also be written "core".
TARGET_GROUPS = {"Service": CORE_GROUP, "Backend": GW_GROUP, "HTTPRoute": GATEWAY_GROUP, "Gateway": GATEWAY_GROUP}
MAX_COUNT = 2**31 - 1  # the CRDs' int32
# GEP-3388: a retry budget's intervals lie between one second and one hour.
RETRY_INTERVAL_MIN, RETRY_INTERVAL_MAX = 1.0, 3600.0
_TOKEN = re.compile(r"^[A-Za-z0-9!#$%&'*+\-.^_`|~]+$")  # RFC 9110 token: what a method may be


def parse_backend_traffic_policy(
    r: Reader, meta: Meta, spec: dict[str, Any], obj: Any, field: str
) -> BackendTrafficPolicy | None:
    before = r.count
    targets = _targets(r, spec, field)
    breaker = _circuit_breaker(r, spec.get("circuitBreaker"), f"{field}.circuitBreaker")
    health = r.map(spec.get("healthCheck"), f"{field}.healthCheck", f.HEALTH_CHECK)
    passive = _passive(r, health.get("passive"), f"{field}.healthCheck.passive")
    active = _active(r, health.get("active"), f"{field}.healthCheck.active")
    panic = r.int(health, "panicThreshold", f"{field}.healthCheck", lo=0, hi=100)
    retry_field, raw_retry = "retry", spec.get("retry")
    if spec.get("retryConstraint") is not None:
        if raw_retry is not None:
            r.error(f"{field}.retryConstraint", "is the Gateway API's name for `retry`: set one of them, not both")
        retry_field, raw_retry = "retryConstraint", spec["retryConstraint"]
    retry = _retry(r, raw_retry, f"{field}.{retry_field}")
    session = parse_session_persistence(r, spec.get("sessionPersistence"), f"{field}.sessionPersistence")
    if session is not None:
        session = dataclasses.replace(session, source=f"BackendTrafficPolicy {meta.key}")
    balancer = _load_balancer(r, spec.get("loadBalancer"), f"{field}.loadBalancer")
    tracing = _telemetry(r, spec.get("telemetry"), f"{field}.telemetry", targets)
    if r.count != before:
        return None  # a half-read policy would protect a backend otherwise than written
    return BackendTrafficPolicy(
        meta,
        targets,
        breaker,
        passive,
        active,
        panic,
        retry,
        session_persistence=session,
        load_balancer=balancer,
        tracing=tracing,
    )


def _targets(r: Reader, spec: dict[str, Any], field: str) -> tuple[TargetRef, ...]:
    given = spec.get("targetRefs")
    raw = r.list(given, f"{field}.targetRefs")
    if not raw and (given is None or isinstance(given, list)):
        r.error(f"{field}.targetRefs", "is required: at least one Service, Backend, HTTPRoute or Gateway")
    targets = []
    for i, t in enumerate(raw):
        t_field = f"{field}.targetRefs[{i}]"
        t = r.map(t, t_field, f.POLICY_TARGET_REF)
        kind = r.str(t, "kind", t_field, required=True, choices=TARGET_GROUPS)
        name = r.str(t, "name", t_field, required=True, check=v.check_object_name)
        section = r.str(t, "sectionName", t_field, check=v.check_section_name)
        refuse_namespace(r, t, t_field)
        if kind is None:
            continue
        expected = TARGET_GROUPS[kind]
        group_matches(r, t, t_field, kind, expected)
        if section is not None and kind in ("Backend", "Gateway"):
            what = "a gw Backend has no sections" if kind == "Backend" else "a policy on a Gateway covers all of it"
            r.error(f"{t_field}.sectionName", f"is not supported for a {kind}: {what}")
        if name:
            targets.append(TargetRef(expected, kind, name, section, i))
    return tuple(targets)


def _circuit_breaker(r: Reader, raw: Any, field: str) -> CircuitBreaker | None:
    if raw is None:
        return None
    cb = r.map(raw, field, f.CIRCUIT_BREAKER)
    d = CircuitBreaker()
    slow_ratio = _ratio(r, cb, "slowCallRatio", field)
    slow_duration = _duration(r, cb, "slowCallDuration", field)
    if slow_ratio is not None and slow_duration is None and "slowCallDuration" not in cb:
        r.error(f"{field}.slowCallRatio", "needs slowCallDuration: the duration beyond which a call is slow")
    return CircuitBreaker(
        max_connections=_count(r, cb, "maxConnections", field, d.max_connections),
        max_pending_requests=_count(r, cb, "maxPendingRequests", field, d.max_pending_requests),
        max_parallel_requests=_count(r, cb, "maxParallelRequests", field, d.max_parallel_requests),
        max_parallel_retries=_count(r, cb, "maxParallelRetries", field, d.max_parallel_retries),
        failure_ratio=_or(_ratio(r, cb, "failureRatio", field), d.failure_ratio),
        slow_call_duration=_or(slow_duration, d.slow_call_duration),
        slow_call_ratio=_or(slow_ratio, d.slow_call_ratio),
        window=_or(_duration(r, cb, "window", field), d.window),
        minimum_requests=_count(r, cb, "minimumRequests", field, d.minimum_requests, lo=1),
        open_duration=_or(_duration(r, cb, "openDuration", field), d.open_duration),
        half_open_requests=_count(r, cb, "halfOpenRequests", field, d.half_open_requests, lo=1),
    )


def _passive(r: Reader, raw: Any, field: str) -> PassiveHealthCheck | None:
    if raw is None:
        return None
    p = r.map(raw, field, f.PASSIVE_HEALTH_CHECK)
    d = PassiveHealthCheck()
    return PassiveHealthCheck(
        consecutive_5xx_errors=_count(r, p, "consecutive5XxErrors", field, d.consecutive_5xx_errors),
        consecutive_gateway_errors=_count(r, p, "consecutiveGatewayErrors", field, d.consecutive_gateway_errors),
        consecutive_local_origin_failures=_count(
            r, p, "consecutiveLocalOriginFailures", field, d.consecutive_local_origin_failures
        ),
        interval=_or(_duration(r, p, "interval", field), d.interval),
        base_ejection_time=_or(_duration(r, p, "baseEjectionTime", field), d.base_ejection_time),
        max_ejection_percent=_count(r, p, "maxEjectionPercent", field, d.max_ejection_percent, hi=100),
    )


def _active(r: Reader, raw: Any, field: str) -> ActiveHealthCheck | None:
    if raw is None:
        return None
    a = r.map(raw, field, f.ACTIVE_HEALTH_CHECK)
    d = ActiveHealthCheck()
    kind = r.str(a, "type", field, default=HTTP, choices=(HTTP, TCP)) or HTTP
    path, method, hostname, statuses = d.path, d.method, d.hostname, d.expected_statuses
    if a.get("http") is not None and kind != HTTP:
        r.error(f"{field}.http", f"applies to type HTTP only (this check is {kind})")
    elif a.get("http") is not None:
        h_field = f"{field}.http"
        h = r.map(a["http"], h_field, f.HTTP_HEALTH_CHECK)
        path = r.str(h, "path", h_field, default=path, check=_check_probe_path) or path
        method = r.str(h, "method", h_field, default=method, check=_check_method) or method
        hostname = r.str(h, "hostname", h_field, check=v.check_address)
        statuses = _statuses(r, h.get("expectedStatuses"), f"{h_field}.expectedStatuses") or statuses
    return ActiveHealthCheck(
        type=kind,
        path=path,
        method=method,
        hostname=hostname,
        expected_statuses=statuses,
        interval=_or(_duration(r, a, "interval", field), d.interval),
        timeout=_or(_duration(r, a, "timeout", field), d.timeout),
        unhealthy_threshold=_count(r, a, "unhealthyThreshold", field, d.unhealthy_threshold, lo=1),
        healthy_threshold=_count(r, a, "healthyThreshold", field, d.healthy_threshold, lo=1),
        initial_jitter=_or(_duration(r, a, "initialJitter", field, zero=True), d.initial_jitter),
    )


def _retry(r: Reader, raw: Any, field: str) -> RetryBudget | None:
    if raw is None:
        return None
    rc = r.map(raw, field, f.RETRY_CONSTRAINT)
    d = RetryBudget()
    budget = r.map(rc.get("budget"), f"{field}.budget", f.RETRY_BUDGET)
    rate = r.map(rc.get("minRetryRate"), f"{field}.minRetryRate", f.RETRY_RATE)
    return RetryBudget(
        percent=_count(r, budget, "percent", f"{field}.budget", d.percent, hi=100),
        interval=_or(_retry_interval(r, budget, f"{field}.budget"), d.interval),
        min_count=_count(r, rate, "count", f"{field}.minRetryRate", d.min_count),
        min_interval=_or(_retry_interval(r, rate, f"{field}.minRetryRate"), d.min_interval),
    )


def _load_balancer(r: Reader, raw: Any, field: str) -> LoadBalancer | None:
    if raw is None:
        return None
    lb = r.map(raw, field, f.LOAD_BALANCER)
    if not isinstance(raw, dict):
        return None  # (named by r.map; its type would be reported missing too)
    kind = r.str(lb, "type", field, required=True, choices=(ROUND_ROBIN, RANDOM, LEAST_REQUEST, CONSISTENT_HASH))
    for key in ("endpointOverride", "zoneAware"):
        if lb.get(key) is not None:
            r.error(f"{field}.{key}", "is not supported by gw")
    hashing = None
    if lb.get("consistentHash") is not None and kind != CONSISTENT_HASH:
        r.error(f"{field}.consistentHash", f"applies to type ConsistentHash only (this balancer is {kind})")
    elif kind == CONSISTENT_HASH:
        if lb.get("consistentHash") is None:
            r.error(f"{field}.consistentHash", "is required by type ConsistentHash: what to hash on")
        else:
            hashing = _consistent_hash(r, lb["consistentHash"], f"{field}.consistentHash")
    window = 0.0
    if lb.get("slowStart") is not None:
        s_field = f"{field}.slowStart"
        if kind in (RANDOM, CONSISTENT_HASH):
            r.error(s_field, f"applies to RoundRobin and LeastRequest only (this balancer is {kind})")
        else:
            slow = r.map(lb["slowStart"], s_field, f.SLOW_START)
            if slow.get("window") is None and isinstance(lb["slowStart"], dict):
                r.error(f"{s_field}.window", "is required: how long a new endpoint's weight ramps up")
            window = _or(_duration(r, slow, "window", s_field), 0.0)
    return LoadBalancer(type=kind or ROUND_ROBIN, consistent_hash=hashing, slow_start_window=window)


def _telemetry(r: Reader, raw: Any, field: str, targets: tuple[TargetRef, ...]) -> Tracing | None:
    telemetry = r.map(raw, field, f.BACKEND_TELEMETRY)
    if telemetry.get("metrics") is not None:
        r.error(f"{field}.metrics", "is not supported by gw (its metrics are named by route already)")
    if telemetry.get("tracing") is None:
        return None
    t_field = f"{field}.tracing"
    tracing = r.map(telemetry["tracing"], t_field, f.TRACING)
    if not isinstance(telemetry["tracing"], dict):
        return None  # (named by r.map)
    for t in targets:
        if t.kind in ("Service", "Backend"):
            # Sampling is decided where a request starts, by its route rule; a backend several
            # rules share has no one place for it (Envoy Gateway's policy never targets one).
            r.error(
                t_field,
                f"applies to route rules: target an HTTPRoute (a rule by sectionName) or a Gateway, "
                f"not targetRefs[{t.index}] ({t.kind} {t.name})",
            )
    if tracing.get("samplingRate") is not None:
        r.error(
            f"{t_field}.samplingRate",
            "is EnvoyProxy's field, not a BackendTrafficPolicy's: write samplingFraction "
            "(e.g. {numerator: 5} for 5%)",
        )
    for key in ("clientSamplingFraction", "overallSamplingFraction", "customTags", "tags", "spanName"):
        if tracing.get(key) is not None:
            r.error(f"{t_field}.{key}", "is not supported by gw (it applies samplingFraction only)")
    if tracing.get("samplingFraction") is None:
        if "samplingRate" not in tracing:
            r.error(
                f"{t_field}.samplingFraction",
                "is required by gw: the share of the rule's requests without a sampled parent that start a trace",
            )
        return None
    numerator, denominator = parse_fraction(r, tracing["samplingFraction"], f"{t_field}.samplingFraction")
    return Tracing(numerator, denominator)


def _consistent_hash(r: Reader, raw: Any, field: str) -> ConsistentHash | None:
    ch = r.map(raw, field, f.CONSISTENT_HASH)
    kind = r.str(ch, "type", field, required=True, choices=(SOURCE_IP, HEADER, COOKIE, QUERY_PARAMS))
    if ch.get("headers") is not None:
        r.error(f"{field}.headers", "is not supported by gw: hash on one header with type Header and `header`")
    # Each input's section goes with its type, and only with it (Envoy Gateway's rules).
    for key, owner in (("header", HEADER), ("cookie", COOKIE), ("queryParams", QUERY_PARAMS)):
        if ch.get(key) is not None and kind is not None and kind != owner:
            r.error(f"{field}.{key}", f"applies to type {owner} only (this hash is on {kind})")
        elif ch.get(key) is None and kind == owner:
            r.error(f"{field}.{key}", f"is required by type {owner}: which one to hash on")
    name, params, ttl = "", (), None
    if kind == HEADER and ch.get("header") is not None:
        h = r.map(ch["header"], f"{field}.header", f.HASH_HEADER)
        name = (r.str(h, "name", f"{field}.header", required=True, check=v.check_header_name) or "").lower()
    elif kind == COOKIE and ch.get("cookie") is not None:
        c_field = f"{field}.cookie"
        c = r.map(ch["cookie"], c_field, f.HASH_COOKIE)
        name = r.str(c, "name", c_field, required=True, check=_check_cookie_name) or ""
        ttl = _duration(r, c, "ttl", c_field)
        if c.get("attributes") is not None:
            r.error(f"{c_field}.attributes", "is not supported by gw: it does not generate the cookie")
    elif kind == QUERY_PARAMS and ch.get("queryParams") is not None:
        q_field = f"{field}.queryParams"
        raw_params = r.list(ch["queryParams"], q_field)
        if not raw_params and isinstance(ch["queryParams"], list):
            r.error(q_field, "must name at least one query parameter")
        names = []
        for i, p in enumerate(raw_params):
            p = r.map(p, f"{q_field}[{i}]", f.HASH_QUERY_PARAM)
            param = r.str(p, "name", f"{q_field}[{i}]", required=True, check=_check_param_name)
            if param is not None and param not in names:
                names.append(param)
        params = tuple(names)
    size = _count(r, ch, "tableSize", field, TABLE_SIZE, lo=2, hi=MAX_TABLE_SIZE)
    if not _prime(size):
        r.error(f"{field}.tableSize", f"{size} is not a prime number (Maglev's table size must be prime)")
    return ConsistentHash(type=kind or SOURCE_IP, name=name, params=params, cookie_ttl=ttl, table_size=size)


def _prime(n: int) -> bool:
    if n < 2:
        return False
    return all(n % d for d in range(2, int(n**0.5) + 1))


def _check_cookie_name(value: str) -> str | None:
    return None if _TOKEN.match(value) else f"{value!r} is not a cookie name (a token, RFC 6265)"


def _check_param_name(value: str) -> str | None:
    return None if value else "must not be empty"


def _count(
    r: Reader, obj: dict[str, Any], key: str, field: str, default: int, *, lo: int = 0, hi: int = MAX_COUNT
) -> int:
    value = r.int(obj, key, field, lo=lo, hi=hi)
    return default if value is None else value


def _or(value: float | None, default: float) -> float:
    return default if value is None else value


def _ratio(r: Reader, obj: dict[str, Any], key: str, field: str) -> float | None:
    value = obj.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        r.error(f"{field}.{key}", f"must be a number, not {type_name(value)}")
        return None
    if not 0 < value <= 1:
        r.error(f"{field}.{key}", f"{value} is not a share of calls: it must be more than 0 and at most 1")
        return None
    return float(value)


def _duration(r: Reader, obj: dict[str, Any], key: str, field: str, *, zero: bool = False) -> float | None:
    text = r.str(obj, key, field)
    if text is None:
        return None
    try:
        seconds = parse_duration(text)
    except ValueError as exc:
        r.error(f"{field}.{key}", str(exc))
        return None
    if seconds <= 0 and not zero:
        r.error(f"{field}.{key}", "must be longer than 0s")
        return None
    return seconds


def _retry_interval(r: Reader, obj: dict[str, Any], field: str) -> float | None:
    seconds = _duration(r, obj, "interval", field)
    if seconds is not None and not RETRY_INTERVAL_MIN <= seconds <= RETRY_INTERVAL_MAX:
        r.error(f"{field}.interval", "must be between 1s and 1h (GEP-3388)")
        return None
    return seconds


def _statuses(r: Reader, raw: Any, field: str) -> tuple[int, ...]:
    if raw == []:
        r.error(field, "must list at least one status (omit it for 200)")
    statuses = []
    for i, status in enumerate(r.list(raw, field)):
        if isinstance(status, bool) or not isinstance(status, int) or not 100 <= status <= 599:
            r.error(f"{field}[{i}]", f"{status!r} is not an HTTP status (100-599)")
        elif status not in statuses:
            statuses.append(status)
    return tuple(statuses)


def _check_probe_path(value: str) -> str | None:
    if not value.startswith("/"):
        return f"{value!r} must start with '/'"
    if any(c in value for c in " \t\r\n#") or not value.isascii():
        return f"{value!r} is not a request path (percent-encode spaces, controls and non-ASCII)"
    return None


def _check_method(value: str) -> str | None:
    return None if _TOKEN.match(value) else f"{value!r} is not an HTTP method (a token such as GET or HEAD)"
