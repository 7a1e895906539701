"""An OpenID provider as one worker talks to it: discovery, the token endpoint, ID token verification.

Control-plane HTTP (httpx), never per proxied request: a worker fetches the provider's discovery
document once (and again after a failure, at most every RETRY seconds), and calls the token
endpoint once per login or refresh. The ID token is verified by gw.auth.jwt's Verifier over the
provider's JWKS (gw.auth.jwks's RemoteKeySet: refreshed in the background, refetched once for an
unknown kid), with the issuer and the client id as audience; the nonce is the caller's to check.
Errors never carry a token or the client secret.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx
import orjson

from gw.auth.jwks import RemoteKeySet
from gw.auth.jwt import Pending, Refused, Verified, Verifier
from gw.auth.provider import Provider, RemoteJWKS

# The provider as configured (gw.config.oidc.OIDCProvider: issuer and the endpoints given), typed
# loosely here: gw.auth sits below gw.config.
OIDCProvider = Any

LOG = logging.getLogger("gw.auth")
TIMEOUT = 5.0  # seconds for one call to the provider
RETRY = 2.0  # seconds between discovery attempts after a failure
MAX_BODY = 1 << 20
WELL_KNOWN = "/.well-known/openid-configuration"


class ProviderError(Exception):
    """The provider could not be used (unreachable, refused the code, answered nonsense): why, without secrets."""


@dataclass(frozen=True, slots=True)
class Endpoints:
    authorization: str
    token: str
    jwks_uri: str
    end_session: str | None
    post_auth: bool  # client_secret_post: the provider does not take client_secret_basic


class ProviderClient:
    """One issuer's endpoints and keys in one worker, shared by every policy naming that issuer."""

    def __init__(self, config: OIDCProvider, *, timeout: float = TIMEOUT) -> None:
        self.config = config
        self.timeout = timeout
        self.endpoints: Endpoints | None = None
        self.keys: RemoteKeySet | None = None
        self._verifiers: dict[str, Verifier] = {}
        self._discovering: asyncio.Task[Endpoints] | None = None
        self._failed_at = -float("inf")
        self._error = ""
        self._client: httpx.AsyncClient | None = None

    @property
    def client(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=httpx.Timeout(self.timeout), follow_redirects=False)
        return self._client

    async def discover(self) -> Endpoints:
        """The provider's endpoints: discovered once (shared by the callers waiting), the config's own first."""
        if self.endpoints is not None:
            return self.endpoints
        if self._discovering is None:
            if time.monotonic() - self._failed_at < RETRY:
                raise ProviderError(self._error)
            self._discovering = asyncio.get_running_loop().create_task(self._discover())
        task = self._discovering
        try:
            return await asyncio.shield(task)
        finally:
            if task.done() and self._discovering is task:
                self._discovering = None

    async def _discover(self) -> Endpoints:
        url = self.config.issuer.rstrip("/") + WELL_KNOWN
        try:
            doc = await self._get_json(url)
            if doc.get("issuer") != self.config.issuer:
                raise ProviderError(f"discovery names issuer {doc.get('issuer')!r}, not {self.config.issuer!r}")
            c = self.config
            authorization = c.authorization_endpoint or _url(doc, "authorization_endpoint")
            token = c.token_endpoint or _url(doc, "token_endpoint")
            jwks_uri = _url(doc, "jwks_uri")
            end_session = c.end_session_endpoint or doc.get("end_session_endpoint")
            methods = doc.get("token_endpoint_auth_methods_supported") or ["client_secret_basic"]
            post = "client_secret_basic" not in methods and "client_secret_post" in methods
        except ProviderError as exc:
            self._failed(str(exc))
            raise
        except (httpx.HTTPError, ValueError) as exc:
            self._failed(f"discovery at {url}: {type(exc).__name__}: {exc}")
            raise ProviderError(self._error) from None
        endpoints = Endpoints(authorization, token, jwks_uri,
                              end_session if isinstance(end_session, str) else None, post)  # fmt: skip
        self.keys = RemoteKeySet(RemoteJWKS(jwks_uri))
        self.keys.start()
        self.endpoints = endpoints
        return endpoints

    def _failed(self, why: str) -> None:
        self._failed_at = time.monotonic()
        if why != self._error:
            LOG.warning("OIDC provider %s: %s", self.config.issuer, why)
        self._error = why

    async def _get_json(self, url: str) -> dict[str, Any]:
        response = await self.client.get(url, headers={"accept": "application/json"})
        if response.status_code != 200:
            raise ProviderError(f"{url} answered HTTP {response.status_code}")
        return _json(response.content, url)

    async def token(self, client_id: str, secret: bytes, form: dict[str, str]) -> dict[str, Any]:
        """POST `form` to the token endpoint with the client's credentials; the JSON answer."""
        endpoints = await self.discover()
        headers = {"accept": "application/json"}
        form = dict(form)
        if endpoints.post_auth:
            form.update(client_id=client_id, client_secret=secret.decode("latin-1"))
        else:  # RFC 6749 §2.3.1: each part form-urlencoded before the Basic encoding
            pair = f"{quote(client_id, safe='')}:{quote(secret.decode('latin-1'), safe='')}"
            headers["authorization"] = "Basic " + base64.b64encode(pair.encode()).decode()
        try:
            response = await self.client.post(endpoints.token, data=form, headers=headers)
        except httpx.HTTPError as exc:
            raise ProviderError(f"token endpoint: {type(exc).__name__}") from None
        if response.status_code != 200:
            error = ""
            with contextlib.suppress(ProviderError):
                error = str(_json(response.content, "").get("error", ""))[:64]
            raise ProviderError(f"token endpoint answered HTTP {response.status_code} {error}".rstrip())
        answer = _json(response.content, "token endpoint")
        if not isinstance(answer.get("access_token"), str):
            raise ProviderError("token endpoint answered no access_token")
        return answer

    async def verify_id_token(self, token: str, client_id: str) -> dict[str, Any]:
        """The claims of an ID token signed by the provider's keys for `client_id` (iss, aud, exp checked)."""
        await self.discover()
        assert self.keys is not None
        verifier = self._verifiers.get(client_id)
        if verifier is None:
            provider = Provider(name=self.config.issuer, issuer=self.config.issuer, audiences=(client_id,))
            verifier = self._verifiers[client_id] = Verifier(provider, self.keys)
        raw = token.encode()
        if not self.keys.loaded:
            await asyncio.shield(self.keys.fetch())
        result = verifier.verify(raw)
        if isinstance(result, Pending):
            fetch = self.keys.fetch()
            await asyncio.shield(fetch)
            result = verifier.verify_now(raw)
        if isinstance(result, Refused):
            raise ProviderError(f"ID token refused: {result.reason}")
        assert isinstance(result, Verified)
        return result.claims

    async def close(self) -> None:
        if self.keys is not None:
            await self.keys.close()
        if self._client is not None:
            await self._client.aclose()
            self._client = None


