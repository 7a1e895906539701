"""jwt: a bearer token verified by one of the policy's providers; its claims become the identity and headers.

Providers are tried in order and the first that verifies the token wins (Envoy Gateway: a token is
valid if any provider validates it). A provider that finds no token where its extractFrom looks
does not count; one that finds a token it cannot verify does not end the search either: another
provider may hold that token's key. A token whose key a provider's JWKS lacks makes the exchange
WAIT on that JWKS's one shared refetch (gw.auth.jwks), so a freshly rotated key is accepted at once.

Outcomes, as Envoy's jwt_authn requirements have them:
  token verified           → CONTINUE; ex.identity (consumer: the `sub` claim), claimToHeaders set.
  no token                 → 401, unless `optional` or `failOpen` (then anonymous).
  a token nobody verifies  → 401, unless `failOpen` (then anonymous: Envoy's allow_missing_or_failed).
Every 401 is the same problem+json with `WWW-Authenticate: Bearer realm="<policy>"` (RFC 6750 §3;
with `error="invalid_token"` when a token was presented); why it was refused goes to one log line
and to gw_auth_jwt_refusals_total{reason}, never to the client.

The headers claimToHeaders names are the gateway's word to the backend: a client's own copies are
removed from every request of the rule, verified or anonymous, before the token's are set.
"""

from __future__ import annotations

import logging
from time import monotonic, time
from typing import Any

from gw.auth.jwt import Pending, Refused, Verified, Verifier
from gw.errors import Unauthorized
from gw.policies.phase import ANSWERED, CONTINUE, WAIT, Exchange, Phase
from gw.policies.ratelimit.identify import query_param
from gw.policies.security.api_key import _blanked
from gw.policies.security.identity import Decisions, Identity

LOG = logging.getLogger("gw.auth")
REFUSAL = "a valid bearer token is required"
IDENTITIES = 4096  # identities a phase keeps per verified token it remembers (the verifier's cache size)
HEADS = 1_000  # request heads (at most HEAD_SIZE bytes each) remembered with the identity their token gave
HEAD_SIZE = 4_096


class TokenIdentity(Identity):
    """An identity a token established: the provider that verified it, and the headers its claims became."""

    __slots__ = ("headers", "provider")

    def __init__(self, verified: Verified) -> None:
        sub = verified.claims.get("sub")
        super().__init__(sub if isinstance(sub, str) else "", "jwt", verified.claims)
        self.provider = verified.provider
        self.headers = verified.headers


