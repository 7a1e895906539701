"""Parse forward auth: a SecurityPolicy's extAuth (Envoy Gateway) and an HTTPRoute ExternalAuth filter (GEP-1494).

Both become one gw.config.security_policy.ExtAuth, its backendRefs still to resolve. What gw does
not serve of them (gRPC ext_authz, a forwarded body, re-matching routes) is refused, never
ignored: a SecurityPolicy lists it as unserved and the rules it wins answer 500; a filter's rule
is invalid (500) with the field named.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from gw.config import validate as v
from gw.config.reader import Reader
from gw.config.resources import BackendRefSpec
from gw.config.security_policy import ExtAuth
from gw.config.units import parse_duration

BackendRefParser = Callable[[Reader, Any, str, int], BackendRefSpec | None]

EXT_AUTH = frozenset({
    "grpc", "http", "headersToExtAuth", "bodyToExtAuth", "timeout", "failOpen", "recomputeRoute",
    "includeRouteMetadata", "contextExtensions", "statusOnError",
})  # fmt: skip
HTTP_EXT_AUTH = frozenset({"backendRef", "backendRefs", "backendSettings", "path", "pathOverride", "headersToBackend"})
EXTERNAL_AUTH_FILTER = frozenset({"protocol", "backendRef", "grpc", "http", "forwardBody"})
EXTERNAL_AUTH_HTTP = frozenset({"path", "allowedHeaders", "allowedResponseHeaders"})
MAX_BACKEND_REFS = 16  # Envoy Gateway's MaxItems
MAX_HEADERS = 64
MAX_TIMEOUT = 60.0  # seconds: a request may not wait on its authorization longer
# Envoy Gateway's statusOnError enum: 4xx and 5xx a client understands.
ERROR_STATUSES = frozenset({
    400, 401, 402, 403, 404, 405, 406, 407, 408, 409, 410, 411, 412, 413, 414, 415, 416, 417, 421, 422,
    423, 424, 426, 428, 429, 431, 500, 501, 502, 503, 504, 505, 506, 507, 508, 510, 511,
})  # fmt: skip
# GEP-1494's HTTPAuthConfig.path pattern (the same one applies to Envoy Gateway's path here).
_PATH = re.compile(r"^(?:[-A-Za-z0-9/._~!$&'()*+,;=:@]|%[0-9a-fA-F]{2})+$")


def parse_ext_auth(
    r: Reader, raw: Any, field: str, backend_ref: BackendRefParser, unserved: list[str]
) -> ExtAuth | None:
    """A SecurityPolicy's `extAuth`; what gw does not serve of it is appended to `unserved`."""
    spec = r.map(raw, field, EXT_AUTH)
    if (spec.get("grpc") is None) == (spec.get("http") is None):
        r.error(field, "exactly one of grpc or http must be specified")
        return None
    for name, what in (
        ("grpc", "gRPC ext_authz"),
        ("bodyToExtAuth", "the request body to the authorization service"),
        ("recomputeRoute", "re-matching routes on the service's headers"),
        ("contextExtensions", "context extensions (a gRPC CheckRequest's)"),
        ("includeRouteMetadata", "route metadata (a gRPC CheckRequest's)"),
    ):
        if spec.get(name) not in (None, False):
            unserved.append(f"{field}.{name} ({what})")
    headers = _header_names(r, spec.get("headersToExtAuth"), f"{field}.headersToExtAuth")
    fail_open = _bool(r, spec, "failOpen", field)
    timeout = 10.0
    if spec.get("timeout") is not None:
        try:
            timeout = parse_duration(spec["timeout"])
        except ValueError as exc:
            r.error(f"{field}.timeout", str(exc))
        else:
            if not 0 < timeout <= MAX_TIMEOUT:
                r.error(f"{field}.timeout", f"must be more than 0s and at most {MAX_TIMEOUT:g}s")
    status = 403
    if spec.get("statusOnError") is not None:
        status = spec["statusOnError"]
        if not isinstance(status, int) or isinstance(status, bool) or status not in ERROR_STATUSES:
            r.error(f"{field}.statusOnError", f"{status!r}: must be a 4xx or 5xx status Envoy Gateway allows")
            status = 403
    if spec.get("http") is None:
        return None  # grpc: unserved, the rules answer 500
    h_field = f"{field}.http"
    http = r.map(spec["http"], h_field, HTTP_EXT_AUTH)
    for name, what in (("pathOverride", "replacing the request's path"), ("backendSettings", "backend settings")):
        if http.get(name) is not None:
            unserved.append(f"{h_field}.{name} ({what})")
    refs: list[BackendRefSpec] = []
    if http.get("backendRef") is not None:
        ref = backend_ref(r, http["backendRef"], f"{h_field}.backendRef", 0)
        if ref is not None:
            refs.append(ref)
    listed = r.list(http.get("backendRefs"), f"{h_field}.backendRefs")
    if len(listed) > MAX_BACKEND_REFS:
        r.error(f"{h_field}.backendRefs", f"at most {MAX_BACKEND_REFS}")
    for i, item in enumerate(listed[:MAX_BACKEND_REFS]):
        ref = backend_ref(r, item, f"{h_field}.backendRefs[{i}]", i)
        if ref is not None:
            refs.append(ref)
    if http.get("backendRef") is None and not listed:
        r.error(h_field, "backendRef or backendRefs needs to be set")
    path = _path(r, http, h_field)
    to_backend = _header_names(r, http.get("headersToBackend"), f"{h_field}.headersToBackend")
    if not refs:
        return None
    return ExtAuth(tuple(refs), path, headers, to_backend, fail_open, timeout, status, h_field)


