"""PolicyLimiter against a real Valkey: exact across workers, leases within their bound, the
over-limit cache, failure modes (Local divides by the fleet's live count) and local scope."""

from __future__ import annotations

import asyncio
import math
from time import monotonic
from typing import Any

from redis.cluster import key_slot

from gw.config.ratelimit import CLOSED, EXACT, LEASED, LOCAL, OPEN, SLIDING_WINDOW
from gw.policies.ratelimit import PolicyLimiter, Verdict
from gw.state import Keys, RedisGuard, connect, connect_request_path
from gw.state.fleet import Fleet
from tests.ratelimit.support import Worker, decide, make_policy, request, script_calls
from tests.support import valkey

HOUR = 3600.0


async def test_exact_mode_admits_exactly_the_limit_across_workers(own_server: valkey.Server, keys: Keys) -> None:
    client = connect(own_server.url)
    try:
        policy = make_policy(20, HOUR, mode=EXACT)
        workers = [PolicyLimiter(policy, Worker(client, RedisGuard(1.0), keys)) for _ in range(3)]
        verdicts = [await decide(workers[i % 3]) for i in range(60)]
        assert sum(v.allowed for v in verdicts) == 20
        assert {v.status for v in verdicts if not v.allowed} == {429}
    finally:
        await client.aclose()


async def test_concurrent_exact_decisions_never_over_admit(own_server: valkey.Server, keys: Keys) -> None:
    client = connect(own_server.url)
    try:
        policy = make_policy(50, HOUR, mode=EXACT)
        workers = [PolicyLimiter(policy, Worker(client, RedisGuard(1.0), keys)) for _ in range(2)]
        verdicts = await asyncio.gather(*(decide(workers[i % 2]) for i in range(200)))
        assert sum(v.allowed for v in verdicts) == 50
    finally:
        await client.aclose()


async def test_a_key_over_the_limit_is_refused_locally_until_its_retry_time(
    own_server: valkey.Server, keys: Keys
) -> None:
    client = connect(own_server.url)
    try:
        limiter = PolicyLimiter(make_policy(3, HOUR), Worker(client, RedisGuard(1.0), keys))
        assert [(await decide(limiter)).allowed for _ in range(4)] == [True, True, True, False]
        before = script_calls(own_server)
        flood = [await decide(limiter) for _ in range(500)]
        assert not any(v.allowed for v in flood)
        assert script_calls(own_server) == before  # the flood cost no Redis call
        assert all(dict(v.fields)[b"Retry-After"] for v in flood)
        other = await decide(limiter, request(b"10.0.0.2"))  # another key is asked about as usual
        assert other.allowed and script_calls(own_server) == before + 1
    finally:
        await client.aclose()


async def test_leased_mode_decides_locally_most_of_the_time(own_server: valkey.Server, keys: Keys) -> None:
    client = connect(own_server.url)
    try:
        limiter = PolicyLimiter(make_policy(1_000_000, HOUR, mode=LEASED), Worker(client, RedisGuard(1.0), keys))
        before = script_calls(own_server)
        verdicts = await asyncio.gather(*(decide(limiter) for _ in range(5000)))
        assert all(v.allowed for v in verdicts)
        calls = script_calls(own_server) - before
        assert calls < 5000 / 20  # batches grow with the observed rate
    finally:
        await client.aclose()


async def test_leased_mode_stays_within_its_over_admission_bound(own_server: valkey.Server, keys: Keys) -> None:
    """admitted <= limit + W x ceil(1.5 x max_batch); unspent leases only ever under-admit."""
    client = connect(own_server.url)
    try:
        policy = make_policy(2000, HOUR, mode=LEASED)
        workers = [PolicyLimiter(policy, Worker(client, RedisGuard(1.0), keys)) for _ in range(4)]
        assert workers[0].max_batch == 10
        bound = 4 * math.ceil(1.5 * workers[0].max_batch)
        admitted = 0
        for _ in range(30):  # rounds of concurrent requests, spread over the workers
            verdicts = await asyncio.gather(*(decide(workers[i % 4]) for i in range(200)))
            admitted += sum(v.allowed for v in verdicts)
        assert 2000 - bound <= admitted <= 2000 + bound
    finally:
        await client.aclose()


