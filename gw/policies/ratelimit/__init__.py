"""Rate limiting (RateLimitPolicy): GCRA and sliding window, exact or leased, in Redis or local.

The proxy calls `rule.limiters.decide(request, fields, done)` for rules that have policies; it
returns a Verdict, or None when the answer comes later through `done` (a Redis round trip).
"""

from gw.policies.ratelimit.limiter import ALLOWED, PolicyLimiter, Verdict
from gw.policies.ratelimit.runtime import RateLimits, RuleLimits

__all__ = ["ALLOWED", "PolicyLimiter", "RateLimits", "RuleLimits", "Verdict"]
