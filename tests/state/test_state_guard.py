"""A slow or dead Redis costs a request at most the budget; the breaker stops paying even that."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Callable

import msgpack
import pytest
import uvloop

from gw.observe.metrics import Registry
from gw.state import Client, RedisGuard, RedisUnavailable, connect, connect_request_path
from gw.state.guard import CLOSED, HALF_OPEN, OPEN
from tests.support import valkey
from tests.support.gateway import free_port


class Clock:
    """A hand-moved clock for the breaker's cool-down (the budget itself uses the loop's real time)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_a_guarded_call_returns_what_redis_answers(server: valkey.Server) -> None:
    client = connect(server.url)
    registry = Registry()
    guard = RedisGuard(1.0, metrics=registry)
    try:
        assert await guard.call(client.ping) is True
        assert guard.state == CLOSED and not guard.degraded
        assert registry.histograms["gw_redis_call_duration_seconds"].count == 1
        assert b'gw_redis_call_duration_seconds_bucket{le="+Inf"} 1' in registry.render()
    finally:
        await client.aclose()


async def test_a_paused_server_costs_the_budget_then_the_call_reports_timeout(own_server: valkey.Server) -> None:
    client = connect(own_server.url)
    registry = Registry()
    guard = RedisGuard(0.05, metrics=registry)
    try:
        await client.ping()  # a pooled connection exists: the pause bites on the read
        own_server.pause()
        with pytest.raises(RedisUnavailable) as caught:
            # The outer timeout only keeps a broken guard from hanging the suite.
            async with asyncio.timeout(5):
                await guard.call(client.get, "k")
        assert caught.value.reason == "timeout"
        assert registry.counters[("gw_redis_calls_total", (("outcome", "timeout"),))] == 1
    finally:
        own_server.resume()
        await client.aclose()


# Workers run uvloop (I/O polled, then due timers, then the poll's callbacks); tests run asyncio's
# own loop (I/O callbacks and due timers in one batch). The budget must hold on both.
LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "uvloop": uvloop.new_event_loop,
    "asyncio": asyncio.new_event_loop,
}


@pytest.mark.parametrize("loop", LOOPS)
def test_a_reply_that_came_within_the_budget_is_used_though_the_loop_looked_late(
    server: valkey.Server, loop: str
) -> None:
    """The loop is blocked past the budget right after the command went out; the reply is there."""

    async def scenario() -> None:
        client = connect_request_path(server.url)
        guard = RedisGuard(0.05)
        try:
            await client.set("late", "reply")  # a pooled connection: the GET goes out in its first step
            call = asyncio.ensure_future(guard.call(client.get, "late"))
            asyncio.get_running_loop().call_soon(time.sleep, 0.25)  # runs right after the call's first step
            assert await call == b"reply"
            assert guard.state == CLOSED
        finally:
            await client.aclose()

    with asyncio.Runner(loop_factory=LOOPS[loop]) as runner:
        runner.run(scenario())


@pytest.mark.parametrize("loop", LOOPS)
def test_a_paused_server_still_fails_the_call_on_either_loop(own_server: valkey.Server, loop: str) -> None:
    async def scenario() -> None:
        client = connect_request_path(own_server.url)
        guard = RedisGuard(0.05)
        try:
            await client.ping()
            own_server.pause()
            with pytest.raises(RedisUnavailable) as caught:
                async with asyncio.timeout(5):  # only keeps a broken guard from hanging the suite
                    await guard.call(client.get, "k")
            assert caught.value.reason == "timeout"
        finally:
            own_server.resume()
            await client.aclose()

    with asyncio.Runner(loop_factory=LOOPS[loop]) as runner:
        runner.run(scenario())


async def test_a_call_that_answers_despite_its_budget_leaves_its_task_uncancelled() -> None:
    async def stubborn() -> str:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            return "answered anyway"  # a client that swallows the cancellation
        return "never"

    assert await RedisGuard(0.01).call(stubborn) == "answered anyway"
    task = asyncio.current_task()
    assert task is not None and task.cancelling() == 0


async def test_a_call_cancelled_from_outside_stays_cancelled(own_server: valkey.Server) -> None:
    client = connect_request_path(own_server.url)
    guard = RedisGuard(10.0)
    try:
        await client.ping()
        own_server.pause()
        call = asyncio.ensure_future(guard.call(client.get, "k"))
        await asyncio.sleep(0)  # the call is out, waiting for the paused server
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        assert guard.state == CLOSED  # a request that went away is not Redis failing
    finally:
        own_server.resume()
        await client.aclose()


