"""The bench's OTLP sink (scripts/bench_lib/otlp_sink.py), started as the bench starts it: it counts
the spans of what gw's own encoder POSTs, and never counts a body that is not OTLP/JSON."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from gw.observe.metrics import Registry
from gw.observe.tracing import Span, Tracer

SINK = Path(__file__).resolve().parents[1] / "scripts" / "bench_lib" / "otlp_sink.py"


@pytest.fixture
def sink() -> Iterator[str]:
    proc = subprocess.Popen([sys.executable, str(SINK), "--port", "0"], stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline() if proc.stdout else ""  # printed once the socket listens
        assert line.startswith("otlp sink on http://"), line
        yield line.split(" on ", 1)[1].strip()
    finally:
        proc.terminate()
        proc.wait(10)


def counts(url: str) -> dict[str, int]:
    resp = httpx.get(url + "/counts")
    assert resp.status_code == 200
    return dict(json.loads(resp.content))


def batch(tracer: Tracer, attempts: list[int]) -> list[tuple[object, ...]]:
    """Finished requests as gw's exporter queues them (gw.observe.tracing.Tracer.end), each with
    the given number of upstream attempts."""
    out: list[tuple[object, ...]] = []
    for n in attempts:
        span = Span(b"%032x" % 7, tracer.new_span_id(), b"")
        for _ in range(n):
            span.attempt(tracer, "127.0.0.1", 8080)
        out.append((span, 1.0, 2.0, 200, b"GET", "/", "bench.test", "default/bench/0", "upstream", n - 1,
                    "", "", "", ""))
    return out


def test_the_sink_counts_the_spans_gw_posts_and_rejects_what_is_not_otlp(sink: str) -> None:
    tracer = Tracer(sink, 1.0, 5.0, Registry())
    with httpx.Client() as client:  # one keep-alive connection, as gw's exporter uses
        for attempts in ([1, 1, 1], [2, 0]):
            body = tracer.encode(batch(tracer, attempts))
            resp = client.post(tracer.url, content=body, headers={"Content-Type": "application/json"})
            assert resp.status_code == 200
        # A request's spans are its server span and one client span per attempt: 6 + 4.
        first = counts(sink)
        assert (first["spans"], first["posts"], first["bad"]) == (10, 2, 0) and first["bytes"] > 0
        # Two resources and scopes, one without spans: every span counted, wherever it is.
        two = {"resourceSpans": [{"scopeSpans": [{"spans": [{}, {}]}, {"scope": {}}]},
                                 {"scopeSpans": [{"spans": [{}]}]}]}
        assert client.post(tracer.url, json=two).status_code == 200
        assert client.post(tracer.url, content=b"{not json").status_code == 400
        assert client.post(tracer.url, json={"resourceLogs": []}).status_code == 400
        assert client.post(sink + "/v1/logs", json=two).status_code == 404
    after = counts(sink)
    assert (after["spans"], after["posts"], after["bad"]) == (13, 3, 2)
