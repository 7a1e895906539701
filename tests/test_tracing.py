"""Distributed tracing: W3C Trace Context honoured and propagated, spans exported as OTLP/JSON over
HTTP to a collector the test runs, the trace id in the access log and in problem+json bodies."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import yaml

from gw.observe.tracing import Tracer, cut_traceparent, find_traceparent, parse_traceparent
from gw.settings import Settings, SettingsError
from tests.conftest import StartGateway
from tests.support.gateway import GatewayProcess, config_yaml, free_port
from tests.support.upstream import Upstream
from tests.support.wait import wait_until
from tests.test_observability import scrape, value, wait_for_lines

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"
ROUTES: list[dict[str, object]] = [{"name": "all", "rules": [{"backendRefs": [{"backend": "up"}]}]}]


class Collector:
    """An OTLP/HTTP receiver (JSON encoding): every span POSTed to /v1/traces, kept as a dict."""

    def __init__(self) -> None:
        self.spans: list[dict[str, Any]] = []
        self.posts: list[dict[str, str]] = []  # each POST's headers
        self.arrived = threading.Condition()
        self.gate = threading.Event()  # cleared: a POST is held until it is set again
        self.gate.set()
        collector = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                spans = [
                    span
                    for resource in json.loads(body)["resourceSpans"]
                    for scope in resource["scopeSpans"]
                    for span in scope["spans"]
                ]
                with collector.arrived:
                    collector.posts.append({"path": self.path, "content-type": self.headers["Content-Type"]})
                    collector.spans += spans
                    collector.arrived.notify_all()
                collector.gate.wait(15)
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def trace(self, trace_id: str, count: int, timeout: float = 15.0) -> list[dict[str, Any]]:
        """The spans of `trace_id`, once `count` of them arrived."""
        with self.arrived:
            self.arrived.wait_for(
                lambda: len([s for s in self.spans if s["traceId"] == trace_id]) >= count, timeout=timeout
            )
            spans = [s for s in self.spans if s["traceId"] == trace_id]
        assert len(spans) >= count, f"{len(spans)} spans of trace {trace_id} arrived, {count} expected"
        return spans

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def collector() -> Iterator[Collector]:
    c = Collector()
    yield c
    c.close()


def attributes(span: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for attr in span["attributes"]:
        ((kind, v),) = attr["value"].items()
        out[attr["key"]] = int(v) if kind == "intValue" else v
    return out


def traced(start_gateway: StartGateway, upstream: Upstream, collector_url: str, sample: str = "0") -> GatewayProcess:
    return start_gateway(
        {"up": [("127.0.0.1", upstream.port)]},
        ROUTES,
        env={"GW_OTLP_ENDPOINT": collector_url, "GW_TRACE_SAMPLE": sample},
    )


# -- the header, parsed (unit) ------------------------------------------------------------------------


def test_traceparent_is_parsed_as_the_w3c_format_says() -> None:
    assert parse_traceparent(f"00-{TRACE}-{PARENT}-01".encode()) == (TRACE.encode(), PARENT.encode(), True)
    assert parse_traceparent(f"00-{TRACE}-{PARENT}-00".encode()) == (TRACE.encode(), PARENT.encode(), False)
    # A later version's extra fields are ignored; version ff, zero ids, upper case, bad lengths are not traceparents.
    assert parse_traceparent(f"01-{TRACE}-{PARENT}-01-extra".encode()) is not None
    bad_values = [f"ff-{TRACE}-{PARENT}-01", f"00-{'0' * 32}-{PARENT}-01", f"00-{TRACE}-{'0' * 16}-01"]
    bad_values += [f"00-{TRACE.upper()}-{PARENT}-01", f"00-{TRACE}-{PARENT}-01-x", f"00-{TRACE}-{PARENT}", "junk"]
    for bad in bad_values:
        assert parse_traceparent(bad.encode()) is None, bad


def test_traceparent_is_found_as_callers_spell_it_and_cut_in_any_case() -> None:
    block = b"Host: a\r\nTraceparent: 00-x\r\nX-Tracestate: no\r\n"
    assert find_traceparent(block) == b" 00-x"
    assert find_traceparent(b"traceparent: v\r\nHost: a\r\n") == b" v"
    assert find_traceparent(b"Host: a\r\nX-Traceparent: v\r\n") is None
    assert cut_traceparent(block) == b"Host: a\r\nX-Tracestate: no\r\n"


def test_a_collector_url_that_is_not_http_stops_start_up_with_the_variable_named() -> None:
    with pytest.raises(SettingsError, match="GW_OTLP_ENDPOINT='collector:4318': not an http"):
        Settings.from_env({"GW_OTLP_ENDPOINT": "collector:4318"})
    assert Settings.from_env({"GW_OTLP_ENDPOINT": "http://collector:4318"}).trace_sample == 0.0


def test_the_countdown_to_a_new_trace_follows_the_ratio() -> None:
    from gw.observe.metrics import Registry
    from gw.observe.tracing import Tracer

    def tracer(ratio: float) -> Tracer:
        return Tracer("http://collector:4318", ratio, 1.0, Registry())

    assert tracer(0.0).gap() == 0  # no request starts a trace
    assert {tracer(1.0).gap() for _ in range(10)} == {1}  # every request does
    assert tracer(0.0).url == "http://collector:4318/v1/traces"
    gaps = [tracer(0.25).gap() for _ in range(4000)]
    assert min(gaps) >= 1
    assert 3.5 < sum(gaps) / len(gaps) < 4.5  # a mean of 1/ratio requests between starts


# -- propagation --------------------------------------------------------------------------------------


def test_without_tracing_a_traceparent_reaches_the_upstream_untouched(
    gateway: GatewayProcess, upstream: Upstream
) -> None:
    value_sent = f"00-{TRACE}-{PARENT}-01"
    resp = gateway.connect().request("GET", "/echo", {"traceparent": value_sent, "tracestate": "k=v"})
    assert resp.status == 200
    assert upstream.seen[-1].header("traceparent") == value_sent
    assert upstream.seen[-1].header("tracestate") == "k=v"
    assert upstream.seen[-1].header("X-Request-ID")


def test_each_request_on_a_connection_forwards_its_own_traceparent(gateway: GatewayProcess, upstream: Upstream) -> None:
    # The head's analysis is reused for the same fields (req_memo): the traceparent is not part of it.
    client = gateway.connect()
    sent = [f"00-{n:032x}-{PARENT}-01" for n in range(1, 4)]
    for value_sent in sent:
        assert client.request("GET", "/echo", {"traceparent": value_sent}).status == 200
    assert client.request("GET", "/echo").status == 200
    assert [seen.header("traceparent") for seen in upstream.seen[-4:]] == [*sent, None]


def test_a_filter_that_edits_the_head_keeps_the_traceparent(start_gateway: StartGateway, upstream: Upstream) -> None:
    edit = {"type": "RequestHeaderModifier", "requestHeaderModifier": {"add": [{"name": "X-Added", "value": "1"}]}}
    gw = start_gateway(
        {"up": [("127.0.0.1", upstream.port)]},
        [{"name": "edited", "rules": [{"filters": [edit], "backendRefs": [{"backend": "up"}]}]}],
    )
    value_sent = f"00-{TRACE}-{PARENT}-01"
    assert gw.connect().request("GET", "/echo", {"Traceparent": value_sent}).status == 200
    assert upstream.seen[-1].header("X-Added") == "1"
    assert upstream.seen[-1].header_list("traceparent") == [value_sent]


def test_a_sampled_parent_is_continued_with_gws_span_as_the_upstreams_parent(
    start_gateway: StartGateway, upstream: Upstream, collector: Collector
) -> None:
    gw = traced(start_gateway, upstream, collector.url, sample="0")  # parent-based: the flag decides
    resp = gw.connect().request("GET", "/echo/x", {"traceparent": f"00-{TRACE}-{PARENT}-01", "tracestate": "k=v"})
    assert resp.status == 200
    seen = upstream.seen[-1]
    assert len(seen.header_list("traceparent")) == 1
    version, trace_id, parent_id, flags = seen.header("traceparent").split("-")  # type: ignore[union-attr]
    assert (version, trace_id, flags) == ("00", TRACE, "01")
    assert parent_id != PARENT
    assert seen.header("tracestate") == "k=v"
    assert seen.header("X-Request-ID")
    spans = collector.trace(TRACE, 2)
    (server,) = [s for s in spans if s["kind"] == 2]
    (client,) = [s for s in spans if s["kind"] == 3]
    assert server["parentSpanId"] == PARENT
    assert client["parentSpanId"] == server["spanId"]
    assert client["spanId"] == parent_id  # the upstream's parent is the attempt's CLIENT span
    attrs = attributes(server)
    assert attrs["http.request.method"] == "GET"
    assert attrs["url.path"] == "/echo/x"
    assert attrs["http.response.status_code"] == 200
    assert attrs["server.address"] == "example.test"
    assert attrs["gw.route"] == "default/all/0" or attrs["gw.route"].startswith("default/all")
    assert attrs["gw.backend"]
    assert attrs["network.peer.address"] == "127.0.0.1"
    assert attrs["network.peer.port"] == upstream.port
    assert attrs["gw.retries"] == 0
    assert int(server["startTimeUnixNano"]) <= int(client["startTimeUnixNano"]) <= int(client["endTimeUnixNano"])
    assert int(client["endTimeUnixNano"]) <= int(server["endTimeUnixNano"])
    assert collector.posts[0] == {"path": "/v1/traces", "content-type": "application/json"}


def test_an_unsampled_parent_is_forwarded_as_is_and_records_nothing(
    start_gateway: StartGateway, upstream: Upstream, collector: Collector
) -> None:
    gw = traced(start_gateway, upstream, collector.url, sample="1")  # parent-based: the flag wins over the ratio
    unsampled = f"00-{TRACE}-{PARENT}-00"
    client = gw.connect()
    resp = client.request("GET", "/echo", {"traceparent": unsampled})
    assert resp.status == 200
    assert upstream.seen[-1].header("traceparent") == unsampled
    # A sampled request after it is exported; the unsampled one never is.
    sampled_trace = "1" * 32
    client.request("GET", "/echo", {"traceparent": f"00-{sampled_trace}-{PARENT}-01"})
    collector.trace(sampled_trace, 2)
    assert not [s for s in collector.spans if s["traceId"] == TRACE]


def test_a_request_without_traceparent_starts_a_trace_when_sampled(
    start_gateway: StartGateway, upstream: Upstream, collector: Collector
) -> None:
    gw = traced(start_gateway, upstream, collector.url, sample="1")
    resp = gw.connect().request("GET", "/echo", {"traceparent": "not-a-traceparent"})
    assert resp.status == 200
    values = upstream.seen[-1].header_list("traceparent")
    assert len(values) == 1, values  # an invalid one is replaced, not forwarded alongside
    parsed = parse_traceparent(values[0].encode())
    assert parsed is not None and parsed[2]
    spans = collector.trace(parsed[0].decode(), 2)
    (server,) = [s for s in spans if s["kind"] == 2]
    assert "parentSpanId" not in server  # a root span


def test_a_request_no_route_serves_starts_a_trace_when_sampled(
    start_gateway: StartGateway, upstream: Upstream, collector: Collector
) -> None:
    """Sampling is counted per rule; a request no rule serves draws its own chance (here: certain)."""
    routes = [{"name": "app", "hostnames": ["app.test"], "rules": [{"backendRefs": [{"backend": "up"}]}]}]
    gw = start_gateway({"up": [("127.0.0.1", upstream.port)]}, routes,
                       env={"GW_OTLP_ENDPOINT": collector.url, "GW_TRACE_SAMPLE": "1"})  # fmt: skip
    resp = gw.connect().request("GET", "/nowhere", {"Host": "unknown.test"})
    assert resp.status == 404
    trace_id = json.loads(resp.body)["trace_id"]
    (server,) = collector.trace(trace_id, 1)
    assert "parentSpanId" not in server
    assert attributes(server)["http.response.status_code"] == 404


def test_no_trace_is_started_at_sample_zero(
    start_gateway: StartGateway, upstream: Upstream, collector: Collector
) -> None:
    gw = traced(start_gateway, upstream, collector.url, sample="0")
    assert gw.connect().request("GET", "/echo").status == 200
    assert upstream.seen[-1].header("traceparent") is None


# -- a rule's own ratio (BackendTrafficPolicy telemetry.tracing) ------------------------------------------


def sampled_by_policy(
    start_gateway: StartGateway,
    upstream: Upstream,
    collector: Collector,
    routes: list[dict[str, object]],
    target: dict[str, str],
    fraction: dict[str, int],
    sample: str,
) -> GatewayProcess:
    """A gateway (GW_TRACE_SAMPLE=`sample`) whose rules `target` reaches have `fraction` of their own."""
    port = free_port()
    policy = {
        "apiVersion": "gw.dev/v1alpha1",
        "kind": "BackendTrafficPolicy",
        "metadata": {"name": "sampling", "namespace": "default"},
        "spec": {
            "targetRefs": [{"group": "gateway.networking.k8s.io", **target}],
            "telemetry": {"tracing": {"samplingFraction": fraction}},
        },
    }
    text = config_yaml(port, {"up": [("127.0.0.1", upstream.port)]}, routes) + "---\n" + yaml.safe_dump(policy)
    env = {"GW_OTLP_ENDPOINT": collector.url, "GW_TRACE_SAMPLE": sample}
    gw = start_gateway({}, [], env=env, yaml_text=text)
    gw.port = port  # (the starter picked a port for a config of its own making)
    return gw


def root_trace(seen_traceparent: str | None, collector: Collector) -> dict[str, Any]:
    """The SERVER span of the trace gw started for a request (the upstream saw its traceparent)."""
    assert seen_traceparent is not None, "the request was not sampled"
    parsed = parse_traceparent(seen_traceparent.encode())
    assert parsed is not None and parsed[2]
    (server,) = [s for s in collector.trace(parsed[0].decode(), 2) if s["kind"] == 2]
    assert "parentSpanId" not in server  # a root span: gw started the trace
    return server


def test_a_route_with_its_own_fraction_is_traced_while_gw_trace_sample_is_0(
    start_gateway: StartGateway, upstream: Upstream, collector: Collector
) -> None:
    routes: list[dict[str, object]] = [
        {"name": "traced", "hostnames": ["traced.test"], "rules": [{"backendRefs": [{"backend": "up"}]}]},
        {"name": "plain", "hostnames": ["plain.test"], "rules": [{"backendRefs": [{"backend": "up"}]}]},
    ]
    target = {"kind": "HTTPRoute", "name": "traced"}
    gw = sampled_by_policy(start_gateway, upstream, collector, routes, target, {"numerator": 1, "denominator": 1}, "0")
    client = gw.connect()  # one connection: one worker, whose spans are exported in request order
    for _ in range(3):
        assert client.request("GET", "/echo/plain", {"Host": "plain.test"}).status == 200
        assert upstream.seen[-1].header("traceparent") is None  # not sampled: no trace made up
    servers = []
    for i in range(5):
        assert client.request("GET", f"/echo/traced/{i}", {"Host": "traced.test"}).status == 200
        servers.append(root_trace(upstream.seen[-1].header("traceparent"), collector))
    assert [attributes(s)["url.path"] for s in servers] == [f"/echo/traced/{i}" for i in range(5)]
    assert len({s["traceId"] for s in servers}) == 5
    # Spans of the plain requests would have been queued before the traced ones', which all arrived.
    assert {s["traceId"] for s in collector.spans} == {s["traceId"] for s in servers}


def test_a_rule_at_0_starts_no_trace_under_gw_trace_sample_1_but_continues_a_sampled_parent(
    start_gateway: StartGateway, upstream: Upstream, collector: Collector
) -> None:
    def rule(name: str | None, prefix: str) -> dict[str, object]:
        match = {"path": {"type": "PathPrefix", "value": prefix}}
        return {**({"name": name} if name else {}), "matches": [match], "backendRefs": [{"backend": "up"}]}

    routes: list[dict[str, object]] = [{"name": "shop", "rules": [rule("quiet", "/quiet"), rule(None, "/")]}]
    target = {"kind": "HTTPRoute", "name": "shop", "sectionName": "quiet"}
    gw = sampled_by_policy(start_gateway, upstream, collector, routes, target, {"numerator": 0}, "1")
    client = gw.connect()
    for i in range(5):
        assert client.request("GET", f"/quiet/{i}").status == 200
        assert upstream.seen[-1].header("traceparent") is None  # 0/100: never a trace of its own
    # Parent-based: a caller's sampled trace is recorded on that rule all the same.
    assert client.request("GET", "/quiet/parent", {"traceparent": f"00-{TRACE}-{PARENT}-01"}).status == 200
    (server,) = [s for s in collector.trace(TRACE, 2) if s["kind"] == 2]
    assert server["parentSpanId"] == PARENT
    # The route's other rule goes by GW_TRACE_SAMPLE=1: every request starts a trace.
    assert client.request("GET", "/other").status == 200
    other = root_trace(upstream.seen[-1].header("traceparent"), collector)
    assert attributes(other)["url.path"] == "/other"
    assert {s["traceId"] for s in collector.spans} == {TRACE, other["traceId"]}  # none of the /quiet/ ones


# -- the trace id where an operator looks ----------------------------------------------------------------


def test_problem_bodies_and_the_access_log_carry_the_trace_id(
    start_gateway: StartGateway, upstream: Upstream, collector: Collector
) -> None:
    gw = start_gateway(
        {"up": [("127.0.0.1", upstream.port)], "nowhere": [("127.0.0.1", free_port())]},
        [
            {"name": "all", "hostnames": ["example.test"], "rules": [{"backendRefs": [{"backend": "up"}]}]},
            {"name": "broken", "hostnames": ["broken.test"], "rules": [{"backendRefs": [{"backend": "nowhere"}]}]},
        ],
        env={"GW_OTLP_ENDPOINT": collector.url},
    )
    client = gw.connect()
    not_found = client.request("GET", "/x", {"Host": "unknown.test", "traceparent": f"00-{TRACE}-{PARENT}-01"})
    assert not_found.status == 404
    assert json.loads(not_found.body)["trace_id"] == TRACE
    other = "2" * 32
    refused = client.request("GET", "/x", {"Host": "broken.test", "traceparent": f"00-{other}-{PARENT}-00"})
    assert refused.status == 502
    problem = json.loads(refused.body)
    assert problem["trace_id"] == other  # unsampled: still the caller's trace
    assert len(refused.body) == int(refused.header("Content-Length"))  # type: ignore[arg-type]
    plain = client.request("GET", "/x", {"Host": "unknown.test"})
    assert "trace_id" not in json.loads(plain.body)
    lines = wait_for_lines(gw.access_log, {problem["request_id"], json.loads(plain.body)["request_id"]})
    by_id = {line["request_id"]: line for line in lines}
    assert by_id[problem["request_id"]]["trace_id"] == other
    assert "trace_id" not in by_id[json.loads(plain.body)["request_id"]]
    (server,) = collector.trace(TRACE, 1)  # answered by gw itself: no upstream attempt
    assert attributes(server)["http.response.status_code"] == 404


def test_a_failed_attempt_is_an_error_client_span(
    start_gateway: StartGateway, upstream: Upstream, collector: Collector
) -> None:
    gw = start_gateway(
        {"nowhere": [("127.0.0.1", free_port())]},
        [{"name": "broken", "rules": [{"backendRefs": [{"backend": "nowhere"}]}]}],
        env={"GW_OTLP_ENDPOINT": collector.url, "GW_TRACE_SAMPLE": "1"},
    )
    resp = gw.connect().request("GET", "/x")
    assert resp.status == 502
    trace_id = json.loads(resp.body)["trace_id"]
    spans = collector.trace(trace_id, 1)
    (server,) = [s for s in spans if s["kind"] == 2]
    assert server["status"] == {"code": 2}
    assert attributes(server)["http.response.status_code"] == 502


# -- a collector that is down --------------------------------------------------------------------------


def test_the_exporter_sends_what_trickles_in_during_a_slow_post_at_the_next_flush(collector: Collector) -> None:
    """Sparse sampling: a partial batch goes at a flush, not right after the POST before it (the
    exporter sent back-to-back POSTs of a few requests each, 20 a second at 1% under load)."""
    from gw.observe.metrics import Registry
    from tests.test_bench_otlp_sink import batch

    tracer = Tracer(collector.url, 1.0, 5.0, Registry())
    tracer.flush_interval = 3600.0  # flushes only when the test wakes it
    tracer.queue.extend(batch(tracer, [1, 1]))
    collector.gate.clear()
    tracer.start()
    try:
        tracer.wake.set()
        with collector.arrived:
            assert collector.arrived.wait_for(lambda: len(collector.posts) == 1, timeout=15)
        tracer.queue.extend(batch(tracer, [1, 1, 1]))  # while the first POST is held
        collector.gate.set()
        wait_until(lambda: tracer.flushes == 1, what="the first flush to end")
        assert len(collector.posts) == 1 and len(tracer.queue) == 3
        tracer.wake.set()
        wait_until(lambda: tracer.flushes == 2, what="the second flush")
        assert len(collector.posts) == 2 and not tracer.queue
        assert len(collector.spans) == 2 * 2 + 3 * 2  # each request: its server span and one attempt
    finally:
        collector.gate.set()
        tracer.stop()


def test_requests_are_served_and_spans_counted_as_dropped_when_the_collector_is_down(
    start_gateway: StartGateway, upstream: Upstream
) -> None:
    gw = traced(start_gateway, upstream, f"http://127.0.0.1:{free_port()}", sample="1")
    client = gw.connect()
    for _ in range(5):
        assert client.request("GET", "/echo").status == 200

    def dropped() -> float:
        return value(scrape(gw), "gw_trace_spans_dropped_total", reason="export-failed")

    assert wait_until(dropped, what="dropped spans counted") == 10  # 5 server spans, 5 CLIENT spans
    assert value(scrape(gw), "gw_trace_spans_exported_total") == 0
    assert client.request("GET", "/echo").status == 200


# -- two replicas in a chain -------------------------------------------------------------------------------


def test_one_trace_spans_two_gateways_in_a_chain(
    start_gateway: StartGateway, upstream: Upstream, collector: Collector
) -> None:
    env = {"GW_OTLP_ENDPOINT": collector.url, "GW_TRACE_SAMPLE": "0"}
    inner = start_gateway({"up": [("127.0.0.1", upstream.port)]}, ROUTES, env=env)
    outer = start_gateway({"up": [("127.0.0.1", inner.port)]}, ROUTES, env=env)
    resp = outer.connect().request("GET", "/echo/chain", {"traceparent": f"00-{TRACE}-{PARENT}-01"})
    assert resp.status == 200
    spans = collector.trace(TRACE, 4)
    servers = [s for s in spans if s["kind"] == 2]
    clients = [s for s in spans if s["kind"] == 3]
    assert len(servers) == len(clients) == 2
    (outer_server,) = [s for s in servers if s.get("parentSpanId") == PARENT]
    (outer_client,) = [s for s in clients if s["parentSpanId"] == outer_server["spanId"]]
    (inner_server,) = [s for s in servers if s is not outer_server]
    assert inner_server["parentSpanId"] == outer_client["spanId"]
    (inner_client,) = [s for s in clients if s is not outer_client]
    assert inner_client["parentSpanId"] == inner_server["spanId"]
    assert upstream.seen[-1].header("traceparent") == f"00-{TRACE}-{inner_client['spanId']}-01"


def test_each_retry_is_a_client_span_of_its_own(
    start_gateway: StartGateway, upstream: Upstream, collector: Collector
) -> None:
    routes = [
        {"name": "api", "rules": [{"backendRefs": [{"backend": "up"}], "retry": {"attempts": 3, "codes": [503]}}]}
    ]
    gw = start_gateway(
        {"up": [("127.0.0.1", upstream.port)]}, routes, env={"GW_OTLP_ENDPOINT": collector.url, "GW_TRACE_SAMPLE": "1"}
    )
    resp = gw.connect().request("GET", "/flaky/tracing/2")  # 503 twice, then 200
    assert resp.status == 200
    parents = [seen.header("traceparent") for seen in upstream.seen[-3:]]
    trace_id = parents[0].split("-")[1]  # type: ignore[union-attr]
    spans = collector.trace(trace_id, 4)
    (server,) = [s for s in spans if s["kind"] == 2]
    clients = sorted((s for s in spans if s["kind"] == 3), key=lambda s: attributes(s)["gw.attempt"])
    assert [s["parentSpanId"] for s in clients] == [server["spanId"]] * 3
    # Each attempt told the upstream its own span as the parent.
    assert parents == [f"00-{trace_id}-{s['spanId']}-01" for s in clients]
    assert [s["status"] for s in clients] == [{"code": 2}, {"code": 2}, {}]
    assert attributes(clients[0])["error.type"] == "status"
    assert attributes(clients[2])["http.response.status_code"] == 200
    assert attributes(server)["gw.retries"] == 2
