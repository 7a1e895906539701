"""JWT verification (gw.auth.jwt): every algorithm family with real keys, the refusals and their reasons,
the verified-token cache, claims to headers, scopes, and where a token is found in a request."""

from __future__ import annotations

import functools
import json
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from gw.auth import jwt as j
from gw.auth.jwks import KeySet, LocalKeySet, parse_jwks
from gw.auth.keys import JWKError, key_from_jwk
from gw.auth.provider import ClaimToHeader, ExtractFrom, HeaderExtractor, Provider
from tests.support.jwtkit import Signer, b64, encode, hmac_token, jwks, make_signer

NOW = 1_800_000_000.0
ALGS = ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"]


@functools.cache
def signer(alg: str, kid: str | None = None) -> Signer:
    return make_signer(alg, kid)


def verifier(*signers: Signer, clock: float = NOW, **provider: Any) -> j.Verifier:
    keys = LocalKeySet.from_document(json.dumps(jwks(*signers)))
    return j.Verifier(Provider("test", **provider), keys, clock=lambda: clock)


def claims(**more: Any) -> dict[str, Any]:
    return {"sub": "alice", "exp": NOW + 600, **more}


def refused(result: j.Result) -> str:
    assert isinstance(result, j.Refused), result
    return result.reason


@pytest.mark.parametrize("alg", ALGS)
def test_a_token_signed_with_each_algorithm_family_is_verified(alg: str) -> None:
    s = signer(alg)
    result = verifier(s).verify(s.token(claims()))
    assert isinstance(result, j.Verified)
    assert result.claims["sub"] == "alice"
    assert result.provider == "test"


@pytest.mark.parametrize("alg", ["RS256", "ES256", "EdDSA"])
def test_a_tampered_payload_fails_the_signature(alg: str) -> None:
    s = signer(alg)
    head, _, sig = s.token(claims()).split(b".")
    forged = head + b"." + b64(json.dumps(claims(sub="mallory")).encode()).encode() + b"." + sig
    assert refused(verifier(s).verify(forged)) == j.BAD_SIGNATURE


def test_a_token_signed_by_another_key_with_the_same_kid_fails_the_signature() -> None:
    other = make_signer("ES256", kid=signer("ES256").kid)
    assert refused(verifier(signer("ES256")).verify(other.token(claims()))) == j.BAD_SIGNATURE


def test_hmac_signed_with_the_rsa_public_key_is_refused() -> None:
    """Algorithm confusion: the verifier must never use the published RSA key as an HMAC secret."""
    s = signer("RS256")
    pem = s.private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    for alg in ("HS256", "HS384", "HS512"):
        assert refused(verifier(s).verify(hmac_token(pem, claims(), alg, kid=s.kid))) == j.ALG_NOT_ALLOWED


def test_alg_none_is_refused_in_any_spelling() -> None:
    s = signer("RS256")
    for alg in ("none", "None", "NONE"):
        token = encode({"alg": alg, "kid": s.kid}, claims(), lambda _: b"")
        assert refused(verifier(s).verify(token)) == j.ALG_NOT_ALLOWED


def test_an_rsa_key_does_not_verify_an_ecdsa_alg_nor_a_curve_another_hash() -> None:
    rsa_key, p256 = signer("RS256"), signer("ES256")
    forged = encode({"alg": "ES256", "kid": rsa_key.kid}, claims(), lambda data: p256.sign_input(data))
    assert refused(verifier(rsa_key).verify(forged)) == j.ALG_NOT_ALLOWED
    es384_on_p256 = encode({"alg": "ES384", "kid": p256.kid}, claims(), lambda data: p256.sign_input(data, "ES256"))
    assert refused(verifier(p256).verify(es384_on_p256)) == j.ALG_NOT_ALLOWED


def test_a_jwk_naming_its_alg_verifies_that_alg_only() -> None:
    pinned = Signer("RS256", "pinned", signer("RS256").private, jwk_alg=True)
    v = verifier(pinned)
    assert isinstance(v.verify(pinned.token(claims())), j.Verified)
    assert refused(v.verify(pinned.token(claims(), alg="PS256"))) == j.ALG_NOT_ALLOWED


def test_hmac_and_encryption_keys_in_a_jwks_are_skipped() -> None:
    s = signer("ES256")
    document = {
        "keys": [{"kty": "oct", "k": b64(b"secret"), "kid": "shared"}, {**s.jwk, "kid": "enc", "use": "enc"}, s.jwk]
    }
    keys, skipped = parse_jwks(json.dumps(document))
    assert [k.kid for k in keys] == [s.kid]
    assert len(skipped) == 2 and "oct" in skipped[0] and "use 'enc'" in skipped[1]
    v = j.Verifier(Provider("test"), KeySet(keys), clock=lambda: NOW)
    assert refused(v.verify(hmac_token(b"secret", claims(), kid="shared"))) == j.ALG_NOT_ALLOWED


