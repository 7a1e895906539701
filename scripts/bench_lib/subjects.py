"""The proxies under test: how each is started, checked and measured."""

from __future__ import annotations

import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from . import configs, features, wrk
from .procs import CLK_TCK, BenchError, Process, cpu_ticks, free_port, http_get, wait_http

REPO = Path(__file__).resolve().parents[2]


def core_busy_ticks(core: int) -> tuple[int, int]:
    """(busy, total) jiffies of one CPU from /proc/stat: tells whether the proxy's core was saturated."""
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith(f"cpu{core} "):
            vals = [int(v) for v in line.split()[1:]]
            idle = vals[3] + vals[4]  # idle + iowait
            return sum(vals[:8]) - idle, sum(vals[:8])
    raise BenchError(f"cpu{core} not in /proc/stat")


@dataclass
class RunResult:
    rps: float
    p50_ms: float
    p99_ms: float
    cpu_us_per_req: float
    user_us_per_req: float
    sys_us_per_req: float
    requests: int
    errors: int
    proxy_core_busy: float  # 0..1
    load_core_busy: float
    sink_us_per_req: float = 0.0  # the OTLP sink's CPU (tracing rows), not part of cpu_us_per_req


@dataclass
class Subject:
    """One proxy (or the upstream itself as a baseline) that wrk is pointed at."""

    name: str
    url: str
    host: str | None
    proc: Process | None  # None: nothing of ours on the proxy core (direct baseline)
    admin: str | None = None  # gw's admin base URL
    access_log: Path | None = None  # gw's access log file
    runs: list[RunResult] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    script: str | None = None  # a wrk Lua script that varies the request (--vary-targets)
    headers: tuple[str, ...] = ()  # "Name: value" fields every request carries (--features)
    feature: str | None = None  # the --features row this is (None: a plain gw or nginx)
    sink: Process | None = None  # the row's OTLP sink (tracing rows): its CPU is counted apart
    sink_url: str | None = None
    spans_per_request: float | None = None  # what the sink should receive per request gw served
    trace: dict[str, float] = field(default_factory=dict)  # spans received, exported, dropped (after the runs)
    session: str = ""  # the row's cookie session name: its creations are counted after the runs
    ratelimited: bool = False  # the row's route has a rate limit: its decisions are counted after the runs
    ratelimit: dict[str, float] = field(default_factory=dict)  # decisions by outcome (after the runs)
    sessions: dict[str, float] = field(default_factory=dict)  # gw_sessions_total by result (after the runs)

    def check(self) -> None:
        """One request by hand: a proxy that answers fast with an error would look like a winner."""
        headers = {"Host": self.host} if self.host else {}
        headers.update(line.split(": ", 1) for line in self.headers)
        status, body = http_get(self.url, timeout=10.0, headers=headers or None)
        if status != 200 or body != configs.UPSTREAM_BODY.encode():
            raise BenchError(f"{self.name}: GET {self.url} gave {status} {body[:200]!r}, "
                             f"expected 200 {configs.UPSTREAM_BODY!r}")

    def measure(self, duration: float, warmup: float, proxy_core: int, load_core: int) -> RunResult:
        if warmup > 0:
            wrk.run(self.url, warmup, load_core, host=self.host, script=self.script, headers=self.headers)
        pid = self.proc.pid if self.proc else None
        cpu0 = cpu_ticks(pid) if pid else (0, 0)
        sink0 = cpu_ticks(self.sink.pid) if self.sink else (0, 0)
        pbusy0, ptotal0 = core_busy_ticks(proxy_core)
        lbusy0, ltotal0 = core_busy_ticks(load_core)
        res = wrk.run(self.url, duration, load_core, host=self.host, script=self.script, headers=self.headers)
        cpu1 = cpu_ticks(pid) if pid else (0, 0)
        sink1 = cpu_ticks(self.sink.pid) if self.sink else (0, 0)
        pbusy1, ptotal1 = core_busy_ticks(proxy_core)
        lbusy1, ltotal1 = core_busy_ticks(load_core)
        if self.proc and not self.proc.alive():
            raise BenchError(f"{self.name} died during the run; output:\n{self.proc.log_tail()}")
        n = res.requests or 1
        user_us = (cpu1[0] - cpu0[0]) / CLK_TCK * 1e6 / n
        sys_us = (cpu1[1] - cpu0[1]) / CLK_TCK * 1e6 / n
        run = RunResult(
            rps=res.rps, p50_ms=res.p50_ms, p99_ms=res.p99_ms,
            cpu_us_per_req=user_us + sys_us, user_us_per_req=user_us, sys_us_per_req=sys_us,
            requests=res.requests, errors=res.errors,
            proxy_core_busy=(pbusy1 - pbusy0) / max(1, ptotal1 - ptotal0),
            load_core_busy=(lbusy1 - lbusy0) / max(1, ltotal1 - ltotal0),
            sink_us_per_req=(sum(sink1) - sum(sink0)) / CLK_TCK * 1e6 / n,
        )
        self.runs.append(run)
        return run

    def median(self) -> dict[str, float]:
        keys = ("rps", "p50_ms", "p99_ms", "cpu_us_per_req", "user_us_per_req", "sys_us_per_req",
                "proxy_core_busy", "load_core_busy", "sink_us_per_req")
        out = {k: statistics.median(getattr(r, k) for r in self.runs) for k in keys}
        out["errors"] = sum(r.errors for r in self.runs)
        out["requests"] = sum(r.requests for r in self.runs)
        return out


