"""Session persistence (GEP-1619) in the proxy: a session stays on its endpoint across the fleet.

Cookie type: the cookie names the endpoint itself, signed (gw.balancing.session_cookie) with a key
every replica has, so any replica honours it with no lookup. A request whose cookie verifies for
this rule and names an endpoint still served and usable is pinned to it (`ex.ref`, `ex.pin`),
whatever the backendRefs' weights say now (a backend whose weight dropped to 0 keeps its sessions).
Otherwise the balancer picks here, the request is pinned to its pick, and the response carries a
new cookie naming it (a new session, or a re-pinned one: the old endpoint is gone or ejected).

Header type: the application issues the session id in a response header; the id → endpoint table
is the fleet's (gw.policies.session_table). A request carrying an id the worker has cached is
pinned at once; an id it has not seen waits for the fleet's answer (a budget at most, then the
hash fallback); a response that issues a new id settles it to the endpoint that answered.
"""

from __future__ import annotations

import time
from time import monotonic
from typing import Any

from gw.balancing import session_cookie
from gw.config.session import COOKIE
from gw.policies.phase import CONTINUE, WAIT, Exchange, Fields, Phase
from gw.policies.session_table import SessionCounts, SessionTable

NEW, PINNED = 1, 2  # what a header session's on_request found, for the response
READ_CACHE = 10_000  # Cookie headers a worker remembers having read, per rule
HEADS = 10_000  # whole heads a worker remembers the session of, per rule
HEAD_SIZE = 8192  # bytes: a longer head is read each time rather than kept


class CookieSession(Phase):
    """One rule's Cookie sessionPersistence. It has no response hook: the endpoint of a new session
    is chosen here (the balancer's pick, pinned) and its cookie added to the response as it is, so
    a session's requests cost a cookie lookup and its responses nothing."""

    def __init__(self, rule: Any, persistence: Any, keys: tuple[bytes, ...], counts: SessionCounts) -> None:
        self.persistence = persistence
        self.keys = keys
        self.scope = persistence.scope
        self.name = persistence.name
        self.endpoints = _endpoints(rule)
        # Cookie headers this worker read, with what they say for this rule: whether they carry its
        # cookie, and the endpoint and expiry of the first value that verifies. A client sends the
        # same header on every request, and an HMAC per request would cost more than the proxying.
        self.read: dict[bytes, tuple[bool, str | None, int]] = {}
        # The session a whole head pinned to (its endpoint's label and the cookie's expiry), under
        # the head itself (ex.head_id): a client's next requests with the same head split no fields.
        self.heads: dict[bytes, tuple[str, int]] = {}
        self.counts = counts

    def on_request(self, ex: Exchange) -> int:
        head = ex.head_id
        if head is not None:
            known_head = self.heads.get(head)
            if known_head is not None:
                label, expires = known_head
                if (not expires or expires > time.time()) and _pin(ex, self.endpoints, label):
                    ex.repin = self._repin
                    return CONTINUE
        verified = invalid = False
        now = time.time()
        for name, value in ex.fields():
            if name.lower() != b"cookie":
                continue
            known = self.read.get(value)
            if known is None:
                known = self._read(value, now)
            carries, label, expires = known
            if label is None or (expires and expires <= now):
                invalid = invalid or carries  # tampered, expired, another rule's or key's
                continue
            if _pin(ex, self.endpoints, label):
                ex.repin = self._repin
                if head is not None and len(head) <= HEAD_SIZE:
                    if len(self.heads) >= HEADS:
                        del self.heads[next(iter(self.heads))]
                    self.heads[head] = (label, expires)
                return CONTINUE
            verified = True  # a good cookie whose endpoint is gone, or not usable now
        if invalid and not verified:
            self.counts.add("invalid")
        # A new session (or one whose cookie is bad or names an endpoint gone): the balancer's pick.
        ref = ex.rule.only_ref or ex.rule.pick_backend()
        if ref is None or ref.backend is None:
            return CONTINUE
        endpoint = ref.backend.pick(ex)
        if endpoint is None:
            return CONTINUE
        ex.ref, ex.pin = ref, endpoint
        self.counts.add("repinned" if verified else "created")
        ex.add_response_fields([(b"Set-Cookie", self._cookie(ex, endpoint, now))])
        return CONTINUE

    def _cookie(self, ex: Exchange, endpoint: Any, now: float) -> bytes:
        p = self.persistence
        expires = int(now + p.absolute_timeout) if p.absolute_timeout else 0
        value = session_cookie.encode(endpoint.label, expires, self.keys[0], self.scope)
        secure = ex.scheme == b"https"
        return session_cookie.set_cookie(self.name, value, secure=secure, path=p.path, max_age=p.max_age)

    def _repin(self, ex: Exchange, endpoint: Any) -> None:
        """The session's endpoint refused the connection and the exchange went to `endpoint`: the
        response carries a cookie naming it (the proxy calls this; the head is not written yet)."""
        self.counts.add("repinned")
        ex.add_response_fields([(b"Set-Cookie", self._cookie(ex, endpoint, time.time()))])
        ex.edits_response = True  # type: ignore[attr-defined]

    def _read(self, header: bytes, now: float) -> tuple[bool, str | None, int]:
        carries, found = False, (None, 0)
        for candidate in session_cookie.cookie_values(header, self.name):
            carries = True
            label = session_cookie.decode(candidate, self.keys, now, self.scope)
            if label is not None:
                found = (label, session_cookie.expiry(candidate))
                break
        known = (carries, *found)
        if len(self.read) >= READ_CACHE:
            del self.read[next(iter(self.read))]
        self.read[header] = known
        return known


