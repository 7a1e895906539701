"""The state one worker's data plane shares across connections: config snapshot, pools, telemetry."""

from __future__ import annotations

import asyncio
import itertools
import os
import ssl
from collections.abc import Sequence
from time import monotonic
from typing import TYPE_CHECKING, Any

from gw.auth.jwks import KeySets
from gw.auth.oidc import ProviderClients
from gw.config import build_ssl_context
from gw.config.backend_tls import UpstreamTLS, client_context
from gw.config.model import Backend, CompiledConfig, Endpoint, PortConfig
from gw.config.tls import client_verify_mode
from gw.observe.accesslog import AccessLog
from gw.observe.metrics import Registry
from gw.observe.tracing import Tracer
from gw.policies.backend_sync import BackendStates
from gw.policies.ratelimit import Limiters
from gw.policies.registry import PHASES, Build, build_chain
from gw.policies.session_table import SessionCounts, SessionTable
from gw.proxy.auth_call import AuthCall, Done
from gw.proxy.client_tls import ClientRejections
from gw.proxy.upstream import EndpointPool
from gw.proxy.upstream_tls import TLSEndpointPool
from gw.settings import Settings
from gw.state import SharedState

if TYPE_CHECKING:
    from gw.proxy.downstream import ClientConnection
    from gw.proxy.mirror import MirrorRequest

SWEEP_INTERVAL = 0.25  # seconds between deadline checks; timeouts fire within this of their time
# A header-type session without absoluteTimeout: its table entry lasts this long after its last
# settlement (GEP-1619 v1.6 has no idle timeout; the endpoint's life bounds it in practice).
DEFAULT_SESSION_TIMEOUT = 24 * 3600.0
DEFAULT_TICKETS = 2  # TLS 1.3 session tickets per handshake (OpenSSL's default)
IO_TURN = 0.001  # a timer this short fires after the next poll for I/O, in libuv as in asyncio


