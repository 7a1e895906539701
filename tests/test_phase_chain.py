"""The phase chain (gw.policies.phase): order, answers, wait and resume in place, failures.

The worker's data plane runs in this test's event loop with test phases in its registry: real
listening socket, real client connections, a real upstream server.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson
import pytest

from gw.config import load_text
from gw.policies.phase import ANSWERED, CONTINUE, WAIT, Exchange, Fields, Phase
from gw.policies.registry import PHASES, Build
from gw.proxy.dataplane import DataPlane
from gw.proxy.downstream import ClientConnection
from gw.settings import Settings
from tests.support import route_echo
from tests.support.gateway import config_yaml, free_port
from tests.support.upstream import Upstream

Log = list[tuple[str, str]]


class Recording(Phase):
    """Notes every hook it is called at; optionally sets or reads the caller's identity."""

    def __init__(self, name: str, log: Log) -> None:
        self.name = name
        self.log = log

    def on_request(self, ex: Exchange) -> int:
        self.log.append((self.name, f"request identity={ex.identity}"))
        if ex.identity is None:
            ex.identity = self.name  # what an authentication phase would establish
        return CONTINUE

    def on_upstream_request(self, ex: Exchange) -> None:
        self.log.append((self.name, "upstream"))
        ex.edit_fields().append((b"X-Phase", self.name.encode()))

    def on_response_head(self, ex: Exchange, fields: Fields) -> None:
        self.log.append((self.name, "response"))
        fields.append((b"X-Phase", self.name.encode()))

    def on_done(self, ex: Exchange, status: int) -> None:
        self.log.append((self.name, f"done {status}"))


class Answering(Phase):
    def on_request(self, ex: Exchange) -> int:
        ex.answer(299, [(b"X-Answered-By", b"test")])
        return ANSWERED


class Waiting(Phase):
    """Returns WAIT and hands the exchange to the test, which resumes it when it likes."""

    def __init__(self, waiting: asyncio.Queue[Exchange]) -> None:
        self.waiting = waiting

    def on_request(self, ex: Exchange) -> int:
        self.waiting.put_nowait(ex)
        return WAIT


class Raising(Phase):
    def __init__(self, hook: str) -> None:
        self.hook = hook

    def on_request(self, ex: Exchange) -> int:
        if self.hook == "request" and ex.path == "/boom":
            raise RuntimeError("a bug in a request phase")
        return CONTINUE

    def on_response_head(self, ex: Exchange, fields: Fields) -> None:
        if self.hook == "response" and ex.path == "/boom":
            raise RuntimeError("a bug in a response phase")


class Pinning(Phase):
    """Sends the exchange to the endpoint whose port the query names (`?to=<port>`), as a session
    phase pins a session: it chooses the backendRef and the endpoint; the balancer is skipped."""

    def on_request(self, ex: Exchange) -> int:
        if ex.query.startswith(b"to="):
            port = int(ex.query[3:])
            for ref in ex.rule.backend_refs:
                for endpoint in ref.backend.endpoints:
                    if endpoint.port == port:
                        ex.ref, ex.pin = ref, endpoint
        return CONTINUE

    def on_response_head(self, ex: Exchange, fields: Fields) -> None:
        fields.append((b"X-Sent-To", str(ex.endpoint.port).encode()))


class Adding(Phase):
    """Adds a response field carrying the request's query, when it has one (as CORS does for an Origin)."""

    def on_request(self, ex: Exchange) -> int:
        if ex.query:
            ex.add_response_fields([(b"X-Added", ex.query)])
        return CONTINUE


class Watching(Phase):
    """Reads the response of the exchanges that ask for it (`?watch`), as a Header session reads the
    id the application issues to a request that had none."""

    response_on_demand = True

    def __init__(self) -> None:
        self.watched: list[bytes] = []

    def on_request(self, ex: Exchange) -> int:
        if ex.query == b"watch":
            ex.want_response_head()
        return CONTINUE

    def on_response_head(self, ex: Exchange, fields: Fields) -> None:
        self.watched.append(ex.query)
        fields.append((b"X-Watched", b"yes"))


def every_rule(phase: Phase) -> Build:
    return lambda rule, services: phase


def only_path(path: str, phase: Phase) -> Build:
    """A phase for the rule whose match is `path` (the test routes name their rules by path)."""
    return lambda rule, services: phase if rule.name == path.strip("/") else None


Serve = Callable[..., Any]


class Served:
    def __init__(self, port: int, plane: DataPlane) -> None:
        self.port = port
        self.plane = plane


