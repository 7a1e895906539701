"""Request paths in their normal form: the one form routes are matched on and upstreams receive.

Matching one spelling and forwarding another is how path confusion starts: matched as written,
`/public/%2e%2e/admin` passes a `/public` prefix rule on its way to an upstream that reads
`/admin`. So the proxy routes on the normal form below and forwards that same form, and route
path values are put in it at compile time: `/%7Euser` in a route and `/~user` in a request are
the same path.

The normal form, Envoy's `normalize_path` + `merge_slashes` with escaped slashes kept:
  - percent-encoded unreserved characters are decoded (RFC 3986 §6.2.2.2): `%41` is `A`, `%2E` is `.`;
  - other percent-encodings get upper-case hex digits (§6.2.2.1): `%c3%a9` is `%C3%A9`;
  - dot segments are resolved (§5.2.4; `..` never climbs above the root), then empty segments
    are merged (`/a//b` is `/a/b`), as gw always has and Envoy recommends at the edge;
  - `%2F` and `%5C` stay data: `/repos/a%2Fb` names one segment, as GitLab-style APIs need.

Refused (UnsafePath, which the proxy answers with 400), because upstreams disagree about them:
  - a segment that turns into a dot segment for an upstream that decodes `%2F` or `%5C` into a
    separator, takes `\\` for `/`, or drops `;parameters` first (Tomcat): `..%2F`, `%2E%2E%5C`,
    `..\\`, `..;x` (Envoy's own advice for escaped slashes is to reject or redirect);
  - `%00` (NUL), and a `%` not followed by two hex digits (`%zz`, a lone `%`);
  - a fragment (`#`), which a request target must not carry (RFC 9112 §3.2; Envoy rejects it too).

Not covered: an upstream that decodes twice (`%252e%252e` stays as it is), and one that decodes
`%2F` into `/` before routing, for which `/admin%2Fx` is under `/admin` while gw routes it as the
one segment `admin%2Fx` (a route for `/admin` does not match it).
"""

from __future__ import annotations

import re

_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_HEX_DIGITS = b"0123456789abcdefABCDEF"


def _escape_table() -> dict[bytes, bytes]:
    """Every two hex digits after a "%" → what they become: the unreserved character they encode,
    or the escape with upper-case digits. "00" is left out: an encoded NUL is refused."""
    table = {}
    for hi in _HEX_DIGITS:
        for lo in _HEX_DIGITS:
            digits = bytes((hi, lo))
            byte = int(digits, 16)
            if byte:
                table[digits] = bytes((byte,)) if byte in _UNRESERVED else b"%" + digits.upper()
    return table


_ESCAPES = _escape_table()
# Once the real dot segments are resolved, what is left is a "." or ".." that only some upstream
# reads as a segment: between "/", "%2F", "%5C" or "\" on either side, or before a ";" (Tomcat
# drops ";parameters", so "..;x" is ".." to it).
_HIDDEN_DOT_SEGMENT = re.compile(rb"(?:/|%2F|%5C|\\)\.\.?(?:\Z|/|%2F|%5C|\\|;)").search


class UnsafePath(ValueError):
    """A request path gw will not route: upstreams would not agree on what it names."""


def normalize_escapes(path: bytes) -> bytes:
    """Decode percent-encoded unreserved characters and upper-case the hex digits of the rest."""
    parts = path.split(b"%")
    out = [parts[0]]
    escapes = _ESCAPES
    for part in parts[1:]:
        escape = escapes.get(part[:2])
        if escape is None:
            if part[:2] == b"00":
                raise UnsafePath("an encoded NUL (%00) in the path")
            raise UnsafePath("invalid percent-encoding in the path")
        out.append(escape)
        out.append(part[2:])
    return b"".join(out)


def normalize_path(path: bytes) -> bytes:
    """The normal form of an absolute path (it starts with "/"); raises UnsafePath to refuse it."""
    if path.find(b"#") >= 0:
        raise UnsafePath("a fragment (#) in the request target")
    if path.find(b"%") >= 0:
        path = normalize_escapes(path)
    if path.find(b"/.") >= 0 or path.find(b"//") >= 0:
        segments = path.split(b"/")
        kept: list[bytes] = []
        for seg in segments[1:]:
            if seg == b"..":
                if kept:
                    kept.pop()
            elif seg != b".":
                kept.append(seg)
        out = [seg for seg in kept if seg]
        # A path that ended in a directory ("/a/", "/a/b/..", "/a/.") keeps saying so (§5.2.4).
        last = segments[-1]
        path = b"/" + b"/".join(out)
        if out and (last == b"" or last == b"." or last == b".."):
            path += b"/"
    if _HIDDEN_DOT_SEGMENT(path) is not None:
        raise UnsafePath("a dot segment hidden behind an encoded slash, a backslash or ';' in the path")
    return path


def normal_route_path(value: str) -> str:
    """A route's Exact or PathPrefix value in the normal form requests are matched in."""
    return normalize_path(value.encode("latin-1")).decode("latin-1")
