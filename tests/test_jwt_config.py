"""Parsing a SecurityPolicy's `jwt` (gw.config.parse_jwt): Envoy Gateway's field names, every problem named by field."""

from __future__ import annotations

import json
from typing import Any

import yaml

from gw.auth.provider import (
    DEFAULT_EXTRACT_FROM,
    JWT,
    ClaimToHeader,
    ExtractFrom,
    HeaderExtractor,
    LocalJWKS,
    Provider,
    RemoteJWKS,
)
from gw.config.errors import ConfigError
from gw.config.parse_jwt import parse_jwt, parse_jwt_provider
from gw.config.reader import Reader
from tests.support.jwtkit import jwks, make_signer

OBJ = "SecurityPolicy default/auth"
JWKS = json.dumps(jwks(make_signer("ES256", "k1")))


def parse(text: str, provider_only: bool = False) -> tuple[Any, list[str]]:
    errors: list[ConfigError] = []
    r = Reader("policy.yaml", OBJ, errors)
    raw = yaml.safe_load(text)
    result = parse_jwt_provider(r, raw, "spec.jwt.providers[0]") if provider_only else parse_jwt(r, raw, "spec.jwt")
    return result, [f"{e.field}: {e.message}" for e in errors]


def test_a_provider_with_every_field() -> None:
    jwt, errors = parse(
        """
        optional: true
        providers:
        - name: example
          issuer: https://issuer.example
          audiences: [api, admin]
          remoteJWKS:
            uri: https://issuer.example/jwks.json
            cacheDuration: 10m
            failedRefetchDuration: 2s
          claimToHeaders:
          - {header: X-User, claim: sub}
          - {header: x-team, claim: org.team}
          recomputeRoute: true
          extractFrom:
            headers: [{name: X-Token}, {name: Authorization, valuePrefix: "Bearer "}]
            cookies: [session]
            params: [token]
        """
    )
    assert errors == []
    assert jwt == JWT(
        providers=(
            Provider(
                name="example",
                issuer="https://issuer.example",
                audiences=("api", "admin"),
                remote_jwks=RemoteJWKS("https://issuer.example/jwks.json", 600.0, 2.0),
                claim_to_headers=(ClaimToHeader("x-user", "sub"), ClaimToHeader("x-team", "org.team")),
                recompute_route=True,
                extract_from=ExtractFrom(
                    (HeaderExtractor("x-token", ""), HeaderExtractor("authorization", "Bearer ")),
                    ("session",),
                    ("token",),
                ),
            ),
        ),
        optional=True,
    )


def test_defaults_as_envoy_gateways() -> None:
    provider, errors = parse("{name: p, remoteJWKS: {uri: 'http://127.0.0.1:9/jwks'}}", provider_only=True)
    assert errors == []
    assert provider.remote_jwks == RemoteJWKS("http://127.0.0.1:9/jwks", 300.0, 1.0)
    assert provider.extract_from == DEFAULT_EXTRACT_FROM
    assert (provider.issuer, provider.audiences, provider.recompute_route) == (None, (), False)


def test_an_inline_local_jwks_is_checked_when_parsed() -> None:
    provider, errors = parse(json.dumps({"name": "p", "localJWKS": {"type": "Inline", "inline": JWKS}}), True)
    assert errors == [] and provider.local_jwks == LocalJWKS(JWKS)
    oct_only = json.dumps({"keys": [{"kty": "oct", "k": "c2VjcmV0"}]})
    _, errors = parse(json.dumps({"name": "p", "localJWKS": {"inline": oct_only}}), True)
    assert len(errors) == 1
    assert errors[0].startswith("spec.jwt.providers[0].localJWKS.inline: is not a usable JWKS: no usable key")
    assert "symmetric (oct) keys are not accepted" in errors[0]


def test_each_problem_names_its_field() -> None:
    jwt, errors = parse(
        """
        failOpen: "yes"
        providers:
        - name: a
          issuer: ""
          audiences: [api, 3]
          remoteJWKS: {uri: "ftp://x/jwks", cacheDuration: soon, backendRefs: [{name: idp}]}
          claimToHeaders:
          - {header: Host, claim: sub}
          - {header: "x y", claim: sub}
          - {header: x-a, claim: a}
          - {header: X-A, claim: b}
          recomputeRoute: 1
          extractFrom: {headers: [{nam: x}], cookies: ["a b"]}
        - name: a
          localJWKS: {type: ValueRef, valueRef: {name: cm}}
          remoteJWKS: {uri: "https://idp/jwks"}
        - name: b
        - issuer: x
          audience: [api]
        """
    )
    assert jwt is None
    p = "spec.jwt.providers"
    assert errors == [
        f"{p}[0].issuer: must not be empty",
        f"{p}[0].audiences[1]: must be a non-empty string, not int",
        f"{p}[0].remoteJWKS.backendRefs: is not supported by gw: give the JWKS's uri (gw fetches it itself)",
        f"{p}[0].remoteJWKS.uri: 'ftp://x/jwks' is not an http:// or https:// URI",
        f"{p}[0].remoteJWKS.cacheDuration: not a Gateway API duration: 'soon' (use e.g. 10s, 500ms, 1m30s)",
        f"{p}[0].claimToHeaders[0].header: 'host' frames the request: a claim may not set it",
        f"{p}[0].claimToHeaders[1].header: 'x y' is not a valid HTTP header name",
        f"{p}[0].claimToHeaders[3].header: 'x-a' is set by an earlier claim",
        f"{p}[0].recomputeRoute: must be true or false, not int",
        f"{p}[0].extractFrom.headers[0].nam: is not a field of this object (did you mean 'name'?)",
        f"{p}[0].extractFrom.headers[0].name: is required",
        f"{p}[0].extractFrom.cookies[0]: 'a b' is not a cookie name",
        f"{p}[1].localJWKS.valueRef: is not supported by gw yet: write the JWKS under inline",
        f"{p}[1].localJWKS: set remoteJWKS or localJWKS, not both",
        f"{p}[2]: needs remoteJWKS or localJWKS: the keys that sign its tokens",
        f"{p}[3].audience: is not a field of this object (did you mean 'audiences'?)",
        f"{p}[3].name: is required",
        f"{p}[3]: needs remoteJWKS or localJWKS: the keys that sign its tokens",
        "spec.jwt.failOpen: must be true or false, not a string",
    ]


def test_provider_names_are_unique_and_providers_required() -> None:
    two = {"providers": [{"name": "a", "localJWKS": {"inline": JWKS}}, {"name": "a", "localJWKS": {"inline": JWKS}}]}
    assert parse(json.dumps(two))[1] == ["spec.jwt.providers[1].name: 'a' is the name of an earlier provider"]
    assert parse("{}")[1] == ["spec.jwt.providers: is required: at least one provider"]
    assert parse("{providers: []}")[1] == ["spec.jwt.providers: is required: at least one provider"]
