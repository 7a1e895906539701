"""Per-route request counters and latency histograms, cheap to record, rendered for Prometheus.

prometheus_client's per-call label lookup and locking cost several µs per request; the data
plane instead bumps plain integers in a preallocated RouteStats and renders the exposition text
only when scraped (docs/architecture.md, performance rules: every hot-path step must earn its microseconds).
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Collection, Iterable
from typing import Any

import orjson

from gw.observe.families import COUNTER, FAMILIES, GAUGE, HISTOGRAM

Labels = tuple[tuple[str, str], ...]
# Rendered from RouteStats and BackendStats (per route, per backend), not from the generic tables.
ROUTE_FAMILIES = (
    "gw_http_requests_total",
    "gw_http_request_duration_seconds",
    "gw_http_request_size_bytes",
    "gw_http_response_size_bytes",
    "gw_backend_requests_total",
    "gw_backend_request_duration_seconds",
    "gw_upstream_duration_seconds",
    "gw_upstream_connect_duration_seconds",
    "gw_backend_pool_connections",
)

# Latency bucket upper bounds in seconds (Prometheus `le`), +Inf implied.
BOUNDS: tuple[float, ...] = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# Body sizes in bytes: coarse (a size histogram is for "how big, roughly", not percentiles to the byte).
SIZE_BOUNDS: tuple[int, ...] = (0, 100, 1000, 10_000, 100_000, 1_000_000, 10_000_000, 100_000_000)
CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx")
_LATENCY = len(BOUNDS) + 1
_SIZES = len(SIZE_BOUNDS) + 1


class RouteStats:
    """Counters for one route label and the backend its requests reached ("" for those answered
    before one was: by a phase, a redirect, an error): per status class, count, duration sum and
    histogram; for a backend's, the upstream's time to the response head and the sizes of request
    and response bodies. A route's series and a backend's are these summed when read (one record per request).

    The upstream's time is not recorded for the usual request: sent with the client's head on a
    pooled connection and answered in one read, its upstream time is its duration (record_upstream
    counts nothing more than record). Every other request's duration is counted apart (`others`),
    and the upstream time of those that had one (`upstream`): the upstream histogram is the
    durations, less the others, plus those (upstream_buckets)."""

    __slots__ = (
        "backend",
        "buckets",
        "counts",
        "label",
        "log_member",
        "others",
        "others_sum",
        "request_bytes",
        "request_sized",
        "request_sizes",
        "response_bytes",
        "response_sizes",
        "sums",
        "upstream",
        "upstream_sum",
    )

    def __init__(self, label: str, backend: str = "") -> None:
        self.label = label
        self.backend = backend
        # '"route":"ns/name"' for access-log lines (orjson-escaped once, here).
        self.log_member = orjson.dumps({"route": label or None})[1:-1]
        self.counts = [0] * 6  # index = status // 100 (0 unused)
        self.sums = [0.0] * 6
        self.buckets = [[0] * _LATENCY for _ in range(6)]
        self.others = [0] * _LATENCY  # durations of the requests recorded by record_sized, record_apart
        self.others_sum = 0.0
        self.upstream = [0] * _LATENCY  # upstream times of those recorded by record_apart
        self.upstream_sum = 0.0
        # Most requests have no body: only those with one are counted (request_sized); the others
        # are the rest of `counts`, added to the first bucket when read (request_size_buckets).
        self.request_sizes = [0] * _SIZES
        self.request_sized = 0
        self.request_bytes = 0
        self.response_sizes = [0] * _SIZES  # every request that reached a backend
        self.response_bytes = 0

    def record(self, status: int, seconds: float) -> None:
        """A request answered by gw before it reached a backend (sizes are counted for those that did)."""
        c = status // 100
        if not 1 <= c <= 5:
            c = 5
        self.counts[c] += 1
        self.sums[c] += seconds
        self.buckets[c][bisect_left(BOUNDS, seconds)] += 1

    def record_upstream(self, status: int, seconds: float, sent: int) -> None:
        """An upstream's response whose time is the exchange's duration, to a request without a
        body (see the class docstring). `record`'s lines are repeated, not called: this runs once
        for nearly every request, and a call costs more than they do."""
        c = status // 100
        if not 1 <= c <= 5:
            c = 5
        self.counts[c] += 1
        self.sums[c] += seconds
        self.buckets[c][bisect_left(BOUNDS, seconds)] += 1
        # (bisect_left, with the usual small bodies placed by two integer comparisons)
        self.response_sizes[
            0 if not sent else 1 if sent <= 100 else 2 if sent <= 1000 else bisect_left(SIZE_BOUNDS, sent)
        ] += 1
        self.response_bytes += sent

    def record_sized(self, status: int, seconds: float, received: int, sent: int) -> None:
        """A request that reached the backend without an answer from it (refused, timed out)."""
        self.others[bisect_left(BOUNDS, seconds)] += 1
        self.others_sum += seconds
        if received:
            self.request_sizes[bisect_left(SIZE_BOUNDS, received)] += 1
            self.request_sized += 1
            self.request_bytes += received
        self.record_upstream(status, seconds, sent)

    def record_apart(self, status: int, seconds: float, upstream: float, received: int, sent: int) -> None:
        """An upstream's response whose time is not the duration (a connection opened first, a
        retry, a body that came in later reads)."""
        self.upstream[bisect_left(BOUNDS, upstream)] += 1
        self.upstream_sum += upstream
        self.record_sized(status, seconds, received, sent)

    def upstream_buckets(self) -> tuple[list[int], float]:
        """The upstream times' histogram and sum (see the class docstring)."""
        buckets = [sum(row[i] for row in self.buckets) - self.others[i] + self.upstream[i] for i in range(_LATENCY)]
        return buckets, max(0.0, sum(self.sums) - self.others_sum + self.upstream_sum)

    def request_size_buckets(self) -> list[int]:
        buckets = list(self.request_sizes)
        buckets[0] += sum(self.counts) - self.request_sized  # the bodiless requests: size 0
        return buckets

    def rows(self) -> list[Any]:
        return [
            self.label, self.counts, self.sums, self.buckets,
            self.request_sizes, self.request_sized, self.request_bytes, self.response_sizes, self.response_bytes,
            self.backend, self.others, self.others_sum, self.upstream, self.upstream_sum,
        ]  # fmt: skip

    def add(self, row: list[Any]) -> None:
        counts, sums, buckets = row[1:4]
        for c in range(6):
            self.counts[c] += counts[c]
            self.sums[c] += sums[c]
            _add(self.buckets[c], buckets[c])
        if len(row) > 4:  # (a worker of the version before these were counted sends none)
            request_sizes, request_sized, request_bytes, response_sizes, response_bytes = row[4:9]
            _add(self.request_sizes, request_sizes)
            self.request_sized += request_sized
            self.request_bytes += request_bytes
            _add(self.response_sizes, response_sizes)
            self.response_bytes += response_bytes
            others, others_sum, upstream, upstream_sum = row[10:14]
            _add(self.others, others)
            self.others_sum += others_sum
            _add(self.upstream, upstream)
            self.upstream_sum += upstream_sum


