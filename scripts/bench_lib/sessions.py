"""Sticky sessions and consistent hashing across a fleet (issue 15): do sessions stay on their endpoint?

One Redis server, `--replicas` x `--workers` gw (`gw run` processes reading one config file, each
bound to its own port through GW_LISTENER_PORT_OFFSET, all signing cookies with one
GW_SESSION_KEYS), and a faulty upstream process (tests/support/faulty_upstream.py) serving
endpoints e1-e5 whose answers name themselves (X-Endpoint). Two routes:

  /s  rule with sessionPersistence (type Cookie) to Backend `sticky` (e1-e4, later e5, then one less)
  /k  Backend `keyed` (e1-e4, later e5) with a BackendTrafficPolicy loadBalancer ConsistentHash on X-User

`--type Header` runs the same with /s's sessionPersistence of type Header (X-Session): the endpoints
issue a session id to a request without one and the clients send it back (the cookie run and this
one are separate runs, so each keeps the default run's load and its figures stay comparable).

`--sessions` clients keep a cookie jar (or their issued id) each and send rounds of requests (one per session per
round) through random replicas; a request "moved" when its endpoint is not the session's first.

  1 steady         moved share (goal 0)
  2 scale-out      a replica more (another `gw run` on the same file and Redis)       goal 0
    usr2           every replica's supervisor gets USR2 in turn (workers replaced)  goal 0
    hup            one replica reloads a harmless change (an annotation)            goal 0
    endpoint-added e5 joins `sticky` (edit + HUP): goal 0 for existing sessions; `--new` new
                   sessions start and some reach e5
  3 endpoint-removed  one endpoint leaves `sticky`: sessions not on it that moved (goal 0), where
                   its sessions went (spread over the rest)
  4 consistent-hash   `--keys` X-User values through random replicas twice (replicas agree: goal 0
                   disagreement), e5 joins `keyed`, again: share of keys moved (goal <= 1/N + 2 points)

Each switch runs while the sessions keep sending: a phase's rounds go on until the switch has
completed (every replica serving the new config with every worker), then `--rounds` more.
If this gw rejects sessionPersistence or loadBalancer (`gw check`), the bench runs without it and
says so: the harness still runs end to end, and the figures show what no persistence does.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Sequence
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from bench_lib.reload import Gateway, Plan  # noqa: E402
from bench_lib.resilience import cpu_model, http_get, stop_fleet  # noqa: E402
from bench_lib.session_clients import Answer, Pool, Row, Session  # noqa: E402
from tests.support import valkey  # noqa: E402
from tests.support.faulty_upstream import spawn  # noqa: E402
from tests.support.gateway import config_yaml, free_port  # noqa: E402

ENDPOINTS = ("e1", "e2", "e3", "e4", "e5")
SESSION_NAME = "gw-bench"
SESSION_HEADER = "X-Session"  # --type Header: the id the endpoints issue


def listener_ports(n: int) -> int:
    """The first of n consecutive ports free now, below the kernel's ephemeral range.

    The bench's own thousands of client connections take ephemeral ports: a replica port chosen
    there at the start may be taken by the time the replica that joins later binds it.
    """
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    rng = random.Random()
    for _ in range(200):
        base = rng.randrange(max(1024, low - 12000), low - n)
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
    raise SystemExit(f"bench-sessions: no {n} consecutive free ports below {low}")


class Fleet:
    """The config file, the replicas serving it, and the switches the scenarios make."""

    def __init__(self, args: argparse.Namespace, directory: Path, redis_url: str, endpoints: dict[str, int]) -> None:
        self.args = args
        self.directory = directory
        self.redis_url = redis_url
        self.endpoints = endpoints
        self.path = directory / "gateway.yaml"
        self.base = listener_ports(args.replicas + 1)
        self.keys = ",".join(secrets.token_hex(16) for _ in range(2))
        self.replicas: list[Gateway] = []
        self.sticky = list(ENDPOINTS[:4])
        self.keyed = list(ENDPOINTS[:4])
        self.touches = 0
        self.persistence = True
        self.hashing = True

    # -- the config ---------------------------------------------------------------------------

    def render(self) -> str:
        rule: dict[str, Any] = {"matches": [{"path": {"type": "PathPrefix", "value": "/s"}}],
                                "backendRefs": [{"backend": "sticky"}]}  # fmt: skip
        if self.persistence:
            rule["sessionPersistence"] = (
                {"sessionName": SESSION_HEADER, "type": "Header"}
                if self.args.type == "Header"
                else {"sessionName": SESSION_NAME, "type": "Cookie"}
            )
        routes = [
            {"name": "sessions", "rules": [rule], "annotations": {"bench.gw.dev/touch": str(self.touches)}},
            {"name": "keyed", "rules": [{"matches": [{"path": {"type": "PathPrefix", "value": "/k"}}],
                                         "backendRefs": [{"backend": "keyed"}]}]},
        ]  # fmt: skip
        backends = {
            "sticky": [("127.0.0.1", self.endpoints[n]) for n in self.sticky],
            "keyed": [("127.0.0.1", self.endpoints[n]) for n in self.keyed],
        }
        text = config_yaml(self.base, backends, routes)
        if self.hashing:
            policy = {
                "apiVersion": "gw.dev/v1alpha1",
                "kind": "BackendTrafficPolicy",
                "metadata": {"name": "keyed", "namespace": "default"},
                "spec": {
                    "targetRefs": [{"group": "gw.dev", "kind": "Backend", "name": "keyed"}],
                    "loadBalancer": {"type": "ConsistentHash",
                                     "consistentHash": {"type": "Header", "header": {"name": "X-User"}}},
                },
            }  # fmt: skip
            text += "---\n" + yaml.safe_dump(policy, sort_keys=False)
        return text

    def check(self) -> list[str]:
        """Settle which features this gw accepts (`gw check`); drop the others. Notes for the report."""
        notes = []
        self.path.write_text(self.render())
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        out = subprocess.run([sys.executable, "-m", "gw", "check", str(self.path)], capture_output=True, text=True,
                             env=env, timeout=60)  # fmt: skip
        errors = [line for line in (out.stdout + out.stderr).splitlines() if line.startswith("error:")]
        refused = [e for e in errors if "HTTPRoute default/sessions" in e and "sessionPersistence" in e]
        if refused:
            self.persistence = False
            notes.append(f"sessions measured without persistence: {refused[0].split(': ', 2)[-1]}")
        refused = [e for e in errors if "BackendTrafficPolicy default/keyed" in e]
        if refused:
            self.hashing = False
            notes.append(f"keys measured with the default balancer: {refused[0].split(': ', 2)[-1]}")
        self.path.write_text(self.render())
        return notes

    # -- replicas -----------------------------------------------------------------------------

    def start(self, index: int) -> Gateway:
        env = {"GW_REDIS_URL": self.redis_url, "GW_LISTENER_PORT_OFFSET": str(index), "GW_SESSION_KEYS": self.keys}
        if self.args.budget:
            env["GW_REDIS_BUDGET"] = self.args.budget
        return Gateway(self.path, self.base, free_port(), Plan(workers=self.args.workers), env=env)

    async def status(self, index: int) -> dict[str, Any]:
        return json.loads(await http_get(self.replicas[index].admin, "/status"))  # type: ignore[no-any-return]

    async def _until(self, condition: Any, what: str) -> float:
        """Seconds until `await condition()` is true; a BenchError-like exit after --timeout."""
        started = time.monotonic()
        while not await condition():
            if time.monotonic() - started > self.args.timeout:
                raise SystemExit(
                    f"bench-sessions: {what} not seen after {self.args.timeout:g}s (logs: {self.directory})"
                )
            await asyncio.sleep(0.1)
        return time.monotonic() - started

    async def _serving(self, index: int, version: int | None = None, old: Sequence[int] = ()) -> bool:
        status = await self.status(index)
        workers = status["workers"]
        want = version if version is not None else status["config"]["version"]
        return (
            len(workers) == self.args.workers
            and status["config"]["version"] == want
            and all(w["state"] == "ready" and w["config_version"] == want and w["pid"] not in old for w in workers)
        )

    # -- switches -----------------------------------------------------------------------------

    async def add_replica(self, pool: Pool) -> str:
        index = len(self.replicas)
        self.replicas.append(await asyncio.to_thread(self.start, index))
        await self._until(lambda: self._serving(index), f"replica {index} serving")
        pool.ports.append(self.base + index)
        return f"replica {index} serving on port {self.base + index}"

    async def rolling_usr2(self) -> str:
        took = []
        for index, replica in enumerate(self.replicas):
            old = [w["pid"] for w in (await self.status(index))["workers"]]
            replica.signal(signal.SIGUSR2)
            took.append(await self._until(lambda i=index, o=old: self._serving(i, old=o), f"replica {index} upgraded"))  # type: ignore[misc]
        return "workers replaced in " + "/".join(f"{t:.1f}" for t in took) + " s"

    async def reload(self, what: str) -> str:
        """Write the config, HUP replica 0, wait until every replica serves it with every worker."""
        before = (await self.status(0))["config"]["version"]
        self.path.write_text(self.render())
        self.replicas[0].signal(signal.SIGHUP)

        async def new() -> bool:
            return (await self.status(0))["config"]["version"] != before  # type: ignore[no-any-return]

        took = await self._until(new, f"replica 0 reloading ({what})")
        version = (await self.status(0))["config"]["version"]
        for index in range(len(self.replicas)):
            took += await self._until(
                lambda i=index: self._serving(i, version), f"replica {index} on version {version}"
            )  # type: ignore[misc]
        return f"{what}: version {version} everywhere after {took:.2f} s"

    async def touch(self) -> str:
        self.touches += 1
        return await self.reload("annotation changed")

    async def add_endpoint(self, name: str, backend: str) -> str:
        getattr(self, backend).append(name)
        return await self.reload(f"{name} added to {backend}")

    async def remove_endpoint(self, name: str) -> str:
        self.sticky.remove(name)
        return await self.reload(f"{name} removed from sticky")


class Bench:
    def __init__(self, args: argparse.Namespace, fleet: Fleet) -> None:
        self.args = args
        self.fleet = fleet
        self.rng = random.Random(args.seed)
        header = SESSION_HEADER if args.type == "Header" else ""
        self.pool = Pool([fleet.base + i for i in range(len(fleet.replicas))], args.concurrency, header)
        self.sessions = [Session(i) for i in range(args.sessions)]
        self.rows: list[Row] = []

    async def round(self, phase: str, sessions: Sequence[Session], after: bool) -> None:
        replicas = len(self.pool.ports)
        if self.args.type == "Header":
            jobs = [(self.rng.randrange(replicas), f"/s/{s.number}", {SESSION_HEADER: s.sid}) for s in sessions]
        else:
            jobs = [(self.rng.randrange(replicas), f"/s/{s.number}", {"Cookie": s.cookie_field()}) for s in sessions]

        def done(i: int, replica: int, answer: Answer | None) -> None:
            session = sessions[i]
            if answer is None:
                self.rows.append(Row(phase, session.number, replica, 0, "", after))
                return
            session.keep(answer.cookies)
            session.sid = session.sid or answer.issued
            pins = False
            if answer.status == 200 and answer.endpoint:
                pins = not session.first
                session.first = session.first or answer.endpoint
                session.last = answer.endpoint
            self.rows.append(Row(phase, session.number, replica, answer.status, answer.endpoint, after, pins))

        await self.pool.run(jobs, done)

    async def phase(self, name: str, switch: Awaitable[str] | None, sessions: Sequence[Session] | None = None,
                    rounds: int | None = None) -> str:  # fmt: skip
        """Rounds while the switch runs (at least one), then `rounds` more; what the switch said."""
        sessions = self.sessions if sessions is None else sessions
        said = ""
        if switch is not None:
            task = asyncio.ensure_future(switch)
            while True:
                await self.round(name, sessions, after=False)
                if task.done():
                    break
            said = task.result()
        for _ in range(self.args.rounds if rounds is None else rounds):
            await self.round(name, sessions, after=True)
        return said

    # -- figures ------------------------------------------------------------------------------

    def moved(self, phase: str, numbers: set[int] | None = None, after_only: bool = False) -> dict[str, Any]:
        """Requests of `phase` answered 200 whose endpoint is not their session's first (that one not counted)."""
        firsts = {s.number: s.first for s in self.sessions}
        rows = [r for r in self.rows if r.phase == phase and (numbers is None or r.session in numbers)]
        answered = [r for r in rows if r.status == 200 and r.endpoint and not r.pins]
        later = [r for r in answered if r.after_switch]
        off = [r for r in answered if r.endpoint != firsts[r.session]]
        off_later = [r for r in later if r.endpoint != firsts[r.session]]
        return {
            "requests": len(rows),
            "answered": len(answered),
            "moved_share": _share(len(off), len(answered)),
            "moved_share_after_switch": _share(len(off_later), len(later)),
            "sessions_moved": len({r.session for r in off}),
            "failed": dict(Counter(str(r.status) for r in rows if r.status != 200)),
        }


