"""Rate limits under a flood: admitted requests against an exact answer, as fast as wrk can send.

Replicas (supervisors x workers) share one listener port (SO_REUSEPORT) and one Redis server
(Debian's redis-server when installed, else the embedded Valkey); nginx (or, without it, the
test upstream) answers the admitted requests. Every case is a route of its own with a
`RateLimitPolicy` of `algorithm: GCRA, requests: N, per: 1h, burst: N`: nothing refills during
a run, so the right answer is exactly N admitted. One `wrk -t1 -c8` per replica floods the case's
route for `--seconds`; the keyed cases send `X-Key` cycling over KEYS values, N = KEYED_LIMIT each.

Per case: admitted (200), refused (429), 503s, Redis commands per request (INFO commandstats, the
commands scripts run inside not counted), refused requests per gw CPU-second, and the decisions
and guarded Redis calls by outcome (the replicas' metrics).
"""

from __future__ import annotations

import argparse
import contextlib
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from bench_lib import configs  # noqa: E402
from bench_lib.procs import CLK_TCK, Process, cpu_ticks, wait_http  # noqa: E402
from bench_lib.ratelimit import decisions, redis_commands  # noqa: E402
from bench_lib.reload import Gateway, Plan  # noqa: E402
from tests.support import valkey  # noqa: E402
from tests.support.gateway import config_yaml, free_port  # noqa: E402
from tests.support.upstream import Upstream  # noqa: E402

ONE_LIMIT = 1000
KEYS = 20
KEYED_LIMIT = 50
GOAL = {"Exact": 0.01, "Leased": 0.03}

# Counts statuses in every wrk thread and prints them at the end; sends X-Key cycling over KEYS
# values when the case is keyed (the path and key count come as arguments after --).
WRK_SCRIPT = """
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args)
  statuses = {}
  keys = tonumber(args[1]) or 0
  n = 0
end
function request()
  if keys == 0 then return wrk.format(nil, nil, nil) end
  n = n + 1
  return wrk.format(nil, nil, {["X-Key"] = "k" .. (n % keys)})
end
function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
end
function done(summary, latency, requests)
  for _, t in ipairs(threads) do
    for status, count in pairs(t:get("statuses")) do
      io.write(string.format("status %d %d\\n", status, count))
    end
  end
end
"""


@dataclass(frozen=True)
class Case:
    mode: str  # Exact | Leased
    failure_mode: str  # Open | Closed
    keyed: bool

    @property
    def name(self) -> str:
        return f"{self.mode.lower()}-{self.failure_mode.lower()}-{'keyed' if self.keyed else 'one'}"

    @property
    def limit(self) -> int:
        return KEYS * KEYED_LIMIT if self.keyed else ONE_LIMIT


CASES = [Case(m, f, k) for m in ("Exact", "Leased") for f in ("Open", "Closed") for k in (False, True)]


def config(port: int, upstream: int, cases: list[Case]) -> str:
    routes: list[dict[str, Any]] = [
        {"name": c.name, "rules": [{"matches": [{"path": {"type": "PathPrefix", "value": f"/{c.name}"}}],
                                    "backendRefs": [{"backend": "up"}]}]}
        for c in cases
    ] + [{"name": "free", "rules": [{"backendRefs": [{"backend": "up"}]}]}]  # fmt: skip
    text = config_yaml(port, {"up": [("127.0.0.1", upstream)]}, routes)
    for c in cases:
        n = KEYED_LIMIT if c.keyed else ONE_LIMIT
        limit = {"name": "flood", "requests": n, "per": "1h", "burst": n,
                 "key": [{"type": "Header", "name": "X-Key"}] if c.keyed else []}  # fmt: skip
        policy = {"apiVersion": "gw.dev/v1alpha1", "kind": "RateLimitPolicy", "metadata": {"name": c.name},
                  "spec": {"targetRefs": [{"kind": "HTTPRoute", "name": c.name}], "algorithm": "GCRA",
                           "mode": c.mode, "failureMode": c.failure_mode, "limits": [limit]}}  # fmt: skip
        text += "---\n" + yaml.safe_dump(policy)
    return text


def flood(port: int, path: str, keys: int, seconds: float, wrks: int, connections: int, script: Path) -> Counter[int]:
    """`wrks` wrk processes at once on one path; the statuses they got, summed."""
    argv = ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "-s", str(script),
            f"http://127.0.0.1:{port}/{path}", "--", str(keys)]  # fmt: skip
    procs = [subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(wrks)]
    statuses: Counter[int] = Counter()
    for proc in procs:
        out, _ = proc.communicate(timeout=seconds + 60)
        if proc.returncode != 0:
            raise RuntimeError(f"wrk failed ({proc.returncode}): {out}")
        for status, count in re.findall(r"^status (\d+) (\d+)$", out, re.M):
            statuses[int(status)] += int(count)
        sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
        if sock:
            statuses[0] += sum(int(g) for g in sock.groups())
    return statuses


def gw_cpu_seconds(replicas: list[Gateway]) -> float:
    return sum(sum(cpu_ticks(r.proc.pid)) for r in replicas) / CLK_TCK


