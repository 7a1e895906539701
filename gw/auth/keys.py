"""JSON Web Keys (RFC 7517) as public keys, each with the JWS algorithms it may verify, and the check itself.

The algorithm a token names is never trusted on its own: a key verifies only the algorithms of
its own family (and the one its `alg` names, when it names one), so a token cannot make an RSA
key act as an HMAC secret (the classic algorithm confusion) or pick `none`. Symmetric (`oct`)
keys are not read at all: a gateway trusts keys it can publish, never shared secrets.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

MIN_RSA_BITS = 2048  # RFC 7518 §3.3: a key of 2048 bits or larger MUST be used with these algorithms

_SHA = {"256": hashes.SHA256, "384": hashes.SHA384, "512": hashes.SHA512}
RSA_ALGS = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"})
# Each curve signs with one hash (RFC 7518 §3.4): ES256 on P-521 is refused, not guessed at.
EC_CURVES: dict[str, tuple[type[ec.EllipticCurve], str, int]] = {
    "P-256": (ec.SECP256R1, "ES256", 32),
    "P-384": (ec.SECP384R1, "ES384", 48),
    "P-521": (ec.SECP521R1, "ES512", 66),
}
# "Ed25519"/"Ed448" are RFC 9864's fully specified names for what "EdDSA" leaves to the key.
OKP_ALGS = {"Ed25519": frozenset({"EdDSA", "Ed25519"}), "Ed448": frozenset({"EdDSA", "Ed448"})}
ALGORITHMS = RSA_ALGS | {alg for _, alg, _ in EC_CURVES.values()} | {"EdDSA", "Ed25519", "Ed448"}


class JWKError(ValueError):
    """A JWK gw cannot use, and why."""


@dataclass(frozen=True, slots=True, eq=False)
class Key:
    kid: str | None
    algorithms: frozenset[str]  # the JWS `alg` values this key verifies
    public: Any  # a cryptography public key
    material: bytes  # the public numbers, canonical: the same key in two fetches compares equal

    def verify(self, alg: str, signing_input: bytes, signature: bytes) -> bool:
        """Whether `signature` over `signing_input` is this key's under `alg` (one of self.algorithms)."""
        if alg not in self.algorithms:
            return False
        try:
            if alg[0] == "R":
                self.public.verify(signature, signing_input, padding.PKCS1v15(), _SHA[alg[2:]]())
            elif alg[0] == "P":
                h = _SHA[alg[2:]]()
                pss = padding.PSS(mgf=padding.MGF1(h), salt_length=h.digest_size)  # RFC 7518 §3.5
                self.public.verify(signature, signing_input, pss, h)
            elif alg[0] == "E" and alg[1] == "S":
                size = _ec_size(self.public)
                if len(signature) != 2 * size:  # JWS carries r || s, each of the curve's size
                    return False
                r = int.from_bytes(signature[:size], "big")
                s = int.from_bytes(signature[size:], "big")
                h = _SHA[alg[2:]]()
                self.public.verify(encode_dss_signature(r, s), signing_input, ec.ECDSA(h))
            else:
                self.public.verify(signature, signing_input)
        except InvalidSignature:
            return False
        return True


def _ec_size(public: ec.EllipticCurvePublicKey) -> int:
    return (public.curve.key_size + 7) // 8


def key_from_jwk(jwk: Any) -> Key:
    """The public key of one JWK; JWKError says why one cannot be used."""
    if not isinstance(jwk, dict):
        raise JWKError("a key must be a JSON object")
    kty, kid, alg, use = jwk.get("kty"), jwk.get("kid"), jwk.get("alg"), jwk.get("use")
    if kid is not None and not isinstance(kid, str):
        raise JWKError("kid must be a string")
    if use is not None and use != "sig":
        raise JWKError(f"use {use!r}: only signature keys verify tokens")
    if kty == "RSA":
        n, e = _uint(jwk, "n"), _uint(jwk, "e")
        if n.bit_length() < MIN_RSA_BITS:
            raise JWKError(f"an RSA key of {n.bit_length()} bits is too small (at least {MIN_RSA_BITS})")
        try:
            public: Any = rsa.RSAPublicNumbers(e, n).public_key()
        except ValueError as exc:
            raise JWKError(f"not an RSA public key: {exc}") from None
        algs, material = RSA_ALGS, b"RSA:%x:%x" % (n, e)
    elif kty == "EC":
        crv = jwk.get("crv")
        if crv not in EC_CURVES:
            raise JWKError(f"EC curve {crv!r} is not one of {', '.join(EC_CURVES)}")
        curve, curve_alg, _ = EC_CURVES[crv]
        x, y = _uint(jwk, "x"), _uint(jwk, "y")
        try:
            public = ec.EllipticCurvePublicNumbers(x, y, curve()).public_key()
        except ValueError as exc:
            raise JWKError(f"not a point on {crv}: {exc}") from None
        algs, material = frozenset({curve_alg}), b"EC:%s:%x:%x" % (crv.encode(), x, y)
    elif kty == "OKP":
        crv = jwk.get("crv")
        if crv not in OKP_ALGS:
            raise JWKError(f"OKP curve {crv!r} is not Ed25519 or Ed448")
        raw = _bytes(jwk, "x")
        try:
            cls = ed25519.Ed25519PublicKey if crv == "Ed25519" else ed448.Ed448PublicKey
            public = cls.from_public_bytes(raw)
        except ValueError as exc:
            raise JWKError(f"not an {crv} public key: {exc}") from None
        algs, material = OKP_ALGS[crv], b"OKP:%s:%s" % (crv.encode(), raw.hex().encode())
    elif kty == "oct":
        raise JWKError("symmetric (oct) keys are not accepted: HMAC-signed tokens are refused")
    else:
        raise JWKError(f"key type {kty!r} is not RSA, EC or OKP")
    if alg is not None:
        if alg not in algs:
            raise JWKError(f"alg {alg!r} does not fit a {kty} key (it may be {', '.join(sorted(algs))})")
        algs = frozenset({alg})
    return Key(kid, algs, public, material)


def b64url(text: str | bytes) -> bytes:
    """base64url without padding (RFC 7515 §2), strictly: any other character is an error."""
    if isinstance(text, str):
        text = text.encode("ascii", "replace")
    if text.translate(None, _B64URL):
        raise ValueError("not base64url")
    try:
        return base64.urlsafe_b64decode(text + b"=" * (-len(text) % 4))
    except binascii.Error:
        raise ValueError("not base64url") from None


_B64URL = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


def _bytes(jwk: dict[str, Any], name: str) -> bytes:
    value = jwk.get(name)
    if not isinstance(value, str) or not value:
        raise JWKError(f"{name} is required (base64url)")
    try:
        return b64url(value)
    except ValueError:
        raise JWKError(f"{name} is not base64url") from None


def _uint(jwk: dict[str, Any], name: str) -> int:
    return int.from_bytes(_bytes(jwk, name), "big")
