"""The differential desync check: what gw forwards must be exactly what the client framed.

A case is bytes a client sends on one connection. The reference (tests.support.rfc9112) splits
them into the requests the client framed; a CaptureUpstream records what reached the backends.
After the case the check holds, whatever status the client got:

- upstream side: every request that arrived is one the client framed, in order, on the backend
  its route names, with the same method, target (as RFC 3986 normalises it), Host, end-to-end
  fields and body bytes; a request cut short is a prefix of one. Nothing else: no extra request,
  no other body length, no byte the reference rejects. Refusing and forwarding nothing is fine.
- client side: the responses parse strictly and answer, in order, one request each: a response
  from a backend (X-Capture) answers the very request it belongs to, never a smuggled one; every
  request forwarded is answered; no response follows one that closed the connection; input the
  reference rejects ends with gw's own error answer (unless gw closed before reading it); a 100
  Continue only answers an Expect; gw neither waits for bytes the reference's reading does not
  need nor keeps a connection the client's request closed.
- the worker lives: a normal request on a fresh connection is served, and nothing in the log
  is a traceback.
"""

from __future__ import annotations

import contextlib
import socket
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import count

from tests.support.capture import Captured, CaptureUpstream, Connection, Mark
from tests.support.gateway import GatewayProcess
from tests.support.rfc9112 import HOP_BY_HOP, Message, Stream, normalize, read_requests, read_responses

BACKENDS = ["up", "admin", "other"]
# Fields gw sets, or that are hop-by-hop or framing: not compared between client and upstream.
GW_SETS = frozenset(
    {
        b"x-forwarded-for",
        b"x-forwarded-proto",
        b"x-forwarded-host",
        b"x-forwarded-port",
        b"x-request-id",
        b"forwarded",  # gw appends its own element (RFC 7239)
        b"x-real-ip",  # gw sets the peer address
    }
)
NOT_COMPARED = HOP_BY_HOP | GW_SETS | {b"host", b"content-length", b"expect"}
# The known defects of issue 11 (numbered as the issue lists them), fixed on other branches.
# Known defects by the brief's numbering; a fixed one maps to "" (its cases then run as plain tests).
KNOWN = {
    1: "",  # fixed
    2: "",  # fixed
    3: "",  # fixed
    4: "",  # fixed
    5: "",  # fixed
    6: "",  # fixed
    7: "",  # fixed
    8: "",  # fixed
}
# A request for the admin backend, to hide where a proxy might read it as a request of its own.
SMUGGLED = b"GET /admin/smuggled HTTP/1.1\r\nHost: example.test\r\n\r\n"
BEFORE = b"GET /__before__ HTTP/1.1\r\nHost: example.test\r\n\r\n"
END = b"GET /__end__ HTTP/1.1\r\nHost: example.test\r\nConnection: close\r\n\r\n"
READ_TIMEOUT = 5.0  # longer than any gw deadline the desync gateway uses
# Short deadlines, so the cases that wait for one (a pause before the body, a head cut short) are
# over fast; GW_BODY_TIMEOUT is for gw versions that time a body apart from keep-alive.
ENV = {"GW_HEADER_TIMEOUT": "1s", "GW_KEEPALIVE_TIMEOUT": "1s", "GW_BODY_TIMEOUT": "1s", "GW_ACCESS_LOG": "off"}


def desync_gateway(start: Callable[..., GatewayProcess], capture: CaptureUpstream) -> GatewayProcess:
    """A gateway whose routes `route_of` mirrors: example.test → up (/admin → admin, /redirect →
    302 from gw); any other host → other under /any, else 404 from gw."""
    routes: list[dict[str, object]] = [
        {
            "name": "main",
            "hostnames": ["example.test"],
            "rules": [
                {
                    "matches": [{"path": {"type": "PathPrefix", "value": "/admin"}}],
                    "backendRefs": [{"backend": "admin"}],
                },
                {
                    "matches": [{"path": {"type": "PathPrefix", "value": "/redirect"}}],
                    "filters": [
                        {
                            "type": "RequestRedirect",
                            "requestRedirect": {"hostname": "elsewhere.test", "statusCode": 302},
                        }
                    ],
                },
                {"backendRefs": [{"backend": "up"}]},
            ],
        },
        {
            "name": "any",
            "rules": [
                {"matches": [{"path": {"type": "PathPrefix", "value": "/any"}}], "backendRefs": [{"backend": "other"}]}
            ],
        },
    ]
    return start({name: [("127.0.0.1", capture.ports[name])] for name in BACKENDS}, routes, env=dict(ENV))


def _under(path: bytes, prefix: bytes) -> bool:
    return path == prefix or path.startswith(prefix + b"/")