def _add(into: list[Any], values: Iterable[Any]) -> None:
    for i, n in enumerate(values):
        into[i] += n


def _summed(stats: Iterable[RouteStats], key: Callable[[RouteStats], str]) -> list[RouteStats]:
    """The pairs' counts summed by route (key: label) or by backend, sorted by that name."""
    out: dict[str, RouteStats] = {}
    for s in stats:
        name = key(s)
        total = out.get(name)
        if total is None:
            total = out[name] = RouteStats(s.label if key is _route else "", s.backend if key is _backend else "")
        total.add(s.rows())
    return [out[name] for name in sorted(out)]


def _route(s: RouteStats) -> str:
    return s.label


def _backend(s: RouteStats) -> str:
    return s.backend


class Tally:
    """One counter series bumped per request: `tally.n += 1` is two slot accesses, where a bump in
    the registry's counters dict hashes its nested label tuple twice. The registry folds its
    tallies into the counters whenever it is read (snapshot, render), so it is the same series."""

    __slots__ = ("n",)

    def __init__(self) -> None:
        self.n = 0


class Histogram:
    """One unlabelled histogram off the route path (e.g. Redis call latency), with its own bounds."""

    __slots__ = ("bounds", "buckets", "count", "help", "sum")

    def __init__(self, help: str, bounds: tuple[float, ...]) -> None:
        self.help = help
        self.bounds = bounds
        self.buckets = [0] * (len(bounds) + 1)
        self.count = 0
        self.sum = 0.0

    def observe(self, seconds: float) -> None:
        self.count += 1
        self.sum += seconds
        self.buckets[bisect_left(self.bounds, seconds)] += 1

    def render(self, name: str) -> list[str]:
        out = [f"# HELP {name} {self.help}", f"# TYPE {name} histogram"]
        cumulative = 0
        for bound, n in zip((*self.bounds, float("inf")), self.buckets, strict=True):
            cumulative += n
            le = "+Inf" if bound == float("inf") else repr(bound)
            out.append(f'{name}_bucket{{le="{le}"}} {cumulative}')
        out += [f"{name}_sum {self.sum}", f"{name}_count {self.count}"]
        return out


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class Registry:
    """All RouteStats of a worker, kept across config versions so counters never reset on reload."""

    def __init__(self) -> None:
        self.routes: dict[tuple[str, str], RouteStats] = {}  # by route and backend
        self.connects: dict[str, Histogram] = {}  # upstream connection set-up time, by backend
        # Per-backend gauges read when scraped (pool connections): each source returns its series.
        self.gauge_sources: list[Callable[[], dict[tuple[str, Labels], float]]] = []
        self.counters: dict[tuple[str, tuple[tuple[str, str], ...]], int] = {}
        self.tallies: dict[tuple[str, Labels], Tally] = {}  # per-request counters, folded in on reading
        self.gauges: dict[str, Callable[[], float]] = {}
        self.gauge_values: dict[str, float] = {}  # gauges absorbed from other processes' snapshots
        self.labelled_gauges: dict[tuple[str, Labels], float] = {}  # set by whoever renders (per worker)
        self.histograms: dict[str, Histogram] = {}

    def route(self, label: str, backend: str = "") -> RouteStats:
        """The stats of route `label`'s requests that reached `backend` ("": that reached none)."""
        stats = self.routes.get((label, backend))
        if stats is None:
            stats = self.routes[(label, backend)] = RouteStats(label, backend)
        return stats

    def connect_times(self, backend: str) -> Histogram:
        hist = self.connects.get(backend)
        if hist is None:
            hist = self.connects[backend] = Histogram("", BOUNDS)
        return hist

    def sourced_gauges(self) -> dict[tuple[str, Labels], float]:
        gauges: dict[tuple[str, Labels], float] = {}
        for source in self.gauge_sources:
            for key, value in source().items():
                gauges[key] = gauges.get(key, 0.0) + value
        return gauges

    def inc(self, name: str, amount: int = 1, **labels: str) -> None:
        """A counter off the hot path (errors, reloads): keyed by name and sorted labels."""
        key = (name, tuple(sorted(labels.items())))
        self.counters[key] = self.counters.get(key, 0) + amount

    def tally(self, name: str, **labels: str) -> Tally:
        """The hot path's handle on one counter series (the same one on every call, across reloads)."""
        key = (name, tuple(sorted(labels.items())))
        tally = self.tallies.get(key)
        if tally is None:
            tally = self.tallies[key] = Tally()
        return tally

    def counts(self) -> dict[tuple[str, Labels], int]:
        """Every counter series: the counters, with the tallies added."""
        counts = dict(self.counters)
        for key, tally in self.tallies.items():
            if tally.n:
                counts[key] = counts.get(key, 0) + tally.n
        return counts

    def gauge(self, name: str, read: Callable[[], float]) -> None:
        self.gauges[name] = read

    def histogram(self, name: str, help: str, bounds: tuple[float, ...] = BOUNDS) -> Histogram:
        """The histogram `name`, created on first use (its help and bounds are fixed then)."""
        hist = self.histograms.get(name)
        if hist is None:
            hist = self.histograms[name] = Histogram(help, bounds)
        return hist

    def snapshot(self) -> dict[str, Any]:
        """Everything this registry counts, as plain data another process can absorb (msgpack-able)."""
        return {
            "routes": [s.rows() for s in self.routes.values()],
            "connects": [[name, h.buckets, h.sum, h.count] for name, h in self.connects.items()],
            "labelled_gauges": [
                [name, [list(kv) for kv in labels], v] for (name, labels), v in self.sourced_gauges().items()
            ],
            "counters": [[name, [list(kv) for kv in labels], value] for (name, labels), value in self.counts().items()],
            "gauges": {name: float(read()) for name, read in self.gauges.items()},
            "histograms": [
                [name, h.help, list(h.bounds), h.buckets, h.sum, h.count] for name, h in self.histograms.items()
            ],
        }

    def absorb(self, snapshot: dict[str, Any]) -> None:
        """Add a snapshot's counts to this registry (the supervisor sums its workers this way)."""
        for row in snapshot.get("routes", ()):
            self.route(row[0], row[9] if len(row) > 9 else "").add(row)
        for backend, buckets, total, count in snapshot.get("connects", ()):
            hist = self.connect_times(backend)
            _add(hist.buckets, buckets)
            hist.sum += total
            hist.count += count
        for name, labels, value in snapshot.get("labelled_gauges", ()):
            key = (name, tuple((k, v) for k, v in labels))
            self.labelled_gauges[key] = self.labelled_gauges.get(key, 0.0) + value
        for name, labels, value in snapshot.get("counters", ()):
            key = (name, tuple((k, v) for k, v in labels))
            self.counters[key] = self.counters.get(key, 0) + value
        for name, value in snapshot.get("gauges", {}).items():
            self.gauge_values[name] = self.gauge_values.get(name, 0.0) + value
        for name, help, bounds, buckets, total, count in snapshot.get("histograms", ()):
            hist = self.histogram(name, help, tuple(bounds))
            for i, n in enumerate(buckets):
                hist.buckets[i] += n
            hist.sum += total
            hist.count += count

    def render(self) -> bytes:
        """The Prometheus text exposition format (version 0.0.4): every family of FAMILIES, with
        HELP and TYPE, and its zero series where nothing was counted yet."""
        out: list[str] = []
        out += _render_routes(_summed(self.routes.values(), _route))
        out += _render_sizes(_summed([s for s in self.routes.values() if s.backend], _route))
        backends = [s for s in _summed(self.routes.values(), _backend) if s.backend]
        out += _render_backends(backends, self.connects, {**self.labelled_gauges, **self.sourced_gauges()})
        counters: dict[tuple[str, Labels], float] = {
            (name, labels): 0 for name, family in FAMILIES.items() for labels in family.zero_series()
        }
        counters.update(self.counts())
        gauges = {k: v for k, v in self.labelled_gauges.items() if k[0] not in ROUTE_FAMILIES}
        for name, value in self.gauge_values.items():
            gauges[(name, ())] = value
        for name, read in self.gauges.items():
            gauges[(name, ())] = gauges.get((name, ()), 0.0) + read()
        for kind, samples in ((COUNTER, counters), (GAUGE, gauges)):
            by_name: dict[str, list[tuple[Labels, float]]] = {
                name: [] for name, family in FAMILIES.items() if family.type == kind and name not in ROUTE_FAMILIES
            }
            for (name, labels), value in sorted(samples.items()):
                by_name.setdefault(name, []).append((labels, value))
            for name, series in sorted(by_name.items()):
                out += _head(name, kind)
                for labels, value in series:
                    text = ",".join(f'{k}="{_escape(v)}"' for k, v in labels)
                    out.append(f"{name}{{{text}}} {_number(value)}" if text else f"{name} {_number(value)}")
        for name in sorted(FAMILIES.keys() | self.histograms.keys()):
            hist = self.histograms.get(name)
            if hist is not None:
                out += hist.render(name)
            elif FAMILIES[name].type == HISTOGRAM and name not in ROUTE_FAMILIES:
                out += _head(name, HISTOGRAM)
        out.append("")
        return "\n".join(out).encode()


