"""Fleet-wide circuit breaking and outlier ejection against a real Valkey: several workers' states
(gw.policies.backend_sync.BackendStates, each with its own snapshot of the backend) report to one
server, and what one decides the others apply from the published events."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace
from time import monotonic
from typing import Any

import orjson
import pytest

from gw.balancing.resilience import CLOSED, HALF_OPEN, OPEN, BackendState
from gw.config.backend_policy import CircuitBreaker, PassiveHealthCheck, Resilience
from gw.config.model import Backend, Endpoint
from gw.errors import CircuitOpen
from gw.observe.metrics import Registry
from gw.policies.backend_sync import BackendStates
from gw.state import Keys, RedisGuard, SharedState, connect
from gw.state.backend_events import decode
from tests.support import valkey

ENDPOINTS = [("127.0.0.1", 9001), ("127.0.0.1", 9002), ("127.0.0.1", 9003)]
PASSIVE = PassiveHealthCheck(consecutive_5xx_errors=5, base_ejection_time=30.0, max_ejection_percent=34)
BREAKER = CircuitBreaker(failure_ratio=0.5, window=10.0, minimum_requests=10, open_duration=0.3, half_open_requests=2)


class Worker:
    """One worker's BackendStates over its own snapshot of the backend."""

    def __init__(self, server: valkey.Server, keys: Keys, resilience: Resilience) -> None:
        self.client = connect(server.url)
        shared = SharedState(self.client, RedisGuard(1.0), keys)
        self.metrics = Registry()
        self.states = BackendStates(asyncio.get_running_loop(), 1, self.metrics, shared)
        self.backend = Backend("Backend default/api", [Endpoint(a, p) for a, p in ENDPOINTS])
        self.backend.resilience = resilience
        self.states.install(_config(self.backend))
        self.state: BackendState = self.backend.state

    def endpoint(self, i: int) -> Any:
        return self.backend.endpoints[i]


def _config(backend: Backend) -> Any:
    class Ref:
        mirrors = ()

    class Rule:
        backend_refs = [Ref()]
        mirrors = ()

    Ref.backend = backend  # type: ignore[attr-defined]

    class Config:
        rules = [Rule()]

    return Config()


@pytest.fixture
async def relay(server: valkey.Server, keys: Keys) -> AsyncIterator[list[dict[str, Any]]]:
    """Every event published on the backend channel, as a supervisor's relay would see it."""
    client = connect(server.url)
    pubsub = client.pubsub()
    await pubsub.subscribe(keys.backend_events)
    events: list[dict[str, Any]] = []

    async def listen() -> None:
        while True:
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
            if message is not None:
                event = decode(message["data"])
                assert event is not None, message
                events.append(event)

    task = asyncio.create_task(listen())
    yield events
    task.cancel()
    await pubsub.aclose()
    await client.aclose()


async def test_an_ejection_counts_failures_from_every_worker(
    server: valkey.Server, keys: Keys, relay: list[dict[str, Any]]
) -> None:
    workers = [Worker(server, keys, Resilience(passive=PASSIVE)) for _ in range(3)]
    bad = 1
    now = monotonic()
    # Four 500s spread over three workers: no worker saw five, and the fleet has not either.
    for i in range(4):
        workers[i % 3].state.responded(workers[i % 3].endpoint(bad), 500, now)
    await asyncio.sleep(0.05)  # (the reports go out at the end of this loop turn; let them land)
    await valkey.eventually(lambda: not any(w.states.in_flight for w in workers), "reports answered")
    assert not [e for e in relay if e["k"] == "eject"]
    workers[0].state.responded(workers[0].endpoint(bad), 500, now)
    await valkey.eventually(lambda: [e for e in relay if e["k"] == "eject"], "an ejection event")
    (event,) = [e for e in relay if e["k"] == "eject"]
    assert event["e"] == "127.0.0.1:9002" and event["s"] == "ejected"
    assert event["by"] == workers[0].states.who and "5 consecutive 5xx" in event["why"]
    # The deciding worker applied it from its reply; the others apply the relayed event.
    await valkey.eventually(lambda: workers[0].state.endpoints["127.0.0.1:9002"].until > monotonic(), "applied")
    for w in workers[1:]:
        w.states.apply(relay)
    for w in workers:
        picked = {w.backend.pick(_Exchange()).label for _ in range(6)}
        assert picked == {"127.0.0.1:9001", "127.0.0.1:9003"}
    # maxEjectionPercent (34% of 3: one endpoint): a second bad endpoint is not ejected.
    for _ in range(6):
        workers[1].state.responded(workers[1].endpoint(0), 503, now)
    await asyncio.sleep(0.05)
    await valkey.eventually(lambda: not workers[1].states.in_flight, "report answered")
    assert len([e for e in relay if e["k"] == "eject"]) == 1


