"""Parse and validate HTTPRoute filters and retry into FilterSpecs, per the spec's field rules and CEL.

Every problem is an error naming its field; the caller marks the rule invalid (it answers 500).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from gw.config import fields
from gw.config import validate as v
from gw.config.filters import (
    CORS,
    CORS_FILTER,
    EXTENSION_REF,
    EXTERNAL_AUTH,
    FILTER_TYPES,
    REQUEST_HEADER_MODIFIER,
    REQUEST_MIRROR,
    REQUEST_REDIRECT,
    RESPONSE_HEADER_MODIFIER,
    URL_REWRITE,
    HeaderModifier,
    PathModifier,
    Redirect,
    Retry,
    URLRewrite,
)
from gw.config.parse_ext_auth import parse_external_auth_filter
from gw.config.reader import Reader
from gw.config.resources import BackendRefSpec, ExtensionRefSpec, FilterSpecs, MirrorSpec

# The config field that goes with each filter type (HTTPRouteFilter's union members).
FILTER_FIELDS = {
    REQUEST_HEADER_MODIFIER: "requestHeaderModifier",
    RESPONSE_HEADER_MODIFIER: "responseHeaderModifier",
    REQUEST_REDIRECT: "requestRedirect",
    URL_REWRITE: "urlRewrite",
    REQUEST_MIRROR: "requestMirror",
    CORS_FILTER: "cors",
    EXTENSION_REF: "extensionRef",
    EXTERNAL_AUTH: "externalAuth",
}
# "Specifying the same filter multiple times is not supported unless explicitly indicated":
# only RequestMirror and ExtensionRef say so.
_REPEATABLE = frozenset({REQUEST_MIRROR, EXTENSION_REF})
REDIRECT_CODES = (301, 302, 303, 307, 308)
DEFAULT_RETRY_ATTEMPTS = 1  # the spec leaves it to the implementation when codes are given alone
# HTTPHeader.value: printable US-ASCII, optionally separated by single tabs or spaces.
_HEADER_VALUE = re.compile(r"^[!-~]+([\t ]?[!-~]+)*$")
_ORIGIN = re.compile(r"^(https?)://(\*|(\*\.)?[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*)(:[0-9]{1,5})?$")

BackendRefParser = Callable[[Reader, Any, str, int], BackendRefSpec | None]


def parse_filters(
    r: Reader,
    raw: Any,
    field: str,
    *,
    prefix: str | None,
    backend_ref: BackendRefParser,
) -> FilterSpecs:
    """The filters at `field` (a rule's or a backendRef's `filters` list).

    prefix: the value of the rule's match when it has exactly one PathPrefix match (the only
    case in which ReplacePrefixMatch is allowed), else None.
    """
    types: list[str] = []
    found: dict[str, Any] = {}
    mirrors: list[MirrorSpec] = []
    extensions: list[ExtensionRefSpec] = []
    for i, f in enumerate(r.list(raw, field)):
        f_field = f"{field}[{i}]"
        f = r.map(f, f_field, fields.HTTP_ROUTE_FILTER)
        kind = r.str(f, "type", f_field, required=True, choices=FILTER_TYPES)
        if kind is None:
            continue
        for other_kind, other in FILTER_FIELDS.items():
            if other_kind != kind and f.get(other) is not None:
                r.error(f"{f_field}.{other}", f"must not be set when type is {kind}")
        key = FILTER_FIELDS[kind]
        if f.get(key) is None:
            r.error(f"{f_field}.{key}", f"is required when type is {kind}")
            continue
        if kind in found and kind not in _REPEATABLE:
            r.error(f"{f_field}.type", f"{kind} filter cannot be repeated")
            continue
        types.append(kind)
        c_field = f"{f_field}.{key}"
        config = r.map(f.get(key), c_field, fields.FILTER_CONFIG.get(key))
        if kind in (REQUEST_HEADER_MODIFIER, RESPONSE_HEADER_MODIFIER):
            found[kind] = _header_modifier(r, config, c_field)
        elif kind == REQUEST_REDIRECT:
            found[kind] = _redirect(r, config, c_field, prefix)
        elif kind == URL_REWRITE:
            found[kind] = _rewrite(r, config, c_field, prefix)
        elif kind == CORS_FILTER:
            found[kind] = _cors(r, config, c_field)
        elif kind == EXTERNAL_AUTH:
            found[kind] = parse_external_auth_filter(r, config, c_field, backend_ref)
        elif kind == REQUEST_MIRROR:
            found[kind] = True
            mirror = _mirror(r, config, c_field, backend_ref)
            if mirror is not None:
                mirrors.append(mirror)
        else:
            found[kind] = True
            ext = _extension_ref(r, config, c_field)
            if ext is not None:
                extensions.append(ext)
    if REQUEST_REDIRECT in found and URL_REWRITE in found:
        r.error(field, "may specify either RequestRedirect or URLRewrite, but not both")
    return FilterSpecs(
        types=tuple(types),
        request_headers=found.get(REQUEST_HEADER_MODIFIER),
        response_headers=found.get(RESPONSE_HEADER_MODIFIER),
        redirect=found.get(REQUEST_REDIRECT),
        rewrite=found.get(URL_REWRITE),
        cors=found.get(CORS_FILTER),
        mirrors=tuple(mirrors),
        extensions=tuple(extensions),
        external_auth=found.get(EXTERNAL_AUTH),
    )


def _header_modifier(r: Reader, raw: dict[str, Any], field: str) -> HeaderModifier:
    # "Only one action for a given header name is permitted" across set, add and remove.
    seen: dict[str, str] = {}

    def claim(name: str, where: str) -> bool:
        low = name.lower()
        if low in seen:
            r.error(where, f"header {name!r} already has an action ({seen[low]}); only one per name")
            return False
        seen[low] = where
        return True

    pairs: dict[str, list[tuple[str, str]]] = {"set": [], "add": []}
    for action in ("set", "add"):
        items = r.list(raw.get(action), f"{field}.{action}")
        if len(items) > 16:
            r.error(f"{field}.{action}", "at most 16 entries")
        for i, h in enumerate(items):
            h_field = f"{field}.{action}[{i}]"
            h = r.map(h, h_field, fields.HEADER)
            name = r.str(h, "name", h_field, required=True, check=v.check_header_name)
            value = r.str(h, "value", h_field, required=True, check=check_header_value)
            if name is not None and value is not None and claim(name, h_field):
                pairs[action].append((name, value))
    removed = []
    items = r.list(raw.get("remove"), f"{field}.remove")
    if len(items) > 16:
        r.error(f"{field}.remove", "at most 16 entries")
    for i, name in enumerate(items):
        n_field = f"{field}.remove[{i}]"
        problem = v.check_header_name(name) if isinstance(name, str) else "must be a header name"
        if problem:
            r.error(n_field, problem)
        elif claim(name, n_field):
            removed.append(name)
    if not (raw.get("set") or raw.get("add") or raw.get("remove")):
        r.error(field, "needs at least one of set, add, remove")
    return HeaderModifier(tuple(pairs["set"]), tuple(pairs["add"]), tuple(removed))


def check_header_value(value: str) -> str | None:
    if not value or len(value) > 4096 or not _HEADER_VALUE.match(value):
        return f"{value!r} is not a valid header value (printable US-ASCII, 1 to 4096 characters)"
    return None


def _path_modifier(r: Reader, raw: Any, field: str, prefix: str | None) -> PathModifier | None:
    raw = r.map(raw, field, fields.PATH_MODIFIER)
    kind = r.str(raw, "type", field, required=True, choices=("ReplaceFullPath", "ReplacePrefixMatch"))
    full, replace = raw.get("replaceFullPath"), raw.get("replacePrefixMatch")
    if kind == "ReplaceFullPath" and replace is not None:
        r.error(f"{field}.replacePrefixMatch", "type must be 'ReplacePrefixMatch' when replacePrefixMatch is set")
    if kind == "ReplacePrefixMatch" and full is not None:
        r.error(f"{field}.replaceFullPath", "type must be 'ReplaceFullPath' when replaceFullPath is set")
    if kind is None:
        return None
    key = "replaceFullPath" if kind == "ReplaceFullPath" else "replacePrefixMatch"
    value = r.str(raw, key, field, required=True)
    if value is None:
        return None
    if len(value) > 1024:
        r.error(f"{field}.{key}", "longer than 1024 characters")
        return None
    if (value and not value.startswith("/")) or (kind == "ReplaceFullPath" and not value):
        r.error(f"{field}.{key}", f"{value!r} must be a path starting with '/'")
        return None
    if kind == "ReplacePrefixMatch" and prefix is None:
        r.error(
            f"{field}.type",
            "ReplacePrefixMatch needs the rule to have exactly one match, of type PathPrefix",
        )
        return None
    return PathModifier(kind, value, prefix)


def _precise_hostname(r: Reader, raw: dict[str, Any], field: str) -> str | None:
    host = r.str(raw, "hostname", field, check=v.check_hostname)
    if host is not None and host.startswith("*"):
        r.error(f"{field}.hostname", f"{host!r}: a wildcard is not allowed here (PreciseHostname)")
        return None
    return host


def _redirect(r: Reader, raw: dict[str, Any], field: str, prefix: str | None) -> Redirect:
    scheme = r.str(raw, "scheme", field, choices=("http", "https"))
    hostname = _precise_hostname(r, raw, field)
    port = r.int(raw, "port", field, lo=1, hi=65535)
    status = r.int(raw, "statusCode", field, default=302)
    if status not in REDIRECT_CODES:
        r.error(f"{field}.statusCode", f"{status} is not one of {', '.join(map(str, REDIRECT_CODES))}")
        status = 302
    path = _path_modifier(r, raw["path"], f"{field}.path", prefix) if raw.get("path") is not None else None
    return Redirect(status or 302, scheme, hostname, port, path)


def _rewrite(r: Reader, raw: dict[str, Any], field: str, prefix: str | None) -> URLRewrite:
    hostname = _precise_hostname(r, raw, field)
    path = _path_modifier(r, raw["path"], f"{field}.path", prefix) if raw.get("path") is not None else None
    return URLRewrite(hostname, path)


def _mirror(r: Reader, raw: dict[str, Any], field: str, backend_ref: BackendRefParser) -> MirrorSpec | None:
    before = r.count
    ref = backend_ref(r, raw.get("backendRef"), f"{field}.backendRef", 0)
    if raw.get("backendRef") is None:
        r.error(f"{field}.backendRef", "is required")
    numerator, denominator = 100, 100
    if raw.get("percent") is not None and raw.get("fraction") is not None:
        r.error(field, "only one of percent or fraction may be specified")
    elif raw.get("percent") is not None:
        numerator = r.int(raw, "percent", field, lo=0, hi=100) or 0
    elif raw.get("fraction") is not None:
        numerator, denominator = parse_fraction(r, raw["fraction"], f"{field}.fraction")
    if ref is None or r.count != before:
        return None
    return MirrorSpec(ref, numerator, denominator, field)


def parse_fraction(r: Reader, raw: Any, field: str) -> tuple[int, int]:
    """A Gateway API Fraction: (numerator, denominator), 0 <= numerator <= denominator, denominator
    100 when left out; each problem reported at its field (the pair is then meaningless)."""
    fraction = r.map(raw, field, fields.FRACTION)
    if not isinstance(raw, dict):
        return 0, 100  # (named by r.map: its numerator would be reported missing too)
    numerator = r.int(fraction, "numerator", field, required=True, lo=0) or 0
    denominator = r.int(fraction, "denominator", field, default=100, lo=1) or 100
    if numerator > denominator:
        r.error(f"{field}.numerator", "must be less than or equal to denominator")
    return numerator, denominator


def _extension_ref(r: Reader, raw: dict[str, Any], field: str) -> ExtensionRefSpec | None:
    group = r.str(raw, "group", field, required=True)
    kind = r.str(raw, "kind", field, required=True)
    name = r.str(raw, "name", field, required=True)
    if group is None or kind is None or name is None:
        return None
    return ExtensionRefSpec(group, kind, name, field)


def _cors(r: Reader, raw: dict[str, Any], field: str) -> CORS:
    origins = _string_list(r, raw, "allowOrigins", field, 64, _check_origin)
    methods = _string_list(r, raw, "allowMethods", field, 9, _check_method)
    headers = _string_list(r, raw, "allowHeaders", field, 64, _check_header_or_wildcard)
    expose = _string_list(r, raw, "exposeHeaders", field, 64, _check_header_or_wildcard)
    for key, values in (("allowOrigins", origins), ("allowMethods", methods), ("allowHeaders", headers)):
        if "*" in values and len(values) > 1:
            r.error(f"{field}.{key}", f"{key} cannot contain '*' alongside other values")
    credentials = raw.get("allowCredentials", False)
    if not isinstance(credentials, bool):
        r.error(f"{field}.allowCredentials", "must be true or false")
        credentials = False
    max_age = r.int(raw, "maxAge", field, default=5, lo=1)
    return CORS(origins, methods, headers, expose, credentials, max_age or 5)


def _string_list(
    r: Reader, raw: dict[str, Any], key: str, field: str, most: int, check: Callable[[str], str | None]
) -> tuple[str, ...]:
    items = r.list(raw.get(key), f"{field}.{key}")
    if len(items) > most:
        r.error(f"{field}.{key}", f"at most {most} entries")
    result = []
    for i, item in enumerate(items):
        problem = check(item) if isinstance(item, str) else "must be a string"
        if problem:
            r.error(f"{field}.{key}[{i}]", problem)
        elif item not in result:
            result.append(item)
    return tuple(result)


def _check_origin(value: str) -> str | None:
    if value == "*" or _ORIGIN.match(value):
        return None
    return f"{value!r} is not an origin (scheme://host[:port], http or https, '*' allowed in the host)"


def _check_method(value: str) -> str | None:
    return None if value == "*" or value in v.METHODS else f"{value!r} is not an HTTP method or '*'"


def _check_header_or_wildcard(value: str) -> str | None:
    return None if value == "*" else v.check_header_name(value)


def parse_retry(r: Reader, raw: Any, field: str) -> Retry | None:
    """GEP-1731 retry: codes (400-599), attempts (0 disables), backoff (a Gateway API duration)."""
    from gw.config.units import parse_duration

    raw = r.map(raw, field, fields.RETRY)
    codes = []
    for i, code in enumerate(r.list(raw.get("codes"), f"{field}.codes")):
        if not isinstance(code, int) or isinstance(code, bool) or not 400 <= code <= 599:
            r.error(f"{field}.codes[{i}]", f"{code!r} is not an HTTP status code from 400 to 599")
        else:
            codes.append(code)
    attempts = r.int(raw, "attempts", field, default=DEFAULT_RETRY_ATTEMPTS, lo=0, hi=100)
    backoff = None
    if raw.get("backoff") is not None:
        try:
            backoff = parse_duration(raw["backoff"])
        except ValueError as exc:
            r.error(f"{field}.backoff", str(exc))
    if not attempts:
        return None  # "An explicit zero value MUST disable retries"
    return Retry(attempts, frozenset(codes), backoff)
