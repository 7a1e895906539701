"""Request routing: hostname rules and the compiled per-port route table."""

from gw.routing.hostnames import hostname_matches, intersect_hostnames
from gw.routing.match import PATH_EXACT, PATH_PREFIX, PATH_REGEX, RouteMatch, ValueMatch
from gw.routing.table import HostTable, ListenerRoutes, RouteEntry, build_table

__all__ = [
    "PATH_EXACT",
    "PATH_PREFIX",
    "PATH_REGEX",
    "HostTable",
    "ListenerRoutes",
    "RouteEntry",
    "RouteMatch",
    "ValueMatch",
    "build_table",
    "hostname_matches",
    "intersect_hostnames",
]