async def test_a_server_that_answers_again_after_a_timeout_is_usable(own_server: valkey.Server) -> None:
    client = connect(own_server.url)
    guard = RedisGuard(0.05)
    try:
        own_server.pause()
        with pytest.raises(RedisUnavailable):
            await guard.call(client.set, "k", "v")
        own_server.resume()
        # The abandoned command did not leave a half-read reply on a pooled connection.
        assert await guard.call(client.set, "k2", "v2") is True
        assert await guard.call(client.get, "k2") == b"v2"
    finally:
        own_server.resume()
        await client.aclose()


async def test_breaker_opens_after_consecutive_failures_and_then_skips_redis(dead: Client) -> None:
    registry = Registry()
    guard = RedisGuard(1.0, failures_to_open=3, metrics=registry, clock=Clock())
    calls = 0

    async def counted_ping() -> bool:
        nonlocal calls
        calls += 1
        return await dead.ping()

    for _ in range(3):
        with pytest.raises(RedisUnavailable) as caught:
            await guard.call(counted_ping)
        assert caught.value.reason == "error"
    assert guard.state == OPEN and guard.degraded
    with pytest.raises(RedisUnavailable) as caught:
        await guard.call(counted_ping)
    assert caught.value.reason == "open"
    assert calls == 3  # the open breaker did not call Redis at all
    assert registry.counters[("gw_redis_breaker_opened_total", ())] == 1
    assert b"gw_redis_breaker_open 1" in registry.render()


@pytest.fixture
async def dead() -> AsyncIterator[Client]:
    """A client of a port nothing listens on (no retries: each call is one refused connect)."""
    c = connect(f"redis://127.0.0.1:{free_port()}", retries=0)
    yield c
    await c.aclose()


async def tripped(dead: Client, cooldown: float) -> tuple[RedisGuard, Clock]:
    """A guard whose breaker one failure opened, and the clock that ends its cool-down."""
    clock = Clock()
    guard = RedisGuard(1.0, failures_to_open=1, cooldown=cooldown, clock=clock)
    with pytest.raises(RedisUnavailable):
        await guard.call(dead.ping)
    assert guard.state == OPEN
    return guard, clock


async def test_breaker_half_opens_after_the_cooldown_and_a_good_probe_closes_it(client: Client, dead: Client) -> None:
    guard, clock = await tripped(dead, cooldown=2.0)
    clock.now += 1.0
    with pytest.raises(RedisUnavailable, match="open"):
        await guard.call(client.ping)  # still cooling down
    clock.now += 1.5
    assert await guard.call(client.ping) is True  # the probe
    assert guard.state == CLOSED


async def test_a_failed_probe_reopens_the_breaker_for_another_cooldown(dead: Client) -> None:
    guard, clock = await tripped(dead, cooldown=2.0)
    clock.now += 2.5
    with pytest.raises(RedisUnavailable) as caught:
        await guard.call(dead.ping)
    assert caught.value.reason == "error"  # the probe went to Redis
    assert guard.state == OPEN
    with pytest.raises(RedisUnavailable, match="open"):
        await guard.call(dead.ping)


async def test_only_one_probe_goes_out_while_half_open(client: Client, dead: Client) -> None:
    guard, clock = await tripped(dead, cooldown=1.0)
    release = asyncio.Event()

    async def slow_probe() -> bool:
        await release.wait()
        return await client.ping()

    clock.now += 1.5
    probe = asyncio.create_task(guard.call(slow_probe))
    await asyncio.sleep(0)  # let the probe pass the breaker
    assert guard.state == HALF_OPEN
    with pytest.raises(RedisUnavailable, match="open"):
        await guard.call(client.ping)
    release.set()
    assert await probe is True
    assert guard.state == CLOSED


def test_redis_latency_survives_the_supervisors_sum_over_workers() -> None:
    worker = Registry()
    RedisGuard(1.0, metrics=worker).latency.observe(0.0003)  # type: ignore[union-attr]
    supervisor = Registry()
    supervisor.absorb(msgpack.unpackb(msgpack.packb(worker.snapshot())))
    supervisor.absorb(msgpack.unpackb(msgpack.packb(worker.snapshot())))
    text = supervisor.render()
    assert b'gw_redis_call_duration_seconds_bucket{le="0.0005"} 2' in text
    assert b"gw_redis_call_duration_seconds_count 2" in text