def test_small_rsa_keys_and_bad_jwks_documents_are_refused() -> None:
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    with pytest.raises(JWKError, match="1024 bits is too small"):
        key_from_jwk(Signer("RS256", "small", small).jwk)
    for document, why in [("{", "not JSON"), ('{"keys": 1}', "keys"), ('{"keys": []}', "empty")]:
        with pytest.raises(JWKError, match=why):
            parse_jwks(document)


def test_exp_and_nbf_hold_with_a_small_skew() -> None:
    s = signer("ES256")
    v = verifier(s)
    assert isinstance(v.verify(s.token(claims(exp=NOW - j.SKEW + 1))), j.Verified)
    assert refused(v.verify(s.token(claims(exp=NOW - j.SKEW)))) == j.EXPIRED
    assert isinstance(v.verify(s.token(claims(nbf=NOW + j.SKEW - 1))), j.Verified)
    assert refused(v.verify(s.token(claims(nbf=NOW + j.SKEW + 1)))) == j.NOT_YET_VALID
    assert refused(v.verify(s.token(claims(exp="tomorrow")))) == j.MALFORMED
    assert refused(v.verify(s.token(claims(exp=True)))) == j.MALFORMED
    without_exp = v.verify(s.token({"sub": "alice"}))
    assert isinstance(without_exp, j.Verified) and without_exp.expires == float("inf")


def test_the_issuer_must_match_when_the_provider_names_one() -> None:
    s = signer("ES256")
    v = verifier(s, issuer="https://issuer.example")
    assert isinstance(v.verify(s.token(claims(iss="https://issuer.example"))), j.Verified)
    assert refused(v.verify(s.token(claims(iss="https://other.example")))) == j.WRONG_ISSUER
    assert refused(v.verify(s.token(claims()))) == j.WRONG_ISSUER
    assert isinstance(verifier(s).verify(s.token(claims(iss="anyone"))), j.Verified)


def test_the_audience_must_include_one_of_the_providers() -> None:
    s = signer("ES256")
    v = verifier(s, audiences=("api", "admin"))
    assert isinstance(v.verify(s.token(claims(aud="api"))), j.Verified)
    assert isinstance(v.verify(s.token(claims(aud=["web", "admin"]))), j.Verified)
    assert refused(v.verify(s.token(claims(aud=["web"])))) == j.WRONG_AUDIENCE
    assert refused(v.verify(s.token(claims()))) == j.WRONG_AUDIENCE
    assert refused(v.verify(s.token(claims(aud=7)))) == j.WRONG_AUDIENCE


def test_malformed_tokens_are_refused_as_malformed() -> None:
    s = signer("ES256")
    good = s.token(claims())
    head, payload, sig = good.split(b".")
    v = verifier(s)
    for token in [
        b"",
        b"abc",
        head + b"." + payload,
        good + b".x",
        b"!!!." + payload + b"." + sig,
        b64(b"[1]").encode() + b"." + payload + b"." + sig,
        head + b"." + payload + b".***",
        b"a" * (j.MAX_TOKEN_BYTES + 1),
        s.token(claims(), crit=["exp"]),
        s.token(claims(), kid=5),
    ]:
        assert refused(v.verify(token)) == j.MALFORMED, token[:40]
    # A payload that is not a JSON object, validly signed:
    not_object = encode({"alg": "ES256", "kid": s.kid}, {}, s.sign_input).split(b".")
    body = b64(b"[]").encode()
    token = not_object[0] + b"." + body + b"." + b64(s.sign_input(not_object[0] + b"." + body)).encode()
    assert refused(v.verify(token)) == j.MALFORMED


def test_an_unknown_kid_is_refused_at_once_by_a_local_jwks() -> None:
    s = signer("ES256")
    assert refused(verifier(s).verify(make_signer("ES256", "elsewhere").token(claims()))) == j.UNKNOWN_KID


def test_a_token_without_kid_is_tried_against_every_key() -> None:
    a, b = signer("ES256"), signer("EdDSA")
    token = encode({"alg": "EdDSA"}, claims(), b.sign_input)
    assert isinstance(verifier(a, b).verify(token), j.Verified)


def test_a_verified_token_is_not_verified_again_until_it_expires() -> None:
    s = signer("RS256")
    now = [NOW]
    keys = LocalKeySet.from_document(json.dumps(jwks(s)))
    v = j.Verifier(Provider("test"), keys, clock=lambda: now[0])
    token = s.token(claims(exp=NOW + 100))
    first = v.verify(token)
    assert isinstance(first, j.Verified) and v.verifications == 1
    for _ in range(5):
        assert v.verify(bytes(token)) is first  # another bytes object, as each request's is
    assert v.verifications == 1
    now[0] = NOW + 100 + j.SKEW
    assert refused(v.verify(token)) == j.EXPIRED
    assert v.verifications == 2
    assert token not in v._cache


