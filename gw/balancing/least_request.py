"""Least request by power of two choices: two endpoints drawn by weight, the less loaded one wins.

Load is Envoy's: weight / (in-flight + 1) (its active_request_bias 1.0), so among equal weights the
one with fewer requests in flight wins (Mitzenmacher's two choices: the worst load falls from
log n / log log n to log log n over a random pick, at the cost of two draws and no scan).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Generic, TypeVar

from gw.balancing.weighted_random import WeightedRandom

T = TypeVar("T")


class LeastRequest(Generic[T]):
    """Picks by two choices over in-flight counts that the caller keeps with `acquire`/`release`.

    Counts are keyed by label ("address:port"), in a dict the caller may pass in: a new balancer
    for a new config takes over the counts of requests still in flight."""

    __slots__ = ("_draw", "in_flight", "items", "labels", "weights")

    def __init__(
        self,
        items: Sequence[T],
        labels: Sequence[str],
        weights: Sequence[float],
        in_flight: dict[str, int] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.items = tuple(items)
        self.labels = tuple(labels)
        self.weights = list(weights)
        self._draw = WeightedRandom(range(len(self.items)), self.weights, rng)
        self.in_flight = in_flight if in_flight is not None else {}

    def reweight(self, weights: Sequence[float]) -> None:
        self.weights = list(weights)
        self._draw.reweight(self.weights)

    def __len__(self) -> int:
        return len(self._draw)

    def next(self) -> T | None:
        if not len(self._draw):
            return None
        a, b = self._draw.index(), self._draw.index()
        if a != b:
            counts, labels, weights = self.in_flight, self.labels, self.weights
            # Compare weight_a / (n_a + 1) with weight_b / (n_b + 1) without dividing.
            if weights[b] * (counts.get(labels[a], 0) + 1) > weights[a] * (counts.get(labels[b], 0) + 1):
                a = b
        return self.items[a]

    def acquire(self, label: str) -> None:
        """A request to the endpoint `label` is in flight."""
        self.in_flight[label] = self.in_flight.get(label, 0) + 1

    def release(self, label: str) -> None:
        """A request `acquire` counted is over."""
        left = self.in_flight.get(label, 0) - 1
        if left > 0:
            self.in_flight[label] = left
        else:
            self.in_flight.pop(label, None)
