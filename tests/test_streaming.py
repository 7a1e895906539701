"""Bodies stream through one worker in bounded memory, both ways and in both framings, with
back-pressure; server-sent events are passed on as they arrive, never buffered."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httptools
import psutil
import pytest

from tests.support.gateway import Client, GatewayProcess
from tests.support.servers import Peer, ScriptedServer, launch_gateway
from tests.support.upstream import PATTERN, Upstream, pattern_sha256

MiB = 1 << 20
GiB = 1 << 30
RSS_BOUND = 50_000_000  # bytes the worker's RSS may grow by while a body streams through it
SAMPLE_EVERY = 16  # MiB between RSS samples
PAUSED_BODY = 512 * MiB

pytestmark = pytest.mark.slow


class RssWatch:
    """The gateway process's resident set size: a baseline, then the highest sample since."""

    def __init__(self, pid: int) -> None:
        self.process = psutil.Process(pid)
        self.baseline = self.process.memory_info().rss
        self.peak = self.baseline
        self.samples = 0

    def sample(self) -> int:
        rss = self.process.memory_info().rss
        self.peak = max(self.peak, rss)
        self.samples += 1
        return rss - self.baseline

    @property
    def growth(self) -> int:
        return self.peak - self.baseline


def serve_paused_body(peer: Peer) -> None:
    peer.sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % PAUSED_BODY)
    peer.send_pattern(PAUSED_BODY)


@dataclass
class Setup:
    gateway: GatewayProcess
    upstream: Upstream
    source: ScriptedServer


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    upstream = Upstream("up").start()
    source = ScriptedServer(serve_paused_body)
    gateway = launch_gateway(
        tmp_path_factory.mktemp("streaming"),
        {"up": [("127.0.0.1", upstream.port)], "source": [("127.0.0.1", source.port)]},
        [
            {"name": "all", "rules": [{"backendRefs": [{"backend": "up"}]}]},
            {"name": "paused", "hostnames": ["paused.test"], "rules": [{"backendRefs": [{"backend": "source"}]}]},
        ],
        env={"GW_ACCESS_LOG": "off"},
    )
    # One exchange first, so the baseline includes what any request allocates once.
    warm = gateway.connect()
    assert warm.request("POST", "/echo", body=PATTERN).status == 200
    warm.close()
    yield Setup(gateway, upstream, source)
    gateway.stop()
    source.stop()
    upstream.stop()


@pytest.fixture(scope="module")
def sha_1gib() -> str:
    return pattern_sha256(GiB)


def upload(client: Client, watch: RssWatch, *, chunked: bool) -> dict[str, object]:
    framing = b"Transfer-Encoding: chunked" if chunked else b"Content-Length: %d" % GiB
    client.send(b"POST /echo HTTP/1.1\r\nHost: example.test\r\n" + framing + b"\r\n\r\n")
    piece = b"%x\r\n%b\r\n" % (MiB, PATTERN) if chunked else PATTERN
    for i in range(GiB // MiB):
        client.sock.sendall(piece)
        if i % SAMPLE_EVERY == 0:
            watch.sample()
    if chunked:
        client.send(b"0\r\n\r\n")
    resp = client.read_response()
    assert resp.status == 200
    return json.loads(resp.body)  # type: ignore[no-any-return]


class BodyDigest:
    """httptools callbacks: hash the body on the fly, sampling RSS as it goes."""

    def __init__(self, watch: RssWatch | None = None) -> None:
        self.watch = watch
        self.digest = hashlib.sha256()
        self.size = 0
        self.next_sample = 0
        self.headers: dict[str, str] = {}
        self.status = 0
        self.complete = False

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.decode().lower()] = value.decode()

    def on_body(self, body: bytes) -> None:
        self.digest.update(body)
        self.size += len(body)
        if self.watch is not None and self.size >= self.next_sample:
            self.watch.sample()
            self.next_sample += SAMPLE_EVERY * MiB

    def on_message_complete(self) -> None:
        self.complete = True


def download(client: Client, path: str, body: BodyDigest, *, until: int | None = None) -> None:
    """Read the response to `GET path` into `body`; stop early once `until` body bytes arrived."""
    parser = body.parser = httptools.HttpResponseParser(body)  # type: ignore[attr-defined]
    client.send(f"GET {path} HTTP/1.1\r\nHost: example.test\r\n\r\n".encode())
    resume(client, parser, body, until=until)


def resume(client: Client, parser: httptools.HttpResponseParser, body: BodyDigest, *, until: int | None = None) -> None:
    while not body.complete and (until is None or body.size < until):
        data = client.sock.recv(4 * MiB)
        if not data:
            raise ConnectionError(f"connection closed after {body.size} body bytes")
        parser.feed_data(data)
    body.status = parser.get_status_code()


# -- 1 GiB through one worker ------------------------------------------------------------------


