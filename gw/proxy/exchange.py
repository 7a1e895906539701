"""One exchange: a client request from its first byte to the end of its response.

It is the request state the connection keeps (head, body progress, attempts) and, for a rule
with a phase chain, what the phases may touch (gw.policies.phase.Exchange): the fields split
once on first use, answers, response fields, mirrors, resume. Defaults live on the class and
only what differs is stored per instance: an exchange costs one small object, not thirty
attribute writes (the hot path creates one per request), and a rule without a chain never sets
any of the chain's attributes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from gw.proxy.request import REQUEST_ID_NAME, forward_fields, split_fields

if TYPE_CHECKING:
    from gw.errors import ProxyError
    from gw.proxy.downstream import ClientConnection

Fields = list[tuple[bytes, bytes]]


class Exchange:
    """A request and its response as the proxy carries them (see the module docstring)."""

    # -- the request, as parsed and validated (gw.proxy.request) --
    url = b""  # the target that goes upstream
    headers: Fields | tuple[()] = ()  # parsed fields; the fast path may skip them
    method = b""
    version = b"1.1"
    host = ""
    path = ""
    query = b""
    keep_alive = True
    upgrade = False
    chunked = False
    content_length = -1  # -1: no Content-Length header
    expect_continue = False
    request_id = b""
    head: list[bytes] = []  # the forwarded header lines (as bytes pieces), X-Forwarded-* included
    host_header = b""
    idempotent = False
    client_host = b""
    rule: Any = None
    # -- the body, as it moves --
    complete = False
    body_received = 0
    body_sent = 0
    pending_body: list[bytes] | None = None  # body bytes read but not yet written upstream
    body_buffered = 0
    replay: list[bytes] | None = None  # a small body kept for a retry on a fresh connection
    mirrors: list[Any] | None = None  # RequestMirror copies waiting for body bytes (gw.proxy.mirror)
    # -- attempts --
    attempts = 0
    retries = 0  # GEP-1731 retries made (responses dropped for their status)
    counted: str | None = None  # the endpoint whose in-flight count this exchange holds (LeastRequest)
    # -- the phase chain (set only for a rule that has one) --
    conn: ClientConnection | None = None
    resume_at = 0  # the request phase a WAIT resumes from
    ref: Any = None  # the BackendRef chosen for this exchange (a phase may choose it)
    pin: Any = None  # the endpoint a phase chose (a session's), or None: the backend picks
    session: Any = None  # what the session phase found in the request (gw.policies.session)
    repin: Any = None  # repin(ex, endpoint): the pinned endpoint refused and the exchange went there
    identity: Any = None
    log_url: bytes | None = None  # the target as the access log shows it, when a phase blanked a credential
    response_fields: Fields | None = None
    mirror_to: list[Any] | None = None  # gw.config.filters.Mirror chosen by phases
    fields_edited = False
    edits_response = False  # the chain edits the response head (phases, or response fields to add)
    done_phases: tuple[Any, ...] = ()  # the chain's on_done phases, once the request went through
    head_id: bytes | None = None  # head_key() when the chain starts (gw.policies.phase.Exchange)
    rematched = False  # a phase had the rule matched again (rematch: once)
    # -- tracing (gw.observe.tracing; set only when GW_OTLP_ENDPOINT is) --
    span: Any = None  # a sampled request's server span (gw.observe.tracing.Span)
    trace_id = b""  # the trace the request belongs to, sampled or not: the access log and problem bodies
    _fields: Fields | None = None

    def __init__(self, started: float) -> None:
        self.started = started

    @property
    def has_body(self) -> bool:
        return self.chunked or self.content_length > 0

    # -- what a phase may touch (gw.policies.phase.Exchange) ---------------------------------

    @property
    def scheme(self) -> bytes:
        return self.conn.scheme  # type: ignore[union-attr]

    @property
    def listener_port(self) -> int:
        return self.conn.declared_port  # type: ignore[union-attr]

    @property
    def endpoint(self) -> Any:
        """The endpoint the exchange was sent to (None before one is picked, or when answered by gw)."""
        return self.conn.endpoint  # type: ignore[union-attr]

    def fields(self) -> Fields:
        fields = self._fields
        if fields is None:
            head = self.head
            if len(head) == 3:
                # The fast path's head, [RawHead.forward, request id, CRLF or the traceparent line
                # between CRLFs]: the fields before the id are split once per distinct head, as the
                # head is analysed once.
                fields = self._fields = [*forward_fields(head[0]), (REQUEST_ID_NAME, head[1])]
                if len(head[2]) > 2:
                    fields += split_fields(head[2])
            else:
                fields = self._fields = split_fields(b"\r\n" + b"".join(head))
        return fields

    def head_key(self) -> bytes | None:
        # (A traceparent, new with every request of a traced caller, is not part of the key: no
        # phase reads it.)
        head = self.head
        # The fast path's analysed head is one bytes object per distinct header block (req_memo).
        return head[0] if len(head) == 3 and not self.fields_edited else None

    def edit_fields(self) -> Fields:
        self.fields_edited = True
        self.head_id = None  # what a later phase reads no longer follows from the head alone
        return self.fields()

    def field(self, lname: bytes) -> bytes | None:
        for name, value in self.fields():
            if name.lower() == lname:
                return value
        return None

    def add_response_fields(self, fields: Fields) -> None:
        if fields:
            self.response_fields = fields if self.response_fields is None else self.response_fields + fields

    def want_response_head(self) -> None:
        self.edits_response = True

    def answer(self, status: int, fields: Fields, body: bytes = b"") -> None:
        self.conn.answer(self, status, fields, body)  # type: ignore[union-attr]

    def rematch(self, fields: Fields) -> bool:
        return self.conn.rematch(self, fields)  # type: ignore[union-attr]

    def fail(self, error: ProxyError) -> None:
        self.conn.fail_exchange(self, error)  # type: ignore[union-attr]

    def mirror(self, mirrors: Sequence[Any]) -> None:
        self.mirror_to = list(mirrors) if self.mirror_to is None else self.mirror_to + list(mirrors)

    def resume(self) -> None:
        self.conn.resume(self)  # type: ignore[union-attr]

    def forwarded_head(self) -> list[bytes]:
        """The head to send: rebuilt from the fields when a phase edited them."""
        if self.fields_edited:
            self.head = [b"".join(b"%b: %b\r\n" % field for field in self._fields or ())]
            self.fields_edited = False
        return self.head
