"""A SecurityPolicy's `oidc`, typed: Envoy Gateway's OIDC fields as gw.config.parse_oidc reads them.

    oidc:
      provider:
        issuer: https://idp.example.com          # discovery: <issuer>/.well-known/openid-configuration
        authorizationEndpoint: https://...       # optional: overrides the discovered one
        tokenEndpoint: https://...               # optional
        endSessionEndpoint: https://...          # optional: where logout sends the browser
      clientID: gw
      clientSecret: {name: oidc-client}          # Secret key `client-secret`
      scopes: [email]                            # `openid` is always asked for
      resources: [https://api.example.com]       # RFC 8707 resource indicators
      redirectURL: https://app.example.com/oauth2/callback   # default: the request's own host
      logoutPath: /logout
      forwardAccessToken: true                   # Authorization: Bearer <access token> upstream
      forwardIDToken: {header: x-id-token}
      refreshToken: true                         # default true, as Envoy Gateway
      defaultTokenTTL: 1h                        # when the token endpoint gives no expires_in
      defaultRefreshTokenTTL: 168h
      csrfTokenTTL: 10m                          # the login (state cookie) may take this long
      cookieDomain: example.com
      cookieNames: {accessToken: session}        # the name of gw's session cookie
      cookieConfig: {sameSite: Lax}
      denyRedirect: {headers: [{name: x-requested-with, value: XMLHttpRequest}]}   # 401, not 302

gw keeps the tokens server-side (Redis, shared by the fleet) under a random session id; the browser
holds only that id, in an HMAC-signed cookie (gw.policies.security.oidc).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# The default redirect URL Envoy Gateway uses: the request's own scheme and authority.
DEFAULT_REDIRECT_URL = "%REQ(x-forwarded-proto)%://%REQ(:authority)%/oauth2/callback"
DEFAULT_LOGOUT_PATH = "/logout"
DEFAULT_REFRESH_TOKEN_TTL = 7 * 24 * 3600.0
DEFAULT_CSRF_TOKEN_TTL = 600.0
CLIENT_SECRET_KEY = "client-secret"  # Envoy Gateway's OIDCClientSecretKey
EXACT, PREFIX, SUFFIX, REGEX = "Exact", "Prefix", "Suffix", "RegularExpression"


@dataclass(frozen=True, slots=True)
class HeaderMatch:
    """A denyRedirect header (Envoy Gateway's StringMatch)."""

    name: str  # lower case
    type: str
    value: str
    pattern: re.Pattern[str] | None = None  # for REGEX

    def matches(self, value: str) -> bool:
        if self.type == EXACT:
            return value == self.value
        if self.type == PREFIX:
            return value.startswith(self.value)
        if self.type == SUFFIX:
            return value.endswith(self.value)
        assert self.pattern is not None
        return self.pattern.fullmatch(value) is not None


@dataclass(frozen=True, slots=True)
class OIDCProvider:
    issuer: str
    authorization_endpoint: str | None = None
    token_endpoint: str | None = None
    end_session_endpoint: str | None = None


@dataclass(frozen=True, slots=True)
class OIDC:
    provider: OIDCProvider
    client_id: str
    client_secret: str  # the Secret's name (its key CLIENT_SECRET_KEY holds the secret)
    scopes: tuple[str, ...] = ("openid",)  # openid first, always there
    resources: tuple[str, ...] = ()
    redirect_url: str = DEFAULT_REDIRECT_URL  # may hold %REQ(x-forwarded-proto)% and %REQ(:authority)%
    callback_path: str = "/oauth2/callback"  # redirect_url's path: the rules the policy wins serve it
    logout_path: str = DEFAULT_LOGOUT_PATH
    forward_access_token: bool = False
    forward_id_token: str | None = None  # a header name, lower case
    refresh_token: bool = True
    default_token_ttl: float | None = None
    default_refresh_token_ttl: float = DEFAULT_REFRESH_TOKEN_TTL
    csrf_token_ttl: float = DEFAULT_CSRF_TOKEN_TTL
    cookie_domain: str | None = None
    cookie_name: str | None = None  # cookieNames.accessToken; None: derived from the policy's name
    same_site: str = "Lax"
    deny_redirect: tuple[HeaderMatch, ...] = ()
