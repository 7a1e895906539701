"""SecurityPolicy oidc end to end: two gw replicas sharing one Valkey, a real upstream, and an OpenID
provider test double (tests.support.oidc_provider) the gateways reach over HTTP; a browser's flow
driven with httpx, following every redirect by hand so each hop is checked."""

from __future__ import annotations

import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
import yaml

from gw.config import compile_resources
from gw.config.parse import parse_documents
from tests.support import valkey
from tests.support.gateway import GatewayProcess, config_yaml, free_port
from tests.support.oidc_provider import OIDCProviderDouble
from tests.support.upstream import Upstream
from tests.support.wait import wait_until

CLIENT_ID, CLIENT_SECRET = "gw-test", "s3cret-for-tests"
TARGET = {"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "name": "web"}
XHR = {"X-Requested-With": "XMLHttpRequest"}
LOGOUT_REACHES_EVERY_WORKER = 2.0  # gw.policies.security.oidc.CACHE_TTL, as the README documents


def oidc_spec(issuer: str, **extra: Any) -> dict[str, Any]:
    return {"provider": {"issuer": issuer}, "clientID": CLIENT_ID, "clientSecret": {"name": "oidc-client"},
            "scopes": ["email"], **extra}  # fmt: skip


def documents(issuer: str) -> list[dict[str, Any]]:
    spec = oidc_spec(issuer, forwardAccessToken=True, logoutPath="/logout",
                     denyRedirect={"headers": [{"name": "X-Requested-With", "value": "XMLHttpRequest"}]})  # fmt: skip
    return [
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "oidc-client", "namespace": "default"},
         "stringData": {"client-secret": CLIENT_SECRET}},
        {"apiVersion": "gw.dev/v1alpha1", "kind": "SecurityPolicy", "metadata": {"name": "web", "namespace": "default"},
         "spec": {"targetRefs": [TARGET], "oidc": spec}},
    ]  # fmt: skip


@dataclass
class Fleet:
    a: GatewayProcess
    b: GatewayProcess
    idp: OIDCProviderDouble
    upstream: Upstream
    valkey: valkey.Server


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    tmp = tmp_path_factory.mktemp("oidc")
    server = valkey.standalone(tmp / "valkey")
    idp = OIDCProviderDouble(CLIENT_ID, CLIENT_SECRET).start()
    upstream = Upstream("up").start()
    port_a, port_b = free_port(), free_port()
    routes = [{"name": "web", "rules": [{"backendRefs": [{"backend": "up"}]}]}]
    text = config_yaml(port_a, {"up": [("127.0.0.1", upstream.port)]}, routes) + "---\n"
    text += yaml.safe_dump_all(documents(idp.issuer))
    (tmp / "gw.yaml").write_text(text)
    # One Redis, one config; replica B binds the listener at another port (its offset) so the test
    # can choose the replica each request goes to.
    env = {"GW_REDIS_URL": server.url, "GW_REDIS_BUDGET": "2s", "GW_WORKERS": "1"}
    a = GatewayProcess(tmp / "gw.yaml", port_a, free_port(), dict(env), tmp / "a.log")
    b = GatewayProcess(tmp / "gw.yaml", port_b, free_port(), {**env, "GW_LISTENER_PORT_OFFSET": str(port_b - port_a)},
                       tmp / "b.log")  # fmt: skip
    started = []
    try:
        started.append(a.start())
        started.append(b.start())
        yield Fleet(a, b, idp, upstream, server)
    finally:
        for gw in started:
            gw.stop()
        upstream.stop()
        idp.stop()
        server.stop()


def get(url: str, cookie: str | None = None, **headers: str) -> httpx.Response:
    if cookie:
        headers["Cookie"] = cookie
    return httpx.get(url, timeout=10, headers={"Connection": "close", **headers}, follow_redirects=False)


def set_cookies(response: httpx.Response) -> dict[str, str]:
    """name → the whole Set-Cookie value."""
    return {v.split("=", 1)[0]: v for v in response.headers.get_list("set-cookie")}


def pair(set_cookie: str) -> str:
    return set_cookie.split(";", 1)[0]


@dataclass
class Login:
    authorize: httpx.Response  # gw's 302 to the provider
    login_cookie: str  # name=value
    callback_url: str  # where the provider sent the browser back


def start_login(gw: GatewayProcess, path: str) -> Login:
    first = get(gw.url(path))
    assert first.status_code == 302, first.text
    (login_cookie,) = [pair(v) for k, v in set_cookies(first).items() if "-login-" in k]
    back = get(first.headers["location"])  # the provider approves at once
    assert back.status_code == 302
    return Login(first, login_cookie, back.headers["location"])


