"""Per-route request counters and latency histograms, cheap to record, rendered for Prometheus.

prometheus_client's per-call label lookup and locking cost several µs per request; the data
plane instead bumps plain integers in a preallocated RouteStats and renders the exposition text
only when scraped (docs/architecture.md, performance rules: every hot-path step must earn its microseconds).
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterable
from typing import Any

import orjson

from gw.observe.families import COUNTER, FAMILIES, GAUGE, HISTOGRAM

Labels = tuple[tuple[str, str], ...]
ROUTE_FAMILIES = ("gw_http_requests_total", "gw_http_request_duration_seconds")  # rendered per route

# Latency bucket upper bounds in seconds (Prometheus `le`), +Inf implied.
BOUNDS: tuple[float, ...] = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx")


class RouteStats:
    """Counters for one route label: per status class, count, duration sum and histogram."""

    __slots__ = ("buckets", "counts", "label", "log_member", "sums")

    def __init__(self, label: str) -> None:
        self.label = label
        # '"route":"ns/name"' for access-log lines (orjson-escaped once, here).
        self.log_member = orjson.dumps({"route": label or None})[1:-1]
        self.counts = [0] * 6  # index = status // 100 (0 unused)
        self.sums = [0.0] * 6
        self.buckets = [[0] * (len(BOUNDS) + 1) for _ in range(6)]

    def record(self, status: int, seconds: float) -> None:
        c = status // 100
        if not 1 <= c <= 5:
            c = 5
        self.counts[c] += 1
        self.sums[c] += seconds
        self.buckets[c][bisect_left(BOUNDS, seconds)] += 1


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
        self.routes: dict[str, RouteStats] = {}
        self.counters: dict[tuple[str, tuple[tuple[str, str], ...]], int] = {}
        self.tallies: dict[tuple[str, Labels], Tally] = {}  # per-request counters, folded in on reading
        self.gauges: dict[str, Callable[[], float]] = {}
        self.gauge_values: dict[str, float] = {}  # gauges absorbed from other processes' snapshots
        self.labelled_gauges: dict[tuple[str, Labels], float] = {}  # set by whoever renders (per worker)
        self.histograms: dict[str, Histogram] = {}

    def route(self, label: str) -> RouteStats:
        stats = self.routes.get(label)
        if stats is None:
            stats = self.routes[label] = RouteStats(label)
        return stats

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
            "routes": [[s.label, s.counts, s.sums, s.buckets] for s in self.routes.values()],
            "counters": [[name, [list(kv) for kv in labels], value] for (name, labels), value in self.counts().items()],
            "gauges": {name: float(read()) for name, read in self.gauges.items()},
            "histograms": [
                [name, h.help, list(h.bounds), h.buckets, h.sum, h.count] for name, h in self.histograms.items()
            ],
        }

    def absorb(self, snapshot: dict[str, Any]) -> None:
        """Add a snapshot's counts to this registry (the supervisor sums its workers this way)."""
        for label, counts, sums, buckets in snapshot.get("routes", ()):
            stats = self.route(label)
            for c in range(6):
                stats.counts[c] += counts[c]
                stats.sums[c] += sums[c]
                row = stats.buckets[c]
                for i, n in enumerate(buckets[c]):
                    row[i] += n
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
        out += _render_routes(self.routes.values())
        counters: dict[tuple[str, Labels], float] = {
            (name, labels): 0 for name, family in FAMILIES.items() for labels in family.zero_series()
        }
        counters.update(self.counts())
        gauges = dict(self.labelled_gauges)
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


def _render_routes(routes: Iterable[RouteStats]) -> list[str]:
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
