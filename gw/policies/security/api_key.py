"""apiKeyAuth: the request carries a key from the policy's Secrets; its client id becomes the consumer.

Keys are found by the SHA-256 of the presented key (built once per snapshot), then compared with
hmac.compare_digest: no comparison runs against a key the client did not already present, so the
time taken says nothing about which keys exist. A key verified once is remembered (bounded), so a
client's next requests cost a dict lookup. A missing or wrong key answers 401, the same either way.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Any
from urllib.parse import unquote_to_bytes

from gw.errors import Unauthorized
from gw.policies.phase import ANSWERED, CONTINUE, Exchange, Phase
from gw.policies.ratelimit.identify import query_param
from gw.policies.security.identity import Decisions, Identity

KNOWN = 10_000  # verified keys a worker remembers per policy
HEADS = 1_000  # request heads (at most HEAD_SIZE bytes each) remembered with the identity their key gave
HEAD_SIZE = 2_048
REFUSAL = "a valid API key is required"


class APIKeyAuth(Phase):
    kind = "api-key-auth"

    def __init__(self, security: Any, metrics: Any) -> None:
        config = security.api_key_auth
        self.keys = {client: key for client, key in security.api_keys.items()}
        self.by_digest = {hashlib.sha256(key).digest(): client for client, key in self.keys.items()}
        self.known: dict[bytes, Identity] = {}
        # Where to look, in order: (kind, names) with header names as bytes in lower case.
        self.sources: list[tuple[str, tuple[bytes, ...]]] = []
        for source in config.extract_from:
            if source.headers:
                self.sources.append(("header", tuple(n.encode() for n in source.headers)))
            elif source.params:
                self.sources.append(("param", tuple(n.encode() for n in source.params)))
            else:
                self.sources.append(("cookie", tuple(n.encode() for n in source.cookies)))
        # The common configuration, one header: found in one pass over the fields.
        only = self.sources[0] if len(self.sources) == 1 else None
        self.only_header = only[1][0] if only and only[0] == "header" and len(only[1]) == 1 else None
        # A client sends the same head again and again: with the key in one header, the identity a
        # head's key gave is remembered under the head itself, and its next requests split no fields.
        self.heads: dict[bytes, Identity] = {}
        self.refusal = Unauthorized(REFUSAL)
        self.decisions = Decisions(metrics, security.policy)
        self.authenticated = self.decisions.tallies["authenticated"]

    def on_request(self, ex: Exchange) -> int:
        name = self.only_header
        if name is not None:
            head = ex.head_id
            if head is not None:
                identity = self.heads.get(head)
                if identity is not None:
                    ex.identity = identity
                    self.authenticated.n += 1
                    return CONTINUE
            presented = None
            for field, value in ex.fields():
                if field.lower() == name:
                    presented = value
                    break
        else:
            head = None
            presented = self.extract(ex)
        if presented:
            identity = self.known.get(presented)
            if identity is None:
                identity = self._verify(presented)
            if identity is not None:
                ex.identity = identity
                self.authenticated.n += 1
                if head is not None and len(head) <= HEAD_SIZE:
                    if len(self.heads) >= HEADS:
                        del self.heads[next(iter(self.heads))]
                    self.heads[head] = identity
                return CONTINUE
        self.decisions.add("unauthenticated")
        ex.fail(self.refusal)
        return ANSWERED

    def extract(self, ex: Exchange) -> bytes | None:
        """The key from the first source that has one (Envoy Gateway's extractFrom order)."""
        for kind, names in self.sources:
            for name in names:
                if kind == "header":
                    value = ex.field(name)
                elif kind == "param":
                    value = query_param(ex.query, name) or None
                    if value:
                        ex.log_url = _blanked(ex.url, name)  # a credential, right or wrong: never logged
                else:
                    value = _cookie(ex, name)
                if value:
                    return value
        return None

    def _verify(self, presented: bytes) -> Identity | None:
        client = self.by_digest.get(hashlib.sha256(presented).digest())
        if client is None or not hmac.compare_digest(presented, self.keys[client]):
            return None
        identity = Identity(client, "api-key")
        if len(self.known) >= KNOWN:
            del self.known[next(iter(self.known))]
        self.known[presented] = identity
        return identity


class ForwardingAPIKeyAuth(APIKeyAuth):
    """apiKeyAuth with forwardClientIDHeader or sanitize: the upstream request is edited (a class of
    its own, so a policy without them adds no upstream hook to the chain)."""

    def __init__(self, security: Any, metrics: Any) -> None:
        super().__init__(security, metrics)
        config = security.api_key_auth
        header = config.forward_client_id_header
        self.forward = header.encode() if header else None
        self.sanitize = config.sanitize

    def on_upstream_request(self, ex: Exchange) -> None:
        fields = ex.edit_fields()
        if self.sanitize:
            for kind, names in self.sources:
                if kind == "header":
                    fields[:] = [f for f in fields if f[0].lower() not in names]
                elif kind == "param" and ex.query:
                    ex.url = _without_params(ex.url, names)
                elif kind == "cookie":
                    fields[:] = [_without_cookies(f, names) if f[0].lower() == b"cookie" else f for f in fields]
                    fields[:] = [f for f in fields if f[1] or f[0].lower() != b"cookie"]
        forward = self.forward
        if forward is not None:
            # The client's own header of that name must not pass for the gateway's word.
            fields[:] = [f for f in fields if f[0].lower() != forward]
            fields.append((forward, ex.identity.key))


def _cookie(ex: Exchange, name: bytes) -> bytes | None:
    for field, value in ex.fields():
        if field.lower() == b"cookie":
            for pair in value.split(b";"):
                key, sep, found = pair.strip().partition(b"=")
                if sep and key == name:
                    return found.strip(b'"')
    return None


def _without_cookies(field: tuple[bytes, bytes], names: tuple[bytes, ...]) -> tuple[bytes, bytes]:
    kept = [p for p in field[1].split(b";") if p.strip().partition(b"=")[0] not in names]
    return field[0], b";".join(kept).strip()


def _blanked(url: bytes, name: bytes) -> bytes:
    path, _, query = url.partition(b"?")
    pairs = query.split(b"&")
    for i, pair in enumerate(pairs):
        key, sep, _ = pair.partition(b"=")
        if sep and unquote_to_bytes(key.replace(b"+", b" ")) == name:
            pairs[i] = key + b"=REDACTED"
    return path + b"?" + b"&".join(pairs)


def _without_params(url: bytes, names: tuple[bytes, ...]) -> bytes:
    path, _, query = url.partition(b"?")
    kept = [p for p in query.split(b"&") if unquote_to_bytes(p.partition(b"=")[0].replace(b"+", b" ")) not in names]
    return path + (b"?" + b"&".join(kept) if kept else b"")


def build(rule: Any, services: Any) -> Phase | None:
    security = rule.security
    if security is None or security.api_key_auth is None:
        return None
    config = security.api_key_auth
    if config.forward_client_id_header or config.sanitize:
        return ForwardingAPIKeyAuth(security, services.metrics)
    return APIKeyAuth(security, services.metrics)
