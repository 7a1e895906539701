"""One active health probe (gw.balancing.probe) against real upstream servers."""

from __future__ import annotations

from gw.balancing.probe import ERROR, FAIL, PASS, probe_http, probe_tcp
from tests.support.gateway import free_port
from tests.support.servers import BlackholeListener
from tests.support.upstream import Upstream


async def test_an_expected_status_passes_and_the_request_says_what_it_is(upstream: Upstream) -> None:
    result = await probe_http("127.0.0.1", upstream.port, path="/status/204?from=probe", expected=(200, 204))
    assert (result.result, result.why) == (PASS, "status 204")
    seen = upstream.seen[-1]
    assert (seen.method, seen.target, seen.version) == ("GET", "/status/204?from=probe", "HTTP/1.1")
    assert seen.header("host") == f"127.0.0.1:{upstream.port}"
    assert seen.header("connection") == "close"


async def test_another_status_fails(upstream: Upstream) -> None:
    result = await probe_http("127.0.0.1", upstream.port, path="/status/500")
    assert (result.result, result.why, result.passed) == (FAIL, "status 500", False)


async def test_the_method_and_hostname_are_the_checks(upstream: Upstream) -> None:
    result = await probe_http("127.0.0.1", upstream.port, path="/status/200", method="HEAD", hostname="api.internal")
    assert result.passed
    assert (upstream.seen[-1].method, upstream.seen[-1].header("host")) == ("HEAD", "api.internal")


async def test_a_refused_connection_is_an_error() -> None:
    result = await probe_http("127.0.0.1", free_port())
    assert (result.result, result.why) == (ERROR, "connection refused")


async def test_no_answer_within_the_timeout_is_an_error(upstream: Upstream) -> None:
    result = await probe_http("127.0.0.1", upstream.port, path="/never", timeout=0.2)
    assert (result.result, result.why) == (ERROR, "timed out after 0.2s")


async def test_a_connection_closed_unanswered_is_an_error(upstream: Upstream) -> None:
    result = await probe_http("127.0.0.1", upstream.port, path="/hangup")
    assert (result.result, result.why) == (ERROR, "connection closed before a response")


async def test_tcp_passes_when_the_connection_opens(upstream: Upstream) -> None:
    assert (await probe_tcp("127.0.0.1", upstream.port)).result == PASS
    assert (await probe_tcp("127.0.0.1", free_port())).result == ERROR


async def test_tcp_connect_that_hangs_is_an_error_at_the_timeout() -> None:
    blackhole = BlackholeListener()
    try:
        result = await probe_tcp("127.0.0.1", blackhole.port, timeout=0.2)
        assert (result.result, result.why) == (ERROR, "connect timed out after 0.2s")
    finally:
        blackhole.close()
