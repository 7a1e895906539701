"""Session persistence (Gateway API GEP-1619, v1.6): its typed form, parsed from YAML, and settled per rule.

Two places may set it, with the same fields:

    sessionPersistence:            # on an HTTPRoute rule, or a section of a BackendTrafficPolicy
      sessionName: orders          # cookie or header name; default below
      type: Cookie                 # Cookie (default) | Header
      absoluteTimeout: 1h          # GEP-2257 duration; the session ends this long after it began
      cookieConfig:
        lifetimeType: Session      # Session (default): no Max-Age, the gateway checks the expiry
                                   # Permanent: Max-Age/Expires = absoluteTimeout (required then)

Which applies to a rule is settled once per compile, in `settle_sessions` (after
gw.config.backend_attach has chosen each backend's BackendTrafficPolicy sections): the rule's own
setting overrides its backends' (GEP-1619: "Any configuration that is specified at Route Rule level
MUST override configuration that is attached at the backend level"). A backend-level setting
applies to every backend of the rule (GEP-1619's first choice for a split); when the rule's backends
carry different ones, the first backendRef's wins and the route's status says so.

Two rules never share a session (GEP-1619): every session is bound to its rule's `scope`
("namespace/route#index"), which the cookie's signature and the Header type's Redis keys cover, so
a cookie of another rule never pins a request here even under the same name. Names:
- unset sessionName: `gw-session-<tag>`, tag = 10 hex digits of SHA-256 of the scope: stable
  across reloads and replicas, different for every rule;
- a rule's own sessionName: used as written, cookie `Path` = the rule's path prefix;
- a BackendTrafficPolicy's sessionName, type Cookie: `<sessionName>-<tag>`, no `Path` (GEP-1619:
  a backend-level cookie leaves Path unset), so the rules reaching one backend keep apart cookies;
  type Header: as written (the application issues it; the scope keeps the rules apart).

A route that sends a session-persistent rule to a Service with `sessionAffinity: ClientIP` is
rejected (GEP-1619: "the route MUST be rejected"): Accepted False (UnsupportedValue) and each of its
rules answers 500 naming the conflict.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from gw.config.errors import Condition, ConfigError
from gw.config.reader import Reader
from gw.config.units import parse_duration
from gw.routing.match import PATH_EXACT, PATH_PREFIX

if TYPE_CHECKING:
    from gw.config.policy_attach import CompiledRoute
    from gw.config.resources import Service

COOKIE, HEADER = "Cookie", "Header"
SESSION, PERMANENT = "Session", "Permanent"
FEATURE = "sessionPersistence"  # its name in the data plane's feature set (gw.config.filters)
CLIENT_IP = "ClientIP"  # Service.spec.sessionAffinity
DEFAULT_PREFIX = "gw-session-"
MAX_SESSION_NAME = 128  # the CRD's maxLength
_FIELDS = frozenset({"sessionName", "absoluteTimeout", "type", "cookieConfig"})
_COOKIE_FIELDS = frozenset({"lifetimeType"})
# RFC 9110 token: what both a cookie-name (RFC 6265) and a header field name must be.
_TOKEN = re.compile(r"^[A-Za-z0-9!#$%&'*+\-.^_`|~]+$")
_REGEX_META = frozenset("\\^$.|?*+()[]{}")


@dataclass(frozen=True, slots=True)
class SessionPersistence:
    """One `sessionPersistence` as written (`session_name` None when unset); `settle_sessions` binds a
    copy to each rule it applies to, filling `name`, `scope`, `path` and `source`."""

    type: str = COOKIE
    session_name: str | None = None
    absolute_timeout: float | None = None  # seconds; None: the session lasts as long as the endpoint
    lifetime: str = SESSION  # cookieConfig.lifetimeType
    name: str = ""  # the cookie or header name this rule uses
    scope: str = ""  # "namespace/route#index": what a session is bound to
    path: str | None = None  # cookie Path; None: not set (backend-level)
    source: str = ""  # "HTTPRoute ns/name rule 0" or "BackendTrafficPolicy ns/name"

    @property
    def max_age(self) -> int | None:
        """Max-Age of the cookie: the absolute timeout for a Permanent cookie, else None (a session cookie)."""
        if self.type == COOKIE and self.lifetime == PERMANENT and self.absolute_timeout:
            return max(1, int(self.absolute_timeout))
        return None

    def describe(self) -> str:
        parts = [f"session={self.type} {self.name}"]
        if self.type == COOKIE:
            parts.append(f"{self.lifetime.lower()} cookie")
            if self.path is not None:
                parts.append(f"path={self.path}")
        if self.absolute_timeout is not None:
            parts.append(f"timeout={self.absolute_timeout:g}s")
        parts.append(f"from {self.source}")
        return " ".join(parts)


def parse_session_persistence(r: Reader, raw: Any, field: str) -> SessionPersistence | None:
    """A `sessionPersistence` mapping (rule or policy section); None when absent or invalid (errors say why)."""
    if raw is None:
        return None
    before = r.count
    if isinstance(raw, dict) and "idleTimeout" in raw:
        r.error(f"{field}.idleTimeout", "was removed from the Gateway API (GEP-1619, v1.3); use absoluteTimeout")
        raw = {k: v for k, v in raw.items() if k != "idleTimeout"}
    sp = r.map(raw, field, _FIELDS)
    name = r.str(sp, "sessionName", field, check=_check_session_name)
    kind = r.str(sp, "type", field, default=COOKIE, choices=(COOKIE, HEADER)) or COOKIE
    timeout = None
    if sp.get("absoluteTimeout") is not None:
        text = r.str(sp, "absoluteTimeout", field)
        if text is not None:
            try:
                timeout = parse_duration(text)
            except ValueError as exc:
                r.error(f"{field}.absoluteTimeout", str(exc))
            else:
                if timeout <= 0:
                    r.error(f"{field}.absoluteTimeout", "must be longer than 0s")
    lifetime = SESSION
    if sp.get("cookieConfig") is not None:
        c_field = f"{field}.cookieConfig"
        if kind != COOKIE:
            r.error(c_field, f"can only be set with type Cookie (this session is type {kind})")
        cc = r.map(sp["cookieConfig"], c_field, _COOKIE_FIELDS)
        lifetime = r.str(cc, "lifetimeType", c_field, default=SESSION, choices=(SESSION, PERMANENT)) or SESSION
        if lifetime == PERMANENT and sp.get("absoluteTimeout") is None:
            r.error(
                f"{field}.absoluteTimeout",
                "is required when cookieConfig.lifetimeType is Permanent (it sets the cookie's Max-Age)",
            )
    if r.count != before:
        return None
    return SessionPersistence(kind, name, timeout, lifetime)


def _check_session_name(value: str) -> str | None:
    if len(value) > MAX_SESSION_NAME:
        return f"is {len(value)} characters long; at most {MAX_SESSION_NAME} are allowed"
    if not _TOKEN.match(value):
        return f"{value!r} is not a cookie or header name (an RFC 9110 token: no spaces, '=', ';', ',' or quotes)"
    return None


def scope_tag(scope: str) -> str:
    """10 hex digits naming a rule's sessions: stable across reloads and replicas."""
    return hashlib.sha256(scope.encode()).hexdigest()[:10]


