"""Command line of scripts/bench: start everything, measure interleaved runs, report, clean up."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import tempfile
from pathlib import Path
from types import FrameType
from typing import Any

from . import features, subjects
from .procs import BenchError, stop_all
from .subjects import Subject

# The bar (issue 2): gw against nginx, measured in the same run.
BAR_CPU = 2.0  # gw CPU µs/req ≤ 2 x nginx
BAR_RPS = 0.5  # gw req/s ≥ 0.5 x nginx
BAR_P99 = 2.0  # gw p99 ≤ 2 x nginx
BAR_ROUTES_RPS = 0.9  # issue 3: req/s with many routes ≥ 0.9 x with the first count
FOREIGN_WARN = 0.10  # share of the proxy core used by other processes that makes req/s suspect


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="scripts/bench",
        description="gw vs nginx as a reverse proxy on one pinned core (docs/architecture.md, performance rules).",
    )
    p.add_argument("--runs", type=int, default=5, help="measured runs per proxy; the median is reported")
    p.add_argument("--duration", type=float, default=10.0, help="seconds per measured run")
    p.add_argument("--warmup", type=float, default=2.0, help="seconds of unmeasured load before each run")
    p.add_argument("--quick", action="store_true", help="smoke run: 1 run of 3 s, 1 s warm-up")
    p.add_argument("--routes", default="1",
                   help="HTTPRoute count(s) for gw, comma-separated (e.g. 1,100,10000): one gw per count")
    p.add_argument("--vary-targets", action="store_true",
                   help="gw: a random route's target per request (defeats per-connection lookup reuse)")
    p.add_argument("--features", default="",
                   help=f"comma-separated, one gw each beside the plain one: {', '.join(features.NAMES)}")
    only = p.add_mutually_exclusive_group()
    only.add_argument("--gw-only", action="store_true", help="skip the nginx reference proxy")
    only.add_argument("--nginx-only", action="store_true", help="skip gw (nginx reference only)")
    p.add_argument("--baseline", action="store_true",
                   help="also run wrk straight at the upstream (the load side's ceiling)")
    p.add_argument("--nginx-access-log", action="store_true",
                   help="turn the reference nginx's access log on (off by default, as measured before)")
    p.add_argument("--proxy-core", type=int, default=0, help="core for the proxy under test")
    p.add_argument("--load-core", type=int, default=1, help="core for wrk and the upstream nginx")
    p.add_argument("--python", default=sys.executable, help="interpreter that runs `-m gw run`")
    p.add_argument("--ready-timeout", type=float, default=0.0,
                   help="seconds to wait for gw's /readyz (default grows with --routes)")
    p.add_argument("--json", metavar="PATH", help="write machine-readable results here")
    p.add_argument("--keep", action="store_true", help="keep the temp dir (configs, logs) and print it")
    args = p.parse_args(argv)
    if args.quick:
        args.runs, args.duration, args.warmup = 1, 3.0, 1.0
    try:
        args.route_counts = [int(x) for x in args.routes.split(",") if x.strip()]
    except ValueError:
        p.error(f"--routes: not a comma-separated list of integers: {args.routes!r}")
    if not args.route_counts or min(args.route_counts) < 1:
        p.error("--routes: counts must be ≥ 1")
    args.feature_names = [x.strip() for x in args.features.split(",") if x.strip()]
    unknown = sorted(set(args.feature_names) - set(features.NAMES))
    if unknown:
        p.error(f"--features: unknown {', '.join(unknown)}; known: {', '.join(features.NAMES)}")
    if args.feature_names and 1 not in args.route_counts:
        p.error("--features compares with the plain one-route gw: keep 1 in --routes")
    if args.runs < 1 or args.duration < 1:
        p.error("--runs and --duration must be ≥ 1")
    return args


def _fmt_row(name: str, m: dict[str, float]) -> str:
    split = f"{m['user_us_per_req']:.1f}+{m['sys_us_per_req']:.1f}"
    return (f"{name:<22} {m['rps']:>10,.0f} {m['p99_ms']:>9.2f} {m['cpu_us_per_req']:>10.1f} {split:>11}"
            f" {m['proxy_core_busy'] * 100:>9.0f}% {m['load_core_busy'] * 100:>8.0f}% {int(m['errors']):>7}")


def report(
    subs: list[Subject], args: argparse.Namespace, info: dict[str, str]
) -> tuple[dict[str, Any], bool]:
    """Print the table, ratios and verdicts; return the JSON document and whether every bar passed."""
    print()
    print(f"machine: {info['nproc']} cores, {info['cpu']}, kernel {info['kernel']}, python {info['python']}, "
          f"{info['nginx']}, {info['wrk']}, gw {info['gw_commit']}")
    print(f"method: wrk -t1 -c64 on core {args.load_core} with the upstream; "
          f"proxy on core {args.proxy_core}; median of {args.runs} x {args.duration:g}s runs, "
          f"{args.warmup:g}s warm-up each")
    print()
    print(f"{'proxy':<22} {'req/s':>10} {'p99 ms':>9} {'CPU µs/req':>10} {'user+sys':>11} {'proxy-core':>10}"
          f" {'load-core':>9} {'errors':>7}")
    medians = {s.name: s.median() for s in subs}
    for s in subs:
        print(_fmt_row(s.name, medians[s.name]))
    doc: dict[str, Any] = {
        "machine": info,
        "method": {"runs": args.runs, "duration_s": args.duration, "warmup_s": args.warmup,
                   "proxy_core": args.proxy_core, "load_core": args.load_core, "connections": 64},
        "results": {s.name: {"median": medians[s.name], "runs": [vars(r) for r in s.runs],
                             "url": s.url, "host": s.host, **({"trace": s.trace} if s.trace else {}),
                             **({"ratelimit": s.ratelimit} if s.ratelimit else {}),
                             **({"sessions": s.sessions} if s.sessions else {})}
                    for s in subs},
        "ratios": {}, "verdicts": {},
    }
    ok = True
    for s in subs:
        m = medians[s.name]
        # Whatever kept the proxy's core busy beyond the proxy's own CPU was someone else's work
        # (a shared machine): it steals throughput and latency but not CPU per request.
        foreign = m["proxy_core_busy"] - m["rps"] * m["cpu_us_per_req"] / 1e6
        if s.proc and foreign > FOREIGN_WARN:
            s.notes.append(f"{s.name}: WARNING other processes used ~{foreign * 100:.0f}% of core "
                           f"{args.proxy_core} during its runs: req/s and p99 are understated, "
                           "CPU µs/req still holds")
        if medians[s.name]["errors"]:
            ok = False
            print(f"INVALID: {s.name} had {int(medians[s.name]['errors'])} errors (socket errors or non-2xx)")
    nginx = medians.get("nginx")
    gws = [s for s in subs if s.name.startswith("gw")]
    if nginx:
        print()
        for s in gws:
            g = medians[s.name]
            ratios = {"cpu": g["cpu_us_per_req"] / nginx["cpu_us_per_req"],
                      "rps": g["rps"] / nginx["rps"], "p99": g["p99_ms"] / nginx["p99_ms"]}
            doc["ratios"][f"{s.name}/nginx"] = ratios
            if s.feature is not None:  # a feature row's goal is against the plain gw (below)
                print(f"{s.name}/nginx: CPU/req {ratios['cpu']:.2f}x, req/s {ratios['rps']:.2f}x, "
                      f"p99 {ratios['p99']:.2f}x")
                continue
            ratios = {"cpu": g["cpu_us_per_req"] / nginx["cpu_us_per_req"],
                      "rps": g["rps"] / nginx["rps"], "p99": g["p99_ms"] / nginx["p99_ms"]}
            verdicts = {"cpu": ratios["cpu"] <= BAR_CPU, "rps": ratios["rps"] >= BAR_RPS,
                        "p99": ratios["p99"] <= BAR_P99}
            doc["ratios"][f"{s.name}/nginx"] = ratios
            doc["verdicts"][f"{s.name}/nginx"] = verdicts
            ok &= all(verdicts.values())
            word = {True: "PASS", False: "FAIL"}
            print(f"{s.name}/nginx: "
                  f"CPU/req {ratios['cpu']:.2f}x (bar ≤ {BAR_CPU:g}x {word[verdicts['cpu']]}), "
                  f"req/s {ratios['rps']:.2f}x (bar ≥ {BAR_RPS:g}x {word[verdicts['rps']]}), "
                  f"p99 {ratios['p99']:.2f}x (bar ≤ {BAR_P99:g}x {word[verdicts['p99']]})")
    plain = next((s for s in gws if s.name == "gw"), None)
    for s in gws:
        if s.feature is None or plain is None:
            continue
        base = medians[plain.name]
        ratios = {"cpu": medians[s.name]["cpu_us_per_req"] / base["cpu_us_per_req"],
                  "rps": medians[s.name]["rps"] / base["rps"], "p99": medians[s.name]["p99_ms"] / base["p99_ms"]}
        doc["ratios"][f"{s.name}/gw"] = ratios
        goal = features.GOALS.get(s.feature)
        verdict = ""
        if goal is not None:
            passed = ratios["cpu"] <= goal
            ok &= passed
            doc["verdicts"][f"{s.name}/gw"] = {"cpu": passed}
            verdict = f" (goal ≤ {goal:g}x {'PASS' if passed else 'FAIL'})"
        sink = (f" (+ OTLP sink {medians[s.name]['sink_us_per_req']:.2f} µs/req on core {args.load_core}, "
                "not counted)") if s.sink else ""
        print(f"{s.name} vs gw: CPU/req {ratios['cpu']:.2f}x{verdict}, req/s {ratios['rps']:.2f}x, "
              f"p99 {ratios['p99']:.2f}x{sink}")
    routed = [s for s in gws if s.feature is None]
    if len(routed) > 1:
        first = medians[routed[0].name]
        for s in routed[1:]:
            r = medians[s.name]["rps"] / first["rps"]
            cpu = medians[s.name]["cpu_us_per_req"] / first["cpu_us_per_req"]
            passed = r >= BAR_ROUTES_RPS
            ok &= passed
            doc["ratios"][f"{s.name}/{routed[0].name}"] = {"rps": r, "cpu": cpu}
            doc["verdicts"][f"{s.name}/{routed[0].name}"] = {"rps": passed}
            print(f"{s.name} vs {routed[0].name}: req/s {r:.2f}x (bar ≥ {BAR_ROUTES_RPS:g}x "
                  f"{'PASS' if passed else 'FAIL'}), CPU/req {cpu:.2f}x")
    notes = [n for s in subs for n in s.notes]
    if notes:
        print()
        for n in notes:
            print("note:", n)
    doc["notes"] = notes
    doc["pass"] = ok
    return doc, ok


def _on_term(signum: int, frame: FrameType | None) -> None:
    # Turn SIGTERM into an exception so the finally-block stops every child and removes the temp dir.
    print(f"bench: got signal {signum}, stopping", file=sys.stderr)
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    # Progress goes to stderr, the report to stdout: keep them in order when both are piped.
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    missing = subjects.missing_tools()
    if missing:
        print(f"bench: missing {', '.join(missing)}; install with: apt-get install -y nginx wrk util-linux",
              file=sys.stderr)
        return 2
    usable = os.sched_getaffinity(0)
    if not {args.proxy_core, args.load_core} <= usable or args.proxy_core == args.load_core:
        print(f"bench: needs two distinct usable cores, got proxy {args.proxy_core} "
              f"and load {args.load_core} (usable: {sorted(usable)}); see --proxy-core/--load-core",
              file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _on_term)
    info = subjects.machine_info()
    # mkdtemp, not TemporaryDirectory: the latter's finalizer would delete it even with --keep.
    tmp = Path(tempfile.mkdtemp(prefix="gw-bench-"))
    os.chmod(tmp, 0o755)  # nginx workers run as an unprivileged user and open files below it
    try:
        _, up_port = subjects.start_upstream(tmp, args.load_core)
        subs: list[Subject] = []
        if args.baseline:
            subs.append(Subject("direct (no proxy)", f"http://127.0.0.1:{up_port}/", None, None))
        if not args.gw_only:
            subs.append(subjects.start_nginx_proxy(tmp, args.proxy_core, up_port, args.nginx_access_log))
        if not args.nginx_only:
            for n in args.route_counts:
                timeout = args.ready_timeout or 30.0 + n / 100.0
                print(f"starting gw with {n} route(s)…", file=sys.stderr)
                subs.append(subjects.start_gw(tmp, args.proxy_core, up_port, n, args.python, timeout,
                                                   vary=args.vary_targets))
            for name in args.feature_names:
                print(f"starting gw with {name}…", file=sys.stderr)
                subs.append(subjects.start_gw(tmp, args.proxy_core, up_port, 1, args.python, 30.0,
                                              vary=args.vary_targets, feature=features.build(name),
                                              sink_core=args.load_core))
        for s in subs:
            s.check()
        # Interleave the proxies run by run so that drift (thermal, noisy neighbours) hits all alike.
        for i in range(args.runs):
            for s in subs:
                r = s.measure(args.duration, args.warmup, args.proxy_core, args.load_core)
                print(f"run {i + 1}/{args.runs} {s.name:<20} {r.rps:>10,.0f} req/s  p99 {r.p99_ms:6.2f} ms  "
                      f"{r.cpu_us_per_req:6.1f} µs/req  errors {r.errors}", file=sys.stderr)
        for s in subs:
            if s.admin:
                subjects.gw_observability_notes(s)
            if s.sink_url:
                subjects.gw_trace_notes(s)
            if s.ratelimited or s.session:
                subjects.gw_feature_notes(s)
        doc, ok = report(subs, args, info)
        if args.json:
            Path(args.json).write_text(json.dumps(doc, indent=2) + "\n")
            print(f"\nwrote {args.json}")
        return 0 if ok else 1
    except BenchError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("bench: interrupted", file=sys.stderr)
        return 130
    finally:
        stop_all()
        if args.keep:
            print(f"kept {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
