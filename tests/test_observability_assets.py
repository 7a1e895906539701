"""k8s/observability: the Grafana dashboard and the Prometheus alert rules query metrics that a
running gw really exposes on /metrics, and the kustomization renders valid objects."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import httpx
import kubernetes_validate
import pytest
import yaml

from gw.observe.families import FAMILIES, HISTOGRAM
from tests.support.gateway import REPO, GatewayProcess, free_port
from tests.support.servers import launch_gateway
from tests.support.upstream import Upstream
from tests.support.wait import wait_until
from tests.test_manifests import KUBERNETES_VERSION, one, render

OBSERVABILITY = REPO / "k8s" / "observability"
DASHBOARD = OBSERVABILITY / "grafana-dashboard.json"
RULES = OBSERVABILITY / "prometheus-rules.yaml"
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")
REDIS_UP = "gw_redis_connected 1"
ROUTES: list[dict[str, object]] = [
    {"name": "app", "rules": [{"backendRefs": [{"backend": "app"}]}]},
    {"name": "gone", "hostnames": ["gone.test"], "rules": [{"backendRefs": [{"backend": "gone"}]}]},
]


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def rules() -> dict[str, Any]:
    return yaml.safe_load(RULES.read_text())


def dashboard_exprs() -> list[str]:
    exprs = []
    for panel in dashboard()["panels"]:
        exprs += [target["expr"] for target in panel.get("targets", [])]
    for variable in dashboard()["templating"]["list"]:
        if variable["type"] == "query":
            exprs.append(variable["query"]["query"])
    return exprs


def rule_exprs() -> list[str]:
    return [rule["expr"] for group in rules()["spec"]["groups"] for rule in group["rules"]]


def metric_names(expr: str) -> set[str]:
    """The gw metric names a PromQL expression reads (every gw metric is named gw_…)."""
    return set(re.findall(r"\bgw_[a-z0-9_]+\b", expr))


@pytest.fixture(scope="module")
def exposition(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """/metrics of a real gateway (2 workers) after traffic: answered, proxied, refused upstream."""
    upstream = Upstream("app").start()
    backends = {"app": [("127.0.0.1", upstream.port)], "gone": [("127.0.0.1", free_port())]}
    gateway: GatewayProcess = launch_gateway(
        tmp_path_factory.mktemp("assets"), backends, ROUTES, env={"GW_WORKERS": "2"}
    )
    try:
        for host, path in (("a.test", "/echo"), ("a.test", "/status/503"), ("gone.test", "/"), ("a.test", "/bytes/9")):
            client = gateway.connect()
            client.request("POST", path, {"Host": host}, b"body")
            client.close()
        # (The supervisor's Redis follower may still be connecting to the embedded Valkey.)
        text: list[str] = []
        wait_until(lambda: REDIS_UP in scrape_into(gateway, text), what="the supervisor to reach Redis")
        yield text[-1]
    finally:
        gateway.stop()
        upstream.stop()


def scrape_into(gateway: GatewayProcess, texts: list[str]) -> list[str]:
    texts.append(httpx.get(f"http://127.0.0.1:{gateway.admin}/metrics", timeout=10).text)
    return texts[-1].splitlines()


def exposed(text: str) -> tuple[set[str], dict[str, str]]:
    """The sample names /metrics has, and the type of every family it declares."""
    samples = set(re.findall(r"^(gw_\w+)[{ ]", text, re.M))
    types = dict(re.findall(r"^# TYPE (gw_\w+) (\w+)$", text, re.M))
    return samples, types


def known(name: str, samples: set[str], types: dict[str, str]) -> bool:
    """`name` as PromQL reads it: a sample /metrics has, a family it declares (one whose labelled
    series appear with what the config names: rate limits, auth), or a declared histogram's series."""
    if name in samples or (name in types and types[name] != HISTOGRAM):
        return True
    for suffix in HISTOGRAM_SUFFIXES:
        if name.endswith(suffix) and types.get(name.removesuffix(suffix)) == HISTOGRAM:
            return True
    return False


def test_the_dashboard_is_a_grafana_dashboard_whose_panels_query_prometheus() -> None:
    board = dashboard()
    assert board["title"] and board["uid"] and board["schemaVersion"] >= 36
    panels = [p for p in board["panels"] if p["type"] != "row"]
    assert len({p["id"] for p in board["panels"]}) == len(board["panels"])
    for panel in panels:
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"] and all(t["expr"] and t["refId"] for t in panel["targets"]), panel["title"]
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, panel["title"]
    titles = " ".join(p["title"].lower() for p in board["panels"])
    for topic in ("requests per second", "5xx", "p99", "backend", "upstream", "rate-limit", "authentication",
                  "config version", "workers", "redis"):  # fmt: skip
        assert topic in titles, topic
    exprs = "\n".join(dashboard_exprs())
    for quantile in ("0.5", "0.9", "0.99"):
        assert f"histogram_quantile({quantile}, sum by (route, le)" in exprs
        assert f"histogram_quantile({quantile}, sum by (backend, le)" in exprs


