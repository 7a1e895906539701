"""Session persistence (GEP-1619) in the proxy: a session stays on its endpoint across the fleet.

Cookie type: the cookie names the endpoint itself, signed (gw.balancing.session_cookie) with a key
every replica has, so any replica honours it with no lookup. A request whose cookie verifies for
this rule and names an endpoint still served and usable is pinned to it (`ex.ref`, `ex.pin`),
whatever the backendRefs' weights say now (a backend whose weight dropped to 0 keeps its sessions).
Otherwise the request is balanced as usual and the response carries a new cookie naming the
endpoint that answered (a new session, or a re-pinned one: the old endpoint is gone or ejected).

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
from gw.policies.session_table import SessionTable

NEW, PINNED = 1, 2  # what on_request found, for the response


class SessionPhase(Phase):
    """One rule's sessionPersistence."""

    def __init__(self, rule: Any, persistence: Any, keys: tuple[bytes, ...], table: SessionTable | None) -> None:
        self.persistence = persistence
        self.keys = keys
        self.scope = persistence.scope
        self.name = persistence.name
        self.lname = persistence.name.lower().encode("latin-1")
        self.cookie = persistence.type == COOKIE
        self.table = table
        # Every endpoint of the rule's backends by label, with the backendRef that reaches it
        # (weight 0 included: a session stays pinned when its backend is drained of new ones).
        self.endpoints: dict[str, tuple[Any, Any]] = {}
        for ref in rule.backend_refs:
            if ref.backend is not None:
                for endpoint in ref.backend.endpoints:
                    self.endpoints.setdefault(endpoint.label, (ref, endpoint))
        self.stats = {"created": 0, "repinned": 0, "invalid": 0}

    # -- request -------------------------------------------------------------------------------

    def on_request(self, ex: Exchange) -> int:
        if self.cookie:
            return self._cookie_request(ex)
        return self._header_request(ex)

    def _cookie_request(self, ex: Exchange) -> int:
        seen = False
        now = time.time()
        for name, value in ex.fields():
            if name.lower() != b"cookie":
                continue
            for candidate in session_cookie.cookie_values(value, self.name):
                seen = True
                label = session_cookie.decode(candidate, self.keys, now, self.scope)
                if label is not None and self._pin(ex, label):
                    ex.session = PINNED
                    return CONTINUE
        if seen:
            self.stats["invalid"] += 1  # tampered, expired, another rule's, or its endpoint is gone
        ex.session = NEW
        return CONTINUE

    def _pin(self, ex: Exchange, label: str) -> bool:
        found = self.endpoints.get(label)
        if found is None:
            return False
        ref, endpoint = found
        health = ref.backend.health
        if health.ejected and not health.usable(endpoint, ex.started):
            return False
        ex.ref, ex.pin = found
        return True

    def _header_request(self, ex: Exchange) -> int:
        sid = ex.field(self.lname)
        if not sid:
            ex.session = NEW
            return CONTINUE
        table = self.table
        label = table.cached(sid, monotonic())
        if label is not None and self._pin(ex, label):
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

        def settled(endpoint: str, fleet: bool) -> None:
            if not self._pin(ex, endpoint):
                ex.ref, ex.pin = ref, proposed  # the fleet's endpoint is not served here: this pick
            ex.session = PINNED
            if waiting:
                ex.resume()

        table.settle(sid, proposed.label, list(self.endpoints), settled, gone=label or "")
        if ex.pin is not None:
            return CONTINUE  # answered at once (no Redis: the hash)
        waiting = True
        return WAIT

    # -- response ------------------------------------------------------------------------------

    def on_response_head(self, ex: Exchange, fields: Fields) -> None:
        endpoint = ex.endpoint
        if endpoint is None:
            return
        if self.cookie:
            if ex.session == PINNED and ex.pin is endpoint:
                return  # the cookie the client sent still names where it went
            if ex.session == PINNED:
                self.stats["repinned"] += 1
            else:
                self.stats["created"] += 1
            p = self.persistence
            expires = int(time.time() + p.absolute_timeout) if p.absolute_timeout else 0
            value = session_cookie.encode(endpoint.label, expires, self.keys[0], self.scope)
            field = session_cookie.set_cookie(
                self.name, value, secure=ex.scheme == b"https", path=p.path, max_age=p.max_age
            )
            fields.append((b"Set-Cookie", field))
            return
        # Header type: a response that issues a session id settles it to the endpoint that answered.
        if ex.session == NEW:
            for name, value in fields:
                if name.lower() == self.lname and value:
                    self.table.settle(value, endpoint.label, list(self.endpoints), lambda e, fleet: None)
                    break


def build(rule: Any, services: Any) -> SessionPhase | None:
    persistence = rule.session_persistence
    if persistence is None or not rule.backend_refs:
        return None
    table = None
    if persistence.type != COOKIE:
        table = services.session_table(persistence)
    return SessionPhase(rule, persistence, services.settings.session_keys, table)