def log_in(gw: GatewayProcess, path: str = "/app/home?tab=1") -> str:
    """A whole login through `gw`: the session cookie (name=value), after checking the redirect back."""
    login = start_login(gw, path)
    done = get(login.callback_url, login.login_cookie)
    assert done.status_code == 302, done.text
    assert done.headers["location"] == path
    cookies = set_cookies(done)
    (session,) = [v for k, v in cookies.items() if "-login-" not in k]
    return pair(session)


def seen(upstream: Upstream, path: str) -> list[Any]:
    return [s for s in upstream.seen if s.target == path]


class TestLogin:
    def test_a_request_without_a_session_is_sent_to_the_provider_with_state_nonce_and_pkce(
        self, fleet: Fleet
    ) -> None:
        login = start_login(fleet.a, "/app/x")
        query = {k: v[0] for k, v in parse_qs(urlsplit(login.authorize.headers["location"]).query).items()}
        assert login.authorize.headers["location"].startswith(f"{fleet.idp.issuer}/authorize?")
        assert query["response_type"] == "code" and query["client_id"] == CLIENT_ID
        assert query["redirect_uri"] == f"http://127.0.0.1:{fleet.a.port}/oauth2/callback"
        assert query["scope"] == "openid email"
        assert query["code_challenge_method"] == "S256" and len(query["code_challenge"]) == 43
        assert query["nonce"] and query["state"]
        cookie = next(v for k, v in set_cookies(login.authorize).items() if "-login-" in k)
        assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Max-Age=600" in cookie
        assert "Secure" not in cookie  # an HTTP listener

    def test_a_browser_logs_in_and_its_requests_reach_the_upstream_with_its_access_token(self, fleet: Fleet) -> None:
        session = log_in(fleet.a)
        name, value = session.split("=", 1)
        assert value and name.startswith("gw-oidc-")
        resp = get(fleet.a.url("/app/page"), session)
        assert resp.status_code == 200
        upstream = seen(fleet.upstream, "/app/page")[-1]
        assert upstream.header("Authorization") == f"Bearer {fleet.idp.access_tokens[-1]}"

    def test_a_client_bearer_is_replaced_by_the_sessions_access_token(self, fleet: Fleet) -> None:
        session = log_in(fleet.a)
        assert get(fleet.a.url("/app/own-bearer"), session, Authorization="Bearer forged").status_code == 200
        assert seen(fleet.upstream, "/app/own-bearer")[-1].header("Authorization") == (
            f"Bearer {fleet.idp.access_tokens[-1]}"
        )

    def test_a_request_matching_deny_redirect_gets_401_not_a_redirect(self, fleet: Fleet) -> None:
        resp = get(fleet.a.url("/app/api"), **XHR)
        assert resp.status_code == 401
        assert resp.headers["content-type"] == "application/problem+json"


    @pytest.mark.parametrize("target", ["//evil.test/x", "/\\evil.test/x"])
    def test_the_login_returns_only_to_a_path_of_this_site(self, fleet: Fleet, target: str) -> None:
        client = fleet.a.connect()
        try:
            first = client.request("GET", target, headers={"Host": f"127.0.0.1:{fleet.a.port}"})
        finally:
            client.close()
        assert first.status == 302
        cookies = [v for n, v in first.headers if n.lower() == "set-cookie"]
        login_cookie = next(v for v in cookies if "-login-" in v.split("=", 1)[0])
        back = get(str(first.header("Location")))
        done = get(back.headers["location"], pair(login_cookie))
        location = done.headers["location"]  # gw normalises `//x` to `/x`; `/\\x` it cannot use
        assert done.status_code == 302 and location.startswith("/") and location[1:2] not in ("/", "\\")


