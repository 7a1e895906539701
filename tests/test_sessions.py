"""Session persistence (GEP-1619) end to end: real replicas sharing a Valkey and a listener port,
real upstreams; a session stays on its endpoint whichever replica and worker serves it."""

from __future__ import annotations

import time

import httpx

from tests.conftest import StartGateway
from tests.support import valkey
from tests.support.upstream import Upstream
from tests.test_backend_resilience import fleet

COOKIE = [{"name": "api", "rules": [{"backendRefs": [{"backend": "api"}],
                                     "sessionPersistence": {"sessionName": "cart"}}]}]  # fmt: skip
HEADER_SESSION = {"type": "Header", "sessionName": "X-Session"}
HEADER = [{"name": "api", "rules": [{"backendRefs": [{"backend": "api"}], "sessionPersistence": HEADER_SESSION}]}]
# A Redis call over GW_REDIS_BUDGET (5 ms) falls back to the hash of the id, by design: on a loaded
# test machine that is a moved session the test did not ask for.
PATIENT = {"GW_REDIS_BUDGET": "2s"}


def get(url: str, **headers: str) -> httpx.Response:
    return httpx.get(url, timeout=10, headers={"Connection": "close", **headers})


def test_a_cookie_session_stays_on_its_endpoint_across_replicas_and_workers(
    start_gateway: StartGateway, upstreams: list[Upstream], redis_server: valkey.Server
) -> None:
    replicas = fleet(start_gateway, upstreams, "", redis_server.url, routes=COOKIE)
    url = replicas[0].url("/status/200")
    first = get(url)
    cookie = first.headers["set-cookie"]
    assert cookie.startswith("cart=") and "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Path=/" in cookie
    assert "Secure" not in cookie  # an HTTP listener
    value = cookie.split(";")[0].split("=", 1)[1]
    home = first.headers["x-upstream"]
    for _ in range(30):  # round robin over 3 endpoints would have moved it
        r = get(url, Cookie=f"cart={value}")
        assert r.headers["x-upstream"] == home and "set-cookie" not in r.headers
    # Without the cookie, requests are balanced (and each starts a session of its own).
    assert len({get(url).headers["x-upstream"] for _ in range(9)}) == 3
    # A tampered cookie pins nothing: a new session, a new cookie.
    tampered = get(url, Cookie=f"cart={value[:-2]}AA")
    assert tampered.headers["set-cookie"].startswith("cart=")


def test_a_session_whose_endpoint_is_gone_is_re_pinned_with_a_new_cookie(
    start_gateway: StartGateway, upstreams: list[Upstream], redis_server: valkey.Server
) -> None:
    (gw,) = fleet(start_gateway, upstreams, "", redis_server.url, replicas=1, routes=COOKIE)
    url = gw.url("/status/200")
    first = get(url)
    value = first.headers["set-cookie"].split(";")[0].split("=", 1)[1]
    home = next(u for u in upstreams if u.name == first.headers["x-upstream"])
    home.stop()
    moved = get(url, Cookie=f"cart={value}")
    assert moved.status_code == 200 and moved.headers["x-upstream"] != home.name
    new_value = moved.headers["set-cookie"].split(";")[0].split("=", 1)[1]
    assert all(get(url, Cookie=f"cart={new_value}").headers["x-upstream"] == moved.headers["x-upstream"]
               for _ in range(10))  # fmt: skip


def test_an_expired_cookie_starts_a_new_session_though_its_head_pinned_before(
    start_gateway: StartGateway, upstreams: list[Upstream], redis_server: valkey.Server
) -> None:
    """A worker remembers the session a whole head pinned to (its next requests split no fields):
    the cookie's expiry still counts on that path."""
    session = {"sessionName": "cart", "absoluteTimeout": "1s", "cookieConfig": {"lifetimeType": "Permanent"}}
    routes = [{"name": "api", "rules": [{"backendRefs": [{"backend": "api"}], "sessionPersistence": session}]}]
    (gw,) = fleet(start_gateway, upstreams, "", redis_server.url, replicas=1, routes=routes)
    url = gw.url("/status/200")
    value = get(url).headers["set-cookie"].split(";")[0].split("=", 1)[1]
    with httpx.Client(timeout=10) as client:  # one keep-alive connection: the same head each time
        deadline = time.monotonic() + 15
        renewed = None
        while renewed is None and time.monotonic() < deadline:
            renewed = client.get(url, headers={"Cookie": f"cart={value}"}).headers.get("set-cookie")
    assert renewed is not None and renewed.startswith("cart="), "the expired cookie kept its session"
    assert renewed.split(";")[0].split("=", 1)[1] != value


def test_a_header_session_is_settled_once_for_the_fleet(
    start_gateway: StartGateway, upstreams: list[Upstream], redis_server: valkey.Server
) -> None:
    replicas = fleet(start_gateway, upstreams, "", redis_server.url, routes=HEADER, env=PATIENT)
    url = replicas[0].url("/status/200")
    for user in ("u1", "u2", "u3", "u4"):
        homes = {get(url, **{"X-Session": user}).headers["x-upstream"] for _ in range(12)}
        assert len(homes) == 1, (user, homes)
    with redis_server.client() as client:
        stored = [k for k in client.keys("*sess:*")]
    assert len(stored) == 4