def _number(value: float) -> str:
    # Counts stay exact integers (no 1e+06); a fractional gauge keeps every digit.
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _head(name: str, kind: str) -> list[str]:
    family = FAMILIES.get(name)
    return ([f"# HELP {name} {family.help}"] if family else []) + [f"# TYPE {name} {kind}"]


def _render_routes(routes: Collection[RouteStats]) -> list[str]:
    out = _head("gw_http_requests_total", COUNTER)
    hist = _head("gw_http_request_duration_seconds", HISTOGRAM)
    for stats in sorted(routes, key=lambda s: s.label):
        route = _escape(stats.label)
        for c in range(1, 6):
            count = stats.counts[c]
            if not count:
                continue
            cls = CLASSES[c - 1]
            labels = f'route="{route}",status_class="{cls}"'
            out.append(f"gw_http_requests_total{{{labels}}} {count}")
            cumulative = 0
            for bound, n in zip((*BOUNDS, float("inf")), stats.buckets[c], strict=True):
                cumulative += n
                le = "+Inf" if bound == float("inf") else repr(bound)
                hist.append(f'gw_http_request_duration_seconds_bucket{{{labels},le="{le}"}} {cumulative}')
            hist.append(f"gw_http_request_duration_seconds_sum{{{labels}}} {stats.sums[c]}")
            hist.append(f"gw_http_request_duration_seconds_count{{{labels}}} {count}")
    return out + hist


