"""The supervisor: owns the listening sockets, runs one worker per slot, and acts on signals.

It never proxies. Operations that change the set of workers or their config (reload, upgrade,
scaling, RSS recycling) run one at a time under `ops`, so a USR2 arriving during a HUP waits for
it instead of interleaving with it. A worker that exits unexpectedly is restarted with backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import time
from typing import Any, NamedTuple

import psutil
from redis.exceptions import RedisError

from gw import __version__
from gw.admin import AdminApp, AdminProblem, access, access_note, admin_server, is_loopback_host
from gw.balancing.kinds import ROUND_ROBIN
from gw.config import ConfigError, LoadResult, Snapshot, compile_snapshot, read_snapshot, status_document
from gw.config.fallback import keep_running_objects
from gw.config.model import CompiledConfig
from gw.config.snapshot import NOTHING
from gw.listen import bind_listener
from gw.observe.families import SESSION_RESULTS
from gw.observe.metrics import Registry
from gw.settings import Settings, SettingsError, check_paths
from gw.state import EmbeddedValkeyError, Keys, Version
from gw.state.config_store import ConfigStore, VersionMissing, version_diff
from gw.supervisor.backends import BackendRelay, backends_with_policy
from gw.supervisor.cpus import available_cpus
from gw.supervisor.fleet import FleetView
from gw.supervisor.health import HealthChecker
from gw.supervisor.log import log
from gw.supervisor.process import DRAINING, EXITED, READY, WorkerProcess, exit_text
from gw.supervisor.publisher import Publisher
from gw.supervisor.replica import ReplicaBeat
from gw.supervisor.signals import SIGNALS
from gw.supervisor.sockets import ListenerSockets, bind_ports
from gw.titles import set_title

STARTUP_TIMEOUT = 30.0  # a worker not ready by then is considered failed
EXIT_WAIT = 2.0  # a worker whose control channel closed is gone by then: its exit code says why
STATS_TIMEOUT = 2.0  # /metrics and /status wait this long for each worker's numbers
REDIS_PING_TIMEOUT = 0.5  # /status's Redis latency: a PING slower than this shows as none
ADMIN_REDIS_TIMEOUT = 2.0  # /config/versions and /config/diff
ADMIN_VERSIONS = 20  # /config/versions lists this many, newest first
RESTART_BACKOFF_MAX = 30.0
STABLE_AFTER = 30.0  # a worker ready this long resets its slot's failure count
CRASH_LOOP = 5  # consecutive failures reported as a crash loop
RSS_CHECK_INTERVAL = 5.0
EXIT_SETTINGS = 2  # a GW_* variable gw cannot use, as the README promises
# Labelled gauges whose workers' values add up (each worker counts its own share); the others
# are every worker's view of the same fleet state, shown as the first worker sees it.
SUMMED_GAUGES = frozenset({"gw_endpoint_in_flight"})
DEFAULT_BALANCER = {"type": ROUND_ROBIN}  # a backend no BackendTrafficPolicy gives a loadBalancer


class PendingRestart(NamedTuple):
    """A slot's next worker start, waiting out its backoff."""

    timer: asyncio.Handle
    # Kept here because the timer cannot say it: uvloop's call_later(0) returns a plain Handle
    # (no when()), and a first failure restarts at once.
    due: float  # loop.time() of the start


