"""Weighted random: each pick draws an item with probability proportional to its weight."""

from __future__ import annotations

import random
from bisect import bisect_right
from collections.abc import Sequence
from itertools import accumulate
from typing import Generic, TypeVar

T = TypeVar("T")


class WeightedRandom(Generic[T]):
    """Envoy's Random balancer, weighted; zero-weight items are never drawn. `reweight` takes new
    weights (slow start ramps them) without rebuilding anything else."""

    __slots__ = ("_bounds", "_random", "_total", "items")

    def __init__(self, items: Sequence[T], weights: Sequence[float], rng: random.Random | None = None) -> None:
        if len(items) != len(weights):
            raise ValueError("items and weights differ in length")
        self.items = tuple(items)
        self._random = (rng or random.Random()).random
        self._bounds: list[float] = []
        self._total = 0.0
        self.reweight(weights)

    def reweight(self, weights: Sequence[float]) -> None:
        if any(w < 0 for w in weights):
            raise ValueError("weights must not be negative")
        self._bounds = list(accumulate(weights))
        self._total = self._bounds[-1] if self._bounds else 0.0

    def __len__(self) -> int:
        return len(self.items) if self._total > 0 else 0

    def index(self) -> int:
        """A drawn index (the caller checks there is something to draw: len() > 0)."""
        return bisect_right(self._bounds, self._random() * self._total)

    def next(self) -> T | None:
        if self._total <= 0:
            return None
        return self.items[bisect_right(self._bounds, self._random() * self._total)]
