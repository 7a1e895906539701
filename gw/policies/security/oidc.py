"""oidc: browsers log in with an OpenID provider (authorization code flow with PKCE); the fleet keeps their sessions.

A request without a valid session is redirected (302) to the provider's authorization endpoint
with a signed `state` (the original URL, an expiry, a random token), a `nonce` and a PKCE S256
challenge; a short-lived login cookie, signed, holds the same token, the nonce and the PKCE
verifier, so only the browser that started the login can finish it (no login fixation). A request
whose headers match denyRedirect (XHR) gets 401 instead.

The callback (the redirectURL's path, on the rules the policy wins) checks the state against the
login cookie, exchanges the code at the token endpoint (client_secret_basic, or _post when the
provider takes only that; with the verifier), verifies the ID token (gw.auth.oidc: the provider's
JWKS, iss, aud = clientID, exp; the nonce here), and creates a session: a random id in an
HMAC-signed cookie (HttpOnly, Secure on HTTPS, SameSite, Path=/), the tokens in Redis under that
id with their lifetime, so any replica serves the user's next request. Then 302 to the original URL.

Later requests: the session is read from Redis and kept by the worker for CACHE_TTL seconds
(bounded by CACHE_SIZE), so a user's requests cost a Redis round trip at most once per CACHE_TTL
per worker. Logout deletes the session in Redis at once; a worker that cached it keeps serving it
for at most CACHE_TTL (the worker that served the logout forgets it at once). An access token past
its expiry is refreshed with the refresh token (refreshToken: true): one refresh per session per
worker, the requests of that session waiting on it; without one, the browser logs in again.

Redis unavailable (the guard's budget or breaker): a session the worker has not cached cannot be
read, and a login cannot be stored: 503 with Retry-After, never a redirect to the provider (a
login would loop: its session could not be stored either). The provider unreachable: 503 too.
Tokens, codes and the client secret are never logged; a refusal logs its reason only.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import logging
import secrets
import time
from collections.abc import Callable, Coroutine
from typing import Any
from urllib.parse import parse_qsl, urlencode

import orjson

from gw.auth.oidc import ProviderError
from gw.errors import InternalError, ProxyError, Unauthorized
from gw.policies.phase import ANSWERED, CONTINUE, WAIT, Exchange, Phase
from gw.policies.security import oidc_cookies as oc
from gw.policies.security.identity import Decisions, Identity
from gw.state.guard import RedisUnavailable

LOG = logging.getLogger("gw.auth")
CACHE_TTL = 2.0  # seconds a worker serves a session from memory: how long a logout may take to reach it
CACHE_SIZE = 10_000  # sessions a worker keeps per policy
COOKIES_READ = 10_000  # Cookie headers remembered with the session id they carry (no HMAC per request)
REFRESH_MARGIN = 5.0  # seconds before its expiry an access token is refreshed
MIN_SESSION_TTL = 1  # seconds: Redis refuses a zero expiry


class LoginRefused(Unauthorized):
    """The callback could not complete the login (bad state, refused code, bad ID token): 401."""

    kind = "oidc-login-refused"


class SessionStoreUnavailable(ProxyError):
    """The session cannot be read or stored (Redis unavailable): 503, retried by the browser later."""

    status, kind = 503, "session-store-unavailable"
    fields = [(b"Retry-After", b"1")]


class ProviderUnavailable(ProxyError):
    """The OpenID provider cannot be reached (discovery, token endpoint): 503."""

    status, kind = 503, "oidc-provider-unavailable"
    fields = [(b"Retry-After", b"2")]


class OIDCIdentity(Identity):
    """A logged-in browser: its subject, its ID token's claims, and the tokens forwarded upstream."""

    __slots__ = ("access", "id_token", "provider")

    def __init__(self, session: dict[str, Any]) -> None:
        claims = session.get("claims") or {}
        sub = claims.get("sub")
        super().__init__(sub if isinstance(sub, str) else "", "oidc", claims)
        self.provider = None  # no jwt provider's: a jwt principal does not match a browser session
        self.access: bytes = session["access"].encode()
        self.id_token: bytes = (session.get("id") or "").encode()