class DataPlane:
    """One worker's proxy state. The config is an immutable snapshot swapped by `install`."""

    # Slots: more attributes than an instance dict shares keys for (30 in CPython 3.11); read per request.
    __slots__ = (
        "_closing",
        "_request_id_prefix",
        "_request_ids",
        "_sweeper",
        "access_log",
        "auth_calls",
        "backend_states",
        "client_ports",
        "client_rejections",
        "clients_verified",
        "config",
        "connections",
        "draining",
        "header_matching",
        "key_sets",
        "limiters",
        "listener_contexts",
        "loop",
        "metrics",
        "mirrors",
        "no_route_stats",
        "oidc_providers",
        "phases",
        "pools",
        "ports",
        "server_names",
        "session_tables",
        "settings",
        "shared",
        "tls_contexts",
        "tracer",
        "upstream_contexts",
    )

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        settings: Settings,
        phases: Sequence[tuple[str, Build]] = PHASES,
        *,
        metrics: Registry | None = None,
        shared: SharedState | None = None,
    ) -> None:
        """`phases`: the phase kinds rules are served with (gw.policies.registry); `metrics`: the
        worker's registry (its Redis guard counts into it too); `shared`: the policies' Redis client,
        guard and key schema (None without Redis)."""
        self.loop = loop
        self.settings = settings
        self.config: CompiledConfig | None = None
        self.ports: dict[int, PortConfig] = {}
        # Plain endpoints by (address, port); TLS ones by (address, port, UpstreamTLS.identity).
        self.pools: dict[tuple[Any, ...], EndpointPool] = {}
        # One client SSLContext per distinct UpstreamTLS, kept across reloads with its pools.
        self.upstream_contexts: dict[tuple[object, ...], ssl.SSLContext] = {}
        self.connections: set[ClientConnection] = set()
        self.mirrors: set[MirrorRequest] = set()  # RequestMirror copies in flight
        self.auth_calls: set[AuthCall] = set()  # external authorization calls in flight
        self.metrics = metrics if metrics is not None else Registry()
        self.no_route_stats = self.metrics.route("")  # requests answered before a route matched
        self.access_log = AccessLog(settings.access_log, settings.access_log_sample)
        self.tracer = (
            Tracer(settings.otlp_endpoint, settings.trace_sample, settings.otlp_timeout, self.metrics)
            if settings.otlp_endpoint
            else None
        )
        self.draining = False
        self.header_matching = True
        self.tls_contexts: dict[int, ssl.SSLContext] = {}
        # The contexts listening sockets are served with (listener_context), by bind port: whether
        # a handshake asks for a client certificate is theirs to say, so each install updates them.
        self.listener_contexts: dict[int, list[ssl.SSLContext]] = {}
        # Bind ports that verify client certificates (spec.tls.frontend), and those where one is required.
        self.client_ports: frozenset[int] = frozenset()
        self.clients_verified: frozenset[int] = frozenset()
        self.client_rejections = ClientRejections()
        # SNI of each TLS connection between its handshake and connection_made (by SSLObject id):
        # a server-side SSLObject does not keep the name the client asked for.
        self.server_names: dict[int, str | None] = {}
        self._request_ids = itertools.count(1)
        # A per-process random prefix plus a counter: unique across workers and replicas, and
        # far cheaper than uuid4() per request.
        self._request_id_prefix = os.urandom(6).hex().encode()
        self._sweeper: asyncio.TimerHandle | None = None
        self.limiters = Limiters(loop, settings, self.metrics, shared)
        self.shared = shared
        self.session_tables: dict[tuple[str, str], SessionTable] = {}
        # JWT providers' key sets: a reload neither refetches a JWKS nor forgets a rotated key.
        self.key_sets = KeySets()
        # OpenID providers' discovered endpoints and keys, kept across reloads as the key sets are.
        self.oidc_providers = ProviderClients()
        self._closing: set[asyncio.Task[None]] = set()  # key sets a reload dropped, being closed
        # Backends with a BackendTrafficPolicy: circuit, endpoint health, shared with the fleet.
        # (Per-replica thresholds are shared by the replica's workers: GW_WORKERS, or one per CPU.)
        workers = settings.workers or len(os.sched_getaffinity(0))
        self.backend_states = BackendStates(loop, workers, self.metrics, shared)
        self.phases = phases
        self.metrics.gauge("gw_client_connections", lambda: len(self.connections))
        self.metrics.gauge(
            "gw_upstream_connections", lambda: sum(p.connections for p in self.pools.values())
        )
        self.metrics.gauge(
            "gw_upstream_connections_idle", lambda: sum(len(p.idle) for p in self.pools.values())
        )
        self.metrics.gauge("gw_mirror_requests_in_flight", lambda: len(self.mirrors))
        self.metrics.gauge("gw_auth_calls_in_flight", lambda: len(self.auth_calls))
        self.metrics.gauge_sources.append(self.pool_gauges)

    def install(self, config: CompiledConfig) -> None:
        """Serve `config` from the next request on; requests in flight finish on the old one."""
        self.limiters.install(config)
        self.backend_states.install(config)
        for rule in config.rules:
            # The worker's binding of the snapshot: its metrics and its phase chain per rule, and
            # the connection pool of every endpoint (pools outlive snapshots: keep-alive
            # connections survive a reload).
            rule.bare_stats = self.metrics.route(rule.label)
            rule.pairs = {
                ref.backend: self.metrics.route(rule.label, ref.backend.name)
                for ref in rule.backend_refs
                if ref.backend is not None
            }
            # (None with several backendRefs: the one an exchange went to is looked up, by its Backend.)
            rule.stats = rule.pairs.get(rule.backend_refs[0].backend) if len(rule.backend_refs) == 1 else None
            rule.chain = build_chain(rule, self, self.phases)
            if self.tracer is not None:  # (each worker draws its own: workers do not start traces in step)
                rule.countdown = self.tracer.gap(rule.trace_sample)
            for ref in rule.backend_refs:
                for mirror in ref.mirrors:
                    self._bind_pools(mirror.backend)
                if ref.backend is not None:
                    self._bind_pools(ref.backend)
            for mirror in rule.mirrors:
                self._bind_pools(mirror.backend)
            for ext_auth in (rule.ext_auth, rule.security.ext_auth if rule.security is not None else None):
                if ext_auth is not None:
                    self._bind_pools(ext_auth.backend)
        jwts = [rule.security.jwt for rule in config.rules if rule.security and rule.security.jwt]
        providers = [p for jwt in jwts for p in jwt.providers]
        for dropped in self.key_sets.release(providers):  # after the chains took what they use
            self._close_soon(dropped.close())
        oidc = {rule.security.oidc.provider for rule in config.rules if rule.security and rule.security.oidc}
        for gone in self.oidc_providers.release(oidc):
            self._close_soon(gone.close())
        # HTTPS ports: the snapshot's certificates, picked per handshake by `select_certificate`,
        # so a reload switches certificates without touching listeners or open connections.
        self.tls_contexts = {p.bind_port: build_ssl_context(p) for p in config.ports if p.tls is not None}
        self.ports = {p.bind_port: p for p in config.ports}
        self.client_ports = frozenset(p.bind_port for p in config.ports if p.tls is not None and p.tls.client)
        self.clients_verified = frozenset(p for p in self.client_ports if self.ports[p].tls.client.required)
        for bind_port, contexts in self.listener_contexts.items():
            for ctx in contexts:
                self._ask_clients(ctx, bind_port)
        # Only when some rule matches on headers does the fast path split a head into fields.
        self.header_matching = any(getattr(p.table, "uses_headers", True) for p in config.ports)
        self.config = config

    def pool_gauges(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        """gw_backend_pool_connections of the served backends, counted when scraped (a pool two
        backends share counts in each)."""
        config = self.config
        if config is None:
            return {}
        pools: dict[str, dict[int, EndpointPool]] = {}
        for rule in config.rules:
            for ref in rule.backend_refs:
                backend = ref.backend
                if backend is not None:
                    named = pools.setdefault(backend.name, {})
                    for endpoint in backend.endpoints:
                        if endpoint.pool is not None:
                            named[id(endpoint.pool)] = endpoint.pool
        gauges: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        for name, named in pools.items():
            idle = sum(len(p.idle) for p in named.values())
            gauges[("gw_backend_pool_connections", (("backend", name), ("state", "idle")))] = float(idle)
            busy = sum(p.connections for p in named.values()) - idle
            gauges[("gw_backend_pool_connections", (("backend", name), ("state", "busy")))] = float(busy)
        return gauges

    def _close_soon(self, closing: Any) -> None:
        task = self.loop.create_task(closing)
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    def auth_call(
        self, backend: Backend, head: bytes, head_only: bool, exchange: Any, timeout: float, done: Done
    ) -> None:
        """Send `head` (a bodiless request) to an endpoint of `backend` (an external authorization
        service) over its keep-alive pool; `done` hears the answer once (gw.proxy.auth_call)."""
        call = AuthCall(self, head, head_only, done)
        try:
            call.start(backend, exchange, timeout)
        except Exception as exc:
            call.crash(exc)

    def session_counts(self, rule: str, kind: str) -> SessionCounts:
        """gw_sessions_total of one rule's sessions, in this worker's metrics."""
        return SessionCounts(self.metrics.counters, rule, kind)

    def session_table(self, persistence: Any) -> SessionTable:
        """The table of one header-type session (its rule's scope): kept across reloads, so a
        worker's cache of ids survives them."""
        key = (persistence.scope, persistence.name)
        table = self.session_tables.get(key)
        if table is None or table.timeout != (persistence.absolute_timeout or DEFAULT_SESSION_TIMEOUT):
            table = self.session_tables[key] = SessionTable(
                self.loop, self.shared, f"{persistence.scope}:{persistence.name}",
                persistence.absolute_timeout or DEFAULT_SESSION_TIMEOUT, idle=False,
                counts=self.session_counts(persistence.scope, persistence.type),
            )  # fmt: skip
        return table

    def apply_backend_events(self, events: list[dict[str, Any]]) -> None:
        """Backend state decided elsewhere in the fleet (gw.state.backend_events), relayed by the
        supervisor: circuits, ejections, probe health. Stale events (lower `v` per item) are ignored."""
        self.backend_states.apply(events)

    def listener_context(self, bind_port: int) -> ssl.SSLContext:
        """The SSLContext an HTTPS listener socket is served with, for the life of the socket.

        It holds no certificate itself: its SNI callback moves each handshake to the current
        snapshot's context for that name (build_ssl_context), which is how certificates reload.
        """
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.set_alpn_protocols(["http/1.1"])

        def select_certificate(conn: ssl.SSLObject, server_name: str | None, _: ssl.SSLContext) -> int | None:
            current = self.tls_contexts.get(bind_port)
            if current is None:
                return ssl.ALERT_DESCRIPTION_UNRECOGNIZED_NAME
            if len(self.server_names) > 10000:  # handshakes that never completed
                self.server_names.clear()
            self.server_names[id(conn)] = server_name.lower() if server_name else None
            conn.context = current
            pick = current.sni_callback
            return pick(conn, server_name, current) if pick is not None else None

        ctx.sni_callback = select_certificate  # type: ignore[assignment]
        ctx.sslobject_class = self.client_rejections.handshake_class(self, bind_port)
        self._ask_clients(ctx, bind_port)
        self.listener_contexts.setdefault(bind_port, []).append(ctx)
        return ctx

    def _ask_clients(self, ctx: ssl.SSLContext, bind_port: int) -> None:
        """The listener context asks for a client certificate as the current snapshot says."""
        port = self.ports.get(bind_port)
        client = port.tls.client if port is not None and port.tls is not None else None
        ctx.verify_mode = client_verify_mode(client)
        # Without resumption, each connection's certificate is verified against the CAs of its
        # handshake's snapshot: a session resumed across a reload would skip that.
        ctx.num_tickets = 0 if client is not None else DEFAULT_TICKETS
        if client is not None:
            ctx.options |= ssl.OP_NO_TICKET
        else:
            ctx.options &= ~ssl.OP_NO_TICKET

    def _bind_pools(self, backend: Backend) -> None:
        backend.connect_times = self.metrics.connect_times(backend.name)
        tls = backend.tls
        for endpoint in backend.endpoints:
            endpoint.pool = self.pool(endpoint) if tls is None else self.tls_pool(endpoint, tls)

    def pool(self, endpoint: Endpoint) -> EndpointPool:
        pool = self.pools.get(endpoint.key)
        if pool is None:
            s = self.settings
            pool = self.pools[endpoint.key] = EndpointPool(
                self.loop,
                endpoint.address,
                endpoint.port,
                max_idle=s.upstream_max_idle,
                idle_timeout=s.upstream_idle_timeout,
                max_requests=s.upstream_max_requests,
            )
        return pool

    def tls_pool(self, endpoint: Endpoint, tls: UpstreamTLS) -> EndpointPool:
        """The pool of `endpoint` under a BackendTLSPolicy: its own, apart from plain connections to
        the same address, and shared by every backend verifying the same way."""
        key = (*endpoint.key, tls.identity)
        pool = self.pools.get(key)
        if pool is None:
            context = None
            if tls.refusal is None:
                context = self.upstream_contexts.get(tls.identity)
                if context is None:
                    context = self.upstream_contexts[tls.identity] = client_context(tls)
            s = self.settings
            pool = self.pools[key] = TLSEndpointPool(
                self.loop,
                endpoint.address,
                endpoint.port,
                tls,
                context,
                max_idle=s.upstream_max_idle,
                idle_timeout=s.upstream_idle_timeout,
                max_requests=s.upstream_max_requests,
            )
        return pool

    def next_request_id(self) -> bytes:
        return b"%s%08x" % (self._request_id_prefix, next(self._request_ids))

    # -- periodic work ----------------------------------------------------------------------

    def start(self) -> None:
        self._sweeper = self.loop.call_later(SWEEP_INTERVAL, self._sweep)
        if self.tracer is not None:
            self.tracer.start()

    def _sweep(self) -> None:
        """Every SWEEP_INTERVAL: let the loop poll for I/O once, then expire what is still due.

        After a stop (SIGSTOP, a frozen container) or a starved loop, whatever peers sent meanwhile
        waits in socket buffers, and libuv runs due timers before it polls (epoll_wait returns EINTR
        on SIGCONT): expiring at once would turn answers that arrived into 504s, for a stop of any
        length that spans a deadline. Deadlines are not shifted: a peer that sent nothing still
        times out, one poll later.
        """
        self._sweeper = self.loop.call_later(IO_TURN, self._expire)

    def _expire(self) -> None:
        """Fire expired deadlines (timeouts without a timer per request), age pools, flush logs."""
        now = monotonic()  # the clock of every deadline (uvloop's loop.time() ticks in ms)
        for conn in [c for c in self.connections if c.deadline <= now or 0.0 < c.request_deadline <= now]:
            try:
                conn.expire(now)
            except Exception as exc:  # one connection's bug must not stop the sweeper
                conn.crash(exc)
        if self.mirrors:
            for mirror in [m for m in self.mirrors if m.deadline <= now]:
                try:
                    mirror.expire()
                except Exception as exc:
                    mirror.crash(exc)
        if self.auth_calls:
            for call in [c for c in self.auth_calls if c.deadline <= now]:
                call.expire()
        for pool in self.pools.values():
            pool.expire_idle(now)
        self.access_log.flush()
        self._sweeper = self.loop.call_later(SWEEP_INTERVAL, self._sweep)

    def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        self.limiters.stop()
        self.backend_states.stop()
        for dropped in self.key_sets.release(()):
            self._close_soon(dropped.close())
        for gone in self.oidc_providers.release(set()):
            self._close_soon(gone.close())
        for pool in self.pools.values():
            pool.close_all()
        self.access_log.close()
        if self.tracer is not None:
            self.tracer.stop()