def parse_external_auth_filter(
    r: Reader, raw: dict[str, Any], field: str, backend_ref: BackendRefParser
) -> ExtAuth | None:
    """An HTTPRoute ExternalAuth filter's `externalAuth` (GEP-1494); what gw does not serve is an error."""
    spec = r.map(raw, field, EXTERNAL_AUTH_FILTER)
    protocol = r.str(spec, "protocol", field, required=True, choices=("HTTP", "GRPC"))
    if protocol == "GRPC" or spec.get("grpc") is not None:
        where = f"{field}.protocol" if protocol == "GRPC" else f"{field}.grpc"
        r.error(where, "gRPC ext_authz is not served by gw yet")
    forward = r.map(spec.get("forwardBody"), f"{field}.forwardBody", frozenset({"maxSize"}))
    if forward.get("maxSize") not in (None, 0):
        r.error(f"{field}.forwardBody.maxSize", "forwarding the request body is not served by gw yet")
    ref = None
    if spec.get("backendRef") is None:
        r.error(f"{field}.backendRef", "is required")
    else:
        ref = backend_ref(r, spec["backendRef"], f"{field}.backendRef", 0)
    http = r.map(spec.get("http"), f"{field}.http", EXTERNAL_AUTH_HTTP)
    path = _path(r, http, f"{field}.http")
    headers = _header_names(r, http.get("allowedHeaders"), f"{field}.http.allowedHeaders")
    to_backend = _header_names(r, http.get("allowedResponseHeaders"), f"{field}.http.allowedResponseHeaders")
    if ref is None or protocol != "HTTP":
        return None
    # GEP-1494: allowedResponseHeaders empty → every header of the answer goes to the backend.
    return ExtAuth((ref,), path, headers, to_backend or None, field=field)


def _path(r: Reader, spec: dict[str, Any], field: str) -> str:
    path = r.str(spec, "path", field, default="") or ""
    if path and (len(path) > 1024 or not _PATH.match(path)):
        r.error(f"{field}.path", f"{path!r} is not a path prefix (at most 1024 characters of a URL path)")
        return ""
    return path


def _header_names(r: Reader, raw: Any, field: str) -> tuple[str, ...]:
    names = r.list(raw, field)
    if len(names) > MAX_HEADERS:
        r.error(field, f"at most {MAX_HEADERS} header names")
    found = []
    for i, name in enumerate(names[:MAX_HEADERS]):
        if not isinstance(name, str) or not name:
            r.error(f"{field}[{i}]", "must be a header name")
        elif problem := v.check_header_name(name):
            r.error(f"{field}[{i}]", problem)
        elif name.lower() not in found:
            found.append(name.lower())
    return tuple(found)


def _bool(r: Reader, spec: dict[str, Any], key: str, field: str) -> bool:
    value = spec.get(key, False)
    if not isinstance(value, bool):
        r.error(f"{field}.{key}", "must be true or false")
        return False
    return value