def _histogram_lines(name: str, labels: str, bounds: tuple[float, ...], buckets: list[int], total: float) -> list[str]:
    out = []
    cumulative = 0
    for bound, n in zip((*bounds, float("inf")), buckets, strict=True):
        cumulative += n
        le = "+Inf" if bound == float("inf") else repr(bound)
        out.append(f'{name}_bucket{{{labels},le="{le}"}} {cumulative}')
    out.append(f"{name}_sum{{{labels}}} {_number(total)}")
    out.append(f"{name}_count{{{labels}}} {cumulative}")
    return out


def _render_sizes(routes: Iterable[RouteStats]) -> list[str]:
    requests = _head("gw_http_request_size_bytes", HISTOGRAM)
    responses = _head("gw_http_response_size_bytes", HISTOGRAM)
    for stats in sorted(routes, key=lambda s: s.label):
        if not any(stats.counts):
            continue
        labels = f'route="{_escape(stats.label)}"'
        requests += _histogram_lines(
            "gw_http_request_size_bytes", labels, SIZE_BOUNDS, stats.request_size_buckets(), stats.request_bytes
        )
        responses += _histogram_lines(
            "gw_http_response_size_bytes", labels, SIZE_BOUNDS, stats.response_sizes, stats.response_bytes
        )
    return requests + responses


