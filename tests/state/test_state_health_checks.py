"""Active health checks: one checker in the fleet per backend (a Redis lease), thresholds, changes
published to every replica, and each replica checking for itself without Redis. Real upstream
servers count the probes; a real Valkey holds the lease."""

from __future__ import annotations

import asyncio
import ssl
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import trustme

from gw.config.backend_policy import TCP, ActiveHealthCheck, Resilience
from gw.config.backend_tls import UpstreamTLS
from gw.config.model import Backend, BackendRef, CompiledConfig, Endpoint, Rule
from gw.observe.metrics import Registry
from gw.state import Client, Keys, connect
from gw.state.backend_events import decode
from gw.supervisor.backends import BackendRelay, backends_with_policy
from gw.supervisor.health import HealthChecker
from tests.support import valkey
from tests.support.gateway import free_port
from tests.support.upstream import Upstream
from tests.support.valkey import eventually

BACKEND = "Backend default/api"


def config(check: ActiveHealthCheck, *endpoints: tuple[str, int], name: str = BACKEND) -> CompiledConfig:
    """A compiled config with one backend whose policy sets `check` (as gw.config.backend_attach would)."""
    backend = Backend(name, [Endpoint(address, port) for address, port in endpoints])
    backend.resilience = Resilience(active=check)
    return CompiledConfig(ports=(), rules=(Rule("default/r", 0, [BackendRef("api", 1, backend)]),))


class Replica:
    """One supervisor's side of the checks: its relay (workers = the batches it sends) and its checker."""

    def __init__(self, client: Client | None, keys: Keys, name: str = "") -> None:
        self.events: list[dict[str, Any]] = []
        self.metrics = Registry()
        self.relay = BackendRelay(client, keys, self.events.extend)
        self.checker = HealthChecker(client, keys, self.relay, self.metrics, name or f"checker-{uuid.uuid4().hex[:6]}")
        if client is not None:
            self.relay.start()

    def serve(self, config: CompiledConfig) -> None:
        """What the supervisor does with each config it serves."""
        self.relay.update(backends_with_policy(config))
        self.checker.update(config)

    def count(self, result: str) -> int:
        return self.metrics.counters.get(("gw_health_checks_total", (("result", result),)), 0)

    def rounds(self) -> int:
        return sum(c.rounds for c in self.checker.checks.values())

    async def stop(self) -> None:
        await self.checker.stop()
        await self.relay.stop()


@pytest.fixture
async def replicas(client: Client, keys: Keys) -> AsyncIterator[list[Replica]]:
    made: list[Replica] = []

    class Make(list[Replica]):
        def add(self, name: str = "", redis: Client | bool | None = True) -> Replica:
            replica = Replica(client if redis is True else (redis or None), keys, name)
            made.append(replica)
            return replica

    yield Make()  # type: ignore[misc]
    for replica in made:
        await replica.stop()


@pytest.fixture
def sick() -> Iterator[Upstream]:
    up = Upstream("sick").start()
    yield up
    up.stop()


class Channel:
    """The fleet's backend-event channel, as any replica's relay hears it."""

    def __init__(self, client: Client, keys: Keys) -> None:
        self.pubsub = client.pubsub()
        self.channel = keys.backend_events
        self.events: list[dict[str, Any]] = []

    async def __aenter__(self) -> Channel:
        await self.pubsub.subscribe(self.channel)
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.pubsub.aclose()

    async def wait(self, n: int, timeout: float = 15.0) -> list[dict[str, Any]]:
        async with asyncio.timeout(timeout):
            while len(self.events) < n:
                message = await self.pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                if message is not None:
                    self.events.append(decode(message["data"]))  # type: ignore[arg-type]
        return self.events


def probes(upstream: Upstream, path: str) -> int:
    return sum(1 for s in list(upstream.seen) if s.target == path)


async def test_an_endpoint_failing_its_checks_goes_unhealthy_and_comes_back(
    client: Client, keys: Keys, replicas: Any, sick: Upstream
) -> None:
    # /flaky/<key>/4 answers 503 four times, then 200: unhealthy after 2 failures, healthy after 2 passes.
    check = ActiveHealthCheck(path="/flaky/h/4", interval=0.1, timeout=1.0, unhealthy_threshold=2, healthy_threshold=2)
    endpoint = f"127.0.0.1:{sick.port}"
    replica = replicas.add("checker-a")
    async with Channel(client, keys) as channel:
        replica.serve(config(check, ("127.0.0.1", sick.port)))
        down, up = await channel.wait(2)
    assert (down["b"], down["k"], down["e"], down["s"]) == (BACKEND, "probe", endpoint, "unhealthy")
    assert (down["why"], down["by"]) == ("2 consecutive failures: status 503", "checker-a")
    assert (up["s"], up["why"], up["by"]) == ("healthy", "2 consecutive passes", "checker-a")
    assert up["v"] > down["v"]
    # 2 failures to go down, 2 more while down, 2 passes to come back (and maybe a round since).
    assert replica.count("fail") == 4 and replica.count("pass") >= 2
    # Its own relay hands both to its workers (they came back to it through Redis).
    await eventually(lambda: [e["s"] for e in replica.events] == ["unhealthy", "healthy"], "the relayed events")