def _share(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


async def sessions_scenarios(bench: Bench) -> dict[str, Any]:
    fleet, args = bench.fleet, bench.args
    out: dict[str, Any] = {}
    await bench.phase("steady", None, rounds=args.rounds + 1)
    existing = {s.number for s in bench.sessions}
    out["steady"] = bench.moved("steady")
    switches = [
        ("scale-out", lambda: fleet.add_replica(bench.pool)),
        ("usr2", fleet.rolling_usr2),
        ("hup", fleet.touch),
    ]
    for name, switch in switches:
        said = await bench.phase(name, switch())
        out[name] = {**bench.moved(name), "switch": said}

    said = await bench.phase("endpoint-added", fleet.add_endpoint("e5", "sticky"))
    new = [Session(len(bench.sessions) + i) for i in range(args.new)]
    bench.sessions += new
    await bench.phase("endpoint-added-new", None, sessions=new)
    firsts = Counter(s.first for s in new if s.first)
    out["endpoint-added"] = {
        **bench.moved("endpoint-added", existing),
        "switch": said,
        "new_sessions": len(new),
        "new_sessions_by_first_endpoint": dict(sorted(firsts.items())),
        "new_sessions_on_e5": firsts.get("e5", 0),
        "new_sessions_moved": bench.moved("endpoint-added-new"),
    }

    removed = args.remove
    before = {s.number: s.first for s in bench.sessions}
    said = await bench.phase("endpoint-removed", fleet.remove_endpoint(removed))
    later = [r for r in bench.rows if r.phase == "endpoint-removed" and r.after_switch and r.status == 200]
    others = {n for n, e in before.items() if e and e != removed}
    its = {n for n, e in before.items() if e == removed}
    others_moved = {r.session for r in later if r.session in others and r.endpoint != before[r.session]}
    # Where each of the removed endpoint's sessions was answered first once the switch completed.
    landed: dict[int, str] = {}
    for r in later:
        if r.session in its:
            landed.setdefault(r.session, r.endpoint)
    again = {r.session for r in later if r.session in landed and r.endpoint != landed[r.session]}
    out["endpoint-removed"] = {
        "switch": said,
        "removed": removed,
        "sessions": len(before),
        "sessions_on_removed": len(its),
        "other_sessions_moved_share": _share(len(others_moved), len(others)),
        "requests_to_removed_after_switch": sum(1 for r in later if r.endpoint == removed),
        "its_sessions_landed_on": dict(sorted(Counter(landed.values()).items())),
        "its_sessions_moved_again": len(again),
        "failed": dict(Counter(str(r.status) for r in bench.rows if r.phase == "endpoint-removed" and r.status != 200)),
    }
    return out


async def hash_scenario(bench: Bench) -> dict[str, Any]:
    fleet, pool, rng = bench.fleet, bench.pool, bench.rng
    users = [f"user-{i}" for i in range(bench.args.keys)]

    async def spread() -> tuple[dict[str, str], int]:
        seen: dict[str, str] = {}
        failed = 0

        def done(i: int, replica: int, answer: Answer | None) -> None:
            nonlocal failed
            if answer is not None and answer.status == 200 and answer.endpoint:
                seen[users[i]] = answer.endpoint
            else:
                failed += 1

        replicas = len(pool.ports)
        await pool.run([(rng.randrange(replicas), "/k", {"X-User": u}) for u in users], done)
        return seen, failed

    first, failed_a = await spread()
    second, failed_b = await spread()
    both = [u for u in users if u in first and u in second]
    disagree = sum(1 for u in both if first[u] != second[u])
    n_before = len(fleet.keyed)
    said = await fleet.add_endpoint("e5", "keyed")
    third, failed_c = await spread()
    compared = [u for u in users if u in first and u in third]
    moved = [u for u in compared if first[u] != third[u]]
    n = n_before + 1
    return {
        "keys": len(users),
        "balancer": "ConsistentHash Header X-User" if fleet.hashing else "default (loadBalancer rejected)",
        "replicas_disagree_share": _share(disagree, len(both)),
        "switch": said,
        "moved_share": _share(len(moved), len(compared)),
        "goal_share": round(1 / n + 0.02, 4),
        "ideal_share": round(1 / n, 4),
        "moved_to_new_endpoint_share": _share(sum(1 for u in moved if third[u] == "e5"), len(moved)),
        "keys_by_endpoint_before": dict(sorted(Counter(first.values()).items())),
        "keys_by_endpoint_after": dict(sorted(Counter(third.values()).items())),
        "failed": failed_a + failed_b + failed_c,
    }


async def scenarios(bench: Bench) -> dict[str, Any]:
    out: dict[str, Any] = {}
    started = time.monotonic()
    out.update(await sessions_scenarios(bench))
    out["consistent-hash"] = await hash_scenario(bench)
    by_replica = dict(sorted(Counter(r.replica for r in bench.rows).items()))
    out["client"] = {"retries": bench.pool.retries, "errors": dict(bench.pool.errors),
                     "requests": len(bench.rows), "seconds": round(time.monotonic() - started, 1),
                     "session_requests_by_replica": by_replica}  # fmt: skip
    return out


def _fmt(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.2%}"
    if isinstance(value, dict):
        return " ".join(f"{k}:{v}" for k, v in value.items()) or "none"
    return str(value)


def table(result: dict[str, Any]) -> str:
    s, args = result["scenarios"], result["settings"]
    lines = [
        f"bench-sessions: {args['replicas']} replicas x {args['workers']} workers, one Redis ({result['redis']}), "
        f"4 endpoints, {args['sessions']} {args['type'].lower()} sessions x {args['rounds']} rounds per phase "
        "through random replicas; "
        f"CPU {result['cpu']} ({result['cpus']} CPUs)",
        *(f"note: {n}" for n in result["notes"]),
        "",
        f"{'scenario':<26} {'figure':<54} {'measured':>16}  goal",
    ]

    def row(scenario: str, figure: str, value: object, goal: str = "") -> None:
        lines.append(f"{scenario:<26} {figure:<54} {_fmt(value):>16}  {goal}")

    for key, title in (("steady", "1. steady"), ("scale-out", "2. a replica added"),
                       ("usr2", "2. rolling USR2, every one"), ("hup", "2. config HUP of one"),
                       ("endpoint-added", "2. e5 added to the backend")):  # fmt: skip
        p = s[key]
        row(title, "requests off the session's first endpoint", p["moved_share"], "0")
        if key != "steady":
            row("", "  of those sent after the switch completed", p["moved_share_after_switch"], "0")
            lines.append(f"{'':<26}   switch: {p['switch']}")
        row("", "sessions that moved at least once", p["sessions_moved"], "0")
        if p["failed"]:
            row("", "failed answers (status: count)", p["failed"], "none")
    e = s["endpoint-added"]
    row(
        "", f"new sessions ({e['new_sessions']}) whose first endpoint is e5", e["new_sessions_on_e5"], "> 0 (about 1/5)"
    )
    row("", "  new sessions by first endpoint", e["new_sessions_by_first_endpoint"])
    row("", "  their requests off their first endpoint", e["new_sessions_moved"]["moved_share"], "0")
    r = s["endpoint-removed"]
    row(f"3. {r['removed']} removed", "other sessions that moved", r["other_sessions_moved_share"], "0")
    row("", f"its {r['sessions_on_removed']} sessions landed on", r["its_sessions_landed_on"], "spread over the rest")
    row("", "  of them moved again afterwards", r["its_sessions_moved_again"], "0")
    row("", f"requests reaching {r['removed']} after the switch", r["requests_to_removed_after_switch"], "0")
    lines.append(f"{'':<26}   switch: {r['switch']}")
    if r["failed"]:
        row("", "failed answers (status: count)", r["failed"], "none")
    h = s["consistent-hash"]
    row("4. ConsistentHash X-User", f"{h['keys']} keys: replicas disagree", h["replicas_disagree_share"], "0")
    row("", "keys moved when e5 is added", h["moved_share"], f"<= {h['goal_share']:.0%} (1/N {h['ideal_share']:.0%})")
    row("", "  of the moved, to e5", h["moved_to_new_endpoint_share"], "most (Maglev)")
    row("", "  keys by endpoint before", h["keys_by_endpoint_before"])
    row("", "  keys by endpoint after", h["keys_by_endpoint_after"])
    row("", "failed answers", h["failed"], "0")
    lines.append(f"{'':<26}   balancer: {h['balancer']}; switch: {h['switch']}")
    c = s["client"]
    lines.append(f"\nclient: {c['requests']} session requests + {3 * h['keys']} keyed, {c['seconds']} s; "
                 f"retries on closed keep-alive {c['retries']}; errors {c['errors'] or 'none'}; "
                 f"session requests by replica {_fmt(c['session_requests_by_replica'])}")  # fmt: skip
    lines.append(f"logs: {result['logs']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/bench-sessions", description=__doc__.split("\n")[0])
    parser.add_argument("--replicas", type=int, default=3, help="replicas at the start (one more joins)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--sessions", type=int, default=1000)
    parser.add_argument("--new", type=int, default=200, help="sessions started once e5 has joined")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per phase after its switch completed")
    parser.add_argument("--keys", type=int, default=10000, help="distinct X-User values")
    parser.add_argument("--remove", default="e1", choices=ENDPOINTS[:4], help="the endpoint scenario 3 removes")
    parser.add_argument("--concurrency", type=int, default=32, help="requests in flight")
    parser.add_argument("--timeout", type=float, default=60.0, help="longest wait for a switch, seconds")
    parser.add_argument("--seed", type=int, default=15)
    parser.add_argument("--type", choices=("Cookie", "Header"), default="Cookie",
                        help="sessionPersistence type of /s (Header: the endpoints issue X-Session ids)")
    parser.add_argument("--budget", default="", help="GW_REDIS_BUDGET of the replicas (default: gw's, 5ms)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON instead of a table")
    args = parser.parse_args(argv)
    directory = Path(tempfile.mkdtemp(prefix="gw-bench-sessions-"))
    server = valkey.Server(directory / "redis", port=free_port(), binary=shutil.which("redis-server") or "")
    faulty: subprocess.Popen[bytes] | None = None
    fleet: Fleet | None = None
    try:
        server.start()
        issue = SESSION_HEADER if args.type == "Header" else ""
        faulty, _, endpoints = spawn(list(ENDPOINTS), log=directory / "faulty.log", issue_session=issue)
        fleet = Fleet(args, directory, server.url, endpoints)
        notes = fleet.check()
        for i in range(args.replicas):
            fleet.replicas.append(fleet.start(i))
        figures = asyncio.run(scenarios(Bench(args, fleet)))
    finally:
        stop_fleet(fleet.replicas if fleet else [], faulty, server, directory)
    result = {
        "cpu": cpu_model(),
        "cpus": len(os.sched_getaffinity(0)),
        "redis": server.binary or "valkey",
        "settings": vars(args),
        "notes": notes,
        "scenarios": figures,
        "logs": str(directory),
    }
    print(json.dumps(result, indent=2) if args.json else table(result))
    return 0
