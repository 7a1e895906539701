"""scripts/bench --features (scripts/bench_lib/features.py): each row's config compiles with its
feature on the bench's route, the session cookie is taken from a first answer, and the counters
the bench reads after the runs are found in the metrics text."""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from gw.config import load_text

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

from bench_lib import configs, features, subjects
from bench_lib.procs import BenchError

ISSUE_19 = ("ratelimit-leased", "resilience", "session-cookie", "all")


@pytest.mark.parametrize("name", ISSUE_19)
def test_each_row_puts_its_feature_on_the_route_and_nothing_conflicts(name: str) -> None:
    feature = features.build(name)
    text, _ = configs.gw_config(8080, 9000, 1)
    result = load_text(features.with_feature(text, feature))
    assert result.errors == []
    for obj, conditions in result.conditions.items():
        assert all(c.status for c in conditions if c.type in ("Accepted", "ResolvedRefs")), (obj, conditions)
    rule = result.config.rules[0]
    every = name == "all"
    assert bool(rule.rate_limit_policies) == (every or name == "ratelimit-leased")
    if rule.rate_limit_policies:
        assert rule.rate_limit_policies[0].mode == "Leased"
    assert (rule.backend_refs[0].backend.resilience is not None) == (every or name == "resilience")
    assert (rule.session_persistence is not None) == (every or name == "session-cookie")
    if rule.session_persistence is not None:
        assert rule.session_persistence.type == "Cookie"
        assert rule.session_persistence.name == feature.session
    if every:  # api-key and jwt both apply: one policy, not two that conflict
        assert rule.security.api_key_auth is not None and rule.security.jwt is not None
        assert {"X-Api-Key", "Authorization"} == {h.split(": ")[0] for h in feature.headers}
    assert features.GOALS[name] == (1.30 if every else 1.10)


class _SetsCookies(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Set-Cookie", "other=1; Path=/")
        if self.headers.get("X-Api-Key") == "k" and self.headers.get("Host") == "h.test":
            self.send_header("Set-Cookie", "sess=abc.def==; Path=/; HttpOnly; SameSite=Lax")
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args: object) -> None: ...


@pytest.fixture
def server() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _SetsCookies)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/"
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_the_session_cookie_is_taken_from_the_first_answer(server: str) -> None:
    # The first request carries the row's fields and Host (a policy may refuse it otherwise).
    assert subjects.session_cookie(server, "h.test", ("X-Api-Key: k",), "sess") == "sess=abc.def=="


def test_no_session_cookie_is_an_error(server: str) -> None:
    with pytest.raises(BenchError, match="set no sess cookie"):
        subjects.session_cookie(server, None, (), "sess")


def test_the_feature_counters_are_summed_by_outcome_and_result() -> None:
    text = "\n".join([
        "# TYPE gw_ratelimit_decisions_total counter",
        'gw_ratelimit_decisions_total{outcome="allowed",policy="default/bench-leased"} 35',
        'gw_ratelimit_decisions_total{outcome="leased",policy="default/bench-leased"} 140461',
        'gw_ratelimit_decisions_total{outcome="leased",policy="default/other"} 1',
        'gw_sessions_total{result="created",rule="default/bench#0",type="Cookie"} 1',
        'gw_sessions_total{result="invalid",rule="default/bench#0",type="Cookie"} 0',
        'gw_http_requests_total{route="default/bench",status="2xx"} 9',
    ])  # fmt: skip
    assert subjects.feature_counters(text) == {
        "gw_ratelimit_decisions_total": {"allowed": 35.0, "leased": 140462.0},
        "gw_sessions_total": {"created": 1.0, "invalid": 0.0},
    }