class TestRefusals:
    def test_a_tampered_state_is_refused(self, fleet: Fleet) -> None:
        login = start_login(fleet.a, "/app/t")
        url = re.sub(r"state=([^&]+)", lambda m: "state=" + m.group(1)[:-3] + "AAA", login.callback_url)
        assert get(url, login.login_cookie).status_code == 401

    def test_a_callback_without_the_login_cookie_is_refused(self, fleet: Fleet) -> None:
        """Login fixation: a code and state an attacker obtained, replayed in another browser."""
        login = start_login(fleet.a, "/app/t")
        assert get(login.callback_url).status_code == 401
        other = start_login(fleet.a, "/app/t")
        assert get(login.callback_url, other.login_cookie).status_code == 401  # another login's cookie

    def test_two_logins_at_once_in_one_browser_both_finish(self, fleet: Fleet) -> None:
        """Two tabs sent to the provider one after the other: each login keeps its own cookie, so the
        first one back is not refused for the second's (and a cookie jar keeps both)."""
        first, second = start_login(fleet.a, "/app/tab1"), start_login(fleet.a, "/app/tab2")
        assert first.login_cookie.split("=")[0] != second.login_cookie.split("=")[0]
        jar = f"{first.login_cookie}; {second.login_cookie}"
        for login, path in ((first, "/app/tab1"), (second, "/app/tab2")):
            done = get(login.callback_url, jar)
            assert done.status_code == 302 and done.headers["location"] == path
            cleared = set_cookies(done)[login.login_cookie.split("=")[0]]
            assert "Max-Age=0" in cleared

    def test_a_code_injected_into_another_login_fails_pkce_at_the_provider(self, fleet: Fleet) -> None:
        victim, attacker = start_login(fleet.a, "/app/v"), start_login(fleet.a, "/app/v")
        code = parse_qs(urlsplit(victim.callback_url).query)["code"][0]
        injected = re.sub(r"code=[^&]+", f"code={code}", attacker.callback_url)
        assert get(injected, attacker.login_cookie).status_code == 401
        assert fleet.idp.token_requests[-1] == {"grant_type": "authorization_code", "outcome": "invalid_grant"}

    @pytest.mark.parametrize("claims", [{"nonce": "another-login"}, {"aud": "another-client"},
                                        {"iss": "https://evil.test"}], ids=["nonce", "aud", "iss"])  # fmt: skip
    def test_an_id_token_not_for_this_login_is_refused(self, fleet: Fleet, claims: dict[str, str]) -> None:
        login = start_login(fleet.a, "/app/n")
        fleet.idp.id_claims = claims
        try:
            resp = get(login.callback_url, login.login_cookie)
        finally:
            fleet.idp.id_claims = {}
        assert resp.status_code == 401
        assert not any(k.startswith("gw-oidc-") and "-login-" not in k and "Max-Age=0" not in v
                       for k, v in set_cookies(resp).items())  # fmt: skip

    def test_a_forged_or_tampered_session_cookie_is_sent_to_log_in(self, fleet: Fleet) -> None:
        session = log_in(fleet.a)
        name, value = session.split("=", 1)
        body, mac = value.split(".")
        for forged in (f"{name}={body}.{mac[:-2]}AA", f"{name}=Zm9yZ2Vk.{mac}"):
            resp = get(fleet.a.url("/app/f"), forged)
            assert resp.status_code == 302 and resp.headers["location"].startswith(fleet.idp.issuer)


class TestFleet:
    def test_a_session_made_through_one_replica_is_served_by_the_other(self, fleet: Fleet) -> None:
        session = log_in(fleet.a)
        resp = get(fleet.b.url("/app/elsewhere"), session)
        assert resp.status_code == 200
        assert seen(fleet.upstream, "/app/elsewhere")[-1].header("Authorization") == (
            f"Bearer {fleet.idp.access_tokens[-1]}"
        )

    def test_a_logout_through_one_replica_ends_the_session_on_the_other(self, fleet: Fleet) -> None:
        session = log_in(fleet.a)
        assert get(fleet.a.url("/app/before"), session).status_code == 200  # cached by A's worker
        out = get(fleet.b.url("/logout"), session)
        assert out.status_code == 302
        location = urlsplit(out.headers["location"])
        assert f"{location.scheme}://{location.netloc}{location.path}" == f"{fleet.idp.issuer}/end_session"
        assert parse_qs(location.query)["client_id"] == [CLIENT_ID]
        assert "id_token_hint" in parse_qs(location.query)
        cleared = set_cookies(out)[session.split("=")[0]]
        assert "Max-Age=0" in cleared
        assert get(fleet.b.url("/app/after"), session).status_code == 302  # the replica that served it: at once
        # A may serve it from its cache for CACHE_TTL; never longer (the deadline leaves room for a slow machine).
        wait_until(lambda: get(fleet.a.url("/app/after"), session).status_code == 302,
                   timeout=LOGOUT_REACHES_EVERY_WORKER + 8, what="replica A to refuse the session")  # fmt: skip

    def test_an_expired_access_token_is_refreshed_once_and_forwarded(self, fleet: Fleet) -> None:
        fleet.idp.access_ttl = 1  # expired at once: gw refreshes a token REFRESH_MARGIN before its expiry
        try:
            session = log_in(fleet.a)
            first = fleet.idp.access_tokens[-1]
            fleet.idp.access_ttl = 3600
            refreshes = fleet.idp.refreshes
            assert get(fleet.b.url("/app/refreshed"), session).status_code == 200
        finally:
            fleet.idp.access_ttl = 3600
        assert fleet.idp.refreshes == refreshes + 1
        fresh = fleet.idp.access_tokens[-1]
        assert fresh != first
        assert seen(fleet.upstream, "/app/refreshed")[-1].header("Authorization") == f"Bearer {fresh}"
        # The refreshed session is the fleet's: A serves it without refreshing again.
        assert get(fleet.a.url("/app/refreshed-too"), session).status_code == 200
        assert fleet.idp.refreshes == refreshes + 1
        assert seen(fleet.upstream, "/app/refreshed-too")[-1].header("Authorization") == f"Bearer {fresh}"

    def test_requests_of_one_session_share_one_refresh(self, fleet: Fleet) -> None:
        fleet.idp.access_ttl = 1
        try:
            session = log_in(fleet.a)
            fleet.idp.access_ttl = 3600
            refreshes = fleet.idp.refreshes
            with ThreadPoolExecutor(6) as pool:
                statuses = list(pool.map(lambda i: get(fleet.b.url(f"/app/together/{i}"), session).status_code,
                                         range(6)))  # fmt: skip
        finally:
            fleet.idp.access_ttl = 3600
        assert statuses == [200] * 6
        assert fleet.idp.refreshes == refreshes + 1  # B has one worker: one refresh for all of them
        bearers = {seen(fleet.upstream, f"/app/together/{i}")[-1].header("Authorization") for i in range(6)}
        assert len(bearers) == 1

    def test_a_session_store_that_cannot_answer_gives_503_not_a_login_loop(self, fleet: Fleet) -> None:
        session = log_in(fleet.a)
        with fleet.valkey.client() as client:
            client.client_pause(5000, all=True)
            try:
                resp = get(fleet.b.url("/app/paused"), session)
            finally:
                client.client_unpause()
        assert resp.status_code == 503 and resp.headers["retry-after"] == "1"


