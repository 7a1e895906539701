"""HTTPRoute filters applied by the proxy (Gateway API HTTPRouteFilter): header modifiers,
RequestRedirect and URLRewrite, end to end through a real gateway to a real upstream."""

from __future__ import annotations

import hashlib
import json

import httpx
import pytest

from tests.conftest import StartGateway
from tests.support.gateway import GatewayProcess, free_port
from tests.support.upstream import Upstream

UP = {"backend": "up"}


@pytest.fixture(scope="module")
def gw(module_upstream: Upstream, module_start_gateway: StartGateway) -> GatewayProcess:
    routes = [
        {
            "name": "modify",
            "rules": [
                {
                    "matches": [{"path": {"type": "PathPrefix", "value": "/modify"}}],
                    "filters": [
                        {
                            "type": "RequestHeaderModifier",
                            "requestHeaderModifier": {
                                "set": [{"name": "X-Set", "value": "by-gateway"}],
                                "add": [{"name": "X-Added", "value": "added"}],
                                "remove": ["X-Remove-Me"],
                            },
                        },
                        {
                            "type": "ResponseHeaderModifier",
                            "responseHeaderModifier": {
                                "set": [{"name": "X-Response", "value": "set"}],
                                "remove": ["Content-Type"],
                            },
                        },
                    ],
                    "backendRefs": [UP],
                },
                {
                    "matches": [{"path": {"type": "PathPrefix", "value": "/old"}}],
                    "filters": [
                        {
                            "type": "URLRewrite",
                            "urlRewrite": {
                                "hostname": "rewritten.test",
                                "path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/new"},
                            },
                        }
                    ],
                    "backendRefs": [UP],
                },
                {
                    "matches": [{"path": {"type": "PathPrefix", "value": "/moved"}}],
                    "filters": [
                        {
                            "type": "RequestRedirect",
                            "requestRedirect": {
                                "scheme": "https",
                                "hostname": "www.example.test",
                                "statusCode": 301,
                                "path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/here"},
                            },
                        }
                    ],
                },
                {"backendRefs": [UP]},
            ],
        }
    ]
    return module_start_gateway({"up": [("127.0.0.1", module_upstream.port)]}, routes)


def echoed_headers(body: bytes) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for name, value in json.loads(body)["headers"]:
        out.setdefault(name.lower(), []).append(value)
    return out


def test_request_header_modifier_sets_adds_and_removes(gw: GatewayProcess) -> None:
    client = gw.connect()
    resp = client.request("GET", "/modify/x", headers={"X-Set": "from-client", "X-Remove-Me": "1", "X-Added": "orig"})
    assert resp.status == 200
    seen = echoed_headers(resp.body)
    assert seen["x-set"] == ["by-gateway"]
    assert "x-remove-me" not in seen
    assert seen["x-added"] == ["orig,added"]
    assert seen["x-request-id"] == [resp.header("x-request-id")]


def test_response_header_modifier_edits_the_response(gw: GatewayProcess) -> None:
    resp = gw.connect().request("GET", "/modify/y")
    assert resp.header("x-response") == "set"
    assert resp.header("content-type") is None
    assert resp.header("content-length") is not None  # framing fields are not the modifier's to drop


def test_url_rewrite_replaces_the_matched_prefix_and_the_host(gw: GatewayProcess) -> None:
    resp = gw.connect().request("GET", "/old/page?q=1")
    echoed = json.loads(resp.body)
    assert echoed["target"] == "/new/page?q=1"
    assert echoed_headers(resp.body)["host"] == ["rewritten.test"]


def test_request_redirect_answers_without_the_upstream(gw: GatewayProcess, module_upstream: Upstream) -> None:
    before = len(module_upstream.seen)
    client = gw.connect()
    resp = client.request("GET", "/moved/a?b=c")
    assert resp.status == 301
    assert resp.header("location") == "https://www.example.test/here/a?b=c"
    assert resp.header("x-request-id")
    assert len(module_upstream.seen) == before
    # the connection stays usable
    assert client.request("GET", "/plain").status == 200


def test_rules_without_filters_are_untouched(gw: GatewayProcess) -> None:
    resp = gw.connect().request("GET", "/plain", headers={"X-Set": "client"})
    assert echoed_headers(resp.body)["x-set"] == ["client"]
    assert resp.header("x-response") is None


@pytest.fixture(scope="module")
def cors_gw(module_upstream: Upstream, module_start_gateway: StartGateway) -> GatewayProcess:
    routes = [
        {
            "name": "api",
            "rules": [
                {
                    "filters": [
                        {
                            "type": "CORS",
                            "cors": {
                                "allowOrigins": ["https://app.example.test"],
                                "allowMethods": ["GET", "PUT"],
                                "allowHeaders": ["X-Token"],
                                "exposeHeaders": ["X-Upstream"],
                                "maxAge": 600,
                            },
                        }
                    ],
                    "backendRefs": [UP],
                }
            ],
        }
    ]
    return module_start_gateway({"up": [("127.0.0.1", module_upstream.port)]}, routes)


