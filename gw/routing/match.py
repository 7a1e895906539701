"""HTTPRoute match conditions: the declarative form and its compiled method/header/query test."""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import unquote

PATH_EXACT = "Exact"
PATH_PREFIX = "PathPrefix"
PATH_REGEX = "RegularExpression"
VALUE_EXACT = "Exact"
VALUE_REGEX = "RegularExpression"


@dataclass(frozen=True, slots=True)
class ValueMatch:
    """A header or query parameter condition (names of headers are case-insensitive)."""

    name: str
    value: str
    type: str = VALUE_EXACT

    def describe(self) -> str:
        op = "=" if self.type == VALUE_EXACT else "~"
        return f"{self.name}{op}{self.value}"


@dataclass(frozen=True, slots=True)
class RouteMatch:
    """One entry of rules[].matches[]; the default is the spec's PathPrefix "/"."""

    path_type: str = PATH_PREFIX
    path: str = "/"
    method: str | None = None
    headers: tuple[ValueMatch, ...] = ()
    query: tuple[ValueMatch, ...] = ()

    @property
    def has_conditions(self) -> bool:
        return self.method is not None or bool(self.headers) or bool(self.query)

    def describe(self) -> str:
        parts = [f"{self.path_type} {self.path}"]
        if self.method:
            parts.append(f"method={self.method}")
        if self.headers:
            parts.append("headers[" + ", ".join(h.describe() for h in self.headers) + "]")
        if self.query:
            parts.append("query[" + ", ".join(q.describe() for q in self.query) + "]")
        return " ".join(parts)


class Conditions:
    """The non-path part of a match, compiled once; the table calls test() only when it exists."""

    __slots__ = ("headers", "method", "query")

    def __init__(self, match: RouteMatch) -> None:
        self.method = match.method.encode("ascii") if match.method else None
        self.headers = tuple(_compile_value(h, lower_name=True) for h in _first_per_name(match.headers, True))
        self.query = tuple(_compile_value(q, lower_name=False) for q in _first_per_name(match.query, False))

    def test(self, method: bytes, headers: list[tuple[bytes, bytes]], query: bytes) -> bool:
        if self.method is not None and method != self.method:
            return False
        for name, exact, pattern in self.headers:
            value = _header_value(headers, name)
            if value is None or not _value_ok(value, exact, pattern):
                return False
        if self.query:
            params = _parse_query(query)
            for name, exact, pattern in self.query:
                value = params.get(name)
                if value is None or not _value_ok(value, exact, pattern):
                    return False
        return True


def _first_per_name(matches: tuple[ValueMatch, ...], fold_case: bool) -> list[ValueMatch]:
    # The spec: when several entries name the same header/param, only the first is considered.
    seen: set[str] = set()
    result = []
    for m in matches:
        key = m.name.lower() if fold_case else m.name
        if key not in seen:
            seen.add(key)
            result.append(m)
    return result


def _compile_value(m: ValueMatch, *, lower_name: bool) -> tuple[str, str | None, re.Pattern[str] | None]:
    name = m.name.lower() if lower_name else m.name
    if m.type == VALUE_REGEX:
        return name, None, re.compile(m.value)
    return name, m.value, None


def _value_ok(value: str, exact: str | None, pattern: re.Pattern[str] | None) -> bool:
    if exact is not None:
        return value == exact
    return pattern is not None and pattern.fullmatch(value) is not None


def _header_value(headers: list[tuple[bytes, bytes]], name: str) -> str | None:
    # Repeated headers are compared as one comma-joined value (RFC 9110 §5.3).
    values = [v.decode("latin-1") for n, v in headers if n.decode("latin-1").lower() == name]
    if not values:
        return None
    return values[0] if len(values) == 1 else ",".join(values)


def _parse_query(query: bytes) -> dict[str, str]:
    # The first occurrence of a repeated parameter wins (the spec leaves repeats undefined).
    params: dict[str, str] = {}
    if not query:
        return params
    for part in query.decode("latin-1").split("&"):
        if not part:
            continue
        name, _, value = part.partition("=")
        name = unquote(name)
        if name not in params:
            params[name] = unquote(value)
    return params
