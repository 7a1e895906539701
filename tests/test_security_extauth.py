"""External authorization (SecurityPolicy extAuth, HTTPRoute ExternalAuth) through a real gateway,
a real forward-auth server and a real upstream: allow with headers to the backend, deny passed
through, a dead, failing or silent service (fail closed, failOpen), many requests at once, and
config errors naming their field."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import pytest
import yaml

from gw.config import compile_resources
from gw.config.parse import parse_documents
from tests.support.gateway import GatewayProcess, Response, config_yaml, free_port
from tests.support.upstream import Upstream
from tests.test_security_proxy import metric, problem, seen

TARGET = "gateway.networking.k8s.io"
AUTH_REF = {"group": "gw.dev", "kind": "Backend", "name": "auth"}


@dataclass
class AuthServer:
    """A forward-auth service: what it answers depends on the path it is asked about."""

    port: int = 0
    seen: list[tuple[str, str, dict[str, str], bytes]] = field(default_factory=list)
    hung: threading.Event = field(default_factory=threading.Event)  # a /hang request arrived
    connections: int = 0
    loop: asyncio.AbstractEventLoop | None = None
    _release: asyncio.Event | None = None

    def start(self) -> AuthServer:
        ready = threading.Event()

        def run() -> None:
            self.loop = asyncio.new_event_loop()
            self._release = asyncio.Event()
            server = self.loop.run_until_complete(asyncio.start_server(self._serve, "127.0.0.1", 0))
            self.port = server.sockets[0].getsockname()[1]
            ready.set()
            self.loop.run_forever()

        threading.Thread(target=run, name="auth-server", daemon=True).start()
        assert ready.wait(10)
        return self

    def stop(self) -> None:
        assert self.loop is not None

        async def close() -> None:
            self._release.set()  # type: ignore[union-attr]
            current = asyncio.current_task()
            handlers = [t for t in asyncio.all_tasks() if t is not current]
            for task in handlers:
                task.cancel()
            await asyncio.gather(*handlers, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(close(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)

    def requests(self, part: str) -> list[tuple[str, str, dict[str, str], bytes]]:
        return [s for s in self.seen if part in s[1]]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        nth = 0
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                lines = head[:-4].decode("latin-1").split("\r\n")
                method, target, _ = lines[0].split(" ", 2)
                headers = {k.strip().lower(): v.strip() for k, v in (x.split(":", 1) for x in lines[1:])}
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                self.seen.append((method, target, headers, body))
                nth += 1
                if "/stale" in target and nth > 1:
                    return  # as a keep-alive connection the service closed while gw was sending on it
                if "/hang" in target:
                    self.hung.set()
                    await self._release.wait()  # type: ignore[union-attr]
                    return
                writer.write(self._answer(target, headers))
                await writer.drain()
        finally:
            writer.close()

    @staticmethod
    def _answer(target: str, headers: dict[str, str]) -> bytes:
        if "/allow" in target:
            user = headers.get("authorization", "anonymous").removeprefix("Bearer ")
            return (b"HTTP/1.1 200 OK\r\nX-User: %b\r\nX-Extra: extra\r\nContent-Type: text/plain\r\n"
                    b"Content-Length: 2\r\n\r\nok" % user.encode())  # fmt: skip
        if "/deny" in target:
            body = b'{"error":"who are you"}'
            return (b'HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Bearer realm="auth"\r\n'
                    b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%b" % (len(body), body))  # fmt: skip
        if "/redirect" in target:
            return (b"HTTP/1.1 302 Found\r\nLocation: https://login.example/?next=/x\r\n"
                    b"Set-Cookie: state=abc; HttpOnly\r\nContent-Length: 0\r\n\r\n")  # fmt: skip
        return b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 4\r\n\r\ndown"


def rule(name: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "matches": [{"path": {"type": "PathPrefix", "value": f"/{name}"}}],
            "backendRefs": [{"backend": "up"}], **extra}  # fmt: skip


def ext_policy(name: str, ext: dict[str, Any], backend: str = "auth", **http: Any) -> dict[str, Any]:
    target = {"group": TARGET, "kind": "HTTPRoute", "name": "api", "sectionName": name}
    ref = {"group": "gw.dev", "kind": "Backend", "name": backend}
    spec = {"http": {"backendRefs": [ref], **http}, **ext}
    return {"apiVersion": "gw.dev/v1alpha1", "kind": "SecurityPolicy", "metadata": {"name": name},
            "spec": {"targetRefs": [target], "extAuth": spec}}  # fmt: skip


def config(port: int, upstream: int, auth: int, dead: int) -> str:
    gep = {"type": "ExternalAuth", "externalAuth": {
        "protocol": "HTTP", "backendRef": AUTH_REF,
        "http": {"path": "/gep", "allowedHeaders": ["X-Tenant"]}}}  # fmt: skip
    slow = rule("slow", timeouts={"request": "300ms"})
    rules = [rule("x"), rule("down"), rule("open"), rule("gep", filters=[gep]), slow, rule("traced")]
    routes = [{"name": "api", "rules": rules}]
    docs = [
        ext_policy("x", {"headersToExtAuth": ["X-Tenant"], "timeout": "1s"}, path="/check",
                   headersToBackend=["X-User"]),
        ext_policy("down", {}, backend="dead"),
        ext_policy("open", {"failOpen": True}, backend="dead"),
        ext_policy("slow", {"timeout": "10s"}, path="/check"),
        ext_policy("traced", {"headersToExtAuth": ["traceparent"]}, path="/check"),
    ]  # fmt: skip
    backends = {"up": [("127.0.0.1", upstream)], "auth": [("127.0.0.1", auth)], "dead": [("127.0.0.1", dead)]}
    return config_yaml(port, backends, routes) + "---\n" + yaml.safe_dump_all(docs)


@pytest.fixture(scope="module")
def auth() -> Iterator[AuthServer]:
    server = AuthServer().start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def gw(
    module_upstream: Upstream, auth: AuthServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    tmp = tmp_path_factory.mktemp("extauth")
    port = free_port()
    path = tmp / "gw.yaml"
    path.write_text(config(port, module_upstream.port, auth.port, free_port()))  # nothing listens on `dead`
    gateway = GatewayProcess(path, port, free_port(), {}, tmp / "access.log").start()
    yield gateway
    gateway.stop()


def request(gw: GatewayProcess, path: str, headers: dict[str, str] | None = None, method: str = "GET") -> Response:
    client = gw.connect()
    try:
        return client.request(method, path, headers=headers)
    finally:
        client.close()


class TestAllow:
    def test_a_200_lets_the_request_through_with_the_named_headers_replacing_client_copies(
        self, gw: GatewayProcess, module_upstream: Upstream
    ) -> None:
        resp = request(gw, "/x/allow/1", {"Authorization": "Bearer alice", "X-User": "mallory", "X-Extra": "mine"})
        assert resp.status == 200
        got = seen(module_upstream, "/x/allow/1")[-1]
        assert got.header_list("X-User") == ["alice"]  # the service's word, the forged copy gone
        assert got.header("X-Extra") == "mine"  # not in headersToBackend: neither taken nor touched
        assert got.header("Content-Type") is None

    def test_a_header_named_in_headers_to_backend_is_removed_even_when_the_service_sets_none(
        self, gw: GatewayProcess, auth: AuthServer, module_upstream: Upstream
    ) -> None:
        # The gep rule copies every header of the answer; the x rule names X-User: a client's own
        # X-User never reaches the backend of the x rule as if the service had said it.
        resp = request(gw, "/x/allow/2", {"X-User": "mallory"})
        assert resp.status == 200
        assert seen(module_upstream, "/x/allow/2")[-1].header_list("X-User") == ["anonymous"]

    def test_the_check_carries_method_prefixed_path_query_and_the_configured_headers_but_no_body(
        self, gw: GatewayProcess, auth: AuthServer
    ) -> None:
        client = gw.connect()
        try:
            resp = client.request("POST", "/x/allow/3?q=1", headers={
                "Authorization": "Bearer bob", "X-Tenant": "blue", "Cookie": "secret=1", "Content-Type": "text/plain",
            }, body=b"the body")  # fmt: skip
        finally:
            client.close()
        assert resp.status == 200
        method, target, headers, body = auth.requests("/allow/3")[-1]
        assert (method, target, body) == ("POST", "/check/x/allow/3?q=1", b"")
        assert headers["host"] == "example.test"
        assert headers["authorization"] == "Bearer bob"
        assert headers["x-tenant"] == "blue"
        assert headers["content-length"] == "0"
        assert headers["x-forwarded-for"] == "127.0.0.1"
        assert headers["x-forwarded-proto"] == "http"
        assert "x-request-id" in headers
        assert "cookie" not in headers and "content-type" not in headers  # not named: not sent

    def test_the_request_body_waits_for_the_decision_and_then_goes_upstream_whole(
        self, gw: GatewayProcess, module_upstream: Upstream
    ) -> None:
        client = gw.connect()
        try:
            resp = client.request("POST", "/x/allow/body", body=b"x" * 100_000)
        finally:
            client.close()
        assert resp.status == 200
        assert seen(module_upstream, "/x/allow/body")[-1].body_bytes == 100_000

    def test_checks_reuse_keep_alive_connections(self, gw: GatewayProcess, auth: AuthServer) -> None:
        request(gw, "/x/allow/warm")
        before = auth.connections
        for i in range(5):
            assert request(gw, f"/x/allow/reuse-{i}").status == 200
        assert auth.connections == before


    def test_a_pooled_connection_the_service_closed_is_retried_once_on_a_fresh_one(
        self, gw: GatewayProcess, auth: AuthServer, module_upstream: Upstream
    ) -> None:
        request(gw, "/x/allow/warm-stale")  # a connection in the pool that has served a check
        assert request(gw, "/x/allow/stale").status == 200
        assert len(auth.requests("/allow/stale")) == 2  # closed unanswered, then answered fresh
        assert len(seen(module_upstream, "/x/allow/stale")) == 1


class TestDeny:
    def test_a_401_goes_to_the_client_with_its_headers_and_body_and_nothing_goes_upstream(
        self, gw: GatewayProcess, module_upstream: Upstream
    ) -> None:
        denied = metric(gw, "gw_auth_decisions_total", policy="default/x", result="denied")
        resp = request(gw, "/x/deny/1")
        assert resp.status == 401
        assert resp.header("WWW-Authenticate") == 'Bearer realm="auth"'
        assert resp.header("Content-Type") == "application/json"
        assert json.loads(resp.body) == {"error": "who are you"}
        assert seen(module_upstream, "/x/deny") == []
        assert metric(gw, "gw_auth_decisions_total", policy="default/x", result="denied") == denied + 1

    def test_a_redirect_to_a_login_page_is_passed_through(self, gw: GatewayProcess) -> None:
        resp = request(gw, "/x/redirect")
        assert resp.status == 302
        assert resp.header("Location") == "https://login.example/?next=/x"
        assert resp.header("Set-Cookie") == "state=abc; HttpOnly"

    def test_a_head_request_denied_gets_the_head_without_a_body(self, gw: GatewayProcess) -> None:
        resp = request(gw, "/x/deny/head", method="HEAD")
        assert resp.status == 401 and resp.body == b""
        assert resp.header("WWW-Authenticate") == 'Bearer realm="auth"'


class TestFailure:
    def test_a_service_answering_5xx_fails_closed_with_403_problem(
        self, gw: GatewayProcess, module_upstream: Upstream
    ) -> None:
        body = problem(request(gw, "/x/fail"), 403)
        assert body["type"].endswith("auth-service-failed")
        assert seen(module_upstream, "/x/fail") == []

    def test_an_unreachable_service_fails_closed(self, gw: GatewayProcess, module_upstream: Upstream) -> None:
        errors = metric(gw, "gw_auth_decisions_total", policy="default/down", result="error")
        problem(request(gw, "/down/allow"), 403)
        assert seen(module_upstream, "/down") == []
        assert metric(gw, "gw_auth_decisions_total", policy="default/down", result="error") == errors + 1

    def test_fail_open_lets_requests_through_when_the_service_is_unreachable(
        self, gw: GatewayProcess, module_upstream: Upstream
    ) -> None:
        assert request(gw, "/open/allow").status == 200
        assert len(seen(module_upstream, "/open/allow")) == 1

    def test_a_service_that_never_answers_is_given_up_after_the_timeout(
        self, gw: GatewayProcess, auth: AuthServer, module_upstream: Upstream
    ) -> None:
        # timeout: 1s; the client's socket would give up after 10s, so an answer proves the bound.
        problem(request(gw, "/x/hang"), 403)
        assert auth.hung.is_set()
        assert seen(module_upstream, "/x/hang") == []
        assert request(gw, "/x/allow/after-hang").status == 200  # the worker serves on

    def test_the_rules_request_timeout_bounds_the_wait_for_the_check(
        self, gw: GatewayProcess, module_upstream: Upstream
    ) -> None:
        """timeouts.request (300ms) ends a request still waiting for a check the policy would wait
        10s for: 504, and nothing goes upstream (the client's socket would wait 10s)."""
        assert request(gw, "/slow/hang").status == 504
        assert seen(module_upstream, "/slow/hang") == []
        assert request(gw, "/slow/allow").status == 200


class TestMany:
    def test_two_hundred_concurrent_requests_are_each_decided_by_their_own_answer(
        self, gw: GatewayProcess, module_upstream: Upstream
    ) -> None:
        def one(i: int) -> tuple[int, int]:
            kind = "allow" if i % 2 else "deny"
            return i, request(gw, f"/x/{kind}/many-{i}", {"Authorization": f"Bearer u{i}"}).status

        with ThreadPoolExecutor(50) as pool:
            results = list(pool.map(one, range(200)))
        assert all(status == (200 if i % 2 else 401) for i, status in results)
        for i in range(1, 200, 2):
            got = [s for s in module_upstream.seen if s.target == f"/x/allow/many-{i}"]
            assert [s.header("X-User") for s in got] == [f"u{i}"]
        assert request(gw, "/x/allow/after-many").status == 200


class TestGatewayAPIFilter:
    def test_the_external_auth_filter_checks_with_its_path_and_copies_every_answer_header(
        self, gw: GatewayProcess, auth: AuthServer, module_upstream: Upstream
    ) -> None:
        resp = request(gw, "/gep/allow", {"Authorization": "Bearer gep", "X-Tenant": "red", "X-Extra": "forged"})
        assert resp.status == 200
        _, target, headers, _ = auth.requests("/gep/allow")[-1]
        assert target == "/gep/gep/allow" and headers["x-tenant"] == "red"
        got = seen(module_upstream, "/gep/allow")[-1]
        # allowedResponseHeaders empty: every header of the answer, but not those describing the answer.
        assert got.header_list("X-User") == ["gep"] and got.header_list("X-Extra") == ["extra"]
        assert got.header("Content-Type") is None and got.header("Content-Length") is None

    def test_the_filter_passes_a_denial_through(self, gw: GatewayProcess) -> None:
        assert request(gw, "/gep/deny").status == 401


def compile_docs(*docs: dict[str, Any]) -> Any:
    base = yaml.safe_load_all(config_yaml(8080, {"up": [("127.0.0.1", 9)], "auth": [("127.0.0.1", 10)]},
                                          [{"name": "api", "rules": [rule("x")]}]))  # fmt: skip
    resources, errors = parse_documents([("ext.yaml", d) for d in [*base, *docs]])
    return compile_resources(resources, errors=errors)


class TestConfig:
    @pytest.mark.parametrize(
        ("ext", "field", "message"),
        [({"http": {"backendRefs": [AUTH_REF]}, "timeout": "forever"}, "spec.extAuth.timeout", "not a Gateway API"),
         ({"http": {"backendRefs": [AUTH_REF]}, "statusOnError": 200}, "spec.extAuth.statusOnError", "4xx or 5xx"),
         ({"http": {"backendRefs": [AUTH_REF], "headersToBackend": ["bad header"]}},
          "spec.extAuth.http.headersToBackend[0]", ""),
         ({"http": {"path": "/auth"}}, "spec.extAuth.http", "backendRef or backendRefs needs to be set"),
         ({"http": {"backendRefs": [AUTH_REF]}, "grpc": {"backendRefs": [AUTH_REF]}}, "spec.extAuth",
          "exactly one of grpc or http"),
         ({"http": {"backendRefs": [AUTH_REF], "path": "no spaces"}}, "spec.extAuth.http.path", "not a path prefix"),
         ({"http": {"backendRefs": [{"group": "gw.dev", "kind": "Backend", "name": "missing"}]}},
          "spec.extAuth.http", "Backend default/missing not found")],
    )  # fmt: skip
    def test_a_bad_ext_auth_names_its_field_and_its_rules_answer_500(self, ext: dict[str, Any], field: str,
                                                                     message: str) -> None:  # fmt: skip
        result = compile_docs(ext_policy_doc(ext))
        assert [e.field for e in result.errors] == [field]
        assert message in result.errors[0].message
        rule = result.config.rules[0]
        assert rule.invalid_reason is not None and rule.security is None

    @pytest.mark.parametrize(
        ("ext", "field"),
        [({"grpc": {"backendRefs": [AUTH_REF]}}, "spec.extAuth.grpc"),
         ({"http": {"backendRefs": [AUTH_REF]}, "bodyToExtAuth": {"maxRequestBytes": 10}},
          "spec.extAuth.bodyToExtAuth"),
         ({"http": {"backendRefs": [AUTH_REF]}, "recomputeRoute": True}, "spec.extAuth.recomputeRoute")],
    )  # fmt: skip
    def test_what_gw_does_not_serve_fails_closed(self, ext: dict[str, Any], field: str) -> None:
        result = compile_docs(ext_policy_doc(ext))
        assert [e.field for e in result.errors] == [field]
        assert "not served by gw yet" in result.config.rules[0].invalid_reason

    def test_a_good_ext_auth_compiles_with_envoy_gateways_defaults(self) -> None:
        result = compile_docs(ext_policy_doc({"http": {"backendRef": AUTH_REF}}))
        assert result.errors == []
        ext = result.config.rules[0].security.ext_auth
        assert (ext.timeout, ext.fail_open, ext.status_on_error, ext.path, ext.headers_to_backend) == (
            10.0, False, 403, "", ())  # fmt: skip
        assert [(e.address, e.port) for e in ext.backend.endpoints] == [("127.0.0.1", 10)]

    @pytest.mark.parametrize(
        ("external", "field"),
        [({"protocol": "GRPC", "backendRef": AUTH_REF}, "externalAuth.protocol"),
         ({"protocol": "HTTP"}, "externalAuth.backendRef"),
         ({"protocol": "HTTP", "backendRef": AUTH_REF, "forwardBody": {"maxSize": 10}},
          "externalAuth.forwardBody.maxSize"),
         ({"protocol": "HTTP", "backendRef": AUTH_REF, "http": {"allowedHeaders": [1]}},
          "externalAuth.http.allowedHeaders[0]")],
    )  # fmt: skip
    def test_a_bad_external_auth_filter_names_its_field(self, external: dict[str, Any], field: str) -> None:
        filters = [{"type": "ExternalAuth", "externalAuth": external}]
        base = yaml.safe_load_all(config_yaml(8080, {"up": [("127.0.0.1", 9)], "auth": [("127.0.0.1", 10)]},
                                              [{"name": "api", "rules": [rule("x", filters=filters)]}]))  # fmt: skip
        resources, errors = parse_documents([("ext.yaml", d) for d in base])
        result = compile_resources(resources, errors=errors)
        assert [e.field for e in result.errors] == [f"spec.rules[0].filters[0].{field}"]


def ext_policy_doc(ext: dict[str, Any]) -> dict[str, Any]:
    target = {"group": TARGET, "kind": "HTTPRoute", "name": "api"}
    return {"apiVersion": "gw.dev/v1alpha1", "kind": "SecurityPolicy",
            "metadata": {"name": "p", "namespace": "default"},
            "spec": {"targetRefs": [target], "extAuth": ext}}  # fmt: skip


def test_a_tls_auth_service_is_verified_by_its_backend_tls_policy(
    module_upstream: Upstream, start_gateway: Any
) -> None:
    """The auth service behind a BackendTLSPolicy: checks go over TLS, verified against the policy's CA;
    a service whose certificate that CA did not sign is never asked (the check fails closed: 403)."""
    import ssl

    import trustme

    ca, other = trustme.CA(), trustme.CA()
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("auth.internal").configure_cert(ctx)
    service = Upstream("tls-auth", tls=ctx).start()
    try:
        port = free_port()
        routes = [{"name": "api", "rules": [rule("trusted"), rule("untrusted")]}]
        backends = {"up": [("127.0.0.1", module_upstream.port)], "auth": [("127.0.0.1", service.port)],
                    "auth-other": [("127.0.0.1", service.port)]}  # fmt: skip
        docs: list[dict[str, Any]] = [
            ext_policy("trusted", {}, path="/check"),
            ext_policy("untrusted", {}, backend="auth-other", path="/check"),
        ]
        for name, authority in (("auth", ca), ("auth-other", other)):
            meta = {"name": f"{name}-ca", "namespace": "default"}
            docs.append({"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta,
                         "data": {"ca.crt": authority.cert_pem.bytes().decode()}})  # fmt: skip
            docs.append({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "BackendTLSPolicy",
                         "metadata": {"name": name, "namespace": "default"},
                         "spec": {"targetRefs": [{"group": "gw.dev", "kind": "Backend", "name": name}],
                                  "validation": {"hostname": "auth.internal", "caCertificateRefs": [
                                      {"group": "", "kind": "ConfigMap", "name": f"{name}-ca"}]}}})  # fmt: skip
        gw = start_gateway({}, [], yaml_text=config_yaml(port, backends, routes) + "---\n" + yaml.safe_dump_all(docs))
        gw.port = port
        client = gw.connect()
        try:
            assert client.request("GET", "/trusted/a").status == 200
            assert client.request("GET", "/untrusted/a").status == 403
        finally:
            client.close()
        checked = [s.target for s in service.seen]
        assert checked == ["/check/trusted/a"]  # the untrusted service's handshake failed before any request
        assert [s.target for s in seen(module_upstream, "/trusted/a")] == ["/trusted/a"]
        assert not seen(module_upstream, "/untrusted/a")
    finally:
        service.stop()


def test_a_service_asking_for_traceparent_gets_each_requests_own(gw: GatewayProcess, auth: AuthServer) -> None:
    """The same head but for its traceparent, on one connection: the check carries each request's
    (the phase's memo of fields by head leaves the line out, so it must not be used)."""
    client = gw.connect()
    parents = [f"00-{i:032x}-{i:016x}-00" for i in (1, 2, 3)]
    try:
        for parent in parents:
            assert client.request("GET", "/traced/allow", headers={"traceparent": parent}).status == 200
    finally:
        client.close()
    sent = [h.get("traceparent") for _, target, h, _ in auth.requests("/check/traced/allow")]
    assert sent == parents
