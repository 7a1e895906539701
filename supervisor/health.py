"""Active health checks: one checker in the whole fleet probes each endpoint of a backend every interval.

Kong and APISIX probe from every worker of every node (Kong#6788: checks times workers); gw's
supervisors share a lease per backend in Redis (`BackendKeys.lease`, gw/state/lua/lease_hold.lua).
Every interval each supervisor tries to take or extend it: the holder probes every endpoint of
the backend once, the others probe nothing. The lease lasts LEASE_INTERVALS intervals (plus the
probe timeout, as a round may take that long), so a holder that dies is replaced within one
interval + the lease time; one that stops gives the lease up at once.

The holder counts consecutive results per endpoint: `unhealthyThreshold` failures (a status not
expected, or no answer) make a healthy endpoint unhealthy, `healthyThreshold` passes make it
healthy again; endpoints start healthy, or as Redis last stored them when a checker takes over.
A change runs gw/state/lua/probe_result.lua: numbered by the backend's version, stored in its
endpoints hash and published to the fleet (every supervisor's relay hands it to its workers).

Without Redis (unreachable) every replica checks for itself: its supervisor probes every endpoint
and hands its own changes straight to its workers through the relay. Their version is the next
number after the highest this relay has seen for the backend, so workers take them over anything
Redis said before. When Redis answers again, probe_resync.lua first raises the backend's version
counter to that number and renumbers the stored probe health above it, so the fleet's state (and
every later change) outranks what the replica made up; the checker then starts from Redis's state,
and its probes correct that state within the thresholds if the endpoint changed meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import random
import socket
import time
from dataclasses import dataclass
from typing import Any

from redis.exceptions import RedisError

from gw.balancing.probe import PASS, ProbeResult, ProbeTLS, probe_http, probe_tcp
from gw.config.backend_policy import TCP, ActiveHealthCheck
from gw.config.backend_tls import UpstreamTLS, client_context, san_mismatch
from gw.config.model import Backend, CompiledConfig
from gw.observe.metrics import Registry
from gw.state import Keys
from gw.state.backend_events import HEALTHY, PROBE, UNHEALTHY
from gw.state.backend_store import hold_lease, probe_result, probe_resync, read_events, release_lease
from gw.supervisor.backends import BackendRelay, backends_with_policy
from gw.supervisor.log import log

LEASE_INTERVALS = 2.0
REDIS_TIMEOUT = 1.0  # a checker's Redis call taking longer counts as Redis being away
UNREACHABLE = (RedisError, OSError, TimeoutError)
HOLDER, FOLLOWER, LOCAL = "holder", "follower", "local"


@dataclass(slots=True)
class EndpointView:
    """What the checker knows of one endpoint: its health and the current run of equal results."""

    address: str
    port: int
    healthy: bool = True
    passes: int = 0
    failures: int = 0


class HealthChecker:
    """The active checks of every backend of the served config that has `healthCheck.active`."""

    def __init__(self, client: Any, keys: Keys, relay: BackendRelay, metrics: Registry, checker_id: str = "") -> None:
        self.client = client  # None: no Redis at all, every replica checks for itself
        self.keys = keys
        self.relay = relay
        self.metrics = metrics
        self.id = checker_id or f"{socket.gethostname()}:{os.getpid()}:{os.urandom(4).hex()}"
        self.checks: dict[str, BackendCheck] = {}
        self.releasing: set[asyncio.Future[None]] = set()  # leases being given up (held until done)

    def update(self, config: CompiledConfig | None) -> None:
        """Follow the served config: start, change or stop the backends' checks."""
        wanted = {
            name: backend
            for name, backend in backends_with_policy(config).items()
            if backend.resilience.active is not None
        }
        for name in list(self.checks.keys() - wanted.keys()):
            releasing = self.checks.pop(name).stop(release=True)
            self.releasing.add(releasing)
            releasing.add_done_callback(self.releasing.discard)
        for name, backend in wanted.items():
            check = self.checks.get(name)
            if check is None:
                self.checks[name] = BackendCheck(self, backend).start()
            else:
                check.reconfigure(backend)

    async def stop(self) -> None:
        """Stop every check and give up the leases held, so other replicas take over at once."""
        checks, self.checks = list(self.checks.values()), {}
        await asyncio.gather(*(c.stop(release=True) for c in checks), return_exceptions=True)

    def status(self) -> dict[str, Any]:
        return {
            "checker": self.id,
            "backends": {
                name: {
                    "mode": c.mode or "starting",
                    "endpoints": {label: "healthy" if v.healthy else "unhealthy" for label, v in c.views.items()},
                }
                for name, c in sorted(self.checks.items())
            },
        }


