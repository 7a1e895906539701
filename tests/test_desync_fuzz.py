"""Hypothesis mutates valid requests and holds gw to the differential desync check for each.

A draft is a valid request that routes to a backend; mutations add, duplicate, re-case and
delete fields, name framing fields in Connection, change the framing (Content-Length and
Transfer-Encoding values and combinations, chunk sizes and extensions), and add whitespace or
change line endings, on one to three pipelined requests. Whatever gw answers, the upstream must
see exactly the requests the strict reference reads in the bytes, and the client one answer per
request gw accepted (tests.support.desync). One gateway serves every example; examples are
derived from the test's name (derandomize), so CI runs the same inputs every time.

The mutations that meet issue 11's known defects are kept apart: each known defect has its
own fuzzer, expected to fail until its fix is merged (strict xfail: a fixed defect shows up
as XPASS, and its mutations then belong in MUTATIONS).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, Phase, assume, given, settings
from hypothesis import strategies as st

from tests.support.desync import KNOWN, SMUGGLED, Desync

FUZZ = settings(
    max_examples=250,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
    print_blob=True,
)
# A known defect fails within a few examples; no shrinking, so an expected failure costs little.
KNOWN_FUZZ = settings(FUZZ, max_examples=40, phases=[Phase.explicit, Phase.generate])

# Requests that route to a backend: gw answering a request itself is covered by the corpus
# (a body behind such an answer meets a NEW defect listed there).
ROUTED = [
    (b"/x", b"example.test"),
    (b"/admin/x", b"example.test"),
    (b"/public/../admin/x", b"example.test"),
    (b"//admin//x?q=/../y", b"example.test"),
    (b"/any/x", b"other.test"),
    (b"/x", b"EXAMPLE.TEST:80"),
]
FIELD_VALUES: dict[bytes, list[bytes]] = {
    b"Content-Length": [b"0", b"5", b"+5", b"05", b"5, 5", b"5 5", b"", b"0x5", b"-1", b"18446744073709551616"],
    b"Transfer-Encoding": [
        b"chunked",
        b"Chunked",
        b" chunked",
        b"chunked, chunked",
        b"gzip, chunked",
        b"identity",
        b"xchunked",
    ],
    b"Host": [b"example.test", b"other.test", b"EXAMPLE.TEST"],
    b"Connection": [b"close", b"keep-alive", b"x-a", b"te, trailer", b"transfer-encoding", b"upgrade", b"expect"],
    b"Expect": [b"100-continue", b"100-Continue", b"y 100-continue"],
    b"Keep-Alive": [b"timeout=5"],
    b"TE": [b"trailers"],
    b"Trailer": [b"X-Sum"],
    b"X-Forwarded-For": [b"10.0.0.1"],
    b"Proxy-Connection": [b"close"],
    b"Content_Length": [b"5"],
    b"X-A": [b"1", b"a\tb", b"caf\xc3\xa9"],
}
CHUNK_EXTS = [b"", b"", b";a", b";a=b", b';a="q;\\"r"', b" ;a", b";", b";a=b;c"]
EOLS = [b"\n", b"\r", b"\r\r\n", b"\r \n", b"\n\r"]


@dataclass
class Draft:
    """A request under mutation; `encode` writes it out, with `eols` replacing chosen CRLFs."""

    method: bytes
    target: bytes
    version: bytes
    fields: list[list[bytes]]  # [name, separator, value]
    content: bytes = b""
    framing: str = "none"  # none, length, chunked
    chunks: list[list[bytes]] = field(default_factory=list)  # [size, ext, data]; the last one is "0"
    trailers: list[bytes] = field(default_factory=list)
    eols: dict[int, bytes] = field(default_factory=dict)  # line number → the ending it gets instead
    line_sep: bytes = b" "

    after: bytes = b""  # bytes that follow the request in the same write

    def encode(self) -> bytes:
        return self._render()[0]

    def lines(self) -> int:
        """How many line ends the request has (the CRLF after chunk data counts as one)."""
        return self._render()[1]

    def _render(self) -> tuple[bytes, int]:
        out: list[bytes] = []
        line = 0

        def add(text: bytes) -> None:
            nonlocal line
            out.append(text + self.eols.get(line, b"\r\n"))
            line += 1

        add(self.line_sep.join((self.method, self.target, self.version)))
        for name, sep, value in self.fields:
            add(name + sep + value)
        add(b"")
        if self.framing == "length":
            out.append(self.content)
        elif self.framing == "chunked":
            for size, ext, data in self.chunks:
                add(size + ext)
                if size.strip(b"0"):
                    add(data)
            for trailer in self.trailers:
                add(trailer)
            add(b"")
        return b"".join(out) + self.after, line


@st.composite
def drafts(draw: st.DrawFn) -> Draft:
    """A valid request routed to a backend, with or without a body."""
    target, host = draw(st.sampled_from(ROUTED))
    # (HEAD is left to the corpus: gw's refusal of a malformed HEAD carries content, a NEW defect.)
    method = draw(st.sampled_from([b"GET", b"POST", b"PUT", b"DELETE", b"OPTIONS"]))
    version = draw(st.sampled_from([b"HTTP/1.1", b"HTTP/1.1", b"HTTP/1.1", b"HTTP/1.0"]))
    fields = [[b"Host", b": ", host]]
    for name, value in draw(
        st.lists(st.sampled_from([(b"User-Agent", b"fuzz"), (b"Accept", b"*/*"), (b"X-A", b"1")]), max_size=2)
    ):
        fields.append([name, b": ", value])
    if version == b"HTTP/1.0":
        fields.append([b"Connection", b": ", b"keep-alive"])
    content = draw(st.sampled_from([b"", b"hello", SMUGGLED, b"0\r\n\r\n"]) | st.binary(max_size=24))
    framing = draw(st.sampled_from(["length", "chunked"] if content else ["none", "none", "length", "chunked"]))
    if version == b"HTTP/1.0" and framing == "chunked":
        framing = "length"
    draft = Draft(method, target, version, fields, content, framing)
    if framing == "length":
        fields.append([b"Content-Length", b": ", b"%d" % len(content)])
    elif framing == "chunked":
        fields.append([b"Transfer-Encoding", b": ", b"chunked"])
        cut = draw(st.integers(0, len(content)))
        draft.chunks = [[b"%x" % len(p), b"", p] for p in (content[:cut], content[cut:]) if p] + [[b"0", b"", b""]]
    return draft


# -- mutations: each changes a draft in place ------------------------------------------------------

Mutation = Callable[[st.DrawFn, Draft], None]


def add_field(draw: st.DrawFn, d: Draft) -> None:
    name = draw(st.sampled_from(list(FIELD_VALUES)))
    d.fields.insert(
        draw(st.integers(min(1, len(d.fields)), len(d.fields))),
        [name, b": ", draw(st.sampled_from(FIELD_VALUES[name]))],
    )


def duplicate_field(draw: st.DrawFn, d: Draft) -> None:
    if not d.fields:
        return
    i = draw(st.integers(0, len(d.fields) - 1))
    d.fields.insert(draw(st.integers(i, len(d.fields))), list(d.fields[i]))


def delete_field(draw: st.DrawFn, d: Draft) -> None:
    """Any field but Host: an HTTP/1.0 request without one has no route, which the corpus covers."""
    others = [i for i, f in enumerate(d.fields) if f[0].lower() != b"host"]
    if others:
        del d.fields[draw(st.sampled_from(others))]


def recase_name(draw: st.DrawFn, d: Draft) -> None:
    if d.fields:
        f = d.fields[draw(st.integers(0, len(d.fields) - 1))]
        flips = draw(st.lists(st.booleans(), min_size=len(f[0]), max_size=len(f[0])))
        f[0] = bytes(c ^ 0x20 if flip and chr(c).isalpha() else c for c, flip in zip(f[0], flips, strict=True))


def connection_tokens(draw: st.DrawFn, d: Draft) -> None:
    tokens = draw(
        st.lists(
            st.sampled_from(
                [b"close", b"keep-alive", b"upgrade", b"x-a", b"te", b"trailer", b"Transfer-Encoding", b"expect"]
            ),
            min_size=1,
            max_size=3,
        )
    )
    d.fields.append([b"Connection", b": ", b", ".join(tokens)])


def reframe(draw: st.DrawFn, d: Draft) -> None:
    """Content-Length and Transfer-Encoding values, and the two together."""
    n = len(d.content)
    length = draw(
        st.sampled_from(
            [b"%d" % (n + draw(st.integers(-3, 3))) if n > 3 else b"%d" % n, b"0%d" % n, b"%d, %d" % (n, n), b"+%d" % n]
        )
    )
    coding = draw(st.sampled_from(FIELD_VALUES[b"Transfer-Encoding"]))
    how = draw(st.sampled_from(["length", "coding", "both"]))
    if how in ("length", "both"):
        d.fields.append([b"Content-Length", b": ", length])
    if how in ("coding", "both"):
        d.fields.append([b"Transfer-Encoding", b": ", coding])


def rechunk(draw: st.DrawFn, d: Draft) -> None:
    """Chunk sizes written otherwise (padded, upper case, off by a little) and chunk extensions."""
    if not d.chunks:
        return
    c = d.chunks[draw(st.integers(0, len(d.chunks) - 1))]
    n = int(c[0], 16)
    c[0] = draw(st.sampled_from([b"%X" % n, b"000%x" % n, b"%x" % max(0, n + draw(st.integers(-2, 2))), b"%x" % n]))
    c[1] = draw(st.sampled_from(CHUNK_EXTS))
    if draw(st.booleans()):
        d.trailers.append(draw(st.sampled_from([b"X-Sum: 1", b"Content-Length: 5", b"X-A : 1"])))


def whitespace(draw: st.DrawFn, d: Draft) -> None:
    """Whitespace where it changes meaning: before the colon, folding a line, in the request line."""
    where = draw(st.sampled_from(["before-colon", "fold", "value", "request-line"]))
    if where == "request-line":
        # (Two spaces meet a NEW defect the corpus holds: gw forwards or accepts them, depending
        # on how the bytes arrive.)
        d.line_sep = draw(st.sampled_from([b"\t", b" \t", b"\t ", b"\x0b"]))
        return
    if not d.fields:
        return
    f = d.fields[draw(st.integers(0, len(d.fields) - 1))]
    ws = draw(st.sampled_from([b" ", b"\t"]))
    if where == "before-colon":
        f[1] = ws + f[1]
    elif where == "fold":
        f[1] = b":\r\n" + ws
    elif f[0].lower() not in (b"host", b"connection"):
        # (An invalid Host is issue 11 item 3, an invalid Connection a NEW defect in the corpus.)
        f[2] = f[2] + ws + draw(st.sampled_from([b"", b"x"]))


def line_ending(draw: st.DrawFn, d: Draft) -> None:
    d.eols[draw(st.integers(0, d.lines() - 1))] = draw(st.sampled_from(EOLS))


MUTATIONS: list[Mutation] = [
    add_field,
    duplicate_field,
    delete_field,
    recase_name,
    connection_tokens,
    reframe,
    rechunk,
    whitespace,
    line_ending,
]


@st.composite
def mutated(draw: st.DrawFn, defect: Mutation | None = None) -> bytes:
    """One to three pipelined drafts, each mutated up to four times; `defect`, if given, is
    applied to one of them last."""
    sequence = draw(st.lists(drafts(), min_size=1, max_size=3))
    for d in sequence:
        for mutation in draw(st.lists(st.sampled_from(MUTATIONS), max_size=4)):
            mutation(draw, d)
    # (An HTTP/1.0 request whose Connection says both close and keep-alive meets a NEW defect
    # the corpus holds: gw keeps the connection.)
    assume(not any(d.version == b"HTTP/1.0" and {b"close", b"keep-alive"} <= _connection_tokens(d) for d in sequence))
    if defect is not None:
        defect(draw, sequence[draw(st.integers(0, len(sequence) - 1))])
    tail = draw(st.sampled_from([b"", b"", SMUGGLED]))
    return b"".join(d.encode() for d in sequence) + tail


def _connection_tokens(d: Draft) -> set[bytes]:
    return {
        t.strip(b" \t").lower()
        for name, _, value in d.fields
        if name.lower() == b"connection"
        for t in value.split(b",")
    }


# -- the known defects' mutations (issue 11), one fuzzer each --------------------------------------


def connection_names_framing(draw: st.DrawFn, d: Draft) -> None:
    name = draw(st.sampled_from([b"content-length", b"Content-Length", b"host", b"HOST"]))
    tokens = draw(st.permutations([name, draw(st.sampled_from([b"close", b"keep-alive", b"x-a"]))]))
    d.fields.append([b"Connection", b": ", b", ".join(tokens)])
    if d.framing != "length" and name.lower() == b"content-length":
        d.content, d.framing = SMUGGLED, "length"
        d.fields = [f for f in d.fields if f[0].lower() != b"transfer-encoding"]
        d.fields.append([b"Content-Length", b": ", b"%d" % len(SMUGGLED)])


def empty_host(draw: st.DrawFn, d: Draft) -> None:
    d.target = b"/any/x"
    d.fields = [f if f[0].lower() != b"host" else [f[0], f[1], b""] for f in d.fields]


def invalid_host(draw: st.DrawFn, d: Draft) -> None:
    d.target = b"/any/x"
    bad = draw(
        st.sampled_from([b"a b", b"example.test/admin", b"u@example.test", b"example.test:8o", b"[::1", b"a,b c"])
    )
    d.fields = [f if f[0].lower() != b"host" else [f[0], f[1], bad] for f in d.fields]


def encoded_dot_segments(draw: st.DrawFn, d: Draft) -> None:
    d.target = draw(
        st.sampled_from(
            [b"/public/%2e%2e/admin/x", b"/public/%2E%2E/admin", b"/public/.%2e/admin", b"/a/%2e%2e/%2e%2e/admin"]
        )
    )
    d.fields = [f if f[0].lower() != b"host" else [f[0], f[1], b"example.test"] for f in d.fields]


def huge_length(draw: st.DrawFn, d: Draft) -> None:
    d.fields = [f for f in d.fields if f[0].lower() not in (b"content-length", b"transfer-encoding")]
    d.fields.append([b"Content-Length", b": ", b"%d" % draw(st.integers(2**63, 2**64 - 1))])
    d.content, d.framing = b"hello", "length"


def http2_request_line(draw: st.DrawFn, d: Draft) -> None:
    d.version = draw(st.sampled_from([b"HTTP/2.0", b"HTTP/3.0", b"HTTP/2.1"]))


def h2c_then_bad_request(draw: st.DrawFn, d: Draft) -> None:
    d.fields.append([b"Connection", b": ", b"Upgrade, HTTP2-Settings"])
    d.fields.append([b"Upgrade", b": ", b"h2c"])
    d.fields.append([b"HTTP2-Settings", b": ", b"AAMAAABkAARAAAAAAAIAAAAA"])
    d.version = b"HTTP/1.1"
    d.after = draw(
        st.sampled_from([b"GET /y HTTP/1.1\r\n\r\n", b"GET /y HTTP/1.1\r\nHost: example.test\r\nX: a\x00b\r\n\r\n"])
    )


DEFECTS = {
    1: connection_names_framing,
    2: empty_host,
    3: invalid_host,
    4: encoded_dot_segments,
    5: huge_length,
    6: http2_request_line,
    8: h2c_then_bad_request,
}


@pytest.fixture(scope="module")
def desync(module_desync: Desync) -> Desync:
    return module_desync


@FUZZ
@given(data=mutated())
def test_mutated_requests_reach_the_upstream_exactly_as_framed(desync: Desync, data: bytes) -> None:
    desync.run(data).check()


@pytest.mark.parametrize(
    "item",
    [
        pytest.param(item, marks=pytest.mark.xfail(strict=True, reason=KNOWN[item]) if KNOWN[item] else ())
        for item in DEFECTS
    ],
)
@KNOWN_FUZZ
@given(st.data())
def test_known_defect_mutations(desync: Desync, item: int, data: st.DataObject) -> None:
    desync.run(data.draw(mutated(DEFECTS[item]))).check()


def test_gateway_survived_the_fuzzing(desync: Desync) -> None:
    assert desync.gw.alive()
