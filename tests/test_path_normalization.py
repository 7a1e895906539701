"""Request paths: routed in their normal form, forwarded in that form, refused when upstreams would
disagree about them (gw.routing.paths), through a real gateway to real upstreams, plus the normaliser alone."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gw.errors import BadRequest
from gw.proxy.exchange import Exchange
from gw.proxy.request import split_target
from gw.routing.paths import UnsafePath, normalize_path
from tests.conftest import StartGateway
from tests.support.gateway import GatewayProcess
from tests.support.upstream import Upstream

# --- the normaliser ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "normal"),
    [
        ("/", "/"),
        ("/api/v1/users", "/api/v1/users"),
        ("/a/../b", "/b"),
        ("/a/./b/", "/a/b/"),
        ("/a/b/..", "/a/"),
        ("/a/b/.", "/a/b/"),
        ("/..", "/"),
        ("/../../a", "/a"),
        ("//a//b//", "/a/b/"),
        ("/public/%2e%2e/admin", "/admin"),
        ("/public/%2E%2E/admin", "/admin"),
        ("/public/.%2e/admin", "/admin"),
        ("/public/%2e/admin", "/public/admin"),
        ("/%7Euser/%41%62%2D%5F", "/~user/Ab-_"),
        ("/caf%c3%a9", "/caf%C3%A9"),
        ("/a%2fb", "/a%2Fb"),
        ("/a%5cb", "/a%5Cb"),
        ("/a%252e%252e/b", "/a%252e%252e/b"),  # decoded once: "%25" is not unreserved
        ("/.well-known/x", "/.well-known/x"),
        ("/a/.../b", "/a/.../b"),
        ("/a/b.;c/d", "/a/b.;c/d"),
        ("/a;x/../b", "/b"),
    ],
)
def test_normal_form(path: str, normal: str) -> None:
    assert normalize_path(path.encode()) == normal.encode()


@pytest.mark.parametrize(
    "path",
    [
        "/public/..%2fadmin",
        "/public/..%2Fadmin",
        "/public/%2E%2E%2Fadmin",
        "/public/%2e%2e%5cadmin",
        "/public/.%2F",
        "/public/x%2F..",
        "/public/x%2F..%2Fy",
        "/public/..\\admin",
        "/public\\..\\admin",
        "/public/..;/admin",
        "/public/.;x/admin",
        "/public/a%00b",
        "/public/%zz",
        "/public/a%",
        "/public/a%2",
        "/public/x#/../../admin",
    ],
)
def test_refused(path: str) -> None:
    with pytest.raises(UnsafePath):
        normalize_path(path.encode())


_UNRESERVED = re.compile(rb"%(?:[46][1-9A-Fa-f]|[57][0-9Aa]|3[0-9]|2[DEde]|5[Ff]|7[Ee])")

_path_text = st.lists(
    st.one_of(
        st.sampled_from(["/", ".", "..", "%2e", "%2E", "%2f", "%5C", "\\", ";", "%41", "%7e", "%c3", "a", "~", "%25"]),
        st.text(alphabet="abc.-_~;%/", max_size=4),
    ),
    max_size=12,
).map(lambda parts: "/" + "".join(parts))


@given(_path_text)
def test_normalising_twice_is_normalising_once(path: str) -> None:
    try:
        once = normalize_path(path.encode())
    except UnsafePath:
        return
    assert normalize_path(once) == once


@given(_path_text)
def test_the_normal_form_holds_no_dot_segment_plain_or_encoded(path: str) -> None:
    try:
        normal = normalize_path(path.encode())
    except UnsafePath:
        return
    assert _UNRESERVED.search(normal) is None  # so "%2e" cannot spell a dot here
    assert normal.startswith(b"/") and b"//" not in normal
    for segment in normal.split(b"/"):
        assert segment not in (b".", b"..")
        # nor one hidden behind a separator some upstream decodes, or ";parameters"
        for piece in re.split(rb"%2F|%5C|\\", segment):
            assert piece.split(b";")[0] not in (b".", b"..")


def split(url: str) -> Exchange:
    req = Exchange(0.0)
    split_target(req, url.encode())
    return req


def test_split_target_normalises_the_path_and_leaves_the_query() -> None:
    req = split("/a/%2e%2e/b%7e?q=%2e%2e/../x&c=%7e")
    assert (req.path, req.query, req.url) == ("/b~", b"q=%2e%2e/../x&c=%7e", b"/b~?q=%2e%2e/../x&c=%7e")


def test_an_absolute_target_without_a_path_keeps_its_query() -> None:
    req = split("http://example.test?x=1")
    assert (req.path, req.query, req.url) == ("/", b"x=1", b"/?x=1")


@pytest.mark.parametrize("url", ["/a?b#c", "/a#b", "http://example.test#x"])
def test_a_fragment_anywhere_in_the_target_is_refused(url: str) -> None:
    with pytest.raises(BadRequest):
        split(url)


# --- through the gateway -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def admin_upstream() -> Iterator[Upstream]:
    up = Upstream("admin").start()
    yield up
    up.stop()


@pytest.fixture(scope="module")
def gw(module_upstream: Upstream, admin_upstream: Upstream, module_start_gateway: StartGateway) -> GatewayProcess:
    """`/public` and `/~team` go to the upstream "up", `/admin` to "admin"; nothing else is routed."""
    backends = {"up": [("127.0.0.1", module_upstream.port)], "admin": [("127.0.0.1", admin_upstream.port)]}
    routes = [
        {
            "name": "paths",
            "rules": [
                {"matches": [{"path": {"type": "PathPrefix", "value": "/public"}}], "backendRefs": [{"backend": "up"}]},
                {
                    "matches": [{"path": {"type": "PathPrefix", "value": "/admin"}}],
                    "backendRefs": [{"backend": "admin"}],
                },
                {"matches": [{"path": {"type": "Exact", "value": "/%7eteam"}}], "backendRefs": [{"backend": "up"}]},
                {
                    "matches": [{"path": {"type": "PathPrefix", "value": "/%7Eold"}}],
                    "filters": [
                        {
                            "type": "URLRewrite",
                            "urlRewrite": {"path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/new"}},
                        }
                    ],
                    "backendRefs": [{"backend": "up"}],
                },
            ],
        }
    ]
    return module_start_gateway(backends, routes)


def send(gw: GatewayProcess, target: str) -> tuple[int, dict[str, object] | None]:
    """Status, and the upstream's echo (its name and the target it received) when it answered."""
    resp = gw.connect().request("GET", target)
    if resp.header("content-type") == "application/json":
        return resp.status, json.loads(resp.body)
    return resp.status, None


