"""The compiled configuration a worker serves: an immutable snapshot of ports, routes and backends.

The proxy only ever sees these types. They are built by `gw.config.compile` and swapped by
reference when a new config version arrives (Envoy's thread-local snapshot, in one process).
The only mutable state inside is balancer position and passive endpoint health, which are
per-snapshot by design: a reload starts them afresh.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from gw.balancing.health import EndpointHealth
from gw.balancing.swrr import SmoothWeightedRoundRobin
from gw.config.filters import CORS, ExtensionRef, HeaderModifier, Mirror, Redirect, Retry, URLRewrite


@dataclass(slots=True, eq=False)
class Endpoint:
    """One address:port of a backend. `key` names its connection pool, shared across snapshots."""

    address: str
    port: int
    weight: int = 1
    key: tuple[str, int] = field(init=False)
    label: str = field(init=False)  # "address:port", as logs and metrics name it
    pool: Any = None  # the worker's connection pool for `key`, bound when it installs the snapshot

    def __post_init__(self) -> None:
        self.key = (self.address, self.port)
        self.label = f"{self.address}:{self.port}"


class Backend:
    """A Service port or a gw Backend: the endpoints a request to it is balanced over.

    Everything backend-side that decides where an exchange goes lives behind `pick(exchange)`:
    the balancer and the endpoints' health (gw.balancing.health), as Envoy's cluster owns them.
    """

    __slots__ = ("_balancer", "_only", "connect_times", "endpoints", "health", "name", "resilience", "state", "tls")

    def __init__(self, name: str, endpoints: Sequence[Endpoint]) -> None:
        self.name = name
        # The BackendTrafficPolicy sections that apply (gw.config.backend_policy.Resilience), set
        # while compiling (gw.config.backend_attach); None: no policy, and the proxy pays nothing.
        self.resilience: Any = None
        # The worker's run-time state for a backend with a policy (gw.balancing.resilience),
        # bound once when it installs the snapshot; None otherwise.
        self.state: Any = None
        # Its BackendTLSPolicy's UpstreamTLS (gw.config.backend_tls), set while compiling: its
        # endpoints' pools connect over TLS. None: plain HTTP, and the proxy pays nothing.
        self.tls: Any = None
        # The worker's histogram of connection set-up times for `name`, bound when it installs the snapshot.
        self.connect_times: Any = None
        self.endpoints = tuple(endpoints)
        self._balancer = SmoothWeightedRoundRobin(self.endpoints, [e.weight for e in self.endpoints])
        usable = [e for e in self.endpoints if e.weight > 0]
        self._only = usable[0] if len(usable) == 1 else None
        self.health: Any = EndpointHealth()

    def pick(self, exchange: Any) -> Endpoint | None:
        """The endpoint for `exchange` (its `started` time is the clock of health): smooth weighted
        round robin, skipping ejected endpoints; None when the backend has none.

        When every endpoint is ejected, the next one is tried anyway (Envoy's panic mode): a
        backend that may have recovered beats answering 503 without trying. A backend with a
        BackendTrafficPolicy has its run-time state as `health` (outlier ejections, probes,
        panicThreshold: gw.balancing.resilience), bound by `use_state`.
        """
        if self._only is not None:
            return self._only  # one endpoint: nothing to balance (and panic mode would pick it anyway)
        balancer = self._balancer
        first = balancer.next()
        health = self.health
        if first is None or not health.ejected:
            return first
        now = exchange.started
        if health.usable(first, now):
            return first
        for _ in range(len(balancer) - 1):
            endpoint = balancer.next()
            if endpoint is not None and health.usable(endpoint, now):
                return endpoint
        return first

    def use_state(self, state: Any) -> None:
        """A worker's BackendState takes over health (and, for one endpoint, picks go through it);
        with a loadBalancer other than plain round robin, its picker takes over picks."""
        self.state = self.health = state
        self._only = None
        if state.picker is not None:
            # A class of its own rather than a test in `pick`: a backend without a policy pays nothing.
            self.__class__ = PolicyBackend
        elif type(self) is PolicyBackend:
            self.__class__ = Backend

    def connect_failed(self, endpoint: Endpoint, until: float) -> None:
        """The proxy could not connect to `endpoint`: skip it in picks until `until` (monotonic)."""
        self.health.eject(endpoint, until)

    def __repr__(self) -> str:
        return f"Backend({self.name!r}, {len(self.endpoints)} endpoints)"


class PolicyBackend(Backend):
    """A backend whose BackendTrafficPolicy names a loadBalancer: its worker's picker
    (gw.balancing.picker) chooses, with the same health and panic rules."""

    __slots__ = ()

    def pick(self, exchange: Any) -> Endpoint | None:
        return self.state.picker.pick(exchange)  # type: ignore[no-any-return]


@dataclass(slots=True, eq=False)
class BackendRef:
    """A weighted reference from a rule to a backend. `backend` is None when the ref is unresolved.

    The filter attributes are the backendRef's own filters (applied after the rule's, only for
    requests sent to this backend); None / () mean none, as on Rule.
    """

    name: str
    weight: int
    backend: Backend | None
    request_headers: HeaderModifier | None = None
    response_headers: HeaderModifier | None = None
    rewrite: URLRewrite | None = None
    mirrors: tuple[Mirror, ...] = ()


class Rule:
    """One HTTPRoute rule, compiled: where matching requests go, the filters and policies that apply.

    Filters (gw.config.filters), each None or () when the rule has none:
      redirect          answer `redirect.status` with Location `redirect.location(...)`; no upstream
      cors              preflight answered by the gateway; `cors.response(origin)` added otherwise
      request_headers   `request_headers.apply(headers)` before sending upstream
      rewrite           `rewrite.target(path, query)` and `rewrite.host` for the upstream request
      mirrors           for m in mirrors: if m.take(): send a copy to m.backend, ignore the answer
      response_headers  `response_headers.apply(headers)` on the upstream response
      extensions        gw policy objects (ExtensionRef), for the policy layer
    rate_limit_policies: RateLimitPolicies attached by targetRefs or ExtensionRef (gw.config.policy_attach).
    security: the SecurityPolicy that wins the rule, as it applies (gw.config.security_attach), or None.
    retry: Retry or None; request_timeout / backend_timeout in seconds (0 = disabled, None = unset).
    session_persistence: gw.config.session.SessionPersistence or None: the rule's own or its
    backends' (BackendTrafficPolicy), settled after backend policies attach (gw.config.session).

    The proxy does not read the filters and policies itself: a worker turns them into the rule's
    phase chain when it installs the snapshot (gw.policies.registry). `chain` and `stats` (and
    each endpoint's `pool`) are the only attributes written after compile, once, by that install
    (gw.proxy.dataplane); a rule that nothing filters keeps `chain` None and the proxy pays one
    test for it per request.
    """

    __slots__ = (
        "_refs",
        "backend_refs",
        "backend_timeout",
        "bare_stats",
        "chain",
        "cors",
        "countdown",
        "ext_auth",
        "extensions",
        "index",
        "invalid_reason",
        "label",
        "max_body_size",
        "mirrors",
        "name",
        "only_backend",
        "only_ref",
        "pairs",
        "rate_limit_policies",
        "redirect",
        "request_headers",
        "request_timeout",
        "response_headers",
        "retry",
        "rewrite",
        "route",
        "security",
        "session_persistence",
        "stats",
        "trace_sample",
    )

    def __init__(
        self,
        route: str,
        index: int,
        backend_refs: Sequence[BackendRef],
        *,
        name: str | None = None,
        max_body_size: int = 0,
        request_timeout: float | None = None,
        backend_timeout: float | None = None,
        invalid_reason: str | None = None,
        request_headers: HeaderModifier | None = None,
        response_headers: HeaderModifier | None = None,
        redirect: Redirect | None = None,
        rewrite: URLRewrite | None = None,
        mirrors: Sequence[Mirror] = (),
        cors: CORS | None = None,
        extensions: Sequence[ExtensionRef] = (),
        retry: Retry | None = None,
        ext_auth: Any = None,
    ) -> None:
        self.route = route  # "namespace/name" of the HTTPRoute
        self.index = index
        self.name = name
        self.label = route  # metrics label and access-log field: the route, the same word everywhere
        self.backend_refs = tuple(backend_refs)
        self.max_body_size = max_body_size  # 0 = unlimited
        self.request_timeout = request_timeout
        self.backend_timeout = backend_timeout
        # Set when a reference could not be resolved: requests matching this rule get a 500.
        self.invalid_reason = invalid_reason
        self.request_headers = request_headers
        self.response_headers = response_headers
        self.redirect = redirect
        self.rewrite = rewrite
        self.mirrors = tuple(mirrors)
        self.cors = cors
        self.extensions = tuple(extensions)
        self.retry = retry
        # An ExternalAuth filter (gw.config.security_policy.ExtAuth, its backend resolved), or None.
        self.ext_auth = ext_auth
        # RateLimitPolicies reaching this rule, added while compiling (gw.config.policy_attach).
        self.rate_limit_policies: tuple[Any, ...] = ()
        # The SecurityPolicy that wins the rule, its Secrets read (gw.config.security_policy.Security),
        # set while compiling (gw.config.security_attach); None: no authentication, no phase.
        self.security: Any = None
        # Set while compiling, after backend policies attach (gw.config.session.settle_sessions).
        self.session_persistence: Any = None
        # The worker's, bound once when it installs the snapshot (see the class docstring). Metrics
        # (gw.observe.metrics.RouteStats): `pairs` by Backend, of requests that reached it; `bare_stats`
        # of those answered before one was; `stats` the pair of its one backendRef (None with several).
        self.stats: Any = None
        self.bare_stats: Any = None
        self.pairs: dict[Any, Any] = {}
        self.chain: Any = None
        # Tracing (gw.observe.tracing): the rule's own sampling ratio (None: GW_TRACE_SAMPLE), and
        # the worker's requests until the next that starts a trace, drawn when it installs the rule.
        self.trace_sample: float | None = None
        self.countdown = 0
        usable = [r for r in self.backend_refs if r.weight > 0]
        self._refs = SmoothWeightedRoundRobin(usable, [r.weight for r in usable]) if usable else None
        # The common case of one backend: the proxy skips the weighted pick.
        self.only_ref = usable[0] if len(usable) == 1 else None
        self.only_backend = usable[0].backend if len(usable) == 1 else None

    def pick_backend(self) -> BackendRef | None:
        """Next backendRef by weight (weight 0 excluded); None when the rule has no usable backend."""
        refs = self._refs
        return refs.next() if refs is not None else None

    def __repr__(self) -> str:
        return f"Rule({self.route!r}#{self.index})"


class RouteTable(Protocol):
    """Finds the rule for a request on one bound port (host dispatch across that port's listeners)."""

    def match(
        self, host: str, path: str, method: bytes, headers: list[tuple[bytes, bytes]], query: bytes
    ) -> Rule | None:
        """host: lower-case, without port; path: the request path without query, as sent."""
        ...


@dataclass(frozen=True, slots=True)
class PortConfig:
    """Everything served on one listening port: declared (for status, redirects) and bound port."""

    declared_port: int
    bind_port: int
    protocol: str  # "HTTP" or "HTTPS"
    table: RouteTable
    listeners: tuple[str, ...]  # "gwns/gwname/listenername" served on this port
    # HTTPS: certificates by SNI (gw.config.tls.TLSConfig); build_ssl_context(port) makes the context.
    tls: Any = None


@dataclass(frozen=True, slots=True)
class CompiledConfig:
    """A whole snapshot. `rules` lists every rule once (for metrics and `gw routes`)."""

    ports: tuple[PortConfig, ...]
    rules: tuple[Rule, ...]
    source: str = ""
    checksum: str = ""

    def port(self, bind_port: int) -> PortConfig | None:
        for p in self.ports:
            if p.bind_port == bind_port:
                return p
        return None