class Session:
    __slots__ = ("data", "identity")

    def __init__(self, data: dict[str, Any]) -> None:
        self.data = data
        self.identity = OIDCIdentity(data)

    @property
    def access_expires(self) -> float:
        return float(self.data.get("access_exp", 0))


class OIDCAuth(Phase):
    kind = "oidc"

    def __init__(self, security: Any, services: Any) -> None:
        config = self.config = security.oidc
        self.policy = security.policy
        self.secret: bytes = security.oidc_client_secret
        self.provider = services.oidc_providers.get(config.provider)
        self.keys: tuple[bytes, ...] = services.settings.session_keys
        self.shared = services.shared
        self.loop = services.loop
        self.stem = self.shared.keys.oidc_sessions(self.policy) if self.shared is not None else ""
        digest = hashlib.sha256(self.policy.encode()).hexdigest()[:8]
        self.cookie_name = config.cookie_name or f"gw-oidc-{digest}"
        self.login_cookie = f"{self.cookie_name}-login"
        self.bcookie = self.cookie_name.encode()
        self.callback = config.callback_path
        self.logout = config.logout_path
        self.cache: dict[str, tuple[Session, float]] = {}  # session id → (session, monotonic until)
        self.read: dict[bytes, str | None] = {}  # Cookie header → the session id it carries
        self.waiting: dict[str, list[Exchange]] = {}  # session id → exchanges waiting on its lookup/refresh
        self.tasks: set[asyncio.Task[None]] = set()
        self.decisions = Decisions(services.metrics, self.policy)
        self.metrics = services.metrics
        self.refusal = Unauthorized("a login is required")

    # -- per request ----------------------------------------------------------------------

    def on_request(self, ex: Exchange) -> int:
        path = ex.path
        if path == self.callback:
            return self._callback(ex)
        if path == self.logout:
            return self._logout(ex)
        sid = self._session_id(ex)
        if sid is None:
            return self._login(ex)
        hit = self.cache.get(sid)
        fresh = None  # the session as this worker cached it, within CACHE_TTL (its access token expired)
        if hit is not None and hit[1] > ex.started:
            fresh = hit[0]
            if fresh.access_expires > time.time():
                return self._apply(ex, fresh)
        waiting = self.waiting.get(sid)
        if waiting is not None:
            waiting.append(ex)
            return WAIT
        if self.shared is None:
            ex.fail(SessionStoreUnavailable("no session store (Redis) is configured"))
            return ANSWERED
        self.waiting[sid] = [ex]
        self._spawn(self._load(sid, fresh), lambda error: self._settle(sid, None, error))
        return WAIT

    def _apply(self, ex: Exchange, session: Session) -> int:
        ex.identity = session.identity
        self.decisions.add("authenticated")
        return CONTINUE

    def _session_id(self, ex: Exchange) -> str | None:
        header = ex.field(b"cookie")
        if not header:
            return None
        read = self.read
        if header in read:
            return read[header]
        sid = None
        for value in oc.cookie(header, self.bcookie):
            payload = oc.verify(value, self.keys, oc.SESSION, self.policy)
            if payload is not None:
                sid = payload.decode("ascii", "replace")
                break
        if len(read) >= COOKIES_READ:
            del read[next(iter(read))]
        read[header] = sid
        return sid

    # -- a session: read, refreshed ---------------------------------------------------------

    async def _load(self, sid: str, cached: Session | None) -> None:
        """The session from Redis (or `cached`, within CACHE_TTL but its access token expired),
        refreshed if its access token expired; then every exchange waiting on it goes on."""
        try:
            session = cached
            if session is None or session.access_expires <= time.time():
                session = await self._fetch(sid)
            if session is not None and session.access_expires <= time.time():
                session = await self._refresh(sid, session)
        except RedisUnavailable as exc:
            self._settle(sid, None, SessionStoreUnavailable(f"the session cannot be read now ({exc.reason})"))
            return
        self._settle(sid, session, None)

    async def _fetch(self, sid: str) -> Session | None:
        guard, redis = self.shared.guard, self.shared.redis
        raw = await guard.call(redis.get, f"{self.stem}:{sid}")
        if raw is None:
            return None
        try:
            data = orjson.loads(raw)
            session = Session(data)
        except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
            return None
        self._remember(sid, session)
        return session

    async def _refresh(self, sid: str, session: Session) -> Session | None:
        refresh = session.data.get("refresh")
        if not self.config.refresh_token or not refresh:
            return None
        try:
            answer = await self.provider.token(self.config.client_id, self.secret,
                                               {"grant_type": "refresh_token", "refresh_token": refresh})  # fmt: skip
            claims = session.data.get("claims") or {}
            id_token = answer.get("id_token")
            if isinstance(id_token, str):
                claims = await self.provider.verify_id_token(id_token, self.config.client_id)
                if claims.get("sub") != session.data["claims"].get("sub"):
                    raise ProviderError("a refreshed ID token names another subject")
        except ProviderError as exc:
            LOG.info("%s: token refresh failed (%s)", self.policy, exc)
            # Another worker or replica may have refreshed it (a provider rotating refresh tokens
            # refuses the old one): what Redis holds now, if it is fresh; else the browser logs in.
            fresh = await self._fetch(sid)
            if fresh is not None and fresh.access_expires > time.time():
                return fresh
            return None
        data = self._session_data(answer, claims, previous=session.data)
        await self._store(sid, data)
        self._count("refreshed")
        return self._remember(sid, Session(data))

    def _settle(self, sid: str, session: Session | None, error: ProxyError | None) -> None:
        for ex in self.waiting.pop(sid, ()):
            if error is not None:
                ex.fail(error)
            elif session is None:
                self.cache.pop(sid, None)
                if self._login(ex, expired=True) == CONTINUE:
                    ex.resume()
            else:
                self._apply(ex, session)
                ex.resume()

    def _remember(self, sid: str, session: Session) -> Session:
        cache = self.cache
        if len(cache) >= CACHE_SIZE and sid not in cache:
            del cache[next(iter(cache))]
        # Never past the access token's expiry (less the margin): then the next request refreshes.
        cache[sid] = (session, time.monotonic() + CACHE_TTL)
        return session

    # -- login --------------------------------------------------------------------------------

    def _login(self, ex: Exchange, expired: bool = False) -> int:
        """No valid session: 401 for a request denyRedirect matches, else 302 to the provider."""
        self.decisions.add("unauthenticated")
        for match in self.config.deny_redirect:
            value = ex.field(match.name.encode())
            if value is not None and match.matches(value.decode("latin-1")):
                ex.fail(self.refusal)
                return ANSWERED
        if self.shared is None:
            ex.fail(SessionStoreUnavailable("no session store (Redis) is configured"))
            return ANSWERED
        if self.shared.guard.refuses():
            # The session could not be stored after the login: do not send the browser round.
            ex.fail(SessionStoreUnavailable("the session store is unavailable"))
            return ANSWERED
        endpoints = self.provider.endpoints
        if endpoints is None:
            self._spawn(self._discover_then_login(ex, expired), ex.fail)
            return WAIT
        self._redirect_to_login(ex, endpoints.authorization, expired)
        return ANSWERED

    async def _discover_then_login(self, ex: Exchange, expired: bool) -> None:
        try:
            endpoints = await self.provider.discover()
        except ProviderError:
            ex.fail(ProviderUnavailable("the OpenID provider cannot be reached"))
            return
        self._redirect_to_login(ex, endpoints.authorization, expired)

    def _redirect_to_login(self, ex: Exchange, authorization: str, expired: bool) -> None:
        config = self.config
        target = ex.url.decode("latin-1")
        if not target.startswith("/") or target[1:2] in ("/", "\\"):
            target = "/"  # a path of this site only (browsers read `/\host` as `//host`): never elsewhere
        verifier = secrets.token_urlsafe(48)
        challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
        nonce, token = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
        expires = int(time.time() + config.csrf_token_ttl)
        key = self.keys[0]
        state = oc.sign_json({"t": token, "u": target, "x": expires}, key, oc.STATE, self.policy)
        login = oc.sign_json({"t": token, "n": nonce, "v": verifier, "x": expires}, key, oc.LOGIN, self.policy)
        params = [
            ("response_type", "code"),
            ("client_id", config.client_id),
            ("redirect_uri", self._redirect_uri(ex)),
            ("scope", " ".join(config.scopes)),
            ("state", state.decode()),
            ("nonce", nonce),
            ("code_challenge", challenge),
            ("code_challenge_method", "S256"),
            *(("resource", r) for r in config.resources),
        ]
        location = authorization + ("&" if "?" in authorization else "?") + urlencode(params)
        fields = [
            (b"Location", location.encode()),
            # Lax at most: the provider's redirect back is a cross-site navigation, which a Strict
            # cookie would not follow, and the login could never finish.
            (b"Set-Cookie", self._cookie(ex, self._login_cookie(token), login, int(config.csrf_token_ttl),
                                         "Lax" if config.same_site == "Strict" else "")),
            (b"Cache-Control", b"no-store"),
        ]
        if expired:
            fields.append((b"Set-Cookie", self._cookie(ex, self.cookie_name, b"", 0)))
        ex.answer(302, fields)

    def _login_cookie(self, token: str) -> str:
        """The login cookie of one login: named after its state's token, so two logins a browser runs
        at once (two tabs) each find their own at the callback."""
        return f"{self.login_cookie}-{hashlib.sha256(token.encode()).hexdigest()[:12]}"

    def _redirect_uri(self, ex: Exchange) -> str:
        url = self.config.redirect_url
        if "%REQ(" in url:
            url = url.replace("%REQ(x-forwarded-proto)%", ex.scheme.decode())
            url = url.replace("%REQ(:authority)%", ex.host_header.decode("latin-1"))
        return url

    def _cookie(self, ex: Exchange, name: str, value: bytes, max_age: int | None, same_site: str = "") -> bytes:
        config = self.config
        secure = ex.scheme == b"https"
        return oc.set_cookie(name, value, secure=secure, same_site=same_site or config.same_site,
                             domain=config.cookie_domain, max_age=max_age)  # fmt: skip

    # -- the callback -------------------------------------------------------------------------

    def _callback(self, ex: Exchange) -> int:
        params = dict(parse_qsl(ex.query.decode("latin-1"), keep_blank_values=True))
        if "error" in params:
            return self._refuse_login(ex, f"the provider answered error {params['error'][:64]!r}")
        code, state_value = params.get("code"), params.get("state")
        if not code or not state_value:
            return self._refuse_login(ex, "no code or state")
        state = oc.verify_json(state_value.encode("latin-1"), self.keys, oc.STATE, self.policy)
        login = None
        if state is not None and isinstance(state.get("t"), str):
            for value in oc.cookie(ex.field(b"cookie"), self._login_cookie(state["t"]).encode()):
                login = oc.verify_json(value, self.keys, oc.LOGIN, self.policy)
                if login is not None:
                    break
        if state is None or login is None:
            return self._refuse_login(ex, "the state or the login cookie is missing or not signed by gw")
        token, login_token = state.get("t"), login.get("t")
        if not (isinstance(token, str) and isinstance(login_token, str) and hmac.compare_digest(token, login_token)):
            return self._refuse_login(ex, "the state is not this browser's login")
        if not isinstance(state.get("x"), int) or state["x"] <= time.time():
            return self._refuse_login(ex, "the login took longer than csrfTokenTTL")
        if self.shared is None:
            ex.fail(SessionStoreUnavailable("no session store (Redis) is configured"))
            return ANSWERED
        self._spawn(self._finish_login(ex, code, state, login), ex.fail)
        return WAIT

    async def _finish_login(self, ex: Exchange, code: str, state: dict[str, Any], login: dict[str, Any]) -> None:
        config = self.config
        form = {"grant_type": "authorization_code", "code": code, "redirect_uri": self._redirect_uri(ex),
                "code_verifier": str(login.get("v", ""))}  # fmt: skip
        try:
            answer = await self.provider.token(config.client_id, self.secret, form)
            id_token = answer.get("id_token")
            if not isinstance(id_token, str):
                raise ProviderError("the token endpoint answered no id_token")
            claims = await self.provider.verify_id_token(id_token, config.client_id)
            nonce = claims.get("nonce")
            if not isinstance(nonce, str) or not hmac.compare_digest(nonce, str(login.get("n", ""))):
                raise ProviderError("the ID token's nonce is not this login's")
        except ProviderError as exc:
            self._refuse_login(ex, str(exc))
            return
        sid = secrets.token_urlsafe(32)
        data = self._session_data(answer, claims)
        try:
            await self._store(sid, data)
        except RedisUnavailable as exc:
            ex.fail(SessionStoreUnavailable(f"the session cannot be stored now ({exc.reason})"))
            return
        self._remember(sid, Session(data))
        self._count("login")
        session = oc.sign(sid.encode(), self.keys[0], oc.SESSION, self.policy)
        ex.answer(302, [
            (b"Location", str(state.get("u") or "/").encode("latin-1")),
            (b"Set-Cookie", self._cookie(ex, self.cookie_name, session, None)),
            (b"Set-Cookie", self._cookie(ex, self._login_cookie(str(state.get("t"))), b"", 0)),
            (b"Cache-Control", b"no-store"),
        ])  # fmt: skip

    def _refuse_login(self, ex: Exchange, why: str) -> int:
        LOG.info("%s: login refused (%s)", self.policy, why)
        self._count("login_refused")
        ex.fail(LoginRefused("the login could not be completed"))
        return ANSWERED

    def _session_data(self, answer: dict[str, Any], claims: dict[str, Any],
                      previous: dict[str, Any] | None = None) -> dict[str, Any]:  # fmt: skip
        """What Redis keeps of a token endpoint's answer: the tokens and until when they hold."""
        config = self.config
        now = time.time()
        expires_in = answer.get("expires_in")
        if isinstance(expires_in, int | float) and not isinstance(expires_in, bool) and expires_in > 0:
            access_exp = now + expires_in
        elif config.default_token_ttl is not None:
            access_exp = now + config.default_token_ttl
        else:  # neither: the ID token's own expiry
            access_exp = float(claims.get("exp", now))
        access_exp -= REFRESH_MARGIN
        refresh = answer.get("refresh_token") or (previous or {}).get("refresh")
        refresh_in = answer.get("refresh_expires_in")
        if not isinstance(refresh_in, int | float) or isinstance(refresh_in, bool) or refresh_in <= 0:
            refresh_in = config.default_refresh_token_ttl
        expires = now + refresh_in if (refresh and config.refresh_token) else access_exp
        if previous is not None and refresh == previous.get("refresh") and previous.get("exp"):
            expires = float(previous["exp"])  # the same refresh token: its lifetime does not grow
        return {
            "claims": claims,
            "access": answer["access_token"],
            "id": answer.get("id_token") or (previous or {}).get("id") or "",
            "refresh": refresh if isinstance(refresh, str) and config.refresh_token else None,
            "access_exp": access_exp,
            "exp": max(expires, access_exp),
        }

    async def _store(self, sid: str, data: dict[str, Any]) -> None:
        ttl = max(MIN_SESSION_TTL, int(data["exp"] - time.time() + 1))
        await self.shared.guard.call(self.shared.redis.set, f"{self.stem}:{sid}", orjson.dumps(data), ttl)

    # -- logout -------------------------------------------------------------------------------

    def _logout(self, ex: Exchange) -> int:
        sid = self._session_id(ex)
        if sid is None or self.shared is None:
            self._spawn(self._logged_out(ex, None), ex.fail)
            return WAIT
        self.cache.pop(sid, None)
        self._spawn(self._end(ex, sid), ex.fail)
        return WAIT

    async def _end(self, ex: Exchange, sid: str) -> None:
        try:
            raw = await self.shared.guard.call(self.shared.redis.getdel, f"{self.stem}:{sid}")
        except RedisUnavailable as exc:
            ex.fail(SessionStoreUnavailable(f"the session cannot be ended now ({exc.reason})"))
            return
        self.cache.pop(sid, None)
        id_token = None
        if raw is not None:
            try:
                id_token = orjson.loads(raw).get("id") or None
            except (orjson.JSONDecodeError, AttributeError):
                id_token = None
        self._count("logout")
        await self._logged_out(ex, id_token)

    async def _logged_out(self, ex: Exchange, id_token: str | None) -> None:
        end = self.config.provider.end_session_endpoint
        if end is None:
            try:
                end = (await self.provider.discover()).end_session
            except ProviderError:
                end = None
        location = "/"
        if end:
            params = [("client_id", self.config.client_id)] + ([("id_token_hint", id_token)] if id_token else [])
            location = end + ("&" if "?" in end else "?") + urlencode(params)
        ex.answer(302, [
            (b"Location", location.encode("latin-1")),
            (b"Set-Cookie", self._cookie(ex, self.cookie_name, b"", 0)),
            (b"Cache-Control", b"no-store"),
        ])  # fmt: skip

    # -- upstream -----------------------------------------------------------------------------

    def _spawn(self, work: Coroutine[Any, Any, None], fail: Callable[[ProxyError], None]) -> None:
        """Run `work` for exchanges that WAIT on it; a bug in it fails them (500), never leaves them waiting."""
        task = self.loop.create_task(work)
        self.tasks.add(task)

        def done(task: asyncio.Task[None]) -> None:
            self.tasks.discard(task)
            if task.cancelled() or task.exception() is None:
                return
            # The exception's type and message only: a traceback's locals could hold a token.
            exc = task.exception()
            LOG.error("%s: OIDC step failed: %s: %s", self.policy, type(exc).__name__, exc)
            fail(InternalError("the login step failed"))

        task.add_done_callback(done)

    def _count(self, event: str) -> None:
        self.metrics.inc("gw_auth_oidc_events_total", policy=self.policy, event=event)