class BackendCheck:
    """One backend's checks: a task that runs a round every interval."""

    def __init__(self, owner: HealthChecker, backend: Backend) -> None:
        self.owner = owner
        self.name = backend.name
        self.check: ActiveHealthCheck = backend.resilience.active
        self.views = {e.label: EndpointView(e.address, e.port) for e in backend.endpoints}
        self.upstream_tls: UpstreamTLS | None = backend.tls
        self.tls = probe_tls_for(backend.tls)
        self.mode = ""  # HOLDER | FOLLOWER | LOCAL once a round has run
        self.rounds = 0  # rounds run (tests and /status watch progress)
        self._task: asyncio.Task[None] | None = None
        self._first = True

    def start(self) -> BackendCheck:
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"gw-health {self.name}")
        return self

    def stop(self, *, release: bool) -> asyncio.Future[None]:
        """Cancel the task; give the lease up when we hold it. Awaitable, but need not be awaited."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
        held = self.mode == HOLDER
        self.mode = ""
        return asyncio.ensure_future(self._release() if release and held else _nothing())

    async def _release(self) -> None:
        owner = self.owner
        with contextlib.suppress(*UNREACHABLE):
            async with asyncio.timeout(REDIS_TIMEOUT):
                await release_lease(owner.client, owner.keys, self.name, owner.id)

    def reconfigure(self, backend: Backend) -> None:
        """A reload: endpoints kept keep their health; a changed check restarts the rounds on its interval."""
        old = self.views
        self.views = {e.label: old.get(e.label) or EndpointView(e.address, e.port) for e in backend.endpoints}
        if backend.tls != self.upstream_tls:
            self.upstream_tls = backend.tls
            self.tls = probe_tls_for(backend.tls)
        check = backend.resilience.active
        if check != self.check:
            self.check = check
            if self._task is not None:
                self._task.cancel()
                self._first = True
                self.start()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        if self._first and self.check.initial_jitter > 0:
            await asyncio.sleep(random.random() * self.check.initial_jitter)
        self._first = False
        while True:
            started = loop.time()
            try:
                await self.round()
            except Exception as exc:  # a bug must not end the checks for good
                log(f"health: backend {self.name}: round failed: {exc!r}")
            self.rounds += 1
            await asyncio.sleep(max(0.0, started + self.check.interval - loop.time()))

    # -- one round -------------------------------------------------------------------------

    async def round(self) -> None:
        """Hold the lease (or find Redis away) and, unless another checker holds it, probe every endpoint."""
        mode = await self._lease()
        if mode == FOLLOWER:
            return
        views = list(self.views.items())
        results = await asyncio.gather(*(self._probe(view) for _, view in views))
        for (label, view), result in zip(views, results, strict=True):
            self.owner.metrics.inc("gw_health_checks_total", result=result.result)
            why = self._count(view, result)
            if why:
                await self._changed(label, view.healthy, why)

    async def _probe(self, view: EndpointView) -> ProbeResult:
        check = self.check
        if check.type == TCP:
            return await probe_tcp(view.address, view.port, timeout=check.timeout, tls=self.tls)
        return await probe_http(
            view.address,
            view.port,
            path=check.path,
            method=check.method,
            hostname=check.hostname,
            expected=check.expected_statuses,
            timeout=check.timeout,
            tls=self.tls,
        )

    def _count(self, view: EndpointView, result: ProbeResult) -> str:
        """Count a result; the reason when the endpoint's health changes with it, else ""."""
        check = self.check
        if result.result == PASS:
            view.passes, view.failures = view.passes + 1, 0
            if not view.healthy and view.passes >= check.healthy_threshold:
                view.healthy = True
                return f"{view.passes} consecutive {'pass' if view.passes == 1 else 'passes'}"
        else:
            view.passes, view.failures = 0, view.failures + 1
            if view.healthy and view.failures >= check.unhealthy_threshold:
                view.healthy = False
                return f"{view.failures} consecutive {'failure' if view.failures == 1 else 'failures'}: {result.why}"
        return ""

    async def _lease(self) -> str:
        """This round's mode: HOLDER (we probe, Redis numbers), FOLLOWER (another checker probes) or LOCAL."""
        owner = self.owner
        previous = self.mode
        if owner.client is None:
            self.mode = LOCAL
            return LOCAL
        try:
            async with asyncio.timeout(REDIS_TIMEOUT):
                ttl = self.check.interval * LEASE_INTERVALS + self.check.timeout
                held = await hold_lease(owner.client, owner.keys, self.name, owner.id, ttl)
                if previous == LOCAL:
                    floor = owner.relay.top.get(self.name, 0)
                    await probe_resync(owner.client, owner.keys, self.name, list(self.views), floor, owner.id)
                    log(f"health: backend {self.name}: Redis answers again; the fleet's checker decides from now on")
                if held and previous != HOLDER:
                    await self._seed_from_redis()
        except UNREACHABLE as exc:
            if previous != LOCAL:
                if previous != HOLDER:  # our view is stale: start from what the workers were told last
                    self._seed_from_relay()
                self._alone(exc)
            self.mode = LOCAL
            return LOCAL
        self.mode = HOLDER if held else FOLLOWER
        return self.mode

    def _alone(self, exc: BaseException) -> None:
        log(f"health: backend {self.name}: Redis unreachable ({exc!r:.200}); checking it from this replica alone")

    async def _seed_from_redis(self) -> None:
        owner = self.owner
        stored = {e["e"]: e["s"] for e in await read_events(owner.client, owner.keys, [self.name]) if e["k"] == PROBE}
        self._seed(stored)

    def _seed_from_relay(self) -> None:
        self._seed({e["e"]: e["s"] for e in self.owner.relay.snapshot() if e["b"] == self.name and e["k"] == PROBE})

    def _seed(self, states: dict[str, str]) -> None:
        for label, view in self.views.items():
            view.healthy = states.get(label, HEALTHY) != UNHEALTHY
            view.passes = view.failures = 0

    async def _changed(self, label: str, healthy: bool, why: str) -> None:
        owner = self.owner
        state = HEALTHY if healthy else UNHEALTHY
        if self.mode == HOLDER:
            try:
                async with asyncio.timeout(REDIS_TIMEOUT):
                    version = await probe_result(owner.client, owner.keys, self.name, label, healthy, why, owner.id)
            except UNREACHABLE as exc:
                self._alone(exc)
                self.mode = LOCAL
            else:
                if version == 0:  # the lease passed to another checker (we stalled past its TTL)
                    self.mode = FOLLOWER
                    return
                log(f"health: backend {self.name} endpoint {label} {state} ({why}) by checker {owner.id}")
                return
        now = int(time.time() * 1000)
        version = owner.relay.top.get(self.name, 0) + 1
        event = {"b": self.name, "k": PROBE, "e": label, "v": version, "s": state, "now": now, "since": now,
                 "why": why, "by": owner.id}  # fmt: skip
        owner.relay.deliver([event])
        log(f"health: backend {self.name} endpoint {label} {state} ({why}) by checker {owner.id} (this replica alone)")


def probe_tls_for(tls: UpstreamTLS | None) -> ProbeTLS | None:
    """A backend under a BackendTLSPolicy is probed over TLS: one context per check, not per probe."""
    if tls is None:
        return None
    if tls.refusal is not None:
        return ProbeTLS(None, tls.hostname, refusal=tls.refusal)
    check = functools.partial(san_mismatch, tls) if tls.subject_alt_names else None
    return ProbeTLS(client_context(tls), tls.hostname, check)


async def _nothing() -> None:
    return None