def route_of(msg: Message) -> str | None:
    """The backend the desync gateway's routes give a request; None when gw answers it itself."""
    path = normalize(msg.target).partition(b"?")[0]
    if msg.hostname == "example.test":
        if _under(path, b"/admin"):
            return "admin"
        return None if _under(path, b"/redirect") else "up"
    return "other" if _under(path, b"/any") else None


def accepts_switch(msg: Message) -> bool:
    """Protocol switches the client's requests get through gw and the capture upstream: WebSocket on /ws-accept."""
    return msg.upgrade == b"websocket" and _under(normalize(msg.target).partition(b"?")[0], b"/ws-accept")


def _compared(msg: Message, named: frozenset[bytes]) -> Counter[tuple[bytes, bytes]]:
    return Counter((n.lower(), v) for n, v in msg.fields if n.lower() not in NOT_COMPARED and n.lower() not in named)


def difference(got: Captured, sent: Message) -> str | None:
    """Why the upstream's request is not the client's request `sent` (None: it is, or a prefix of it)."""
    msg = got.message
    if msg.method != sent.method:
        return f"method {msg.method!r} for {sent.method!r}"
    if normalize(msg.target) != normalize(sent.target):
        return f"target {msg.target!r} for {sent.target!r}"
    if got.backend != route_of(sent):
        return f"reached backend {got.backend!r}, its route names {route_of(sent)!r}"
    authority = sent.authority
    hosts = msg.lines(b"host")
    if authority == b"" and len(hosts) != 1:
        return f"Host {hosts!r} for an empty one"  # (gw may name the endpoint, as for HTTP/1.0)
    if authority and [h.lower() for h in hosts] != [authority.lower()]:
        return f"Host {hosts!r} for {authority!r}"
    got_fields, sent_fields = _compared(msg, frozenset()), _compared(sent, sent.connection)
    if got_fields != sent_fields:
        return f"fields {sorted(got_fields.elements())!r} for {sorted(sent_fields.elements())!r}"
    if msg.lines(b"upgrade") and sent.upgrade != b"websocket":
        return f"Upgrade {msg.lines(b'upgrade')!r} forwarded"
    if len(msg.lines(b"x-request-id")) != 1 or len(msg.lines(b"x-forwarded-for")) != 1:
        return "not a request gw prepared (X-Request-ID and X-Forwarded-For once each)"
    if msg.complete:
        if not sent.complete or msg.body != sent.body:
            return f"body of {len(msg.body)} bytes for {len(sent.body)}{'' if sent.complete else ' (unfinished)'}"
    elif not sent.body.startswith(msg.body):
        return f"unfinished body of {len(msg.body)} bytes is not a prefix of the client's"
    return None


@dataclass
class Outcome:
    """What happened to one case: the bytes, the reference's reading, and what each side saw."""

    sent: bytes
    reference: Stream
    received: bytes  # the client's response stream, to the close
    responses: Stream  # the reference's reading of it
    captured: list[Captured]
    connections: list[Connection]
    log: list[str]
    after: str = ""  # what went wrong with the normal request after the case, if anything
    timed_out: bool = False  # gw neither answered nor closed within READ_TIMEOUT
    matched: dict[int, int] = field(default_factory=dict)  # captured seq → index of the client's request

    @property
    def finals(self) -> list[Message]:
        return _finals(self.responses)

    @property
    def statuses(self) -> list[int]:
        return [r.status for r in self.finals]

    @property
    def forwarded(self) -> list[Captured]:
        return [c for c in self.captured if c.message.complete]

    def refusal(self) -> Message | None:
        """gw's own final answer (no X-Capture), if the client got one."""
        return next((r for r in self.finals if not r.lines(b"x-capture")), None)

    def served(self) -> Outcome:
        """Every request the client framed was answered, in order: by the backend its route names
        (having reached it exactly), or by gw where the route has no backend."""
        msgs = self.reference.messages
        finals = self.finals
        problems = []
        if len(finals) != len(msgs) or not all(m.complete for m in msgs):
            problems.append(f"{len(finals)} responses ({self.statuses}) for {len(msgs)} request(s)")
        for i, (sent, resp) in enumerate(zip(msgs, finals, strict=False)):
            capture = resp.lines(b"x-capture")
            if route_of(sent) is None:
                if capture:
                    problems.append(f"request {i + 1} has no backend, yet a backend answered it")
            elif not capture or self.matched.get(int(capture[0])) != i:
                problems.append(f"request {i + 1} was not answered by its backend ({resp.status})")
        assert not problems, "\n".join(problems) + "\n" + self.describe()
        return self

    def refused(self, statuses: set[int]) -> Message:
        """gw's own answer: one of `statuses`, as problem+json, closing the connection."""
        answer = self.refusal()
        assert answer is not None, "no refusal from gw\n" + self.describe()
        assert answer.status in statuses, f"{answer.status} not in {sorted(statuses)}\n" + self.describe()
        assert answer.lines(b"content-type") == [b"application/problem+json"], self.describe()
        assert b"close" in {t.lower() for t in answer.values(b"connection")}, self.describe()
        return answer

    def problems(self) -> list[str]:
        return _upstream_problems(self) + _client_problems(self) + _worker_problems(self)

    def describe(self) -> str:
        ref = self.reference
        lines = [
            f"sent ({len(self.sent)} bytes): {self.sent[:600]!r}",
            f"reference: {len(ref.messages)} request(s) "
            + ", ".join(f"{m.method.decode()} {m.target[:60]!r} body {len(m.body)}" for m in ref.messages)
            + f"; ending {ref.ending}{': ' + ref.reason if ref.reason else ''}",
            f"client got: {self.received[:600]!r}",
        ]
        for c in self.connections:
            lines.append(f"upstream connection {c.number} ({c.backend}) bytes: {bytes(c.raw)[-800:]!r}")
        return "\n".join(lines)

    def check(self) -> Outcome:
        problems = self.problems()
        assert not problems, "\n".join(problems) + "\n" + self.describe()
        return self