def test_the_rules_file_has_the_alerts_an_operator_needs() -> None:
    doc = rules()
    assert doc["apiVersion"] == "monitoring.coreos.com/v1" and doc["kind"] == "PrometheusRule"
    groups = {group["name"]: group for group in doc["spec"]["groups"]}
    assert set(groups) == {"gw.traffic", "gw.workers", "gw.config", "gw.redis"}
    alerts = {rule["alert"]: rule for group in groups.values() for rule in group["rules"]}
    for name in ("GwHigh5xxRatio", "GwHighP99Latency", "GwWorkersRestarting", "GwConfigUnpublished",
                 "GwConfigRejected", "GwRedisUnavailable"):  # fmt: skip
        assert name in alerts, name
    for name, rule in alerts.items():
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, name
        assert rule["labels"]["severity"] in ("warning", "critical"), name
        assert rule["annotations"]["summary"], name
        assert re.fullmatch(r"\d+[smh]", rule.get("for", "0s")), name
        assert rule["expr"].count("(") == rule["expr"].count(")"), name


def test_every_metric_the_dashboard_and_the_rules_read_is_on_metrics(exposition: str) -> None:
    samples, types = exposed(exposition)
    used = {name for expr in dashboard_exprs() + rule_exprs() for name in metric_names(expr)}
    assert len(used) > 25
    missing = sorted(name for name in used if not known(name, samples, types))
    assert not missing, missing
    # What the latency, traffic and backend panels read has series after traffic, not just a TYPE.
    for name in (
        "gw_http_requests_total",
        "gw_http_request_duration_seconds_bucket",
        "gw_backend_requests_total",
        "gw_backend_request_duration_seconds_bucket",
        "gw_upstream_duration_seconds_bucket",
        "gw_upstream_connect_duration_seconds_bucket",
        "gw_http_request_size_bytes_bucket",
        "gw_http_response_size_bytes_bucket",
        "gw_backend_pool_connections",
        "gw_config_version",
        "gw_redis_connected",
        "gw_workers",
    ):
        assert name in samples, name
    app_5xx = 'gw_backend_requests_total{backend="Backend default/app",status_class="5xx"} 1'
    assert app_5xx in exposition.splitlines()  # the upstream's 503


def test_a_name_that_is_not_exposed_is_caught(exposition: str) -> None:
    samples, types = exposed(exposition)
    assert not known("gw_http_request_duration_seconds_total", samples, types)
    assert not known("gw_http_requests", samples, types)
    assert not known("gw_workers_bucket", samples, types)  # a gauge has no buckets
    assert known("gw_ratelimit_decisions_total", samples, types)  # declared; series come with a policy
    assert known("gw_redis_call_duration_seconds_bucket", samples, types)
    assert {name for name in metric_names('rate(gw_a_total{x="gw_b"}[5m]) / gw_c') } == {"gw_a_total", "gw_b", "gw_c"}


def test_every_family_the_assets_read_is_in_the_catalogue() -> None:
    used = {name for expr in dashboard_exprs() + rule_exprs() for name in metric_names(expr)}
    for name in used:
        base = next((name.removesuffix(s) for s in HISTOGRAM_SUFFIXES if name.removesuffix(s) in FAMILIES), name)
        assert base in FAMILIES, name


def test_the_kustomization_renders_the_dashboard_configmap_rules_and_pod_monitor() -> None:
    objects = render("observability")
    kinds = {(o["kind"], o["metadata"]["name"]) for o in objects}
    assert kinds == {("ConfigMap", "gw-grafana-dashboard"), ("PrometheusRule", "gw"), ("PodMonitor", "gw-gateway")}
    configmap = next(o for o in objects if o["kind"] == "ConfigMap")
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(configmap["data"]["gw.json"]) == dashboard()
    kubernetes_validate.validate(configmap, KUBERNETES_VERSION, strict=True)
    monitor = next(o for o in objects if o["kind"] == "PodMonitor")
    gateway = one(render("overlays/dev"), "Deployment", "gw-gateway")
    pod_labels = gateway["spec"]["template"]["metadata"]["labels"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    (container,) = gateway["spec"]["template"]["spec"]["containers"]
    assert monitor["spec"]["podMetricsEndpoints"][0]["port"] in {p["name"] for p in container["ports"]}
    for obj in objects:
        assert obj["metadata"]["namespace"] == "gw-system"


def test_the_readme_of_observability_names_each_file() -> None:
    text = (OBSERVABILITY / "README.md").read_text()
    for path in OBSERVABILITY.iterdir():
        if path.name != "README.md":
            assert path.name in text, path.name

