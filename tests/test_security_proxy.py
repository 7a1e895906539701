"""SecurityPolicy through a real gateway and a real upstream: API keys (header, query, cookie), basic
auth (bcrypt and {SHA}, the cache, a flood of wrong passwords), authorization, a rate limit by consumer."""

from __future__ import annotations

import base64
import hashlib
import json
import socket
import threading
from collections.abc import Iterator
from typing import Any

import bcrypt
import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.support.gateway import GatewayProcess, Response, config_yaml, free_port
from tests.support.upstream import Upstream
from tests.support.wait import wait_until

TARGET = "gateway.networking.k8s.io"
KEYS = {"alice": "key-a", "bob": "key-b"}
API_KEY = {"credentialRefs": [{"name": "keys"}],
           "extractFrom": [{"headers": ["X-Api-Key"]}, {"params": ["api_key"]}, {"cookies": ["api_key"]}]}  # fmt: skip
HTPASSWD = (
    "carol:" + bcrypt.hashpw(b"carol-pw", bcrypt.gensalt(10)).decode().replace("$2b$", "$2y$", 1) + "\n"
    "dave:{SHA}" + base64.b64encode(hashlib.sha1(b"dave-pw").digest()).decode() + "\n"
)


def rule(name: str) -> dict[str, Any]:
    return {"name": name, "matches": [{"path": {"type": "PathPrefix", "value": f"/{name}"}}],
            "backendRefs": [{"backend": "up"}]}  # fmt: skip


def security(name: str, section: str, **spec: Any) -> dict[str, Any]:
    target = {"group": TARGET, "kind": "HTTPRoute", "name": "api", "sectionName": section}
    return {"apiVersion": "gw.dev/v1alpha1", "kind": "SecurityPolicy", "metadata": {"name": name},
            "spec": {"targetRefs": [target], **spec}}  # fmt: skip


def config(port: int, upstream: int) -> str:
    names = ("key", "forward", "basic", "office", "outside", "limited")
    routes = [{"name": "api", "rules": [rule(n) for n in names]}, {"name": "open", "rules": [rule("open")]}]
    # fmt: off
    docs = [
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "keys"}, "stringData": KEYS},
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "users"}, "stringData": {".htpasswd": HTPASSWD}},
        security("key", "key", apiKeyAuth=API_KEY),
        security("forward", "forward",
                 apiKeyAuth={**API_KEY, "forwardClientIDHeader": "X-Client-ID", "sanitize": True}),
        security("basic", "basic", basicAuth={"users": {"name": "users"}}),
        security("office", "office", authorization={"defaultAction": "Deny", "rules": [
            {"action": "Deny", "principal": {"headers": [{"name": "X-Team", "values": ["blocked"]}]}},
            {"action": "Allow", "principal": {"clientCIDRs": ["127.0.0.0/8"]}},
        ]}),
        security("outside", "outside", authorization={"rules": [
            {"action": "Allow", "principal": {"clientCIDRs": ["10.0.0.0/8"]}}]}),
        security("limited", "limited", apiKeyAuth=API_KEY),
        {"apiVersion": "gw.dev/v1alpha1", "kind": "RateLimitPolicy", "metadata": {"name": "per-consumer"},
         "spec": {"targetRefs": [{"kind": "HTTPRoute", "name": "api", "sectionName": "limited"}],
                  "limits": [{"name": "hourly", "requests": 2, "per": "1h", "key": [{"type": "Consumer"}]}]}},
    ]
    # fmt: on
    return config_yaml(port, {"up": [("127.0.0.1", upstream)]}, routes) + "---\n" + yaml.safe_dump_all(docs)