@pytest.fixture
async def serve(upstream: Upstream) -> AsyncIterator[Serve]:
    """serve(*phases) → the port of a data plane whose registry is PHASES followed by `phases`."""
    started: list[tuple[DataPlane, asyncio.Server]] = []

    async def start(
        *phases: tuple[str, Build],
        paths: tuple[str, ...] = ("/free", "/chained"),
        env: dict[str, str] | None = None,
        endpoints: list[tuple[str, int]] | None = None,
    ) -> Served:
        port = free_port()
        rules = [
            {"name": p.strip("/"), "matches": [{"path": {"type": "PathPrefix", "value": p}}],
             "backendRefs": [{"backend": "up"}]}
            for p in paths
        ]  # fmt: skip
        backends = {"up": endpoints or [("127.0.0.1", upstream.port)]}
        config = load_text(config_yaml(port, backends, [{"name": "r", "rules": rules}]))
        assert not config.errors, config.errors
        loop = asyncio.get_running_loop()
        plane = DataPlane(loop, Settings.from_env({"GW_ACCESS_LOG": "off", **(env or {})}), (*PHASES, *phases))
        plane.install(config.config)
        plane.start()
        server = await loop.create_server(lambda: ClientConnection(plane, port, port), "127.0.0.1", port)
        started.append((plane, server))
        return Served(port, plane)

    yield start
    for plane, server in started:
        server.close()
        plane.stop()


async def fetch(served: Served, path: str) -> tuple[int, list[tuple[str, str]], bytes]:
    """One GET on a fresh connection: status, fields, body."""
    reader, writer = await asyncio.open_connection("127.0.0.1", served.port)
    try:
        writer.write(b"GET %s HTTP/1.1\r\nHost: example.test\r\nConnection: close\r\n\r\n" % path.encode())
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head[:-4].decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ")[1])
        fields = [(n.strip().lower(), v.strip()) for n, v in (line.split(":", 1) for line in lines[1:])]
        length = int(next((v for n, v in fields if n == "content-length"), "0"))
        body = await reader.readexactly(length) if length else b""
        return status, fields, body
    finally:
        writer.close()


def values(fields: list[tuple[str, str]], name: str) -> list[str]:
    return [v for n, v in fields if n == name]


async def test_a_rule_that_nothing_applies_to_has_no_chain(serve: Serve, upstream: Upstream) -> None:
    log: Log = []
    port = await serve(("recording", only_path("/chained", Recording("a", log))))
    status, _, _ = await fetch(port, "/free")
    assert status == 200 and log == [] and len(upstream.seen) == 1


async def test_phases_run_in_registry_order_at_every_moment(serve: Serve, upstream: Upstream) -> None:
    log: Log = []
    port = await serve(("first", only_path("/chained", Recording("a", log))),
                       ("second", only_path("/chained", Recording("b", log))))  # fmt: skip
    status, fields, _ = await fetch(port, "/chained")
    assert status == 200
    assert log == [
        ("a", "request identity=None"),
        ("b", "request identity=a"),  # a later phase reads what an earlier one established
        ("a", "upstream"),
        ("b", "upstream"),
        ("a", "response"),
        ("b", "response"),
        ("a", "done 200"),
        ("b", "done 200"),
    ]
    assert upstream.seen[0].header_list("X-Phase") == ["a", "b"]  # edits reached the upstream, in order
    assert values(fields, "x-phase") == ["a", "b"]


async def test_a_phase_that_answers_stops_the_chain_and_nothing_goes_upstream(
    serve: Serve, upstream: Upstream
) -> None:
    log: Log = []
    port = await serve(("answering", only_path("/chained", Answering())),
                       ("later", only_path("/chained", Recording("later", log))))  # fmt: skip
    status, fields, _ = await fetch(port, "/chained")
    assert status == 299 and values(fields, "x-answered-by") == ["test"]
    assert log == [("later", "done 299")]  # only the outcome: no request, upstream or response hook
    assert upstream.seen == []


async def test_a_waiting_phase_resumes_in_place(serve: Serve, upstream: Upstream) -> None:
    log: Log = []
    waiting: asyncio.Queue[Exchange] = asyncio.Queue()
    port = await serve(("before", only_path("/chained", Recording("before", log))),
                       ("waiting", only_path("/chained", Waiting(waiting))),
                       ("after", only_path("/chained", Recording("after", log))))  # fmt: skip
    response = asyncio.ensure_future(fetch(port, "/chained"))
    ex = await waiting.get()
    assert log == [("before", "request identity=None")] and upstream.seen == []
    ex.resume()
    status, _, _ = await response
    assert status == 200 and len(upstream.seen) == 1
    # Nothing before the waiting phase ran again; the phase after it ran once.
    requests = [entry for entry in log if entry[1].startswith("request")]
    assert requests == [("before", "request identity=None"), ("after", "request identity=before")]


async def test_a_resume_after_the_client_left_does_nothing(serve: Serve, upstream: Upstream) -> None:
    waiting: asyncio.Queue[Exchange] = asyncio.Queue()
    port = await serve(("waiting", only_path("/chained", Waiting(waiting))))
    _, writer = await asyncio.open_connection("127.0.0.1", port.port)
    writer.write(b"GET /chained HTTP/1.1\r\nHost: example.test\r\n\r\n")
    ex = await waiting.get()
    # A reset, not a FIN: a client that only half-closes still gets its response.
    writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.close()
    async with asyncio.timeout(10):
        while port.plane.connections:  # until the data plane's connection_lost for it
            await asyncio.sleep(0.01)
    ex.resume()
    status, _, _ = await fetch(port, "/free")  # the worker serves on
    assert status == 200 and [s.target for s in upstream.seen] == ["/free"]