@pytest.mark.parametrize(
    "target",
    ["/public/%2e%2e/admin/x", "/public/%2E%2E/admin/x", "/public/.%2e/admin/x", "/public/a/%2e%2e/../admin/x"],
)
def test_encoded_dot_segments_route_as_the_path_they_resolve_to(
    gw: GatewayProcess, module_upstream: Upstream, admin_upstream: Upstream, target: str
) -> None:
    before = len(module_upstream.seen)
    status, echo = send(gw, target)
    assert status == 200 and echo is not None
    assert echo["upstream"] == "admin"
    assert admin_upstream.seen[-1].target == "/admin/x"
    assert len(module_upstream.seen) == before  # the /public rule never saw it


def test_the_upstream_receives_the_normal_path_and_the_query_as_sent(
    gw: GatewayProcess, module_upstream: Upstream
) -> None:
    status, _ = send(gw, "/public/%7Euser/caf%c3%a9//x/./y/%2e?q=%2e%2e/../z&b=%7e")
    assert status == 200
    assert module_upstream.seen[-1].target == "/public/~user/caf%C3%A9/x/y/?q=%2e%2e/../z&b=%7e"


def test_an_encoded_slash_is_data_in_one_segment(gw: GatewayProcess, module_upstream: Upstream) -> None:
    status, _ = send(gw, "/public/group%2fproject")
    assert status == 200
    assert module_upstream.seen[-1].target == "/public/group%2Fproject"


def test_an_encoded_slash_does_not_split_a_segment_for_routing(gw: GatewayProcess, admin_upstream: Upstream) -> None:
    before = len(admin_upstream.seen)
    status, _ = send(gw, "/admin%2Fx")
    assert status == 404
    assert len(admin_upstream.seen) == before


@pytest.mark.parametrize(
    "target",
    [
        "/public/..%2fadmin",
        "/public/%2E%2E%2Fadmin",
        "/public/%2e%2e%5cadmin",
        "/public/..\\admin",
        "/public\\..\\admin",
        "/public/..;/admin",
        "/public/a%00b",
        "/public/%zz",
        "/public/a%",
        "/public/x#/../../admin",
        "/public/x?a=1#b",
    ],
)
def test_ambiguous_paths_get_400_and_reach_no_upstream(
    gw: GatewayProcess, module_upstream: Upstream, admin_upstream: Upstream, target: str
) -> None:
    before = (len(module_upstream.seen), len(admin_upstream.seen))
    resp = gw.connect().request("GET", target)
    assert resp.status == 400
    assert resp.header("content-type") == "application/problem+json"
    assert (len(module_upstream.seen), len(admin_upstream.seen)) == before
    assert gw.connect().request("GET", "/public/still-serving").status == 200
    assert not any("Traceback" in line for line in gw.log)


@pytest.mark.parametrize("target", ["/~team", "/%7eteam", "/%7Eteam"])
def test_a_route_value_is_matched_in_the_normal_form(
    gw: GatewayProcess, module_upstream: Upstream, target: str
) -> None:
    status, _ = send(gw, target)
    assert status == 200
    assert module_upstream.seen[-1].target == "/~team"


def test_replace_prefix_match_cuts_the_normal_prefix(gw: GatewayProcess, module_upstream: Upstream) -> None:
    status, _ = send(gw, "/%7eold/%2e/page?x=1")
    assert status == 200
    assert module_upstream.seen[-1].target == "/new/page?x=1"


def test_an_absolute_form_target_is_normalised_alike(gw: GatewayProcess, admin_upstream: Upstream) -> None:
    status, echo = send(gw, "http://example.test/public/%2e%2e/admin/y")
    assert status == 200 and echo is not None and echo["upstream"] == "admin"
    assert admin_upstream.seen[-1].target == "/admin/y"
