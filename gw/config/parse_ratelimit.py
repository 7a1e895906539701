"""Parse RateLimitPolicy objects (gw.config.ratelimit has the shape), every problem naming its field."""

from __future__ import annotations

import ipaddress
import re
from typing import Any

from gw.config import validate as v
from gw.config.ratelimit import (
    CLOSED,
    EXACT,
    GCRA,
    GLOBAL,
    HEADER,
    KEY_TYPES,
    KEY_TYPES_LATER,
    KEY_TYPES_NAMED,
    LEASED,
    LOCAL,
    OPEN,
    SLIDING_WINDOW,
    KeyPart,
    Limit,
    RateLimitPolicy,
    TargetRef,
)
from gw.config.reader import Reader
from gw.config.resources import GATEWAY_GROUP, Meta
from gw.config.units import parse_duration

MAX_LIMITS = 8  # one script call carries every limit of a policy; keep it small
_LIMIT_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


def parse_rate_limit_policy(
    r: Reader, meta: Meta, spec: dict[str, Any], obj: Any, field: str
) -> RateLimitPolicy | None:
    before = r.count
    targets = []
    for i, t in enumerate(r.list(spec.get("targetRefs"), f"{field}.targetRefs")):
        t_field = f"{field}.targetRefs[{i}]"
        t = r.map(t, t_field)
        group = r.str(t, "group", t_field, default=GATEWAY_GROUP)
        kind = r.str(t, "kind", t_field, required=True, choices=("Gateway", "HTTPRoute"))
        name = r.str(t, "name", t_field, required=True, check=v.check_object_name)
        section = r.str(t, "sectionName", t_field, check=v.check_section_name)
        if group != GATEWAY_GROUP:
            r.error(f"{t_field}.group", f"{group!r}: a RateLimitPolicy targets gateway.networking.k8s.io kinds")
        if t.get("namespace") is not None:
            r.error(f"{t_field}.namespace", "is not allowed: a policy targets objects in its own namespace (GEP-713)")
        if kind and name:
            targets.append(TargetRef(group or "", kind, name, section, i))
    # No targetRefs: the policy applies only where an HTTPRoute's ExtensionRef filter names it.
    algorithm = r.str(spec, "algorithm", field, default=GCRA, choices=(GCRA, SLIDING_WINDOW)) or GCRA
    mode = r.str(spec, "mode", field, default=EXACT, choices=(EXACT, LEASED)) or EXACT
    scope = r.str(spec, "scope", field, default=GLOBAL, choices=(GLOBAL, LOCAL)) or GLOBAL
    failure = r.str(spec, "failureMode", field, default=OPEN, choices=(OPEN, CLOSED, LOCAL)) or OPEN
    headers = spec.get("responseHeaders", False)
    if not isinstance(headers, bool):
        r.error(f"{field}.responseHeaders", "must be true or false")
        headers = False
    proxies = []
    for i, cidr in enumerate(r.list(spec.get("trustedProxies"), f"{field}.trustedProxies")):
        try:
            proxies.append(ipaddress.ip_network(cidr, strict=False))
        except (TypeError, ValueError):
            r.error(f"{field}.trustedProxies[{i}]", f"{cidr!r} is not an address or CIDR range")
    limits = _limits(r, spec, field, algorithm)
    if r.count != before:
        return None  # a half-read policy would limit something other than what was written
    return RateLimitPolicy(meta, tuple(targets), limits, algorithm, mode, scope, failure, headers, tuple(proxies))


def _limits(r: Reader, spec: dict[str, Any], field: str, algorithm: str) -> tuple[Limit, ...]:
    raw = r.list(spec.get("limits"), f"{field}.limits")
    if not raw:
        r.error(f"{field}.limits", "is required: at least one limit")
    elif len(raw) > MAX_LIMITS:
        r.error(f"{field}.limits", f"at most {MAX_LIMITS} limits per policy")
    limits: list[Limit] = []
    for i, item in enumerate(raw[:MAX_LIMITS]):
        l_field = f"{field}.limits[{i}]"
        item = r.map(item, l_field)
        name = r.str(item, "name", l_field, default=str(i), check=_check_limit_name) or str(i)
        if any(lim.name == name for lim in limits):
            r.error(f"{l_field}.name", f"{name!r} names another limit of this policy too")
        requests = r.int(item, "requests", l_field, required=True, lo=1, hi=10**12)
        period = _period(r, item, l_field)
        burst = r.int(item, "burst", l_field, lo=1, hi=10**12)
        if burst is not None and algorithm != GCRA:
            r.error(f"{l_field}.burst", "applies to the GCRA algorithm only")
        key = _key(r, item.get("key"), f"{l_field}.key")
        if requests is not None and period is not None:
            limits.append(Limit(name, requests, period, burst or requests, key))
    return tuple(limits)


def _check_limit_name(value: str) -> str | None:
    return None if _LIMIT_NAME.match(value) else "must be a DNS label (lower-case letters, digits, '-')"


def _period(r: Reader, item: dict[str, Any], field: str) -> float | None:
    text = r.str(item, "per", field, required=True)
    if text is None:
        return None
    try:
        period = parse_duration(text)
    except ValueError as exc:
        r.error(f"{field}.per", str(exc))
        return None
    if period < 0.001:
        r.error(f"{field}.per", "must be at least 1ms")
        return None
    return period


def _key(r: Reader, raw: Any, field: str) -> tuple[KeyPart, ...]:
    parts: list[KeyPart] = []
    for i, p in enumerate(r.list(raw, field)):
        p_field = f"{field}[{i}]"
        p = r.map(p, p_field)
        kind = p.get("type")
        if kind in KEY_TYPES_LATER:
            r.error(f"{p_field}.type", f"{kind} keys are not served by gw yet")
            continue
        kind = r.str(p, "type", p_field, required=True, choices=KEY_TYPES)
        if kind is None:
            continue
        name = ""
        if kind in KEY_TYPES_NAMED:
            check = v.check_header_name if kind == HEADER else None
            name = r.str(p, "name", p_field, required=True, check=check) or ""
            if kind == HEADER:
                name = name.lower()
        elif p.get("name") is not None:
            r.error(f"{p_field}.name", f"a {kind} key has no name")
        part = KeyPart(kind, name)
        if part in parts:
            r.error(p_field, "repeats an earlier part of this key")
        parts.append(part)
    return tuple(parts)
