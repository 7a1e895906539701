"""Gateway API hostname semantics: wildcard matching and listener ∩ route intersection."""

from __future__ import annotations

from collections.abc import Sequence


def is_wildcard(hostname: str) -> bool:
    return hostname.startswith("*.")


def hostname_matches(pattern: str, host: str) -> bool:
    """Does `host` (exact, or itself a wildcard) fall inside `pattern`?

    "*.example.com" covers "a.example.com" and "a.b.example.com" but not "example.com"
    (the wildcard stands for one or more labels). A wildcard host is covered by a wildcard
    pattern whose suffix is the same or shorter: "*.a.example.com" is inside "*.example.com".
    """
    if not is_wildcard(pattern):
        return pattern == host
    suffix = pattern[1:]  # ".example.com"
    if is_wildcard(host):
        return host[1:].endswith(suffix)
    return host.endswith(suffix) and len(host) > len(suffix)


def intersect(listener: str | None, route: str) -> str | None:
    """The most specific hostname both accept, or None when they are disjoint."""
    if listener is None:
        return route
    if hostname_matches(listener, route):
        return route
    if hostname_matches(route, listener):
        return listener
    return None


def intersect_hostnames(listener: str | None, route: Sequence[str]) -> tuple[str, ...] | None:
    """Hostnames a route serves on a listener, per the spec's intersection rules.

    () means "any host" (neither side restricts); None means the route cannot attach to this
    listener because none of its hostnames intersect the listener's (NoMatchingListenerHostname).
    """
    if not route:
        return (listener,) if listener is not None else ()
    result: list[str] = []
    for hostname in route:
        both = intersect(listener, hostname)
        if both is not None and both not in result:
            result.append(both)
    return tuple(result) if result else None