class ProviderClients:
    """A worker's provider clients, by provider config, kept across reloads (a reload refetches nothing)."""

    def __init__(self) -> None:
        self.clients: dict[OIDCProvider, ProviderClient] = {}

    def get(self, config: OIDCProvider) -> ProviderClient:
        client = self.clients.get(config)
        if client is None:
            client = self.clients[config] = ProviderClient(config)
        return client

    def release(self, keep: set[OIDCProvider]) -> list[ProviderClient]:
        """Forget the clients the new config does not use; the caller closes those returned."""
        dropped = [c for p, c in self.clients.items() if p not in keep]
        self.clients = {p: c for p, c in self.clients.items() if p in keep}
        return dropped


def _url(doc: dict[str, Any], key: str) -> str:
    value = doc.get(key)
    if not isinstance(value, str) or not value.startswith(("https://", "http://")):
        raise ProviderError(f"discovery has no {key}")
    return value


def _json(body: bytes, where: str) -> dict[str, Any]:
    if len(body) > MAX_BODY:
        raise ProviderError(f"{where}: answer larger than {MAX_BODY} bytes")
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise ProviderError(f"{where}: answer is not JSON") from None
    if not isinstance(value, dict):
        raise ProviderError(f"{where}: answer is not a JSON object")
    return value