def _nginx_argv(tmp: Path, conf_name: str, conf: str, core: int) -> list[str]:
    path = tmp / conf_name
    path.write_text(conf)
    # -e: the error log before the config is read, else nginx opens /var/log/nginx/error.log first.
    return ["taskset", "-c", str(core), "nginx", "-p", str(tmp), "-c", str(path),
            "-e", str(tmp / f"{conf_name}.early-error.log"), "-g", "daemon off;"]


def start_upstream(tmp: Path, core: int) -> tuple[Process, int]:
    port = free_port()
    proc = Process("upstream nginx", _nginx_argv(tmp, "upstream.conf", configs.nginx_upstream_conf(tmp, port),
                                                  core), tmp / "upstream.out")
    wait_http(proc, f"http://127.0.0.1:{port}/", timeout=10)
    return proc, port


def start_nginx_proxy(tmp: Path, core: int, upstream_port: int, access_log: bool) -> Subject:
    port = free_port()
    conf = configs.nginx_proxy_conf(tmp, port, upstream_port, access_log)
    proc = Process("nginx proxy", _nginx_argv(tmp, "proxy.conf", conf, core), tmp / "proxy.out")
    url = f"http://127.0.0.1:{port}/"
    wait_http(proc, url, timeout=10)
    subject = Subject("nginx", url, None, proc)
    subject.notes.append("nginx: proxy_pass, upstream keepalive 64, access_log "
                         + ("on" if access_log else "off"))
    return subject


def start_otlp_sink(tmp: Path, core: int, python: str, tag: str) -> tuple[Process, str]:
    """An OTLP sink (bench_lib.otlp_sink) in its own process on `core`: its CPU is not the proxy's."""
    port = free_port()
    script = Path(__file__).resolve().parent / "otlp_sink.py"
    proc = Process(f"otlp sink ({tag})", ["taskset", "-c", str(core), python, str(script), "--port", str(port)],
                   tmp / f"otlp-sink-{tag}.out")
    url = f"http://127.0.0.1:{port}"
    wait_http(proc, url + "/counts", timeout=10)
    return proc, url