def _upstream_problems(o: Outcome) -> list[str]:
    problems = [
        f"upstream connection {c.number} got bytes the reference rejects: {c.failure}"
        for c in o.connections
        if c.failure
    ]
    problems += [
        f"upstream connection {c.number} got bytes after a request that closed it: {bytes(c.after_close[:80])!r}"
        for c in o.connections
        if c.after_close
    ]
    sent = o.reference.messages
    nxt = 0
    for got in o.captured:
        why = ""
        for i in range(nxt, len(sent)):
            diff = difference(got, sent[i])
            if diff is None:
                o.matched[got.seq] = i
                nxt = i + 1
                break
            why = why or f" (next client request: {diff})"
        else:
            problems.append(
                f"upstream request {got.seq} ({got.message.method!r} {got.message.target[:60]!r}, body "
                f"{len(got.message.body)} bytes) is no request of the client's{why}"
            )
    return problems


def _client_problems(o: Outcome) -> list[str]:
    ref = o.reference
    if o.responses.ending in ("malformed", "incomplete"):
        methods = [m.method.decode() for m in ref.messages]
        return [
            f"the client's response stream, read as answers to {methods}, is {o.responses.ending} {o.responses.reason}"
        ]
    problems = []
    finals = o.finals
    allowed = len(ref.complete) + (ref.ending in ("malformed", "incomplete"))
    if len(finals) > allowed:
        problems.append(
            f"{len(finals)} responses for {allowed} request(s): one answers a request the client never framed"
        )
    answered = set()
    for i, resp in enumerate(finals):
        capture = resp.lines(b"x-capture")
        if capture:
            seq = int(capture[0])
            answered.add(seq)
            if o.matched.get(seq) != i:
                problems.append(
                    f"response {i + 1} answers upstream request {seq}, which is not the client's request {i + 1}"
                )
        elif i >= len(ref.messages) and resp.status < 400:
            problems.append(f"response {i + 1} ({resp.status}) answers bytes that are no request")
        if _says_close(resp) and i + 1 < len(finals):
            problems.append(f"response {i + 1} said Connection: close, yet {len(finals) - i - 1} more followed")
    for got in o.forwarded:
        if got.seq in o.matched and got.seq not in answered:
            problems.append(f"upstream request {got.seq} was answered, but its response never reached the client")
    if any(r.status == 100 for r in o.responses.messages) and not any(m.expects_continue for m in ref.messages):
        problems.append("100 Continue sent though no request expected it")
    if ref.ending == "malformed":
        # gw refuses the bad bytes, or closed the connection before it came to them.
        last = finals[-1] if finals else None
        refused = last is not None and not last.lines(b"x-capture") and last.status >= 400
        closed_before = last is not None and len(finals) <= len(ref.complete) and _says_close(last)
        if not refused and not closed_before:
            problems.append(f"the stream turns malformed ({ref.reason}) but gw's last answer is no refusal")
    if o.timed_out:
        problems.append(f"gw neither answered nor closed in {READ_TIMEOUT} s (reference: {ref.ending})")
    return problems


def _finals(responses: Stream) -> list[Message]:
    """The responses that answer a request (a 101 ends its exchange; other 1xx are interim)."""
    return [r for r in responses.messages if r.status >= 200 or r.status == 101]


def _says_close(resp: Message) -> bool:
    return b"close" in {t.lower() for t in resp.values(b"connection")}