class StartupError(RuntimeError):
    """The supervisor cannot start serving (config, sockets or first workers); `code` is the exit code."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


class Supervisor:
    def __init__(self, settings: Settings, listen_host: str | None = None) -> None:
        self.settings = settings
        self.loop = asyncio.get_running_loop()
        self.slots = settings.workers or available_cpus()
        self.workers: dict[int, WorkerProcess] = {}
        self.retiring: set[WorkerProcess] = set()
        self.starting: set[WorkerProcess] = set()  # spawned, not yet in `workers`: backend events reach them too
        self.failures: dict[int, int] = {}
        self.restarts: dict[int, PendingRestart] = {}
        self.last_exits: dict[int, str] = {}  # slot → how its last worker ended (for /status)
        self.sockets = ListenerSockets(
            settings.listener_address if listen_host is None else listen_host, share=settings.share_ports
        )
        self.snapshot = NOTHING  # what the workers serve: files, checksum, source
        self.result: LoadResult | None = None
        self.version = 0
        self.reloads = 0
        # The config the source offers but we refused (HUP, or a version from Redis): until a
        # reload succeeds, /status says what and since when, and /readyz says degraded.
        self.rejected: dict[str, Any] | None = None
        self.started = time.time()
        self.serving = False  # until then a worker's exit is the start path's to report
        self.stopping = False
        self.stopped = asyncio.Event()
        self.ops = asyncio.Lock()
        self.metrics = Registry()  # the supervisor's own counters
        self.retired = Registry()  # what workers that exited had counted, so totals never go back
        self.env = dict(os.environ)
        self.publisher = Publisher(settings, self.apply_fleet_version)
        # Backend resilience shared by the fleet: events from Redis to the workers, active checks.
        self.relay: BackendRelay | None = None
        self.checker: HealthChecker | None = None
        # What the replicas share through Redis, seen from here (/fleet, gw_fleet_*).
        self.fleet = FleetView(
            lambda: self.publisher.store,
            Keys(settings.redis_prefix),
            lambda: (self.version, self.snapshot.checksum),
            lambda: backends_with_policy(self.result.config if self.result else None),
            lambda: redis_mode(self.publisher.url, self.publisher.embedded is not None),
        )
        # This replica's record in Redis, whatever the config: what every replica's /fleet lists.
        self.replica = ReplicaBeat(
            lambda: self.publisher.store, Keys(settings.redis_prefix), self.fleet.replica, self.record, self.metrics
        )

    # -- start -----------------------------------------------------------------------------

    async def start(self) -> None:
        try:
            snapshot = read_snapshot(self.settings.config)
            result = compile_snapshot(snapshot, self.settings)
        except ConfigError as exc:
            raise StartupError(f"config: {exc}") from None
        _report(result)
        try:
            self.sockets.ensure(self.slots, bind_ports(result.config))
        except SettingsError as exc:
            raise StartupError(str(exc), EXIT_SETTINGS) from None
        except OSError as exc:  # ListenError names the port
            raise StartupError(str(exc)) from None
        try:
            self.env["GW_REDIS_URL"] = self.publisher.start_server()
        except (EmbeddedValkeyError, OSError) as exc:
            raise StartupError(f"cannot start the embedded Valkey: {exc}") from None
        if not self.settings.session_keys:
            self.env["GW_SESSION_KEYS"] = await self.publisher.session_key()
        number = await self.publisher.publish(snapshot, start=True)
        if self.publisher.unpublished is not None:
            log(f"Redis unavailable ({self.publisher.last_error}): serving the config unpublished for now")
        self._commit(snapshot, result, number or 0)
        if self.publisher.superseded is not None:  # files published before, then a push or rollback
            await self.apply_fleet_version(self.publisher.superseded)
        try:
            await asyncio.gather(*(self._start_worker(slot) for slot in range(self.slots)))
        except Exception as exc:
            await self.quit_now()
            raise StartupError(f"workers did not start: {exc}") from None
        for sig, (method, _doc) in SIGNALS.items():
            self.loop.add_signal_handler(sig, self._on_signal, method)
        self.loop.create_task(self._watch_rss())
        self.publisher.follow(self.version, self.snapshot.checksum, lambda: self.snapshot)
        self._start_backends()
        self.replica.start()
        self.fleet.start()
        self.serving = True
        self._set_title()

    def _set_title(self) -> None:
        unpublished = "+unpublished" if self.publisher.unpublished else ""
        set_title(f"gw: supervisor [config v{self.version}{unpublished}]")

    def _rejected(self, what: str, exc: Exception) -> None:
        """Remember a refused config for /status and /readyz; `since` is the first refusal in a row."""
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        since = self.rejected["since"] if self.rejected else now
        self.rejected = {"config": what, "errors": str(exc).splitlines(), "since": since, "last": now}

    def _commit(self, snapshot: Snapshot, result: LoadResult, version: int) -> None:
        self.snapshot, self.result, self.version = snapshot, result, version
        self.rejected = None
        self._backends_changed()

    # -- backend resilience (gw.supervisor.backends, gw.supervisor.health) -----------------

    def _start_backends(self) -> None:
        store = self.publisher.store
        assert store is not None  # start_server made it: there is always a Redis to try
        keys = Keys(self.settings.redis_prefix)
        self.relay = BackendRelay(store.client, keys, self._send_backend_events)
        self.checker = HealthChecker(store.client, keys, self.relay, self.metrics)
        self._backends_changed()
        self.relay.start()

    def _backends_changed(self) -> None:
        if self.relay is None or self.checker is None:
            return
        config = self.result.config if self.result else None
        self.relay.update(backends_with_policy(config))
        self.checker.update(config)

    def _send_backend_events(self, events: list[dict[str, Any]]) -> None:
        if not events:
            return
        message = {"t": "backend-events", "events": events}
        for worker in (*self._live(), *self.starting):
            worker.send(message)

    async def stop_backends(self) -> None:
        """Stop relaying and checking; the leases this replica held go to other replicas at once, and
        its record leaves the fleet."""
        await self.fleet.stop()
        await self.replica.stop()
        if self.checker is not None:
            await self.checker.stop()
        if self.relay is not None:
            await self.relay.stop()

    def _config_message(self) -> dict[str, Any]:
        """The snapshot served, with its checksum: the one way a config reaches a worker."""
        snapshot = self.snapshot
        return {
            "t": "config",
            "version": self.version,
            "source": snapshot.source,
            "checksum": snapshot.checksum,
            "files": [[name, data] for name, data in snapshot.files],
        }

    def _send_sockets(self, worker: WorkerProcess) -> None:
        entries = self.sockets.for_worker(worker.slot, self.slots)
        worker.send(
            {"t": "listeners", "sockets": [[port, owner] for port, owner, _ in entries]},
            [sock.fileno() for _, _, sock in entries],
        )

    async def _start_worker(self, slot: int) -> WorkerProcess:
        """Start a worker for `slot` and return it once it serves the current config."""
        worker = WorkerProcess(slot, self._worker_exited)
        await worker.spawn(self.env)
        self.starting.add(worker)
        try:
            return await self._start_spawned(worker)
        finally:
            self.starting.discard(worker)

    async def _start_spawned(self, worker: WorkerProcess) -> WorkerProcess:
        slot = worker.slot
        previous = self.workers.get(slot)
        if previous is None or previous.state == EXITED:
            self.workers[slot] = worker  # a restart: the slot is its from the start
        self._send_sockets(worker)
        reply = await worker.request(self._config_message(), STARTUP_TIMEOUT)
        if self.relay is not None and reply is not None and reply.get("ok") and (known := self.relay.snapshot()):
            # What the fleet decided about backends before this worker existed (or had a config).
            worker.send({"t": "backend-events", "events": known})
        if reply is None and worker.channel is not None and worker.channel.closed:
            # Not silence but a process on its way out (an import error, a setting it refuses).
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(EXIT_WAIT):
                    await worker.exited.wait()
        if worker.state == EXITED:
            raise RuntimeError(worker.exit_before_ready())
        if reply is None or not reply.get("ok"):
            worker.kill()
            why = reply.get("error") if reply else f"no answer within {STARTUP_TIMEOUT:g}s"
            raise RuntimeError(f"worker {slot} (pid {worker.pid}) did not take the config: {why}")
        async with asyncio.timeout(STARTUP_TIMEOUT):
            await asyncio.shield(worker.ready)  # raises if it exits first
        return worker

    # -- worker exits and restarts ---------------------------------------------------------

    def _worker_exited(self, worker: WorkerProcess) -> None:
        if worker.final_metrics:
            self.retired.absorb(worker.final_metrics)
        if worker in self.retiring:
            self.retiring.discard(worker)
            return
        if self.stopping or not self.serving or self.workers.get(worker.slot) is not worker:
            return
        slot = worker.slot
        stable = worker.ready_at and time.time() - worker.ready_at >= STABLE_AFTER
        failures = self.failures[slot] = 1 if stable else self.failures.get(slot, 0) + 1
        delay = 0.0 if failures == 1 else min(RESTART_BACKOFF_MAX, 0.5 * 2 ** (failures - 2))
        self.metrics.inc("gw_worker_restarts_total", slot=str(slot))
        what = f"worker {slot} (pid {worker.pid}) exited with {exit_text(worker.exit_code)}"
        if failures >= CRASH_LOOP:
            log(f"{what}; crash loop: {failures} failures in a row, next start in {delay:g}s")
        else:
            log(f"{what}; restarting{f' in {delay:g}s' if delay else ''}")
        timer = self.loop.call_later(delay, self._restart, slot, worker)
        self.restarts[slot] = PendingRestart(timer, self.loop.time() + delay)
        self.last_exits[slot] = exit_text(worker.exit_code)

    def _restart(self, slot: int, dead: WorkerProcess) -> None:
        self.restarts.pop(slot, None)
        if self.stopping or slot >= self.slots or self.workers.get(slot) is not dead:
            return
        self.loop.create_task(self._restart_slot(slot))

    async def _restart_slot(self, slot: int) -> None:
        try:
            await self._start_worker(slot)
        except Exception as exc:  # its exit (if it got that far) schedules the next try
            log(f"worker {slot} failed to start: {exc}")
            current = self.workers.get(slot)
            if current is not None and current.state != EXITED:
                return
        else:
            log(f"worker {slot} (pid {self.workers[slot].pid}) restarted")

    # -- signals ---------------------------------------------------------------------------

    def _on_signal(self, method: str) -> None:
        task = self.loop.create_task(getattr(self, method)())
        task.add_done_callback(lambda t: _report_failure(t, method))

    async def reload(self) -> None:
        """HUP: read and validate the source; on success every worker switches to it in place."""
        async with self.ops:
            if self.stopping:
                return
            try:
                read = read_snapshot(self.settings.config)
                result = compile_snapshot(read, self.settings)
                unchanged = self.publisher.files_unchanged(read)  # as last read: not to publish again
                # Objects whose new version is invalid keep their running one (_report() says which).
                snapshot, result, _kept = keep_running_objects(
                    read, result, self.snapshot, lambda s: compile_snapshot(s, self.settings)
                )
                if unchanged or (snapshot.checksum == self.snapshot.checksum and self.publisher.unpublished is None):
                    self.rejected = None  # the source is back to what runs
                    log(f"config reloaded (unchanged, version {self.version})")
                    self.metrics.inc("gw_config_reloads_total", result="unchanged")
                    return
                self.sockets.ensure(self.slots, bind_ports(result.config))
            except (ConfigError, OSError, SettingsError) as exc:
                log(f"reload rejected, keeping the running config: {exc}")
                self.metrics.inc("gw_config_reloads_total", result="rejected")
                self._rejected(f"reload of {self.settings.config}", exc)
                return
            _report(result)
            number = await self.publisher.publish(snapshot, read=read.checksum)
            if number is None:
                log(f"Redis unavailable ({self.publisher.last_error}): serving the new config unpublished for now")
            self._commit(snapshot, result, number if number is not None else self.version)
            self.reloads += 1
            self.metrics.inc("gw_config_reloads_total", result="applied")
            await self._push_config()
            log(f"config reloaded ({len(result.config.rules)} rules, {self.publisher.describe(self.version)})")

    async def apply_fleet_version(self, version: Version) -> None:
        """A version another replica or `gw config` made current: serve it too."""
        async with self.ops:
            if self.stopping:
                return
            if (version.number, version.checksum) == self.publisher.published and version.number == self.version:
                return  # our own publish, seen by the follower while the reload that made it ran
            snapshot = version.snapshot
            if snapshot.checksum == self.snapshot.checksum:
                self.version = version.number
            else:
                try:
                    result = compile_snapshot(snapshot, self.settings)
                    self.sockets.ensure(self.slots, bind_ports(result.config))
                except (ConfigError, OSError, SettingsError) as exc:
                    log(f"config {version.label} from Redis rejected, keeping the running config: {exc}")
                    self.metrics.inc("gw_config_reloads_total", result="rejected")
                    self._rejected(f"version {version.label} from Redis", exc)
                    return
                self._commit(snapshot, result, version.number)
                self.metrics.inc("gw_config_reloads_total", result="fleet")
            await self._push_config()
            log(f"config {version.label} from Redis applied")

    async def _push_config(self) -> None:
        """Send the current snapshot (and any new sockets) to every worker; wait for their answers."""
        message = self._config_message()
        live = [w for w in self._live() if w.state != DRAINING]
        for worker in live:
            self._send_sockets(worker)
        replies = await asyncio.gather(*(w.request(message, STARTUP_TIMEOUT) for w in live))
        failed = [w.slot for w, r in zip(live, replies, strict=True) if r is None or not r.get("ok")]
        if self.relay is not None:  # backends new in this config: what the fleet knows of them
            self._send_backend_events(self.relay.snapshot())
        self._set_title()
        self.replica.wake()  # the fleet's /fleet sees the version served here now, not at the next beat
        if failed:
            log(f"workers {failed} did not confirm config version {self.version}")

    async def upgrade(self) -> None:
        """USR2: replace every worker, one slot at a time, each successor ready before its predecessor drains."""
        async with self.ops:
            for slot in range(self.slots):
                if self.stopping:
                    return
                if not await self._replace(slot, "upgrade"):
                    log("upgrade stopped: the running workers keep serving")
                    return
            log(f"upgrade done: {self.slots} fresh workers")

    async def _replace(self, slot: int, why: str) -> bool:
        old = self.workers.get(slot)
        try:
            new = await self._start_worker(slot)
        except Exception as exc:
            log(f"{why}: worker {slot} failed to start: {exc}")
            return False
        self.workers[slot] = new
        if old is not None and old is not new and old.state != EXITED:
            self.retiring.add(old)
            old.drain(self.settings.drain_timeout)
        log(f"{why}: worker {slot} is now pid {new.pid}{f', pid {old.pid} draining' if old else ''}")
        return True

    async def add_worker(self) -> None:
        """TTIN: one worker more."""
        async with self.ops:
            if self.stopping:
                return
            slot = self.slots
            self.slots += 1
            try:
                self.sockets.ensure(self.slots, self.sockets.ports())
                await self._start_worker(slot)
            except Exception as exc:
                log(f"cannot add worker {slot}: {exc}")
                self.slots -= 1
                return
            log(f"worker {slot} added (pid {self.workers[slot].pid}); {self.slots} workers")

    async def remove_worker(self) -> None:
        """TTOU: one worker less; slot 0 adopts its sockets before it drains."""
        async with self.ops:
            if self.stopping:
                return
            if self.slots <= 1:
                log("TTOU ignored: one worker is the minimum")
                return
            self.slots -= 1
            slot = self.slots
            worker = self.workers.pop(slot, None)
            pending = self.restarts.pop(slot, None)
            if pending is not None:
                pending.timer.cancel()
            first = self.workers.get(0)
            if first is not None:
                self._send_sockets(first)
            if worker is not None:
                self.retiring.add(worker)
                worker.drain(self.settings.drain_timeout)
            log(f"worker {slot} removed{f' (pid {worker.pid} draining)' if worker else ''}; {self.slots} workers")

    async def shutdown(self) -> None:
        """TERM/INT: drain every worker within GW_DRAIN_TIMEOUT, then stop."""
        if self.stopping:
            return
        self.stopping = True
        try:
            log(f"shutting down: draining {len(self._live())} workers (up to {self.settings.drain_timeout:g}s)")
            for worker in self._live():
                worker.drain(self.settings.drain_timeout)
            await self._wait_exit(self.settings.drain_timeout + 5.0)
        except Exception as exc:  # whatever failed, a TERM ends in a stop: /readyz must not say draining forever
            log(f"shutdown: {exc!r}; stopping the workers at once")
            for worker in self._live():
                worker.kill()
        finally:
            self.stopped.set()

    async def quit(self) -> None:
        """QUIT: workers exit at once."""
        self.stopping = True
        try:
            await self.quit_now()
        finally:
            self.stopped.set()

    async def quit_now(self) -> None:
        self.stopping = True
        for worker in self._live():
            worker.signal(signal.SIGQUIT)
        await self._wait_exit(5.0)

    async def _wait_exit(self, timeout: float) -> None:
        live = self._live()
        if live:
            await asyncio.wait([self.loop.create_task(w.exited.wait()) for w in live], timeout=timeout)
            for worker in self._live():
                worker.kill()
            for worker in self._live():
                await worker.exited.wait()

    def _live(self) -> list[WorkerProcess]:
        return [w for w in (*self.workers.values(), *self.retiring) if w.state != EXITED]

    # -- RSS limit -------------------------------------------------------------------------

    async def _watch_rss(self) -> None:
        limit = self.settings.worker_max_rss
        if not limit:
            return
        while not self.stopping:
            await asyncio.sleep(RSS_CHECK_INTERVAL)
            for slot, worker in list(self.workers.items()):
                if worker.state != READY or self.ops.locked():
                    continue
                rss = _rss(worker.pid)
                if rss > limit:
                    log(f"worker {slot} (pid {worker.pid}) RSS {rss >> 20} MiB exceeds GW_WORKER_MAX_RSS: replacing it")
                    self.metrics.inc("gw_worker_recycled_total", reason="rss")
                    async with self.ops:
                        replaced = await self._replace(slot, "rss")
                    fresh = self.workers.get(slot)
                    if replaced and fresh is not None and (rss := _rss(fresh.pid)) > limit:
                        # Replacing it again would only start the same cycle: every 5 s, for ever.
                        log(
                            f"GW_WORKER_MAX_RSS ({_mib(limit)}) is below a fresh worker's size: worker {slot} "
                            f"(pid {fresh.pid}) has {_mib(rss)} right after start; RSS replacements stop here"
                        )
                        return

    # -- admin -----------------------------------------------------------------------------

    def ready(self) -> tuple[bool, str]:
        if self.stopping:
            return False, "draining"
        missing = [s for s in range(self.slots) if (w := self.workers.get(s)) is None or w.state != READY]
        if self.result is None or missing:
            return False, f"workers not ready: {missing}"
        # Still ready when degraded: workers serve their last config (and policies apply their
        # failure modes), which is what a load balancer needs to know; the body says what is wrong.
        degraded = []
        follower = self.publisher.follower
        if follower is not None and not follower.connected:
            degraded.append(f"Redis unavailable: {follower.error or 'connecting'}")
        if self.rejected is not None:
            rejected = self.rejected
            degraded.append(f"{rejected['config']} rejected since {rejected['since']}, version {self.version} serves")
        return True, f"ready (degraded: {'; '.join(degraded)})" if degraded else "ready"

    async def _stats(self) -> dict[WorkerProcess, dict[str, Any]]:
        live = self._live()
        replies = await asyncio.gather(*(w.request({"t": "stats"}, STATS_TIMEOUT) for w in live))
        return {w: r for w, r in zip(live, replies, strict=True) if r is not None}

    def _registry(self, stats: dict[WorkerProcess, dict[str, Any]]) -> Registry:
        """What the replica counted: its exited workers', its own, and its live workers' counts."""
        registry = Registry()
        registry.absorb(self.retired.snapshot())
        registry.absorb(self.metrics.snapshot())
        for worker_stats in stats.values():
            registry.absorb(worker_stats["metrics"])
        return registry

    async def render_metrics(self) -> bytes:
        stats = await self._stats()
        registry = self._registry(stats)
        registry.gauge_values["gw_workers"] = float(len(self.workers))
        registry.gauge_values["gw_config_version"] = float(self.version)
        registry.gauge_values["gw_config_unpublished"] = float(self.publisher.unpublished is not None)
        follower = self.publisher.follower
        registry.gauge_values["gw_redis_connected"] = float(follower is not None and follower.connected)
        registry.gauge_values.update(self.fleet.gauges())  # the timer's last read: a scrape never waits on Redis
        for slot in range(self.slots):  # at 0 before a first restart, so increase() sees that one
            registry.counters.setdefault(("gw_worker_restarts_total", (("slot", str(slot)),)), 0)
        # A backend's circuit and endpoint health as the first worker sees them (every worker
        # applies the same fleet events; /status shows where one differs).
        first = min(stats, key=lambda w: w.slot, default=None)
        for name, labels, value in stats[first].get("backend_gauges", ()) if first is not None else ():
            if name not in SUMMED_GAUGES:
                registry.labelled_gauges[(name, tuple(tuple(pair) for pair in labels))] = float(value)
        for worker_stats in stats.values():
            for name, labels, value in worker_stats.get("backend_gauges", ()):
                if name in SUMMED_GAUGES:
                    key = (name, tuple(tuple(pair) for pair in labels))
                    registry.labelled_gauges[key] = registry.labelled_gauges.get(key, 0.0) + float(value)
        for balancer in _balancers(self.result.config if self.result else None):
            labels = (("backend", balancer["backend"]), ("type", balancer["type"]))
            registry.labelled_gauges[("gw_backend_load_balancer", labels)] = 1.0
        # Per worker, not summed: which version each one serves (a lagging worker stands out).
        for worker, worker_stats in stats.items():
            labels = (("pid", str(worker.pid)), ("slot", str(worker.slot)))
            registry.labelled_gauges[("gw_worker_config_version", labels)] = float(worker_stats["version"])
        return registry.render()

    async def status(self) -> dict[str, Any]:
        stats = await self._stats()
        registry = self._registry(stats)
        config = self.result.config if self.result else None
        return {
            "pid": os.getpid(),
            "uptime_seconds": round(time.time() - self.started, 3),
            "redis": {**self.publisher.status(), **await self._redis_latency()},
            "config": {
                "version": self.version,
                "source": config.source if config else None,
                "checksum": config.checksum if config else None,
                "reloads": self.reloads,
                "rejected": self.rejected,
            },
            "workers": [self._worker_status(w, stats.get(w)) for w in sorted(self._live(), key=lambda w: w.slot)],
            # Slots whose worker exited and waits out its backoff (a crash loop shows here).
            "restarting": [
                {
                    "slot": slot,
                    "last_exit": self.last_exits.get(slot),
                    "failures_in_a_row": self.failures.get(slot, 0),
                    "next_start_in_seconds": round(max(0.0, pending.due - self.loop.time()), 3),
                }
                for slot, pending in sorted(self.restarts.items())
            ],
            "listeners": [
                {
                    "address": self.sockets.host,
                    "declared_port": p.declared_port,
                    "bind_port": p.bind_port,
                    "listeners": list(p.listeners),
                }
                for p in (config.ports if config else ())
            ],
            "connections": sum(s.get("connections", 0) for s in stats.values()),
            "backends": _backends_status(stats),
            # Every backend's balancer, and each rule's sessions as this replica counted them.
            "load_balancers": _balancers(config),
            "sessions": _sessions_status(registry),
            # RateLimitPolicy decisions by policy and outcome, as this replica counted them.
            "rate_limits": _rate_limits_status(registry),
            # The relay of the fleet's backend events and this replica's active checks.
            "backend_events": self.relay.status() if self.relay else None,
            "health_checks": self.checker.status() if self.checker else None,
            # Gateway API conditions of every object, as `gw check` reports them.
            "gatewayAPI": status_document(self.result, self.settings.controller_name) if self.result else None,
        }

    def record(self) -> dict[str, Any]:
        """This replica as /fleet lists it on every replica (gw.state.replicas), rebuilt at each beat."""
        host, port = self.settings.admin_addr
        return {
            "replica": self.fleet.replica,
            "host": socket.gethostname(),
            "pod": os.environ.get("POD_NAME") or None,  # the Kubernetes downward API's, when set
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.started)),
            "gw_version": __version__,
            "config": {"number": self.version, "checksum": self.snapshot.checksum},
            "workers": {
                "configured": self.slots,
                "alive": sum(1 for w in self.workers.values() if w.state == READY),
            },
            "admin": admin_address(host, port),
        }

    async def _redis_latency(self) -> dict[str, Any]:
        """Redis's mode and one PING's round trip from the supervisor (null when it does not answer)."""
        store = self.publisher.store
        latency = None
        if store is not None:
            started = time.perf_counter()
            with contextlib.suppress(RedisError, OSError, TimeoutError):
                async with asyncio.timeout(REDIS_PING_TIMEOUT):
                    await store.client.ping()
                latency = round((time.perf_counter() - started) * 1000, 3)
        return {"mode": redis_mode(self.publisher.url, self.publisher.embedded is not None), "latency_ms": latency}

    async def config_versions(self) -> dict[str, Any]:
        """/config/versions: the versions Redis keeps, newest first, and which one this replica serves."""
        store = self._store()
        try:
            async with asyncio.timeout(ADMIN_REDIS_TIMEOUT):
                current = await store.current()
                views = []
                for number in (await store.history())[:ADMIN_VERSIONS]:
                    with contextlib.suppress(VersionMissing):  # trimmed from history meanwhile
                        views.append(await store.view(number))
        except (RedisError, OSError, TimeoutError) as exc:
            raise AdminProblem(503, "admin-redis", f"Redis did not answer: {exc!r:.200}") from None
        return {
            "current": current,
            "served": self.version,
            "versions": [
                {
                    "number": v.number,
                    "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(v.created)),
                    "checksum": v.checksum,
                    "author": v.author,
                    "origin": v.origin,
                    "source": v.source,
                    "parent": v.parent,
                    "sealed": v.sealed,
                }
                for v in views
            ],
        }

    async def config_diff(self, a: int, b: int) -> str:
        """/config/diff?from=A&to=B: `gw config diff A B` (secret fields hidden)."""
        store = self._store()
        try:
            async with asyncio.timeout(ADMIN_REDIS_TIMEOUT):
                return version_diff(await store.view(a), await store.view(b))
        except VersionMissing as exc:
            raise AdminProblem(404, "admin-version", str(exc)) from None
        except (RedisError, OSError, TimeoutError) as exc:
            raise AdminProblem(503, "admin-redis", f"Redis did not answer: {exc!r:.200}") from None

    def _store(self) -> ConfigStore:
        if self.publisher.store is None:
            raise AdminProblem(503, "admin-redis", "no Redis: config versions are not kept")
        return self.publisher.store

    def _worker_status(self, worker: WorkerProcess, stats: dict[str, Any] | None) -> dict[str, Any]:
        info: dict[str, Any] = {
            "slot": worker.slot,
            "pid": worker.pid,
            "state": worker.state,
            "uptime_seconds": round(time.time() - worker.started, 3),
            "config_version": stats["version"] if stats else worker.version,
            "redis": stats.get("redis") if stats else None,
            "restarts": self.failures.get(worker.slot, 0),
        }
        try:
            proc = psutil.Process(worker.pid)
            with proc.oneshot():
                cpu = proc.cpu_times()
                info["rss_bytes"] = proc.memory_info().rss
                info["cpu_seconds"] = round(cpu.user + cpu.system, 3)
        except psutil.Error:
            pass
        if stats:
            info.update(
                requests=stats["requests"], connections=stats["connections"], websockets=stats.get("tunnels", 0)
            )
        return info


def _backends_status(stats: dict[WorkerProcess, dict[str, Any]]) -> list[dict[str, Any]]:
    """Every backend with a policy: the first worker's view, each worker's circuit state, and the
    requests in flight to each endpoint summed over the workers (LeastRequest counts them)."""
    views = [(w.slot, s.get("backends", [])) for w, s in sorted(stats.items(), key=lambda item: item[0].slot)]
    if not views:
        return []
    out = []
    for backend in views[0][1]:
        name = backend["backend"]
        per_worker = {
            str(slot): next((b["circuit"]["state"] for b in view if b["backend"] == name), None) for slot, view in views
        }
        endpoints = backend["endpoints"]
        if endpoints and "in_flight" in endpoints[0]:
            totals: dict[str, int] = {}
            for _, view in views:
                for b in view:
                    if b["backend"] == name:
                        for e in b["endpoints"]:
                            totals[e["endpoint"]] = totals.get(e["endpoint"], 0) + e.get("in_flight", 0)
            endpoints = [{**e, "in_flight": totals.get(e["endpoint"], 0)} for e in endpoints]
        out.append({**backend, "endpoints": endpoints, "circuit_by_worker": per_worker})
    return out


def _balancers(config: CompiledConfig | None) -> list[dict[str, Any]]:
    """The loadBalancer of every backend the config's rules send to, by name."""
    found: dict[str, dict[str, Any]] = {}
    for rule in config.rules if config is not None else ():
        for ref in rule.backend_refs:
            backend = ref.backend
            if backend is not None and backend.name not in found:
                lb = backend.resilience.load_balancer if backend.resilience is not None else None
                found[backend.name] = {
                    "backend": backend.name,
                    **(lb.status() if lb is not None else DEFAULT_BALANCER),
                    "endpoints": [e.label for e in backend.endpoints],
                }
    return [found[name] for name in sorted(found)]


