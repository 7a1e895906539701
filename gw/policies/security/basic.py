"""basicAuth: `Authorization: Basic` checked against the policy's htpasswd users (bcrypt and {SHA}).

bcrypt is slow by design (tens to hundreds of milliseconds), so it never runs on the event loop:
a worker checks at most THREADS hashes at once in its own threads (bcrypt releases the GIL), the
exchange WAITs and resumes when its answer comes. Requests carrying the same header while one is
checked wait on that check, and a checked header is remembered for CACHE_TTL seconds (keyed by its
SHA-256: the cache holds no password), so a client pays bcrypt once a minute, not per request.
At most MAX_PENDING distinct checks wait per worker: past that a new credential is answered 503
with Retry-After (a flood of wrong passwords cannot queue unbounded work or delay the requests
whose credentials are cached, which never queue). An unknown user is checked against a dummy hash
of the same cost, so the time of a 401 does not say whether the user exists.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from time import monotonic
from typing import Any

import bcrypt

from gw.errors import AuthOverloaded, Unauthorized
from gw.policies.phase import ANSWERED, CONTINUE, WAIT, Exchange, Phase
from gw.policies.security.identity import Decisions, Identity

CACHE_TTL = 60.0  # seconds a checked credential (good or bad) is remembered
CACHE_SIZE = 10_000  # credentials a worker remembers per policy
THREADS = 2  # bcrypt checks a worker runs at once
MAX_PENDING = 64  # distinct checks queued or running per worker; past that: 503
REFUSAL = "valid credentials are required"
_DUMMY = bcrypt.hashpw(b"gw-unknown-user", bcrypt.gensalt(10))

_pool: ThreadPoolExecutor | None = None
_pending = 0  # this worker's checks queued or running, over every policy


def _executor() -> ThreadPoolExecutor:
    global _pool
    if _pool is None:
        _pool = ThreadPoolExecutor(THREADS, thread_name_prefix="gw-bcrypt")
    return _pool


class BasicAuth(Phase):
    kind = "basic-auth"

    def __init__(self, security: Any, loop: Any, metrics: Any) -> None:
        self.users = dict(security.users)
        self.loop = loop
        realm = security.realm.replace("\\", "\\\\").replace('"', '\\"')
        self.refusal = Unauthorized(REFUSAL, [(b"WWW-Authenticate", b'Basic realm="%b"' % realm.encode())])
        self.checked: dict[bytes, tuple[Identity | None, float]] = {}  # sha256(header) → (who, until)
        self.waiting: dict[bytes, list[Exchange]] = {}  # sha256(header) → exchanges waiting on its check
        self.decisions = Decisions(metrics, security.policy)
        self.checks = metrics.tally("gw_auth_password_checks_total", policy=security.policy)
        forward = security.basic_auth.forward_username_header
        self.forward = forward.encode() if forward else None

    def on_request(self, ex: Exchange) -> int:
        header = ex.field(b"authorization")
        if not header or header[:6].lower() != b"basic ":
            return self._refuse(ex)
        digest = hashlib.sha256(header).digest()
        known = self.checked.get(digest)
        if known is not None and known[1] > monotonic():
            return self._apply(ex, known[0])
        waiting = self.waiting.get(digest)
        if waiting is not None:
            waiting.append(ex)
            return WAIT
        try:
            user, _, password = base64.b64decode(header[6:].strip(), validate=True).partition(b":")
            name = user.decode()
        except (binascii.Error, ValueError):
            return self._refuse(ex)
        entry = self.users.get(name)
        if entry is not None and not entry.startswith(b"$2"):
            # {SHA}: as cheap as the lookup, checked here.
            sha = b"{SHA}" + base64.b64encode(hashlib.sha1(password).digest())
            return self._apply(ex, self._remember(digest, name if hmac.compare_digest(sha, entry) else None))
        global _pending
        if _pending >= MAX_PENDING:
            self.decisions.add("overloaded")
            ex.fail(AuthOverloaded("too many credentials are being checked; retry shortly"))
            return ANSWERED
        _pending += 1
        self.checks.n += 1
        self.waiting[digest] = [ex]
        future = _executor().submit(_check, password, entry if entry is not None else _DUMMY)
        future.add_done_callback(self._from_thread(digest, name if entry is not None else None))
        return WAIT

    def _from_thread(self, digest: bytes, name: str | None) -> Callable[[Future[bool]], None]:
        def done(future: Future[bool]) -> None:
            self.loop.call_soon_threadsafe(self._checked, digest, name, future)

        return done

    def _checked(self, digest: bytes, name: str | None, future: Future[bool]) -> None:
        global _pending
        _pending -= 1
        ok = not future.cancelled() and future.exception() is None and future.result()
        identity = self._remember(digest, name if ok else None)
        for ex in self.waiting.pop(digest, ()):
            if self._apply(ex, identity) == CONTINUE:
                ex.resume()

    def _remember(self, digest: bytes, name: str | None) -> Identity | None:
        identity = Identity(name, "basic") if name is not None else None
        checked = self.checked
        if len(checked) >= CACHE_SIZE:
            del checked[next(iter(checked))]
        checked[digest] = (identity, monotonic() + CACHE_TTL)
        return identity

    def _apply(self, ex: Exchange, identity: Identity | None) -> int:
        if identity is None:
            return self._refuse(ex)
        ex.identity = identity
        self.decisions.add("authenticated")
        return CONTINUE

    def _refuse(self, ex: Exchange) -> int:
        self.decisions.add("unauthenticated")
        ex.fail(self.refusal)
        return ANSWERED


class ForwardingBasicAuth(BasicAuth):
    """basicAuth with forwardUsernameHeader: the user name goes upstream in that header."""

    def on_upstream_request(self, ex: Exchange) -> None:
        forward = self.forward
        fields = ex.edit_fields()
        fields[:] = [f for f in fields if f[0].lower() != forward]
        fields.append((forward, ex.identity.key))  # type: ignore[arg-type]


def _check(password: bytes, entry: bytes) -> bool:
    try:
        return bcrypt.checkpw(password, entry)
    except ValueError:
        return False


def build(rule: Any, services: Any) -> Phase | None:
    security = rule.security
    if security is None or security.basic_auth is None:
        return None
    cls = ForwardingBasicAuth if security.basic_auth.forward_username_header else BasicAuth
    return cls(security, services.loop, services.metrics)
