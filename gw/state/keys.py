"""The key schema: every Redis key and channel name gw uses, built here and nowhere else.

All names start with GW_REDIS_PREFIX so several gateways (or other tenants) can share a Redis.
Keys that one script touches together form a *family* and share a hash tag, `{<prefix>:<family>}`,
so Redis Cluster stores them in one slot and the script may touch them all atomically. The prefix
is inside the tag so two gateways sharing a Cluster spread over different slots.

Adding a family (rate limits, circuits, sessions, ...): give it a frozen dataclass of its names,
build it from `Keys._family(...)`, and pass its members as KEYS to its script. A family keyed by
something (a policy, a backend) takes that as a method argument, e.g.
`Keys.ratelimit(policy) -> RateLimitKeys` built with `self._family(f"rl:{policy}")`.
Pub/sub channels are not keys (no slot), so they carry the prefix but no tag.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ConfigKeys:
    """Config versions (gw/state/lua/config_publish.lua touches all five keys at once)."""

    seq: str  # string: last version number handed out
    current: str  # string: the version being served
    versions: str  # hash: version number → msgpack blob (immutable once written)
    checksums: str  # hash: version number → sha256 of its files (dedupe without decoding blobs)
    history: str  # list: version numbers, newest first, at most GW_CONFIG_HISTORY long
    channel: str  # pub/sub: the new current version number, published on every change


@dataclass(frozen=True, slots=True)
class FleetKeys:
    """Live workers of every replica (gw/state/lua/heartbeat.lua)."""

    workers: str  # sorted set: worker id → server time (ms) of its last heartbeat


@dataclass(frozen=True, slots=True)
class ReplicaKeys:
    """Every replica's record, kept by its supervisor whatever the config (gw/state/lua/replica_beat.lua,
    replica_leave.lua): what /fleet lists. One family, so a beat touches the set and its record atomically."""

    members: str  # sorted set: replica id ("host:supervisor pid") → server time (ms) of its last beat
    records: str  # stem of the records: `<records>:<replica id>` is one replica's JSON, expiring with its beats

    def record(self, replica: str) -> str:
        """string: one replica's record (JSON, gw.state.replicas), with a TTL."""
        return f"{self.records}:{replica}"


@dataclass(frozen=True, slots=True)
class BackendKeys:
    """One backend's fleet-wide resilience state (gw/state/lua/backend_*.lua, probe_*.lua).

    Every change of an item (the circuit, an endpoint's ejection, an endpoint's probe health)
    takes the next number of `version` and is published on `Keys.backend_events` as an event
    (gw.state.backend_events), so a worker applies an item's events in order and ignores a stale
    one; `Keys.backend_events` subscribers heal a missed message by reading these hashes.
    """

    version: str  # string: the backend's last event number
    circuit: str  # hash: s (closed|open|half-open), v, since, until (ms, server clock), why, by, granted, ok
    window: str  # hash: "<bucket>:c|f|s" → calls, failures, slow calls in that bucket of the window
    endpoints: str  # hash: "<address:port>|<field>": c5 cg cl (consecutive counts), until times ev since why by
    #                 (ejection), pv pok psince pwhy pby (probe health)
    ejected: str  # sorted set: endpoint → until (ms): the ejections in force, for maxEjectionPercent
    lease: str  # string: the id of the fleet's active checker of this backend, with a TTL


class Keys:
    """Key and channel names under one prefix."""

    __slots__ = ("backend_events", "config", "fleet", "prefix", "replicas")

    def __init__(self, prefix: str = "gw") -> None:
        self.prefix = prefix
        config = self._family("config")
        self.config = ConfigKeys(
            seq=f"{config}:seq",
            current=f"{config}:current",
            versions=f"{config}:versions",
            checksums=f"{config}:checksums",
            history=f"{config}:history",
            channel=f"{prefix}:config:events",
        )
        self.fleet = FleetKeys(workers=f"{self._family('fleet')}:workers")
        replicas = self._family("replicas")
        self.replicas = ReplicaKeys(members=f"{replicas}:members", records=f"{replicas}:record")
        self.backend_events = f"{prefix}:backend:events"  # pub/sub: every BackendKeys change, as JSON

    def backend(self, name: str) -> BackendKeys:
        """The keys of one backend (`model.Backend.name`, e.g. "Service default/api:8080")."""
        stem = self._family(f"be:{name}")
        return BackendKeys(
            version=f"{stem}:version",
            circuit=f"{stem}:circuit",
            window=f"{stem}:window",
            endpoints=f"{stem}:endpoints",
            ejected=f"{stem}:ejected",
            lease=f"{stem}:lease",
        )

    def ratelimit(self, policy: str) -> str:
        """The stem of one RateLimitPolicy's counters ("namespace/name"): `<stem>:<limit>:<key>`.

        One family per policy, so gw/state/lua/ratelimit.lua may touch all of a request's limits
        of that policy in one atomic call on a Cluster; different policies spread over slots.
        """
        return self._family(f"rl:{policy}")

    @property
    def session_key(self) -> str:
        """string: the fleet's session-cookie signing key (hex), made once when GW_SESSION_KEYS is unset."""
        return f"{self.prefix}:session:key"

    def sessions(self, name: str) -> str:
        """The stem of one session name's table (header-type sessionPersistence): `<stem>:<id>` is
        the endpoint ("address:port") the session with that id is pinned to, with its timeout.

        Not a family: gw/state/lua/session_assign.lua touches one id's key, so the key has no hash
        tag and each id hashes to a slot of its own: a route's sessions spread over a Cluster's
        masters instead of crowding the one that would hold its tag.
        """
        return f"{self.prefix}:sess:{name}"

    def oidc_sessions(self, policy: str) -> str:
        """The stem of one SecurityPolicy's OpenID Connect sessions ("namespace/name"): `<stem>:<id>`
        holds a logged-in browser's tokens (JSON), expiring with them. Not a family: each session id
        hashes to a slot of its own, as header-type sessions do."""
        return f"{self.prefix}:oidc:{policy}"

    def _family(self, family: str) -> str:
        """The hash-tagged stem of a key family: every key built on it lands in one Cluster slot."""
        return f"{{{self.prefix}:{family}}}"