class HeaderSession(Phase):
    """One rule's Header sessionPersistence (see the module docstring). Only a request without an id
    needs its response read (for the id the application issues): the others' responses cost nothing."""

    response_on_demand = True

    def __init__(self, rule: Any, persistence: Any, table: SessionTable) -> None:
        self.lname = persistence.name.lower().encode("latin-1")
        self.table = table
        self.endpoints = _endpoints(rule)

    def on_request(self, ex: Exchange) -> int:
        sid = ex.field(self.lname)
        if not sid:
            ex.session = NEW
            ex.want_response_head()
            return CONTINUE
        table = self.table
        label = table.cached(sid, monotonic())
        if label is not None and _pin(ex, self.endpoints, label):
            ex.session = PINNED
            return CONTINUE
        # Not cached, or its endpoint is gone here: ask the fleet, proposing this worker's pick.
        ref = ex.rule.only_ref or ex.rule.pick_backend()
        if ref is None or ref.backend is None:
            return CONTINUE
        proposed = ref.backend.pick(ex)
        if proposed is None:
            return CONTINUE
        waiting = False
        moved = bool(label)  # a re-pin was asked for already

        def settled(endpoint: str, fleet: bool) -> None:
            nonlocal moved
            if not _pin(ex, self.endpoints, endpoint):
                if fleet and not moved:
                    # The fleet pins it where this worker no longer sends (gone, or not usable):
                    # re-pin it for the fleet, so every worker moves it to the same endpoint.
                    moved = True
                    table.settle(sid, proposed.label, list(self.endpoints), settled, gone=endpoint)
                    return
                ex.ref, ex.pin = ref, proposed  # this pick, this once
            ex.session = PINNED
            if waiting:
                ex.resume()

        table.settle(sid, proposed.label, list(self.endpoints), settled, gone=label or "")
        if ex.pin is not None:
            return CONTINUE  # answered at once (no Redis: the hash)
        waiting = True
        return WAIT

    def on_response_head(self, ex: Exchange, fields: Fields) -> None:
        # A response that issues a session id settles it to the endpoint that answered.
        endpoint = ex.endpoint
        if ex.session == NEW and endpoint is not None:
            for name, value in fields:
                if name.lower() == self.lname and value:
                    self.table.settle(value, endpoint.label, list(self.endpoints), _ignore)
                    break


def _endpoints(rule: Any) -> dict[str, tuple[Any, Any]]:
    """Every endpoint of the rule's backends by label, with the backendRef that reaches it (weight 0
    included: a session stays pinned when its backend is drained of new ones)."""
    found: dict[str, tuple[Any, Any]] = {}
    for ref in rule.backend_refs:
        if ref.backend is not None:
            for endpoint in ref.backend.endpoints:
                found.setdefault(endpoint.label, (ref, endpoint))
    return found


def _pin(ex: Exchange, endpoints: dict[str, tuple[Any, Any]], label: str) -> bool:
    """Pin `ex` to the endpoint `label` if the rule still sends to it and it is usable."""
    found = endpoints.get(label)
    if found is None:
        return False
    ref, endpoint = found
    health = ref.backend.health
    if health.ejected and not health.usable(endpoint, ex.started):
        return False
    ex.ref, ex.pin = found
    return True


def _ignore(endpoint: str, fleet: bool) -> None:
    return None


def build(rule: Any, services: Any) -> Phase | None:
    persistence = rule.session_persistence
    if persistence is None or not rule.backend_refs:
        return None
    if persistence.type == COOKIE:
        counts = services.session_counts(persistence.scope, COOKIE)
        return CookieSession(rule, persistence, services.settings.session_keys, counts)
    return HeaderSession(rule, persistence, services.session_table(persistence))