def cookie_path(matches: Sequence[Any]) -> str:
    """The cookie Path for a rule's matches (GEP-1619 "Path"): the longest path every match lies under
    (a regex contributes its literal prefix), ending at a segment; "/" when nothing narrower holds."""
    prefixes = []
    for m in matches:
        path = m.path or "/"
        if m.path_type not in (PATH_PREFIX, PATH_EXACT):
            literal = ""
            for c in path:
                if c in _REGEX_META:
                    break
                literal += c
            path = literal[: literal.rfind("/") + 1] if "/" in literal else "/"
        prefixes.append(path)
    if not prefixes:
        return "/"
    common = prefixes[0]
    for p in prefixes[1:]:
        while not (p == common or p.startswith(common.rstrip("/") + "/") or common == "/"):
            common = common[: common.rstrip("/").rfind("/") + 1] or "/"
    common = common.rstrip("/") or "/"
    return common if common.startswith("/") else "/"


def settle_sessions(
    routes: Sequence[CompiledRoute],
    services: Sequence[Service],
    features: frozenset[str],
    conditions: dict[str, list[Condition]],
    errors: list[ConfigError],
) -> None:
    """Set `rule.session_persistence` on every compiled rule: its own, else its backends' (see the
    module docstring); reject routes that also rely on a Service's ClientIP affinity."""
    affinity = {(s.meta.namespace, s.meta.name) for s in services if s.session_affinity == CLIENT_IP}
    for compiled in routes:
        route = compiled.route
        scope_base = route.meta.key
        clashes: list[tuple[str, str]] = []
        for spec, rule in compiled.rules:
            scope = f"{scope_base}#{spec.index}"
            field = f"spec.rules[{spec.index}]"
            own = spec.session_persistence
            if own is not None:
                session = dataclasses.replace(
                    own,
                    name=own.session_name or DEFAULT_PREFIX + scope_tag(scope),
                    scope=scope,
                    path=cookie_path(spec.matches),
                    source=f"HTTPRoute {scope_base} rule {spec.index}",
                )
                where = f"{field}.sessionPersistence"
            else:
                session = _backend_level(route, spec, rule, scope, errors)
                where = field
            if session is None:
                continue
            rule.session_persistence = session
            for ref in spec.backend_refs:
                if ref.kind == "Service" and (ref.namespace, ref.name) in affinity:
                    clashes.append(
                        (
                            where,
                            f"rule {spec.index} has sessionPersistence ({session.source}) and its backend "
                            f"Service {ref.namespace}/{ref.name} has sessionAffinity: ClientIP; "
                            "use one of them (GEP-1619: such a route is rejected)",
                        )
                    )
            if FEATURE not in features and rule.invalid_reason is None:
                message = f"{FEATURE} not applied by this gw's data plane yet; the rule answers 500"
                rule.invalid_reason = message
                errors.append(ConfigError(route.meta.file, route.meta.label, where, message))
        if clashes:
            _reject(compiled, clashes, conditions, errors)


