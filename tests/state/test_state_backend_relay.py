"""The supervisor's relay of backend events: pub/sub for speed, heal reads for what pub/sub misses,
and Redis going away and coming back; against a real Valkey."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson

from gw.config.backend_policy import ActiveHealthCheck, Resilience
from gw.config.model import Backend, BackendRef, CompiledConfig, Endpoint, Rule
from gw.state import Client, Keys, connect
from gw.supervisor.backends import BackendRelay, backends_with_policy
from tests.conftest import StartGateway
from tests.support import valkey
from tests.support.upstream import Upstream
from tests.support.valkey import eventually

BACKEND = "Backend default/api"


class Workers:
    """Stands for the supervisor's workers: every batch the relay sends, in order."""

    def __init__(self) -> None:
        self.batches: list[list[dict[str, Any]]] = []

    def send(self, events: list[dict[str, Any]]) -> None:
        self.batches.append(events)

    @property
    def events(self) -> list[dict[str, Any]]:
        return [e for batch in self.batches for e in batch]

    def versions(self, kind: str = "probe") -> list[int]:
        return [e["v"] for e in self.events if e["k"] == kind]


def event(v: int, state: str = "unhealthy", endpoint: str = "10.0.0.1:80") -> dict[str, Any]:
    return {"b": BACKEND, "k": "probe", "e": endpoint, "v": v, "s": state, "now": 1, "why": "t", "by": "c"}


async def test_published_events_reach_the_workers_in_order_and_junk_is_dropped(client: Client, keys: Keys) -> None:
    workers = Workers()
    relay = BackendRelay(client, keys, workers.send, heal_interval=3600)  # only pub/sub can deliver
    relay.start()
    try:
        await eventually(lambda: relay.heals >= 1, "the relay to subscribe")
        await client.publish(keys.backend_events, orjson.dumps(event(1)))
        await client.publish(keys.backend_events, b"not json")
        await client.publish(keys.backend_events, orjson.dumps({"b": BACKEND, "k": "probe", "v": "2"}))  # v: text
        await client.publish(keys.backend_events, orjson.dumps(event(3, "healthy")))
        await eventually(lambda: workers.versions() == [1, 3], "events 1 and 3")
        assert workers.events[-1]["s"] == "healthy"
        assert relay.top[BACKEND] == 3 and relay.relayed == 2
    finally:
        await relay.stop()


async def test_a_missed_message_is_healed_from_the_backend_hashes_once(client: Client, keys: Keys) -> None:
    workers = Workers()
    relay = BackendRelay(client, keys, workers.send, heal_interval=0.1)
    relay.update([BACKEND])
    relay.start()
    try:
        await eventually(lambda: relay.heals >= 1, "a first heal")
        # Stored as the probe script stores it, but its message never published: a lost message.
        endpoints = keys.backend(BACKEND).endpoints
        await client.hset(endpoints, mapping={"10.0.0.1:80|pv": 4, "10.0.0.1:80|pok": "0", "10.0.0.1:80|pby": "c"})
        await eventually(lambda: workers.versions() == [4], "the stored item relayed")
        assert workers.events[0]["s"] == "unhealthy" and isinstance(workers.events[0]["now"], int)
        heals = relay.heals
        await eventually(lambda: relay.heals >= heals + 3, "more heals")
        assert workers.versions() == [4]  # nothing newer: not sent again
    finally:
        await relay.stop()


async def test_the_relay_heals_only_the_backends_of_the_served_config(client: Client, keys: Keys) -> None:
    workers = Workers()
    relay = BackendRelay(client, keys, workers.send, heal_interval=0.1)
    relay.start()
    try:
        await client.hset(keys.backend(BACKEND).endpoints, mapping={"10.0.0.1:80|pv": 2, "10.0.0.1:80|pok": "1"})
        await eventually(lambda: relay.heals >= 3, "heals")
        assert workers.events == []  # no backend with a policy in the config
        relay.update([BACKEND])  # a reload gave it one
        await eventually(lambda: workers.versions() == [2], "the stored item of the new backend")
    finally:
        await relay.stop()