def start_gw(tmp: Path, core: int, upstream_port: int, routes: int, python: str,
             ready_timeout: float, vary: bool = False, feature: features.Feature | None = None,
             sink_core: int | None = None) -> Subject:
    port, admin_port = free_port(), free_port()
    yaml_text, target = configs.gw_config(port, upstream_port, routes)
    tag = f"{routes}" + (f"-{feature.name}" if feature else "")
    if feature is not None:
        yaml_text = features.with_feature(yaml_text, feature)
    cfg = tmp / f"gw-{tag}.yaml"
    cfg.write_text(yaml_text)
    access_log = tmp / f"gw-{tag}-access.log"
    env = dict(os.environ)
    env.update({
        "GW_CONFIG": str(cfg),
        "GW_ACCESS_LOG": str(access_log),
        "GW_ADMIN_ADDR": f"127.0.0.1:{admin_port}",
        # One worker: the reference nginx has one too (harmless before the supervisor reads it).
        "GW_WORKERS": "1",
        # Each gw its own embedded Valkey (several run at once with --routes).
        "GW_RUNTIME_DIR": str(tmp / f"gw-{tag}-run"),
        # The checkout first, so the bench measures this tree even when another gw is installed.
        "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p),
    })
    # Tracing is a row's feature: the plain rows never inherit a collector from the caller's shell.
    for name in ("GW_OTLP_ENDPOINT", "GW_TRACE_SAMPLE"):
        env.pop(name, None)
    sink: Process | None = None
    sink_url: str | None = None
    if feature is not None:
        env.update(feature.env)
        if feature.otlp_sink:
            # On the load core by default, beside wrk and the upstream: the collector is not the proxy.
            sink, sink_url = start_otlp_sink(tmp, core if sink_core is None else sink_core, python, tag)
            env["GW_OTLP_ENDPOINT"] = sink_url
    name = "gw" if routes == 1 else f"gw ({routes} routes)"
    if feature is not None:
        name = f"gw+{feature.name}"
    proc = Process(name, ["taskset", "-c", str(core), python, "-m", "gw", "run"],
                   tmp / f"gw-{tag}.out", env=env, cwd=REPO)
    wait_http(proc, f"http://127.0.0.1:{admin_port}/readyz", timeout=ready_timeout)
    subject = Subject(name, f"http://127.0.0.1:{port}{target.path}", target.host, proc,
                      admin=f"http://127.0.0.1:{admin_port}", access_log=access_log)
    if feature is not None:
        subject.headers, subject.feature = feature.headers, feature.name
        subject.sink, subject.sink_url, subject.spans_per_request = sink, sink_url, feature.spans_per_request
        subject.ratelimited = feature.ratelimited
        if feature.session:
            # The cookie a client's first request is given: every measured request then carries it.
            subject.session = feature.session
            cookie = session_cookie(subject.url, subject.host, feature.headers, feature.session)
            subject.headers = (*feature.headers, f"Cookie: {cookie}")
    if vary:
        script = tmp / f"vary-{routes}.lua"
        script.write_text(configs.vary_script(routes))
        subject.script = str(script)
        subject.notes.append(f"{name}: targets varied per request (wrk -s {script.name})")
    return subject


def gw_observability_notes(subject: Subject) -> None:
    """Confirm the access log and metrics were really on, since the bar is measured with them."""
    log, admin = subject.access_log, subject.admin
    assert log is not None and admin is not None
    total = sum(r.requests for r in subject.runs)
    lines = _lines(log)
    # The log also holds the warm-up and check requests, so it has more lines than `total`.
    subject.notes.append(f"{subject.name}: access log on, {lines} lines ({total} requests in measured runs)"
                         if lines else f"{subject.name}: WARNING access log empty")
    try:
        status, body = http_get(admin + "/metrics", timeout=5)
        subject.notes.append(f"{subject.name}: /metrics {status}, {len(body)} bytes")
    except OSError as exc:
        subject.notes.append(f"{subject.name}: WARNING /metrics failed: {exc}")