@pytest.mark.parametrize("hook", ["request", "response"])
async def test_an_exception_in_a_phase_is_a_500_and_the_worker_serves_on(
    serve: Serve, upstream: Upstream, hook: str, capfd: pytest.CaptureFixture[str]
) -> None:
    port = await serve(("raising", every_rule(Raising(hook))), paths=("/boom", "/fine"))
    status, fields, body = await fetch(port, "/boom")
    assert status == 500 and values(fields, "content-type") == ["application/problem+json"]
    problem = orjson.loads(body)
    assert problem["type"] == "urn:gw:problem:internal-error" and "RuntimeError" not in problem["detail"]
    assert f"a bug in a {hook} phase" in capfd.readouterr().err  # said once, in the worker's log
    status, _, _ = await fetch(port, "/fine")
    assert status == 200


async def test_the_example_phase_echoes_the_route_it_matched(serve: Serve) -> None:
    """tests/support/route_echo.py: a phase written as a module and one registry line."""
    port = await serve(("route-echo", route_echo.build))
    status, fields, _ = await fetch(port, "/chained")
    assert status == 200 and values(fields, "x-route") == ["default/r"]


async def test_added_response_fields_belong_to_their_own_response(serve: Serve) -> None:
    """Fields a phase adds go on the response head the upstream's answer reuses from one response to
    the next on a connection: each response carries its own request's fields, and only those."""
    served = await serve(("adding", every_rule(Adding())))
    reader, writer = await asyncio.open_connection("127.0.0.1", served.port)
    try:
        seen = []
        for query in (b"?one", b"", b"?three"):
            writer.write(b"GET /chained%s HTTP/1.1\r\nHost: example.test\r\n\r\n" % query)
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head[:-4].decode("latin-1").split("\r\n")
            assert lines[0].startswith("HTTP/1.1 200")
            fields = [(n.strip().lower(), v.strip()) for n, v in (line.split(":", 1) for line in lines[1:])]
            await reader.readexactly(int(values(fields, "content-length")[0]))
            seen.append(values(fields, "x-added"))
        assert seen == [["one"], [], ["three"]]
    finally:
        writer.close()


async def test_an_on_demand_response_phase_sees_only_the_responses_asked_for(serve: Serve) -> None:
    """On one connection (the proxy reuses the last response head): the exchanges that asked go
    through the phase, the others take the reused head untouched."""
    watching = Watching()
    served = await serve(("watching", every_rule(watching)))
    reader, writer = await asyncio.open_connection("127.0.0.1", served.port)
    try:
        seen = []
        for query in (b"", b"?watch", b"", b"", b"?watch", b""):
            writer.write(b"GET /chained%s HTTP/1.1\r\nHost: example.test\r\n\r\n" % query)
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head[:-4].decode("latin-1").split("\r\n")
            assert lines[0].startswith("HTTP/1.1 200")
            fields = [(n.strip().lower(), v.strip()) for n, v in (line.split(":", 1) for line in lines[1:])]
            await reader.readexactly(int(values(fields, "content-length")[0]))
            seen.append(values(fields, "x-watched"))
        assert seen == [[], ["yes"], [], [], ["yes"], []]
        assert watching.watched == [b"watch", b"watch"]
    finally:
        writer.close()


async def test_a_phase_that_never_decides_is_a_504_and_the_connection_serves_on(serve: Serve) -> None:
    """A waiting phase has a backstop deadline (GW_UPSTREAM_RESPONSE_TIMEOUT): a 504 that is no
    attempt, so no retry can skip the phases after it."""
    waiting: asyncio.Queue[Exchange] = asyncio.Queue()
    served = await serve(
        ("waiting", only_path("/chained", Waiting(waiting))), env={"GW_UPSTREAM_RESPONSE_TIMEOUT": "300ms"}
    )
    status, _, body = await fetch(served, "/chained")
    assert status == 504 and orjson.loads(body)["type"] == "urn:gw:problem:phase-timeout"
    assert waiting.qsize() == 1  # it was asked once
    status, _, _ = await fetch(served, "/free")
    assert status == 200


async def test_a_phase_may_pin_the_endpoint_and_the_balancer_is_skipped(serve: Serve, upstream: Upstream) -> None:
    other = Upstream("other").start()
    try:
        served = await serve(("pinning", only_path("/chained", Pinning())),
                             endpoints=[("127.0.0.1", upstream.port), ("127.0.0.1", other.port)])  # fmt: skip
        for _ in range(4):  # round robin would alternate; the pin holds
            status, fields, _ = await fetch(served, f"/chained?to={other.port}")
            assert status == 200 and values(fields, "x-sent-to") == [str(other.port)]
        assert len(other.seen) == 4 and upstream.seen == []
        status, _, _ = await fetch(served, "/chained")
        status2, _, _ = await fetch(served, "/chained")
        assert (status, status2) == (200, 200) and len(upstream.seen) == 1  # unpinned: balanced again
    finally:
        other.stop()
