"""gw/state/lua/ratelimit.lua on a real server: GCRA and sliding-window arithmetic, atomic across limits.

Limits here are per hour or per day, so the server clock moving a few ms during a test changes
no count; the arithmetic at fine grain is checked against the same formulas in
test_ratelimit_local.py with a hand-moved clock.
"""

from __future__ import annotations

from gw.policies.ratelimit.algorithms import Quota
from gw.policies.ratelimit.limiter import SCRIPT
from gw.state import Client, Keys, connect
from tests.support import valkey

HOUR = 3_600_000.0


def argv(*quotas: Quota, wanted: int = 1) -> list[object]:
    return [wanted, *(a for q in quotas for a in q.script_args())]


async def take(client: Client, keys: list[str], *quotas: Quota, wanted: int = 1) -> list[int]:
    return [int(x) for x in await SCRIPT(client, keys, argv(*quotas, wanted=wanted))]


async def test_gcra_admits_the_burst_then_refuses_with_the_time_to_the_next_token(client: Client, keys: Keys) -> None:
    key = f"{keys.ratelimit('ns/p')}:0:k"
    q = Quota("GCRA", 10, HOUR, 3)  # one token every 6 minutes, 3 at once
    results = [await take(client, [key], q) for _ in range(4)]
    assert [r[0] for r in results] == [1, 1, 1, 0]
    assert [r[2] for r in results[:3]] == [2, 1, 0]  # remaining
    _, retry, remaining, reset = results[3]
    assert remaining == 0
    assert 360_000 - 50 <= retry <= 360_000  # one emission interval, less the ms that passed
    assert 3 * 360_000 - 50 <= reset <= 3 * 360_000  # until the bucket is full again


async def test_gcra_grants_a_lease_up_to_what_the_bucket_holds(client: Client, keys: Keys) -> None:
    key = f"{keys.ratelimit('ns/p')}:0:k"
    q = Quota("GCRA", 100, HOUR, 100)
    assert (await take(client, [key], q, wanted=60))[:3] == [60, 0, 40]
    assert (await take(client, [key], q, wanted=60))[:3] == [40, 0, 0]
    assert (await take(client, [key], q, wanted=60))[0] == 0


async def test_sliding_window_counts_the_window_and_refuses_past_the_quota(client: Client, keys: Keys) -> None:
    key = f"{keys.ratelimit('ns/p')}:0:k"
    day = 24 * HOUR
    q = Quota("SlidingWindow", 5, day, 5)
    results = [await take(client, [key], q) for _ in range(6)]
    seconds, micros = await client.time()
    assert [r[0] for r in results] == [1, 1, 1, 1, 1, 0]
    assert [r[2] for r in results] == [4, 3, 2, 1, 0, 0]
    # Retry: once the window turns, its 5 become the previous window's, weighed by the share of
    # it still inside the sliding window; one more fits when 5 x share <= 4, a fifth of the way
    # into the next window. (Asserting "within a day" held only after 04:48 UTC.)
    left = day - (seconds * 1000 + micros // 1000) % int(day)
    assert abs(results[5][1] - (left + day / 5)) <= 1000
    assert 0 < results[5][3] <= day  # reset: the end of the current window


async def test_sliding_window_weighs_the_previous_window(client: Client, keys: Keys) -> None:
    """A previous window's count is weighed by the share of it still inside the sliding window."""
    key = f"{keys.ratelimit('ns/p')}:0:k"
    period = 2_000_000_000.0  # ms: a window of ~23 days, so "now" sits at a known point inside it
    seconds, micros = await client.time()
    now = seconds * 1000 + micros // 1000
    index = now // int(period)
    elapsed = now - index * int(period)
    await client.hset(key, str(index - 1), 100)
    q = Quota("SlidingWindow", 100, period, 100)
    granted, _, remaining, _ = await take(client, [key], q, wanted=100)
    weighed = 100 * (period - elapsed) / period
    assert abs(granted - (100 - weighed)) <= 1
    assert remaining == 0


async def test_one_limit_refusing_consumes_nothing_from_the_others(client: Client, keys: Keys) -> None:
    stem = keys.ratelimit("ns/p")
    per_hour, per_day = f"{stem}:hourly:k", f"{stem}:daily:k"
    hourly = Quota("GCRA", 100, HOUR, 100)
    daily = Quota("SlidingWindow", 2, 24 * HOUR, 2)
    assert (await take(client, [per_hour, per_day], hourly, daily))[0] == 1
    assert (await take(client, [per_hour, per_day], hourly, daily))[0] == 1
    refused = await take(client, [per_hour, per_day], hourly, daily)
    assert refused[0] == 0 and refused[1] > 0
    assert refused[2] == 98  # the hourly bucket still holds what the refused request did not take
    assert refused[4] == 0


async def test_counters_expire_on_their_own(client: Client, keys: Keys) -> None:
    key = f"{keys.ratelimit('ns/p')}:0:k"
    await take(client, [key], Quota("GCRA", 10, HOUR, 10))
    assert 0 < await client.pttl(key) <= 360_000  # one token's worth: a full bucket needs no key
    window = f"{keys.ratelimit('ns/p')}:1:k"
    await take(client, [window], Quota("SlidingWindow", 10, HOUR, 10))
    assert 0 < await client.pttl(window) <= 2 * HOUR


async def test_a_policy_s_counters_share_one_cluster_slot(cluster: valkey.Cluster, keys: Keys) -> None:
    c = connect(cluster.url)
    try:
        stem = keys.ratelimit("ns/p")
        both = [f"{stem}:a:k1", f"{stem}:b:k2"]
        q = Quota("GCRA", 10, HOUR, 10)
        assert (await take(c, both, q, q))[0] == 1  # a CROSSSLOT error would raise
    finally:
        await c.aclose()