def _render_backends(
    backends: list[RouteStats], connects: dict[str, Histogram], gauges: dict[tuple[str, Labels], float]
) -> list[str]:
    counts = _head("gw_backend_requests_total", COUNTER)
    durations = _head("gw_backend_request_duration_seconds", HISTOGRAM)
    upstream = _head("gw_upstream_duration_seconds", HISTOGRAM)
    for stats in backends:
        backend = f'backend="{_escape(stats.backend)}"'
        for c in range(1, 6):
            if stats.counts[c]:
                cls = CLASSES[c - 1]
                counts.append(f'gw_backend_requests_total{{{backend},status_class="{cls}"}} {stats.counts[c]}')
        buckets = [sum(row[i] for row in stats.buckets) for i in range(_LATENCY)]
        durations += _histogram_lines("gw_backend_request_duration_seconds", backend, BOUNDS, buckets, sum(stats.sums))
        times, total = stats.upstream_buckets()
        if any(times):
            upstream += _histogram_lines("gw_upstream_duration_seconds", backend, BOUNDS, times, total)
    connect = _head("gw_upstream_connect_duration_seconds", HISTOGRAM)
    for name, hist in sorted(connects.items()):
        connect += _histogram_lines(
            "gw_upstream_connect_duration_seconds", f'backend="{_escape(name)}"', BOUNDS, hist.buckets, hist.sum
        )
    pool = _head("gw_backend_pool_connections", GAUGE)
    for (name, labels), value in sorted(gauges.items()):
        if name == "gw_backend_pool_connections":
            text = ",".join(f'{k}="{_escape(v)}"' for k, v in labels)
            pool.append(f"{name}{{{text}}} {_number(value)}")
    return counts + durations + upstream + connect + pool
