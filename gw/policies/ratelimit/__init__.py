"""Rate limiting (RateLimitPolicy): GCRA and sliding window, exact or leased, in Redis or local.

A rule with policies gets the rate-limit phase (gw.policies.ratelimit.phase), which calls
`limiter.decide(exchange, fields, done)`: a Verdict, or None when the answer comes later through
`done` (a Redis round trip).
"""

from gw.policies.ratelimit.limiter import ALLOWED, PolicyLimiter, Verdict
from gw.policies.ratelimit.runtime import LimiterGroup, Limiters

__all__ = ["ALLOWED", "LimiterGroup", "Limiters", "PolicyLimiter", "Verdict"]