def session_cookie(url: str, host: str | None, headers: tuple[str, ...], name: str) -> str:
    """`name=value` of the session cookie a first request to `url` is set (the other cookies ignored)."""
    fields = dict(line.split(": ", 1) for line in headers)
    if host:
        fields["Host"] = host
    req = urllib.request.Request(url, headers=fields)
    with urllib.request.urlopen(req, timeout=10) as resp:
        resp.read()
        set_cookies = resp.headers.get_all("Set-Cookie") or []
    for line in set_cookies:
        pair = line.split(";", 1)[0].strip()
        if pair.partition("=")[0] == name:
            return pair
    raise BenchError(f"GET {url} set no {name} cookie (Set-Cookie: {set_cookies or 'none'})")


# A sample of the text exposition: family, {labels}, value.
_COUNTER = re.compile(r'^(gw_ratelimit_decisions_total|gw_sessions_total)\{([^}]*)\} (\S+)$', re.M)


def feature_counters(metrics: str) -> dict[str, dict[str, float]]:
    """gw_ratelimit_decisions_total by outcome and gw_sessions_total by result, summed over the rest."""
    out: dict[str, dict[str, float]] = {}
    for family, labels, value in _COUNTER.findall(metrics):
        label = "outcome" if family == "gw_ratelimit_decisions_total" else "result"
        m = re.search(label + r'="([^"]*)"', labels)
        key = m.group(1) if m else "?"
        out.setdefault(family, {})
        out[family][key] = out[family].get(key, 0.0) + float(value)
    return out


def gw_feature_notes(subject: Subject) -> None:
    """After the runs: the limiter decided every request it served; no session was created.

    Requests served are the access log's lines (warm-ups, the check and the cookie's first request
    included), as the counters count those too.
    """
    assert subject.admin is not None
    status, body = http_get(subject.admin + "/metrics", timeout=5)
    if status != 200:
        subject.notes.append(f"{subject.name}: WARNING /metrics answered {status}")
        return
    counters = feature_counters(body.decode())
    served = _lines(subject.access_log) if subject.access_log else 0
    if subject.ratelimited:
        decisions = counters.get("gw_ratelimit_decisions_total", {})
        admitted = decisions.get("allowed", 0.0) + decisions.get("leased", 0.0)
        shown = ", ".join(f"{k} {int(v)}" for k, v in sorted(decisions.items()) if v) or "none"
        subject.ratelimit = {"requests_served": served, **decisions}
        subject.notes.append(f"{subject.name}: rate-limit decisions {shown} for {served} requests served "
                             f"(admitted {admitted / served if served else 0:.4f} per request)")
        if not served or abs(admitted - served) > 0.01 * served or decisions.get("limited", 0.0):
            subject.notes.append(f"{subject.name}: WARNING the limiter did not admit every request it served")
    if subject.session:
        sessions = counters.get("gw_sessions_total", {})
        subject.sessions = {"requests_served": served, **sessions}
        shown = ", ".join(f"{k} {int(v)}" for k, v in sorted(sessions.items())) or "none"
        subject.notes.append(f"{subject.name}: sessions {shown} for {served} requests served "
                             "(created 1: the cookie's first request; every other request pinned by it)")
        if sessions.get("created", 0.0) != 1 or sessions.get("invalid", 0.0):
            subject.notes.append(f"{subject.name}: WARNING requests were not all pinned by the bench's cookie")


def sink_counts(url: str) -> dict[str, int]:
    status, body = http_get(url + "/counts", timeout=5)
    if status != 200:
        raise BenchError(f"OTLP sink {url}: /counts answered {status}")
    return {k: int(v) for k, v in json.loads(body).items()}


# A sample line of the text exposition: name, optional {labels}, value.
_SAMPLE = re.compile(r'^(gw_trace_spans_(?:exported|dropped)_total)(?:\{reason="([^"]*)"\})? (\S+)$', re.M)


