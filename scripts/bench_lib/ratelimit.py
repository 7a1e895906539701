"""Distributed rate limiting across replicas: accuracy per mode, cost, and resilience to Redis stopping.

Replicas (`--replicas` supervisors x `--workers` workers) share one listener port (SO_REUSEPORT)
and one Valkey server, as replicas behind a load balancer share a Redis. Three measurements:

  accuracy    per mode (Exact, Leased): a limit of 1000 per window on one key (/one) and 100 keys of
              100 per window (/keyed, key = the X-Key header), offered 3x the limit over many
              connections spread over every worker; admitted requests counted per window aligned
              to the server's windows (sliding-window algorithm), partial windows discarded;
              Redis commands (INFO commandstats) per admitted request.
  cost        wrk on /leased (a Leased limit never reached) and on /free (no policy), alternated.
  resilience  /open (failureMode Open) and /local (failureMode Local) at 3x their limit while the
              Valkey server is paused (SIGSTOP) for a window: failures, latency added, admitted rate;
              then resumed: exact counting again.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from bench_lib import wrk  # noqa: E402
from bench_lib.reload import Gateway, Plan, read_response  # noqa: E402
from tests.support import valkey  # noqa: E402
from tests.support.gateway import config_yaml, free_port  # noqa: E402
from tests.support.upstream import Upstream  # noqa: E402

LIMIT_ONE = 1000
LIMIT_KEYED = 100
KEYS = 100
OVERLOAD = 3.0


def config(port: int, upstream: int, mode: str, per: str, res_per: str, failure_mode: str = "Open") -> str:
    paths = ["one", "keyed", "leased", "open", "local"]
    routes = [
        {"name": p, "rules": [{"matches": [{"path": {"type": "PathPrefix", "value": f"/{p}"}}],
                               "backendRefs": [{"backend": "up"}]}]}
        for p in paths
    ] + [{"name": "free", "rules": [{"backendRefs": [{"backend": "up"}]}]}]  # fmt: skip

    def policy(name: str, requests: int, window: str, key: list[Any] | None = None, **spec: Any) -> dict[str, Any]:
        limit = {"name": "w", "requests": requests, "per": window, "key": key or []}
        return {"apiVersion": "gw.dev/v1alpha1", "kind": "RateLimitPolicy", "metadata": {"name": name},
                "spec": {"targetRefs": [{"kind": "HTTPRoute", "name": name}], "algorithm": "SlidingWindow",
                         "limits": [limit], **spec}}  # fmt: skip

    policies = [
        policy("one", LIMIT_ONE, per, mode=mode, failureMode=failure_mode),
        policy("keyed", LIMIT_KEYED, per, [{"type": "Header", "name": "X-Key"}], mode=mode, failureMode=failure_mode),
        policy("leased", 10**12, "1m", mode="Leased"),
        policy("open", LIMIT_ONE, res_per, failureMode="Open"),
        policy("local", LIMIT_ONE, res_per, failureMode="Local"),
    ]
    text = config_yaml(port, {"up": [("127.0.0.1", upstream)]}, routes)
    return text + "".join("---\n" + yaml.safe_dump(p) for p in policies)


@dataclass
class Log:
    """(wall time, path, key, status, seconds) per request."""

    rows: list[tuple[float, str, str, int, float]] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)


async def offer(port: int, path: str, keys: list[str], rate: float, connections: int, until: float, log: Log) -> None:
    """`rate` requests per second over `connections` keep-alive connections, keys in turn."""

    async def client(index: int) -> None:
        interval = connections / rate
        next_at = time.monotonic() + interval * index / connections
        turn = index
        reader = writer = None
        while time.time() < until:
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
            next_at += interval
            key = keys[turn % len(keys)] if keys else ""
            turn += connections
            started = time.monotonic()
            try:
                if writer is None:
                    reader, writer = await asyncio.open_connection("127.0.0.1", port)
                extra = f"X-Key: {key}\r\n" if key else ""
                writer.write(f"GET /{path} HTTP/1.1\r\nHost: bench.test\r\n{extra}\r\n".encode())
                status, close = await asyncio.wait_for(read_response(reader), 10)  # type: ignore[arg-type]
            except (OSError, asyncio.IncompleteReadError, TimeoutError) as exc:
                log.errors[type(exc).__name__] += 1
                status, close = 0, True
            log.rows.append((time.time(), path, key, status, time.monotonic() - started))
            if close and writer is not None:
                writer.close()
                reader = writer = None

    await asyncio.gather(*(client(i) for i in range(connections)))


def redis_commands(server: valkey.Server) -> tuple[int, int]:
    """(commands sent by clients, script calls among them): INFO commandstats also counts what scripts call."""
    with server.client() as c:
        stats = c.info("commandstats")
    scripts = sum(stats.get(f"cmdstat_{n}", {}).get("calls", 0) for n in ("evalsha", "eval"))
    inside = ("time", "get", "set", "hmget", "hincrby", "hdel", "pexpire", "zadd", "zremrangebyscore", "zcard")
    called_by_scripts = sum(stats.get(f"cmdstat_{n}", {}).get("calls", 0) for n in inside)
    total = sum(v["calls"] for k, v in stats.items() if k.startswith("cmdstat_"))
    return total - called_by_scripts, scripts


def decisions(replicas: list[Gateway]) -> Counter[str]:
    """gw_ratelimit_decisions_total by outcome and gw_redis_calls_total by outcome, summed over replicas."""
    import re

    import httpx

    total: Counter[str] = Counter()
    for replica in replicas:
        text = httpx.get(f"http://127.0.0.1:{replica.admin}/metrics", timeout=10).text
        pattern = r'^(gw_ratelimit_decisions_total|gw_redis_calls_total)\{outcome="([^"]+)"[^}]*\} (\S+)$'
        for name, outcome, value in re.findall(pattern, text, re.M):
            total[f"{name.split('_')[1]}:{outcome}"] += int(float(value))
    return total


def full_windows(log: Log, path: str, start: float, until: float, window: float) -> list[int]:
    """Admitted (200) per server-aligned window lying wholly inside [start, until)."""
    first = int(start // window) + 1
    last = int(until // window)  # exclusive
    counts = Counter(int(t // window) for t, p, _, s, _ in log.rows if p == path and s == 200)
    return [counts.get(i, 0) for i in range(first, last)]


def accuracy(port: int, server: valkey.Server, window: float, windows: int) -> dict[str, Any]:
    log = Log()
    start = time.time()
    until = (int(start // window) + 1 + windows) * window + 0.05
    before = redis_commands(server)

    async def run() -> None:
        one_rate = OVERLOAD * LIMIT_ONE / window
        keyed_rate = OVERLOAD * LIMIT_KEYED * KEYS / window
        await asyncio.gather(
            offer(port, "one", [], one_rate, 16, until, log),
            offer(port, "keyed", [f"k{i}" for i in range(KEYS)], keyed_rate, 48, until, log),
        )

    asyncio.run(run())
    after = redis_commands(server)
    commands, scripts = after[0] - before[0], after[1] - before[1]
    one = full_windows(log, "one", start, until, window)
    keyed = full_windows(log, "keyed", start, until, window)
    admitted = sum(1 for r in log.rows if r[3] == 200)
    return {
        "one": one,
        "keyed": keyed,
        "one_error": max(abs(n - LIMIT_ONE) / LIMIT_ONE for n in one),
        "keyed_error": max(abs(n - LIMIT_KEYED * KEYS) / (LIMIT_KEYED * KEYS) for n in keyed),
        "commands_per_admitted": commands / max(1, admitted),
        "scripts_per_admitted": scripts / max(1, admitted),
        "offered": len(log.rows),
        "failed": sum(log.errors.values()),
    }


def cost(port: int, seconds: float, rounds: int) -> dict[str, float]:
    free, leased = [], []
    for _ in range(rounds):
        free.append(wrk.run(f"http://127.0.0.1:{port}/free", seconds, None, connections=32).rps)
        leased.append(wrk.run(f"http://127.0.0.1:{port}/leased", seconds, None, connections=32).rps)
    return {"free": statistics.median(free), "leased": statistics.median(leased)}


def resilience(port: int, server: valkey.Server, window: float, budget: float) -> dict[str, Any]:
    """One full window with Redis, one paused, one resumed; per route: admitted per window, errors, latency."""
    log = Log()
    start = time.time()
    w0 = int(start // window) + 1  # first full window
    pause_at, resume_at, until = (w0 + 1) * window, (w0 + 2) * window, (w0 + 3) * window + 0.05

    async def operator() -> None:
        await asyncio.sleep(max(0.0, pause_at - time.time()))
        server.pause()
        await asyncio.sleep(max(0.0, resume_at - time.time()))
        server.resume()

    async def run() -> None:
        rate = OVERLOAD * LIMIT_ONE / window
        await asyncio.gather(
            offer(port, "open", [], rate, 16, until, log),
            offer(port, "local", [], rate, 16, until, log),
            operator(),
        )

    try:
        asyncio.run(run())
    finally:
        server.resume()
    out: dict[str, Any] = {}
    for path in ("open", "local"):
        rows = [r for r in log.rows if r[1] == path]
        phases = {}
        for name, index in (("before", w0), ("paused", w0 + 1), ("after", w0 + 2)):
            inside = [r for r in rows if int(r[0] // window) == index]
            latencies = sorted(r[4] for r in inside)
            phases[name] = {
                "admitted": sum(1 for r in inside if r[3] == 200),
                "failed": sum(1 for r in inside if r[3] not in (200, 429)),
                "p99_ms": latencies[int(0.99 * (len(latencies) - 1))] * 1000 if latencies else 0.0,
            }
        out[path] = phases
    out["budget_ms"] = budget * 1000
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/bench-ratelimit", description=__doc__.split("\n")[0])
    parser.add_argument("--replicas", type=int, default=4)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--per", default="1m", help="window of the accuracy limits (GEP-2257 duration)")
    parser.add_argument("--windows", type=int, default=2, help="full windows measured per mode")
    parser.add_argument("--resilience-per", default="10s", help="window of the resilience limits")
    parser.add_argument("--cost-seconds", type=float, default=5.0)
    parser.add_argument("--cost-rounds", type=int, default=3)
    parser.add_argument("--modes", default="Exact,Leased")
    parser.add_argument("--skip", default="", help="comma-separated: accuracy, cost, resilience")
    parser.add_argument("--budget", default="5ms", help="GW_REDIS_BUDGET of the replicas")
    parser.add_argument(
        "--failure-mode",
        default="Open",
        choices=("Open", "Closed", "Local"),
        help="failureMode of the accuracy policies: a decision whose Redis call misses the budget is "
        "admitted with Open (on an overloaded machine that is over-admission the counting did not make)",
    )
    args = parser.parse_args(argv)
    from gw.config.units import parse_duration

    window, res_window = parse_duration(args.per), parse_duration(args.resilience_per)
    skip = set(filter(None, args.skip.split(",")))
    budget = parse_duration(args.budget)
    directory = Path(tempfile.mkdtemp(prefix="gw-bench-ratelimit-"))
    upstream = Upstream("bench-ratelimit-up").start()
    port = free_port()
    print(f"{args.replicas} replicas x {args.workers} workers, one Valkey; offered load {OVERLOAD:g}x the limits")
    try:
        return 0 if run(args, directory, upstream, port, window, res_window, skip, budget) else 1
    finally:
        upstream.stop()


def run(
    args: argparse.Namespace, directory: Path, upstream: Upstream, port: int, window: float, res_window: float,
    skip: set[str], budget: float,
) -> bool:
    ok = True
    for mode in args.modes.split(","):
        server = valkey.standalone(directory / f"valkey-{mode}")
        path = directory / f"gateway-{mode}.yaml"
        path.write_text(config(port, upstream.port, mode, args.per, args.resilience_per, args.failure_mode))
        # Replicas of one fleet on one port (SO_REUSEPORT), as behind a load balancer.
        env = {"GW_REDIS_URL": server.url, "GW_REDIS_BUDGET": f"{budget * 1000:g}ms", "GW_SHARE_PORTS": "true"}
        replicas: list[Gateway] = []
        try:
            for _ in range(args.replicas):
                replicas.append(Gateway(path, port, free_port(), Plan(workers=args.workers), env=env))
            if "accuracy" not in skip:
                seen = decisions(replicas)
                a = accuracy(port, server, window, args.windows)
                outcomes = decisions(replicas)
                outcomes.subtract(seen)
                target = 0.01 if mode == "Exact" else 0.03
                ok &= a["one_error"] <= target and a["keyed_error"] <= target
                print(
                    f"[{mode}, failureMode {args.failure_mode}] accuracy: 1 key x {LIMIT_ONE}/{args.per}: "
                    f"admitted per window {a['one']} "
                    f"(max error {a['one_error']:.2%}); {KEYS} keys x {LIMIT_KEYED}/{args.per}: {a['keyed']} "
                    f"(max error {a['keyed_error']:.2%}; goal {target:.0%}); per admitted request: "
                    f"{a['scripts_per_admitted']:.3f} rate-limit script calls, {a['commands_per_admitted']:.3f} Redis "
                    f"commands in all (heartbeats, config polls included); {a['offered']} requests offered, "
                    f"{a['failed']} failed"
                )
                counts = ", ".join(f"{k} {v}" for k, v in sorted(outcomes.items()) if v)
                print(f"[{mode}] decisions and guarded Redis calls by outcome: {counts}")
            if mode == "Leased" and "cost" not in skip:
                c = cost(port, args.cost_seconds, args.cost_rounds)
                ratio = c["leased"] / c["free"]
                ok &= ratio >= 0.8
                print(
                    f"[cost] wrk median of {args.cost_rounds} x {args.cost_seconds:g}s: "
                    f"no limit {c['free']:,.0f} req/s, "
                    f"Leased limit never reached {c['leased']:,.0f} req/s ({ratio:.2f}x; goal >= 0.8)"
                )
            if mode == "Exact" and "resilience" not in skip:
                r = resilience(port, server, res_window, budget)
                o, loc = r["open"], r["local"]
                local_error = abs(loc["paused"]["admitted"] - LIMIT_ONE) / LIMIT_ONE
                ok &= o["paused"]["failed"] == 0 and local_error <= 0.25
                print(
                    f"[resilience] {LIMIT_ONE}/{args.resilience_per}, Valkey paused for one window: "
                    f"Open: failed {o['paused']['failed']}, p99 {o['before']['p99_ms']:.1f} ms before, "
                    f"{o['paused']['p99_ms']:.1f} ms paused (budget {r['budget_ms']:g} ms), admitted "
                    f"{o['before']['admitted']}/{o['paused']['admitted']}/{o['after']['admitted']} "
                    f"(before/paused/after); Local: admitted {loc['before']['admitted']}/{loc['paused']['admitted']}"
                    f"/{loc['after']['admitted']} (paused error {local_error:.1%}; goal 25%), failed "
                    f"{loc['paused']['failed']}"
                )
        finally:
            for replica in replicas:
                with contextlib.suppress(Exception):
                    replica.stop()
            server.stop()
    return ok
