"""SecurityPolicy jwt through a real gateway, a real upstream and a real JWKS server the gateway fetches over
HTTP: verified tokens and their claim headers, every kind of bad token refused alike, optional, several
providers, a rotated key accepted after one refetch, a rate limit keyed by a claim; the config's errors."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from gw.config import compile_resources
from gw.config.parse import parse_documents
from tests.support.gateway import GatewayProcess, Response, config_yaml, free_port
from tests.support.jwtkit import JWKSServer, encode, hmac_token, jwks, make_signer
from tests.support.upstream import Upstream
from tests.support.wait import wait_until

TARGET = "gateway.networking.k8s.io"
ISSUER, OTHER_ISSUER = "https://idp.test", "https://other.test"
IDP_KEY = make_signer("RS256", "k1")
ROTATED_KEY = make_signer("RS256", "k2")
OTHER_KEY = make_signer("ES256", "other-1")
STRANGER = make_signer("RS256", "k1")  # the right kid, the wrong private key


def claims(sub: str = "alice", **extra: Any) -> dict[str, Any]:
    return {"iss": ISSUER, "aud": "api", "sub": sub, "exp": int(time.time()) + 3600,
            "org": {"team": "blue"}, **extra}  # fmt: skip


def bearer(token: bytes) -> dict[str, str]:
    return {"Authorization": "Bearer " + token.decode()}


class JWKSThread:
    """tests.support.jwtkit.JWKSServer on a loop of its own: the gateway under test is another process."""

    def __init__(self, document: dict[str, Any]) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server = self.call(JWKSServer(document).start())

    def call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(10)

    def set_document(self, document: dict[str, Any]) -> None:
        self.loop.call_soon_threadsafe(setattr, self.server, "document", document)

    def stop(self) -> None:
        self.call(self.server.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def provider(**extra: Any) -> dict[str, Any]:
    return {"name": "idp", "issuer": ISSUER, "audiences": ["api"], **extra}


def rule(name: str) -> dict[str, Any]:
    return {"name": name, "matches": [{"path": {"type": "PathPrefix", "value": f"/{name}"}}],
            "backendRefs": [{"backend": "up"}]}  # fmt: skip


def security(name: str, **spec: Any) -> dict[str, Any]:
    target = {"group": TARGET, "kind": "HTTPRoute", "name": "api", "sectionName": name}
    return {"apiVersion": "gw.dev/v1alpha1", "kind": "SecurityPolicy", "metadata": {"name": name},
            "spec": {"targetRefs": [target], **spec}}  # fmt: skip


def config(port: int, upstream: int, jwks_uri: str | None, limit: int = 2) -> str:
    """The rules and their policies; without `jwks_uri`, the idp's keys are written in (localJWKS)."""
    remote = {"remoteJWKS": {"uri": jwks_uri}} if jwks_uri else {"localJWKS": {"inline": json.dumps(jwks(IDP_KEY))}}
    headers = {"claimToHeaders": [{"header": "X-User", "claim": "sub"}, {"header": "X-Team", "claim": "org.team"}]}
    other = {"name": "other", "issuer": OTHER_ISSUER, "localJWKS": {"inline": json.dumps(jwks(OTHER_KEY))},
             "claimToHeaders": [{"header": "X-User", "claim": "email"}]}  # fmt: skip
    names = ("jwt", "optional", "multi", "limited", "open-fail", "scoped")
    readers = {
        "provider": "idp",
        "scopes": ["read"],
        "claims": [
            {"name": "org.team", "values": ["blue", "green"]},
            {"name": "groups", "valueType": "StringArray", "values": ["ops"]},
        ],
    }
    routes = [{"name": "api", "rules": [rule(n) for n in names]}]
    docs = [
        security("jwt", jwt={"providers": [provider(**remote, **headers)]}),
        security("optional", jwt={"optional": True, "providers": [provider(**remote, **headers)]}),
        security("multi", jwt={"providers": [other, provider(**remote, **headers)]}),
        security("limited", jwt={"providers": [provider(**remote)]}),
        security("open-fail", jwt={"failOpen": True, "providers": [provider(**remote, **headers)]}),
        security("scoped", jwt={"optional": True, "providers": [provider(**remote)]},
                 authorization={"rules": [{"action": "Allow", "principal": {"jwt": readers}}]}),
        {"apiVersion": "gw.dev/v1alpha1", "kind": "RateLimitPolicy", "metadata": {"name": "per-subject"},
         "spec": {"targetRefs": [{"kind": "HTTPRoute", "name": "api", "sectionName": "limited"}],
                  "limits": [{"name": "hourly", "requests": limit, "per": "1h",
                              "key": [{"type": "JWTClaim", "name": "sub"}]}]}},
    ]  # fmt: skip
    return config_yaml(port, {"up": [("127.0.0.1", upstream)]}, routes) + "---\n" + yaml.safe_dump_all(docs)


