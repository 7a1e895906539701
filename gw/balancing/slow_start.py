"""Slow start: an endpoint that just became ready takes a share of its weight that grows over a window.

Envoy's formula with aggression 1.0 and min_weight_percent 10:

    weight(age) = weight * max(0.1, age / window)     while age < window, then weight

where age is the time since the endpoint joined the backend (or, with active health checks, since
its probes passed again). The same factor on every endpoint changes nothing: endpoints that all
started together share traffic by weight from the first request.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Generic, TypeVar

T = TypeVar("T")

MIN_FACTOR = 0.1  # Envoy's min_weight_percent default: a new endpoint gets some traffic at once


def ramped(weight: float, age: float, window: float) -> float:
    """`weight` as slow start gives it to an endpoint ready for `age` seconds (see the module docstring)."""
    if window <= 0 or age >= window:
        return weight
    return weight * max(MIN_FACTOR, age / window)


class LiveRoundRobin(Generic[T]):
    """nginx's smooth weighted round robin computed at each pick (O(n)), for weights that change
    while endpoints ramp up; SmoothWeightedRoundRobin precomputes the cycle of fixed weights."""

    __slots__ = ("_current", "items", "weights")

    def __init__(self, items: Sequence[T], weights: Sequence[float]) -> None:
        self.items = tuple(items)
        self.weights = list(weights)
        self._current = [0.0] * len(self.items)

    def reweight(self, weights: Sequence[float]) -> None:
        self.weights = list(weights)

    def __len__(self) -> int:
        return sum(1 for w in self.weights if w > 0)

    def next(self) -> T | None:
        current, weights = self._current, self.weights
        best, total = -1, 0.0
        for i, w in enumerate(weights):
            if w <= 0:
                continue
            current[i] += w
            total += w
            if best < 0 or current[i] > current[best]:
                best = i
        if best < 0:
            return None
        current[best] -= total
        return self.items[best]