def test_the_cache_is_bounded_and_drops_the_oldest() -> None:
    s = signer("ES256")
    keys = LocalKeySet.from_document(json.dumps(jwks(s)))
    v = j.Verifier(Provider("test"), keys, clock=lambda: NOW, cache_size=3)
    tokens = [s.token(claims(n=i)) for i in range(5)]
    for t in tokens:
        assert isinstance(v.verify(t), j.Verified)
    assert len(v._cache) == 3 and list(v._cache) == tokens[2:]
    v.verify(tokens[4])
    assert v.verifications == 5
    v.verify(tokens[0])
    assert v.verifications == 6


def test_refused_tokens_are_not_cached() -> None:
    s = signer("ES256")
    v = verifier(s, issuer="me")
    token = s.token(claims(iss="you"))
    v.verify(token)
    v.verify(token)
    assert v.verifications == 2 and v._cache == {}


def test_claims_become_headers_nested_by_dots_and_only_scalars() -> None:
    s = signer("ES256")
    wanted = (
        ClaimToHeader("x-user", "sub"),
        ClaimToHeader("x-team", "org.team"),
        ClaimToHeader("x-url-claim", "https://example.com/tier"),
        ClaimToHeader("x-admin", "admin"),
        ClaimToHeader("x-level", "level"),
        ClaimToHeader("x-groups", "groups"),
        ClaimToHeader("x-missing", "nope.nothing"),
        ClaimToHeader("x-evil", "evil"),
        ClaimToHeader("x-name", "name"),
    )
    token = s.token(
        claims(
            org={"team": "core"},
            admin=False,
            level=3,
            groups=["a"],
            evil="x\r\ninjected: yes",
            name="Zoë",
            **{"https://example.com/tier": "gold"},
        )
    )
    result = verifier(s, claim_to_headers=wanted).verify(token)
    assert isinstance(result, j.Verified)
    assert result.headers == (
        (b"x-user", b"alice"),
        (b"x-team", b"core"),
        (b"x-url-claim", b"gold"),
        (b"x-admin", b"false"),
        (b"x-level", b"3"),
        (b"x-name", "Zoë".encode()),
    )


def test_scopes_from_scope_or_scp() -> None:
    assert j.scopes({"scope": "read  write"}) == {"read", "write"}
    assert j.scopes({"scp": ["read", 3, "admin"]}) == {"read", "admin"}
    assert j.scopes({"scp": "read"}) == {"read"}
    assert j.scopes({}) == frozenset()


def test_the_token_is_found_where_extract_from_says() -> None:
    default = Provider("p").extract_from

    def fields(**headers: bytes) -> Any:
        return lambda name: headers.get(name.decode().replace("-", "_"))

    assert j.find_token(default, fields(authorization=b"Bearer abc.def.ghi"), b"") == b"abc.def.ghi"
    assert j.find_token(default, fields(authorization=b"bearer  abc"), b"") == b"abc"
    assert j.find_token(default, fields(authorization=b"Basic dXNlcg=="), b"") is None
    assert j.find_token(default, fields(), b"x=1&access_token=a%2Eb&access_token=c") == b"a.b"
    custom = ExtractFrom(headers=(HeaderExtractor("x-token"),), cookies=("session",), params=())
    assert j.find_token(custom, fields(x_token=b" t1 "), b"access_token=no") == b"t1"
    assert j.find_token(custom, fields(cookie=b"a=1; session=t2"), b"") == b"t2"
    assert j.find_token(custom, fields(), b"access_token=no") is None


def test_authenticate_finds_the_token_and_remembers_it_by_the_header_that_carried_it() -> None:
    s = signer("ES256")
    extract = ExtractFrom(headers=(HeaderExtractor("authorization", "Bearer "), HeaderExtractor("x-token")))
    v = verifier(s, extract_from=extract)
    token = s.token(claims())
    head = {b"authorization": b"Bearer " + token}
    first = v.authenticate(head.get, b"")
    assert isinstance(first, j.Verified) and v.verifications == 1
    assert v.authenticate({b"authorization": b"Bearer " + token}.get, b"") is first
    assert v.verifications == 1
    assert b"Bearer " + token in v._cache
    # A header of another scheme is not the token: the next extractor is tried.
    other = v.authenticate({b"authorization": b"Basic dXNlcg==", b"x-token": token}.get, b"")
    assert isinstance(other, j.Verified)
    assert v.authenticate({b"authorization": b"Basic dXNlcg=="}.get, b"") is None
    assert refused(v.authenticate({b"x-token": b"not-a-jwt"}.get, b"")) == j.MALFORMED


def test_authenticate_reads_cookies_and_params_when_told() -> None:
    s = signer("ES256")
    token = s.token(claims())
    v = verifier(s, extract_from=ExtractFrom(cookies=("jwt",), params=("t",)))
    assert isinstance(v.authenticate({b"cookie": b"jwt=" + token}.get, b""), j.Verified)
    assert isinstance(v.authenticate({}.get, b"t=" + token), j.Verified)
    assert v.verifications == 1  # the same token, remembered by its bytes
    assert v.authenticate({b"authorization": b"Bearer " + token}.get, b"") is None
