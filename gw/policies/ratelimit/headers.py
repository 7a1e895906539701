"""RateLimit and RateLimit-Policy fields (draft-ietf-httpapi-ratelimit-headers-10) and Retry-After.

    RateLimit-Policy: "api/per-second";q=10;w=1, "api/daily";q=10000;w=86400
    RateLimit: "api/per-second";r=3;t=1, "api/daily";r=9812;t=41234

One list member per limit, named "<policy>/<limit>"; `r` is the quota left, `t` the seconds until
it is restored (GCRA: the bucket is full again; sliding window: the current window ends).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from math import ceil

from gw.config.ratelimit import RateLimitPolicy

Fields = list[tuple[bytes, bytes]]


def limit_names(policy: RateLimitPolicy) -> list[bytes]:
    return [b'"%s/%s"' % (policy.meta.name.encode(), limit.name.encode()) for limit in policy.limits]


def policy_field(policy: RateLimitPolicy) -> tuple[bytes, bytes]:
    """The RateLimit-Policy field, fixed per policy: built once per config."""
    members = [
        b"%s;q=%d;w=%d" % (name, limit.requests, max(1, round(limit.period)))
        for name, limit in zip(limit_names(policy), policy.limits, strict=True)
    ]
    return (b"RateLimit-Policy", b", ".join(members))


def state_field(names: Sequence[bytes], limits: Sequence[tuple[int, float]]) -> tuple[bytes, bytes]:
    """The RateLimit field from (remaining, reset ms) per limit."""
    members = [
        b"%s;r=%d;t=%d" % (name, max(0, remaining), seconds(reset))
        for name, (remaining, reset) in zip(names, limits, strict=True)
    ]
    return (b"RateLimit", b", ".join(members))


def retry_after(retry_ms: float) -> tuple[bytes, bytes]:
    """At least 1 s (`seconds`, inlined: every refusal carries one)."""
    whole = ceil(retry_ms / 1000.0)
    return (b"Retry-After", b"%d" % whole if whole > 1 else b"1")


def seconds(ms: float) -> int:
    """Whole seconds, rounded up: a client told 0 would come back too early."""
    return max(0, math.ceil(ms / 1000.0))
