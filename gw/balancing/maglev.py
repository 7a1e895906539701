"""Maglev consistent hashing: a lookup table every worker of every replica builds alike from the endpoint set.

The table depends only on the endpoints' "address:port" labels, their weights and the table size:
endpoints are sorted by label and hashed with BLAKE2b (stable across processes, unlike hash()),
so the same key reaches the same endpoint on any replica. Adding one endpoint to N moves about
1/(N+1) of the keys (Eisenbud et al., "Maglev", NSDI 2016, section 3.4); a lookup is one hash and
one index (the hash remembered per key: the same user's requests hash once). Weighted as Envoy's
MaglevTable: an endpoint of half the heaviest weight takes a slot every other round.
"""

from __future__ import annotations

from collections.abc import Sequence
from hashlib import blake2b
from typing import Generic, TypeVar

T = TypeVar("T")

SLOT_MEMO = 10_000  # keys whose slot a Maglev remembers (BLAKE2b costs a microsecond; a lookup 60 ns)


def stable_hash(data: bytes, salt: bytes = b"") -> int:
    """A 64-bit hash that is the same in every process (BLAKE2b)."""
    return int.from_bytes(blake2b(data, digest_size=8, salt=salt).digest(), "little")


def maglev_table(labels: Sequence[str], weights: Sequence[int], size: int) -> list[int]:
    """The table as indexes into `labels` (`size` must be prime: each permutation then visits every slot)."""
    order = sorted((label, i) for i, (label, w) in enumerate(zip(labels, weights, strict=True)) if w > 0)
    if not order:
        return []
    offsets, skips, weight, target, next_ = [], [], [], [], []
    for label, i in order:
        key = label.encode()
        offsets.append(stable_hash(key, b"offset") % size)
        skips.append(stable_hash(key, b"skip") % (size - 1) + 1)
        weight.append(weights[i])
        target.append(0)
        next_.append(0)
    heaviest = max(weight)
    table = [-1] * size
    filled, iteration, n = 0, 0, len(order)
    while filled < size:
        iteration += 1
        for e in range(n):
            if iteration * weight[e] < target[e]:
                continue
            target[e] += heaviest
            offset, skip, j = offsets[e], skips[e], next_[e]
            slot = (offset + j * skip) % size
            while table[slot] >= 0:
                j += 1
                slot = (offset + j * skip) % size
            table[slot] = order[e][1]
            next_[e] = j + 1
            filled += 1
            if filled == size:
                break
    return table


class Maglev(Generic[T]):
    """Picks the item a key hashes to; `labels` name the items as every replica does ("address:port").

    Given the table of a `previous` Maglev built from the same labels, weights and size (a reload
    that changed nothing of this backend), it takes that table over instead of building it again."""

    __slots__ = ("_slots", "items", "labels", "signature", "size", "table")

    def __init__(
        self,
        items: Sequence[T],
        labels: Sequence[str],
        weights: Sequence[int],
        size: int,
        previous: Maglev[object] | None = None,
    ) -> None:
        self.items = tuple(items)
        self.size = size
        self.signature = (size, tuple(sorted(zip(labels, weights, strict=True))))
        if previous is not None and previous.signature == self.signature:
            self.labels = previous.labels
        else:
            self.labels = tuple(labels[i] for i in maglev_table(labels, weights, size))
        by_label = dict(zip(labels, self.items, strict=True))
        # The items by slot: `size` of them, or none when every weight is 0.
        self.table = tuple(by_label[label] for label in self.labels)
        self._slots: dict[bytes, int] = {}

    def __len__(self) -> int:
        return len(self.table)

    def slot(self, key: bytes) -> int:
        """The slot `key` hashes to (0 <= slot < size)."""
        slots = self._slots
        slot = slots.get(key)
        if slot is None:
            slot = stable_hash(key) % self.size
            if len(slots) >= SLOT_MEMO:
                del slots[next(iter(slots))]
            slots[key] = slot
        return slot

    def pick(self, key: bytes) -> T | None:
        table = self.table
        return table[self.slot(key)] if table else None

    def at(self, slot: int) -> T:
        """The item in `slot` (any int: taken modulo size): the next slots are the fallback of an unusable pick."""
        return self.table[slot % self.size]