async def test_no_answer_counts_as_an_error_towards_unhealthy(
    client: Client, keys: Keys, replicas: Any, upstream: Upstream
) -> None:
    check = ActiveHealthCheck(type=TCP, interval=0.1, unhealthy_threshold=1)
    dead = free_port()
    replica = replicas.add()
    async with Channel(client, keys) as channel:
        replica.serve(config(check, ("127.0.0.1", upstream.port), ("127.0.0.1", dead)))
        (down,) = await channel.wait(1)
    assert (down["e"], down["s"]) == (f"127.0.0.1:{dead}", "unhealthy")
    assert down["why"] == "1 consecutive failure: connection refused"
    assert replica.count("error") >= 1 and replica.count("pass") >= 1


async def test_one_checker_probes_for_the_fleet_and_another_takes_over_when_it_stops(
    client: Client, keys: Keys, replicas: Any, upstream: Upstream
) -> None:
    interval = 0.2
    check = ActiveHealthCheck(path="/status/200", interval=interval, timeout=0.5)
    one, two = replicas.add("one"), replicas.add("two")
    for replica in (one, two):
        replica.serve(config(check, ("127.0.0.1", upstream.port)))
    await eventually(lambda: one.rounds() >= 3 and two.rounds() >= 3, "both checkers to run")
    modes = {one.checker.checks[BACKEND].mode, two.checker.checks[BACKEND].mode}
    assert modes == {"holder", "follower"}
    holder, other = (one, two) if one.checker.checks[BACKEND].mode == "holder" else (two, one)
    # Over the next rounds of the holder, one probe per round reaches the endpoint: not one per checker.
    start_rounds, start_probes = holder.rounds(), probes(upstream, "/status/200")
    await eventually(lambda: holder.rounds() >= start_rounds + 5, "five more rounds")
    rounds, seen = holder.rounds() - start_rounds, probes(upstream, "/status/200") - start_probes
    assert rounds - 1 <= seen <= rounds + 1, (rounds, seen)
    assert other.count("pass") == 0  # the follower never probed
    # The holder dies without giving the lease up: the other takes over within interval + lease TTL.
    holder.checker.checks[BACKEND]._task.cancel()  # type: ignore[union-attr]
    loop = asyncio.get_running_loop()
    stopped, before = loop.time(), other.count("pass")
    await eventually(lambda: other.count("pass") > before, "the other checker to probe", timeout=10)
    ttl = interval * 2 + check.timeout
    took = loop.time() - stopped
    assert took <= interval + ttl + 2.0, took  # + slack for a loaded machine
    assert other.checker.checks[BACKEND].mode == "holder"


async def test_a_checker_that_stops_gives_its_lease_up_at_once(
    client: Client, keys: Keys, replicas: Any, upstream: Upstream
) -> None:
    check = ActiveHealthCheck(path="/status/200", interval=0.2, timeout=0.5)
    one = replicas.add("one")
    one.serve(config(check, ("127.0.0.1", upstream.port)))
    await eventually(lambda: one.count("pass") >= 1, "the first probe")
    assert await client.get(keys.backend(BACKEND).lease) == b"one"
    await one.checker.stop()
    assert await client.get(keys.backend(BACKEND).lease) is None


async def test_the_checks_follow_a_reload(client: Client, keys: Keys, replicas: Any, upstream: Upstream) -> None:
    other = Upstream("other").start()
    try:
        check = ActiveHealthCheck(path="/status/200", interval=0.1)
        replica = replicas.add("one")
        replica.serve(config(check, ("127.0.0.1", upstream.port)))
        await eventually(lambda: probes(upstream, "/status/200") >= 1, "a probe of the first endpoint")
        # The endpoint changes and the path with it.
        replica.serve(config(ActiveHealthCheck(path="/status/204", interval=0.1), ("127.0.0.1", other.port)))
        await eventually(lambda: probes(other, "/status/204") >= 2, "probes of the new endpoint")
        before = probes(upstream, "/status/200")
        await eventually(lambda: probes(other, "/status/204") >= 5, "more probes")
        assert probes(upstream, "/status/200") <= before + 1  # at most one round in flight at the reload
        # The backend loses its policy: its checks stop and the lease is given up.
        replica.checker.update(CompiledConfig(ports=(), rules=()))
        await eventually(lambda: not replica.checker.releasing, "the lease released")
        assert replica.checker.checks == {}
        assert await client.get(keys.backend(BACKEND).lease) is None
    finally:
        other.stop()


