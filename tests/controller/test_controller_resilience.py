"""`gw controller` under failure (FAKE API server, real Valkey): leader election, failover, the API server gone.

Two controllers: one leads, publishes and writes status; when it dies the other takes over once
the Lease expires. The API server stopping: no version is published or removed, readiness says
why; back again: watches resume from their resourceVersion, or relist after 410 Gone.
"""

from __future__ import annotations

import asyncio
import time

from gw.state.config_store import ConfigStore
from tests.controller import cluster
from tests.controller.conftest import eventually, new_controller, running, versions
from tests.support.fake_apiserver import FakeApiServer

PORT = 18080
LEASE = 1.0  # conftest.FAST


async def test_two_controllers_one_leader_publishes_and_the_other_takes_over_when_it_dies(
    fake: FakeApiServer, store: ConfigStore, prefix: str
) -> None:
    for obj in cluster.basic(PORT, 9999):
        fake.put(obj)
    a, b = new_controller(store, prefix, holder="a"), new_controller(store, prefix, holder="b")
    async with running(a):
        await eventually(lambda: a.leading and a.version, "a leading and publishing")
        async with running(b):
            await eventually(lambda: b.synced and b.elector and b.elector.leader == "a", "b synced, following a")
            fake.put(cluster.route("app", "app", hostname="one.example"))
            await eventually(lambda: a.version == 2, "a publishing the change")
            assert not b.leading
            assert b.counters["versions_published"] == 0
            assert b.counters["status_patches"] == 0
            assert {v.author for v in await versions(store)} == {"gw controller a"}
            lease = fake.get("Lease", "default", "gw-controller")
            assert lease is not None and lease["spec"]["holderIdentity"] == "a"

            # a dies without a word (its task cancelled, the Lease not released): b waits it out.
            await a_dies(a)
            died = time.monotonic()
            await eventually(lambda: b.leading, "b taking over", timeout=LEASE + 5)
            print(f"takeover {time.monotonic() - died:.2f}s after the leader died (lease {LEASE}s)")
            assert (fake.get("Lease", "default", "gw-controller") or {})["spec"]["holderIdentity"] == "b"
            fake.put(cluster.route("app", "app", hostname="two.example"))
            await eventually(lambda: b.version == 3, "b publishing")
            assert (await store.fetch(3)).author == "gw controller b"


async def a_dies(controller: object) -> None:
    """Stop a controller's work as a crash would (the `running` context cancels the rest)."""
    from gw.controller.controller import Controller

    assert isinstance(controller, Controller)
    for task in controller._tasks:
        task.cancel()
    controller.elector.leading = False  # type: ignore[union-attr]  # its process is gone: it writes nothing


async def test_a_leader_that_stops_cleanly_hands_over_at_once(
    fake: FakeApiServer, store: ConfigStore, prefix: str
) -> None:
    for obj in cluster.basic(PORT, 9999):
        fake.put(obj)
    # A lease far longer than the test: only the release lets b take over.
    slow = {"GW_LEADER_ELECTION_LEASE_DURATION": "60s", "GW_LEADER_ELECTION_RENEW_DEADLINE": "30s"}
    a, b = new_controller(store, prefix, holder="a", **slow), new_controller(store, prefix, holder="b", **slow)
    async with running(a), running(b):
        await eventually(lambda: a.leading or b.leading, "a leader")
        first, second = (a, b) if a.leading else (b, a)
        await first.stop()
        assert not first.leading
        await eventually(lambda: second.leading, "the other taking over", timeout=5)


async def test_api_server_gone_nothing_published_or_deleted_then_resync_after_410(
    fake: FakeApiServer, store: ConfigStore, prefix: str
) -> None:
    for obj in cluster.basic(PORT, 9999):
        fake.put(obj)
    fake.put(cluster.service("other"))
    fake.put(cluster.route("other", "other", path="/other"))
    async with running(new_controller(store, prefix)) as controller:
        await eventually(lambda: controller.version and controller.ready()[0], "published and ready")
        held = [(v.number, v.checksum) for v in await versions(store)]

        fake.stop()
        await eventually(lambda: not controller.ready()[0], "not ready")
        assert controller.ready()[1].startswith("API server unreachable")
        # While it is gone the route is deleted and the server forgets history (watches get 410).
        fake.delete("HTTPRoute", "default", "other")
        fake.compact()
        restarts = controller.counters["watch_restarts"]
        # Every kind's watch has failed twice since: time enough for a wrong publish to show.
        watches = len(controller.reflectors) + len(controller.crd_reflectors)
        await eventually(lambda: controller.counters["watch_restarts"] >= restarts + 2 * watches, "retries, gone")
        assert [(v.number, v.checksum) for v in await versions(store)] == held
        assert controller.cache.get("HTTPRoute", "default", "other") is not None  # nothing dropped for failing

        routes = next(r for r in controller.reflectors if r.kind.kind == "HTTPRoute")
        lists = routes.lists
        fake.start()
        await eventually(lambda: controller.ready()[0], "ready again")
        await eventually(lambda: controller.version > held[-1][0], "a version without the deleted route")
        assert routes.lists == lists + 1  # relisted after 410 Gone
        files = dict((await store.fetch(controller.version)).files)
        assert "HTTPRoute/default/other.yaml" not in files
        assert "HTTPRoute/default/app.yaml" in files


async def test_a_dropped_watch_resumes_from_the_last_bookmark_without_relisting(
    fake: FakeApiServer, store: ConfigStore, prefix: str
) -> None:
    for obj in cluster.basic(PORT, 9999):
        fake.put(obj)
    async with running(new_controller(store, prefix)) as controller:
        await eventually(lambda: controller.version, "published")
        classes = next(r for r in controller.reflectors if r.kind.kind == "GatewayClass")
        fake.put(cluster.service("unrelated", namespace="elsewhere"))  # moves the resourceVersion on
        fake.bookmark()
        rv = str(fake.rv)
        await eventually(lambda: classes.resource_version == rv, "the bookmark's resourceVersion")
        lists = classes.lists
        fake.stop()
        fake.start()
        await eventually(
            lambda: any(r.query.get("watch") == "true" and r.query.get("resourceVersion") == rv
                        and r.path.endswith("/gatewayclasses") for r in fake.requests),
            "a watch resumed from the bookmark",
        )  # fmt: skip
        assert classes.lists == lists


async def test_a_stop_that_lands_as_a_change_wakes_the_debounce_still_stops(
    fake: FakeApiServer, store: ConfigStore, prefix: str
) -> None:
    """The cancel and a change in the same loop tick: the loop ends (3.11's wait_for returned instead).

    Python 3.11's asyncio.wait_for returns the inner result when its task is cancelled in the tick
    the inner wait completes (cpython#86296): the reconcile loop then went on waiting for the next
    change and `await task` never returned (a CI run hung here 300 s).
    """
    controller = new_controller(store, prefix)
    loop_task = asyncio.get_running_loop().create_task(controller._reconcile_loop())
    controller.changed.set()
    for _ in range(5):  # into the debounce's wait for the next change
        await asyncio.sleep(0)
    assert not loop_task.done()
    controller.changed.set()
    loop_task.cancel()
    try:
        async with asyncio.timeout(5):
            await asyncio.gather(loop_task, return_exceptions=True)
    finally:
        await controller.api.aclose()
    assert loop_task.cancelled()
