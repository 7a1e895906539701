"""The signed values of an OpenID Connect login: the session cookie, the login (state) cookie, the state.

Each is `base64url(payload).base64url(mac)`, the MAC an HMAC-SHA256 (first 16 bytes) by the fleet's
session keys (GW_SESSION_KEYS: the first signs, all verify) over a purpose and the policy, so a
value made for one purpose or policy is worth nothing as another. Nothing here is secret from the
browser that holds it (the PKCE verifier in the login cookie is the browser's own login's); what
the signature buys is that nobody else can make one.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Sequence
from typing import Any

import orjson

MAC_SIZE = 16
MAX_VALUE = 4096
SESSION, LOGIN, STATE = "session", "login", "state"  # purposes


def _b64(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data).rstrip(b"=")


def _unb64(data: bytes) -> bytes:
    return base64.urlsafe_b64decode(data + b"=" * (-len(data) % 4))


def _mac(key: bytes, purpose: str, scope: str, payload: bytes) -> bytes:
    return hmac.new(key, f"{purpose}\0{scope}\0".encode() + payload, hashlib.sha256).digest()[:MAC_SIZE]


def sign(payload: bytes, key: bytes, purpose: str, scope: str) -> bytes:
    return _b64(payload) + b"." + _b64(_mac(key, purpose, scope, payload))


def verify(value: bytes, keys: Sequence[bytes], purpose: str, scope: str) -> bytes | None:
    """The payload of a value signed by one of `keys` for `purpose` and `scope`, or None."""
    if not value or len(value) > MAX_VALUE:
        return None
    body, dot, mac = value.partition(b".")
    if not dot:
        return None
    try:
        payload, mac = _unb64(body), _unb64(mac)
    except (binascii.Error, ValueError):
        return None
    if not any(hmac.compare_digest(_mac(k, purpose, scope, payload), mac) for k in keys):
        return None
    return payload


def sign_json(value: dict[str, Any], key: bytes, purpose: str, scope: str) -> bytes:
    return sign(orjson.dumps(value), key, purpose, scope)


def verify_json(value: bytes, keys: Sequence[bytes], purpose: str, scope: str) -> dict[str, Any] | None:
    payload = verify(value, keys, purpose, scope)
    if payload is None:
        return None
    try:
        obj = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return None
    return obj if isinstance(obj, dict) else None


def cookie(header: bytes | None, name: bytes) -> list[bytes]:
    """Every value of cookie `name` in a Cookie header, in order."""
    if not header:
        return []
    found = []
    for pair in header.split(b";"):
        key, sep, val = pair.strip().partition(b"=")
        if sep and key == name:
            found.append(val.strip().strip(b'"'))
    return found


def set_cookie(name: str, value: bytes, *, secure: bool, same_site: str, domain: str | None,
               max_age: int | None = None, path: str = "/") -> bytes:  # fmt: skip
    """A Set-Cookie value: HttpOnly always, Secure on HTTPS (and with SameSite=None, which needs it)."""
    parts = [name.encode() + b"=" + value, f"Path={path}".encode()]
    if domain:
        parts.append(f"Domain={domain}".encode())
    if max_age is not None:
        parts.append(b"Max-Age=%d" % max_age)
    parts.append(b"HttpOnly")
    if secure or same_site == "None":
        parts.append(b"Secure")
    parts.append(f"SameSite={same_site}".encode())
    return b"; ".join(parts)
