"""HTTPRoute filters compiled into immutable, proxy-ready objects, each with one small method the proxy calls.

Everything that can be decided at compile time is: header names are lower-cased and encoded,
values encoded, the matched prefix of ReplacePrefixMatch bound, CORS origins compiled. The proxy
pays nothing for a filter a rule does not have (the Rule attribute is None or ()).

Request heads are `list[tuple[bytes, bytes]]` as the proxy parses them; paths are `str` (as
`Request.path`), queries `bytes` (as `Request.query`), without the "?".
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from typing import Any

# Filter types as the spec names them (HTTPRouteFilter.type).
REQUEST_HEADER_MODIFIER = "RequestHeaderModifier"
RESPONSE_HEADER_MODIFIER = "ResponseHeaderModifier"
REQUEST_REDIRECT = "RequestRedirect"
URL_REWRITE = "URLRewrite"
REQUEST_MIRROR = "RequestMirror"
CORS_FILTER = "CORS"
EXTENSION_REF = "ExtensionRef"
EXTERNAL_AUTH = "ExternalAuth"  # GEP-1494: forward auth, the same phase as a SecurityPolicy's extAuth
FILTER_TYPES = (
    REQUEST_HEADER_MODIFIER,
    RESPONSE_HEADER_MODIFIER,
    REQUEST_REDIRECT,
    URL_REWRITE,
    REQUEST_MIRROR,
    CORS_FILTER,
    EXTENSION_REF,
    EXTERNAL_AUTH,
)
# Rule features beyond filters that the data plane must implement to honour a rule.
RETRY = "retry"
HTTPS = "HTTPS"  # listener protocol: TLS termination
SESSION_PERSISTENCE = "sessionPersistence"  # a rule's own or its backends' (gw.config.session)

ALL_FEATURES: frozenset[str] = frozenset((*FILTER_TYPES, RETRY, HTTPS, SESSION_PERSISTENCE))
# ExtensionRef kinds the data plane applies when a rule's filter names them (on rules, not backendRefs).
SERVED_EXTENSION_KINDS: frozenset[str] = frozenset({"RateLimitPolicy"})

# What the data plane applies today: all but ExtensionRef to kinds outside SERVED_EXTENSION_KINDS
# (or on a backendRef). A rule using anything else is compiled (so `gw check` shows it) but
# answers 500, as the spec asks for filters that cannot be honoured: skipping an auth
# ExtensionRef silently would be worse.
DATA_PLANE_FEATURES: frozenset[str] = ALL_FEATURES - {EXTENSION_REF}

_SET_COOKIE = b"set-cookie"


class HeaderModifier:
    """RequestHeaderModifier / ResponseHeaderModifier: remove, set (replace), add (append).

    `apply(headers)` edits the list in place. Order, as the spec's examples imply: every field
    named by `set` or `remove` is dropped, `add` values are appended to the first existing field
    of that name with "," (a separate field for Set-Cookie, which cannot be joined), then the
    `set` fields and the `add` fields that found no existing field are appended. Emitted names
    are lower case.
    """

    __slots__ = ("_add", "_append", "_drop", "_set")

    def __init__(
        self,
        set: tuple[tuple[str, str], ...] = (),
        add: tuple[tuple[str, str], ...] = (),
        remove: tuple[str, ...] = (),
    ) -> None:
        self._set = tuple((n.lower().encode("latin-1"), v.encode("latin-1")) for n, v in set)
        self._drop = frozenset(n for n, _ in self._set) | frozenset(n.lower().encode("latin-1") for n in remove)
        adds = [(n.lower().encode("latin-1"), v.encode("latin-1")) for n, v in add]
        self._add = {n: v for n, v in adds if n != _SET_COOKIE}  # joined into an existing field
        self._append = tuple((n, v) for n, v in adds if n == _SET_COOKIE)  # always a new field

    def apply(self, headers: list[tuple[bytes, bytes]]) -> None:
        """Modify `headers` (name, value) in place as the filter says."""
        drop = self._drop
        add = self._add
        joined: set[bytes] | None = None
        kept: list[tuple[bytes, bytes]] = []
        for name, value in headers:
            low = name.lower()
            if low in drop:
                continue
            if add and low in add and (joined is None or low not in joined):
                value = value + b"," + add[low] if value else add[low]
                if joined is None:
                    joined = set()
                joined.add(low)
            kept.append((name, value))
        kept += self._set
        if add:
            kept += [(n, v) for n, v in add.items() if joined is None or n not in joined]
        kept += self._append
        headers[:] = kept

    def describe(self) -> str:
        parts = []
        if self._set:
            parts.append("set " + ", ".join(n.decode() for n, _ in self._set))
        adds = [*self._add, *(n for n, _ in self._append)]
        if adds:
            parts.append("add " + ", ".join(n.decode() for n in adds))
        removed = sorted(self._drop - {n for n, _ in self._set})
        if removed:
            parts.append("remove " + ", ".join(n.decode() for n in removed))
        return "; ".join(parts)


class PathModifier:
    """HTTPPathModifier: ReplaceFullPath, or ReplacePrefixMatch bound to the rule's matched prefix."""

    __slots__ = ("_full", "_prefix", "_replacement", "type")

    def __init__(self, type: str, value: str, prefix: str | None = None) -> None:
        self.type = type
        self._full = value if type == "ReplaceFullPath" else None
        # A trailing "/" is ignored on both sides (the spec's table); "/" becomes "".
        self._prefix = (prefix or "/").rstrip("/")
        self._replacement = value.rstrip("/")

    def apply(self, path: str) -> str:
        """The modified path (without query) for a request path the rule matched."""
        if self._full is not None:
            return self._full
        result = self._replacement + path[len(self._prefix) :]
        if not result:
            return "/"
        return result if result[0] == "/" else "/" + result

    def describe(self) -> str:
        if self._full is not None:
            return f"path={self._full}"
        return f"prefix {self._prefix or '/'}→{self._replacement or '/'}"


