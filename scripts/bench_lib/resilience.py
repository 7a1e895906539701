"""Backend resilience shared by a fleet (issue 14): ejection, probes and the circuit, as clients and endpoints see them.

One Redis server, `--replicas` x `--workers` gw (`gw run` processes reading one config, each bound
to its own port through GW_LISTENER_PORT_OFFSET so that every response is known by its replica),
and a faulty upstream process (tests/support/faulty_upstream.py) serving four backends of three
static endpoints each: a1-a3, b1-b3, c1-c3, d1-d3, one backend per scenario so that no scenario
inherits another's ejections or circuit. Each backend has the same BackendTrafficPolicy (passive
and active checks and the fleet-wide breaker, see `policy`). A steady load (scripts/bench_lib/steady.py)
is spread over the replicas, on the scenario's backend; every response is recorded with its replica,
status, the endpoint that made it (X-Endpoint) and its problem type.

  a  eject-500     a1 starts answering 500: 5xx clients saw (all of them and those a1 made) until a1
                   stops receiving requests; when it last received one (its own counter); the first
                   Redis event about a1 (ejection or failed probe) and who decided it.
  b  eject-refuse  b1 refuses connections: failed client requests until they stop; the first event.
  c  probes        active probes each of c1-c3 received per interval over the whole run, against
                   replicas x workers (every worker probing, as without the fleet's lease).
  d  circuit       d1-d3 all answer 500: time until every replica has answered `circuit-open`;
                   calls that reached the backend while open (the half-open trials, per episode;
                   goal: halfOpenRequests each, fleet-wide); then d1-d3 recover: time until every
                   replica answers 200 again.

Redis events are read from the backend events channel (gw.state.backend_events) as they are published.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from bench_lib.reload import Gateway, Plan  # noqa: E402
from bench_lib.steady import Row, Steady  # noqa: E402
from tests.support import valkey  # noqa: E402
from tests.support.faulty_upstream import control, spawn  # noqa: E402
from tests.support.gateway import config_yaml, free_port  # noqa: E402

CIRCUIT_OPEN = "urn:gw:problem:circuit-open"
BACKENDS = ("a", "b", "c", "d")
ENDPOINTS = 3
MARGIN = 0.25  # seconds around a half-open episode within which a call reaching the backend is its trial


def policy(backend: str, args: argparse.Namespace) -> dict[str, Any]:
    return {
        "apiVersion": "gw.dev/v1alpha1",
        "kind": "BackendTrafficPolicy",
        "metadata": {"name": backend, "namespace": "default"},
        "spec": {
            "targetRefs": [{"group": "gw.dev", "kind": "Backend", "name": backend}],
            "circuitBreaker": {
                "failureRatio": 0.5, "window": "5s", "minimumRequests": 20,
                "openDuration": f"{args.open_duration:g}s", "halfOpenRequests": args.half_open,
            },
            "healthCheck": {
                "passive": {
                    "consecutive5XxErrors": args.threshold, "consecutiveLocalOriginFailures": args.threshold,
                    "interval": "1s", "baseEjectionTime": "30s", "maxEjectionPercent": 50,
                },
                **({} if not args.active else {"active": {
                    "type": "HTTP", "http": {"path": "/healthz", "expectedStatuses": [200]},
                    "interval": f"{args.probe_interval:g}s", "timeout": "500ms",
                    "unhealthyThreshold": 2, "healthyThreshold": 1,
                }}),
            },
        },
    }  # fmt: skip


def config(port: int, endpoints: dict[str, int], args: argparse.Namespace) -> str:
    backends = {b: [("127.0.0.1", endpoints[f"{b}{i}"]) for i in range(1, ENDPOINTS + 1)] for b in BACKENDS}
    routes = [
        {"name": b, "rules": [{"matches": [{"path": {"type": "PathPrefix", "value": f"/{b}"}}],
                               "backendRefs": [{"backend": b}]}]}
        for b in BACKENDS
    ]  # fmt: skip
    return config_yaml(port, backends, routes) + "".join("---\n" + yaml.safe_dump(policy(b, args)) for b in BACKENDS)


def free_ports(n: int) -> int:
    """The first of n consecutive loopback ports free right now."""
    for _ in range(100):
        base = free_port()
        if base + n > 65535:
            continue
        held = []
        try:
            for port in range(base, base + n):
                s = socket.socket()
                held.append(s)
                s.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for s in held:
                s.close()
    raise RuntimeError(f"no {n} consecutive free ports")


class Events:
    """Every event published on the backend events channel, with the wall clock of its arrival."""

    def __init__(self, url: str, channel: str = "gw:backend:events") -> None:
        self.url = url
        self.channel = channel
        self.seen: list[tuple[float, dict[str, Any]]] = []

    async def listen(self, subscribed: asyncio.Event) -> None:
        import redis.asyncio

        client = redis.asyncio.Redis.from_url(self.url)
        pubsub = client.pubsub()
        await pubsub.subscribe(self.channel)
        subscribed.set()
        try:
            async for message in pubsub.listen():
                if message["type"] == "message":
                    with contextlib.suppress(ValueError):
                        self.seen.append((time.time(), json.loads(message["data"])))
        finally:
            await pubsub.aclose()
            await client.aclose()

    async def circuit(self, backend: str | None) -> dict[str, str]:
        """The backend's circuit hash in Redis (gw.state.keys.BackendKeys.circuit), for the record."""
        if backend is None:
            return {}
        import redis.asyncio

        from gw.state.keys import Keys

        client = redis.asyncio.Redis.from_url(self.url, decode_responses=True)
        try:
            return await client.hgetall(Keys(self.channel.split(":")[0]).backend(backend).circuit)  # type: ignore[no-any-return,misc]
        finally:
            await client.aclose()

    def about(self, endpoint: str | None, since: float, backend: str = "") -> list[tuple[float, dict[str, Any]]]:
        """Events after `since` about one endpoint ("address:port"), or about a backend's circuit."""
        if endpoint is not None:
            return [(t, e) for t, e in self.seen if t >= since and e.get("e") == endpoint]
        return [(t, e) for t, e in self.seen if t >= since and e.get("k") == "circuit" and backend in e.get("b", "")]