async def test_a_success_restarts_the_fleet_count(
    server: valkey.Server, keys: Keys, relay: list[dict[str, Any]]
) -> None:
    workers = [Worker(server, keys, Resilience(passive=PASSIVE)) for _ in range(2)]
    now = monotonic()
    for _ in range(4):
        workers[0].state.responded(workers[0].endpoint(0), 500, now)
    await asyncio.sleep(0.05)
    await valkey.eventually(lambda: not workers[0].states.in_flight, "report answered")
    workers[1].state.responded(workers[1].endpoint(0), 200, now)
    workers[1].states._flush()  # (successes ride along every REPORT_INTERVAL; send now)
    await valkey.eventually(lambda: not workers[1].states.in_flight, "report answered")
    for _ in range(4):
        workers[0].state.responded(workers[0].endpoint(0), 500, now)
    await asyncio.sleep(0.05)
    await valkey.eventually(lambda: not workers[0].states.in_flight, "report answered")
    assert not [e for e in relay if e["k"] == "eject"]


async def test_a_success_reported_late_does_not_restart_failures_seen_after_it(
    server: valkey.Server, keys: Keys, relay: list[dict[str, Any]]
) -> None:
    workers = [Worker(server, keys, Resilience(passive=PASSIVE)) for _ in range(2)]
    now = monotonic()
    workers[0].state.responded(workers[0].endpoint(0), 200, now)  # reported with the next batch
    # (Ten ms before the failures: times go to the script in ms, and a success and a failure in the
    # same ms have no order.)
    early = workers[0].state.endpoints["127.0.0.1:9001"]
    early.succeeded_at = [at - 0.01 for at in early.succeeded_at]
    for _ in range(4):
        workers[1].state.responded(workers[1].endpoint(0), 500, now)
    await asyncio.sleep(0.02)
    await valkey.eventually(lambda: not workers[1].states.in_flight, "failures reported")
    workers[0].states._flush()  # the older success arrives after them
    await valkey.eventually(lambda: not workers[0].states.in_flight, "success reported")
    workers[1].state.responded(workers[1].endpoint(0), 500, now)
    await valkey.eventually(lambda: [e for e in relay if e["k"] == "eject"], "the fifth failure ejects")


async def test_six_workers_eject_after_exactly_the_threshold_with_successes_batched_before_it(
    server: valkey.Server, keys: Keys, relay: list[dict[str, Any]]
) -> None:
    """Each worker's batch holds successes on the endpoint from before it went bad (reported with
    the worker's first failure): they restart nothing another worker's failures counted."""
    workers = [Worker(server, keys, Resilience(passive=PASSIVE)) for _ in range(6)]
    for w in workers:
        for i in range(3):
            w.state.responded(w.endpoint(i), 200, monotonic())
            w.state.completed(w.endpoint(i))
            e = w.state.endpoints[w.endpoint(i).label]
            e.succeeded_at = [at - 0.01 for at in e.succeeded_at]  # (before the failures by more than a ms)
    failures = 0
    while not [e for e in relay if e["k"] == "eject"]:
        w = workers[failures % 6]
        w.state.responded(w.endpoint(1), 500, monotonic())
        w.state.responded(w.endpoint(0), 200, monotonic())  # (the others answer well meanwhile)
        failures += 1
        assert failures <= 5, "not ejected at the threshold"
        await asyncio.sleep(0)
        await valkey.eventually(lambda w=w: not w.states.in_flight and not w.states.urgent, "reported")
        if failures == 5:
            await valkey.eventually(lambda: relay, "the ejection event", timeout=2)
    assert failures == 5