def test_1gib_upload_with_content_length_streams_in_bounded_memory(setup: Setup, sha_1gib: str) -> None:
    client = setup.gateway.connect(timeout=60)
    watch = RssWatch(setup.gateway.worker_pid)
    echoed = upload(client, watch, chunked=False)
    assert echoed["body_bytes"] == GiB
    assert echoed["body_sha256"] == sha_1gib
    assert watch.growth < RSS_BOUND, f"RSS grew by {watch.growth / MiB:.1f} MiB"


def test_1gib_chunked_upload_streams_in_bounded_memory(setup: Setup, sha_1gib: str) -> None:
    client = setup.gateway.connect(timeout=60)
    watch = RssWatch(setup.gateway.worker_pid)
    echoed = upload(client, watch, chunked=True)
    assert echoed["body_bytes"] == GiB
    assert echoed["body_sha256"] == sha_1gib
    assert watch.growth < RSS_BOUND, f"RSS grew by {watch.growth / MiB:.1f} MiB"


def test_1gib_download_with_content_length_streams_in_bounded_memory(setup: Setup, sha_1gib: str) -> None:
    client = setup.gateway.connect(timeout=60)
    watch = RssWatch(setup.gateway.worker_pid)
    body = BodyDigest(watch)
    download(client, f"/bytes/{GiB}", body)
    assert body.status == 200
    assert body.headers["content-length"] == str(GiB)
    assert body.size == GiB
    assert body.digest.hexdigest() == sha_1gib
    assert watch.growth < RSS_BOUND, f"RSS grew by {watch.growth / MiB:.1f} MiB"


def test_1gib_chunked_download_streams_in_bounded_memory(setup: Setup, sha_1gib: str) -> None:
    client = setup.gateway.connect(timeout=60)
    watch = RssWatch(setup.gateway.worker_pid)
    body = BodyDigest(watch)
    download(client, f"/chunked/{GiB}", body)
    assert body.status == 200
    assert body.headers["transfer-encoding"] == "chunked"
    assert body.size == GiB
    assert body.digest.hexdigest() == sha_1gib
    assert watch.growth < RSS_BOUND, f"RSS grew by {watch.growth / MiB:.1f} MiB"


# -- back-pressure -------------------------------------------------------------------------------


def wait_until_stalled(peer: Peer, timeout: float = 20.0) -> None:
    """Wait until the upstream's writes stop making progress (its send buffer stays full).

    Nothing signals the absence of progress, so this polls, bounded by `timeout`.
    """
    deadline = time.monotonic() + timeout
    last, still = -1, 0
    while time.monotonic() < deadline:
        sent = peer.sent
        still = still + 1 if sent == last else 0
        if still >= 3:
            return
        last = sent
        time.sleep(0.2)
    raise AssertionError(f"the upstream never stalled: {peer.sent} of {PAUSED_BODY} bytes sent")


def test_client_that_stops_reading_stalls_the_upstream_instead_of_being_buffered(setup: Setup) -> None:
    client = setup.gateway.connect(timeout=30)
    watch = RssWatch(setup.gateway.worker_pid)
    body = BodyDigest()
    client.send(b"GET /big HTTP/1.1\r\nHost: paused.test\r\n\r\n")
    parser = httptools.HttpResponseParser(body)
    resume(client, parser, body, until=4 * MiB)  # read a few MiB, then stop reading
    assert setup.source.connected.wait(10)
    peer = setup.source.peers[-1]
    wait_until_stalled(peer)
    paused_growth = watch.sample()
    assert peer.sent < PAUSED_BODY / 4, f"{peer.sent} bytes left the upstream while the client read none"
    assert paused_growth < RSS_BOUND, f"RSS grew by {paused_growth / MiB:.1f} MiB while the client paused"
    resume(client, parser, body)
    assert body.status == 200
    assert body.size == PAUSED_BODY
    assert body.digest.hexdigest() == pattern_sha256(PAUSED_BODY)


# -- server-sent events --------------------------------------------------------------------------


def read_until(client: Client, marker: bytes) -> bytes:
    """Read until `marker` has arrived (the socket timeout bounds the wait); returns all read."""
    data = client.buffer
    client.buffer = b""
    while marker not in data:
        got = client.sock.recv(65536)
        if not got:
            raise ConnectionError(f"connection closed before {marker!r}; got {data!r}")
        data += got
    return data


def test_server_sent_event_reaches_the_client_before_the_next_is_produced(
    setup: Setup,
) -> None:
    client = setup.gateway.connect(timeout=10)
    client.send(b"GET /sse/sse-first HTTP/1.1\r\nHost: example.test\r\nAccept: text/event-stream\r\n\r\n")
    first = read_until(client, b"data: first\n\n")  # the upstream holds the second event back
    assert first.startswith(b"HTTP/1.1 200")
    assert b"text/event-stream" in first.lower()
    assert b"second" not in first
    setup.upstream.open_gate("sse-first")
    rest = read_until(client, b"\r\n0\r\n\r\n")
    assert b"data: second\n\n" in rest