def measure(case: Case, port: int, replicas: list[Gateway], server: valkey.Server, args: argparse.Namespace,
            script: Path) -> dict[str, Any]:  # fmt: skip
    seen = decisions(replicas)
    commands0, _ = redis_commands(server)
    cpu0 = gw_cpu_seconds(replicas)
    statuses = flood(port, case.name, KEYS if case.keyed else 0, args.seconds, len(replicas), args.connections, script)
    cpu = gw_cpu_seconds(replicas) - cpu0
    commands1, _ = redis_commands(server)
    outcomes = decisions(replicas)
    outcomes.subtract(seen)
    total = sum(statuses.values())
    refused = statuses[429] + statuses[503]
    return {
        "admitted": statuses[200],
        "limited": statuses[429],
        "unavailable": statuses[503],
        "other": total - statuses[200] - refused,
        "requests": total,
        "commands_per_request": (commands1 - commands0) / max(1, total),
        "refused_per_cpu_second": refused / cpu if cpu > 0 else 0.0,
        "cpu": cpu,
        "outcomes": {k: v for k, v in sorted(outcomes.items()) if v},
    }


def proxied_per_cpu_second(port: int, replicas: list[Gateway], args: argparse.Namespace, script: Path) -> float:
    cpu0 = gw_cpu_seconds(replicas)
    statuses = flood(port, "free", 0, args.seconds, len(replicas), args.connections, script)
    return statuses[200] / max(1e-9, gw_cpu_seconds(replicas) - cpu0)


def start_upstream(directory: Path) -> tuple[int, Any]:
    """nginx answering 200 when installed (as the issue measured), else the test upstream."""
    nginx = shutil.which("nginx")
    if nginx is None:
        upstream = Upstream("bench-flood-up").start()
        return upstream.port, upstream
    port = free_port()
    conf = directory / "upstream.conf"
    conf.write_text(configs.nginx_upstream_conf(directory, port))
    proc = Process("nginx", [nginx, "-c", str(conf), "-g", "daemon off;"], directory / "nginx.log")
    wait_http(proc, f"http://127.0.0.1:{port}/", 10)
    return port, proc


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/bench-ratelimit --flood", description=__doc__.split("\n")[0])
    parser.add_argument("--flood", action="store_true")
    parser.add_argument("--replicas", default="1,4", help="comma-separated replica counts, one run each")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--connections", type=int, default=8, help="per wrk (one wrk per replica)")
    parser.add_argument("--cases", default="", help="comma-separated case names (default: all)")
    parser.add_argument("--budget", default="5ms", help="GW_REDIS_BUDGET of the replicas")
    args = parser.parse_args(argv)
    cases = [c for c in CASES if not args.cases or c.name in args.cases.split(",")]
    directory = Path(tempfile.mkdtemp(prefix="gw-bench-flood-"))
    script = directory / "flood.lua"
    script.write_text(WRK_SCRIPT)
    upstream_port, upstream = start_upstream(directory)
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), "?")  # fmt: skip
    print(f"flood: {args.workers} workers per replica, wrk -t1 -c{args.connections} -d{args.seconds:g}s per replica, "
          f"GCRA N per 1h burst N; CPU {cpu}")  # fmt: skip
    ok = True
    try:
        for replica_count in [int(n) for n in args.replicas.split(",")]:
            ok &= run(replica_count, cases, directory, upstream_port, args, script)
    finally:
        upstream.stop()
    return 0 if ok else 1


def run(replica_count: int, cases: list[Case], directory: Path, upstream_port: int, args: argparse.Namespace,
        script: Path) -> bool:  # fmt: skip
    redis_binary = shutil.which("redis-server") or ""
    server = valkey.Server(directory / f"redis-{replica_count}", port=free_port(), binary=redis_binary).start()
    port = free_port()
    path = directory / f"gateway-{replica_count}.yaml"
    path.write_text(config(port, upstream_port, cases))
    env = {"GW_REDIS_URL": server.url, "GW_REDIS_BUDGET": args.budget, "GW_SHARE_PORTS": "true"}
    replicas: list[Gateway] = []
    ok = True
    try:
        for _ in range(replica_count):
            replicas.append(Gateway(path, port, free_port(), Plan(workers=args.workers), env=env))
        time.sleep(0.5)  # let every worker load the script and open its Redis connection
        proxied = proxied_per_cpu_second(port, replicas, args, script)
        print(f"\n{replica_count} x {args.workers} ({server.binary or 'valkey'}): no limit, proxied: "
              f"{proxied:,.0f} req per gw CPU-second")  # fmt: skip
        for case in cases:
            m = measure(case, port, replicas, server, args, script)
            error = (m["admitted"] - case.limit) / case.limit
            fine = abs(error) <= GOAL[case.mode] and m["unavailable"] == 0 and m["other"] == 0
            ok &= fine
            print(
                f"{case.mode:6} {case.failure_mode:6} {'20 keys' if case.keyed else '1 key':7} "
                f"admitted {m['admitted']:>6}/{case.limit} ({error:+.1%}; goal ±{GOAL[case.mode]:.0%}) "
                f"429 {m['limited']:>7} 503 {m['unavailable']:>6} other {m['other']:>3} | "
                f"{m['requests'] / args.seconds:>8,.0f} req/s, {m['commands_per_request']:.4f} Redis cmd/req, "
                f"{m['refused_per_cpu_second']:>8,.0f} refused per gw CPU-s {'ok' if fine else 'MISSED'}"
            )
            print("       " + ", ".join(f"{k} {v}" for k, v in m["outcomes"].items()))
    finally:
        for replica in replicas:
            with contextlib.suppress(Exception):
                replica.stop()
        server.stop()
    return ok
