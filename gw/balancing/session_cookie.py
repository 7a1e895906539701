"""The signed session cookie that names an endpoint: encode, verify, and its Set-Cookie field (no I/O).

Any replica honours a cookie with no lookup: the value carries the endpoint ("address:port") and
its expiry, signed with HMAC-SHA256 by a key every replica has (GW_SESSION_KEYS: the first signs,
all verify, so keys rotate without ending sessions). The signature also covers the rule's scope
(gw.config.session: "namespace/route#index"), so a cookie issued for one rule never pins a request
of another, even under the same cookie name (GEP-1619: two rules never share a session).

Value: base64url without padding of `endpoint|expiry|` followed by the first 16 bytes of the MAC;
expiry is Unix seconds, 0 for none. A tampered, expired, foreign-scope or unknown-key cookie
decodes to None: the caller starts a new session.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import time
from collections.abc import Sequence

MAC_SIZE = 16  # bytes of HMAC-SHA256 kept: 128 bits, beyond forging by trial
MAX_VALUE = 512  # longer values are not ours (an endpoint label is at most ~60 bytes)
KEY_SIZE = 32  # bytes of a generated key


def new_key() -> bytes:
    """A fresh random signing key (for a fleet without GW_SESSION_KEYS: stored once, shared by all)."""
    return secrets.token_bytes(KEY_SIZE)


def _mac(key: bytes, scope: str, payload: bytes) -> bytes:
    return hmac.new(key, scope.encode() + b"\0" + payload, hashlib.sha256).digest()[:MAC_SIZE]


def encode(endpoint: str, expires_at: int, key: bytes, scope: str = "") -> str:
    """The cookie value naming `endpoint` until `expires_at` (Unix seconds; 0 = no expiry) for `scope`."""
    payload = f"{endpoint}|{int(expires_at)}|".encode()
    return base64.urlsafe_b64encode(payload + _mac(key, scope, payload)).rstrip(b"=").decode("ascii")


def decode(value: str, keys: Sequence[bytes], now: float | None = None, scope: str = "") -> str | None:
    """The endpoint label a cookie value names, or None when it is malformed, signed by none of
    `keys`, for another scope, or expired at `now` (Unix seconds; default: the clock)."""
    if not value or len(value) > MAX_VALUE:
        return None
    try:
        raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    except (binascii.Error, ValueError):
        return None
    if len(raw) <= MAC_SIZE:
        return None
    payload, mac = raw[:-MAC_SIZE], raw[-MAC_SIZE:]
    # Every key is tried, in constant time each: which key matched (or that none did) leaks nothing.
    if not any(hmac.compare_digest(_mac(key, scope, payload), mac) for key in keys):
        return None
    endpoint, sep, rest = payload.decode("utf-8", "replace").partition("|")
    expiry, sep2, tail = rest.partition("|")
    if not sep or not sep2 or tail or not endpoint or not expiry.isdigit():
        return None
    expires_at = int(expiry)
    if expires_at and expires_at <= (time.time() if now is None else now):
        return None
    return endpoint


def expiry(value: str) -> int:
    """The expiry (Unix seconds, 0 = none) a value carries; for a value `decode` accepted."""
    raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    return int(raw[:-MAC_SIZE].decode("utf-8", "replace").split("|")[1])


def set_cookie(
    name: str, value: str, *, secure: bool, path: str | None = "/", max_age: int | None = None, now: float | None = None
) -> bytes:
    """The Set-Cookie field value: HttpOnly and SameSite=Lax always, Secure on HTTPS listeners, Path
    when the session belongs to a route (None for a backend-level one: GEP-1619 leaves it unset),
    Max-Age and Expires for a Permanent cookie (`max_age` seconds; None: a session cookie)."""
    parts = [f"{name}={value}"]
    if path is not None:
        parts.append(f"Path={path}")
    if max_age is not None:
        expires = (time.time() if now is None else now) + max_age
        parts.append(f"Max-Age={max_age}")
        parts.append("Expires=" + time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(expires)))
    parts.append("HttpOnly")
    if secure:
        parts.append("Secure")
    parts.append("SameSite=Lax")
    return "; ".join(parts).encode("latin-1")


def cookie_values(cookie_header: bytes, name: str) -> list[str]:
    """Every value of cookie `name` in a Cookie header, in order (a browser may send several under
    one name, from different Paths: the caller takes the first that decodes for its scope)."""
    wanted = name.encode("latin-1")
    found = []
    for pair in cookie_header.split(b";"):
        key, sep, val = pair.strip().partition(b"=")
        if sep and key == wanted:
            found.append(val.strip().strip(b'"').decode("latin-1"))
    return found