async def test_open_failure_mode_allows_when_redis_does_not_answer(own_server: valkey.Server, keys: Keys) -> None:
    client = connect(own_server.url)
    try:
        worker = Worker(client, RedisGuard(0.05), keys)
        limiter = PolicyLimiter(make_policy(1, HOUR, failure_mode=OPEN), worker)
        await client.ping()
        own_server.pause()
        assert all([(await decide(limiter)).allowed for _ in range(3)])
        assert worker.outcomes["redis_unavailable_open"] == 3
    finally:
        own_server.resume()
        await client.aclose()


async def test_closed_failure_mode_answers_503_when_redis_does_not_answer(
    own_server: valkey.Server, keys: Keys
) -> None:
    client = connect(own_server.url)
    try:
        limiter = PolicyLimiter(make_policy(100, HOUR, failure_mode=CLOSED), Worker(client, RedisGuard(0.05), keys))
        await client.ping()
        own_server.pause()
        verdict = await decide(limiter)
        assert not verdict.allowed and verdict.status == 503
        assert dict(verdict.fields)[b"Retry-After"] == b"1"
    finally:
        own_server.resume()
        await client.aclose()


async def test_local_failure_mode_divides_the_limit_by_the_live_workers(
    own_server: valkey.Server, keys: Keys
) -> None:
    client = connect(own_server.url)
    try:
        fleet = Fleet(asyncio.get_running_loop(), client, RedisGuard(1.0), keys.fleet.workers)
        fleet.live = 4
        limiter = PolicyLimiter(make_policy(20, HOUR, failure_mode=LOCAL), Worker(client, RedisGuard(0.05), keys,
                                                                                  fleet=fleet))  # fmt: skip
        await client.ping()
        own_server.pause()
        assert sum([(await decide(limiter)).allowed for _ in range(10)]) == 5
    finally:
        own_server.resume()
        await client.aclose()


async def test_exact_counting_resumes_when_redis_is_back(own_server: valkey.Server, keys: Keys) -> None:
    client = connect(own_server.url)
    try:
        guard = RedisGuard(0.05, failures_to_open=1, cooldown=0.0)
        worker = Worker(client, guard, keys)
        limiter = PolicyLimiter(make_policy(3, HOUR, failure_mode=OPEN), worker)
        assert (await decide(limiter)).allowed
        own_server.pause()
        assert (await decide(limiter)).allowed  # failed open
        own_server.resume()
        await asyncio.gather(*worker.batcher.tasks)  # the overdue call's late answer
        after = [(await decide(limiter)).allowed for _ in range(3)]
        # Counted in Redis again: the overdue call was counted when the server woke, and the
        # request it was for was admitted open, so one of the three is left.
        assert after == [True, False, False]
        assert worker.outcomes["cached"] == 2  # the last token's answer said the key is now out
    finally:
        own_server.resume()
        await client.aclose()


async def test_local_scope_counts_per_replica_without_redis(own_server: valkey.Server, keys: Keys) -> None:
    client = connect(own_server.url)
    try:
        limiter = PolicyLimiter(make_policy(10, HOUR, scope=LOCAL), Worker(client, RedisGuard(1.0), keys,
                                                                           local_workers=2))  # fmt: skip
        before = script_calls(own_server)
        assert sum([(await decide(limiter)).allowed for _ in range(10)]) == 5  # this worker's half
        assert script_calls(own_server) == before
    finally:
        await client.aclose()


async def test_headers_report_the_policy_and_what_is_left(server: valkey.Server, keys: Keys) -> None:
    client = connect(server.url)
    try:
        limiter = PolicyLimiter(make_policy(2, HOUR, response_headers=True), Worker(client, RedisGuard(1.0), keys))
        first = dict((await decide(limiter)).fields)
        assert first[b"RateLimit-Policy"] == b'"p/l";q=2;w=3600'
        assert first[b"RateLimit"].startswith(b'"p/l";r=1;t=')
        await decide(limiter)
        refused = await decide(limiter)
        fields = dict(refused.fields)
        assert refused.status == 429 and fields[b"RateLimit"].startswith(b'"p/l";r=0;t=')
        assert 1 <= int(fields[b"Retry-After"]) <= 1800
    finally:
        await client.aclose()


