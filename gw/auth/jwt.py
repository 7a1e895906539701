"""Verify a provider's JWTs (RFC 7519 over JWS, RFC 7515) and remember the ones verified until they expire.

`Verifier.authenticate(field, query)` finds a request's token where the provider's extractFrom
says (`Verifier.verify(token)` takes one found otherwise) and answers at once with `Verified` or
`Refused`, or with `Pending` when the token names a key the provider's JWKS does not hold yet and
one refetch may bring it: the phase returns WAIT and `pending.then(callback)` calls back (from the
event loop, never from inside authenticate) with the final answer. A token verified once is kept,
by its bytes, until its `exp`: the next request with it costs a dict lookup and a clock read, not
a signature check.

Every refusal says why (`Refused.reason`, for logs and metrics); the caller answers 401 whatever
it is, telling the client nothing about which part of its credential was wrong.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any
from urllib.parse import unquote_to_bytes

import orjson

from gw.auth.jwks import KeySet
from gw.auth.keys import ALGORITHMS, Key, b64url
from gw.auth.provider import ClaimToHeader, ExtractFrom, Provider

SKEW = 60.0  # seconds of clock difference allowed when checking exp and nbf
MAX_TOKEN_BYTES = 16384
CACHE_SIZE = 4096  # verified tokens kept per provider per worker; the oldest goes first

# Refused.reason values: the same words in logs and metric labels.
MALFORMED = "malformed"
ALG_NOT_ALLOWED = "alg_not_allowed"
UNKNOWN_KID = "unknown_kid"
BAD_SIGNATURE = "bad_signature"
EXPIRED = "expired"
NOT_YET_VALID = "not_yet_valid"
WRONG_ISSUER = "wrong_issuer"
WRONG_AUDIENCE = "wrong_audience"


class Verified:
    """A token that passed: its claims, the headers its claims become, and until when it holds."""

    __slots__ = ("claims", "expires", "headers", "key", "provider")

    def __init__(
        self, provider: str, claims: dict[str, Any], expires: float, headers: tuple[tuple[bytes, bytes], ...], key: Key
    ) -> None:
        self.provider = provider
        self.claims = claims
        self.expires = expires  # wall-clock seconds, skew included; inf for a token without exp
        self.headers = headers  # claimToHeaders: (lower-case name, value) to set on the upstream request
        self.key = key


class Refused:
    __slots__ = ("detail", "reason")

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason = reason  # one of the constants above
        self.detail = detail  # for the log line; never sent to the client

    def __repr__(self) -> str:
        return f"Refused({self.reason}{': ' + self.detail if self.detail else ''})"


class Pending:
    """A token waiting on a JWKS refetch; `then(callback)` gets Verified or Refused once it is done."""

    __slots__ = ("_fetch", "_key", "_token", "_verifier")

    def __init__(self, verifier: Verifier, token: bytes, key: bytes, fetch: Any) -> None:
        self._verifier, self._token, self._key, self._fetch = verifier, token, key, fetch

    def then(self, callback: Callable[[Verified | Refused], None]) -> None:
        verifier, token, key = self._verifier, self._token, self._key
        # Done callbacks run from the loop, so `callback` never runs inside the phase's on_request.
        self._fetch.add_done_callback(lambda _: callback(verifier.verify_now(token, key)))


Result = Verified | Refused | Pending


class Verifier:
    """One provider's verification in one worker, over the key set it trusts."""

    def __init__(
        self,
        provider: Provider,
        keys: KeySet,
        *,
        clock: Callable[[], float] = time.time,
        cache_size: int = CACHE_SIZE,
    ) -> None:
        self.provider = provider
        self.keys = keys
        self.clock = clock
        self.cache_size = cache_size
        self.verifications = 0  # signature checks made: what the cache saves
        self._cache: dict[bytes, Verified] = {}
        self._version = keys.version
        self._issuer = provider.issuer
        self._audiences = frozenset(provider.audiences)
        self._claim_headers = provider.claim_to_headers
        self._headers = tuple((h.lname, h.lprefix) for h in provider.extract_from.headers)

    def authenticate(self, field: Callable[[bytes], bytes | None], query: bytes) -> Result | None:
        """The request's token, found where extractFrom says and verified; None when it carries none.

        `field` reads a request header by lower-case name (Exchange.field). A token from a header
        is remembered by the header's whole value, so a request with a token seen before costs a
        header read, a dict lookup and a clock read: not even the prefix is stripped again.
        """
        if self._version != self.keys.version:
            self._forget_dropped_keys()
        for lname, lprefix in self._headers:
            raw = field(lname)
            if raw is None:
                continue
            hit = self._cache.get(raw)
            if hit is not None and hit.expires > self.clock():
                return hit
            token = _strip_prefix(raw, lprefix)
            if token:
                return self._verify(token, True, raw)
        token = _cookie_or_param(self.provider.extract_from, field, query)
        return None if token is None else self.verify(token)

    def verify(self, token: bytes) -> Result:
        """Verified, Refused, or Pending on a JWKS refetch (see the module docstring)."""
        if self._version != self.keys.version:
            self._forget_dropped_keys()
        hit = self._cache.get(token)
        if hit is not None and hit.expires > self.clock():
            return hit
        return self._verify(token, True, token)

    def verify_now(self, token: bytes, key: bytes | None = None) -> Verified | Refused:
        """As verify, but an unknown kid is refused rather than refetched (after a refetch)."""
        key = token if key is None else key
        if self._version != self.keys.version:
            self._forget_dropped_keys()
        hit = self._cache.get(key)
        if hit is not None and hit.expires > self.clock():
            return hit
        result = self._verify(token, False, key)
        assert not isinstance(result, Pending)
        return result

    def _verify(self, token: bytes, refetch: bool, key: bytes) -> Result:
        """Verify `token` in full; remember it under `key` (the token, or the header that carried it)."""
        self._cache.pop(key, None)  # expired, if it was there
        if len(token) > MAX_TOKEN_BYTES:
            return Refused(MALFORMED, f"{len(token)} bytes")
        parts = token.split(b".")
        if len(parts) != 3:
            return Refused(MALFORMED, "not three base64url parts")
        header = _json_object(parts[0])
        if header is None:
            return Refused(MALFORMED, "header is not a base64url JSON object")
        alg, kid = header.get("alg"), header.get("kid")
        if not isinstance(alg, str) or alg not in ALGORITHMS:
            return Refused(ALG_NOT_ALLOWED, f"alg {alg!r}")
        if kid is not None and not isinstance(kid, str):
            return Refused(MALFORMED, "kid is not a string")
        if "crit" in header:  # RFC 7515 §4.1.11: extensions a verifier does not understand must fail it
            return Refused(MALFORMED, "crit header parameters are not supported")
        keys = self.keys.find(kid)
        if not keys:
            # Another provider's token (several may guard one route) must not make this one refetch:
            # its unverified `iss` is enough to tell, when this provider names an issuer.
            if self._issuer is not None:
                unverified = _json_object(parts[1])
                if unverified is None or unverified.get("iss") != self._issuer:
                    iss = unverified.get("iss") if unverified is not None else None
                    return Refused(WRONG_ISSUER, f"iss {iss!r} (unverified; kid {kid!r} unknown)")
            fetch = self.keys.refetch() if refetch else None
            if fetch is not None:
                return Pending(self, token, key, fetch)
            return Refused(UNKNOWN_KID, f"kid {kid!r}" if kid is not None else "no keys")
        candidates = [k for k in keys if alg in k.algorithms]
        if not candidates:
            return Refused(ALG_NOT_ALLOWED, f"alg {alg} does not fit key {kid!r}")
        try:
            signature = b64url(parts[2])
        except ValueError:
            return Refused(MALFORMED, "signature is not base64url")
        signing_input = token[: len(parts[0]) + 1 + len(parts[1])]
        self.verifications += 1
        signer = next((k for k in candidates if k.verify(alg, signing_input, signature)), None)
        if signer is None:
            return Refused(BAD_SIGNATURE, f"alg {alg}, kid {kid!r}")
        claims = _json_object(parts[1])
        if claims is None:
            return Refused(MALFORMED, "payload is not a base64url JSON object")
        return self._check_claims(key, claims, signer)

    def _check_claims(self, key: bytes, claims: dict[str, Any], signer: Key) -> Verified | Refused:
        exp, nbf = claims.get("exp"), claims.get("nbf")
        for name, value in (("exp", exp), ("nbf", nbf)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
                return Refused(MALFORMED, f"{name} is not a number")
        now = self.clock()
        expires = float("inf") if exp is None else exp + SKEW
        if now >= expires:
            return Refused(EXPIRED, f"exp {exp}, now {now:.0f}")
        if nbf is not None and now + SKEW < nbf:
            return Refused(NOT_YET_VALID, f"nbf {nbf}, now {now:.0f}")
        if self._issuer is not None and claims.get("iss") != self._issuer:
            return Refused(WRONG_ISSUER, f"iss {claims.get('iss')!r}")
        if self._audiences:
            aud = claims.get("aud")
            given = (aud,) if isinstance(aud, str) else aud if isinstance(aud, list) else ()
            if self._audiences.isdisjoint(a for a in given if isinstance(a, str)):
                return Refused(WRONG_AUDIENCE, f"aud {aud!r}")
        verified = Verified(self.provider.name, claims, expires, claim_headers(claims, self._claim_headers), signer)
        cache = self._cache
        if len(cache) >= self.cache_size:
            del cache[next(iter(cache))]
        cache[key] = verified
        return verified

    def _forget_dropped_keys(self) -> None:
        """The key set changed: tokens signed by a key no longer in it are verified afresh (and refused)."""
        self._version = self.keys.version
        live = {k.material for k in self.keys.keys}
        self._cache = {t: v for t, v in self._cache.items() if v.key.material in live}


def _json_object(part: bytes) -> dict[str, Any] | None:
    try:
        value = orjson.loads(b64url(part))
    except ValueError:  # orjson.JSONDecodeError is one
        return None
    return value if isinstance(value, dict) else None


def claim(claims: dict[str, Any], name: str) -> Any:
    """A claim by name, or by a dotted path into nested objects ("org.team") when no claim has the whole name."""
    if name in claims:
        return claims[name]
    value: Any = claims
    for part in name.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def claim_headers(claims: dict[str, Any], wanted: tuple[ClaimToHeader, ...]) -> tuple[tuple[bytes, bytes], ...]:
    """claimToHeaders: a header for each claim that is a string, number or boolean (as Envoy, no lists)."""
    headers = []
    for c in wanted:
        value = claim(claims, c.claim)
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, str | int | float):
            text = str(value)
        else:
            continue  # absent, null, list or object
        raw = text.encode()
        if b"\r" in raw or b"\n" in raw or b"\0" in raw:
            continue  # a claim must not split the upstream request's head
        headers.append((c.header.encode("ascii"), raw))
    return tuple(headers)


