"""GCRA and sliding-window counting in this process: the same arithmetic as gw/state/lua/ratelimit.lua.

Used where a limit is counted without Redis: `scope: Local`, and `failureMode: Local` while Redis
cannot answer. Times are milliseconds on the caller's clock (monotonic here, Redis TIME there).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from gw.config.ratelimit import GCRA

EPSILON = 1e-9  # float slack, as in the script: 0.9999999999 tokens is one token
MAX_KEYS = 100_000  # counters kept per limiter before idle ones are dropped


@dataclass(frozen=True, slots=True)
class Quota:
    """One limit as counted: `requests` per `period` ms, GCRA bucket `burst` deep."""

    algorithm: str
    requests: float
    period: float  # ms
    burst: float

    def script_args(self) -> tuple[str, float, float, float]:
        return ("g" if self.algorithm == GCRA else "w", self.requests, self.period, self.burst)


@dataclass(frozen=True, slots=True)
class Outcome:
    """What a counter said: tokens granted, ms to wait when none, then (remaining, reset ms) per limit."""

    granted: int
    retry: float
    limits: tuple[tuple[int, float], ...]


class LocalCounter:
    """All limits of one policy, per key, in this process (not shared with any other)."""

    __slots__ = ("quotas", "state")

    def __init__(self, quotas: Sequence[Quota]) -> None:
        self.quotas = tuple(quotas)
        # key → per limit: [tat] (GCRA) or [window index, current count, previous count]
        self.state: dict[object, list[list[float]]] = {}

    def take(self, key: object, wanted: int, now: float) -> Outcome:
        state = self.state.get(key)
        if state is None:
            if len(self.state) >= MAX_KEYS:
                self._forget(now)
            state = self.state[key] = [[-math.inf] if q.algorithm == GCRA else [0.0, 0.0, 0.0] for q in self.quotas]
        granted = wanted
        retry = 0.0
        seen = []
        for q, s in zip(self.quotas, state, strict=True):
            if q.algorithm == GCRA:
                interval = q.period / q.requests
                depth = q.burst * interval
                tat = max(s[0], now)
                avail = math.floor((now + depth - tat) / interval + EPSILON)
                if avail < 1:
                    retry = max(retry, math.ceil(tat + interval - depth - now))
                seen.append((tat, interval, depth))
            else:
                period = q.period
                index = math.floor(now / period)
                elapsed = now - index * period
                if s[0] != index:  # roll the windows forward
                    s[2] = s[1] if s[0] == index - 1 else 0.0
                    s[1] = 0.0
                    s[0] = index
                cur, prev = s[1], s[2]
                used = prev * (period - elapsed) / period + cur
                avail = math.floor(q.requests - used + EPSILON)
                if avail < 1:
                    if cur <= q.requests - 1:
                        wait = (period - (q.requests - 1 - cur) * period / prev) - elapsed
                    else:
                        wait = (period - elapsed) + max(0.0, period - (q.requests - 1) * period / cur)
                    retry = max(retry, max(1, math.ceil(wait)))
                seen.append((used, period, elapsed))
            granted = min(granted, max(avail, 0))
        limits = []
        for q, s, (a, b, c) in zip(self.quotas, state, seen, strict=True):
            if q.algorithm == GCRA:
                tat = a + granted * b
                if granted:
                    s[0] = tat
                limits.append((max(0, math.floor((now + c - tat) / b + EPSILON)), math.ceil(tat - now)))
            else:
                s[1] += granted
                limits.append((max(0, math.floor(q.requests - a - granted + EPSILON)), math.ceil(b - c)))
        return Outcome(granted, 0.0 if granted else retry, tuple(limits))

    def _forget(self, now: float) -> None:
        """Drop counters that are back to full: forgetting them changes no decision."""
        for key in [k for k, s in self.state.items() if self._idle(s, now)]:
            del self.state[key]
        if len(self.state) >= MAX_KEYS:
            self.state.clear()  # a key flood: losing counts beats unbounded memory

    def _idle(self, state: list[list[float]], now: float) -> bool:
        for q, s in zip(self.quotas, state, strict=True):
            if q.algorithm == GCRA:
                if s[0] > now:
                    return False
            elif s[0] >= math.floor(now / q.period) - 1 and (s[1] or s[2]):
                return False
        return True