_STATUS_TEXT = {
    301: "Moved Permanently",
    302: "Found",
    303: "See Other",
    307: "Temporary Redirect",
    308: "Permanent Redirect",
}
_DEFAULT_PORTS = {"http": 80, "https": 443}


class Redirect:
    """RequestRedirect: the rule answers `status` with a Location built from the request.

    `location(scheme, host, port, path, query)` takes the request's scheme ("http"/"https" of the
    listener), host (without port), the listener's *declared* port, path and query, and returns
    the Location value. Port rules of the spec: an explicit port wins; else a scheme change takes
    that scheme's well-known port; else the listener port. The port is omitted when it is the
    scheme's default (http:80, https:443). The query is kept.
    """

    __slots__ = ("_host", "_path", "_port", "_scheme", "reason", "status")

    def __init__(
        self,
        status: int = 302,
        scheme: str | None = None,
        hostname: str | None = None,
        port: int | None = None,
        path: PathModifier | None = None,
    ) -> None:
        self.status = status
        self.reason = _STATUS_TEXT[status].encode("ascii")
        self._scheme = scheme
        self._host = hostname
        self._port = port
        self._path = path

    def location(self, scheme: str, host: str, port: int, path: str, query: bytes = b"") -> bytes:
        """The Location header value for this request."""
        out_scheme = self._scheme or scheme
        if self._port is not None:
            out_port = self._port
        elif self._scheme is not None:
            out_port = _DEFAULT_PORTS.get(self._scheme, port)
        else:
            out_port = port
        authority = self._host or host
        if ":" in authority and not authority.startswith("["):
            authority = f"[{authority}]"  # an IPv6 literal Host
        if _DEFAULT_PORTS.get(out_scheme) != out_port:
            authority = f"{authority}:{out_port}"
        if self._path is not None:
            path = self._path.apply(path)
        text = f"{out_scheme}://{authority}{path}".encode("latin-1")
        return text + b"?" + query if query else text

    def describe(self) -> str:
        parts = [str(self.status)]
        if self._scheme:
            parts.append(f"scheme={self._scheme}")
        if self._host:
            parts.append(f"host={self._host}")
        if self._port:
            parts.append(f"port={self._port}")
        if self._path:
            parts.append(self._path.describe())
        return "redirect " + " ".join(parts)