def scopes(claims: dict[str, Any]) -> frozenset[str]:
    """The token's scopes: RFC 8693's space-separated `scope`, or the `scp` list some issuers use."""
    value = claims.get("scope")
    if value is None:
        value = claims.get("scp")
    if isinstance(value, str):
        return frozenset(value.split())
    if isinstance(value, list):
        return frozenset(s for s in value if isinstance(s, str))
    return frozenset()


def find_token(extract: ExtractFrom, field: Callable[[bytes], bytes | None], query: bytes) -> bytes | None:
    """The token of a request, where `extract` says to look: its headers (`field` reads one by its
    lower-case name, as Exchange.field), then its cookies, then its query parameters. None if absent."""
    for h in extract.headers:
        raw = field(h.lname)
        if raw is not None:
            token = _strip_prefix(raw, h.lprefix)
            if token:
                return token
    return _cookie_or_param(extract, field, query)


def _strip_prefix(raw: bytes, lprefix: bytes) -> bytes | None:
    """The token in a header's value after its prefix (compared in lower case), or None."""
    if lprefix:
        if raw[: len(lprefix)].lower() != lprefix:
            return None
        raw = raw[len(lprefix) :]
    return raw.strip() or None


def _cookie_or_param(extract: ExtractFrom, field: Callable[[bytes], bytes | None], query: bytes) -> bytes | None:
    if extract.cookies:
        cookie = field(b"cookie")
        if cookie:
            jar = dict(_pairs(cookie, b";", unquote=False))
            for name in extract.cookies:
                value = jar.get(name.encode("ascii"))
                if value:
                    return value
    if extract.params and query:
        params = dict(reversed(_pairs(query, b"&", unquote=True)))  # the first of a repeated name
        for name in extract.params:
            value = params.get(name.encode("ascii"))
            if value:
                return value
    return None


def _pairs(text: bytes, sep: bytes, *, unquote: bool) -> list[tuple[bytes, bytes]]:
    pairs = []
    for item in text.split(sep):
        name, eq, value = item.strip().partition(b"=")
        if eq:
            pairs.append((unquote_to_bytes(name) if unquote else name, unquote_to_bytes(value) if unquote else value))
    return pairs