def trace_counters(metrics: str) -> dict[str, float]:
    """gw_trace_spans_exported_total and each reason of gw_trace_spans_dropped_total, from /metrics."""
    out: dict[str, float] = {}
    for name, reason, val in _SAMPLE.findall(metrics):
        key = "exported" if name.endswith("exported_total") else f"dropped {reason or '?'}"
        out[key] = out.get(key, 0.0) + float(val)
    return out


def gw_trace_notes(subject: Subject, settle: float = 10.0) -> None:
    """After the runs: what the sink received against what gw says it exported and dropped.

    gw's exporter sends every FLUSH_INTERVAL (0.5 s), so the sink's count is read once it stood
    still for 1.5 s (or `settle` passed). Requests are counted from the access log (warm-ups and the
    check included), as every request gw served could have been sampled.
    """
    assert subject.sink_url is not None and subject.admin is not None
    deadline = time.monotonic() + settle
    counts = sink_counts(subject.sink_url)
    still_since = time.monotonic()
    while time.monotonic() < deadline and time.monotonic() - still_since < 1.5:
        time.sleep(0.25)
        now = sink_counts(subject.sink_url)
        if now != counts:
            counts, still_since = now, time.monotonic()
    status, body = http_get(subject.admin + "/metrics", timeout=5)
    counters = trace_counters(body.decode()) if status == 200 else {}
    served = _lines(subject.access_log) if subject.access_log else 0
    dropped = sum(v for k, v in counters.items() if k.startswith("dropped"))
    subject.trace = {"requests_served": served, "spans_received": counts["spans"], "posts": counts["posts"],
                     "bad_posts": counts["bad"], "spans_exported": counters.get("exported", 0.0),
                     "spans_dropped": dropped,
                     **{f"spans_{k.replace(' ', '_').replace('-', '_')}": v
                        for k, v in counters.items() if k.startswith("dropped ")}}
    per_request = counts["spans"] / served if served else 0.0
    expected = "" if subject.spans_per_request is None else f" (expected ~{subject.spans_per_request:g})"
    drops = ", ".join(f"{k} {int(v)}" for k, v in sorted(counters.items()) if k.startswith("dropped")) or "none"
    # Exported plus dropped is what gw recorded: it shows the sampling even when the queue overflowed.
    recorded = (counters.get("exported", 0.0) + dropped) / served if served else 0.0
    subject.notes.append(
        f"{subject.name}: OTLP sink received {counts['spans']} spans in {counts['posts']} POSTs "
        f"({counts['bad']} bad) for {served} requests served: {per_request:.4f} spans/request; "
        f"gw exported {int(counters.get('exported', 0))}, dropped: {drops}; "
        f"recorded (exported + dropped) {recorded:.4f} spans/request{expected}"
    )
    if counts["spans"] != counters.get("exported", 0.0):
        subject.notes.append(f"{subject.name}: WARNING the sink received {counts['spans']} spans, "
                             f"gw counts {int(counters.get('exported', 0))} exported")


def _lines(path: Path) -> int:
    if not path.exists():
        return 0
    with open(path, "rb") as f:
        return sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b""))


def machine_info() -> dict[str, str]:
    model = "?"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break

    def version(argv: list[str]) -> str:
        try:
            p = subprocess.run(argv, capture_output=True, text=True, timeout=10)
        except OSError:
            return "?"
        lines = ((p.stdout or "") + (p.stderr or "")).strip().splitlines()
        return lines[0] if lines else "?"

    return {
        "nproc": str(os.cpu_count()),
        "cpu": model,
        "kernel": os.uname().release,
        "python": sys.version.split()[0],
        "nginx": version(["nginx", "-v"]),
        "wrk": version(["wrk", "--version"]).split(" Copyright")[0],
        # gw runs from the working tree, so say whether it had uncommitted changes.
        "gw_commit": version(["git", "-C", str(REPO), "describe", "--always", "--dirty"]),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }


def missing_tools() -> list[str]:
    return [t for t in ("nginx", "wrk", "taskset") if shutil.which(t) is None]
