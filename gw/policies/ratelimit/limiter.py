"""One RateLimitPolicy at run time: a request's keys → allowed or limited, counted in Redis or locally.

Modes (per policy):
  Exact   every token is taken by a call of gw/state/lua/ratelimit.lua (all the policy's limits at
          once) for a request waiting for it. A worker has at most one call in flight per key: the
          requests that arrive while it is out wait for it (bounded by the budget), and the next
          call asks for a token for each of them, so Redis traffic follows the number of keys and
          the round-trip time, not the offered load.
  Leased  each worker takes tokens from Redis in batches and spends them locally; a batch is sized
          to the key's observed rate (RATE_HORIZON seconds of it), at most `max_batch` tokens, and
          the next one is fetched in the background when half a batch is left, so most
          decisions need no round trip. Tokens are taken from the shared counter when leased, so
          the only over-admission is tokens leased before an interval and spent within it:
              admitted(any interval) <= exact limit + W * ceil(1.5 * max_batch)
              max_batch = max(1, floor(LEASE_FRACTION * min requests of the policy's limits))
          with W the workers holding leases on the key (all replicas). Unspent tokens expire
          after LEASE_TTL and are lost (under-admission only). With SlidingWindow limits a token is
          only spent in the window Redis counted it in (it expires at that window's end), and a
          batch asked for near the end covers only the time left: a window admits no tokens of
          the one before, and loses at most the few its workers hold unspent at its end.
Either mode caches a key found over the limit until the counter's retry time, so a flood of
rejected requests costs no Redis call.

A call past the guard's budget is overdue: its requests are decided by failureMode (below)
without waiting longer, and the key's next requests wait for its late answer, a budget at most,
before they are too. The call goes on (gw.state.guard,
LATE_LIMIT), and its late answer still counts: what Redis granted, less what failureMode admitted
meanwhile, becomes tokens this worker holds for the key's next requests (a token Redis counted is
spent by exactly one request, in either mode; Closed does not lose the tokens of the requests it
refused), and a key Redis found over its limit is cached as such.

`scope: Local` counts in this worker only, with each limit divided by the replica's worker count.

failureMode, when Redis cannot answer within the guard's budget (or its breaker is open); tokens a
worker already leased are spent first (Redis counted them when it granted them):
  Open    allow; Closed  answer 503; Local  count in this worker with each limit divided by the
  number of live workers of the fleet (heartbeats in Redis, gw.state.fleet).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from time import monotonic, time
from typing import Any, Protocol

from gw.config.ratelimit import CLOSED, GCRA, LEASED, LOCAL, OPEN, SLIDING_WINDOW, RateLimitPolicy
from gw.policies.ratelimit.algorithms import LocalCounter, Outcome, Quota
from gw.policies.ratelimit.headers import Fields, limit_names, policy_field, retry_after, state_field
from gw.policies.ratelimit.identify import key_function, reads_fields
from gw.state.batch import ScriptBatcher
from gw.state.guard import RedisUnavailable
from gw.state.scripts import load

SCRIPT = load("ratelimit")
LEASE_FRACTION = 0.005  # a worker's batch is at most this share of the smallest limit
RATE_HORIZON = 0.5  # seconds of a key's observed rate one batch covers
LEASE_TTL = 1.0  # seconds an unspent leased token stays usable
MAX_BLOCKED = 100_000  # over-limit keys remembered before the cache is cleared
OUTCOMES = ("allowed", "limited", "cached", "leased", "redis_unavailable_open", "redis_unavailable_closed",
            "redis_unavailable_local", "late_tokens")  # fmt: skip


class Verdict:
    """A decision: allowed (with fields for the response), or the status and fields to answer with."""

    __slots__ = ("allowed", "detail", "fields", "status")

    def __init__(self, allowed: bool, fields: Fields, status: int = 200, detail: str = "") -> None:
        self.allowed = allowed
        self.fields = fields
        self.status = status
        self.detail = detail


ALLOWED = Verdict(True, [])
# Called with the request and its verdict when Redis answered: the caller passes a function it
# keeps, so a decision made now allocates no closure.
Done = Callable[[Any, Verdict], None]


class Shared(Protocol):
    """What a worker lends its limiters: the loop, Redis (None without one), guard, key schema, fleet."""

    loop: Any
    redis: Any
    guard: Any
    keys: Any
    fleet: Any
    batcher: ScriptBatcher
    local_workers: int
    counters: dict[Any, int]  # the worker's metrics counters (gw.observe.metrics.Registry.counters)


class Lease:
    """One key in this worker: the tokens Redis granted it (a lease, or a late answer's), the
    requests waiting for Redis, and the one call in flight for it."""

    __slots__ = ("asking", "expires", "last_refill", "limits", "low", "overdue", "presumed", "refilling", "spent",
                 "tokens", "waiters", "wave", "window_end")  # fmt: skip

    def __init__(self, now: float) -> None:
        self.tokens = 0
        self.expires = 0.0
        self.refilling = False  # a call for this key is queued or in flight
        self.asking: list[Any] | None = None  # Exact: that call's arguments, raised while it is queued
        self.overdue = False  # that call is past its budget: decisions take the failureMode meanwhile
        self.presumed = 0  # requests the failureMode admitted meanwhile: charged to the late answer
        self.wave: Any = None  # the timer of the requests waiting for that late answer
        self.waiters: list[tuple[Done, Any]] = []
        self.spent = 0  # tokens spent since the last refill: the observed rate
        self.last_refill = now
        self.low = 0  # refill in the background when this few tokens are left
        self.limits: tuple[tuple[int, float], ...] = ()  # (remaining, reset ms) as Redis last said
        self.window_end = 0.0  # SlidingWindow: when the window the tokens were counted in ends


class PolicyLimiter:
    """Decides for one policy; shared by every rule the policy attaches to (counted per policy, not route)."""

    def __init__(self, policy: RateLimitPolicy, shared: Shared) -> None:
        self.policy = policy
        self.name = policy.meta.key
        self.shared = shared
        self.key_functions = [key_function(limit.key, policy.trusted_proxies) for limit in policy.limits]
        self.single_key = self.key_functions[0] if len(self.key_functions) == 1 else None
        self.one_key = not any(limit.key for limit in policy.limits)  # a global limit: b"" for all
        self.reads_fields = any(reads_fields(limit.key, policy.trusted_proxies) for limit in policy.limits)
        self.local_scope = policy.scope == LOCAL
        self.limit_names = [limit.name.encode() for limit in policy.limits]
        self.quotas = [
            Quota(policy.algorithm, limit.requests, limit.period * 1000.0, limit.burst) for limit in policy.limits
        ]
        self.argv: list[Any] = [a for q in self.quotas for a in q.script_args()]
        self.max_batch = max(1, math.floor(LEASE_FRACTION * min(limit.requests for limit in policy.limits)))
        self.leased = policy.mode == LEASED
        self.windowed = policy.algorithm == SLIDING_WINDOW
        self.gcra_only = policy.algorithm == GCRA
        self.headers = policy.response_headers
        self.names = limit_names(policy)
        self.policy_field = policy_field(policy)
        self.blocked: dict[bytes, float] = {}  # key → monotonic time it may be asked about again
        self.leases: dict[bytes, Lease] = {}
        self.local: LocalCounter | None = None
        self.local_divisor = 0
        self.stem: bytes | None = None
        # Counter keys built once: a decision bumps an integer, it does not format labels.
        self.metric = {
            outcome: ("gw_ratelimit_decisions_total", (("outcome", outcome), ("policy", self.name)))
            for outcome in OUTCOMES
        }
        self.leased_metric = self.metric["leased"]
        self.counters = shared.counters  # the worker's, kept across reloads

    def count(self, outcome: str, n: int = 1) -> None:
        counters = self.counters
        key = self.metric[outcome]
        counters[key] = counters.get(key, 0) + n

    # -- the decision ------------------------------------------------------------------------

    def decide(self, req: Any, fields: Fields, done: Done) -> Verdict | None:
        """A verdict now, or None: `done(req, verdict)` is called later (the exchange waits on Redis)."""
        single = self.single_key
        if self.one_key:
            key = b""
            parts = None
        elif single is not None:
            key = single(req, fields)
            parts = None  # [key], built when Redis is asked
        else:
            parts = [f(req, fields) for f in self.key_functions]
            key = b"\x1e".join(parts)
        now = monotonic()
        if self.blocked:
            until = self.blocked.get(key)
            if until is not None:
                if until > now:
                    self.count("cached")
                    return self._limited((until - now) * 1000.0, ())
                del self.blocked[key]
        if self.local_scope:
            return self._from_local(key, now, self.shared.local_workers)
        lease = self.leases.get(key)
        if lease is not None:
            # Most decisions in Leased mode: a token Redis granted this worker (valid whatever Redis
            # does now). In Exact mode, the tokens of a late answer.
            if lease.tokens > 0 and now < lease.expires:
                lease.tokens -= 1
                lease.spent += 1
                if self.leased and lease.tokens <= lease.low and not lease.refilling and self._redis_usable():
                    self._refill(key, parts, lease, now)
                counters, metric = self.counters, self.leased_metric
                counters[metric] = counters.get(metric, 0) + 1
                return self._allowed(lease.limits, lease.tokens) if self.headers else ALLOWED
            if lease.overdue:
                # This key's call is past its budget. Its answer may still come: wait for it, a
                # budget at most (a timer per key, not per request), unless the breaker says
                # Redis is out.
                if not self._redis_usable():
                    return self._presume(key, lease, now)
                lease.waiters.append((done, req))
                if lease.wave is None:
                    budget = self.shared.guard.budget
                    lease.wave = self.shared.loop.call_later(budget, self._overdue, key, lease)
                return None
        if not self._redis_usable():
            return self._failed(key, now)
        if lease is None:
            if len(self.leases) >= MAX_BLOCKED:
                self.leases.clear()
            lease = self.leases[key] = Lease(now)
        lease.tokens = 0  # what was left expired
        lease.waiters.append((done, req))
        if not lease.refilling:
            self._refill(key, parts, lease, now)
        elif lease.asking is not None:
            lease.asking[0] += 1  # the call is not sent yet (else this is ignored and asked for after it)
        return None

    def _redis_usable(self) -> bool:
        guard = self.shared.guard  # set together with the worker's Redis client, after it
        return guard is not None and not guard.refuses()

    # -- leases ------------------------------------------------------------------------------

    def _batch(self, lease: Lease, now: float) -> int:
        """Tokens to ask for: RATE_HORIZON seconds of the rate seen since the last refill, capped."""
        elapsed = now - lease.last_refill
        if lease.spent == 0 or elapsed <= 0:
            return 1
        horizon = RATE_HORIZON
        if lease.window_end > now:  # tokens counted in this window are for this window only
            horizon = min(horizon, lease.window_end - now)
        return max(1, min(self.max_batch, math.ceil(lease.spent / elapsed * horizon)))

    def _refill(self, key: bytes, parts: list[bytes] | None, lease: Lease, now: float) -> None:
        if self.leased:
            wanted = max(self._batch(lease, now), min(len(lease.waiters), self.max_batch))
            lease.low = wanted // 2  # refill early: a request that finds the lease empty waits for Redis
        else:
            wanted = len(lease.waiters)  # a token for each request waiting, none to spare
        lease.refilling = True
        lease.spent = 0
        lease.last_refill = now
        args = self._call(
            key, parts, wanted, lambda outcome: self._refilled(key, parts, lease, outcome),
            lambda: self._overdue(key, lease),
        )  # fmt: skip
        if not self.leased:
            lease.asking = args

    def _refilled(
        self, key: bytes, parts: list[bytes] | None, lease: Lease, outcome: Outcome | RedisUnavailable
    ) -> None:
        lease.refilling = False
        lease.asking = None
        if lease.wave is not None:
            lease.wave.cancel()
            lease.wave = None
        waiters, lease.waiters = lease.waiters, []
        if isinstance(outcome, RedisUnavailable):
            lease.overdue = False
            lease.presumed = 0
            now = monotonic()
            for done, req in waiters:
                done(req, self._failed(key, now))
            return
        now = monotonic()
        if now >= lease.expires:
            lease.tokens = 0  # what is left was counted in a window that has ended
        granted = outcome.granted
        if lease.overdue:
            # A late answer: Redis counted `granted` tokens for requests already decided. Those the
            # failureMode admitted spent them; the rest are this worker's to spend.
            lease.overdue = False
            granted = max(0, granted - lease.presumed)
            lease.presumed = 0
            if granted:
                self.count("late_tokens", granted)
        lease.tokens += granted
        lease.expires = now + LEASE_TTL
        if self.windowed and outcome.limits:
            # The window ends `reset` ms after Redis counted, which was after we asked: from the
            # asking time, the end is never overestimated.
            lease.window_end = lease.last_refill + min(reset for _, reset in outcome.limits) / 1000.0
            lease.expires = min(lease.expires, lease.window_end)
        lease.limits = outcome.limits
        served = 0
        for done, req in waiters:
            if lease.tokens <= 0:
                break
            lease.tokens -= 1
            lease.spent += 1
            served += 1
            self.count("allowed")
            done(req, self._allowed(lease.limits, lease.tokens) if self.headers else ALLOWED)
        rest = waiters[served:]
        # GCRA's "none left" lasts exactly one interval; a sliding window's ends as the previous
        # window's share decays, which only Redis's own retry time says (it answers 0 with it).
        exhausted = not outcome.granted or (
            self.gcra_only and outcome.limits and min(r for r, _ in outcome.limits) == 0
        )
        if exhausted and lease.tokens > 0:
            # Redis has no more, but this worker still holds tokens it granted: spend them first,
            # and ask again (and learn the key is over) only when they are gone.
            lease.low = -1
        elif exhausted:  # none left for the rest, nor for the next requests until the retry time
            retry = outcome.retry or self._retry(outcome.limits)
            self._block(key, retry)
            for done, req in rest:
                self.count("limited")
                done(req, self._limited(retry, outcome.limits))
        elif rest:  # more waiters than tokens: ask again for them (Redis says if the key is now out)
            lease.waiters = rest + lease.waiters
            self._refill(key, parts, lease, now)
            return
        self._forget(key, lease)

    def _forget(self, key: bytes, lease: Lease) -> None:
        """Exact: a key with no tokens, no call and no waiters needs no entry (a key flood keeps none)."""
        if not self.leased and not lease.tokens and not lease.refilling and self.leases.get(key) is lease:
            del self.leases[key]

    def _overdue(self, key: bytes, lease: Lease) -> None:
        """The key's call (or the wait for its late answer) passed its budget: decide the requests
        waiting without Redis (its answer still counts when it comes)."""
        lease.wave = None
        if not lease.refilling:
            return  # answered meanwhile
        lease.overdue = True
        waiters, lease.waiters = lease.waiters, []
        now = monotonic()
        for done, req in waiters:
            done(req, self._presume(key, lease, now))

    def _presume(self, key: bytes, lease: Lease, now: float) -> Verdict:
        verdict = self._failed(key, now)
        if verdict.allowed:
            lease.presumed += 1
        return verdict

    def _retry(self, limits: tuple[tuple[int, float], ...]) -> float:
        """ms until a GCRA key Redis left at 0 has a token again: one interval past the time it is
        full (`reset`) less its burst; never less than 1 ms."""
        retry = 1.0
        for quota, (remaining, reset) in zip(self.quotas, limits, strict=False):
            if remaining <= 0:
                interval = quota.period / quota.requests
                retry = max(retry, math.ceil(reset + interval - quota.burst * interval))
        return retry

    # -- Redis ---------------------------------------------------------------------------------

    def _call(
        self, key: bytes, parts: list[bytes] | None, wanted: int, then: Callable[[Any], None],
        overdue: Callable[[], None],
    ) -> list[Any]:  # fmt: skip
        """Ask Redis for `wanted` tokens of the key; returns the call's arguments ([0] is `wanted`)."""
        if parts is None:
            parts = [key] * len(self.limit_names)  # one key function, or none (b"" for every limit)
        shared = self.shared
        stem = self.stem
        if stem is None:
            stem = self.stem = shared.keys.ratelimit(self.name).encode()
        keys = [b"%s:%s:%s" % (stem, name, part) for name, part in zip(self.limit_names, parts, strict=True)]
        args = [wanted, *self.argv]
        shared.batcher.submit(keys, args, lambda reply: then(_outcome(reply)), overdue)
        return args

    def _block(self, key: bytes, retry_ms: float) -> None:
        if len(self.blocked) >= MAX_BLOCKED:
            self.blocked.clear()  # a flood of distinct keys: forgetting costs Redis calls, not correctness
        self.blocked[key] = monotonic() + retry_ms / 1000.0

    # -- without Redis -------------------------------------------------------------------------

    def _failed(self, key: bytes, now: float) -> Verdict:
        mode = self.policy.failure_mode
        self.count(f"redis_unavailable_{mode.lower()}")
        if mode == OPEN:
            return ALLOWED
        if mode == CLOSED:
            detail = f"rate limit {self.name} cannot be checked (shared state unavailable)"
            return Verdict(False, [retry_after(1000.0)], 503, detail)
        fleet = self.shared.fleet
        live = fleet.live if fleet is not None and fleet.live else self.shared.local_workers
        return self._from_local(key, now, live)

    def _from_local(self, key: bytes, now: float, divisor: int) -> Verdict:
        divisor = max(1, divisor)
        if self.local is None or self.local_divisor != divisor:
            quotas = [
                Quota(q.algorithm, max(1.0, q.requests / divisor), q.period, max(1.0, q.burst / divisor))
                for q in self.quotas
            ]
            self.local = LocalCounter(quotas)
            self.local_divisor = divisor
        # Wall-clock ms, as Redis counts: local sliding windows line up with the shared ones, so
        # a fleet falling back mid-run splits each window's limit instead of restarting it.
        outcome = self.local.take(key, 1, time() * 1000.0)
        if outcome.granted:
            return self._allowed(outcome.limits, 0) if self.headers else ALLOWED
        return self._limited(outcome.retry, outcome.limits)

    # -- verdicts --------------------------------------------------------------------------------

    def _allowed(self, limits: tuple[tuple[int, float], ...], held: int) -> Verdict:
        if not limits:
            return Verdict(True, [self.policy_field])
        if held:  # Redis's last count plus the tokens this worker still holds of it
            limits = tuple((remaining + held, reset) for remaining, reset in limits)
        return Verdict(True, [self.policy_field, state_field(self.names, limits)])

    def _limited(self, retry_ms: float, limits: tuple[tuple[int, float], ...]) -> Verdict:
        fields = [retry_after(retry_ms)]
        if self.headers:
            if not limits:
                limits = tuple((0, retry_ms) for _ in self.names)
            fields += [self.policy_field, state_field(self.names, limits)]
        return Verdict(False, fields, 429, f"rate limit {self.name} exceeded")


def _outcome(reply: Any) -> Outcome | RedisUnavailable:
    """The script's answer as an Outcome; RedisUnavailable passes through."""
    if isinstance(reply, RedisUnavailable):
        return reply
    granted, retry = int(reply[0]), float(reply[1])
    limits = tuple((int(reply[i]), float(reply[i + 1])) for i in range(2, len(reply), 2))
    return Outcome(granted, retry, limits)
