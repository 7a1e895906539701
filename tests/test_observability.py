"""Observability from the start: admin health endpoints, Prometheus counters and latency histogram
per route and status class, and a JSON access log line per request (switchable off, sampled)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gw.balancing.probe import ERROR, FAIL, PASS
from gw.errors import ProxyError
from gw.observe.families import FAMILIES, PROXY_ERROR_KINDS, RETRY_REASONS, TIMEOUT_KINDS
from tests.conftest import StartGateway
from tests.support.gateway import REPO, Client, GatewayProcess, Response, config_yaml, free_port, runtime_dir
from tests.support.servers import launch_gateway
from tests.support.upstream import Upstream

ROUTES: list[dict[str, object]] = [
    {"name": "all", "rules": [{"backendRefs": [{"backend": "up"}]}]},
    {"name": "counted", "hostnames": ["counted.test"], "rules": [{"backendRefs": [{"backend": "up"}]}]},
    {"name": "logged", "hostnames": ["logged.test"], "rules": [{"backendRefs": [{"backend": "up"}]}]},
    {"name": "broken", "hostnames": ["broken.test"], "rules": [{"backendRefs": [{"backend": "nowhere"}]}]},
]


@dataclass
class Setup:
    gateway: GatewayProcess
    upstream: Upstream
    backends: dict[str, list[tuple[str, int]]]


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    upstream = Upstream("up").start()
    backends = {"up": [("127.0.0.1", upstream.port)], "nowhere": [("127.0.0.1", free_port())]}
    gateway = launch_gateway(tmp_path_factory.mktemp("observability"), backends, ROUTES)
    yield Setup(gateway, upstream, backends)
    gateway.stop()
    upstream.stop()


def admin_get(gateway: GatewayProcess, path: str) -> httpx.Response:
    return httpx.get(f"http://127.0.0.1:{gateway.admin}{path}", timeout=10)


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(gateway: GatewayProcess) -> Samples:
    resp = admin_get(gateway, "/metrics")
    assert resp.status_code == 200
    samples: Samples = {}
    for family in text_string_to_metric_families(resp.text):
        for s in family.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def requests(gateway: GatewayProcess, host: str, paths: list[str]) -> list[Response]:
    client = gateway.connect()
    out = [client.request("GET", path, {"Host": host}) for path in paths]
    client.close()
    return out


# -- admin endpoints ----------------------------------------------------------------------------


def test_healthz_answers_200(setup: Setup) -> None:
    assert admin_get(setup.gateway, "/healthz").status_code == 200


def test_readyz_answers_200_once_serving(setup: Setup) -> None:
    resp = admin_get(setup.gateway, "/readyz")
    assert resp.status_code == 200
    assert resp.text.strip() == "ready"


# -- metrics --------------------------------------------------------------------------------------


def test_requests_total_counts_per_route_and_status_class(setup: Setup) -> None:
    route = "default/counted"
    before = scrape(setup.gateway)
    responses = requests(setup.gateway, "counted.test", ["/echo"] * 3 + ["/status/404"] * 2 + ["/status/503"])
    assert [r.status for r in responses] == [200, 200, 200, 404, 404, 503]
    after = scrape(setup.gateway)

    def delta(status_class: str) -> float:
        labels = {"route": route, "status_class": status_class}
        return value(after, "gw_http_requests_total", **labels) - value(before, "gw_http_requests_total", **labels)

    assert (delta("2xx"), delta("4xx"), delta("5xx")) == (3, 2, 1)


def test_duration_histogram_is_cumulative_and_counts_every_request(setup: Setup) -> None:
    route, cls = "default/counted", "2xx"
    labels = {"route": route, "status_class": cls}
    before = scrape(setup.gateway)
    requests(setup.gateway, "counted.test", ["/echo"] * 4 + ["/echo?delay=0.05"])
    after = scrape(setup.gateway)
    buckets = sorted(
        (float(dict(key)["le"]), v)
        for (name, key), v in after.items()
        if name == "gw_http_request_duration_seconds_bucket"
        and dict(key)["route"] == route
        and dict(key)["status_class"] == cls
    )
    assert len(buckets) > 2
    counts = [v for _, v in buckets]
    assert counts == sorted(counts), f"buckets are not cumulative: {buckets}"
    assert buckets[-1][0] == float("inf")
    count = value(after, "gw_http_request_duration_seconds_count", **labels)
    assert buckets[-1][1] == count == value(after, "gw_http_requests_total", **labels)
    assert count - value(before, "gw_http_request_duration_seconds_count", **labels) == 5
    assert value(after, "gw_http_request_duration_seconds_sum", **labels) > value(
        before, "gw_http_request_duration_seconds_sum", **labels
    )
    # the request delayed 50 ms upstream is not in a bucket below 50 ms
    below_50ms = [v for le, v in buckets if le < 0.05]
    assert max(below_50ms) < count


# -- access log -----------------------------------------------------------------------------------


def read_log(path: Path) -> list[dict[str, object]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_bytes().splitlines()]


def wait_for_lines(path: Path, request_ids: set[str], timeout: float = 10.0) -> list[dict[str, object]]:
    """Poll the log (flushed every 0.25 s by the worker's sweeper) until every id has a line."""
    deadline = time.monotonic() + timeout
    while True:
        lines = [line for line in read_log(path) if line.get("request_id") in request_ids]
        if {line["request_id"] for line in lines} == request_ids or time.monotonic() > deadline:
            return lines
        time.sleep(0.05)


def test_access_log_has_one_json_line_per_request(setup: Setup) -> None:
    paths = ["/echo/one", "/echo/two?x=1", "/status/404"]
    responses = requests(setup.gateway, "logged.test", paths)
    ids = [r.header("x-request-id") or "" for r in responses]
    assert all(ids) and len(set(ids)) == 3
    lines = wait_for_lines(setup.gateway.access_log, set(ids))
    by_id = {line["request_id"]: line for line in lines}
    assert len(lines) == 3 == len(by_id)
    for request_id, path, resp in zip(ids, paths, responses, strict=True):
        line = by_id[request_id]
        assert line["method"] == "GET"
        assert line["path"] == path
        assert line["status"] == resp.status
        assert line["route"] == "default/logged"
        assert isinstance(line["duration_ms"], int | float) and line["duration_ms"] >= 0
        assert line["upstream"] == f"127.0.0.1:{setup.upstream.port}"


def test_access_log_line_carries_the_request_id_the_client_sent(setup: Setup) -> None:
    client = setup.gateway.connect()
    resp = client.request("GET", "/echo", {"Host": "logged.test", "X-Request-ID": "client-chosen-7"})
    assert resp.header("x-request-id") == "client-chosen-7"
    (line,) = wait_for_lines(setup.gateway.access_log, {"client-chosen-7"})
    assert line["status"] == 200
    assert line["route"] == "default/logged"


def test_access_log_records_a_gateway_error_under_the_id_of_its_problem(setup: Setup) -> None:
    (resp,) = requests(setup.gateway, "broken.test", ["/echo"])
    assert resp.status == 502
    request_id = json.loads(resp.body)["request_id"]
    (line,) = wait_for_lines(setup.gateway.access_log, {request_id})
    assert line["status"] == 502
    assert line["route"] == "default/broken"


# Answers gw makes itself: no upstream body, but bytes_out still counts the content they send.
ANSWERING: list[dict[str, object]] = [
    {"name": "proxied", "hostnames": ["proxied.test"], "rules": [{"backendRefs": [{"backend": "up"}]}]},
    {"name": "limited", "hostnames": ["limited.test"], "rules": [{"backendRefs": [{"backend": "up"}]}]},
    {"name": "moved", "hostnames": ["moved.test"],
     "rules": [{"filters": [{"type": "RequestRedirect", "requestRedirect": {"hostname": "proxied.test"}}]}]},
]  # fmt: skip
LIMITED = """apiVersion: gw.dev/v1alpha1
kind: RateLimitPolicy
metadata: {name: one-an-hour, namespace: default}
spec:
  targetRefs: [{kind: HTTPRoute, name: limited}]
  limits: [{requests: 1, per: 1h}]
"""


@pytest.fixture(scope="module")
def answering(setup: Setup, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    """A gateway with a limited route, a redirecting one and no catch-all (other hosts get 404)."""
    gateway = launch_gateway(tmp_path_factory.mktemp("answering"), setup.backends, ANSWERING, extra_yaml=LIMITED)
    yield gateway
    gateway.stop()


def logged(gateway: GatewayProcess, resp: Response) -> dict[str, object]:
    request_id = resp.header("X-Request-ID") or ""
    (line,) = wait_for_lines(gateway.access_log, {request_id})
    assert line["status"] == resp.status
    return line


def logged_bytes_out(gateway: GatewayProcess, resp: Response) -> object:
    return logged(gateway, resp)["bytes_out"]


def proxied_first(gateway: GatewayProcess) -> Client:
    """A connection whose first response carried an upstream body (what bytes_out counted last)."""
    client = gateway.connect()
    first = client.request("GET", "/echo/a-body-of-some-length", {"Host": "proxied.test"})
    assert first.status == 200 and logged_bytes_out(gateway, first) == len(first.body) > 0
    return client


def test_a_429_is_logged_with_the_bytes_of_its_problem_document(answering: GatewayProcess) -> None:
    client = proxied_first(answering)
    statuses = [client.request("GET", "/echo", {"Host": "limited.test"}) for _ in range(2)]
    refused = statuses[-1]
    assert refused.status == 429 and len(refused.body) == int(refused.header("Content-Length") or "") > 100
    assert logged_bytes_out(answering, refused) == len(refused.body)


def test_a_refusal_after_a_proxied_response_names_no_upstream_in_its_log_line(answering: GatewayProcess) -> None:
    """The upstream member says where the request went: a refused one went nowhere."""
    client = proxied_first(answering)
    refused = [client.request("GET", "/echo", {"Host": "limited.test"}) for _ in range(2)][-1]
    assert refused.status == 429
    assert logged(answering, refused)["upstream"] is None


def test_a_400_for_a_malformed_request_is_logged_with_the_bytes_of_its_problem_document(
    answering: GatewayProcess,
) -> None:
    client = proxied_first(answering)
    client.send(b"GET / HTTP/1.1\r\nHost: proxied.test\r\nHost: other.test\r\n\r\n")
    resp = client.read_response()
    assert resp.status == 400 and len(resp.body) == int(resp.header("Content-Length") or "") > 100
    assert logged_bytes_out(answering, resp) == len(resp.body)


def test_a_404_without_a_route_is_logged_with_the_bytes_of_its_problem_document(answering: GatewayProcess) -> None:
    client = proxied_first(answering)
    resp = client.request("GET", "/anything", {"Host": "nowhere.test"})
    assert resp.status == 404 and len(resp.body) == int(resp.header("Content-Length") or "") > 100
    assert logged_bytes_out(answering, resp) == len(resp.body)


def test_gw_s_answers_to_head_and_its_redirects_are_logged_with_no_bytes_out(answering: GatewayProcess) -> None:
    """bytes_out counts content sent: none for HEAD (RFC 9110 §9.3.2) nor for a bodiless redirect."""
    client = proxied_first(answering)
    head = client.request("HEAD", "/anything", {"Host": "nowhere.test"})
    assert head.status == 404 and int(head.header("Content-Length") or "") > 100 and head.body == b""
    assert logged_bytes_out(answering, head) == 0
    client = proxied_first(answering)
    moved = client.request("GET", "/x", {"Host": "moved.test"})
    assert moved.status == 302 and moved.header("Content-Length") == "0"
    assert logged_bytes_out(answering, moved) == 0


def run_counting_lines(
    setup: Setup, directory: Path, env: dict[str, str], count: int
) -> tuple[list[dict[str, object]], GatewayProcess]:
    """Serve `count` requests on a fresh gateway, stop it (it flushes on exit), read its log."""
    gateway = launch_gateway(directory, setup.backends, ROUTES, env=env)
    try:
        statuses = {r.status for r in requests(gateway, "logged.test", ["/echo"] * count)}
    finally:
        gateway.stop()
    assert statuses == {200}
    return read_log(gateway.access_log), gateway


def test_access_log_sample_zero_logs_nothing(setup: Setup, tmp_path: Path) -> None:
    lines, _ = run_counting_lines(setup, tmp_path, {"GW_ACCESS_LOG_SAMPLE": "0"}, 50)
    assert lines == []


def test_access_log_sample_one_half_logs_a_subset(setup: Setup, tmp_path: Path) -> None:
    lines, _ = run_counting_lines(setup, tmp_path, {"GW_ACCESS_LOG_SAMPLE": "0.5"}, 300)
    # Binomial(300, 0.5): outside 10%..90% has a probability far below 1e-40.
    assert 30 <= len(lines) <= 270
    assert len({line["request_id"] for line in lines}) == len(lines)


# -- destinations: stdout by default, nothing at all when off --------------------------------------


def serve_and_capture_stdout(setup: Setup, directory: Path, env: dict[str, str], count: int) -> bytes:
    """Run a gateway in `directory` with stdout captured; serve `count` requests; stop; its stdout."""
    port, admin = free_port(), free_port()
    config = directory / "gateway.yaml"
    config.write_text(config_yaml(port, setup.backends, ROUTES))
    base = {k: v for k, v in os.environ.items() if not k.startswith("GW_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "gw", "run"],
        env={**base, "GW_CONFIG": str(config), "GW_ADMIN_ADDR": f"127.0.0.1:{admin}", "PYTHONPATH": str(REPO),
             "GW_RUNTIME_DIR": runtime_dir(), **env},
        cwd=directory,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert proc.stderr is not None
        while not (line := proc.stderr.readline()).startswith(b"gw: serving"):
            assert line, "gateway exited before serving"
        gateway = GatewayProcess(config, port, admin, env, directory / "unused.log")
        assert {r.status for r in requests(gateway, "logged.test", ["/echo"] * count)} == {200}
        proc.terminate()
        out, _ = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return out


def test_access_log_goes_to_stdout_by_default(setup: Setup, tmp_path: Path) -> None:
    out = serve_and_capture_stdout(setup, tmp_path, {}, 5)
    lines = [json.loads(line) for line in out.splitlines()]
    assert len(lines) == 5
    assert all(line["route"] == "default/logged" for line in lines)


def test_access_log_off_writes_nothing(setup: Setup, tmp_path: Path) -> None:
    out = serve_and_capture_stdout(setup, tmp_path, {"GW_ACCESS_LOG": "off"}, 5)
    assert out == b""
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gateway.yaml"]  # no file named "off" either


def test_status_reports_gateway_api_conditions_of_the_served_objects(setup: Setup) -> None:
    status = admin_get(setup.gateway, "/status").json()
    api = status["gatewayAPI"]
    gateways = {f"{g['namespace']}/{g['name']}": g for g in api["gateways"]} if api["gateways"] else {}
    assert gateways, api
    gateway = next(iter(gateways.values()))
    accepted = [c for c in gateway["conditions"] if c["type"] == "Accepted"]
    assert accepted and accepted[0]["status"] == "True"
    assert gateway["listeners"][0]["attachedRoutes"] >= 1
    assert all(r["parents"] for r in api["httpRoutes"])


def test_access_log_lines_reach_a_pipe_in_whole_blocks() -> None:
    """Workers share stdout; a pipe takes writes of up to PIPE_BUF whole, so no line is split."""
    import select

    from gw.observe.accesslog import _pipe_blocks

    lines = [b"%d" % i * 90 + b"\n" for i in range(400)] + [b"z" * (select.PIPE_BUF + 10) + b"\n"]
    blocks = _pipe_blocks(lines)
    assert b"".join(blocks) == b"".join(lines)
    assert all(len(b) <= select.PIPE_BUF or b.count(b"\n") == 1 for b in blocks)
    assert all(b.endswith(b"\n") for b in blocks)


# -- every family documented, counters there from the start -------------------------------------


def test_a_fresh_gateway_exports_every_family_with_help_type_and_its_counters_at_zero(
    start_gateway: StartGateway, upstream: Upstream
) -> None:
    gateway = start_gateway({"up": [("127.0.0.1", upstream.port)]}, ROUTES[:1], env={"GW_WORKERS": "2"})
    text = admin_get(gateway, "/metrics").text
    helps = set(re.findall(r"^# HELP (\w+) ", text, re.M))
    types = dict(re.findall(r"^# TYPE (\w+) (\w+)$", text, re.M))
    assert helps == types.keys() == FAMILIES.keys()
    assert types == {name: family.type for name, family in FAMILIES.items()}
    parsed = {family.name: family for family in text_string_to_metric_families(text)}
    assert all(family.documentation for family in parsed.values())
    samples = scrape(gateway)
    zeros = {
        ("gw_worker_restarts_total", (("slot", "0"),)),
        ("gw_worker_restarts_total", (("slot", "1"),)),
        ("gw_internal_errors_total", ()),
        ("gw_upstream_resets_total", ()),
        ("gw_redis_breaker_opened_total", ()),
        *(("gw_config_reloads_total", (("result", r),)) for r in ("applied", "unchanged", "rejected", "fleet")),
        *(("gw_proxy_errors_total", (("kind", k),)) for k in PROXY_ERROR_KINDS),
        *(("gw_upstream_retries_total", (("reason", r),)) for r in RETRY_REASONS),
        *(("gw_timeouts_total", (("kind", k),)) for k in TIMEOUT_KINDS),
        *(("gw_redis_calls_total", (("outcome", o),)) for o in ("timeout", "error", "open")),
        *(("gw_health_checks_total", (("result", r),)) for r in ("pass", "fail", "error")),
    }
    for name, labels in zeros:
        assert samples.get((name, frozenset(labels))) == 0, (name, labels)
    for name, labels in samples:  # a labelled family has no series without its labels
        family = FAMILIES.get(name) or FAMILIES[name.rsplit("_", 1)[0]]  # histogram _bucket, _sum, _count
        assert not family.label or family.label in dict(labels), (name, labels)


def _source(*parts: str) -> str:
    return "\n".join(p.read_text() for part in parts for p in sorted((REPO / part).rglob("*.py")))


def test_every_family_the_code_counts_is_in_the_catalogue() -> None:
    code = _source("gw", "supervisor")
    named = set(re.findall(r'(?:inc|gauge|histogram)\(\s*"(gw_\w+)"', code))
    named |= set(re.findall(r'\("(gw_\w+_total)", \(', code))  # counter keys built once (rate limits)
    assert len(named) > 15 and named <= FAMILIES.keys(), named - FAMILIES.keys()


def test_the_zero_series_name_what_the_code_counts() -> None:
    def subclasses(cls: type[ProxyError]) -> list[type[ProxyError]]:
        return [cls, *(s for sub in cls.__subclasses__() for s in subclasses(sub))]

    import gw.policies.registry  # noqa: F401 - every phase's errors are subclasses, whichever tests ran before

    errors = subclasses(ProxyError)
    # RateLimited answers 503 under its own kind when the limit cannot be read (failureMode Closed).
    assert set(PROXY_ERROR_KINDS) == {e.kind for e in errors if e.status >= 500} | {"rate-limit-unavailable"}
    proxy = _source("gw/proxy")
    assert set(RETRY_REASONS) == {e.kind for e in errors if e.attempt_failed} | set(
        re.findall(r'"gw_upstream_retries_total", reason="([\w-]+)"', proxy)
    ) | {"status"}
    assert set(TIMEOUT_KINDS) == set(re.findall(r'"gw_timeouts_total", kind="([\w-]+)"', proxy))
    assert set(FAMILIES["gw_redis_calls_total"].values) == set(
        re.findall(r'_count\("(\w+)"\)', (REPO / "gw/state/guard.py").read_text())
    )
    assert set(FAMILIES["gw_health_checks_total"].values) == {PASS, FAIL, ERROR}
    assert set(FAMILIES["gw_config_reloads_total"].values) == set(
        re.findall(r'"gw_config_reloads_total", result="(\w+)"', _source("supervisor"))
    )
