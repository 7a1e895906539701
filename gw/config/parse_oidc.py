"""Parse a SecurityPolicy's `oidc` (gw.config.oidc has the shape), every problem naming its field.

What gw does not serve of Envoy Gateway's OIDC (clientIDRef, passThroughAuthHeader, a provider's
backendRefs and backendSettings, cookieNames.idToken: gw keeps the ID token server-side) is
appended to `unserved`, so the rules the policy wins answer 500 rather than go unauthenticated.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit

from gw.config import validate as v
from gw.config.oidc import (
    DEFAULT_CSRF_TOKEN_TTL,
    DEFAULT_LOGOUT_PATH,
    DEFAULT_REDIRECT_URL,
    DEFAULT_REFRESH_TOKEN_TTL,
    EXACT,
    OIDC,
    PREFIX,
    REGEX,
    SUFFIX,
    HeaderMatch,
    OIDCProvider,
)
from gw.config.parse_jwt import _bool, _duration, _strings
from gw.config.reader import Reader

# Envoy Gateway's OIDC field names (every one known, so that one gw does not serve is refused by name).
OIDC_FIELDS = frozenset({
    "provider", "clientID", "clientIDRef", "clientSecret", "cookieNames", "cookieConfig", "cookieDomain",
    "scopes", "resources", "redirectURL", "denyRedirect", "logoutPath", "forwardAccessToken", "forwardIDToken",
    "defaultTokenTTL", "refreshToken", "defaultRefreshTokenTTL", "csrfTokenTTL", "disableTokenEncryption",
    "passThroughAuthHeader",
})  # fmt: skip
PROVIDER_FIELDS = frozenset({
    "issuer", "authorizationEndpoint", "tokenEndpoint", "endSessionEndpoint", "backendRef", "backendRefs",
    "backendSettings",
})  # fmt: skip
SECRET_REF = frozenset({"group", "kind", "name", "namespace"})
COOKIE_NAMES = frozenset({"accessToken", "idToken"})
COOKIE_CONFIG = frozenset({"sameSite"})
DENY_REDIRECT = frozenset({"headers"})
DENY_HEADER = frozenset({"name", "type", "value"})
TOKEN_FORWARDING = frozenset({"header"})
MAX_DENY_HEADERS = 16
REQ = re.compile(r"%REQ\(([^)]*)\)%")
KNOWN_REQ = {"x-forwarded-proto", ":authority"}
DOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


def parse_oidc(r: Reader, raw: Any, field: str, unserved: list[str]) -> OIDC | None:
    """`spec.oidc`, or None (with the problems recorded in `r`)."""
    before = r.count
    spec = r.map(raw, field, OIDC_FIELDS)
    provider = _provider(r, spec.get("provider"), f"{field}.provider", unserved)
    client_id = r.str(spec, "clientID", field, check=_nonempty)
    if spec.get("clientIDRef") is not None:
        unserved.append(f"{field}.clientIDRef (a client id read from a Secret: write clientID)")
    elif client_id is None:
        r.error(f"{field}.clientID", "is required")
    secret = _secret_name(r, spec.get("clientSecret"), f"{field}.clientSecret")
    scopes = ["openid"]
    for scope in _strings(r, spec.get("scopes"), f"{field}.scopes", check=_scope):
        if scope not in scopes:
            scopes.append(scope)
    resources = _strings(r, spec.get("resources"), f"{field}.resources", check=_absolute_uri)
    redirect = r.str(spec, "redirectURL", field, default=DEFAULT_REDIRECT_URL, check=_redirect_url)
    callback = urlsplit(REQ.sub("x", redirect or DEFAULT_REDIRECT_URL)).path or "/"
    logout = r.str(spec, "logoutPath", field, default=DEFAULT_LOGOUT_PATH, check=_path) or DEFAULT_LOGOUT_PATH
    if logout == callback:
        r.error(f"{field}.logoutPath", f"{logout!r} is the redirectURL's path")
    forward_access = _bool(r, spec, "forwardAccessToken", field)
    forward_id = None
    if spec.get("forwardIDToken") is not None:
        fwd = r.map(spec["forwardIDToken"], f"{field}.forwardIDToken", TOKEN_FORWARDING)
        header = r.str(fwd, "header", f"{field}.forwardIDToken", required=True, check=v.check_header_name)
        if header is not None:
            forward_id = header.lower()
            if forward_id in ("host", "content-length", "transfer-encoding", "connection"):
                r.error(f"{field}.forwardIDToken.header", f"{header!r} frames the request")
            elif forward_id == "authorization" and forward_access:
                r.error(f"{field}.forwardAccessToken", "cannot be true when forwardIDToken.header is Authorization")
    refresh = spec.get("refreshToken", True)
    if not isinstance(refresh, bool):
        r.error(f"{field}.refreshToken", "must be true or false")
        refresh = True
    token_ttl = _duration(r, spec, "defaultTokenTTL", field)
    refresh_ttl = _duration(r, spec, "defaultRefreshTokenTTL", field) or DEFAULT_REFRESH_TOKEN_TTL
    csrf_ttl = _duration(r, spec, "csrfTokenTTL", field) or DEFAULT_CSRF_TOKEN_TTL
    _bool(r, spec, "disableTokenEncryption", field)  # tokens never leave gw: there is nothing to encrypt
    if _bool(r, spec, "passThroughAuthHeader", field):
        unserved.append(f"{field}.passThroughAuthHeader (a bearer token instead of the login)")
    domain = r.str(spec, "cookieDomain", field, check=_domain)
    names = r.map(spec.get("cookieNames"), f"{field}.cookieNames", COOKIE_NAMES)
    cookie_name = r.str(names, "accessToken", f"{field}.cookieNames", check=_cookie_name)
    if names.get("idToken") is not None:
        unserved.append(f"{field}.cookieNames.idToken (gw keeps the ID token server-side, in no cookie)")
    config = r.map(spec.get("cookieConfig"), f"{field}.cookieConfig", COOKIE_CONFIG)
    same_site = r.str(config, "sameSite", f"{field}.cookieConfig", default="Lax", choices=("Lax", "Strict", "None"))
    deny = _deny_redirect(r, spec.get("denyRedirect"), f"{field}.denyRedirect")
    if r.count != before or provider is None or client_id is None or secret is None:
        return None
    return OIDC(
        provider=provider,
        client_id=client_id,
        client_secret=secret,
        scopes=tuple(scopes),
        resources=resources,
        redirect_url=redirect or DEFAULT_REDIRECT_URL,
        callback_path=callback,
        logout_path=logout,
        forward_access_token=forward_access,
        forward_id_token=forward_id,
        refresh_token=refresh,
        default_token_ttl=token_ttl,
        default_refresh_token_ttl=refresh_ttl,
        csrf_token_ttl=csrf_ttl,
        cookie_domain=domain,
        cookie_name=cookie_name,
        same_site=same_site or "Lax",
        deny_redirect=deny,
    )


def _provider(r: Reader, raw: Any, field: str, unserved: list[str]) -> OIDCProvider | None:
    if raw is None:
        r.error(field, "is required: the provider's issuer")
        return None
    spec = r.map(raw, field, PROVIDER_FIELDS)
    for key in ("backendRef", "backendRefs", "backendSettings"):
        if spec.get(key) is not None:
            unserved.append(f"{field}.{key} (gw reaches the provider at its endpoints' own addresses)")
    issuer = r.str(spec, "issuer", field, required=True, check=_issuer)
    endpoints = [r.str(spec, k, field, check=_absolute_uri)
                 for k in ("authorizationEndpoint", "tokenEndpoint", "endSessionEndpoint")]  # fmt: skip
    return OIDCProvider(issuer, *endpoints) if issuer else None


def _secret_name(r: Reader, raw: Any, field: str) -> str | None:
    if raw is None:
        r.error(field, "is required: a Secret whose key client-secret holds the client secret")
        return None
    ref = r.map(raw, field, SECRET_REF)
    name = r.str(ref, "name", field, required=True, check=v.check_object_name)
    if r.str(ref, "group", field, default="") not in ("", "core") or r.str(ref, "kind", field) not in (None, "Secret"):
        r.error(field, "must name a Secret")
        return None
    if ref.get("namespace") is not None:
        r.error(f"{field}.namespace", "a Secret in another namespace (ReferenceGrant) is not served by gw yet")
        return None
    return name


def _deny_redirect(r: Reader, raw: Any, field: str) -> tuple[HeaderMatch, ...]:
    if raw is None:
        return ()
    spec = r.map(raw, field, DENY_REDIRECT)
    items = r.list(spec.get("headers"), f"{field}.headers")
    if not items:
        r.error(f"{field}.headers", "is required: at least one header")
    elif len(items) > MAX_DENY_HEADERS:
        r.error(f"{field}.headers", f"at most {MAX_DENY_HEADERS}")
    matches = []
    for i, item in enumerate(items[:MAX_DENY_HEADERS]):
        h_field = f"{field}.headers[{i}]"
        h = r.map(item, h_field, DENY_HEADER)
        name = r.str(h, "name", h_field, required=True, check=v.check_header_name)
        kind = r.str(h, "type", h_field, default=EXACT, choices=(EXACT, PREFIX, SUFFIX, REGEX)) or EXACT
        value = r.str(h, "value", h_field, required=True)
        pattern = None
        if kind == REGEX and value is not None:
            try:
                pattern = re.compile(value)
            except re.error as exc:
                r.error(f"{h_field}.value", f"is not a regular expression: {exc}")
                continue
        if name and value is not None:
            matches.append(HeaderMatch(name.lower(), kind, value, pattern))
    return tuple(matches)


def _nonempty(value: str) -> str | None:
    return None if value else "must not be empty"


def _scope(value: str) -> str | None:
    ok = value.isascii() and value.isprintable() and " " not in value and '"' not in value and "\\" not in value
    return None if ok else f"{value!r} is not a scope"


def _issuer(value: str) -> str | None:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
        return f"{value!r} is not an issuer URL (https://host[/path], no query or fragment)"
    return None


def _absolute_uri(value: str) -> str | None:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return f"{value!r} is not an http:// or https:// URL"
    return None


def _redirect_url(value: str) -> str | None:
    unknown = [m for m in REQ.findall(value) if m.lower() not in KNOWN_REQ]
    if unknown:
        return f"%REQ({unknown[0]})%: gw substitutes %REQ(x-forwarded-proto)% and %REQ(:authority)% only"
    parts = urlsplit(REQ.sub("x", value))
    if parts.scheme not in ("http", "https", "x") or not parts.netloc or not parts.path.startswith("/"):
        return f"{value!r} is not an absolute URL with a path"
    if parts.query or parts.fragment:
        return f"{value!r}: a redirect URL has no query or fragment"
    return None


def _path(value: str) -> str | None:
    return None if value.startswith("/") and "?" not in value and "#" not in value else f"{value!r} is not a path"


def _domain(value: str) -> str | None:
    return None if DOMAIN.match(value) else f"{value!r} is not a domain name"


def _cookie_name(value: str) -> str | None:
    bad = set(value) & set(' "(),/:;<=>?@[\\]{}\t')
    return f"{value!r} is not a cookie name" if bad or not value or not value.isascii() else None