async def test_the_relay_follows_redis_away_and_back(own_server: valkey.Server, keys: Keys) -> None:
    client = connect(own_server.url)
    workers = Workers()
    relay = BackendRelay(client, keys, workers.send, heal_interval=0.2)
    relay.update([BACKEND])
    relay.start()
    try:
        await eventually(lambda: relay.connected, "the relay to subscribe")
        own_server.stop()
        await eventually(lambda: not relay.connected, "the relay to notice")
        assert relay.error
        own_server.start()
        await eventually(lambda: relay.connected, "the relay to resubscribe")
        publisher = connect(own_server.url)
        try:
            await publisher.publish(keys.backend_events, orjson.dumps(event(1)))
        finally:
            await publisher.aclose()
        await eventually(lambda: workers.versions() == [1], "an event published after Redis came back")
    finally:
        await relay.stop()
        await client.aclose()


def test_a_starting_worker_gets_the_latest_event_of_each_item_with_its_clock_moved_on() -> None:
    workers = Workers()
    relay = BackendRelay(None, Keys("t"), workers.send)
    relay.deliver([event(2), event(1, "healthy"), event(3, "healthy", "10.0.0.2:80")])
    relay.latest[(BACKEND, "probe", "10.0.0.1:80")] = (event(2), relay.latest[(BACKEND, "probe", "10.0.0.1:80")][1] - 5)
    snapshot = {(e["e"], e["v"]): e["now"] for e in relay.snapshot()}
    assert snapshot.keys() == {("10.0.0.1:80", 2), ("10.0.0.2:80", 3)}  # the stale v=1 is not the latest
    assert snapshot[("10.0.0.1:80", 2)] >= 1 + 5000  # it waited 5 s here: `now` says so
    assert relay.top == {BACKEND: 3}


def test_backends_with_a_policy_are_found_behind_every_rule(tmp_path: Path) -> None:
    plain = Backend("Backend default/plain", [Endpoint("127.0.0.1", 1)])
    guarded = Backend(BACKEND, [Endpoint("127.0.0.1", 2)])
    guarded.resilience = Resilience(active=ActiveHealthCheck())
    rules = (
        Rule("default/a", 0, [BackendRef("plain", 1, plain)]),
        Rule("default/b", 0, [BackendRef("api", 1, guarded), BackendRef("none", 1, None)]),
    )
    assert backends_with_policy(CompiledConfig(ports=(), rules=rules)) == {BACKEND: guarded}
    assert backends_with_policy(None) == {}


def test_a_gateway_relays_the_fleets_events_to_its_workers(
    server: valkey.Server, keys: Keys, start_gateway: StartGateway, upstream: Upstream
) -> None:
    env = {"GW_REDIS_URL": server.url, "GW_REDIS_PREFIX": keys.prefix, "GW_WORKERS": "2"}
    routes: list[dict[str, object]] = [{"name": "all", "rules": [{"backendRefs": [{"backend": "up"}]}]}]
    gw = start_gateway({"up": [("127.0.0.1", upstream.port)]}, routes, env)
    valkey.wait_until(lambda: gw.status()["backend_events"]["connected"], "the relay to subscribe")  # type: ignore[index]
    with server.client() as publisher:
        publisher.publish(keys.backend_events, orjson.dumps(event(1)))
        publisher.publish(keys.backend_events, orjson.dumps(event(2, "healthy")))
    valkey.wait_until(lambda: gw.status()["backend_events"]["relayed"] == 2, "both events relayed")  # type: ignore[index]
    # The workers took the message (a worker failing on it would log a traceback) and serve on.
    assert gw.connect().request("GET", "/echo").status == 200
    assert not [line for line in gw.log if "Traceback" in line or "Exception" in line], gw.log
