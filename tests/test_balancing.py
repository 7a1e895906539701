"""Smooth weighted round robin, and how rules and backends use it for weights and ejected endpoints."""

from __future__ import annotations

from collections import Counter
from types import SimpleNamespace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gw.balancing.swrr import MAX_CYCLE, SmoothWeightedRoundRobin, smooth_sequence
from gw.config.model import Backend, BackendRef, Endpoint, Rule


def picks(balancer: SmoothWeightedRoundRobin, n: int) -> list:
    return [balancer.next() for _ in range(n)]


class TestSmoothSequence:
    def test_nginx_reference_order_for_5_1_1(self):
        # The example from nginx's commit introducing smooth weighted round robin.
        assert "".join("abc"[i] for i in smooth_sequence([5, 1, 1])) == "aabacaa"

    def test_equal_weights_alternate(self):
        assert smooth_sequence([1, 1]) == [0, 1]

    def test_three_to_one_is_spread_out(self):
        order = smooth_sequence([3, 1])
        assert Counter(order) == {0: 3, 1: 1}
        assert order == [0, 0, 1, 0]

    def test_weights_are_reduced_by_their_gcd(self):
        assert smooth_sequence([50, 50]) == [0, 1]

    def test_zero_weight_is_never_picked(self):
        assert 1 not in smooth_sequence([2, 0, 1])

    def test_empty(self):
        assert smooth_sequence([]) == []

    def test_heavy_weights_are_scaled_to_the_cycle_limit(self):
        order = smooth_sequence([1_000_000, 1])
        assert len(order) <= MAX_CYCLE + 2
        assert Counter(order)[1] == 1

    @given(st.lists(st.integers(min_value=0, max_value=50), min_size=1, max_size=8).filter(any))
    def test_one_period_honours_the_proportions(self, weights):
        order = smooth_sequence(weights)
        counts = Counter(order)
        total = sum(weights)
        # Over one period each item appears exactly in proportion to its weight.
        assert all(counts[i] * total == w * len(order) for i, w in enumerate(weights))


class TestBalancer:
    def test_cycles_forever(self):
        b = SmoothWeightedRoundRobin(["a", "b"], [1, 1])
        assert picks(b, 5) == ["a", "b", "a", "b", "a"]

    def test_no_items_gives_none(self):
        assert SmoothWeightedRoundRobin([], []).next() is None

    def test_all_zero_gives_none(self):
        assert SmoothWeightedRoundRobin(["a"], [0]).next() is None

    def test_rejects_negative_weights_and_length_mismatch(self):
        with pytest.raises(ValueError):
            SmoothWeightedRoundRobin(["a"], [-1])
        with pytest.raises(ValueError):
            SmoothWeightedRoundRobin(["a"], [1, 2])


def backend(*weights: int) -> Backend:
    return Backend("b", [Endpoint(f"10.0.0.{i}", 80, w) for i, w in enumerate(weights, 1)])


class TestRuleWeights:
    def test_backend_refs_split_by_weight(self):
        one, two = backend(1), backend(1)
        rule = Rule("ns/r", 0, [BackendRef("one", 3, one), BackendRef("two", 1, two)])
        counts = Counter(rule.pick_backend().name for _ in range(400))
        assert counts == {"one": 300, "two": 100}

    def test_weight_zero_ref_gets_no_traffic(self):
        rule = Rule("ns/r", 0, [BackendRef("one", 1, backend(1)), BackendRef("off", 0, backend(1))])
        assert {rule.pick_backend().name for _ in range(10)} == {"one"}

    def test_rule_with_only_zero_weights_picks_nothing(self):
        rule = Rule("ns/r", 0, [BackendRef("off", 0, backend(1))])
        assert rule.pick_backend() is None


def at(now: float) -> SimpleNamespace:
    """An exchange as Backend.pick reads it: when it started."""
    return SimpleNamespace(started=now)


class TestEndpointPick:
    def test_endpoint_weights(self):
        b = backend(2, 1)
        counts = Counter(b.pick(at(0.0)).address for _ in range(300))
        assert counts == {"10.0.0.1": 200, "10.0.0.2": 100}

    def test_ejected_endpoint_is_skipped_until_its_time(self):
        b = backend(1, 1)
        b.connect_failed(b.endpoints[0], 100.0)
        assert {b.pick(at(50.0)).address for _ in range(4)} == {"10.0.0.2"}
        assert {b.pick(at(100.0)).address for _ in range(4)} == {"10.0.0.1", "10.0.0.2"}
        assert not b.health.ejected  # forgotten once its time passed

    def test_all_ejected_still_tries_one_panic_mode(self):
        b = backend(1, 1)
        for e in b.endpoints:
            b.connect_failed(e, 10.0)
        assert b.pick(at(5.0)) in b.endpoints

    def test_no_endpoints_gives_none(self):
        assert Backend("empty", []).pick(at(0.0)) is None