class Bench:
    def __init__(self, args: argparse.Namespace, control_port: int, endpoints: dict[str, int], ports: Sequence[int],
                 admins: Sequence[int], events: Events) -> None:  # fmt: skip
        self.args = args
        self.admins = admins
        self.control_port = control_port
        self.endpoints = endpoints
        self.load = Steady(ports, args.rate, args.connections)
        self.events = events
        self.replicas = len(ports)

    async def counts(self) -> dict[str, dict[str, Any]]:
        return await control(self.control_port, "GET", "/counts")  # type: ignore[no-any-return]

    async def switch(self, names: Sequence[str], mode: str) -> None:
        for name in names:
            await control(self.control_port, "POST", f"/mode/{name}/{mode}")

    async def connect_errors(self, endpoint: str) -> int:
        """gw_upstream_connect_errors_total of one endpoint ("address:port"), summed over the replicas."""
        total = 0
        for admin in self.admins:
            text = await http_get(admin, "/metrics")
            pattern = rf'^gw_upstream_connect_errors_total\{{[^}}]*endpoint="{re.escape(endpoint)}"[^}}]*\}} (\S+)$'
            total += sum(int(float(v)) for v in re.findall(pattern, text, re.M))
        return total

    async def propagation(self) -> dict[str, Any]:
        """gw_backend_event_delay_seconds over every replica: events decided elsewhere, as workers applied them."""
        buckets: dict[float, int] = {}
        for admin in self.admins:
            text = await http_get(admin, "/metrics")
            for le, value in re.findall(r'^gw_backend_event_delay_seconds_bucket\{[^}]*le="([^"]+)"[^}]*\} (\S+)$',
                                        text, re.M):  # fmt: skip
                bound = float("inf") if le == "+Inf" else float(le)
                buckets[bound] = buckets.get(bound, 0) + int(float(value))
        count = buckets.get(float("inf"), 0)

        def quantile(q: float) -> float | None:
            bound = next((b for b in sorted(buckets) if count and buckets[b] >= q * count), None)
            return None if bound is None else bound

        return {"events_applied": count, "p50_le_s": quantile(0.5), "p99_le_s": quantile(0.99)}

    def rows(self, since: float, until: float = float("inf")) -> list[Row]:
        return [r for r in self.load.rows if since <= r.sent < until]

    async def eject(self, backend: str, mode: str) -> dict[str, Any]:
        """Scenarios a and b: one endpoint fails; failures seen, and when it stops being sent to."""
        args, victim = self.args, f"{backend}1"
        self.load.path = f"/{backend}/x"
        await asyncio.sleep(args.warmup)
        address = f"127.0.0.1:{self.endpoints[victim]}"
        before = (await self.counts())[victim]["requests"]
        refused_before = refused = await self.connect_errors(address)
        t0 = time.time()
        await self.switch([victim], mode)
        last = t0
        # A fixed watch, longer than GW_ENDPOINT_EJECT_TIME: a worker's own skipping of an endpoint
        # that refused ends after it, and the endpoint is tried again.
        while time.time() < t0 + args.watch:
            await asyncio.sleep(0.1 if mode.startswith("status") else 0.25)
            counts = (await self.counts())[victim]
            if mode.startswith("status"):  # the endpoint's own counter: when a request last reached it
                last = max(t0, counts["last_request"])
            else:  # a refusing endpoint counts nothing: when a replica last counted a refused connect
                now, refused_now = time.time(), await self.connect_errors(address)
                if refused_now != refused:
                    refused, last = refused_now, now
        end = time.time()
        await self.switch([victim], "ok")
        rows = self.rows(t0, end)
        failed = [r for r in rows if r.status != 200]
        first = self.events.about(f"127.0.0.1:{self.endpoints[victim]}", t0)
        return {
            "mode": mode,
            "requests": len(rows),
            "client_failures": len(failed),
            "failures_from_endpoint": sum(1 for r in failed if r.endpoint == victim),
            "failures_by_replica": [sum(1 for r in failed if r.replica == i) for i in range(self.replicas)],
            "failure_statuses": _tally(r.status for r in failed),
            # When each replica last passed on an answer the failing endpoint made (None: never did).
            "last_from_endpoint_by_replica": [
                max((round(r.sent - t0, 3) for r in failed if r.replica == i and r.endpoint == victim), default=None)
                for i in range(self.replicas)
            ],
            "endpoint_received": counts["requests"] - before,
            "connects_refused": refused - refused_before if not mode.startswith("status") else None,
            "stopped_after_s": round(last - t0, 3) if end - last >= args.quiet else None,
            "watched_s": round(end - t0, 3),
            "first_event": _event(first[0], t0) if first else None,
            "events": [_event(e, t0) for e in first],
        }

    async def circuit(self, backend: str) -> dict[str, Any]:
        """Scenario d: the whole backend fails, then recovers."""
        args = self.args
        names = [f"{backend}{i}" for i in range(1, ENDPOINTS + 1)]
        self.load.path = f"/{backend}/x"
        await asyncio.sleep(args.warmup)
        t0 = time.time()
        await self.switch(names, "status?status=500")
        opened = await self._first_per_replica(t0, lambda r: r.problem == CIRCUIT_OPEN)
        all_open = max(opened.values()) if len(opened) == self.replicas else None
        at_open = await self.counts()
        hold_from = time.time()
        await asyncio.sleep(args.hold)
        t_recover = time.time()
        at_recover = await self.counts()
        await self.switch(names, "ok")
        closed = await self._first_per_replica(t_recover, lambda r: r.status == 200)
        circuit_hash = await self.events.circuit(circuit_events_name(self.events, t0, backend))
        all_closed = max(closed.values()) if len(closed) == self.replicas else None
        # Calls that reached the backend while it was open everywhere: the half-open trials, by episode
        # (a half-open event to the next transition, with a margin for the clocks of client and Redis),
        # and the others: calls a worker let through while its circuit should have been open.
        reached = sorted((r for r in self.rows(all_open or hold_from, t_recover) if r.endpoint in names),
                         key=lambda r: r.sent)  # fmt: skip
        circuit_events = self.events.about(None, t0, backend=f"/{backend}")
        windows = [
            (t - MARGIN, (circuit_events[i + 1][0] if i + 1 < len(circuit_events) else t_recover) + MARGIN)
            for i, (t, e) in enumerate(circuit_events)
            if e.get("s") == "half-open" and t < t_recover
        ]
        decided = [t for t, e in circuit_events if e.get("s") == "open"]
        episodes = [sum(1 for r in reached if a <= r.sent < b) for a, b in windows]
        trials = [r for r in reached if any(a <= r.sent < b for a, b in windows)]
        # The episode that closed it (after recovery): its trials are the calls from its half-open event to closing.
        closing = next(
            (i for i, (t, e) in enumerate(circuit_events) if t >= t_recover and e.get("s") == "closed"), None
        )
        closing_trials = None
        if closing is not None and closing > 0 and circuit_events[closing - 1][1].get("s") == "half-open":
            # No margin after closing: from then on every call goes through.
            a, b = circuit_events[closing - 1][0] - MARGIN, circuit_events[closing][0]
            closing_trials = sum(1 for r in self.rows(a, b) if r.endpoint in names)
        before_open = [r for r in self.rows(t0, all_open or hold_from) if r.endpoint in names and r.status >= 500]
        return {
            "failed_before_open": len(before_open),
            "all_open_after_s": round(all_open - t0, 3) if all_open else None,
            # The window's arithmetic is in the figure above; this one is the fleet's reaction.
            "all_open_after_decision_s": round(all_open - decided[0], 3) if all_open and decided else None,
            "open_after_s_by_replica": [
                round(opened[i] - t0, 3) if i in opened else None for i in range(self.replicas)
            ],
            "held_open_s": round(t_recover - hold_from, 3),
            "backend_received_while_open": sum(at_recover[n]["requests"] - at_open[n]["requests"] for n in names),
            "trials_seen_by_clients": len(trials),
            "leaked_while_open": len(reached) - len(trials),
            "trial_episodes": episodes,
            "closing_trials": closing_trials,
            "reached_while_open": [(round(r.sent - t0, 3), r.replica, r.status) for r in reached],
            "all_closed_after_s": round(all_closed - t_recover, 3) if all_closed else None,
            "circuit_events": [_event(e, t0) for e in circuit_events],
            "circuit_in_redis_at_end": circuit_hash,
            # What clients were answered, by status and problem type, while open and after recovery.
            "answers_while_open": _tally(
                f"{r.status} {r.problem}".strip() for r in self.rows(all_open or hold_from, t_recover)
            ),
            "answers_after_recovery": _tally(f"{r.status} {r.problem}".strip() for r in self.rows(t_recover)),
        }

    async def _first_per_replica(self, since: float, match: Any) -> dict[int, float]:
        """replica → when it first answered a response matching `match` after `since` (until the timeout)."""
        first: dict[int, float] = {}
        scanned = len(self.load.rows)
        while len(first) < self.replicas and time.time() < since + self.args.timeout:
            await asyncio.sleep(0.05)
            rows = self.load.rows[scanned:]
            scanned += len(rows)
            for r in rows:
                if r.sent >= since and match(r):
                    first.setdefault(r.replica, r.done)
        return first

    def probes(self, counts: dict[str, dict[str, Any]], since: float, until: float, backend: str) -> dict[str, Any]:
        """Scenario c: probes each endpoint of `backend` received per interval, in [since, until)."""
        interval = self.args.probe_interval
        intervals = max(1, int((until - since) // interval))
        per: dict[str, float] = {}
        peak = 0
        for i in range(1, ENDPOINTS + 1):
            times = [t for t in counts[f"{backend}{i}"]["health_times"] if since <= t < since + intervals * interval]
            per[f"{backend}{i}"] = round(len(times) / intervals, 2)
            buckets = _tally(int((t - since) // interval) for t in times)
            peak = max([peak, *buckets.values()])
        return {"intervals": intervals, "interval_s": interval, "per_endpoint_per_interval": per,
                "max_in_one_interval": peak, "without_lease": self.replicas * self.args.workers}  # fmt: skip


def circuit_events_name(events: Events, since: float, backend: str) -> str | None:
    """The backend's name as gw's events give it (e.g. "Backend default/d")."""
    found = events.about(None, since, backend=f"/{backend}")
    return found[0][1]["b"] if found else None


async def http_get(port: int, path: str) -> str:
    """The body of one GET to a loopback admin port (a blocking client would stall the load)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n".encode())
        data = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
    return data.partition(b"\r\n\r\n")[2].decode(errors="replace")


def _tally(values: Any) -> dict[Any, int]:
    out: dict[Any, int] = {}
    for v in values:
        out[v] = out.get(v, 0) + 1
    return out


def _event(item: tuple[float, dict[str, Any]], t0: float) -> dict[str, Any]:
    t, e = item
    return {"after_s": round(t - t0, 3), **{k: e.get(k) for k in ("k", "s", "why", "by") if k in e}}


async def scenarios(bench: Bench, started: float, only: set[str]) -> dict[str, Any]:
    subscribed = asyncio.Event()
    listener = asyncio.create_task(bench.events.listen(subscribed))
    await asyncio.wait_for(subscribed.wait(), 10)
    load = asyncio.create_task(bench.load.run())
    out: dict[str, Any] = {}
    try:
        if "a" in only:
            out["a"] = await bench.eject("a", "status?status=500")
        if "b" in only:
            out["b"] = await bench.eject("b", "refuse")
        if "d" in only:
            out["d"] = await bench.circuit("d")
        if "c" in only:
            until = time.time()
            # The first intervals are skipped: probes start with their initial jitter.
            out["c"] = bench.probes(await bench.counts(), started + 2 * bench.args.probe_interval, until, "c")
        out["propagation"] = await bench.propagation()
    finally:
        bench.load.stop.set()
        await load
        listener.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await listener
    out["load"] = {"requests": len(bench.load.rows), "errors": dict(bench.load.errors)}
    return out


def check_policies(path: Path) -> None:
    """`gw check` must accept every policy: a figure measured without them would mean nothing."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-m", "gw", "check", str(path)], capture_output=True, text=True, env=env,
                         timeout=60)  # fmt: skip
    lines = [line for line in out.stdout.splitlines() if line.startswith("BackendTrafficPolicy")]
    if len(lines) != len(BACKENDS) or not all("Accepted=True" in line for line in lines):
        raise SystemExit(f"bench-resilience: gw check did not accept the policies:\n{out.stdout}{out.stderr}")


def stop_fleet(replicas: Sequence[Any], faulty: Any, server: Any, directory: Path) -> None:
    """Stop a bench's replicas (each one's log kept in `directory`), its endpoints' process and Redis."""
    for i, replica in enumerate(replicas):
        with contextlib.suppress(Exception):
            replica.stop()
        (directory / f"replica-{i}.log").write_text("\n".join(line for _, line in replica.lines) + "\n")
    if faulty is not None:
        faulty.terminate()
        faulty.wait(10)
    server.stop()


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
    except OSError:
        out = ""
    for line in out.splitlines():
        if line.startswith("Model name:"):
            return line.split(":", 1)[1].strip()
    return "?"


def table(result: dict[str, Any]) -> str:
    s, args = result["scenarios"], result["settings"]
    goal = args["threshold"]
    lines = [
        f"bench-resilience: {args['replicas']} replicas x {args['workers']} workers, one Redis ({result['redis']}), "
        f"3 endpoints per backend, {args['rate']:g} req/s over {args['replicas'] * args['connections']} connections; "
        f"CPU {result['cpu']} ({result['cpus']} CPUs)",
        f"policy: consecutive5XxErrors/LocalOriginFailures {goal}, "
        + (f"active probes every {args['probe_interval']:g}s, " if args["active"] else "no active checks, ")
        + f"failureRatio 0.5 minimumRequests 20 openDuration {args['open_duration']:g}s "
        f"halfOpenRequests {args['half_open']}",
        "",
        f"{'scenario':<28} {'figure':<52} {'measured':>14}  goal",
    ]

    def row(scenario: str, figure: str, value: object, target: str = "") -> None:
        shown = "-" if value is None else (f"{value:.2f}" if isinstance(value, float) else str(value))
        lines.append(f"{scenario:<28} {figure:<52} {shown:>14}  {target}")

    for key, title in (("a", "a. one endpoint answers 500"), ("b", "b. one endpoint refuses")):
        if key not in s:
            continue
        e = s[key]
        row(title, "failed client requests (all)", e["client_failures"], f"about {goal}")
        if key == "a":
            row("", "  of which 500s from the endpoint", e["failures_from_endpoint"], f"about {goal}")
            row("", "requests the endpoint received after the switch", e["endpoint_received"])
            row("", "s until no replica sends to it", e["stopped_after_s"])
            last = e["last_from_endpoint_by_replica"]
            row("", "  last 500 from it, per replica (s)", "/".join("-" if v is None else f"{v:.2f}" for v in last))
        else:
            row("", "connects refused (all replicas' metrics)", e["connects_refused"], f"about {goal}")
            row("", "s until no replica connects to it", e["stopped_after_s"])
        row("", "failures per replica", "/".join(map(str, e["failures_by_replica"])))
        ev = e["first_event"]
        said = f"{ev.get('k')} {ev.get('s')} by {ev.get('by')}: {ev.get('why')}" if ev else ""
        row("", "first Redis event (s after the switch)", ev and ev["after_s"], said)
    if "c" in s:
        c = s["c"]
        for name, n in c["per_endpoint_per_interval"].items():
            row("c. active probes" if name.endswith("1") else "", f"probes per interval received by {name}", n,
                f"1 (without the lease: {c['without_lease']})")  # fmt: skip
        row("", f"most in one interval (of {c['intervals']})", c["max_in_one_interval"])
    if "d" in s:
        d = s["d"]
        row("d. whole backend answers 500", "500s clients got before it opened", d["failed_before_open"])
        row("", "s until every replica answers circuit-open", d["all_open_after_s"])
        row("", "  after the open decision (its Redis event)", d["all_open_after_decision_s"])
        row("", "  per replica", "/".join("-" if v is None else f"{v:.2f}" for v in d["open_after_s_by_replica"]))
        row("", f"calls reaching the backend in {d['held_open_s']:.0f}s open", d["backend_received_while_open"])
        row("", "  trial calls per half-open episode (failing)", ",".join(map(str, d["trial_episodes"])) or "0",
            f"<= {args['half_open']} each")  # fmt: skip
        row("", "  trial calls of the episode that closed it", d["closing_trials"], str(args["half_open"]))
        row("", "  other calls let through while open", d["leaked_while_open"], "0")
        row("", "s after recovery until every replica answers 200", d["all_closed_after_s"],
            f"<= openDuration {args['open_duration']:g}s + one trial")  # fmt: skip
        for ev in d["circuit_events"][:12]:
            lines.append(
                f"{'':<28}   circuit {ev.get('s')} at +{ev['after_s']:.2f}s by {ev.get('by')}: {ev.get('why')}"
            )
    if "propagation" in s:
        p = s["propagation"]
        le = f"<= {p['p99_le_s'] * 1000:g} ms" if p["p99_le_s"] not in (None, float("inf")) else p["p99_le_s"]
        row("propagation", f"event applied by other workers: p99 (of {p['events_applied']})", le, "<= 100 ms")
    load = s["load"]
    lines.append(f"\nload: {load['requests']} requests; client-side errors {load['errors'] or 'none'}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/bench-resilience", description=__doc__.split("\n")[0])
    parser.add_argument("--replicas", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rate", type=float, default=240.0, help="requests per second over every replica")
    parser.add_argument("--connections", type=int, default=4, help="client connections per replica")
    parser.add_argument("--threshold", type=int, default=5, help="consecutive5XxErrors / LocalOriginFailures")
    parser.add_argument("--probe-interval", type=float, default=1.0, help="active health check interval, seconds")
    parser.add_argument("--open-duration", type=float, default=3.0, help="circuitBreaker openDuration, seconds")
    parser.add_argument("--half-open", type=int, default=3, help="circuitBreaker halfOpenRequests")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds of load before each switch")
    parser.add_argument("--watch", type=float, default=12.0, help="seconds a and b watch the failing endpoint")
    parser.add_argument(
        "--quiet", type=float, default=2.0, help="a and b: an endpoint not sent to in the watch's last seconds is out"
    )
    parser.add_argument("--timeout", type=float, default=15.0, help="longest wait for an effect, seconds")
    parser.add_argument(
        "--hold", type=float, default=0.0, help="seconds the circuit is held failing (default 3.5 x open)"
    )
    parser.add_argument("--scenarios", default="a,b,c,d")
    parser.add_argument(
        "--no-active",
        dest="active",
        action="store_false",
        help="policies without active checks (passive effects alone)",
    )
    parser.add_argument("--json", action="store_true", help="print the figures as JSON instead of a table")
    args = parser.parse_args(argv)
    # Recovery lands mid-way through an open period, not just as one ends.
    args.hold = args.hold or 3.5 * args.open_duration
    directory = Path(tempfile.mkdtemp(prefix="gw-bench-resilience-"))
    redis_binary = shutil.which("redis-server") or ""
    server = valkey.Server(directory / "redis", port=free_port(), binary=redis_binary)
    faulty: subprocess.Popen[bytes] | None = None
    replicas: list[Gateway] = []
    try:
        server.start()
        names = [f"{b}{i}" for b in BACKENDS for i in range(1, ENDPOINTS + 1)]
        faulty, ctl, endpoints = spawn(names, log=directory / "faulty.log")
        base = free_ports(args.replicas)
        path = directory / "gateway.yaml"
        path.write_text(config(base, endpoints, args))
        check_policies(path)
        for i in range(args.replicas):
            env = {"GW_REDIS_URL": server.url, "GW_LISTENER_PORT_OFFSET": str(i)}
            replicas.append(Gateway(path, base, free_port(), Plan(workers=args.workers), env=env))
        started = time.time()
        ports = [base + i for i in range(args.replicas)]
        admins = [r.admin for r in replicas]
        bench = Bench(args, int(ctl.base.rsplit(":", 1)[1]), endpoints, ports, admins, Events(server.url))
        figures = asyncio.run(scenarios(bench, started, set(args.scenarios.split(","))))
    finally:
        stop_fleet(replicas, faulty, server, directory)
    result = {
        "cpu": cpu_model(),
        "cpus": len(os.sched_getaffinity(0)),
        "redis": server.binary or "valkey",
        "settings": vars(args),
        "scenarios": figures,
        "logs": str(directory),
    }
    print(json.dumps(result, indent=2) if args.json else table(result))
    return 0