def _sessions_status(registry: Registry) -> list[dict[str, Any]]:
    """gw_sessions_total by rule: {rule, type, created, repinned, invalid, hashed}."""
    rules: dict[tuple[str, str], dict[str, Any]] = {}
    for (name, labels), value in registry.counters.items():
        if name == "gw_sessions_total":
            label = dict(labels)
            key = (label["rule"], label["type"])
            entry = rules.setdefault(key, {"rule": key[0], "type": key[1], **dict.fromkeys(SESSION_RESULTS, 0)})
            entry[label["result"]] += value
    return [rules[key] for key in sorted(rules)]


def _rate_limits_status(registry: Registry) -> list[dict[str, Any]]:
    """gw_ratelimit_decisions_total by policy: {policy, decisions: {outcome: count}}."""
    policies: dict[str, dict[str, float]] = {}
    for (name, labels), value in registry.counters.items():
        if name == "gw_ratelimit_decisions_total":
            label = dict(labels)
            decisions = policies.setdefault(label["policy"], {})
            decisions[label["outcome"]] = decisions.get(label["outcome"], 0) + value
    return [{"policy": name, "decisions": policies[name]} for name in sorted(policies)]


def redis_mode(url: str, embedded: bool) -> str:
    """embedded, sentinel, cluster or standalone, from GW_REDIS_URL's scheme."""
    if embedded:
        return "embedded"
    scheme = url.partition("://")[0]
    return "sentinel" if "sentinel" in scheme else "cluster" if "cluster" in scheme else "standalone"