async def test_exact_calls_of_one_loop_turn_on_a_cluster_each_get_their_own_decision(
    cluster: valkey.Cluster, keys: Keys
) -> None:
    """One pipeline per turn, its calls spread over the masters by hash slot (a policy per family)."""
    per_node = 16384 // len(cluster.nodes)
    names: dict[int, str] = {}  # master index -> a policy whose counters live there
    for i in range(200):
        node = min(key_slot(keys.ratelimit(f"default/p{i}").encode()) // per_node, len(cluster.nodes) - 1)
        names.setdefault(node, f"p{i}")
    assert len(names) == len(cluster.nodes)
    client = connect_request_path(cluster.url)
    try:
        worker = Worker(client, RedisGuard(1.0), keys)
        limiters = [PolicyLimiter(make_policy(3, HOUR, name=name, mode=EXACT), worker) for name in names.values()]
        loop = asyncio.get_running_loop()
        pending: list[tuple[int, bytes, asyncio.Future[Verdict]]] = []
        for n, limiter in enumerate(limiters):  # all in this turn: nothing awaited in between
            for client_host in (b"10.0.0.1", b"10.0.0.2"):
                for _ in range(5):
                    later: asyncio.Future[Verdict] = loop.create_future()
                    settle = later.set_result
                    assert limiter.decide(request(client_host), [], lambda _req, v, f=settle: f(v)) is None
                    pending.append((n, client_host, later))
        # Queued for one pipeline: one call per key (policy x client), asking for all its requests.
        assert len(worker.batcher.queue) == 2 * len(limiters)
        assert {args[0] for _, args, _, _ in worker.batcher.queue} == {5}
        verdicts = [(n, host, await asyncio.wait_for(later, 5)) for n, host, later in pending]
        for n in range(len(limiters)):
            for host in (b"10.0.0.1", b"10.0.0.2"):
                mine = [v for m, h, v in verdicts if m == n and h == host]
                assert [v.allowed for v in mine] == [True] * 3 + [False] * 2
                assert {v.status for v in mine[3:]} == {429}
        outcomes = {dict(labels)["outcome"] for _, labels in worker.counters}
        assert outcomes == {"allowed", "limited"}  # every decision by Redis: none failed open
    finally:
        await client.aclose()


async def test_a_sliding_window_lease_is_not_spent_after_its_window(own_server: valkey.Server, keys: Keys) -> None:
    """Tokens Redis counted in one window, spent in the next, would put that window over its limit."""
    client = connect(own_server.url)
    try:
        policy = make_policy(1_000_000, 1.0, algorithm=SLIDING_WINDOW, mode=LEASED)
        limiter = PolicyLimiter(policy, Worker(client, RedisGuard(1.0), keys))
        for _ in range(20):  # until a lease holds spare tokens (batches grow with the observed rate)
            await asyncio.gather(*(decide(limiter) for _ in range(200)))
            (lease,) = limiter.leases.values()
            if lease.tokens > 0 and not lease.refilling:
                break
        assert lease.tokens > 0 and 0 < lease.window_end - lease.last_refill <= 1.0
        assert lease.expires <= lease.window_end  # not the 1 s TTL when the window ends sooner
        before = script_calls(own_server)
        # Time passing is the subject here: wait until the window the tokens were counted in has ended.
        await asyncio.sleep(max(0.0, lease.window_end - monotonic()) + 0.01)
        assert (await decide(limiter)).allowed
        assert script_calls(own_server) == before + 1  # a fresh lease, not the old window's tokens
    finally:
        await client.aclose()


async def test_tokens_redis_counted_for_refused_requests_are_spent_by_the_next_ones(
    own_server: valkey.Server, keys: Keys
) -> None:
    """Closed refuses while a call is overdue; its late answer's token is not lost (no under-admission)."""
    client = connect(own_server.url)
    try:
        worker = Worker(client, RedisGuard(0.05), keys)
        limiter = PolicyLimiter(make_policy(3, HOUR, failure_mode=CLOSED, mode=EXACT), worker)
        await client.ping()
        own_server.pause()
        refused = await decide(limiter)
        assert refused.status == 503
        own_server.resume()
        await asyncio.gather(*worker.batcher.tasks)  # the late answer: one token, counted
        before = script_calls(own_server)
        after = [(await decide(limiter)).allowed for _ in range(4)]
        assert after == [True, True, True, False]  # exactly the limit, the first on the late token
        assert script_calls(own_server) == before + 2  # the late token cost no call, the refusal neither
        assert worker.outcomes["late_tokens"] == 1
    finally:
        own_server.resume()
        await client.aclose()


async def test_a_late_answer_over_the_limit_caches_the_key(own_server: valkey.Server, keys: Keys) -> None:
    client = connect(own_server.url)
    try:
        worker = Worker(client, RedisGuard(0.05), keys)
        limiter = PolicyLimiter(make_policy(2, HOUR, failure_mode=OPEN, mode=EXACT), worker)
        assert (await decide(limiter)).allowed
        own_server.pause()
        assert (await decide(limiter)).allowed  # failed open while the call is overdue
        own_server.resume()
        await asyncio.gather(*worker.batcher.tasks)  # Redis granted the last token: the key is out
        before = script_calls(own_server)
        refused = await decide(limiter)
        assert refused.status == 429 and script_calls(own_server) == before  # from the cache
    finally:
        own_server.resume()
        await client.aclose()


async def test_a_flood_on_one_key_sends_one_call_at_a_time_per_worker(own_server: valkey.Server, keys: Keys) -> None:
    """Requests that arrive while a key's call is out wait for it; the next call asks for all of them."""
    client = connect(own_server.url)
    try:
        workers = [Worker(client, RedisGuard(1.0), keys) for _ in range(2)]
        policy = make_policy(300, HOUR, mode=EXACT)
        limiters = [PolicyLimiter(policy, worker) for worker in workers]
        in_flight = [0, 0]
        most = [0, 0]
        for i, worker in enumerate(workers):  # count each worker's script calls out at once
            submit = worker.batcher.submit

            def counted(keys_: Any, args: Any, then: Any, overdue: Any, i: int = i, submit: Any = submit) -> None:
                in_flight[i] += 1
                most[i] = max(most[i], in_flight[i])

                def answered(reply: Any) -> None:
                    in_flight[i] -= 1
                    then(reply)

                submit(keys_, args, answered, overdue)

            worker.batcher.submit = counted  # type: ignore[method-assign]
        before = script_calls(own_server)
        verdicts: list[Verdict] = []
        for _ in range(10):  # waves of concurrent requests, as a flood arrives
            verdicts += await asyncio.gather(*(decide(limiters[j % 2]) for j in range(200)))
        assert sum(v.allowed for v in verdicts) == 300
        assert most == [1, 1]
        assert script_calls(own_server) - before <= 2 * 10  # per wave and worker at most one, then the cache
    finally:
        await client.aclose()


async def test_requests_that_arrive_while_a_call_is_overdue_wait_for_its_late_answer(
    own_server: valkey.Server, keys: Keys
) -> None:
    """Only the requests that waited a whole budget take the failureMode; the next ones wait (a budget
    at most) for the late answer, and are decided by it."""
    client = connect(own_server.url)
    try:
        worker = Worker(client, RedisGuard(0.3), keys)
        limiter = PolicyLimiter(make_policy(10, HOUR, failure_mode=CLOSED, mode=EXACT), worker)
        await client.ping()
        own_server.pause()
        assert (await decide(limiter)).status == 503  # waited the budget
        later: asyncio.Future[Verdict] = asyncio.get_running_loop().create_future()
        assert limiter.decide(request(), [], lambda _req, v: later.set_result(v)) is None  # waits
        own_server.resume()
        verdict = await asyncio.wait_for(later, 5)
        assert verdict.allowed  # on the token the late answer granted for the refused request
        assert worker.outcomes["redis_unavailable_closed"] == 1 and worker.outcomes["late_tokens"] == 1
    finally:
        own_server.resume()
        await client.aclose()