class ForwardingOIDCAuth(OIDCAuth):
    """oidc with forwardAccessToken or forwardIDToken: the tokens go upstream."""

    def __init__(self, security: Any, services: Any) -> None:
        super().__init__(security, services)
        self.forward_access = self.config.forward_access_token
        id_header = self.config.forward_id_token
        self.id_header = id_header.encode() if id_header else None
        self.replaced = {h for h in (b"authorization" if self.forward_access else None, self.id_header) if h}
        if self.id_header == b"authorization":
            self.id_prefix = b"Bearer "
        else:
            self.id_prefix = b""

    def on_upstream_request(self, ex: Exchange) -> None:
        identity = ex.identity
        if type(identity) is not OIDCIdentity:
            return
        fields = ex.edit_fields()
        fields[:] = [f for f in fields if f[0].lower() not in self.replaced]
        if self.forward_access:
            fields.append((b"Authorization", b"Bearer " + identity.access))
        if self.id_header is not None and identity.id_token:
            fields.append((self.id_header, self.id_prefix + identity.id_token))


def build(rule: Any, services: Any) -> Phase | None:
    security = rule.security
    if security is None or security.oidc is None:
        return None
    config = security.oidc
    cls = ForwardingOIDCAuth if config.forward_access_token or config.forward_id_token else OIDCAuth
    return cls(security, services)