def admin_address(host: str, port: int) -> str | None:
    """GW_ADMIN_ADDR for the replica's record: None when bound to loopback (no one else reaches it)."""
    if is_loopback_host(host):
        return None
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _report(result: LoadResult) -> None:
    """Log the errors of a config about to be served (the objects they name are left out)."""
    for error in result.errors:
        log(f"config: {error}")


def _rss(pid: int) -> int:
    try:
        return psutil.Process(pid).memory_info().rss
    except psutil.Error:
        return 0


def _mib(size: int) -> str:
    return f"{size / 2**20:.1f} MiB"


def _report_failure(task: asyncio.Task[None], method: str) -> None:
    if not task.cancelled() and (exc := task.exception()) is not None:
        log(f"{method} failed: {exc!r}")


async def serve(settings: Settings) -> int:
    try:
        check_paths(settings)
    except SettingsError as exc:
        log(str(exc))
        return EXIT_SETTINGS
    supervisor = Supervisor(settings)
    host, port = settings.admin_addr
    try:
        admin_sock = bind_listener(host, port, reuse_port=False)
    except OSError as exc:
        log(f"cannot serve the admin endpoints on {host}:{port}: {exc}")
        return 1
    try:
        await supervisor.start()
    except StartupError as exc:
        log(str(exc))
        admin_sock.close()
        await supervisor.publisher.stop()
        return exc.code
    app = AdminApp(
        supervisor.ready,
        supervisor.render_metrics,
        supervisor.status,
        versions=supervisor.config_versions,
        diff=supervisor.config_diff,
        fleet=supervisor.fleet.read,
        **access(host, settings.admin_token),
    )
    admin = admin_server(app, host, port)
    if note := access_note(host, settings.admin_token):
        log(note)
    admin_task = asyncio.create_task(admin.serve(sockets=[admin_sock]))
    ports = ", ".join(str(p) for p in supervisor.sockets.ports())
    log(f"serving {ports} with {supervisor.slots} workers (admin {host}:{port}, supervisor pid {os.getpid()})")
    try:
        await supervisor.stopped.wait()
        admin.should_exit = True
        await admin_task
    finally:  # the embedded Valkey goes whatever happened
        supervisor.sockets.close()
        await supervisor.stop_backends()
        await supervisor.publisher.stop()
    log("stopped")
    return 0
