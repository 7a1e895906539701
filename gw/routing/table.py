"""The per-port route table: host index → path index → candidates in Gateway API precedence order.

Lookup cost does not grow with the number of routes in the common cases: a dict lookup for the
host (or one per label for wildcard hosts), a dict lookup for an exact path, then one per path
segment walking the request path's prefixes from longest to shortest. Everything else — the
precedence order, hostname intersections, which listener a host selects — is decided at build time.

Precedence, as the spec orders it (HTTPRouteRule.Matches):
  host: the listener selected by the most specific listener hostname (listeners are isolated),
        then route hostnames exact > longest wildcard > none (HTTPRoute.Hostnames);
  path: Exact > RegularExpression (implementation-specific; gw puts them between) > PathPrefix,
        longest prefix first;
  then: method match > most header matches > most query matches > oldest route >
        "namespace/name" alphabetical > rule order > match order.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from gw.routing.hostnames import hostname_matches, is_wildcard
from gw.routing.match import PATH_EXACT, PATH_PREFIX, PATH_REGEX, Conditions, RouteMatch

# A candidate at one path key: (conditions or None when the match has none, rule).
Candidate = tuple[Conditions | None, Any]


@dataclass(frozen=True, slots=True)
class RouteEntry:
    """One match of one rule of a route attached to a listener.

    hostnames: the effective hostnames (already intersected with the listener's); () = any host.
    order: the cross-route tie-break, e.g. (creation time, "namespace/name", rule index, match index).
    """

    hostnames: tuple[str, ...]
    match: RouteMatch
    rule: Any
    order: tuple[Any, ...]


@dataclass(frozen=True, slots=True)
class ListenerRoutes:
    """A listener of the port (its hostname: exact, "*.wildcard" or None) and what attached to it."""

    name: str
    hostname: str | None
    entries: Sequence[RouteEntry]


def _precedence(entry: RouteEntry) -> tuple[Any, ...]:
    m = entry.match
    return (m.method is None, -len(m.headers), -len(m.query), entry.order)


def _normalize_prefix(prefix: str) -> str:
    # "/abc/" and "/abc" are the same prefix; "/" becomes "", the root every path walks down to.
    return prefix[:-1] if prefix.endswith("/") else prefix


class PathIndex:
    """The routes of one host key, indexed on path."""

    __slots__ = ("exact", "ordered", "prefix", "regex")

    def __init__(self, entries: Sequence[RouteEntry]) -> None:
        ordered = sorted(entries, key=_precedence)
        exact: dict[str, list[RouteEntry]] = {}
        prefix: dict[str, list[RouteEntry]] = {}
        regex: list[RouteEntry] = []
        for entry in ordered:
            m = entry.match
            if m.path_type == PATH_EXACT:
                exact.setdefault(m.path, []).append(entry)
            elif m.path_type == PATH_PREFIX:
                prefix.setdefault(_normalize_prefix(m.path), []).append(entry)
            elif m.path_type == PATH_REGEX:
                regex.append(entry)
            else:
                raise ValueError(f"unknown path match type {m.path_type!r}")
        # Longer expressions are taken as more specific; Python's sort is stable, so ties keep
        # the precedence order established above.
        regex.sort(key=lambda e: -len(e.match.path))
        self.exact = {path: _candidates(group) for path, group in exact.items()}
        self.prefix = {key: _candidates(group) for key, group in prefix.items()}
        self.regex = tuple((re.compile(e.match.path), *_candidates([e])[0]) for e in regex)
        # For describe(): the whole index in the order lookups consider it.
        self.ordered: tuple[RouteEntry, ...] = (
            *(e for path in sorted(exact) for e in exact[path]),
            *regex,
            *(e for key in sorted(prefix, key=lambda k: (-len(k), k)) for e in prefix[key]),
        )

    def find(self, path: str, method: bytes, headers: list[tuple[bytes, bytes]], query: bytes) -> Any:
        cands = self.exact.get(path)
        if cands is not None:
            for cond, rule in cands:
                if cond is None or cond.test(method, headers, query):
                    return rule
        for pattern, cond, rule in self.regex:
            if pattern.fullmatch(path) is not None and (cond is None or cond.test(method, headers, query)):
                return rule
        prefix = self.prefix
        if prefix:
            # Walk the path's segment-boundary prefixes, longest first: "/a/b" tries "/a/b", "/a", "".
            key = path[:-1] if path.endswith("/") else path
            while True:
                cands = prefix.get(key)
                if cands is not None:
                    for cond, rule in cands:
                        if cond is None or cond.test(method, headers, query):
                            return rule
                i = key.rfind("/")
                if i < 0:
                    break
                key = key[:i]
        return None


def _candidates(entries: Sequence[RouteEntry]) -> tuple[Candidate, ...]:
    return tuple((Conditions(e.match) if e.match.has_conditions else None, e.rule) for e in entries)


class HostTable:
    """A RouteTable for one bound port; dispatches by host across the port's listeners."""

    __slots__ = ("_described", "default", "exact", "uses_headers", "wildcard")

    def __init__(
        self,
        exact: dict[str, tuple[tuple[str, PathIndex], ...]],
        wildcard: dict[str, tuple[tuple[str, PathIndex], ...]],
        default: tuple[tuple[str, PathIndex], ...] | None,
    ) -> None:
        # Chains of (hostname key, index) to try in order; the key is kept only for describe().
        self.exact = {h: tuple(i for _, i in c) for h, c in exact.items()}
        self.wildcard = {s: tuple(i for _, i in c) for s, c in wildcard.items()}
        self.default = tuple(i for _, i in default) if default is not None else None
        self._described = (exact, wildcard, default)
        # Whether any rule matches on request headers: the proxy skips splitting heads otherwise.
        indexes = [i for chain in (*self.exact.values(), *self.wildcard.values(), self.default or ()) for i in chain]
        self.uses_headers = any(
            cond is not None and cond.headers
            for index in indexes
            for cands in (*index.exact.values(), *index.prefix.values(), *((c,) for _, *c in index.regex))
            for cond, _ in cands
        )

    def match(self, host: str, path: str, method: bytes, headers: list[tuple[bytes, bytes]], query: bytes) -> Any:
        chain = self.exact.get(host)
        if chain is None:
            chain = self.default
            wildcard = self.wildcard
            if wildcard:
                # Longest wildcard suffix first: "a.b.example.com" tries ".b.example.com", ".example.com"...
                i = host.find(".", 1)
                while i >= 0:
                    found = wildcard.get(host[i:])
                    if found is not None:
                        chain = found
                        break
                    i = host.find(".", i + 1)
            if chain is None:
                return None
        for index in chain:
            rule = index.find(path, method, headers, query)
            if rule is not None:
                return rule
        return None

    def describe(self) -> list[tuple[str, str, tuple[RouteEntry, ...]]]:
        """(host key, hostname of the entries, entries in precedence order) for every host key."""
        exact, wildcard, default = self._described
        rows: list[tuple[str, str, tuple[RouteEntry, ...]]] = []
        keyed = [(h, exact[h]) for h in sorted(exact)]
        keyed += [("*" + s, wildcard[s]) for s in sorted(wildcard, key=lambda s: (-len(s), s))]
        if default is not None:
            keyed.append(("*", default))
        for key, chain in keyed:
            if not chain:
                rows.append((key, key, ()))  # a listener claims the host but no route attached
            for hostname, index in chain:
                rows.append((key, hostname, index.ordered))
        return rows


def build_table(listeners: Sequence[ListenerRoutes]) -> HostTable:
    """Compile the listeners sharing one port into a HostTable.

    A request host first selects one listener (exact hostname > longest wildcard > no hostname),
    and only routes attached to that listener can match it, as the spec's listener isolation asks.
    Within the listener, routes with the most specific matching hostname are tried first; when
    none of their rules match, less specific hostnames are tried (precedence, not exclusion).
    """
    # Per listener: hostname key ("a.com", "*.a.com" or "" for any) → its PathIndex.
    groups: list[dict[str, PathIndex]] = []
    for listener in listeners:
        by_host: dict[str, list[RouteEntry]] = {}
        for entry in listener.entries:
            for hostname in entry.hostnames or ("",):
                by_host.setdefault(hostname, []).append(entry)
        groups.append({h: PathIndex(entries) for h, entries in by_host.items()})

    exact_keys: set[str] = set()
    wildcard_keys: set[str] = set()
    for listener, by_host in zip(listeners, groups, strict=True):
        for hostname in (listener.hostname or "", *by_host):
            if hostname and is_wildcard(hostname):
                wildcard_keys.add(hostname)
            elif hostname:
                exact_keys.add(hostname)

    def chain_for(host: str | None) -> tuple[tuple[str, PathIndex], ...] | None:
        # host None stands for "a host no listener or route names": only catch-alls apply.
        li = _select_listener(listeners, host)
        if li is None:
            return None
        by_host = groups[li]
        keys = []
        if host is not None:
            if host in by_host and not is_wildcard(host):
                keys.append(host)
            keys += ["*" + s for s in _wildcard_suffixes(host) if "*" + s in by_host]
        if "" in by_host:
            keys.append("")
        return tuple((h or "*", by_host[h]) for h in keys)

    exact: dict[str, tuple[tuple[str, PathIndex], ...]] = {}
    for host in exact_keys:
        found = chain_for(host)
        if found is not None:
            exact[host] = found
    wildcard: dict[str, tuple[tuple[str, PathIndex], ...]] = {}
    for pattern in wildcard_keys:
        found = chain_for(pattern)
        if found is not None:
            wildcard[pattern[1:]] = found
    return HostTable(exact, wildcard, chain_for(None))


def _wildcard_suffixes(host: str) -> list[str]:
    """Suffixes a wildcard covering `host` may have, longest first.

    "a.b.com" → [".b.com", ".com"]; the wildcard host "*.b.com" → [".b.com", ".com"].
    """
    if is_wildcard(host):
        host = host[1:]
        suffixes = [host]
    else:
        suffixes = []
    i = host.find(".", 1)
    while i >= 0:
        suffixes.append(host[i:])
        i = host.find(".", i + 1)
    return suffixes


def _select_listener(listeners: Sequence[ListenerRoutes], host: str | None) -> int | None:
    """Index of the listener the spec selects for `host` (exact or wildcard), or None."""
    best: int | None = None
    best_rank: tuple[int, int] | None = None
    for i, listener in enumerate(listeners):
        hostname = listener.hostname
        if hostname is None:
            rank = (2, 0)
        elif host is not None and hostname_matches(hostname, host):
            # Two statements: Cython 3.3 types the tuples of a conditional expression apart and
            # refuses to compile it (scripts/hotpath-compiled).
            rank = (0, 0)
            if is_wildcard(hostname):
                rank = (1, -len(hostname))
        else:
            continue
        if best_rank is None or rank < best_rank:
            best, best_rank = i, rank
    return best
