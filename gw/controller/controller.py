"""`gw controller`'s loop: the cluster's objects → one config version in Redis, and status back on the objects.

Reflectors keep the cache in step with the API server; every change sets `changed`. The loop
waits for a quiet moment (GW_CONTROLLER_DEBOUNCE, at most GW_CONTROLLER_DEBOUNCE_MAX after the
first change of a burst), renders the objects as files, compiles them as `gw run` would (the same
compile_snapshot), publishes them when their checksum differs (ConfigStore: an unchanged config
makes no version) and writes the status `gw check` computes. Nothing is rendered before every
kind has been listed once, and only the leader publishes and writes status. A config that
cannot serve at all (no Gateway of gw's classes, no usable listener) is not published: the last
version keeps serving. Objects with errors are left out by the compile, as from files, and say
why in their status. Nor is anything published while the Gateway API CRDs are at a bundle version
gw does not support (gw.controller.versions): gw's GatewayClasses then say so, not Accepted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from redis.exceptions import RedisError

from gw.config import ConfigError, LoadResult, compile_snapshot, status_document
from gw.config.snapshot import NOTHING, Snapshot
from gw.controller import kinds
from gw.controller.api import Api, ApiError, Conflict, NotFound
from gw.controller.cache import Cache
from gw.controller.leader import LeaderElector, identity
from gw.controller.render import render
from gw.controller.status import StatusUpdate, refusals, updates
from gw.controller.versions import MetadataCache, Verdict, crd_kind, crd_names, judge
from gw.controller.watch import Backoff, Reflector
from gw.settings import Settings
from gw.state.config_store import CONTROLLER, ConfigStore, ConfigStoreError, Version
from gw.state.follower import ConfigFollower

log = logging.getLogger("gw.controller")


class Controller:
    """One controller process's state: cache, reflectors, election, what it published and wrote."""

    def __init__(
        self,
        settings: Settings,
        api: Api,
        store: ConfigStore,
        *,
        lease_namespace: str = "default",
        holder: str | None = None,
        backoff_cap: float = 30.0,
    ) -> None:
        self.settings = settings
        self.api = api
        self.store = store
        self.holder = holder or identity()
        self.changed = asyncio.Event()
        self.cache = Cache(lambda kind: self.changed.set())
        self.backoff_cap = backoff_cap
        self.reflectors = [
            Reflector(api, kind, self.cache, backoff=Backoff(cap=backoff_cap), on_restart=self._on_restart)
            for kind in kinds.WATCHED
        ]
        # The Gateway API CRDs, one watch each (a metadata.name selector: RBAC grants them by name),
        # for their bundle version: the GatewayClasses' SupportedVersion, re-judged when one changes.
        self.crd_reflectors = {
            name: Reflector(api, crd_kind(name), MetadataCache(lambda kind: self.changed.set()),
                            backoff=Backoff(cap=backoff_cap), on_restart=self._on_crd_restart)
            for name in crd_names()
        }  # fmt: skip
        self.verdict: Verdict | None = None  # the last judgement of the CRDs' version
        self.elector: LeaderElector | None = None
        if settings.leader_election:
            self.elector = LeaderElector(
                api,
                lease_namespace,
                settings.leader_election_name,
                holder=self.holder,
                lease_duration=settings.leader_election_lease_duration,
                renew_deadline=settings.leader_election_renew_deadline,
                retry_period=settings.leader_election_retry_period,
                on_change=self._on_leading,
            )
        self.snapshot: Snapshot = NOTHING  # last rendered
        self.result: LoadResult | None = None  # its compile (None: it could not serve)
        self.document: dict[str, Any] | None = None  # its status_document
        self.published = ""  # checksum of the last snapshot Redis took (or already had)
        self.version = 0
        self.error = ""  # why the last render was not published
        self.status_error = ""
        self.counters: dict[str, int] = {
            "versions_published": 0,
            "renders": 0,
            "reconciles": 0,
            "status_patches": 0,
            "status_conflicts": 0,
            "watch_restarts": 0,
        }
        self._retry = Backoff(cap=backoff_cap)
        self._tasks: list[asyncio.Task[None]] = []
        self._election: asyncio.Task[None] | None = None
        # The cluster is the config's source: a version published by anything else (a replica's
        # files, a push, a rollback, an emptied Redis) is replaced by the cluster's again.
        self.follower = ConfigFollower(
            store, self._on_version, poll_interval=settings.config_poll_interval, on_empty=self._on_empty
        )

    # -- state --------------------------------------------------------------------------------

    @property
    def leading(self) -> bool:
        return self.elector is None or self.elector.leading

    @property
    def synced(self) -> bool:
        return all(r.synced for r in self.reflectors)

    @property
    def crds_known(self) -> bool:
        """Every CRD watch listed once or answered with an error: the version can be judged."""
        return all(r.synced or r.error for r in self.crd_reflectors.values())

    def judge_crds(self) -> Verdict:
        """SupportedVersion from what the CRD watches hold (the last seen, if a watch fails later)."""
        unreadable = next((r.error for r in self.crd_reflectors.values() if not r.synced and r.error), "")
        crds = {name: r.cache.get(r.kind.kind, "", name) for name, r in self.crd_reflectors.items()}
        return judge(crds, unreadable)

    def ready(self) -> tuple[bool, str]:
        """/readyz: every kind listed once and the API server answering."""
        unsynced = [r.kind.label for r in self.reflectors if not r.synced]
        if unsynced:
            return False, "not synced: " + ", ".join(unsynced)
        unreachable = [r for r in self.reflectors if not r.reachable]
        if unreachable:
            return False, f"API server unreachable: {unreachable[0].error}"
        if self.leading:
            return True, "ok (leader)"
        return True, f"ok (following {self.elector.leader if self.elector else ''})"

    def status(self) -> dict[str, Any]:
        """/status: election, sync per kind, what was published, the status gw computed."""
        return {
            "holder": self.holder,
            "leading": self.leading,
            "leader": self.elector.leader if self.elector else self.holder,
            "version": self.version,
            "checksum": self.snapshot.checksum,
            "error": self.error,
            "status_error": self.status_error,
            "kinds": {r.kind.label: self._kind_status(r) for r in self.reflectors},
            "counters": dict(self.counters),
            "gateway_api_status": self.document,
            "supported_version": self.verdict.condition() if self.verdict else None,
        }

    def _kind_status(self, r: Reflector) -> dict[str, Any]:
        return {
            "synced": r.synced,
            "reachable": r.reachable,
            "objects": len(self.cache.of(r.kind.cache_name)),
            "resourceVersion": r.resource_version,
            "restarts": r.restarts,
            "error": r.error,
        }

    def metrics(self) -> bytes:
        """Prometheus text: versions published, watch restarts, status patches, leadership."""
        lines = []
        for name, value in self.counters.items():
            lines += [f"# TYPE gw_controller_{name}_total counter", f"gw_controller_{name}_total {value}"]
        lines += ["# TYPE gw_controller_leader gauge", f"gw_controller_leader {int(self.leading)}"]
        lines += ["# TYPE gw_controller_synced gauge", f"gw_controller_synced {int(self.synced)}"]
        lines += ["# TYPE gw_controller_config_version gauge", f"gw_controller_config_version {self.version}"]
        return ("\n".join(lines) + "\n").encode()

    def _on_restart(self, kind: str, why: str) -> None:
        self.counters["watch_restarts"] += 1

    def _on_crd_restart(self, kind: str, why: str) -> None:
        self.counters["watch_restarts"] += 1
        self.changed.set()  # a first error (403) settles the CRDs' verdict: the reconcile waits for it

    def _on_version(self, version: Version) -> None:
        if self.published and version.checksum != self.published:
            log.info(
                "version %d (%s, by %s) is not the cluster's config: publishing the cluster's again",
                version.number, version.origin, version.author,
            )  # fmt: skip
            self.published = ""
            self.changed.set()

    def _on_empty(self) -> None:
        self.published = ""
        self.changed.set()

    def _on_leading(self, leading: bool) -> None:
        if leading:
            self.changed.set()  # publish and write status for what the cache holds now

    # -- run ----------------------------------------------------------------------------------

    async def run(self) -> None:
        """Watch, elect and reconcile until cancelled."""
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(r.run(), name=f"watch {r.kind.label}") for r in self.reflectors]
        self._tasks += [loop.create_task(r.run(), name=f"watch crd {n}") for n, r in self.crd_reflectors.items()]
        if self.elector is not None:
            self._election = loop.create_task(self.elector.run(), name="leader election")
            self._tasks.append(self._election)
        self.follower.start()
        try:
            await self._reconcile_loop()
        finally:
            await self.follower.stop()
            for task in self._tasks:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def stop(self) -> None:
        """A clean stop: no more renewals, and the Lease given up so another controller takes over at once."""
        if self._election is not None:
            self._election.cancel()
            await asyncio.gather(self._election, return_exceptions=True)
        if self.elector is not None:
            await self.elector.release()

    async def _reconcile_loop(self) -> None:
        quiet, longest = self.settings.controller_debounce, self.settings.controller_debounce_max
        while True:
            await self.changed.wait()
            deadline = time.monotonic() + longest
            while True:  # debounce: until `quiet` passes without a change, or `longest` since the first
                self.changed.clear()
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                try:
                    # asyncio.timeout, not wait_for: 3.11's wait_for loses a cancel that lands in
                    # the tick a change ends the wait (cpython#86296), and the loop never stopped.
                    async with asyncio.timeout(min(quiet, left)):
                        await self.changed.wait()
                except TimeoutError:
                    break
            self.changed.clear()
            if not self.synced or not self.crds_known or not self.leading:
                continue  # the first complete sync, the CRDs' answer, or leadership sets `changed` again
            try:
                await self.reconcile()
            except Exception:
                log.exception("reconcile failed")
                self._retry_later()

    def _retry_later(self) -> None:
        delay = self._retry.next()
        asyncio.get_running_loop().call_later(delay, self.changed.set)

    async def reconcile(self) -> None:
        """Render, compile, publish what changed, write the status that changed."""
        self.verdict = verdict = self.judge_crds()
        if verdict.refused:
            await self._refuse(verdict)
            return
        snapshot = render(self.cache, self.settings.controller_name)
        if snapshot.checksum != self.snapshot.checksum:
            self.snapshot = snapshot
            self.counters["renders"] += 1
            try:
                # The compile is the CPU-heavy part; a thread keeps the watches read meanwhile.
                self.result = await asyncio.to_thread(compile_snapshot, snapshot, self.settings)
                self.document = status_document(self.result, self.settings.controller_name)
                self.error = ""
                for error in self.result.errors:
                    log.warning("config: %s", error)
            except ConfigError as exc:
                self.result, self.document = None, None
                self.error = f"not published: {exc}"
                log.warning("%s (version %d keeps serving)", self.error, self.version)
        if self.result is not None and snapshot.checksum != self.published and not await self._publish(snapshot):
            return
        if self.document is not None:
            await self._write_status()
        self.counters["reconciles"] += 1

    async def _refuse(self, verdict: Verdict) -> None:
        """CRDs outside gw's range: its GatewayClasses are not Accepted and nothing is published.

        The replicas keep serving the last version, as for a config that cannot serve: a CRD
        upgrade gw does not support must not take traffic down, and the next render, once the
        CRDs are back in range, publishes whatever changed meanwhile.
        """
        error = f"not published: {verdict.message}"
        if error != self.error:
            log.warning("%s (version %d keeps serving)", error, self.version)
        self.error = error
        self.snapshot, self.result, self.document = NOTHING, None, None
        failed = False
        for update in refusals(self.cache, self.settings.controller_name, verdict):
            if not self.leading:
                return
            failed = not await self._patch(update) or failed
        if failed:
            self._retry_later()
        self.counters["reconciles"] += 1

    async def _publish(self, snapshot: Snapshot) -> bool:
        if not self.leading:
            return False
        try:
            result = await self.store.publish(snapshot, author=f"gw controller {self.holder}", origin=CONTROLLER)
        except (RedisError, OSError, ConfigStoreError) as exc:
            self.error = f"Redis: {exc}"
            log.warning("cannot publish: %s; retrying", exc)
            self._retry_later()
            return False
        self.published, self.version = snapshot.checksum, result.version
        self.follower.version, self.follower.checksum = result.version, snapshot.checksum  # ours: no echo
        self._retry.reset()
        if result.created:
            self.counters["versions_published"] += 1
            log.info("published version %d (%d objects)", result.version, len(snapshot.files))
        return True

    async def _write_status(self) -> None:
        assert self.document is not None
        assert self.verdict is not None
        wanted = updates(self.document, self.cache, self.settings.controller_name, self.settings.gateway_service,
                         verdict=self.verdict)  # fmt: skip
        failed = False
        for update in wanted:
            if not self.leading:
                return
            failed = not await self._patch(update) or failed
        self.status_error = "" if not failed else self.status_error
        if failed:
            self._retry_later()

    async def _patch(self, update: StatusUpdate) -> bool:
        kind = update.kind
        try:
            obj = await self.api.patch_status(kind, update.namespace, update.name, update.patch())
        except Conflict:
            self.counters["status_conflicts"] += 1
            return True  # the watch brings the newer object, which sets `changed`: recomputed then
        except NotFound:
            return True  # deleted meanwhile
        except ApiError as exc:
            self.status_error = f"{kind.kind} {update.namespace}/{update.name}: {exc}"
            log.warning("cannot write status of %s", self.status_error)
            return False
        self.counters["status_patches"] += 1
        # What the server now holds, so the next round compares with it, not with the stale copy.
        with contextlib.suppress(Exception):
            self.cache.apply(kind.kind, "MODIFIED", {"apiVersion": kind.api_version, "kind": kind.kind, **obj})
        return True
