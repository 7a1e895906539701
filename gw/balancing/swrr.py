"""Smooth weighted round robin (nginx's algorithm), precomputed into a cycle for O(1) picks."""

from __future__ import annotations

from collections.abc import Sequence
from functools import reduce
from math import gcd
from typing import Generic, TypeVar

T = TypeVar("T")

# Longest precomputed cycle; heavier weight sets are scaled down to fit (proportions kept to ~0.1%).
MAX_CYCLE = 4096


def smooth_sequence(weights: Sequence[int]) -> list[int]:
    """One full period of nginx's smooth weighted round robin, as indexes into `weights`.

    Each pick adds every weight to its item's running score, takes the highest score and
    subtracts the total from it: heavy items are spread out instead of bunched together.
    """
    if not any(weights):
        return []
    divisor = reduce(gcd, weights)
    reduced = [w // divisor for w in weights]
    total = sum(reduced)
    if total > MAX_CYCLE:
        scaled = [max(1, round(w * MAX_CYCLE / total)) if w else 0 for w in reduced]
        return smooth_sequence(scaled)
    current = [0] * len(reduced)
    order: list[int] = []
    for _ in range(total):
        best = -1
        for i, w in enumerate(reduced):
            current[i] += w
            if best < 0 or current[i] > current[best]:
                best = i
        current[best] -= total
        order.append(best)
    return order


class SmoothWeightedRoundRobin(Generic[T]):
    """Picks items in smooth weighted round-robin order; zero-weight items are never picked."""

    __slots__ = ("_cycle", "_pos", "items")

    def __init__(self, items: Sequence[T], weights: Sequence[int]) -> None:
        if len(items) != len(weights):
            raise ValueError("items and weights differ in length")
        if any(w < 0 for w in weights):
            raise ValueError("weights must not be negative")
        self.items = tuple(items)
        self._cycle: tuple[T, ...] = tuple(self.items[i] for i in smooth_sequence(list(weights)))
        self._pos = 0

    def __len__(self) -> int:
        return len(self._cycle)

    def next(self) -> T | None:
        cycle = self._cycle
        if not cycle:
            return None
        pos = self._pos
        self._pos = pos + 1 if pos + 1 < len(cycle) else 0
        return cycle[pos]
