"""extAuth / ExternalAuth: forward auth, each request asks an HTTP authorization service first.

As Envoy's ext_authz HTTP service (which Envoy Gateway's extAuth and GEP-1494's ExternalAuth
configure): the check is the request's own method and target, `path` prefixed (`/auth` + `/orders?id=1`),
with Host, Authorization, the X-Forwarded-* and X-Request-ID gw forwards and the headers the
config names, and no body (Content-Length: 0). It goes over the service's keep-alive pool (lent
by the worker: Services.auth_call), bounded by the config's timeout; the exchange WAITs.

  200            → the request goes on; the headers headersToBackend names are taken from the
                   answer onto the upstream request, every client copy of those names removed
                   first (the gateway's word to the backend, as jwt's claimToHeaders).
  any other 1-4xx → that answer goes to the client: status, fields (WWW-Authenticate, Location,
                   Set-Cookie, ...; framing and hop-by-hop ones are gw's) and body.
  5xx, or none   → the service failed: failOpen lets the request through, else it is refused
                   with statusOnError (403) as problem+json. One log line per FAIL_LOG_EVERY
                   seconds says why; gw_auth_decisions_total{result="error"} counts every one.
"""

from __future__ import annotations

import logging
from time import monotonic
from typing import Any

from gw.errors import AuthOverloaded, AuthServiceFailed
from gw.policies.phase import WAIT, Exchange, Fields, Phase
from gw.policies.security.identity import Decisions

LOG = logging.getLogger("gw.auth")
FAIL_LOG_EVERY = 10.0  # seconds between log lines about one service's failures
# Sent to the service whatever the config says (Envoy's and GEP-1494's list, and gw's forwarding fields).
# (X-Request-ID too, written apart: the rest is the same for every request of one head.)
ALWAYS_SENT = (b"authorization", b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host", b"x-forwarded-port")
HEADS = 1_000  # request heads (at most HEAD_SIZE bytes each) whose fields for the service are remembered
HEAD_SIZE = 4_096
# Never taken from the service's answer: they frame messages or belong to one connection.
NOT_COPIED = frozenset({
    b"host", b"content-length", b"transfer-encoding", b"connection", b"keep-alive", b"proxy-connection",
    b"te", b"trailer", b"upgrade", b"proxy-authenticate", b"proxy-authorization", b"x-request-id",
})  # fmt: skip
# Besides those, a 200's fields that describe the answer itself go nowhere when every field is copied.
NOT_FORWARDED = NOT_COPIED | {b"content-type", b"content-encoding", b"date", b"server", b"etag", b"last-modified"}


class ExtAuth(Phase):
    kind = "ext-auth"

    def __init__(self, ext: Any, policy: str, services: Any) -> None:
        self.backend = ext.backend
        self.prefix = ext.path.encode()
        self.timeout = ext.timeout
        self.fail_open = ext.fail_open
        self.status_on_error = ext.status_on_error
        self.sent = frozenset(ALWAYS_SENT) | {n.encode() for n in ext.headers_to_ext_auth} - NOT_COPIED - {b"host"}
        # ex.head_id leaves a traceparent line out (it is new every request): a service asking for
        # it gets the fields read afresh each time.
        self.by_head = b"traceparent" not in self.sent
        to_backend = ext.headers_to_backend
        self.to_backend = None if to_backend is None else frozenset(n.encode() for n in to_backend) - NOT_COPIED
        self.policy = policy
        self.call = services.auth_call
        self.decisions = Decisions(services.metrics, policy)
        self.logged = 0.0
        # A client sends the same head again and again: the fields it gives the service, by head.
        self.heads: dict[bytes, bytes] = {}

    def on_request(self, ex: Exchange) -> int:
        key = ex.head_id if self.by_head else None
        fields = self.heads.get(key) if key is not None else None
        if fields is None:
            sent = self.sent
            fields = b"".join([b"%b: %b\r\n" % f for f in ex.fields() if f[0].lower() in sent])
            if key is not None and len(key) <= HEAD_SIZE:
                heads = self.heads
                if len(heads) >= HEADS:
                    del heads[next(iter(heads))]
                heads[key] = fields
        head = b"%b %b%b HTTP/1.1\r\nHost: %b\r\n%bX-Request-ID: %b\r\nContent-Length: 0\r\n\r\n" % (
            ex.method, self.prefix, ex.url, ex.host_header, fields, ex.request_id)  # fmt: skip
        self.call(self.backend, head, ex.method == b"HEAD", ex, self.timeout,
                  lambda status, block, body, failure: self._answered(ex, status, block, body, failure))  # fmt: skip
        return WAIT

    def _answered(self, ex: Exchange, status: int, block: bytes, body: bytes, failure: str | None) -> None:
        if failure is None and status < 500:
            fields = _split(block)
            if status == 200:
                self.decisions.add("allowed")
                self._to_backend(ex, fields)
                ex.resume()
            else:
                self.decisions.add("denied")
                ex.answer(status, [f for f in fields if f[0].lower() not in NOT_COPIED], body)
            return
        if failure == "overloaded":
            self.decisions.add("overloaded")
            ex.fail(AuthOverloaded("too many authorization checks are under way; retry shortly"))
            return
        self.decisions.add("error")
        why = failure or f"it answered {status}"
        now = monotonic()
        if now - self.logged >= FAIL_LOG_EVERY:
            self.logged = now
            through = "; failOpen: requests go through" if self.fail_open else ""
            LOG.warning("%s: the external authorization service %s failed (%s)%s", self.policy, self.backend.name,
                        why, through)  # fmt: skip
        if self.fail_open:
            ex.resume()
        else:
            ex.fail(AuthServiceFailed("the authorization service could not decide this request", self.status_on_error))

    def _to_backend(self, ex: Exchange, answer: Fields) -> None:
        names = self.to_backend
        if names is None:
            taken = [f for f in answer if f[0].lower() not in NOT_FORWARDED]
            names = frozenset(f[0].lower() for f in taken)
        else:
            taken = [f for f in answer if f[0].lower() in names]
        if not names:
            return
        fields = ex.edit_fields()
        fields[:] = [f for f in fields if f[0].lower() not in names]
        fields += taken


def _split(block: bytes) -> Fields:
    """The (name, value) fields of a response head block (CRLF-separated lines, as httptools passed them)."""
    fields = []
    for line in block.split(b"\r\n"):
        name, sep, value = line.partition(b":")
        if sep and name:
            fields.append((name, value.strip(b" \t")))
    return fields


def build(rule: Any, services: Any) -> Phase | None:
    """A SecurityPolicy's extAuth."""
    security = rule.security
    if security is None or security.ext_auth is None:
        return None
    return ExtAuth(security.ext_auth, security.policy, services)


def build_filter(rule: Any, services: Any) -> Phase | None:
    """An HTTPRoute rule's ExternalAuth filter."""
    if rule.ext_auth is None:
        return None
    phase = ExtAuth(rule.ext_auth, rule.label, services)
    phase.kind = "external-auth"
    return phase