@pytest.fixture(scope="module")
def gw(module_upstream: Upstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    tmp = tmp_path_factory.mktemp("security")
    port = free_port()
    path = tmp / "gw.yaml"
    path.write_text(config(port, module_upstream.port))
    gateway = GatewayProcess(path, port, free_port(), {}, tmp / "access.log").start()
    yield gateway
    gateway.stop()


def get(gw: GatewayProcess, path: str, headers: dict[str, str] | None = None) -> Response:
    client = gw.connect()
    try:
        return client.request("GET", path, headers=headers)
    finally:
        client.close()


def seen(upstream: Upstream, path: str) -> list[Any]:
    return [s for s in upstream.seen if s.target.startswith(path)]


def problem(resp: Response, status: int) -> dict[str, Any]:
    assert resp.status == status
    assert resp.header("Content-Type") == "application/problem+json"
    return json.loads(resp.body)  # type: ignore[no-any-return]


def metric(gw: GatewayProcess, name: str, **labels: str) -> float:
    text = httpx.get(f"http://127.0.0.1:{gw.admin}/metrics", timeout=10).text
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    return 0.0


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


class TestAPIKey:
    @pytest.mark.parametrize(
        ("path", "headers"),
        [("/key/h", {"X-Api-Key": "key-a"}), ("/key/q?api_key=key-a", {}),
         ("/key/c", {"Cookie": "x=1; api_key=key-a"})],
    )
    def test_a_valid_key_in_a_header_query_or_cookie_reaches_the_upstream(
        self, gw: GatewayProcess, module_upstream: Upstream, path: str, headers: dict[str, str]
    ) -> None:
        before = len(seen(module_upstream, path))
        assert get(gw, path, headers).status == 200
        assert len(seen(module_upstream, path)) == before + 1

    @pytest.mark.parametrize("headers", [{}, {"X-Api-Key": "key-c"}, {"X-Api-Key": "KEY-A"}, {"X-Api-Key": "key"}])
    def test_a_missing_or_wrong_key_answers_401_and_nothing_goes_upstream(
        self, gw: GatewayProcess, module_upstream: Upstream, headers: dict[str, str]
    ) -> None:
        before = len(seen(module_upstream, "/key"))
        body = problem(get(gw, "/key/x", headers), 401)
        assert body["detail"] == "a valid API key is required"  # the same answer whatever was wrong
        assert len(seen(module_upstream, "/key")) == before

    def test_the_key_goes_upstream_unless_sanitized_and_the_client_id_is_forwarded(
        self, gw: GatewayProcess, module_upstream: Upstream
    ) -> None:
        assert get(gw, "/key/kept", {"X-Api-Key": "key-b"}).status == 200
        assert seen(module_upstream, "/key/kept")[-1].header("X-Api-Key") == "key-b"  # as Envoy Gateway
        resp = get(gw, "/forward/x?api_key=key-b&a=1", {"X-Client-ID": "mallory"})
        assert resp.status == 200
        upstream = seen(module_upstream, "/forward/x")[-1]
        assert upstream.target == "/forward/x?a=1"
        assert upstream.header_list("X-Client-ID") == ["bob"]

    def test_the_access_log_names_the_consumer_and_never_the_key(self, gw: GatewayProcess) -> None:
        assert get(gw, "/key/logged", {"X-Api-Key": "key-a"}).status == 200
        assert get(gw, "/key/query?api_key=key-a&page=2").status == 200
        assert get(gw, "/key/bad-query?api_key=key-secret-query").status == 401
        assert get(gw, "/key/refused", {"X-Api-Key": "key-secret-wrong"}).status == 401

        def lines() -> list[dict[str, Any]]:
            text = gw.access_log.read_text() if gw.access_log.exists() else ""
            found = [json.loads(line) for line in text.splitlines()]
            return [x for x in found if x["path"].startswith("/key/")] if any(
                x["path"] == "/key/refused" for x in found
            ) else []

        logged = {x["path"]: x for x in wait_until(lines, what="access log lines")}  # type: ignore[union-attr]
        assert logged["/key/logged"]["consumer"] == "alice"
        assert logged["/key/refused"]["consumer"] is None
        assert logged["/key/query?api_key=REDACTED&page=2"]["consumer"] == "alice"
        assert "/key/bad-query?api_key=REDACTED" in logged
        text = gw.access_log.read_text()
        assert "key-a" not in text and "key-secret" not in text


class TestBasicAuth:
    def test_bcrypt_and_sha_users_get_through(self, gw: GatewayProcess) -> None:
        assert get(gw, "/basic/1", basic("carol", "carol-pw")).status == 200
        assert get(gw, "/basic/2", basic("dave", "dave-pw")).status == 200

    @pytest.mark.parametrize(
        "headers", [{}, basic("carol", "nope"), basic("nobody", "x"), {"Authorization": "Basic !!"}]
    )
    def test_wrong_credentials_answer_401_with_www_authenticate(
        self, gw: GatewayProcess, headers: dict[str, str]
    ) -> None:
        resp = get(gw, "/basic/x", headers)
        assert problem(resp, 401)["detail"] == "valid credentials are required"
        assert resp.header("WWW-Authenticate") == 'Basic realm="default/basic"'

    def test_a_verified_credential_is_not_checked_again(self, gw: GatewayProcess) -> None:
        headers = basic("carol", "carol-pw")
        assert get(gw, "/basic/a", headers).status == 200
        checks = metric(gw, "gw_auth_password_checks_total", policy="default/basic")
        assert [get(gw, f"/basic/{i}", headers).status for i in range(5)] == [200] * 5
        assert metric(gw, "gw_auth_password_checks_total", policy="default/basic") == checks

    def test_a_flood_of_wrong_passwords_does_not_stall_other_requests(self, gw: GatewayProcess) -> None:
        """50 distinct wrong passwords are checked in the worker's bcrypt threads; a request to
        another route is answered while they are still being checked."""
        answers: list[int] = []
        socks = []
        for i in range(50):
            sock = socket.create_connection(("127.0.0.1", gw.port))
            auth = base64.b64encode(f"carol:wrong-{i}".encode()).decode()
            sock.sendall(f"GET /basic/flood HTTP/1.1\r\nHost: x\r\nAuthorization: Basic {auth}\r\n\r\n".encode())
            socks.append(sock)

        def read_all() -> None:
            for sock in socks:
                data = sock.recv(65536)
                answers.append(int(data.split(b" ", 2)[1]))
                sock.close()

        reader = threading.Thread(target=read_all)
        reader.start()
        assert get(gw, "/open/x").status == 200
        flood_answered = len(answers)
        reader.join(30)
        assert flood_answered < 50, "the flood was over before the other request was answered"
        assert sorted(set(answers)) == [401]


class TestAuthorization:
    def test_a_client_in_the_allowed_cidr_gets_through(self, gw: GatewayProcess) -> None:
        assert get(gw, "/office/x").status == 200

    def test_a_deny_rule_before_the_allow_rule_wins(self, gw: GatewayProcess, module_upstream: Upstream) -> None:
        before = len(seen(module_upstream, "/office"))
        assert problem(get(gw, "/office/y", {"X-Team": "blocked"}), 403)["type"] == "urn:gw:problem:forbidden"
        assert len(seen(module_upstream, "/office")) == before

    def test_the_default_action_denies_a_client_no_rule_allows(self, gw: GatewayProcess) -> None:
        problem(get(gw, "/outside/x"), 403)


def test_a_rate_limit_keyed_by_consumer_gives_each_consumer_its_own_budget(gw: GatewayProcess) -> None:
    alice, bob = {"X-Api-Key": "key-a"}, {"X-Api-Key": "key-b"}
    assert [get(gw, "/limited/1", alice).status for _ in range(3)] == [200, 200, 429]
    assert [get(gw, "/limited/2", bob).status for _ in range(3)] == [200, 200, 429]


def test_a_route_without_a_policy_has_no_auth_phase(gw: GatewayProcess) -> None:
    assert get(gw, "/open/x").status == 200


def test_metrics_count_decisions(gw: GatewayProcess) -> None:
    get(gw, "/outside/x")
    wait_until(lambda: metric(gw, "gw_auth_decisions_total", policy="default/outside", result="denied") >= 1)