def _backend_level(
    route: Any, spec: Any, rule: Any, scope: str, errors: list[ConfigError]
) -> SessionPersistence | None:
    # (backend name, setting): `source` of a policy's setting names its BackendTrafficPolicy
    found: list[tuple[str, SessionPersistence]] = []
    for ref in rule.backend_refs:
        backend = ref.backend
        setting = getattr(backend.resilience, "session_persistence", None) if backend is not None else None
        if setting is not None:
            found.append((backend.name, setting))
    if not found:
        return None
    name, setting = found[0]
    others = sorted({f"{n} ({s.source})" for n, s in found[1:] if s != setting})
    if others:
        errors.append(
            ConfigError(
                route.meta.file,
                route.meta.label,
                f"spec.rules[{spec.index}]",
                f"its backends have different sessionPersistence: the one of {name} ({setting.source}) applies to the "
                f"whole rule, not that of {', '.join(others)}; set sessionPersistence on the rule to choose",
            )
        )
    tag = scope_tag(scope)
    if setting.session_name is None:
        session_name = DEFAULT_PREFIX + tag
    elif setting.type == COOKIE:
        session_name = f"{setting.session_name}-{tag}"
    else:
        session_name = setting.session_name
    return dataclasses.replace(setting, name=session_name, scope=scope, path=None)


def _reject(
    compiled: CompiledRoute,
    clashes: list[tuple[str, str]],
    conditions: dict[str, list[Condition]],
    errors: list[ConfigError],
) -> None:
    route = compiled.route
    message = "; ".join(m for _, m in clashes)
    for where, text in clashes:
        errors.append(ConfigError(route.meta.file, route.meta.label, where, text))
    for _, rule in compiled.rules:
        rule.invalid_reason = f"{route.meta.label} is rejected: {message}"
    route_conditions = conditions.setdefault(route.meta.label, [])
    for i, c in enumerate(route_conditions):
        if c.type == "Accepted":
            route_conditions[i] = Condition("Accepted", False, "UnsupportedValue", message, c.parent)