async def test_without_redis_each_replica_checks_for_itself_and_tells_its_own_workers(
    keys: Keys, replicas: Any, sick: Upstream
) -> None:
    dead = connect(f"redis://127.0.0.1:{free_port()}", retries=0)
    check = ActiveHealthCheck(path="/status/500", interval=0.1, unhealthy_threshold=2)
    one, two = replicas.add("one", dead), replicas.add("two", dead)
    try:
        for replica in (one, two):
            replica.serve(config(check, ("127.0.0.1", sick.port)))
        for replica in (one, two):
            await eventually(lambda r=replica: len(r.events) == 1, "a replica's own event")
            (down,) = replica.events
            assert (down["e"], down["s"], down["why"]) == (
                f"127.0.0.1:{sick.port}", "unhealthy", "2 consecutive failures: status 500"
            )
            assert replica.checker.checks[BACKEND].mode == "local" and replica.count("fail") >= 2
        assert one.events[0]["by"] == "one" and two.events[0]["by"] == "two"
    finally:
        await dead.aclose()


async def test_back_from_checking_alone_the_fleets_state_outranks_the_replicas_own(
    own_server: valkey.Server, keys: Keys, sick: Upstream
) -> None:
    client = connect(own_server.url)
    replica = Replica(client, keys, "one")
    check = ActiveHealthCheck(path="/status/200", interval=0.1, unhealthy_threshold=1, healthy_threshold=1)
    try:
        replica.serve(config(check, ("127.0.0.1", sick.port)))
        await eventually(lambda: replica.checker.checks[BACKEND].mode == "holder", "the lease")
        own_server.stop()
        await eventually(lambda: replica.checker.checks[BACKEND].mode == "local", "checking alone")
        # Alone, it numbers its own events: a change while Redis is away gets the next number it knows.
        replica.relay.deliver([{"b": BACKEND, "k": "probe", "e": "x", "v": 50, "s": "healthy", "now": 0}])
        own_server.start()
        await eventually(lambda: replica.checker.checks[BACKEND].mode == "holder", "the lease again")
        endpoint = f"127.0.0.1:{sick.port}"
        await eventually(
            lambda: any(e["k"] == "probe" and e["e"] == endpoint and e["v"] > 50 for e in replica.events),
            "the endpoint's health renumbered above the replica's own numbers",
        )
        assert int(await client.get(keys.backend(BACKEND).version) or 0) > 50
    finally:
        await replica.stop()
        await client.aclose()


def test_a_backend_without_active_checks_is_not_probed() -> None:
    backend = Backend(BACKEND, [Endpoint("127.0.0.1", 1)])
    backend.resilience = Resilience()  # a policy, but no healthCheck.active
    checker = HealthChecker(None, Keys("t"), BackendRelay(None, Keys("t"), lambda _: None), Registry(), "c")
    checker.update(CompiledConfig(ports=(), rules=(Rule("default/r", 0, [BackendRef("api", 1, backend)]),)))
    assert checker.checks == {}




async def test_an_endpoint_under_a_backend_tls_policy_is_probed_over_verified_tls(
    client: Client, keys: Keys, replicas: Any
) -> None:
    ca = trustme.CA()
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("orders.internal").configure_cert(ctx)
    up = Upstream("tls", tls=ctx).start()
    try:
        check = ActiveHealthCheck(path="/status/200", interval=0.1, unhealthy_threshold=1, healthy_threshold=1)

        def under(tls_ca: trustme.CA) -> CompiledConfig:
            compiled = config(check, ("127.0.0.1", up.port))
            backend = compiled.rules[0].backend_refs[0].backend
            backend.tls = UpstreamTLS("default/p", "orders.internal", ca_certificates=tls_ca.cert_pem.bytes())  # type: ignore[union-attr]
            return compiled

        replica = replicas.add()
        async with Channel(client, keys) as channel:
            replica.serve(under(trustme.CA()))  # a policy trusting another CA: the proxy would refuse it too
            (down,) = await channel.wait(1)
            assert down["s"] == "unhealthy" and "TLS: [SSL: CERTIFICATE_VERIFY_FAILED]" in down["why"]
            assert probes(up, "/status/200") == 0
            replica.serve(under(ca))  # a reload with the right CA
            _, back = await channel.wait(2)
        assert back["s"] == "healthy"
        assert all(s.tls is not None for s in up.seen if s.target == "/status/200") and probes(up, "/status/200") >= 1
    finally:
        up.stop()