def test_cors_preflight_is_answered_by_the_gateway(cors_gw: GatewayProcess, module_upstream: Upstream) -> None:
    before = len(module_upstream.seen)
    resp = cors_gw.connect().request(
        "OPTIONS",
        "/items",
        headers={
            "Origin": "https://app.example.test",
            "Access-Control-Request-Method": "PUT",
            "Access-Control-Request-Headers": "X-Token",
        },
    )
    assert resp.status == 204
    assert resp.header("access-control-allow-origin") == "https://app.example.test"
    assert "PUT" in (resp.header("access-control-allow-methods") or "")
    assert resp.header("access-control-max-age") == "600"
    assert resp.header("content-length") is None
    assert len(module_upstream.seen) == before


def test_cors_headers_are_added_to_an_allowed_origins_response(cors_gw: GatewayProcess) -> None:
    resp = cors_gw.connect().request("GET", "/items", headers={"Origin": "https://app.example.test"})
    assert resp.status == 200
    assert resp.header("access-control-allow-origin") == "https://app.example.test"
    assert resp.header("access-control-expose-headers") == "X-Upstream"


def test_cors_headers_are_not_given_to_another_origin(cors_gw: GatewayProcess) -> None:
    resp = cors_gw.connect().request("GET", "/items", headers={"Origin": "https://evil.test"})
    assert resp.status == 200
    assert resp.header("access-control-allow-origin") is None


@pytest.fixture(scope="module")
def retry_gw(module_upstream: Upstream, module_start_gateway: StartGateway) -> GatewayProcess:
    routes = [
        {
            "name": "retried",
            "rules": [
                {
                    "retry": {"attempts": 2, "codes": [502, 503], "backoff": "10ms"},
                    "backendRefs": [UP],
                }
            ],
        },
        {
            "name": "retried-nowhere",
            "hostnames": ["refused.test"],
            "rules": [{"retry": {"attempts": 2, "codes": [503]}, "backendRefs": [{"backend": "nowhere"}]}],
        },
    ]
    backends = {"up": [("127.0.0.1", module_upstream.port)], "nowhere": [("127.0.0.1", free_port())]}
    return module_start_gateway(backends, routes)


def test_retry_hides_failures_within_its_attempts(retry_gw: GatewayProcess) -> None:
    resp = retry_gw.connect().request("GET", "/flaky/two/2")
    assert resp.status == 200
    assert json.loads(resp.body)["tries"] == 3  # the first try and two retries


def test_retry_gives_up_after_its_attempts(retry_gw: GatewayProcess, module_upstream: Upstream) -> None:
    client = retry_gw.connect()
    resp = client.request("GET", "/flaky/five/5")
    assert resp.status == 503
    assert module_upstream.flaky["five"] == 3
    assert client.request("GET", "/flaky/six/5").status == 503  # the connection carries on


def test_retry_resends_the_request_body(retry_gw: GatewayProcess) -> None:
    body = b"payload" * 100
    resp = retry_gw.connect().request("POST", "/flaky/post/1", body=body)
    assert resp.status == 200
    echoed = json.loads(resp.body)
    assert echoed["tries"] == 2
    assert echoed["body_sha256"] == hashlib.sha256(body).hexdigest()


def test_retry_covers_a_connection_lost_before_the_response(retry_gw: GatewayProcess) -> None:
    resp = retry_gw.connect().request("GET", "/flaky-hangup/lost/1")
    assert resp.status == 200  # 502 is one of the codes: the lost attempt is tried again
    assert json.loads(resp.body)["tries"] == 2


def test_retry_tries_a_refused_connection_again_whatever_the_codes(retry_gw: GatewayProcess) -> None:
    def retried() -> float:
        text = httpx.get(f"http://127.0.0.1:{retry_gw.admin}/metrics", timeout=10).text
        line = next((ln for ln in text.splitlines() if "upstream-connect-failed" in ln and "retries" in ln), None)
        return float(line.rsplit(" ", 1)[1]) if line else 0.0

    before = retried()
    resp = retry_gw.connect().request("GET", "/", headers={"Host": "refused.test"})
    assert resp.status == 502
    assert json.loads(resp.body)["type"] == "urn:gw:problem:upstream-connect-failed"
    assert retried() - before == 2  # both retries were made before the gateway gave up


@pytest.fixture(scope="module")
def hosts_gw(module_upstream: Upstream, module_start_gateway: StartGateway) -> GatewayProcess:
    tag = {"type": "RequestHeaderModifier", "requestHeaderModifier": {"set": [{"name": "X-Route", "value": "wild"}]}}
    routes = [
        {"name": "wild", "hostnames": ["*.wild.test"], "rules": [{"filters": [tag], "backendRefs": [UP]}]},
        {"name": "rest", "rules": [{"backendRefs": [UP]}]},
    ]
    return module_start_gateway({"up": [("127.0.0.1", module_upstream.port)]}, routes)


@pytest.mark.parametrize("host", ["a.wild.test", "A.Wild.Test:8080", "a.wild.test.", "a.wild.test.:8080"])
def test_a_host_matches_whatever_its_case_port_or_trailing_dot(hosts_gw: GatewayProcess, host: str) -> None:
    resp = hosts_gw.connect().request("GET", "/x", headers={"Host": host})
    assert echoed_headers(resp.body).get("x-route") == ["wild"]
    assert echoed_headers(resp.body)["host"] == [host]  # passed on as the client sent it


def test_a_host_outside_the_wildcard_takes_another_route(hosts_gw: GatewayProcess) -> None:
    resp = hosts_gw.connect().request("GET", "/x", headers={"Host": "wild.test."})
    assert "x-route" not in echoed_headers(resp.body)