def parse(docs: list[dict[str, Any]]) -> Any:
    text = config_yaml(8080, {"up": [("127.0.0.1", 9)]},
                       [{"name": "web", "rules": [{"backendRefs": [{"backend": "up"}]}]}])  # fmt: skip
    resources, errors = parse_documents([("gw.yaml", d) for d in [*yaml.safe_load_all(text), *docs]])
    return compile_resources(resources, errors=errors)


class TestConfig:
    def test_a_served_policy_compiles_onto_its_rules(self) -> None:
        result = parse(documents("https://idp.test"))
        assert [e for e in result.errors] == []
        (rule,) = [r for r in result.config.rules if r.security is not None]
        assert rule.security.oidc.scopes == ("openid", "email")
        assert rule.security.oidc_client_secret == CLIENT_SECRET.encode()

    @pytest.mark.parametrize(
        ("change", "field"),
        [({"provider": {"issuer": "ftp://idp"}}, "spec.oidc.provider.issuer"),
         ({"redirectURL": "https://app.test/cb?x=1"}, "spec.oidc.redirectURL"),
         ({"denyRedirect": {"headers": [{"name": "x", "type": "RegularExpression", "value": "("}]}},
          "spec.oidc.denyRedirect.headers[0].value"),
         ({"scopes": ["a b"]}, "spec.oidc.scopes[0]"),
         ({"cookieDomain": "Example..com"}, "spec.oidc.cookieDomain"),
         ({"clientSecret": None}, "spec.oidc.clientSecret"),
         ({"colour": "blue"}, "spec.oidc.colour")],
    )  # fmt: skip
    def test_an_error_names_its_field(self, change: dict[str, Any], field: str) -> None:
        docs = documents("https://idp.test")
        docs[1]["spec"]["oidc"].update(change)
        docs[1]["spec"]["oidc"] = {k: v for k, v in docs[1]["spec"]["oidc"].items() if v is not None}
        result = parse(docs)
        assert field in [e.field for e in result.errors], result.errors
        assert all(e.file == "gw.yaml" and "SecurityPolicy default/web" in e.obj for e in result.errors)

    def test_a_missing_client_secret_fails_closed(self) -> None:
        docs = documents("https://idp.test")[1:]
        result = parse(docs)
        (rule,) = [r for r in result.config.rules if r.invalid_reason]
        assert "client-secret" in rule.invalid_reason or "not found" in rule.invalid_reason

    @pytest.mark.parametrize("change", [{"passThroughAuthHeader": True}, {"clientIDRef": {"name": "x"}},
                                        {"cookieNames": {"idToken": "id"}}])  # fmt: skip
    def test_what_gw_does_not_serve_fails_closed(self, change: dict[str, Any]) -> None:
        docs = documents("https://idp.test")
        docs[1]["spec"]["oidc"].update(change)
        if "clientIDRef" in change:
            del docs[1]["spec"]["oidc"]["clientID"]
        result = parse(docs)
        (rule,) = [r for r in result.config.rules if r.invalid_reason]
        assert "not served by gw yet" in rule.invalid_reason


def test_the_double_is_a_real_http_server(tmp_path: Path) -> None:
    idp = OIDCProviderDouble(CLIENT_ID, CLIENT_SECRET).start()
    try:
        doc = httpx.get(f"{idp.issuer}/.well-known/openid-configuration", timeout=5).json()
        assert doc["issuer"] == idp.issuer
    finally:
        idp.stop()
