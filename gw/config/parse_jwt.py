"""Parse a SecurityPolicy's `jwt` and its providers (gw.auth.provider has the shape), every problem naming its field."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from gw.auth.jwks import parse_jwks
from gw.auth.keys import JWKError
from gw.auth.provider import (
    CACHE_DURATION,
    DEFAULT_EXTRACT_FROM,
    FAILED_REFETCH_DURATION,
    JWT,
    ClaimToHeader,
    ExtractFrom,
    HeaderExtractor,
    LocalJWKS,
    Provider,
    RemoteJWKS,
)
from gw.config import fields as f
from gw.config import validate as v
from gw.config.reader import Reader, type_name
from gw.config.units import parse_duration

# Headers a claim may not set: they frame or route the request the proxy forwards.
RESERVED_HEADERS = frozenset(
    {"host", "content-length", "transfer-encoding", "connection", "upgrade", "te", "trailer", "keep-alive"}
)
INLINE, VALUE_REF = "Inline", "ValueRef"


def parse_jwt(r: Reader, raw: Any, field: str) -> JWT | None:
    """`spec.jwt` of a SecurityPolicy, or None (with the problems recorded in `r`)."""
    before = r.count
    spec = r.map(raw, field, f.JWT)
    given = spec.get("providers")
    providers = []
    names: set[str] = set()
    for i, item in enumerate(r.list(given, f"{field}.providers")):
        provider = parse_jwt_provider(r, item, f"{field}.providers[{i}]")
        if provider is None:
            continue
        if provider.name in names:
            r.error(f"{field}.providers[{i}].name", f"{provider.name!r} is the name of an earlier provider")
        names.add(provider.name)
        providers.append(provider)
    if not given and (given is None or isinstance(given, list)):
        r.error(f"{field}.providers", "is required: at least one provider")
    optional = _bool(r, spec, "optional", field)
    fail_open = _bool(r, spec, "failOpen", field)
    if r.count != before:
        return None
    return JWT(tuple(providers), optional=optional, fail_open=fail_open)


def parse_jwt_provider(r: Reader, raw: Any, field: str) -> Provider | None:
    """One of `jwt.providers[]`, or None (with the problems recorded in `r`)."""
    before = r.count
    p = r.map(raw, field, f.JWT_PROVIDER)
    if not isinstance(raw, dict):
        return None
    name = r.str(p, "name", field, required=True, check=v.check_object_name)
    issuer = r.str(p, "issuer", field, check=_check_nonempty)
    audiences = _strings(r, p.get("audiences"), f"{field}.audiences")
    remote = _remote(r, p.get("remoteJWKS"), f"{field}.remoteJWKS")
    local = _local(r, p.get("localJWKS"), f"{field}.localJWKS")
    if p.get("remoteJWKS") is None and p.get("localJWKS") is None:
        r.error(field, "needs remoteJWKS or localJWKS: the keys that sign its tokens")
    elif p.get("remoteJWKS") is not None and p.get("localJWKS") is not None:
        r.error(f"{field}.localJWKS", "set remoteJWKS or localJWKS, not both")
    claim_to_headers = _claim_to_headers(r, p.get("claimToHeaders"), f"{field}.claimToHeaders")
    recompute = _bool(r, p, "recomputeRoute", field)
    extract = _extract_from(r, p.get("extractFrom"), f"{field}.extractFrom")
    if r.count != before or name is None:
        return None
    return Provider(
        name=name,
        issuer=issuer,
        audiences=audiences,
        remote_jwks=remote,
        local_jwks=local,
        claim_to_headers=claim_to_headers,
        recompute_route=recompute,
        extract_from=extract,
    )


def _remote(r: Reader, raw: Any, field: str) -> RemoteJWKS | None:
    if raw is None:
        return None
    m = r.map(raw, field, f.REMOTE_JWKS)
    for key in ("backendRef", "backendRefs", "backendSettings"):
        if m.get(key) is not None:
            r.error(f"{field}.{key}", "is not supported by gw: give the JWKS's uri (gw fetches it itself)")
    uri = r.str(m, "uri", field, required=True, check=_check_uri)
    cache = _duration(r, m, "cacheDuration", field)
    failed = _duration(r, m, "failedRefetchDuration", field)
    if uri is None:
        return None
    return RemoteJWKS(
        uri,
        cache_duration=CACHE_DURATION if cache is None else cache,
        failed_refetch_duration=FAILED_REFETCH_DURATION if failed is None else failed,
    )


def _local(r: Reader, raw: Any, field: str) -> LocalJWKS | None:
    if raw is None:
        return None
    m = r.map(raw, field, f.LOCAL_JWKS)
    kind = r.str(m, "type", field, default=INLINE, choices=(INLINE, VALUE_REF))
    if kind == VALUE_REF or m.get("valueRef") is not None:
        r.error(f"{field}.valueRef", "is not supported by gw yet: write the JWKS under inline")
        return None
    inline = r.str(m, "inline", field, required=True)
    if inline is None:
        return None
    try:
        parse_jwks(inline)
    except JWKError as exc:
        r.error(f"{field}.inline", f"is not a usable JWKS: {exc}")
        return None
    return LocalJWKS(inline)


def _claim_to_headers(r: Reader, raw: Any, field: str) -> tuple[ClaimToHeader, ...]:
    result, seen = [], set()
    for i, item in enumerate(r.list(raw, field)):
        i_field = f"{field}[{i}]"
        m = r.map(item, i_field, f.CLAIM_TO_HEADER)
        header = r.str(m, "header", i_field, required=True, check=v.check_header_name)
        claim = r.str(m, "claim", i_field, required=True, check=_check_nonempty)
        if header is None or claim is None:
            continue
        header = header.lower()
        if header in RESERVED_HEADERS:
            r.error(f"{i_field}.header", f"{header!r} frames the request: a claim may not set it")
        elif header in seen:
            r.error(f"{i_field}.header", f"{header!r} is set by an earlier claim")
        seen.add(header)
        result.append(ClaimToHeader(header, claim))
    return tuple(result)


def _extract_from(r: Reader, raw: Any, field: str) -> ExtractFrom:
    m = r.map(raw, field, f.JWT_EXTRACTOR)
    headers = []
    for i, item in enumerate(r.list(m.get("headers"), f"{field}.headers")):
        h_field = f"{field}.headers[{i}]"
        h = r.map(item, h_field, f.JWT_HEADER_EXTRACTOR)
        name = r.str(h, "name", h_field, required=True, check=v.check_header_name)
        prefix = r.str(h, "valuePrefix", h_field, default="", check=_check_ascii) or ""
        if name is not None:
            headers.append(HeaderExtractor(name.lower(), prefix))
    cookies = _strings(r, m.get("cookies"), f"{field}.cookies", check=_check_token)
    params = _strings(r, m.get("params"), f"{field}.params", check=_check_ascii)
    if not (headers or cookies or params):
        return DEFAULT_EXTRACT_FROM  # as Envoy Gateway: absent or empty, Authorization: Bearer or access_token
    return ExtractFrom(tuple(headers), cookies, params)


def _strings(r: Reader, raw: Any, field: str, check: Any = None) -> tuple[str, ...]:
    result = []
    for i, item in enumerate(r.list(raw, field)):
        if not isinstance(item, str) or not item:
            r.error(f"{field}[{i}]", f"must be a non-empty string, not {type_name(item)}")
            continue
        problem = check(item) if check is not None else None
        if problem:
            r.error(f"{field}[{i}]", problem)
            continue
        result.append(item)
    return tuple(result)


def _bool(r: Reader, obj: dict[str, Any], key: str, field: str) -> bool:
    value = obj.get(key)
    if value is None:
        return False
    if not isinstance(value, bool):
        r.error(f"{field}.{key}", f"must be true or false, not {type_name(value)}")
        return False
    return value


def _duration(r: Reader, obj: dict[str, Any], key: str, field: str) -> float | None:
    text = r.str(obj, key, field)
    if text is None:
        return None
    try:
        seconds = parse_duration(text)
    except ValueError as exc:
        r.error(f"{field}.{key}", str(exc))
        return None
    if seconds <= 0:
        r.error(f"{field}.{key}", "must be longer than 0s")
        return None
    return seconds


def _check_uri(value: str) -> str | None:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return f"{value!r} is not an http:// or https:// URI"
    return None


def _check_nonempty(value: str) -> str | None:
    return None if value else "must not be empty"


def _check_ascii(value: str) -> str | None:
    return None if value.isascii() and value.isprintable() else f"{value!r} must be printable ASCII"


def _check_token(value: str) -> str | None:
    bad = set(value) & set(' "(),/:;<=>?@[\\]{}\t')
    return f"{value!r} is not a cookie name" if bad or not value.isascii() else None
