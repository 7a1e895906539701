"""GCRA and sliding-window arithmetic with a hand-moved clock (LocalCounter: the script's formulas)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from gw.policies.ratelimit.algorithms import LocalCounter, Quota


def test_gcra_refills_one_token_per_emission_interval() -> None:
    counter = LocalCounter([Quota("GCRA", 10, 1000.0, 10)])  # 10/s: a token every 100 ms
    assert [counter.take("k", 1, 0.0).granted for _ in range(11)] == [1] * 10 + [0]
    refused = counter.take("k", 1, 0.0)
    assert refused.retry == 100
    assert counter.take("k", 1, 99.0).granted == 0
    assert counter.take("k", 1, 100.0).granted == 1
    assert counter.take("k", 1, 100.0).granted == 0


def test_gcra_burst_is_the_bucket_depth() -> None:
    counter = LocalCounter([Quota("GCRA", 10, 1000.0, 2)])
    assert [counter.take("k", 1, 0.0).granted for _ in range(3)] == [1, 1, 0]
    assert counter.take("k", 1, 0.0).limits == ((0, 200),)


def test_sliding_window_weighs_the_previous_window_linearly() -> None:
    counter = LocalCounter([Quota("SlidingWindow", 10, 1000.0, 10)])
    assert counter.take("k", 10, 500.0).granted == 10
    # At 1250 ms the previous window (10) still weighs 75%: 7.5 used, 2 whole tokens left.
    assert counter.take("k", 10, 1250.0).granted == 2
    refused = counter.take("k", 1, 1250.0)
    assert refused.granted == 0
    # One token fits when 10 * (1000 - e)/1000 + 2 <= 9, e = 300: 50 ms from now.
    assert refused.retry == 50
    assert counter.take("k", 1, 1300.0).granted == 1


def test_keys_are_counted_apart() -> None:
    counter = LocalCounter([Quota("GCRA", 1, 1000.0, 1)])
    assert counter.take("a", 1, 0.0).granted == 1
    assert counter.take("b", 1, 0.0).granted == 1
    assert counter.take("a", 1, 0.0).granted == 0


@settings(max_examples=200, deadline=None)
@given(
    algorithm=st.sampled_from(["GCRA", "SlidingWindow"]),
    requests=st.integers(1, 50),
    gaps=st.lists(st.integers(0, 400), min_size=1, max_size=200),
)
def test_no_window_admits_more_than_the_limit_allows(algorithm: str, requests: int, gaps: list[int]) -> None:
    """Any period-long interval holds at most requests + burst (GCRA) or 2 x requests (sliding, worst case)."""
    period = 1000.0
    counter = LocalCounter([Quota(algorithm, requests, period, requests)])
    now, admitted = 0.0, []
    for gap in gaps:
        now += gap
        if counter.take("k", 1, now).granted:
            admitted.append(now)
    bound = 2 * requests
    for i, start in enumerate(admitted):
        inside = sum(1 for t in admitted[i:] if t < start + period)
        assert inside <= bound
