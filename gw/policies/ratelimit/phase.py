"""The rate-limit phase: the rule's RateLimitPolicies decide; a refusal answers 429 (or 503, failureMode Closed)."""

from __future__ import annotations

from typing import Any

from gw.errors import RateLimited
from gw.policies.phase import ANSWERED, CONTINUE, WAIT, Exchange, Phase
from gw.policies.ratelimit.limiter import Verdict

NO_FIELDS: list[tuple[bytes, bytes]] = []


class RateLimitPhase(Phase):
    kind = "rate-limit"

    def __init__(self, limiter: Any) -> None:
        self.limiter = limiter  # a PolicyLimiter, or a LimiterGroup for several policies
        # Only a key on a header or on X-Forwarded-For splits the head into fields: a rule
        # whose only phase this is forwards its head as it came.
        self.reads_fields = limiter.reads_fields
        self.decided = self._decided  # one bound method, not one closure per request
        # The last refusal and its error: a flood is refused with the same answer (its Retry-After
        # changes once a second), and building the exception per refused request cost 3k of 70k
        # instructions (scripts/hotpath --refused). gw never raises it: one serves equal verdicts.
        self.refused = Verdict(False, NO_FIELDS, 0)
        self.refusal = RateLimited("", 429, NO_FIELDS)

    def on_request(self, ex: Exchange) -> int:
        fields = ex.fields() if self.reads_fields else NO_FIELDS
        verdict = self.limiter.decide(ex, fields, self.decided)
        if verdict is None:
            return WAIT  # Redis is asked; the guard's budget bounds the wait
        if verdict.allowed:  # (_apply, inlined: this runs per request, and under a flood per refusal)
            if verdict.fields:
                ex.add_response_fields(verdict.fields)
            return CONTINUE
        last = self.refused
        if last is not verdict and (
            last.fields != verdict.fields or last.detail != verdict.detail or last.status != verdict.status
        ):
            self.refused = verdict
            self.refusal = RateLimited(verdict.detail, verdict.status, verdict.fields)
        ex.fail(self.refusal)
        return ANSWERED

    def _decided(self, ex: Exchange, verdict: Verdict) -> None:
        if _apply(ex, verdict) == CONTINUE:
            ex.resume()


def _apply(ex: Exchange, verdict: Verdict) -> int:
    if not verdict.allowed:
        ex.fail(RateLimited(verdict.detail, verdict.status, verdict.fields))
        return ANSWERED
    ex.add_response_fields(verdict.fields)
    return CONTINUE


def build(rule: Any, services: Any) -> Phase | None:
    policies = rule.rate_limit_policies
    return RateLimitPhase(services.limiters.for_policies(policies)) if policies else None
