"""The endpoint pick of a backend whose BackendTrafficPolicy names a loadBalancer (Backend.pick's
other half): the balancer, slow start, the hash key of an exchange, health, in-flight counts.

Built by the worker's BackendState when it binds to a snapshot, so what must outlive a reload does:
when each endpoint became ready (slow start) and what is in flight (LeastRequest) are keyed by
"address:port" and handed from one picker to the next. A Maglev table is rebuilt only when the
endpoints, their weights or the table size changed.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from typing import Any

from gw.balancing.kinds import CONSISTENT_HASH, COOKIE, HEADER, LEAST_REQUEST, QUERY_PARAMS, RANDOM, SOURCE_IP
from gw.balancing.least_request import LeastRequest
from gw.balancing.maglev import Maglev
from gw.balancing.slow_start import LiveRoundRobin, ramped
from gw.balancing.swrr import SmoothWeightedRoundRobin
from gw.balancing.weighted_random import WeightedRandom

ASK_ALWAYS = frozenset({""})  # never empty: `usable` is asked at every pick


class Picker:
    """Picks an endpoint for an exchange by the policy's loadBalancer (gw.config.backend_policy.
    LoadBalancer; see the module docstring).

    `usable(endpoint, now)` is the backend's health; `ejected` the labels of the endpoints it does
    not know usable (its set, kept up to date by it): while that is empty, `usable` is not asked,
    as Backend.pick does not ask (None: always ask). `ready_at(label)` when that endpoint became
    ready (monotonic), for slow start."""

    def __init__(
        self,
        lb: Any,
        endpoints: Sequence[Any],
        usable: Callable[[Any, float], bool],
        ready_at: Callable[[str], float],
        previous: Picker | None = None,
        ejected: Collection[str] | None = None,
    ) -> None:
        self.lb = lb
        self.endpoints = tuple(endpoints)
        self.usable = usable
        self.ejected = ejected if ejected is not None else ASK_ALWAYS
        self.ready_at = ready_at
        self.labels = [e.label for e in self.endpoints]
        self.weights = [e.weight for e in self.endpoints]
        self.window = lb.slow_start_window
        self.ramp_until = 0.0  # monotonic: until then some endpoint's weight is still ramping up
        self.least: LeastRequest[Any] | None = None
        self.hashing: Any = lb.consistent_hash if lb.type == CONSISTENT_HASH else None
        self.maglev: Maglev[Any] | None = None
        self.key: Callable[[Any], bytes | None] = _no_key
        self.balancer: Any
        if lb.type == LEAST_REQUEST:
            in_flight = previous.least.in_flight if previous is not None and previous.least is not None else None
            self.balancer = self.least = LeastRequest(self.endpoints, self.labels, self.weights, in_flight)
        elif lb.type == RANDOM:
            self.balancer = WeightedRandom(self.endpoints, self.weights)
        elif self.hashing is not None or not self.window:
            # ConsistentHash balances requests without a key round robin, as the default does.
            self.balancer = SmoothWeightedRoundRobin(self.endpoints, self.weights)
        else:
            self.balancer = LiveRoundRobin(self.endpoints, self.weights)
        if self.hashing is not None:
            self.key = _key_reader(self.hashing)
            before = previous.maglev if previous is not None else None
            self.maglev = Maglev(self.endpoints, self.labels, self.weights, self.hashing.table_size, before)
        if self.window:
            self.ramp_until = float("inf")  # the first pick ramps the weights (by the exchange's clock)

    def ramp(self, now: float) -> None:
        """Slow start: the weights as they are at `now`; ramping stops once every window is over."""
        window = self.window
        ready = [self.ready_at(label) for label in self.labels]
        self.ramp_until = max((at + window for at in ready), default=0.0)
        if self.ramp_until <= now:
            self.ramp_until = 0.0
        self.balancer.reweight([ramped(w, now - at, window) for w, at in zip(self.weights, ready, strict=True)])

    def pick(self, exchange: Any) -> Any | None:
        now = exchange.started
        if self.ramp_until:
            self.ramp(now)
        maglev = self.maglev
        if maglev is not None:
            key = self.key(exchange)
            if key is not None and maglev.table:
                slot = maglev.slot(key)
                endpoint = maglev.table[slot]
                if not self.ejected or self.usable(endpoint, now):
                    return self._hold(exchange, endpoint)
                # The next slots hold the endpoints Maglev spreads this key over: every replica that
                # sees the same endpoint unusable moves the key to the same one.
                for step in range(1, min(len(maglev), 8 * len(self.endpoints))):
                    other = maglev.at(slot + step)
                    if other is not endpoint and self.usable(other, now):
                        return self._hold(exchange, other)
                return self._hold(exchange, endpoint)  # panic: none usable, try it anyway
        balancer = self.balancer
        first = balancer.next()
        if first is None or not self.ejected or self.usable(first, now):
            return self._hold(exchange, first)
        for _ in range(max(len(balancer), len(self.endpoints)) - 1):
            endpoint = balancer.next()
            if endpoint is not None and self.usable(endpoint, now):
                return self._hold(exchange, endpoint)
        return self._hold(exchange, first)

    def _hold(self, exchange: Any, endpoint: Any | None) -> Any | None:
        least = self.least
        if least is not None:
            held = exchange.counted
            if held is not None:
                least.release(held)  # a second pick for the exchange (another endpoint, a retry)
            exchange.counted = endpoint.label if endpoint is not None else None
            if endpoint is not None:
                least.acquire(endpoint.label)
        return endpoint

    def release(self, exchange: Any) -> None:
        """The exchange is over: its endpoint's request is no longer in flight (LeastRequest)."""
        label = exchange.counted
        if label is not None and self.least is not None:
            exchange.counted = None
            self.least.release(label)


def _no_key(exchange: Any) -> bytes | None:
    return None


def _key_reader(hashing: Any) -> Callable[[Any], bytes | None]:
    """What of an exchange is hashed; None when the request lacks it (then it is balanced round robin)."""
    if hashing.type == SOURCE_IP:
        return lambda exchange: exchange.client_host or None
    if hashing.type == HEADER:
        name = hashing.name.encode()
        return lambda exchange: exchange.field(name)
    # (The names encoded once here, not per request.)
    if hashing.type == COOKIE:
        cookie = hashing.name.encode()
        return lambda exchange: cookie_value(exchange.fields(), cookie)
    if hashing.type == QUERY_PARAMS:
        params = tuple(p.encode() for p in hashing.params)
        return lambda exchange: query_values(exchange.query, params)
    raise ValueError(f"unknown consistent hash type {hashing.type!r}")


def cookie_value(fields: Sequence[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    """The value of cookie `name` in the request's Cookie fields (RFC 6265 §5.4: `a=b; c=d`)."""
    for field, value in fields:
        if field.lower() != b"cookie":
            continue
        for pair in value.split(b";"):
            key, eq, val = pair.strip().partition(b"=")
            if eq and key == name:
                return val
    return None


def query_values(query: bytes, names: Sequence[bytes]) -> bytes | None:
    """The named query parameters' first values, joined in the configured order; None if none is there."""
    found: dict[bytes, bytes] = {}
    for pair in query.split(b"&"):
        key, _, val = pair.partition(b"=")
        if key in names and key not in found:
            found[key] = val
    if not found:
        return None
    return b"\x00".join(b"%b=%b" % (n, found[n]) for n in names if n in found)