class URLRewrite:
    """URLRewrite: the request goes upstream with another Host and/or path.

    `host` is the new Host field value (bytes) or None to keep it; `target(path, query)` returns
    the upstream request target (path, plus "?query" when there is one) as bytes.
    """

    __slots__ = ("_path", "host")

    def __init__(self, hostname: str | None = None, path: PathModifier | None = None) -> None:
        self.host = hostname.encode("ascii") if hostname else None
        self._path = path

    def target(self, path: str, query: bytes = b"") -> bytes:
        """The rewritten request target (origin-form) for a request the rule matched."""
        if self._path is not None:
            path = self._path.apply(path)
        encoded = path.encode("latin-1")
        return encoded + b"?" + query if query else encoded

    def describe(self) -> str:
        parts = []
        if self.host:
            parts.append(f"host={self.host.decode()}")
        if self._path:
            parts.append(self._path.describe())
        return "rewrite " + " ".join(parts)


class Mirror:
    """RequestMirror: a copy of the request goes to `backend`; its response is ignored.

    `take()` says whether this request is mirrored (the spec's percent/fraction; True without a
    random draw at 100%). `backend` is the resolved model.Backend (one endpoint per copy).
    """

    __slots__ = ("_threshold", "backend", "denominator", "name", "numerator")

    def __init__(self, name: str, backend: Any, numerator: int = 100, denominator: int = 100) -> None:
        self.name = name
        self.backend = backend
        self.numerator = numerator
        self.denominator = denominator
        self._threshold = numerator / denominator if denominator else 0.0

    def take(self, _random: Any = random.random) -> bool:
        """True when this request should be mirrored."""
        threshold = self._threshold
        if threshold >= 1.0:
            return True
        return threshold > 0.0 and _random() < threshold

    def describe(self) -> str:
        share = "" if self._threshold >= 1.0 else f" {self.numerator}/{self.denominator}"
        return f"mirror {self.name}{share}"


@dataclass(frozen=True, slots=True)
class ExtensionRef:
    """ExtensionRef: a reference to a gw policy object (group gw.dev), resolved at compile time."""

    group: str
    kind: str
    name: str
    namespace: str
    spec: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)
    target: Any = field(default=None, compare=False, hash=False)  # the compiled policy object, when gw has one

    def describe(self) -> str:
        return f"extension {self.kind} {self.namespace}/{self.name}"


_SAFELISTED_METHODS = (b"GET", b"HEAD", b"POST")


