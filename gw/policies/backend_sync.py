"""A worker's side of the fleet's backend resilience: its BackendStates, their reports to Redis, the
fleet's events applied to them.

Reports (gw/state/lua/backend_report.lua) carry what this worker saw since its last one: calls,
failures and slow calls for the circuit's window, each endpoint's consecutive counts. A failure is
reported at the end of the loop turn it happened in, so the fleet counts it within a round trip
(ejections and openings follow the configured thresholds, not thresholds times workers); successes
ride along every REPORT_INTERVAL. One call per backend is in flight at a time: what happens
meanwhile goes in the next. The script's reply (the circuit, the events it made) is applied at
once; events made elsewhere arrive through the supervisor (`DataPlane.apply_backend_events`).

Every call goes through the Redis guard. An answer that does not come within its budget, or a
breaker that refuses, switches the backend to this worker's own rules (`BackendState.fleet`
False) until a report is answered again; nothing on the request path waits for Redis.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Iterable
from time import monotonic
from typing import Any

import orjson

from gw.balancing.resilience import CIRCUIT_GAUGE, BackendState
from gw.config.model import Backend, CompiledConfig
from gw.observe.metrics import Registry
from gw.state import SharedState
from gw.state.batch import ScriptBatcher
from gw.state.guard import RedisUnavailable
from gw.state.scripts import load

REPORT = load("backend_report")
TRIAL = load("backend_trial")
REPORT_INTERVAL = 0.1  # seconds: successes (which restart counts and fill the window) wait at most this
REVISIT = 1.0  # seconds between asks for the fleet's state while Redis does not answer
DELAY_HELP = "From a backend event's decision (Redis's clock) to a worker applying it (circuit, ejection, probe)."
DELAY_BOUNDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class BackendStates:
    """The BackendStates of one worker by backend name: they outlive snapshots, as pools do."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, workers: int, metrics: Registry, shared: SharedState | None
    ) -> None:
        self.loop = loop
        self.workers = workers
        self.metrics = metrics
        self.shared = shared
        self.who = f"{socket.gethostname()}:{os.getpid()}:{os.urandom(2).hex()}"  # unique, as in gw.state.fleet
        self.states: dict[str, BackendState] = {}
        self.dirty: set[BackendState] = set()
        self.urgent: set[BackendState] = set()  # of those, the ones with a failure or a trial to tell
        self.in_flight: set[str] = set()  # backends whose report is out
        self.asking: set[str] = set()  # backends whose trial request is out
        self._soon: asyncio.Handle | None = None
        self._revisit: asyncio.TimerHandle | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._reports = self._trials = None
        self.delay = metrics.histogram("gw_backend_event_delay_seconds", DELAY_HELP, DELAY_BOUNDS)
        if shared is not None:
            self._reports = ScriptBatcher(loop, REPORT, shared.redis, shared.guard)
            self._trials = ScriptBatcher(loop, TRIAL, shared.redis, shared.guard)

    def install(self, config: CompiledConfig) -> None:
        """Bind a state to every backend of `config` that has a policy; forget backends gone."""
        seen: dict[str, BackendState] = {}
        for backend in _backends(config):
            if backend.resilience is None or backend.name in seen:
                if backend.resilience is not None:
                    backend.use_state(seen[backend.name])
                continue
            state = self.states.get(backend.name)
            if state is None:
                state = BackendState(backend, backend.resilience, self.workers, self.who, self.sync)
                state.fleet = self.shared is not None
            else:
                state.bind(backend, backend.resilience, self.workers)
            seen[backend.name] = state
        self.states = seen
        self.dirty &= set(seen.values())
        self.urgent &= self.dirty

    def apply(self, events: Iterable[dict[str, Any]]) -> None:
        """Events decided elsewhere, relayed by the supervisor. How long each took from its decision
        (Redis's clock) to taking effect here is observed: the fleet's propagation delay."""
        now = monotonic()
        wall = time.time() * 1000
        for event in events:
            state = self.states.get(event.get("b", ""))
            if state is not None and state.apply(event, now) and event.get("by") != state.who:
                self.delay.observe(max(0.0, wall - event.get("now", wall)) / 1000)
        self._count()

    def sync(self, state: BackendState, urgent: bool) -> None:
        """`state` has something to report (urgent: a failure, or a trial to ask for)."""
        self.dirty.add(state)
        if urgent:
            self.urgent.add(state)
        if self.shared is None:
            self.dirty.discard(state)
            self._count()
            return
        if urgent:
            if self._soon is None:
                self._soon = self.loop.call_soon(self._flush)
        elif self._timer is None:
            self._timer = self.loop.call_later(REPORT_INTERVAL, self._flush)

    def _flush(self) -> None:
        self._soon = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        keys = self.shared.keys  # type: ignore[union-attr]
        channel = keys.backend_events
        for state in list(self.dirty):
            name = state.name
            family = keys.backend(name)
            if state.asking and name not in self.asking and state.breaker is not None:
                self.asking.add(name)
                cb = state.breaker
                self._trials.submit(  # type: ignore[union-attr]
                    [family.version.encode(), family.circuit.encode()],
                    [channel, name, self.who, cb.half_open_requests, int(cb.open_duration * 1000)],
                    lambda reply, s=state: self._granted(s, reply),
                )
            if name in self.in_flight:
                continue  # its reply flushes again
            self.dirty.discard(state)
            self.urgent.discard(state)
            report = state.report()
            if report is None:
                if state.fleet:
                    continue
                report = ([0, 0, 0, 0, 0], [])  # deciding alone: ask for the fleet's state anyway
            counts, endpoints = report
            self.in_flight.add(name)
            self._reports.submit(  # type: ignore[union-attr]
                [k.encode() for k in (family.version, family.circuit, family.window, family.endpoints, family.ejected)],
                [channel, name, self.who, _breaker_args(state), *counts, _passive_args(state), *endpoints],
                lambda reply, s=state: self._reported(s, reply),
                # Past the budget this worker decides alone, and the call goes on: its late answer
                # still counts these outcomes for the fleet (none lost, none sent twice).
                lambda s=state: self._overdue(s),
            )
        self._count()

    def _reported(self, state: BackendState, reply: Any) -> None:
        self.in_flight.discard(state.name)
        if isinstance(reply, RedisUnavailable):
            state.fleet = False  # this worker's own rules, until a report is answered again
            state.quiet = False
            if self._revisit is None:
                self._revisit = self.loop.call_later(REVISIT, self._ask_again)
        else:
            events = orjson.loads(reply)
            now = monotonic()
            # The events this report made, then the circuit as it now is. A worker that decided
            # alone meanwhile (fleet False) takes the fleet's state even at an equal version.
            for event in events[1:]:
                state.apply(event, now)
            state.apply(events[0], now)
            state.fleet = True
        if state in self.urgent and self._soon is None:
            self._soon = self.loop.call_soon(self._flush)  # a failure came while this report was out
        elif state in self.dirty and self._timer is None and self._soon is None:
            self._timer = self.loop.call_later(REPORT_INTERVAL, self._flush)
        self._count()

    def _overdue(self, state: BackendState) -> None:
        state.fleet = False
        state.quiet = False

    def _ask_again(self) -> None:
        """Backends decided alone (Redis did not answer) ask for the fleet's state again: with no
        traffic of their own (an open circuit admits none) they would otherwise never learn it."""
        self._revisit = None
        for state in self.states.values():
            if not state.fleet:
                self.sync(state, True)

    def _granted(self, state: BackendState, reply: Any) -> None:
        self.asking.discard(state.name)
        if isinstance(reply, RedisUnavailable):
            state.fleet = False
            state.granted(False)
            return
        answer = orjson.loads(reply)
        state.fleet = True
        state.apply(answer["circuit"], monotonic())
        state.granted(bool(answer["granted"]))

    def _count(self) -> None:
        """Transitions and ejections decided here, into the worker's counters."""
        for state in self.states.values():
            for to, _by in state.transitions:
                self.metrics.inc("gw_circuit_transitions_total", backend=state.name, to=to)
            state.transitions.clear()
            if state.ejections:
                self.metrics.inc("gw_endpoint_ejections_total", state.ejections, backend=state.name)
                state.ejections = 0

    def status(self) -> list[dict[str, Any]]:
        now = monotonic()
        return [state.status(now) for state in self.states.values()]

    def gauges(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        """gw_circuit_state and gw_endpoint_health as this worker sees them; gw_endpoint_in_flight
        of its LeastRequest backends (the supervisor sums that one over its workers)."""
        now = monotonic()
        out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        for state in self.states.values():
            out[("gw_circuit_state", (("backend", state.name),))] = CIRCUIT_GAUGE[state.circuit]
            least = state.picker is not None and state.picker.least is not None
            counts = state.in_flight()
            for e in state.endpoints.values():
                key = ("gw_endpoint_health", (("backend", state.name), ("endpoint", e.label)))
                out[key] = 1.0 if e.usable(now) else 0.0
                if least:
                    out[("gw_endpoint_in_flight", key[1])] = float(counts.get(e.label, 0))
        return out

    def stop(self) -> None:
        for handle in (self._soon, self._timer, self._revisit):
            if handle is not None:
                handle.cancel()


def _backends(config: CompiledConfig) -> Iterable[Backend]:
    for rule in config.rules:
        for ref in rule.backend_refs:
            if ref.backend is not None:
                yield ref.backend
            for mirror in ref.mirrors:
                yield mirror.backend
        for mirror in rule.mirrors:
            yield mirror.backend


def _breaker_args(state: BackendState) -> str:
    cb = state.breaker
    if cb is None:
        return ""
    return ",".join(
        str(x)
        for x in (
            int(cb.window * 1000),
            10,
            cb.minimum_requests,
            cb.failure_ratio,
            cb.slow_call_ratio if cb.slow_call_duration > 0 else 0,
            int(cb.open_duration * 1000),
            cb.half_open_requests,
        )
    )


def _passive_args(state: BackendState) -> str:
    p = state.passive
    if p is None:
        return ""
    return ",".join(
        str(x)
        for x in (
            p.consecutive_5xx_errors,
            p.consecutive_gateway_errors,
            p.consecutive_local_origin_failures,
            int(p.base_ejection_time * 1000),
            p.max_ejection_percent,
            int(p.interval * 1000),
            len(state.endpoints),
        )
    )