async def test_the_circuit_opens_for_the_fleet_and_half_open_admits_trials_fleet_wide(
    server: valkey.Server, keys: Keys, relay: list[dict[str, Any]]
) -> None:
    workers = [Worker(server, keys, Resilience(circuit_breaker=BREAKER)) for _ in range(3)]
    now = monotonic()
    # 12 calls over three workers, 6 failed: ratio 0.5 over >= 10 calls opens the circuit.
    for i in range(12):
        w = workers[i % 3]
        w.state.responded(w.endpoint(0), 500 if i % 2 else 200, now)
        w.states._flush()
        await valkey.eventually(lambda w=w: not w.states.in_flight, "report answered")
    opened = [e for e in relay if e["k"] == "circuit" and e["s"] == "open"]
    assert len(opened) == 1 and "failure ratio 0.50" in opened[0]["why"]
    for w in workers:
        w.states.apply(relay)
        assert w.state.circuit is OPEN
        refusal = w.state.enter(monotonic())
        assert isinstance(refusal, CircuitOpen) and refusal.fields == [(b"Retry-After", b"1")]
    reopen = max(w.state.circuit_until for w in workers)
    await valkey.eventually(lambda: monotonic() >= reopen + 0.01, "the open duration to pass")
    # Open duration over: each worker's next request asks the fleet for a trial call; 2 in all.
    for w in workers:
        assert isinstance(w.state.enter(monotonic()), CircuitOpen)
    await valkey.eventually(lambda: not any(w.state.asking for w in workers), "trial answers")
    for w in workers:
        w.states.apply(relay)
    admitted = [w for w in workers if w.state.enter(monotonic()) is None]
    assert len(admitted) == 2 and all(w.state.circuit is HALF_OPEN for w in workers)
    w = admitted[0]
    w.state.responded(w.endpoint(0), 200, monotonic())
    await valkey.eventually(lambda: w.state.trial_ok == 0 and not w.states.in_flight, "trial reported")
    assert not [e for e in relay if e["k"] == "circuit" and e["s"] == "closed"]  # one of two
    w = admitted[1]
    w.state.responded(w.endpoint(0), 200, monotonic())
    await valkey.eventually(lambda: [e for e in relay if e["k"] == "circuit" and e["s"] == "closed"], "closed")
    closed = [e for e in relay if e["k"] == "circuit" and e["s"] == "closed"]
    assert len(closed) == 1 and closed[0]["why"] == "2 trial calls succeeded"
    for w in workers:
        w.states.apply(relay)
        assert w.state.circuit is CLOSED


async def test_a_stale_event_never_reopens_or_recloses(server: valkey.Server, keys: Keys) -> None:
    w = Worker(server, keys, Resilience(circuit_breaker=BREAKER))
    now = monotonic()
    base = {"k": "circuit", "b": w.state.name, "now": 1000, "by": "x", "why": "test"}
    w.states.apply([{**base, "v": 5, "s": "open", "until": 31000}])
    w.states.apply([{**base, "v": 4, "s": "closed", "until": 0}])
    assert w.state.circuit is OPEN and w.state.circuit_until > now + 29
    w.states.apply([{**base, "v": 6, "s": "closed", "until": 0}])
    assert w.state.circuit is CLOSED


async def test_without_redis_each_worker_decides_alone(own_server: valkey.Server, keys: Keys) -> None:
    w = Worker(own_server, keys, Resilience(circuit_breaker=BREAKER, passive=replace(PASSIVE, max_ejection_percent=50)))
    own_server.stop()
    now = monotonic()
    for _ in range(12):
        w.state.responded(w.endpoint(2), 500, now)
        await asyncio.sleep(0)
    await valkey.eventually(lambda: not w.state.fleet, "the worker falls back to its own rules")
    for _ in range(12):
        w.state.responded(w.endpoint(2), 500, now)
    assert w.state.circuit is OPEN and "this worker" in w.state.circuit_by
    assert w.state.endpoints["127.0.0.1:9003"].until > now
    assert isinstance(w.state.enter(monotonic()), CircuitOpen)


class _Exchange:
    def __init__(self) -> None:
        self.started = monotonic()


def _json(data: Any) -> Any:
    return orjson.loads(data)