def test_a_header_session_id_the_application_issues_stays_on_the_endpoint_that_issued_it(
    start_gateway: StartGateway, upstreams: list[Upstream], redis_server: valkey.Server
) -> None:
    # Only a request without an id has its response read (HeaderSession is response_on_demand): the
    # id in that response settles the session to the endpoint that answered, for the whole fleet.
    replicas = fleet(start_gateway, upstreams, "", redis_server.url, routes=HEADER, env=PATIENT)
    homes = {}
    for user in ("u1", "u2", "u3", "u4", "u5", "u6"):
        first = get(replicas[0].url(f"/status/200?issue=X-Session:{user}"))
        assert first.headers["x-session"] == user
        homes[user] = first.headers["x-upstream"]
    for user, home in homes.items():
        for gw in replicas:
            assert {get(gw.url("/status/200"), **{"X-Session": user}).headers["x-upstream"] for _ in range(4)} == {
                home
            }, user


def test_a_header_session_pinned_to_an_endpoint_gone_is_re_pinned_once_for_the_fleet(
    start_gateway: StartGateway, upstreams: list[Upstream], redis_server: valkey.Server
) -> None:
    # A worker that has not cached the id hears from the fleet an endpoint it no longer sends to:
    # it re-pins the session in Redis, so the other workers and replicas follow it to the same one
    # (going on by its own pick alone left the fleet's entry on the gone endpoint, and each worker
    # sent the session where its balancer said).
    replicas = fleet(start_gateway, upstreams, "", redis_server.url, routes=HEADER, env=PATIENT)
    get(replicas[0].url("/status/200"), **{"X-Session": "probe"})
    with redis_server.client() as client:
        (probe,) = client.keys("*sess:*")
        key = probe[: -len(b"probe")] + b"gone-user"
        client.set(key, "127.0.0.1:1")  # pinned before its endpoint left the backend
        homes = {get(gw.url("/status/200"), **{"X-Session": "gone-user"}).headers["x-upstream"]
                 for gw in replicas for _ in range(8)}  # fmt: skip
        assert len(homes) == 1, homes
        (home,) = homes
        assert client.get(key) == f"127.0.0.1:{next(u.port for u in upstreams if u.name == home)}".encode()


def test_a_session_stays_on_a_backend_whose_weight_drops_to_zero(
    start_gateway: StartGateway, upstreams: list[Upstream]
) -> None:
    import os
    import signal

    from tests.support.gateway import config_yaml
    from tests.test_supervisor import wait_until

    def routes(weight_b: int) -> list[dict[str, object]]:
        refs = [{"backend": "a", "weight": 1}, {"backend": "b", "weight": weight_b}]
        return [{"name": "api", "rules": [{"backendRefs": refs, "sessionPersistence": {"sessionName": "cart"}}]}]

    backends = {"a": [("127.0.0.1", upstreams[0].port)], "b": [("127.0.0.1", upstreams[1].port)]}
    gw = start_gateway(backends, routes(1))
    url = gw.url("/status/200")
    first = next(r for r in (get(url) for _ in range(6)) if r.headers["x-upstream"] == "b")
    value = first.headers["set-cookie"].split(";")[0].split("=", 1)[1]
    gw.config_path.write_text(config_yaml(gw.port, backends, routes(0)))  # b drained of new sessions
    os.kill(gw.pid, signal.SIGHUP)
    wait_until(lambda: {w["config_version"] for w in gw.status()["workers"]} == {2}, what="the reload")  # type: ignore[index,union-attr]
    assert {get(url).headers["x-upstream"] for _ in range(6)} == {"a"}  # new sessions: weight 0 gets none
    assert all(get(url, Cookie=f"cart={value}").headers["x-upstream"] == "b" for _ in range(6))


def test_status_and_metrics_count_sessions_created_re_pinned_and_bad_cookies(
    start_gateway: StartGateway, upstreams: list[Upstream], redis_server: valkey.Server
) -> None:
    (gw,) = fleet(start_gateway, upstreams, "", redis_server.url, replicas=1, routes=COOKIE)
    url = gw.url("/status/200")
    first = get(url)  # created
    value = first.headers["set-cookie"].split(";")[0].split("=", 1)[1]
    for _ in range(4):  # the session's own requests count nothing
        get(url, Cookie=f"cart={value}")
    get(url, Cookie=f"cart={value[:-2]}AA")  # invalid, and a new session: created
    get(url, Cookie="other=1")  # no cookie of this rule: created, not invalid
    next(u for u in upstreams if u.name == first.headers["x-upstream"]).stop()
    get(url, Cookie=f"cart={value}")  # its endpoint is gone: repinned
    counts = {"rule": "default/api#0", "type": "Cookie", "created": 3, "repinned": 1, "invalid": 1, "hashed": 0}
    assert gw.status()["sessions"] == [counts]  # summed over both workers
    metrics = httpx.get(f"http://127.0.0.1:{gw.admin}/metrics", timeout=10).text
    for result in ("created", "repinned", "invalid"):
        assert f'gw_sessions_total{{result="{result}",rule="default/api#0",type="Cookie"}} {counts[result]}' in metrics


def test_status_counts_header_sessions_settled_by_the_fleet(
    start_gateway: StartGateway, upstreams: list[Upstream], redis_server: valkey.Server
) -> None:
    (gw,) = fleet(start_gateway, upstreams, "", redis_server.url, replicas=1, routes=HEADER, env=PATIENT)
    url = gw.url("/status/200")
    for user in ("u1", "u2", "u3"):
        for _ in range(3):
            get(url, **{"X-Session": user})
    (entry,) = gw.status()["sessions"]
    assert (entry["rule"], entry["type"], entry["created"], entry["hashed"]) == ("default/api#0", "Header", 3, 0)
