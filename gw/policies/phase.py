"""The seam every per-request feature plugs into: a phase, the exchange it may touch, and the chain.

A feature is a `Phase` that overrides only the hooks it needs, named after the moments of an
exchange (as Pingora's and Envoy's filter chains name them):

  on_request(ex)            the request head has arrived and matched a rule: return CONTINUE, or
                            answer it (`ex.answer`, `ex.fail`) and return ANSWERED, or return WAIT
                            and call `ex.resume()` later (a Redis answer, a JWKS fetch): the chain
                            goes on from the next phase, nothing before it runs again.
  on_upstream_request(ex)   the backendRef is chosen (`ex.ref`) and the request is about to go
                            upstream: edit its fields (`ex.edit_fields()`), target, mirrors. Runs
                            once per exchange; retries resend what it left.
  on_response_head(ex, f)   the upstream's response head, as a list of (name, value) fields to edit.
                            A phase with `response_on_demand` gets it only for the exchanges whose
                            on_request called `ex.want_response_head()` (and for others whose head
                            is edited anyway: it checks): every other response takes the proxy's
                            memo of the last head, not a field-by-field pass.
  on_done(ex, status)       the exchange is over (answered, proxied, failed, or the client left):
                            outcome accounting, spans, logs.

Each rule gets a `Chain` of the phases that apply to it, built when a worker installs a
snapshot (gw.policies.registry), or None when nothing applies: the connection then pays one
`is None` test per request. Phases never import gw.proxy; the exchange they get is described by
the `Exchange` protocol below and implemented by the proxy.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from gw.errors import ProxyError

Fields = list[tuple[bytes, bytes]]

CONTINUE = 0  # go on with the next phase
ANSWERED = 1  # the phase answered the request itself (ex.answer / ex.fail): the chain stops
WAIT = 2  # the phase calls ex.resume() later; the chain goes on from the next phase then


class Exchange(Protocol):
    """What a phase may touch of one request/response exchange (implemented by gw.proxy.exchange)."""

    method: bytes
    version: bytes
    host: str  # lower case, without port
    path: str  # normalised, without query
    query: bytes
    url: bytes  # the target that goes upstream (a phase may rewrite it)
    host_header: bytes  # the Host that goes upstream
    request_id: bytes
    client_host: bytes  # the peer address, as bytes
    upgrade: bool
    rule: Any  # gw.config.model.Rule
    # gw.config.model.BackendRef chosen for this exchange; an on_request phase may set it (a session
    # pinned to one of its endpoints), otherwise it is chosen by weight before on_upstream_request.
    ref: Any
    pin: Any  # the endpoint an on_request phase chose for the exchange (with `ref`); None: the backend picks
    endpoint: Any  # the endpoint the exchange went to (on_response_head, on_done); None if gw answered
    identity: Any  # who the caller is, once authentication established it (None: anonymous)
    log_url: bytes | None  # the target as the access log shows it (a credential in the query blanked)
    scheme: bytes  # b"http" or b"https" of the listener
    listener_port: int  # the listener's declared port (redirects, X-Forwarded-Port)
    started: float  # time.monotonic() when the request's head began: a clock phases may read for free
    # head_key() read without a call (None too once a phase edited the fields): the request phases
    # of a client that sends the same head again and again remember what they read under it. It
    # leaves out a traceparent line (new on every request of a traced caller): a phase reading
    # that field must not remember it under head_id.
    head_id: bytes | None

    def fields(self) -> Fields:
        """The forwarded head as (name, value) fields, split once on first use; read-only."""
        ...

    def head_key(self) -> bytes | None:
        """Bytes equal for exactly the requests whose forwarded fields are equal (so what a phase
        reads from the fields can be remembered under it), or None when the head has no such key."""
        ...

    def edit_fields(self) -> Fields:
        """The same list, to edit in place: the head that goes upstream is rebuilt from it."""
        ...

    def field(self, lname: bytes) -> bytes | None:
        """The first value of a field (name in lower case), or None."""
        ...

    def add_response_fields(self, fields: Fields) -> None:
        """Fields appended to the head of the upstream's response (not to answers gw makes itself)."""
        ...

    def want_response_head(self) -> None:
        """A `response_on_demand` phase's on_request: this exchange's response head goes through it."""
        ...

    def answer(self, status: int, fields: Fields, body: bytes = b"") -> None:
        """Answer the request here (redirects, CORS preflights, an auth service's refusal); `fields`
        carry no framing (Content-Length is gw's)."""
        ...

    def fail(self, error: ProxyError) -> None:
        """Answer the request with `error`'s status and an RFC 9457 problem document."""
        ...

    def mirror(self, mirrors: Sequence[Any]) -> None:
        """Send a copy of the request (as it goes upstream) to each of `mirrors` (gw.config.filters.Mirror)."""
        ...

    def resume(self) -> None:
        """After a phase returned WAIT: go on with the chain from the phase after it."""
        ...

    def rematch(self, fields: Fields) -> bool:
        """Match the request's rule again as if its head carried `fields` (replacing the client's
        fields of those names, which go upstream too): JWT claim headers with recomputeRoute. True
        when that finds another rule: its own chain has begun, so the calling phase returns
        ANSWERED. At most once per exchange."""
        ...


class Phase:
    """One feature's part in an exchange. Subclasses override only the hooks they need."""

    kind = ""  # the registry's name for it: logs, errors, `gw routes`
    response_on_demand = False  # see on_response_head in the module docstring

    def on_request(self, ex: Exchange) -> int:
        return CONTINUE

    def on_upstream_request(self, ex: Exchange) -> None:
        return None

    def on_response_head(self, ex: Exchange, fields: Fields) -> None:
        return None

    def on_done(self, ex: Exchange, status: int) -> None:
        return None


def _overrides(phase: Phase, hook: str) -> bool:
    return getattr(type(phase), hook) is not getattr(Phase, hook)


class Chain:
    """The phases of one rule in the registry's order, grouped by the hooks they implement.

    The connection runs each group at its moment (gw.proxy.downstream); a group that no phase
    implements is an empty tuple, tested once.
    """

    __slots__ = ("done", "edits_response", "phases", "request", "response", "upstream")

    def __init__(self, phases: Sequence[Phase]) -> None:
        self.phases = tuple(phases)
        self.request = tuple(p for p in self.phases if _overrides(p, "on_request"))
        self.upstream = tuple(p for p in self.phases if _overrides(p, "on_upstream_request"))
        self.response = tuple(p for p in self.phases if _overrides(p, "on_response_head"))
        # Every exchange's response head goes through `response` (else only those that asked).
        self.edits_response = any(not p.response_on_demand for p in self.response)
        self.done = tuple(p for p in self.phases if _overrides(p, "on_done"))

    def describe(self) -> str:
        return " → ".join(p.kind for p in self.phases)

    def __repr__(self) -> str:
        return f"Chain({self.describe()})"