def _worker_problems(o: Outcome) -> list[str]:
    problems = [f"a normal request after the case: {o.after}"] if o.after else []
    problems += [f"gw logged a traceback: {line}" for line in o.log if "Traceback" in line]
    return problems


class Desync:
    """Runs cases against one gateway and its capture upstream (shared by a module's tests)."""

    def __init__(self, gw: GatewayProcess, capture: CaptureUpstream) -> None:
        self.gw = gw
        self.capture = capture
        self._after = count(1)

    def run(self, data: bytes, *, behind: bool = False) -> Outcome:
        """Send `data` in one write on a fresh connection; see the module doc for the check.

        gw reads a lone head on a fast path of its own: the bytes arrive alone in their read
        unless `behind`, which puts a plain request before them in the same write (so they are
        read as pipelined ones). A stream that ends cleanly is followed, once its requests are
        answered, by a last request with Connection: close, so gw closes when all is done; any
        other that does not end in a close is half-closed once its whole requests are answered.
        """
        if behind:
            data = BEFORE + data
        complete = len(read_requests(data, accepts_switch).complete)
        return self._exchange([(data, lambda got: len(_finals(got)) >= complete)])

    def run_steps(self, *steps: tuple[bytes, int]) -> Outcome:
        """Send each (bytes, n) on one connection, waiting after it until n responses (interim
        ones too) have arrived or gw closed; then as `run` does."""
        return self._exchange([(part, lambda got, n=n: len(got.messages) >= n) for part, n in steps])

    def _exchange(self, steps: list[tuple[bytes, Callable[[Stream], bool]]]) -> Outcome:
        data = b"".join(part for part, _ in steps)
        ref = read_requests(data, accepts_switch)
        if ref.ending == "clean":
            steps.append((END, lambda got: True))
            data += END
            ref = read_requests(data, accepts_switch)
        methods = [m.method for m in ref.messages]
        mark = self.capture.mark()
        log_at = len(self.gw.log)
        received = b""
        timed_out = False
        sock = socket.create_connection(("127.0.0.1", self.gw.port), timeout=READ_TIMEOUT)
        try:
            for part, enough in steps:
                try:
                    sock.sendall(part)
                except (BrokenPipeError, ConnectionResetError):
                    break  # gw refused and closed: its answer is still readable
                while not enough(read_responses(received, methods)):
                    try:
                        got = sock.recv(1 << 16)
                    except ConnectionResetError:
                        got = b""
                    except TimeoutError:
                        timed_out, got = True, b""
                    if not got:
                        break
                    received += got
            if ref.ending != "closed":
                # Nothing more is coming: gw answers what it has and closes (a request it still
                # waits bytes for is then left unanswered, which the check reports).
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_WR)
            rest, late = read_to_close(sock)
        finally:
            sock.close()
        return self._finish(data, ref, received + rest, timed_out or late, mark, log_at)

    def _finish(self, data: bytes, ref: Stream, received: bytes, timed_out: bool, mark: Mark, log_at: int) -> Outcome:
        """The outcome of a case whose client connection is closed: the normal request after it,
        then what the upstream recorded."""
        after = self.after_check()
        self.capture.barrier()
        captured, connections = self.capture.since(mark)
        captured = [c for c in captured if not c.message.target.startswith(b"/__after__/")]
        responses = read_responses(received, [m.method for m in ref.messages])
        return Outcome(data, ref, received, responses, captured, connections, self.gw.log[log_at:], after, timed_out)

    def after_check(self) -> str:
        """A normal request on a fresh connection: '' when the upstream served it, else what happened."""
        target = b"/__after__/%d" % next(self._after)
        with socket.create_connection(("127.0.0.1", self.gw.port), timeout=READ_TIMEOUT) as sock:
            sock.sendall(b"GET %b HTTP/1.1\r\nHost: example.test\r\nConnection: close\r\n\r\n" % target)
            received, timed_out = read_to_close(sock)
        answers = read_responses(received, [b"GET"]).messages
        if timed_out or len(answers) != 1 or answers[0].status != 200 or not answers[0].lines(b"x-capture"):
            return f"not served by the upstream: {received[:200]!r}"
        if not self.gw.alive():
            return "the gateway process exited"
        return ""


def read_to_close(sock: socket.socket) -> tuple[bytes, bool]:
    """Everything until the peer closes (or resets); True as well if it waited READ_TIMEOUT instead."""
    chunks = []
    while True:
        try:
            data = sock.recv(1 << 16)
        except ConnectionResetError:
            return b"".join(chunks), False
        except TimeoutError:
            return b"".join(chunks), True
        if not data:
            return b"".join(chunks), False
        chunks.append(data)