class CORS:
    """CORS (experimental): headers for preflight and actual cross-origin requests.

    For a request with an Origin field:
    - a preflight (OPTIONS with Access-Control-Request-Method) is answered by the gateway with
      204 and `preflight(origin, request_method, request_headers)` as its header fields (empty
      when the origin is not allowed: the browser then fails the request);
    - any other request is proxied and `response(origin)` is appended to the response fields.
    Arguments are the raw request field values (bytes; None when the field is absent).
    """

    __slots__ = (
        "_any_origin",
        "_credentials",
        "_exact",
        "_expose",
        "_headers",
        "_max_age",
        "_methods",
        "_patterns",
    )

    def __init__(
        self,
        allow_origins: tuple[str, ...] = (),
        allow_methods: tuple[str, ...] = (),
        allow_headers: tuple[str, ...] = (),
        expose_headers: tuple[str, ...] = (),
        allow_credentials: bool = False,
        max_age: int = 5,
    ) -> None:
        self._any_origin = "*" in allow_origins
        exact: set[bytes] = set()
        patterns = []
        for origin in allow_origins:
            if origin == "*":
                continue
            scheme, _, rest = origin.partition("://")
            normalized = _normalize_origin(scheme, rest)
            if "*" in rest:
                patterns.append(re.compile(".*".join(re.escape(p) for p in normalized.split("*")).encode()))
            else:
                exact.add(normalized.encode("latin-1"))
        self._exact = frozenset(exact)
        self._patterns = tuple(patterns)
        self._credentials = allow_credentials
        self._methods = _joined(allow_methods)
        self._headers = _joined(allow_headers)
        self._expose = _joined(expose_headers)
        self._max_age = str(max_age).encode("ascii")

    def allows(self, origin: bytes) -> bool:
        """Whether requests from `origin` may share the response."""
        if self._any_origin:
            return True
        scheme, _, rest = origin.decode("latin-1").lower().partition("://")
        if not rest:
            return False
        normalized = _normalize_origin(scheme, rest).encode("latin-1")
        if normalized in self._exact:
            return True
        return any(p.fullmatch(normalized) for p in self._patterns)

    def preflight(
        self, origin: bytes, request_method: bytes | None, request_headers: bytes | None
    ) -> list[tuple[bytes, bytes]]:
        """Header fields of the 204 answer to a preflight request."""
        if not self.allows(origin):
            return []
        out = self._origin_fields(origin)
        methods = self._methods
        if methods == b"*" and (self._credentials or request_method is None):
            methods = request_method  # never "*" with credentials; omitted when nothing was asked
        if methods:
            out.append((b"access-control-allow-methods", methods))
        headers = self._headers
        if headers == b"*" and (self._credentials or request_headers is None):
            headers = request_headers
        if headers:
            out.append((b"access-control-allow-headers", headers))
        out.append((b"access-control-max-age", self._max_age))
        return out

    def response(self, origin: bytes) -> list[tuple[bytes, bytes]]:
        """Header fields to add to the response of an actual (non-preflight) cross-origin request."""
        if not self.allows(origin):
            return []
        out = self._origin_fields(origin)
        expose = self._expose
        if expose and not (expose == b"*" and self._credentials):
            out.append((b"access-control-expose-headers", expose))
        return out

    def _origin_fields(self, origin: bytes) -> list[tuple[bytes, bytes]]:
        if self._any_origin and not self._credentials:
            out = [(b"access-control-allow-origin", b"*")]
        else:
            out = [(b"access-control-allow-origin", origin), (b"vary", b"Origin")]
        if self._credentials:
            out.append((b"access-control-allow-credentials", b"true"))
        return out

    @staticmethod
    def is_preflight(method: bytes, request_method: bytes | None) -> bool:
        return method == b"OPTIONS" and request_method is not None

    def describe(self) -> str:
        origins = "*" if self._any_origin else ", ".join(sorted(o.decode() for o in self._exact))
        if self._patterns:
            origins += (", " if origins else "") + ", ".join(p.pattern.decode() for p in self._patterns)
        return f"cors origins=[{origins}]"


def _normalize_origin(scheme: str, rest: str) -> str:
    """ "https", "a.com" → "https://a.com:443": origins compare with explicit default ports."""
    host, sep, port = rest.rpartition(":")
    if not sep or not port.isdigit():
        host, port = rest, str(_DEFAULT_PORTS.get(scheme, 0))
    return f"{scheme}://{host}:{port}"


def _joined(values: tuple[str, ...]) -> bytes:
    return ", ".join(values).encode("latin-1")


class Retry:
    """GEP-1731 retry: `attempts` retries after the first try, on `codes`, with a backoff.

    The proxy asks `should_retry(status, attempt)` (attempt = retries already made) and waits
    `delay(attempt)` seconds before the next one: exponential from `backoff`, with full jitter,
    capped at MAX_BACKOFF. Connection failures before any byte was sent are always retryable
    (the spec's SHOULD); the proxy decides that, not this object.
    """

    MAX_BACKOFF = 10.0
    __slots__ = ("attempts", "backoff", "codes")

    def __init__(self, attempts: int, codes: frozenset[int], backoff: float | None) -> None:
        self.attempts = attempts
        self.codes = codes
        self.backoff = backoff

    def should_retry(self, status: int, attempt: int) -> bool:
        return attempt < self.attempts and status in self.codes

    def delay(self, attempt: int, _random: Any = random.random) -> float:
        if not self.backoff:
            return 0.0
        ceiling = min(self.backoff * (2**attempt), max(self.MAX_BACKOFF, self.backoff))
        return self.backoff + (ceiling - self.backoff) * _random()

    def describe(self) -> str:
        codes = ",".join(str(c) for c in sorted(self.codes))
        backoff = f" backoff={self.backoff:g}s" if self.backoff else ""
        return f"retry {self.attempts}x on {codes or '(connect failures)'}{backoff}"