@pytest.fixture(scope="module")
def idp() -> Iterator[JWKSThread]:
    server = JWKSThread(jwks(IDP_KEY))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def gw(
    module_upstream: Upstream, idp: JWKSThread, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    tmp = tmp_path_factory.mktemp("jwt")
    port = free_port()
    path = tmp / "gw.yaml"
    path.write_text(config(port, module_upstream.port, idp.server.uri))
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


def refused(resp: Response) -> dict[str, Any]:
    assert resp.status == 401
    assert resp.header("Content-Type") == "application/problem+json"
    body = json.loads(resp.body)
    assert body["detail"] == "a valid bearer token is required"  # the same whatever was wrong
    return body  # type: ignore[no-any-return]


class TestVerified:
    def test_a_valid_token_reaches_the_upstream_with_its_claim_headers_replacing_the_clients(
        self, gw: GatewayProcess, module_upstream: Upstream
    ) -> None:
        headers = {**bearer(IDP_KEY.token(claims())), "X-User": "mallory", "x-team": "red"}
        assert get(gw, "/jwt/a", headers).status == 200
        upstream = seen(module_upstream, "/jwt/a")[-1]
        assert upstream.header_list("X-User") == ["alice"]
        assert upstream.header_list("X-Team") == ["blue"]  # a nested claim, by its dotted path
        assert upstream.header("Authorization") == headers["Authorization"]  # forwarded, as Envoy Gateway

    def test_a_token_remembered_with_its_request_head_is_refused_once_it_expires(self, gw: GatewayProcess) -> None:
        """The same head again is served from the phase's memo of heads: only until the token's exp
        (plus the 60 s of skew allowed)."""
        headers = bearer(IDP_KEY.token(claims("brief", exp=int(time.time()) - 58)))
        assert [get(gw, "/jwt/brief", headers).status for _ in range(3)] == [200] * 3
        wait_until(lambda: get(gw, "/jwt/brief", headers).status == 401, timeout=10, what="the token refused")

    def test_a_token_in_the_access_token_parameter_is_accepted_and_never_logged(self, gw: GatewayProcess) -> None:
        token = IDP_KEY.token(claims("param-user"))
        assert get(gw, f"/jwt/q?access_token={token.decode()}&page=2").status == 200

        def logged() -> list[dict[str, Any]]:
            text = gw.access_log.read_text() if gw.access_log.exists() else ""
            return [x for x in map(json.loads, text.splitlines()) if x["path"].startswith("/jwt/q")]

        line = wait_until(logged, what="the access log line")[0]  # type: ignore[index]
        assert line["path"] == "/jwt/q?access_token=REDACTED&page=2"
        assert line["consumer"] == "param-user"
        assert token.decode() not in gw.access_log.read_text()

    @pytest.mark.parametrize(
        "token",
        [
            IDP_KEY.token(claims(exp=int(time.time()) - 3600)),  # expired
            IDP_KEY.token(claims(aud="other-api")),  # wrong audience
            IDP_KEY.token(claims(iss="https://evil.test")),  # wrong issuer
            STRANGER.token(claims()),  # bad signature
            encode({"alg": "none", "kid": "k1"}, claims(), lambda data: b""),  # alg none
            hmac_token(json.dumps(IDP_KEY.jwk).encode(), claims(), kid="k1"),  # HS256 with the public key
            b"not-a-jwt",
        ],
        ids=["expired", "audience", "issuer", "signature", "none", "hmac", "garbage"],
    )
    def test_a_bad_token_answers_401_invalid_token_and_nothing_goes_upstream(
        self, gw: GatewayProcess, module_upstream: Upstream, token: bytes
    ) -> None:
        before = len(seen(module_upstream, "/jwt"))
        resp = get(gw, "/jwt/bad", bearer(token))
        refused(resp)
        assert resp.header("WWW-Authenticate") == 'Bearer realm="default/jwt", error="invalid_token"'
        assert len(seen(module_upstream, "/jwt")) == before

    def test_no_token_answers_401_with_a_bare_bearer_challenge(self, gw: GatewayProcess) -> None:
        resp = get(gw, "/jwt/none", {"Authorization": "Basic eDp5"})
        refused(resp)
        assert resp.header("WWW-Authenticate") == 'Bearer realm="default/jwt"'  # RFC 6750 §3.1: no error code


class TestOptionalAndFailOpen:
    def test_optional_lets_a_request_without_a_token_through_anonymous(
        self, gw: GatewayProcess, module_upstream: Upstream
    ) -> None:
        assert get(gw, "/optional/anon", {"X-User": "mallory"}).status == 200
        assert seen(module_upstream, "/optional/anon")[-1].header_list("X-User") == []  # never the client's word
        assert get(gw, "/optional/known", bearer(IDP_KEY.token(claims("bob")))).status == 200
        assert seen(module_upstream, "/optional/known")[-1].header_list("X-User") == ["bob"]

    def test_optional_still_refuses_a_bad_token(self, gw: GatewayProcess) -> None:
        refused(get(gw, "/optional/bad", bearer(STRANGER.token(claims()))))

    def test_fail_open_lets_a_bad_token_through_anonymous(self, gw: GatewayProcess, module_upstream: Upstream) -> None:
        assert get(gw, "/open-fail/bad", {**bearer(STRANGER.token(claims())), "X-User": "mallory"}).status == 200
        assert seen(module_upstream, "/open-fail/bad")[-1].header_list("X-User") == []
        assert get(gw, "/open-fail/none").status == 200


class TestProviders:
    def test_each_provider_verifies_its_own_tokens_the_first_that_does_wins(
        self, gw: GatewayProcess, module_upstream: Upstream
    ) -> None:
        other = OTHER_KEY.token({"iss": OTHER_ISSUER, "sub": "o-1", "email": "o@other.test"})
        assert get(gw, "/multi/other", bearer(other)).status == 200
        assert seen(module_upstream, "/multi/other")[-1].header_list("X-User") == ["o@other.test"]
        assert get(gw, "/multi/idp", bearer(IDP_KEY.token(claims("carol")))).status == 200
        assert seen(module_upstream, "/multi/idp")[-1].header_list("X-User") == ["carol"]

    def test_a_token_no_provider_verifies_is_refused(self, gw: GatewayProcess) -> None:
        stranger = make_signer("ES256", "other-1").token({"iss": OTHER_ISSUER, "sub": "x"})
        refused(get(gw, "/multi/x", bearer(stranger)))


class TestAuthorization:
    @pytest.mark.parametrize(
        ("extra", "status"),
        [
            ({"scope": "read write", "groups": ["dev", "ops"]}, 200),
            ({"scp": ["read"], "groups": ["ops"], "org": {"team": "green"}}, 200),
            ({"scope": "write", "groups": ["ops"]}, 403),  # a scope missing
            ({"scope": "read", "groups": ["dev"]}, 403),  # no item of a StringArray claim matches
            ({"scope": "read", "groups": "ops"}, 403),  # a string where an array is expected
            ({"scope": "read", "groups": ["ops"], "org": {"team": "red"}}, 403),
        ],
    )
    def test_a_jwt_principal_matches_the_verified_tokens_scopes_and_claims(
        self, gw: GatewayProcess, extra: dict[str, Any], status: int
    ) -> None:
        assert get(gw, "/scoped/x", bearer(IDP_KEY.token(claims(**extra)))).status == status

    def test_an_anonymous_request_matches_no_jwt_principal(self, gw: GatewayProcess) -> None:
        assert get(gw, "/scoped/anon").status == 403  # jwt optional: through authentication, not authorization


def test_a_rate_limit_keyed_by_a_claim_gives_each_subject_its_own_budget(gw: GatewayProcess) -> None:
    alice, bob = bearer(IDP_KEY.token(claims("alice"))), bearer(IDP_KEY.token(claims("bob")))
    assert [get(gw, "/limited/1", alice).status for _ in range(3)] == [200, 200, 429]
    assert [get(gw, "/limited/2", bob).status for _ in range(3)] == [200, 200, 429]


def test_a_token_signed_with_a_rotated_key_is_accepted_after_one_refetch(gw: GatewayProcess, idp: JWKSThread) -> None:
    """The JWKS gains a key: the first token naming it makes the worker refetch once, long before the
    5 minutes of cacheDuration, and passes; tokens of the old key still pass."""
    assert get(gw, "/jwt/warm", bearer(IDP_KEY.token(claims()))).status == 200
    fetches = idp.server.fetches
    idp.set_document(jwks(IDP_KEY, ROTATED_KEY))
    # An unknown kid asks for a refetch at most once per 10s per worker: were one asked just now
    # (a request that came before the first fetch), this one waits for the next.
    wait_until(lambda: get(gw, "/jwt/rotated", bearer(ROTATED_KEY.token(claims()))).status == 200, timeout=20,
               what="the rotated key accepted")  # fmt: skip
    assert idp.server.fetches == fetches + 1
    assert [get(gw, f"/jwt/r{i}", bearer(ROTATED_KEY.token(claims("dan")))).status for i in range(3)] == [200] * 3
    assert get(gw, "/jwt/old", bearer(IDP_KEY.token(claims()))).status == 200
    assert idp.server.fetches == fetches + 1


def test_a_reload_keeps_the_workers_keys_and_closes_a_jwks_no_longer_used(
    gw: GatewayProcess, idp: JWKSThread, module_upstream: Upstream
) -> None:
    fetches = idp.server.fetches
    mark = len(gw.log)
    gw.config_path.write_text(config(gw.port, module_upstream.port, idp.server.uri, limit=5))
    os.kill(gw.pid, signal.SIGHUP)
    gw.wait_for_log("gw: config reloaded", after=mark)
    # The new snapshot's verifiers use the key set the worker fetched before: the rotated key is
    # known without a fetch.
    assert get(gw, "/jwt/reloaded", bearer(ROTATED_KEY.token(claims()))).status == 200
    assert idp.server.fetches == fetches
    assert idp.server._open  # the worker's keep-alive connection to the JWKS
    mark = len(gw.log)
    gw.config_path.write_text(config(gw.port, module_upstream.port, None))
    os.kill(gw.pid, signal.SIGHUP)
    gw.wait_for_log("gw: config reloaded", after=mark)
    wait_until(lambda: not idp.server._open, what="the JWKS no provider uses closed")
    assert get(gw, "/jwt/local", bearer(IDP_KEY.token(claims()))).status == 200
    assert idp.server.fetches == fetches


class TestConfig:
    BASE = [
        {"apiVersion": f"{TARGET}/v1", "kind": "GatewayClass", "metadata": {"name": "gw"},
         "spec": {"controllerName": "gw.dev/gateway-controller"}},
        {"apiVersion": f"{TARGET}/v1", "kind": "Gateway", "metadata": {"name": "edge"},
         "spec": {"gatewayClassName": "gw", "listeners": [{"name": "http", "port": 8080, "protocol": "HTTP"}]}},
        {"apiVersion": "gw.dev/v1alpha1", "kind": "Backend", "metadata": {"name": "app"},
         "spec": {"endpoints": [{"address": "127.0.0.1", "port": 9}]}},
        {"apiVersion": f"{TARGET}/v1", "kind": "HTTPRoute", "metadata": {"name": "api"},
         "spec": {"parentRefs": [{"name": "edge"}], "rules": [
             {"name": "jwt", "backendRefs": [{"group": "gw.dev", "kind": "Backend", "name": "app"}]}]}},
    ]  # fmt: skip

    def compiled(self, jwt: Any) -> Any:
        docs = [*self.BASE, security("jwt", jwt=jwt)]
        resources, errors = parse_documents([("sec.yaml", d) for d in docs])
        return compile_resources(resources, errors=errors)

    def test_a_valid_jwt_is_accepted_and_reaches_the_rule(self) -> None:
        local = {"localJWKS": {"inline": json.dumps(jwks(IDP_KEY))}}
        result = self.compiled({"optional": True, "providers": [provider(**local)]})
        assert result.errors == []
        rule = result.config.rules[0]
        assert rule.invalid_reason is None
        assert rule.security.jwt.optional and rule.security.jwt.providers[0].issuer == ISSUER
        accepted = {c.type: c for c in result.conditions["SecurityPolicy default/jwt"]}["Accepted"]
        assert accepted.status is True

    @pytest.mark.parametrize(
        ("jwt", "field"),
        [
            ({"providers": []}, "spec.jwt.providers"),
            ({"providers": [provider()]}, "spec.jwt.providers[0]"),
            ({"providers": [provider(remoteJWKS={"uri": "ftp://x"})]}, "spec.jwt.providers[0].remoteJWKS.uri"),
            ({"providers": [provider(localJWKS={"inline": "{}"})]}, "spec.jwt.providers[0].localJWKS.inline"),
            ({"providers": [provider(remoteJWKS={"uri": "http://x"}, claimToHeaders=[{"header": "Host",
              "claim": "sub"}])]}, "spec.jwt.providers[0].claimToHeaders[0].header"),
            ({"optional": "yes", "providers": [provider(remoteJWKS={"uri": "http://x"})]}, "spec.jwt.optional"),
            ({"providers": [provider(remoteJWKS={"uri": "http://x"}, issuers="x")]}, "spec.jwt.providers[0].issuers"),
        ],
    )  # fmt: skip
    def test_a_bad_field_is_named_and_the_rule_fails_closed(self, jwt: Any, field: str) -> None:
        result = self.compiled(jwt)
        assert field in [e.field for e in result.errors]
        assert result.config.rules[0].invalid_reason is not None  # 500, never unauthenticated

    def test_recompute_route_is_served(self) -> None:
        p = provider(
            remoteJWKS={"uri": "http://x"}, recomputeRoute=True, claimToHeaders=[{"header": "x-u", "claim": "sub"}]
        )
        result = self.compiled({"providers": [p]})
        assert result.errors == [] and result.config.rules[0].invalid_reason is None

    @pytest.mark.parametrize(
        ("principal", "field"),
        [
            ({"provider": "nope", "scopes": ["read"]}, "spec.authorization.rules[0].principal.jwt.provider"),
            ({"provider": "idp"}, "spec.authorization.rules[0].principal.jwt"),
            ({"provider": "idp", "claims": [{"name": "g", "valueType": "Int", "values": ["1"]}]},
             "spec.authorization.rules[0].principal.jwt.claims[0].valueType"),
            ({"provider": "idp", "claims": [{"name": "g"}]},
             "spec.authorization.rules[0].principal.jwt.claims[0].values"),
        ],
    )  # fmt: skip
    def test_a_bad_jwt_principal_is_named(self, principal: dict[str, Any], field: str) -> None:
        authz = {"rules": [{"action": "Allow", "principal": {"jwt": principal}}]}
        jwt = {"providers": [provider(remoteJWKS={"uri": "http://x"})]}
        docs = [*self.BASE, security("jwt", jwt=jwt, authorization=authz)]
        resources, errors = parse_documents([("sec.yaml", d) for d in docs])
        result = compile_resources(resources, errors=errors)
        assert [e.field for e in result.errors] == [field]
        assert result.config.rules[0].invalid_reason is not None

    def test_a_jwt_claim_rate_limit_key_needs_a_claim_name(self) -> None:
        limit = {"apiVersion": "gw.dev/v1alpha1", "kind": "RateLimitPolicy", "metadata": {"name": "l"},
                 "spec": {"targetRefs": [{"kind": "HTTPRoute", "name": "api"}],
                          "limits": [{"requests": 1, "per": "1s", "key": [{"type": "JWTClaim"}]}]}}  # fmt: skip
        resources, errors = parse_documents([("l.yaml", d) for d in [*self.BASE, limit]])
        result = compile_resources(resources, errors=errors)
        assert [e.field for e in result.errors] == ["spec.limits[0].key[0].name"]


@pytest.fixture(scope="module")
def tiered(module_upstream: Upstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    """A gateway whose route `tiers` has a gold rule (X-Tier: gold, paid tokens only) and a basic one."""
    keys = {"localJWKS": {"inline": json.dumps(jwks(IDP_KEY))}}
    tier = provider(**keys, claimToHeaders=[{"header": "X-Tier", "claim": "tier"}], recomputeRoute=True)

    def served_by(name: str) -> dict[str, Any]:
        header = {"name": "X-Served-By", "value": name}
        return {"type": "RequestHeaderModifier", "requestHeaderModifier": {"set": [header]}}

    gold = {"name": "gold", "backendRefs": [{"backend": "up"}], "filters": [served_by("gold")],
            "matches": [{"path": {"type": "PathPrefix", "value": "/tiered"},
                         "headers": [{"name": "X-Tier", "value": "gold"}]}]}  # fmt: skip
    basic = {"name": "basic", "backendRefs": [{"backend": "up"}], "filters": [served_by("basic")],
             "matches": [{"path": {"type": "PathPrefix", "value": "/tiered"}}]}  # fmt: skip
    paid = {"rules": [{"action": "Allow", "principal": {"jwt": {"provider": "idp",
            "claims": [{"name": "paid", "values": ["yes"]}]}}}]}  # fmt: skip
    route_policy = {"apiVersion": "gw.dev/v1alpha1", "kind": "SecurityPolicy", "metadata": {"name": "tiers"},
                    "spec": {"targetRefs": [{"group": TARGET, "kind": "HTTPRoute", "name": "tiers"}],
                             "jwt": {"providers": [tier]}}}  # fmt: skip
    gold_policy = {"apiVersion": "gw.dev/v1alpha1", "kind": "SecurityPolicy", "metadata": {"name": "gold"},
                   "spec": {"targetRefs": [{"group": TARGET, "kind": "HTTPRoute", "name": "tiers",
                                            "sectionName": "gold"}],
                            "jwt": {"providers": [tier]}, "authorization": paid}}  # fmt: skip
    tmp = tmp_path_factory.mktemp("recompute")
    port = free_port()
    path = tmp / "gw.yaml"
    routes = [{"name": "tiers", "rules": [gold, basic]}]
    text = config_yaml(port, {"up": [("127.0.0.1", module_upstream.port)]}, routes)
    path.write_text(text + "---\n" + yaml.safe_dump_all([route_policy, gold_policy]))
    gateway = GatewayProcess(path, port, free_port(), {}, tmp / "access.log").start()
    yield gateway
    gateway.stop()


class TestRecomputeRoute:
    """recomputeRoute: the claim headers take part in route matching, and the rule they lead to applies
    its own SecurityPolicy (Envoy Gateway: features targeting the new route apply)."""

    def served(self, gw: GatewayProcess, upstream: Upstream, target: str, headers: dict[str, str]) -> Any:
        assert get(gw, target, headers).status == 200
        (seen_there,) = seen(upstream, target)
        return seen_there

    def test_the_claim_header_chooses_the_rule(self, tiered: GatewayProcess, module_upstream: Upstream) -> None:
        gold = self.served(tiered, module_upstream, "/tiered/1", bearer(IDP_KEY.token(claims(tier="gold", paid="yes"))))
        assert gold.header("X-Served-By") == "gold" and gold.header_list("X-Tier") == ["gold"]
        silver = self.served(tiered, module_upstream, "/tiered/2", bearer(IDP_KEY.token(claims(tier="silver"))))
        assert silver.header("X-Served-By") == "basic" and silver.header_list("X-Tier") == ["silver"]

    def test_a_client_claiming_the_header_itself_is_matched_by_its_token(
        self, tiered: GatewayProcess, module_upstream: Upstream
    ) -> None:
        """The client's X-Tier: gold first matches the gold rule; its token says silver, so the basic
        rule serves it, with the token's value upstream."""
        headers = {**bearer(IDP_KEY.token(claims(tier="silver"))), "X-Tier": "gold"}
        forged = self.served(tiered, module_upstream, "/tiered/3", headers)
        assert forged.header("X-Served-By") == "basic" and forged.header_list("X-Tier") == ["silver"]

    def test_the_rule_recomputed_applies_its_own_policy(self, tiered: GatewayProcess) -> None:
        """The gold rule's own policy allows only paid tokens: a gold token that is not paid is refused
        there, though the route's policy, which matched first, has no authorization."""
        resp = get(tiered, "/tiered/4", bearer(IDP_KEY.token(claims(tier="gold", paid="no"))))
        assert resp.status == 403
        assert get(tiered, "/tiered/5").status == 401