class JWTAuth(Phase):
    kind = "jwt"

    def __init__(self, security: Any, key_sets: Any, metrics: Any) -> None:
        config = security.jwt
        self.verifiers = [Verifier(p, key_sets.for_provider(p)) for p in config.providers]
        self.optional = config.optional or config.fail_open
        self.fail_open = config.fail_open
        self.policy = security.policy
        realm = b'Bearer realm="%b"' % security.realm.replace("\\", "\\\\").replace('"', '\\"').encode()
        self.missing = Unauthorized(REFUSAL, [(b"WWW-Authenticate", realm)])
        self.invalid = Unauthorized(REFUSAL, [(b"WWW-Authenticate", realm + b', error="invalid_token"')])
        # One identity per verified token (the verifier returns the same Verified until the token expires).
        self.identities: dict[Verified, TokenIdentity] = {}
        self.params = tuple({n.encode() for p in config.providers for n in p.extract_from.params})
        self.decisions = Decisions(metrics, security.policy)
        self.metrics = metrics
        self.authenticated = self.decisions.tallies["authenticated"]
        # A client sends the same head again and again: without a query (a token may be there), the
        # identity a head's token gave is remembered under the head itself until the token expires
        # or its key set changes, and its next requests split no fields. Entries: (identity, the
        # token's exp as a monotonic deadline, key set, its version then).
        self.heads: dict[bytes, tuple[TokenIdentity, float, Any, int]] = {}

    def on_request(self, ex: Exchange) -> int:
        if ex.query:  # (a token may be in it: no memo of heads)
            if self.params:
                self._blank_params(ex)
            return self._try(ex, 0, None)
        head = ex.head_id
        if head is not None:
            hit = self.heads.get(head)
            if hit is not None:
                identity, until, keys, version = hit
                if until > ex.started and keys.version == version:
                    ex.identity = identity
                    self.authenticated.n += 1
                    return CONTINUE
        return self._try(ex, 0, None, head)

    def _try(self, ex: Exchange, start: int, refused: Refused | None, head: bytes | None = None) -> int:
        """Providers from `start` on; `refused`: why an earlier one refused the token (None: none found one)."""
        verifiers = self.verifiers
        for i in range(start, len(verifiers)):
            verifier = verifiers[i]
            result = verifier.authenticate(ex.field, ex.query)
            if result is None:
                continue
            if type(result) is Verified:
                identity = self.identities.get(result)
                if identity is None:
                    identity = self._remember(result)
                ex.identity = identity
                self.authenticated.n += 1
                if head is not None and len(head) <= HEAD_SIZE:
                    heads = self.heads
                    if len(heads) >= HEADS:
                        del heads[next(iter(heads))]
                    # Until the token's exp on the clock the exchange carries (ex.started, monotonic),
                    # so a hit reads no clock.
                    until = monotonic() + (result.expires - time())
                    heads[head] = (identity, until, verifier.keys, verifier.keys.version)
                return CONTINUE
            if type(result) is Pending:
                result.then(lambda outcome, i=i: self._fetched(ex, i, outcome))
                return WAIT
            refused = result  # type: ignore[assignment]
        return self._without_token(ex, refused)

    def _fetched(self, ex: Exchange, i: int, outcome: Verified | Refused) -> None:
        """A JWKS refetch the exchange waited on is done: take its answer, or try the next providers."""
        if type(outcome) is Verified:
            ex.identity = self.identities.get(outcome) or self._remember(outcome)
            self.decisions.add("authenticated")
            self._resume(ex)
            return
        if self._try(ex, i + 1, outcome) == CONTINUE:  # type: ignore[arg-type]
            self._resume(ex)

    def _resume(self, ex: Exchange) -> None:
        ex.resume()

    def _without_token(self, ex: Exchange, refused: Refused | None) -> int:
        if refused is None:
            if self.optional:
                return CONTINUE
            self.decisions.add("unauthenticated")
            self._count("missing")
            ex.fail(self.missing)
            return ANSWERED
        self._count(refused.reason)
        LOG.info("%s: bearer token refused (%r)%s", self.policy, refused, "; failOpen" if self.fail_open else "")
        if self.fail_open:
            return CONTINUE
        self.decisions.add("unauthenticated")
        ex.fail(self.invalid)
        return ANSWERED

    def _remember(self, verified: Verified) -> TokenIdentity:
        identities = self.identities
        if len(identities) >= IDENTITIES * len(self.verifiers):
            del identities[next(iter(identities))]
        identity = identities[verified] = TokenIdentity(verified)
        return identity

    def _count(self, reason: str) -> None:
        self.metrics.inc("gw_auth_jwt_refusals_total", policy=self.policy, reason=reason)

    def _blank_params(self, ex: Exchange) -> None:
        for name in self.params:
            if query_param(ex.query, name):
                ex.log_url = _blanked(ex.log_url or ex.url, name)  # a credential, right or wrong: never logged


class ClaimHeadersJWTAuth(JWTAuth):
    """jwt with claimToHeaders: the upstream request is edited (a class of its own, so a policy
    without them adds no upstream hook to the chain)."""

    def __init__(self, security: Any, key_sets: Any, metrics: Any) -> None:
        super().__init__(security, key_sets, metrics)
        self.claim_headers = frozenset(c.header.encode() for p in security.jwt.providers for c in p.claim_to_headers)

    def on_upstream_request(self, ex: Exchange) -> None:
        names = self.claim_headers
        fields = ex.edit_fields()
        fields[:] = [f for f in fields if f[0].lower() not in names]
        identity = ex.identity
        if type(identity) is TokenIdentity:
            fields.extend(identity.headers)


class RecomputingJWTAuth(ClaimHeadersJWTAuth):
    """jwt whose providers say recomputeRoute: their claim headers take part in route matching (Envoy
    Gateway). The request is matched again with them in its head; if that finds another rule, that
    rule's own chain runs from its start (its SecurityPolicy too: the token verified here is in the
    verifiers' cache), once per exchange."""

    def __init__(self, security: Any, key_sets: Any, metrics: Any) -> None:
        super().__init__(security, key_sets, metrics)
        self.recompute = frozenset(p.name for p in security.jwt.providers if p.recompute_route and p.claim_to_headers)

    def on_request(self, ex: Exchange) -> int:
        verdict = super().on_request(ex)
        if verdict == CONTINUE and self._rematched(ex):
            return ANSWERED
        return verdict

    def _resume(self, ex: Exchange) -> None:
        if not self._rematched(ex):
            ex.resume()

    def _rematched(self, ex: Exchange) -> bool:
        identity = ex.identity
        return type(identity) is TokenIdentity and identity.provider in self.recompute and ex.rematch(identity.headers)


def build(rule: Any, services: Any) -> Phase | None:
    security = rule.security
    if security is None or security.jwt is None:
        return None
    if any(p.recompute_route and p.claim_to_headers for p in security.jwt.providers):
        return RecomputingJWTAuth(security, services.key_sets, services.metrics)
    if any(p.claim_to_headers for p in security.jwt.providers):
        return ClaimHeadersJWTAuth(security, services.key_sets, services.metrics)
    return JWTAuth(security, services.key_sets, services.metrics)
