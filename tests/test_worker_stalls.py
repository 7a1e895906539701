"""A worker that was stopped (SIGSTOP, a frozen container) or starved does not take the time it
lost for upstream latency: an answer that arrived meanwhile is passed on, not replaced by a 504."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import psutil
import pytest

from tests.support.gateway import GatewayProcess, http_request, wire
from tests.support.servers import Peer, ScriptedServer, launch_gateway

RESPONSE_TIMEOUT = 1.0  # GW_UPSTREAM_RESPONSE_TIMEOUT of the gateway below


@dataclass
class AnswerOnCue:
    """An upstream that answers when `cue` is set and says when its answer is in the gateway's socket."""

    cue: threading.Event = field(default_factory=threading.Event)
    answered: threading.Event = field(default_factory=threading.Event)

    def __call__(self, peer: Peer) -> None:
        self.cue.wait(30)
        peer.sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        self.answered.set()  # (sendall returned: on loopback the bytes are in the receiving socket)
        peer.wait_for_close()


@dataclass
class Setup:
    gateway: GatewayProcess
    upstream: ScriptedServer
    script: AnswerOnCue


@pytest.fixture
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    script = AnswerOnCue()
    upstream = ScriptedServer(script)
    gateway = launch_gateway(
        tmp_path_factory.mktemp("stalls"),
        {"up": [("127.0.0.1", upstream.port)]},
        [{"name": "all", "rules": [{"backendRefs": [{"backend": "up"}]}]}],
        env={"GW_UPSTREAM_RESPONSE_TIMEOUT": f"{RESPONSE_TIMEOUT}s"},
    )
    yield Setup(gateway, upstream, script)
    gateway.stop()
    upstream.stop()


def wait_for_status(process: psutil.Process, status: str) -> None:
    deadline = time.monotonic() + 10
    while process.status() != status:
        assert time.monotonic() < deadline, f"the worker is {process.status()}, not {status}"
        time.sleep(0.01)


def test_an_answer_that_arrived_while_the_worker_was_stopped_is_passed_on(setup: Setup) -> None:
    worker = psutil.Process(setup.gateway.worker_pid)
    client = wire(setup.gateway, timeout=15)
    client.send(http_request("GET", "/slow"))
    assert setup.upstream.connected.wait(10)  # the request is with the upstream, its deadline running
    wait_for_status(worker, psutil.STATUS_SLEEPING)  # idle in its poll, as a stop usually finds it
    os.kill(worker.pid, signal.SIGSTOP)
    try:
        wait_for_status(worker, psutil.STATUS_STOPPED)
        setup.script.cue.set()
        assert setup.script.answered.wait(10)
        # The stop itself is the scenario: it outlasts the response deadline, set when the request
        # was sent (all of it spent stopped, none of it waiting for the upstream).
        time.sleep(RESPONSE_TIMEOUT + 0.5)
    finally:
        os.kill(worker.pid, signal.SIGCONT)
    resp = client.read_response()
    assert resp.status == 200, resp.body
    assert resp.body == b"ok"


def test_a_short_stop_across_the_deadline_passes_on_an_answer_that_came_before_it(setup: Setup) -> None:
    """A stop shorter than a sweep interval, across the response deadline: the answer came in time
    (before the deadline, during the stop), so it is passed on, whichever comes first on SIGCONT."""
    worker = psutil.Process(setup.gateway.worker_pid)
    client = wire(setup.gateway, timeout=15)
    sent = time.monotonic()
    client.send(http_request("GET", "/slow"))
    assert setup.upstream.connected.wait(10)
    # The stop is the scenario: from just before the deadline to just after it.
    time.sleep(max(0.0, RESPONSE_TIMEOUT - 0.08 - (time.monotonic() - sent)))
    os.kill(worker.pid, signal.SIGSTOP)
    try:
        wait_for_status(worker, psutil.STATUS_STOPPED)
        setup.script.cue.set()
        assert setup.script.answered.wait(10)
        answered = time.monotonic() - sent
        time.sleep(max(0.0, RESPONSE_TIMEOUT + 0.12 - (time.monotonic() - sent)))
    finally:
        os.kill(worker.pid, signal.SIGCONT)
    resp = client.read_response()
    if answered < RESPONSE_TIMEOUT:  # (on a machine too loaded to answer in time, a 504 is right)
        assert resp.status == 200, (answered, resp.body)


def test_an_upstream_silent_through_the_stop_still_times_out(setup: Setup) -> None:
    """The sweep after a stop waits one poll, not the length of the stop."""
    worker = psutil.Process(setup.gateway.worker_pid)
    client = wire(setup.gateway, timeout=15)
    client.send(http_request("GET", "/silent"))
    assert setup.upstream.connected.wait(10)
    wait_for_status(worker, psutil.STATUS_SLEEPING)
    os.kill(worker.pid, signal.SIGSTOP)
    try:
        wait_for_status(worker, psutil.STATUS_STOPPED)
        time.sleep(RESPONSE_TIMEOUT + 0.5)
    finally:
        os.kill(worker.pid, signal.SIGCONT)
    assert client.read_response().status == 504
    setup.script.cue.set()  # let the upstream's script end
