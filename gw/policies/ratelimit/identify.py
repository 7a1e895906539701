"""A request's key under one limit: the values of the limit's key parts, joined.

The extension point for identity: a Consumer key reads what authentication left on the request
(`identity`, gw.policies.security.identity: it runs before the rate limit); a JWTClaim key reads
one claim of the token the jwt phase verified (`identity.claims`).
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import unquote_to_bytes

from gw.auth.jwt import claim
from gw.config.ratelimit import CLIENT_ADDRESS, CONSUMER, HEADER, JWT_CLAIM, METHOD, QUERY_PARAM, ROUTE, KeyPart

Fields = list[tuple[bytes, bytes]]
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Extractor = Callable[[Any, Fields], bytes]

MAX_KEY = 128  # longer keys are hashed: a client cannot make us store its megabyte header


def key_function(parts: Sequence[KeyPart], trusted: Sequence[Network]) -> Callable[[Any, Fields], bytes]:
    """A function (request, forwarded fields) → this limit's key bytes. No parts: one shared key."""
    extractors = [_extractor(p, trusted) for p in parts]
    if not extractors:
        return lambda req, fields: b""
    if len(extractors) == 1:
        one = extractors[0]
        return lambda req, fields: _bounded(one(req, fields))
    return lambda req, fields: _bounded(b"\x1f".join(e(req, fields) for e in extractors))


def reads_fields(parts: Sequence[KeyPart], trusted: Sequence[Network]) -> bool:
    """True when a key of these parts reads the request's fields (others need only the request line)."""
    return any(p.type == HEADER or (p.type == CLIENT_ADDRESS and trusted) for p in parts)


def _bounded(key: bytes) -> bytes:
    return key if len(key) <= MAX_KEY else b"#" + hashlib.blake2b(key, digest_size=16).hexdigest().encode()


def _extractor(part: KeyPart, trusted: Sequence[Network]) -> Extractor:
    if part.type == CLIENT_ADDRESS:
        if not trusted:
            return lambda req, fields: req.client_host
        return lambda req, fields: client_address(req.client_host, fields, trusted)
    if part.type == HEADER:
        name = part.name.encode()
        # Several fields of one name count as their comma-joined value (RFC 9110 §5.3).
        return lambda req, fields: b",".join(v.strip() for n, v in fields if n.lower() == name)
    if part.type == QUERY_PARAM:
        name = part.name.encode()
        return lambda req, fields: query_param(req.query, name)
    if part.type == METHOD:
        return lambda req, fields: req.method
    if part.type == ROUTE:
        return lambda req, fields: req.rule.route.encode()
    if part.type == CONSUMER:
        return lambda req, fields: req.identity.key if req.identity is not None else b""
    if part.type == JWT_CLAIM:
        return lambda req, fields: claim_key(req.identity, part.name)
    raise ValueError(f"no key extractor for {part.type}")


def claim_key(identity: Any, name: str) -> bytes:
    """A claim of the request's verified token as key bytes; b"" when anonymous, absent, or a list or object."""
    claims = identity.claims if identity is not None else None
    if not claims:
        return b""
    value = claim(claims, name)
    if isinstance(value, bool):
        return b"true" if value else b"false"
    if isinstance(value, str | int | float):
        return str(value).encode()
    return b""


def client_address(peer: bytes, fields: Fields, trusted: Sequence[Network]) -> bytes:
    """The client as the trusted proxies saw it: X-Forwarded-For read from the right, past trusted hops.

    gw's forwarded X-Forwarded-For already ends with the peer's address, so the walk starts at
    the peer: an untrusted peer is the client whatever it claims.
    """
    xff = b""
    for name, value in fields:
        if name.lower() == b"x-forwarded-for":
            xff = value
    hops = [h.strip() for h in xff.split(b",") if h.strip()] if xff else [peer]
    for hop in reversed(hops):
        try:
            address = ipaddress.ip_address(hop.decode("latin-1"))
        except ValueError:
            return hop  # not an address: no proxy we trust wrote it
        if not any(address in net for net in trusted):
            return hop
    return hops[0]


def query_param(query: bytes, name: bytes) -> bytes:
    """The first value of `name` in a query string (percent-decoded); b"" when absent."""
    if not query:
        return b""
    for pair in query.lstrip(b"?").split(b"&"):
        key, _, value = pair.partition(b"=")
        if unquote_to_bytes(key.replace(b"+", b" ")) == name:
            return unquote_to_bytes(value.replace(b"+", b" "))
    return b""
