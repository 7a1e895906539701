"""One active health probe (gw.balancing.probe) against real upstream servers."""

from __future__ import annotations

import ssl
from collections.abc import Iterator

import pytest
import trustme

from gw.balancing.probe import ERROR, FAIL, PASS, ProbeTLS, probe_http, probe_tcp
from gw.config.backend_tls import UpstreamTLS
from gw.supervisor.health import probe_tls_for
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


# -- endpoints under a BackendTLSPolicy: probed over TLS, verified as the proxy verifies --------


@pytest.fixture(scope="module")
def probe_ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def tls_upstream(probe_ca: trustme.CA) -> Iterator[Upstream]:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    probe_ca.issue_cert("orders.internal").configure_cert(ctx)
    up = Upstream("tls", tls=ctx).start()
    yield up
    up.stop()


def probe_tls(ca: trustme.CA, hostname: str = "orders.internal", **fields: object) -> ProbeTLS | None:
    """What the health checker probes a backend under this policy with."""
    tls = UpstreamTLS("default/p", hostname, ca_certificates=ca.cert_pem.bytes(), **fields)  # type: ignore[arg-type]
    return probe_tls_for(tls)


async def test_a_tls_endpoint_is_probed_over_verified_tls(tls_upstream: Upstream, probe_ca: trustme.CA) -> None:
    result = await probe_http("127.0.0.1", tls_upstream.port, path="/status/200", tls=probe_tls(probe_ca))
    assert result.passed and tls_upstream.seen[-1].tls is not None
    assert (await probe_tcp("127.0.0.1", tls_upstream.port, tls=probe_tls(probe_ca))).passed


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ({"hostname": "billing.internal"},
         "TLS: [SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: Hostname mismatch"),
        ({"subject_alt_names": (("URI", "spiffe://c/x"),)},
         "TLS: certificate subjectAltNames (DNS:orders.internal) match none"),
        ({"refusal": "no valid CA certificate: x"}, "TLS: no valid CA certificate: x"),
    ],
)  # fmt: skip
async def test_a_tls_endpoint_the_proxy_would_refuse_is_an_error(
    tls_upstream: Upstream, probe_ca: trustme.CA, change: dict[str, object], why: str
) -> None:
    for probe in (probe_http, probe_tcp):
        result = await probe("127.0.0.1", tls_upstream.port, tls=probe_tls(probe_ca, **change))  # type: ignore[operator]
        assert result.result == ERROR and result.why.startswith(why)


async def test_a_tls_endpoint_signed_by_another_ca_is_an_error(tls_upstream: Upstream) -> None:
    result = await probe_http("127.0.0.1", tls_upstream.port, tls=probe_tls(trustme.CA()))
    assert result.result == ERROR and "certificate verify failed" in result.why