async def test_a_script_error_is_not_a_redis_failure(client: Client) -> None:
    from redis.exceptions import ResponseError

    guard = RedisGuard(1.0, failures_to_open=1)
    with pytest.raises(ResponseError):
        await guard.call(client.eval, "return redis.call('NOSUCHCOMMAND')", 0)
    assert guard.state == CLOSED


class FrozenCpuWait:
    """Stands in for the worker's schedstat run delay: while `off_cpu`, all time passing is CPU wait."""

    def __init__(self) -> None:
        self.off_cpu = True
        self.base = time.perf_counter()
        self.frozen = 0.0

    def __call__(self) -> tuple[float, float]:
        if self.off_cpu:
            return time.perf_counter() - self.base, 0.0
        return self.frozen, 0.0

    def back_on_cpu(self) -> None:
        self.frozen = self()[0]
        self.off_cpu = False


async def test_time_the_worker_spent_waiting_for_a_cpu_is_not_charged_to_redis(own_server: valkey.Server) -> None:
    """A worker descheduled on a saturated machine is late itself: Redis's answer sits in its socket."""
    client = connect(own_server.url)
    guard = RedisGuard(0.02)
    cpu_wait = FrozenCpuWait()
    guard._cpu_wait = cpu_wait  # type: ignore[assignment]
    overdue = asyncio.Event()
    try:
        await client.ping()
        own_server.pause()
        call = asyncio.ensure_future(guard.call(client.get, "k", overdue=overdue.set))
        # Time passing is the subject: 10 budgets, all of them spent waiting for a CPU.
        await asyncio.sleep(0.2)
        assert not overdue.is_set() and not call.done() and guard.state == CLOSED
        cpu_wait.back_on_cpu()  # from now on the time is Redis's
        async with asyncio.timeout(5):
            await overdue.wait()
        assert not call.done()  # overdue, not abandoned: its answer may still come
        own_server.resume()
        async with asyncio.timeout(5):
            assert await call is None  # the late answer, and Redis is usable again
        assert guard.state == CLOSED
    finally:
        own_server.resume()
        await client.aclose()


async def test_an_overdue_call_counts_towards_the_breaker_and_its_late_answer_closes_it(
    own_server: valkey.Server,
) -> None:
    client = connect(own_server.url)
    registry = Registry()
    guard = RedisGuard(0.02, failures_to_open=1, metrics=registry)
    try:
        await client.ping()
        own_server.pause()
        overdue = asyncio.Event()
        call = asyncio.ensure_future(guard.call(client.get, "k", overdue=overdue.set))
        async with asyncio.timeout(5):
            await overdue.wait()
        assert guard.state == OPEN and guard.refuses()  # the next calls fail at once
        own_server.resume()
        async with asyncio.timeout(5):
            await call
        assert guard.state == CLOSED
        counted = {dict(labels)["outcome"]: n for (name, labels), n in registry.counters.items()
                   if name == "gw_redis_calls_total"}  # fmt: skip
        assert counted == {"timeout": 1, "late": 1}
    finally:
        own_server.resume()
        await client.aclose()


async def test_an_overdue_call_is_abandoned_after_the_late_limit(
    own_server: valkey.Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gw.state import guard as guard_module

    monkeypatch.setattr(guard_module, "LATE_LIMIT", 0.05)
    client = connect(own_server.url)
    guard = RedisGuard(0.02)
    try:
        await client.ping()
        own_server.pause()
        with pytest.raises(RedisUnavailable) as caught:
            async with asyncio.timeout(5):
                await guard.call(client.get, "k", overdue=lambda: None)
        assert caught.value.reason == "timeout"
    finally:
        own_server.resume()
        await client.aclose()


async def test_a_local_server_is_watched_and_a_paused_one_still_fails_within_the_budget(
    own_server: valkey.Server,
) -> None:
    """A stopped server does not wait for a CPU (it is not runnable): watching it hides no outage."""
    from gw.state.connect import local_server_pid

    client = connect(own_server.url)
    guard = RedisGuard(0.05)
    try:
        pid = await local_server_pid(client)
        assert own_server.process is not None and pid == own_server.process.pid
        assert guard.watch_server(pid)
        assert not guard.watch_server(os.getpid())  # not a Redis: never read
        own_server.pause()
        overdue = asyncio.Event()
        with pytest.raises(RedisUnavailable):
            async with asyncio.timeout(5):
                await guard.call(client.get, "k", overdue=overdue.set)
        assert overdue.is_set()
    finally:
        own_server.resume()
        await client.aclose()
