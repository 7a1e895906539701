"""One worker's run-time state of a backend with a BackendTrafficPolicy: circuit, endpoint health,
concurrency, retry budget.

The fleet decides (gw/state/lua/backend_report.lua, backend_trial.lua): this worker reports the
outcomes of its calls (gw.policies.backend_sync sends them) and applies the fleet's events, each
item (the circuit, an endpoint's ejection, an endpoint's probe health) in the order of its event
number. While Redis cannot answer, the same rules run here on this worker's own outcomes (`fleet`
False), and the fleet's state replaces them when it answers again.

Nothing here does I/O or awaits: the proxy calls `enter`, `pick`, `responded`, `failed` and
`leave` from its protocol callbacks, and `sync` is told when there is something to report.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from time import monotonic
from typing import Any

from gw.balancing.kinds import LEAST_REQUEST, ROUND_ROBIN
from gw.balancing.picker import Picker
from gw.errors import BackendOverflow, CircuitOpen, ProxyError

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half-open"
CIRCUIT_GAUGE = {CLOSED: 0.0, OPEN: 1.0, HALF_OPEN: 2.0}
BUCKETS = 10  # a window is counted in this many buckets
ASK_AGAIN = 0.1  # seconds a worker refused a trial call waits before asking the fleet again
GATEWAY_ERRORS = (502, 503, 504)
C5, CG, CL = 1, 2, 4  # the consecutive counts: 5xx, gateway errors, local-origin failures
LOCAL = "this worker (Redis unavailable)"
# Transitions are logged by whoever decides them (the worker whose report made them, or a worker
# deciding alone without Redis): one line per transition for the whole fleet.
LOG = logging.getLogger("gw.backends")


class Window:
    """Calls, failures and slow calls over the last `length` seconds, in BUCKETS buckets."""

    __slots__ = ("buckets", "size")

    def __init__(self, length: float) -> None:
        self.size = max(length / BUCKETS, 0.001)
        self.buckets: dict[int, list[int]] = {}

    def add(self, now: float, calls: int, failures: int, slow: int) -> None:
        index = int(now / self.size)
        bucket = self.buckets.get(index)
        if bucket is None:
            for old in [i for i in self.buckets if i <= index - BUCKETS]:
                del self.buckets[old]
            bucket = self.buckets[index] = [0, 0, 0]
        bucket[0] += calls
        bucket[1] += failures
        bucket[2] += slow

    def totals(self, now: float) -> tuple[int, int, int]:
        first = int(now / self.size) - BUCKETS
        calls = failures = slow = 0
        for index, (c, f, s) in self.buckets.items():
            if index > first:
                calls, failures, slow = calls + c, failures + f, slow + s
        return calls, failures, slow

    def clear(self) -> None:
        self.buckets.clear()


class EndpointState:
    """One endpoint as this worker knows it: consecutive counts (reported and local), ejection, probes."""

    __slots__ = (
        "added",
        "counts",
        "eject_by",
        "eject_v",
        "eject_why",
        "ejected_at",
        "endpoint",
        "failed_at",
        "fresh",
        "label",
        "local_times",
        "local_until",
        "mask",
        "probe_at",
        "probe_by",
        "probe_ok",
        "probe_v",
        "probe_why",
        "ready_at",
        "succeeded_at",
        "until",
    )

    def __init__(self, endpoint: Any) -> None:
        self.endpoint = endpoint
        self.label: str = endpoint.label
        self.mask = 0  # to report: counts that restarted (a success) since the last report
        self.fresh = False  # a success is the last outcome since the last report: another changes nothing
        # Monotonic, per count: its last restart and its last failure, whose ages go with a report.
        self.succeeded_at = [0.0, 0.0, 0.0]
        self.failed_at = [0.0, 0.0, 0.0]
        self.added = [0, 0, 0]  # to report: failures after that
        self.counts = [0, 0, 0]  # this worker's own consecutive counts (the rules without Redis)
        self.until = 0.0  # ejected until (monotonic); 0 = not ejected
        self.eject_v = 0
        self.eject_why = ""
        self.eject_by = ""
        self.ejected_at = 0.0  # unix time, for /status
        self.local_times = 0
        self.local_until = 0.0
        self.probe_ok = True
        self.probe_v = 0
        self.probe_why = ""
        self.probe_by = ""
        self.probe_at = 0.0
        self.ready_at = monotonic()  # joined the backend, or its probes passed again: slow start's clock

    def outcome(self, failed: int, succeeded: int) -> None:
        """Failed counts go up by one; succeeded ones restart (both reported and local).

        When each happened goes with the report: a success another worker reports late must not
        restart counts that failures seen after it have raised (the script compares the times)."""
        counts, added = self.counts, self.added
        now = monotonic()
        for i, bit in enumerate((C5, CG, CL)):
            if succeeded & bit:
                counts[i] = added[i] = 0
                self.mask |= bit
                self.succeeded_at[i] = now
            elif failed & bit:
                counts[i] += 1
                added[i] += 1
                self.failed_at[i] = now
        self.fresh = not failed and self.mask == C5 | CG | CL and not any(added)

    def usable(self, now: float) -> bool:
        return self.probe_ok and self.until <= now


class BackendState:
    """A backend with a policy, in one worker (see the module docstring)."""

    # Slots: more attributes than an instance dict shares keys for (30 in CPython 3.11); read per request.
    __slots__ = (
        "active",
        "ask_after",
        "asking",
        "backend",
        "breaker",
        "budget",
        "calls",
        "circuit",
        "circuit_at",
        "circuit_by",
        "circuit_until",
        "circuit_v",
        "circuit_why",
        "dirty",
        "ejected",
        "ejections",
        "endpoints",
        "failures",
        "fleet",
        "gate",
        "max_connections",
        "max_parallel",
        "max_pending",
        "max_retrying",
        "min_retries_window",
        "name",
        "panic",
        "parallel",
        "passive",
        "pending",
        "permits",
        "picker",
        "quiet",
        "requests_window",
        "resilience",
        "retries_window",
        "retrying",
        "slow",
        "slow_after",
        "sync",
        "transitions",
        "trial_fail",
        "trial_ok",
        "trials",
        "who",
        "window",
    )

    def __init__(
        self, backend: Any, resilience: Any, workers: int, who: str, sync: Callable[[Any, bool], None]
    ) -> None:
        self.name: str = backend.name
        self.who = who
        self.sync = sync  # sync(state, urgent): there is something to report
        self.fleet = True  # the fleet's state is live (its last report or event arrived)
        self.circuit = CLOSED
        self.circuit_v = 0
        self.circuit_until = 0.0  # monotonic: an open circuit may ask for trials from then on
        self.circuit_why = ""
        self.circuit_by = ""
        self.circuit_at = time.time()
        self.dirty = False  # something to report since the last report
        # A success needs only `calls += 1` (the proxy does it inline): the circuit is closed, no
        # call can be slow, the fleet decides, every endpoint's counts restarted since the last report.
        self.quiet = False
        # The proxy must call `enter` (not just count `parallel`): the circuit is not closed, or a
        # threshold or retry budget counts requests.
        self.gate = False
        # Labels of endpoints ejected or failing probes, until a pick finds them usable again: as
        # EndpointHealth.ejected, empty in the common case so Backend.pick pays one test.
        self.ejected: set[str] = set()
        self.permits = 0  # trial calls the fleet handed this worker
        self.trials = 0  # trial calls in flight
        self.asking = False  # a trial request is out
        self.ask_after = 0.0  # monotonic: no trial request before then (the last was refused)
        self.parallel = self.pending = self.retrying = 0
        self.calls = self.failures = self.slow = self.trial_ok = self.trial_fail = 0  # to report
        self.transitions: list[tuple[str, str]] = []  # (state entered, who) decided here, for metrics
        self.ejections = 0  # ejections decided here
        self.endpoints: dict[str, EndpointState] = {}
        self.picker: Picker | None = None  # the loadBalancer's, when not plain round robin
        self.bind(backend, resilience, workers)

    def bind(self, backend: Any, resilience: Any, workers: int) -> None:
        """(Re)bind to a snapshot's backend: state survives a reload; settings are the new ones."""
        self.backend = backend
        self.resilience = resilience
        cb = resilience.circuit_breaker
        self.breaker = cb if cb is not None and cb.breaks else None
        self.passive = resilience.passive
        self.active = resilience.active
        self.panic = resilience.panic_threshold
        # Envoy counts thresholds per process; a replica is `workers` processes sharing them.
        share = max(1, workers)
        self.max_parallel = math.ceil(cb.max_parallel_requests / share) if cb and cb.max_parallel_requests else 0
        self.max_pending = math.ceil(cb.max_pending_requests / share) if cb and cb.max_pending_requests else 0
        self.max_connections = math.ceil(cb.max_connections / share) if cb and cb.max_connections else 0
        self.max_retrying = math.ceil(cb.max_parallel_retries / share) if cb and cb.max_parallel_retries else 0
        self.slow_after = cb.slow_call_duration if cb is not None and cb.slow_call_ratio > 0 else 0.0
        self.window = Window(self.breaker.window if self.breaker else 10.0)
        budget = resilience.retry_budget
        self.budget = budget
        self.requests_window = Window(budget.interval) if budget else None
        self.retries_window = Window(budget.interval) if budget else None
        self.min_retries_window = Window(budget.min_interval) if budget else None
        self._gate()
        known = self.endpoints
        self.endpoints = {e.label: known.get(e.label) or EndpointState(e) for e in backend.endpoints}
        for state in self.endpoints.values():
            state.endpoint = next(e for e in backend.endpoints if e.label == state.label)
        lb = resilience.load_balancer
        # Built here, not at compile: slow start's clocks and LeastRequest's in-flight counts are
        # this worker's and outlive a reload (the previous picker hands them on).
        self.picker = (
            Picker(lb, backend.endpoints, self.usable, self._ready_at, self.picker, self.ejected)
            if lb is not None and (lb.type != ROUND_ROBIN or lb.slow_start_window)
            else None
        )
        backend.use_state(self)

    def release(self, exchange: Any) -> None:
        """The exchange that LeastRequest counted in flight is over (even if a reload since took
        LeastRequest away: then nothing counts it any more)."""
        picker = self.picker
        if picker is not None:
            picker.release(exchange)
        exchange.counted = None

    def _ready_at(self, label: str) -> float:
        state = self.endpoints.get(label)
        return state.ready_at if state is not None else 0.0

    # -- the request path ---------------------------------------------------------------------

    def _gate(self) -> None:
        self.gate = self.circuit is not CLOSED or bool(self.max_parallel) or self.budget is not None

    def enter(self, now: float) -> ProxyError | None:
        """An exchange wants this backend: None (go on; `leave` when it ends) or why not.

        The proxy calls it only when `gate` is set; otherwise it counts `parallel` itself."""
        if self.circuit is not CLOSED:
            refusal = self._circuit_refusal(now)
            if refusal is not None:
                return refusal
        if self.max_parallel and self.parallel >= self.max_parallel:
            return BackendOverflow(f"backend {self.name} has {self.parallel} requests in flight (maxParallelRequests)")
        self.parallel += 1
        if self.requests_window is not None:
            self.requests_window.add(now, 1, 0, 0)
        return None

    def leave(self) -> None:
        """An exchange that entered and retried is over (the proxy takes one off `parallel` itself)."""
        self.retrying -= 1

    def may_connect(self, connections: int) -> ProxyError | None:
        """A new upstream connection is about to be opened (no idle one): within the thresholds?"""
        if self.max_connections and connections >= self.max_connections:
            return BackendOverflow(f"backend {self.name} has {connections} connections (maxConnections)")
        if self.max_pending and self.pending >= self.max_pending:
            return BackendOverflow(f"backend {self.name} has {self.pending} requests waiting for a connection")
        self.pending += 1
        return None

    def connected(self) -> None:
        self.pending -= 1

    def may_retry(self, now: float, first: bool) -> bool:
        """The retry budget and maxParallelRetries allow one more retry (`first`: of this exchange)."""
        if first and self.max_retrying and self.retrying >= self.max_retrying:
            return False
        budget = self.budget
        if budget is not None:
            assert self.retries_window is not None and self.requests_window is not None
            assert self.min_retries_window is not None
            retries = self.retries_window.totals(now)[0]
            requests = self.requests_window.totals(now)[0]
            if retries + 1 > requests * budget.percent / 100 and (
                self.min_retries_window.totals(now)[0] >= budget.min_count
            ):
                return False
            self.retries_window.add(now, 1, 0, 0)
            self.min_retries_window.add(now, 1, 0, 0)
        if first:
            self.retrying += 1
        return True

    # -- health, as Backend.pick asks it (in place of gw.balancing.health.EndpointHealth) -----------

    def usable(self, endpoint: Any, now: float) -> bool:
        """Whether to send to `endpoint`: its probes pass and it is not ejected (by the fleet's
        outlier detection, or here for a refused connection); below panicThreshold, every one is.

        Backend.pick asks only while `ejected` (the endpoints not known usable) is not empty."""
        state = self.endpoints.get(endpoint.label)
        if state is None or state.usable(now):
            if state is not None and state.probe_ok:
                self.ejected.discard(state.label)  # its ejection is over
            return True
        states = self.endpoints.values()
        healthy = sum(1 for s in states if s.usable(now))
        return healthy * 100 < self.panic * len(states)  # panic: health is ignored rather than 503 for all

    def eject(self, endpoint: Any, until: float) -> None:
        """The proxy could not connect to `endpoint` (GW_ENDPOINT_EJECT_TIME): skip it until then."""
        state = self.endpoints.get(endpoint.label)
        if state is not None and state.until < until:
            state.until = until
            self.ejected.add(state.label)

    def responded(self, endpoint: Any, status: int, started: float) -> None:
        """The endpoint answered with `status` to an attempt made at `started` (monotonic).

        While `quiet`, the proxy counts a success itself (`calls`): nothing else would change."""
        now = monotonic()
        elapsed = now - started
        if status < 500 and self.circuit is CLOSED and not (self.slow_after and elapsed >= self.slow_after):
            # The usual answer: a call for the window, the endpoint's counts restarted.
            self.calls += 1
            if not self.fleet:
                self.window.add(now, 1, 0, 0)
            if self.passive is not None:
                state = self.endpoints.get(endpoint.label)
                if state is not None and not state.fresh:
                    state.outcome(0, C5 | CG)  # (the local-origin count restarts when the body is whole)
            if not self.dirty:
                self.dirty = True
                self.sync(self, False)
            self._settle()
            return
        self.quiet = False
        failed = status >= 500
        state = self.endpoints.get(endpoint.label)
        if state is not None and self.passive is not None:
            if not failed:
                state.outcome(0, C5 | CG)
            elif status in GATEWAY_ERRORS:
                state.outcome(C5 | CG, 0)
            else:
                state.outcome(C5, CG | CL)
        slow = 1 if self.slow_after and elapsed >= self.slow_after else 0
        trial = self._count(now, failed, slow)
        if failed and state is not None:
            self._local_eject(state, now)
        self.dirty = True
        self.sync(self, failed or trial)

    def completed(self, endpoint: Any) -> None:
        """A response arrived whole: the endpoint's consecutive local-origin failures restart (an
        answer whose body is then cut off counts as one, after its head restarted the 5xx count)."""
        state = self.endpoints.get(endpoint.label) if endpoint is not None else None
        if state is not None and self.passive is not None and not state.fresh:
            state.outcome(0, CL)
            if not self.dirty:
                self.dirty = True
                self.sync(self, False)
        self._settle()

    def _settle(self) -> None:
        """Until the next report, may the next successes change nothing but `calls`? (Endpoints
        taken out of picks get none: they need not be fresh.)"""
        self.quiet = (
            self.fleet
            and not self.slow_after
            and (self.passive is None or all(s.fresh or s.label in self.ejected for s in self.endpoints.values()))
        )

    def failed(self, endpoint: Any, now: float) -> None:
        """A local-origin failure: the connection was refused, reset, or timed out."""
        self.quiet = False
        state = self.endpoints.get(endpoint.label)
        if state is not None and self.passive is not None:
            state.outcome(C5 | CG | CL, 0)
        self._count(now, True, 0)
        if state is not None:
            self._local_eject(state, now)
        self.sync(self, True)

    def lost_mid_body(self, endpoint: Any, now: float) -> None:
        """An answer counted as a success turned into a failure (reset mid-body): one more failure."""
        self.quiet = False
        state = self.endpoints.get(endpoint.label)
        if state is not None and self.passive is not None:
            state.outcome(C5 | CG | CL, 0)
        if self.breaker is not None and self.circuit is CLOSED:
            self.failures += 1  # (its call was counted when its head arrived)
            if not self.fleet:
                self.window.add(now, 0, 1, 0)
        if state is not None:
            self._local_eject(state, now)
        self.sync(self, True)

    def _count(self, now: float, failed: bool, slow: int) -> bool:
        """Count a call for the circuit; True when it was a trial call (its outcome is urgent)."""
        if self.breaker is None:
            return False
        if self.trials and self.circuit is HALF_OPEN:
            self.trials -= 1
            if failed:
                self.trial_fail += 1
                if not self.fleet:
                    self._local_transition(OPEN, "a trial call failed", now)
            else:
                self.trial_ok += 1
                if not self.fleet and self.trial_ok >= self.breaker.half_open_requests:
                    self._local_transition(CLOSED, f"{self.trial_ok} trial calls succeeded", now)
            return True
        if self.circuit is not CLOSED:
            return False
        self.calls += 1
        if failed:
            self.failures += 1
        self.slow += slow
        if not self.fleet:
            # (While the fleet decides, its window is the one that counts: a fallback starts afresh.)
            self.window.add(now, 1, 1 if failed else 0, slow)
            self._local_breaker(now)
        return False

    # -- the circuit ----------------------------------------------------------------------------

    def _circuit_refusal(self, now: float) -> ProxyError | None:
        if self.circuit is HALF_OPEN:
            if self.permits > 0:
                self.permits -= 1
                self.trials += 1
                return None
            if self.fleet and not self.asking and now >= self.ask_after:
                self.asking = True  # the fleet may have trial calls left
                self.sync(self, True)
            return CircuitOpen(f"backend {self.name} is half-open and its trial calls are taken", 1)
        if now < self.circuit_until:
            left = math.ceil(self.circuit_until - now)
            return CircuitOpen(f"backend {self.name}'s circuit is open: {self.circuit_why}", left)
        if not self.fleet:
            self._local_transition(HALF_OPEN, "open duration over", now)
            self.permits = self.breaker.half_open_requests - 1 if self.breaker else 0
            self.trials += 1
            return None
        if not self.asking:
            self.asking = True
            self.sync(self, True)  # the sync asks the fleet for a trial call (backend_trial.lua)
        return CircuitOpen(f"backend {self.name}'s circuit is open and asks the fleet for a trial call", 1)

    def _local_breaker(self, now: float) -> None:
        cb = self.breaker
        calls, failures, slow = self.window.totals(now)
        if calls < cb.minimum_requests:
            return
        if cb.failure_ratio > 0 and failures / calls >= cb.failure_ratio:
            self._local_transition(OPEN, f"failure ratio {failures / calls:.2f} over {calls} calls", now)
        elif cb.slow_call_ratio > 0 and slow / calls >= cb.slow_call_ratio:
            self._local_transition(OPEN, f"slow call ratio {slow / calls:.2f} over {calls} calls", now)

    def _local_transition(self, to: str, why: str, now: float) -> None:
        """Without Redis: this worker decides for itself (its version stays: the fleet's next one wins)."""
        self._enter(to, why, LOCAL, now + (self.breaker.open_duration if to is OPEN and self.breaker else 0.0))
        if to is not HALF_OPEN:
            self.permits = self.trials = self.trial_ok = self.trial_fail = 0

    def _enter(self, to: str, why: str, by: str, until: float) -> None:
        self.quiet = False
        if to != self.circuit:
            self.circuit_at = time.time()
            if by in (LOCAL, self.who):
                log_transition(self.name, "circuit", to, why, by)
                self.transitions.append((to, by))
        self.circuit = to
        self.circuit_why = why
        self.circuit_by = by
        self.circuit_until = until
        if to is CLOSED:
            self.window.clear()
        self._gate()

    # -- outlier ejection without Redis -----------------------------------------------------------

    def _local_eject(self, state: EndpointState, now: float) -> None:
        passive = self.passive
        if self.fleet or passive is None or state.until > now:
            return
        limits = (
            passive.consecutive_5xx_errors,
            passive.consecutive_gateway_errors,
            passive.consecutive_local_origin_failures,
        )  # (checked local-origin first: the most specific reason)
        names = ("consecutive 5xx responses", "consecutive gateway errors", "consecutive local-origin failures")
        hit = next((i for i in (2, 1, 0) if limits[i] and state.counts[i] >= limits[i]), None)
        if hit is None:
            return
        ejected = sum(1 for s in self.endpoints.values() if s.until > now)
        if passive.max_ejection_percent <= 0 or ejected >= max(
            1, len(self.endpoints) * passive.max_ejection_percent // 100
        ):
            return
        if state.local_until:
            state.local_times = max(0, state.local_times - int((now - state.local_until) / passive.interval))
        state.local_times += 1
        duration = min(passive.base_ejection_time * state.local_times, max(passive.base_ejection_time, 300.0))
        state.until = state.local_until = now + duration
        self.ejected.add(state.label)
        state.eject_why = f"{state.counts[hit]} {names[hit]}"
        state.eject_by = LOCAL
        state.ejected_at = time.time()
        state.counts = [0, 0, 0]
        self.ejections += 1
        log_transition(self.name, state.label, "ejected", state.eject_why, LOCAL)

    # -- the fleet's events ---------------------------------------------------------------------------

    def apply(self, event: dict[str, Any], now: float) -> bool:
        """One fleet event (gw.state.backend_events) for this backend; stale ones are ignored.
        Returns whether it changed what this worker does (a state entered, an ejection, a probe)."""
        kind, v = event["k"], event["v"]
        left = max(0.0, (event.get("until", 0) - event.get("now", 0)) / 1000.0)
        if kind == "circuit":
            if v < self.circuit_v or (v == self.circuit_v and self.fleet):
                return False
            was = self.circuit
            self.circuit_v = v
            to = {"open": OPEN, "half-open": HALF_OPEN}.get(event.get("s", ""), CLOSED)
            if to != was or not self.fleet or self.circuit_by == LOCAL:
                self._enter(to, event.get("why", ""), event.get("by", ""), now + left if to is OPEN else 0.0)
            if to is not HALF_OPEN:
                self.permits = self.trials = self.trial_ok = self.trial_fail = 0
            return to != was
        state = self.endpoints.get(event.get("e", ""))
        if state is None:
            return False
        if kind == "eject":
            if v <= state.eject_v:
                return False
            state.eject_v = v
            ejected = event.get("s") == "ejected" and left > 0
            state.until = now + left if ejected else 0.0
            if ejected:
                self.ejected.add(state.label)
            state.eject_why = event.get("why", "")
            state.eject_by = event.get("by", "")
            state.ejected_at = time.time() - max(
                0.0, (event.get("now", 0) - event.get("since", event.get("now", 0))) / 1000
            )
            if ejected and state.eject_by == self.who:
                self.ejections += 1
                log_transition(self.name, state.label, "ejected", state.eject_why, state.eject_by)
            return ejected
        elif kind == "probe":
            if v <= state.probe_v:
                return False
            state.probe_v = v
            ok = event.get("s") == "healthy"
            if ok and not state.probe_ok:
                state.ready_at = monotonic()  # back from failing probes: slow start again (Envoy's rule)
                if self.picker is not None and self.picker.window:
                    self.picker.ramp(state.ready_at)
            state.probe_ok = ok
            if not ok:
                self.ejected.add(state.label)
            state.probe_why = event.get("why", "")
            state.probe_by = event.get("by", "")
            state.probe_at = time.time()
            return True
        return False

    def granted(self, permit: bool) -> None:
        """The fleet's answer to a trial request."""
        self.asking = False
        if permit:
            self.permits += 1
        else:
            # Every trial call is out; their outcomes will close or reopen the circuit. Ask again
            # after a while (a holder that died has its trial handed out again by the script).
            self.ask_after = monotonic() + ASK_AGAIN

    def report(self) -> tuple[list[Any], list[Any]] | None:
        """What to send to backend_report.lua since the last report (None: nothing), and reset it.

        Returns (breaker args: calls, failures, slow, trial successes, trial failures; per-endpoint
        args: endpoint, mask, 5xx, gateway and local-origin failures, then per count the ms since it
        last restarted and since its last failure)."""
        counts = [self.calls, self.failures, self.slow, self.trial_ok, self.trial_fail]
        self.calls = self.failures = self.slow = self.trial_ok = self.trial_fail = 0
        self.dirty = self.quiet = False
        endpoints: list[Any] = []
        now = monotonic()
        for state in self.endpoints.values():
            if state.mask or any(state.added):
                ages = [int((now - at) * 1000) for at in (*state.succeeded_at, *state.failed_at)]
                endpoints += [state.label, state.mask, *state.added, *ages]
                state.mask = 0
                state.added = [0, 0, 0]
                state.fresh = False
        if not any(counts) and not endpoints:
            return None
        return counts, endpoints

    # -- what /status and /metrics show ------------------------------------------------------------

    def in_flight(self) -> dict[str, int]:
        """Requests in flight per endpoint, as LeastRequest counts them ({} for other balancers)."""
        least = self.picker.least if self.picker is not None else None
        return dict(least.in_flight) if least is not None else {}

    def status(self, now: float) -> dict[str, Any]:
        lb = self.resilience.load_balancer
        least = self.in_flight() if lb is not None and lb.type == LEAST_REQUEST else None
        return {
            "backend": self.name,
            "policies": list(self.resilience.sources),
            "loadBalancer": lb.status() if lb is not None else {"type": ROUND_ROBIN},
            "circuit": {
                "state": self.circuit,
                "reason": self.circuit_why,
                "by": self.circuit_by,
                "since": _iso(self.circuit_at),
                "retry_after_seconds": max(0, math.ceil(self.circuit_until - now)) if self.circuit is OPEN else None,
                "fleet": self.fleet,
            },
            "endpoints": [
                {
                    "endpoint": s.label,
                    "healthy": s.usable(now),
                    "ejected": s.until > now,
                    "ejection": {
                        "reason": s.eject_why,
                        "by": s.eject_by,
                        "since": _iso(s.ejected_at),
                        "seconds_left": round(s.until - now, 3),
                    }
                    if s.until > now
                    else None,
                    "probe": {"healthy": s.probe_ok, "reason": s.probe_why, "by": s.probe_by, "since": _iso(s.probe_at)}
                    if s.probe_v
                    else None,
                    **({"in_flight": least.get(s.label, 0)} if least is not None else {}),
                }
                for s in self.endpoints.values()
            ],
            "in_flight": self.parallel,
        }


def _iso(t: float) -> str | None:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t)) if t else None


def log_transition(backend: str, what: str, to: str, why: str, by: str) -> None:
    """One line per transition, naming backend, endpoint (or circuit), reason and who decided."""
    LOG.warning("backend %s: %s %s (%s; decided by %s)", backend, what, to, why, by)
