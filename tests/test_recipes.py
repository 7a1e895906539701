"""docs/recipes.md runs as written: each ```yaml block marked `# recipe: <name>` is served by a real
gateway (only its ports swapped for the test's) in front of real upstreams named after the arm or
version they play, and does what the doc says."""

from __future__ import annotations

import calendar
import difflib
import email.utils
import json
import os
import re
import signal
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import StartGateway
from tests.support.gateway import GatewayProcess, Response, free_port
from tests.support.upstream import Upstream
from tests.support.wait import wait_until

DOC = (Path(__file__).resolve().parents[1] / "docs" / "recipes.md").read_text()
BLOCKS = dict(re.findall(r"```yaml\n# recipe: ([\w-]+)\n(.*?)```", DOC, re.S))
# The ports the doc uses: the Gateway's listener, then the first and second upstream.
LISTENER, FIRST, SECOND = 8080, 18081, 18082
TESTED = {"ab-split", "ab-select", "ab-switch", "versions-path", "versions-header", "versions-deprecation"}


def test_every_yaml_block_of_the_doc_is_a_tested_recipe() -> None:
    assert DOC.count("```yaml") == len(BLOCKS)  # no unmarked block escapes the tests
    assert set(BLOCKS) == TESTED


def served(name: str, port: int, first: Upstream, second: Upstream) -> str:
    """The recipe's YAML with the doc's ports replaced by the test's."""
    ports = {LISTENER: port, FIRST: first.port, SECOND: second.port}
    text, n = re.subn(r"\bport: (\d+)\b", lambda m: f"port: {ports[int(m[1])]}", BLOCKS[name])
    assert n == 3, BLOCKS[name]
    return text


def start(
    start_gateway: StartGateway, name: str, first: Upstream, second: Upstream, workers: int = 1
) -> GatewayProcess:
    port = free_port()
    gw = start_gateway({}, [], env={"GW_WORKERS": str(workers)}, yaml_text=served(name, port, first, second))
    gw.port = port  # (the starter picked a port for a config of its own making)
    return gw


def reload(gw: GatewayProcess, text: str) -> None:
    """Serve another config on the same port: the file rewritten and HUP, as an operator does."""
    before = {w["config_version"] for w in gw.status()["workers"]}  # type: ignore[index,union-attr]
    (version,) = before
    gw.config_path.write_text(text)
    os.kill(gw.pid, signal.SIGHUP)
    wait_until(
        lambda: {w["config_version"] for w in gw.status()["workers"]} == {version + 1},  # type: ignore[index,union-attr]
        what="the reload",
    )


@pytest.fixture
def arms() -> Iterator[tuple[Upstream, Upstream]]:
    pair = (Upstream("stable").start(), Upstream("canary").start())
    yield pair
    for up in pair:
        up.stop()


@pytest.fixture
def versions() -> Iterator[tuple[Upstream, Upstream]]:
    pair = (Upstream("v1").start(), Upstream("v2").start())
    yield pair
    for up in pair:
        up.stop()


def answered_by(response: Response) -> str:
    """The upstream that answered (the echo names itself)."""
    assert response.status == 200, (response.status, response.body)
    return json.loads(response.body)["upstream"]  # type: ignore[no-any-return]


class Visitor:
    """A user with a cookie jar of their own: sends back what it was given, as a browser does."""

    def __init__(self, gw: GatewayProcess, **cookies: str) -> None:
        self.gw = gw
        self.jar = dict(cookies)
        self.issued = 0  # Set-Cookie fields received

    def visit(self, requests: int = 3, path: str = "/", **headers: str) -> list[str]:
        """`requests` on one connection; the upstream that answered each."""
        conn = self.gw.connect()
        try:
            arms = []
            for _ in range(requests):
                fields = {k.replace("_", "-"): v for k, v in headers.items()}
                if self.jar:
                    fields["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.jar.items())
                response = conn.request("GET", path, fields)
                for name, value in response.headers:
                    if name.lower() == "set-cookie":
                        key, _, val = value.split(";")[0].partition("=")
                        self.jar[key] = val
                        self.issued += 1
                arms.append(answered_by(response))
            return arms
        finally:
            conn.close()

    def arm(self, requests: int = 3, **headers: str) -> str:
        """The one arm every request of a visit reached (fails if they reached more than one)."""
        reached = set(self.visit(requests, **headers))
        assert len(reached) == 1, reached
        return reached.pop()


# -- 1-3: A/B tests -------------------------------------------------------------------------------


def test_ab_split_keeps_each_user_in_one_arm_and_splits_users_by_weight(
    start_gateway: StartGateway, arms: tuple[Upstream, Upstream]
) -> None:
    workers = 2
    gw = start(start_gateway, "ab-split", *arms, workers=workers)
    users = [Visitor(gw) for _ in range(200)]
    first = [user.arm(requests=4) for user in users]
    # Each comes back on a new connection (any worker) and stays where it was drawn.
    assert [user.arm(requests=2) for user in users] == first
    assert all(user.issued == 1 for user in users)  # one cookie each, at the first request
    assert all(set(user.jar) == {"shop-arm"} for user in users)
    # New sessions are drawn by smooth weighted round robin, each worker on its own cycle of 10
    # (9 stable, 1 canary), within half a user of 10% at every point: the fleet within workers/2.
    split = Counter(first)
    assert abs(split["canary"] - 200 * 10 / 100) <= workers / 2, split
    assert split["stable"] + split["canary"] == 200


def test_ab_select_sends_who_chooses_b_to_canary_and_everyone_else_to_the_sticky_split(
    start_gateway: StartGateway, arms: tuple[Upstream, Upstream]
) -> None:
    gw = start(start_gateway, "ab-select", *arms)
    for cookie in ("variant=b", "theme=dark; variant=b", "variant=b; theme=dark", "a=1;variant=b;z=2"):
        conn = gw.connect()
        for _ in range(20):  # more than one round of the split: none of them was drawn
            response = conn.request("GET", "/", {"Cookie": cookie})
            assert answered_by(response) == "canary", cookie
            assert response.header("set-cookie") is None  # no session: choose-b has none
        conn.close()
    header_users = [Visitor(gw) for _ in range(20)]
    assert all(user.arm(requests=3, X_Variant="b") == "canary" for user in header_users)
    assert all(user.issued == 0 for user in header_users)
    # Near misses are not a choice: they go to the split, which draws and pins them.
    drawn = []
    for cookie in ("variant=bb", "myvariant=b", "variant=a", "variant=", "xvariant=b; theme=dark"):
        for _ in range(4):
            user = Visitor(gw, **dict(pair.split("=", 1) for pair in cookie.split("; ")))
            drawn.append(user.arm(requests=3))
            assert user.issued == 1, cookie
    for value in ("B", "bb", "a"):
        user = Visitor(gw)
        drawn.append(user.arm(requests=3, X_Variant=value))
        assert user.issued == 1
    assert Counter(drawn) == {"stable": 21, "canary": 2}  # 9:1 in order (canary 6th and 16th)
    # A drawn user who opts in for a while reaches canary, then is back in their arm, same cookie.
    user = next(u for u in (Visitor(gw) for _ in range(10)) if u.arm() == "stable")
    assert user.arm(X_Variant="b") == "canary"
    user.jar["variant"] = "b"
    assert user.arm() == "canary"
    del user.jar["variant"]
    assert user.arm() == "stable" and user.issued == 1


def test_ab_switch_draws_new_users_by_the_new_weights_and_moves_nobody(
    start_gateway: StartGateway, arms: tuple[Upstream, Upstream]
) -> None:
    # The doc says the switch is recipe 2 with only the weights changed: hold it to that.
    def settings(name: str) -> list[str]:
        return [line.split("#", 1)[0].rstrip() for line in BLOCKS[name].splitlines()]

    changed = [
        line
        for line in difflib.unified_diff(settings("ab-select"), settings("ab-switch"), n=0, lineterm="")
        if line[:1] in "+-" and line[:3] not in ("+++", "---")
    ]
    assert len(changed) == 4 and all("weight: " in line for line in changed), changed

    gw = start(start_gateway, "ab-select", *arms)
    before = [Visitor(gw) for _ in range(100)]
    arm_before = [user.arm() for user in before]
    assert Counter(arm_before) == {"stable": 90, "canary": 10}
    reload(gw, served("ab-switch", gw.port, *arms))
    # Every user who had an arm keeps it, and gets no new cookie.
    assert [user.arm() for user in before] == arm_before
    assert all(user.issued == 1 for user in before)
    # New users: 50/50 (one worker's smooth cycle of 2: exact over an even number).
    after = Counter(Visitor(gw).arm() for _ in range(100))
    assert after == {"stable": 50, "canary": 50}
    # And the self-selection rule still works beside it.
    assert Visitor(gw).arm(X_Variant="b") == "canary"


# -- 4-6: API versions ----------------------------------------------------------------------------


def test_versions_by_path_prefix_reach_their_backend_without_the_prefix(
    start_gateway: StartGateway, versions: tuple[Upstream, Upstream]
) -> None:
    v1, v2 = versions
    gw = start(start_gateway, "versions-path", *versions)
    conn = gw.connect()
    cases = [
        ("/v1/users", "v1", "/users"),
        ("/v1/users/7?page=2", "v1", "/users/7?page=2"),
        ("/v2/users", "v2", "/users"),
        ("/v2/orders/", "v2", "/orders/"),
        ("/v1", "v1", "/"),
        ("/v2/", "v2", "/"),
    ]
    for path, version, seen in cases:
        response = conn.request("GET", path)
        body = json.loads(response.body)
        assert (response.status, body["upstream"], body["target"]) == (200, version, seen), path
    for path in ("/v1beta/users", "/v3/users", "/users", "/"):
        assert conn.request("GET", path).status == 404, path
    conn.close()
    assert [s.target for s in v1.seen] == ["/users", "/users/7?page=2", "/"]
    assert [s.target for s in v2.seen] == ["/users", "/orders/", "/"]


def test_versions_by_header_or_vendor_media_type_default_to_v1(
    start_gateway: StartGateway, versions: tuple[Upstream, Upstream]
) -> None:
    gw = start(start_gateway, "versions-header", *versions)
    cases: list[tuple[dict[str, str], str]] = [
        ({}, "v1"),
        ({"Accept-Version": "2"}, "v2"),
        ({"Accept-Version": "1"}, "v1"),
        ({"Accept-Version": "20"}, "v1"),
        ({"Accept": "application/vnd.example.v2+json"}, "v2"),
        ({"Accept": "application/vnd.example.v2+json;q=0.9, */*;q=0.1"}, "v2"),
        ({"Accept": "text/html, application/vnd.example.v2+json"}, "v2"),
        ({"Accept": "text/html,application/vnd.example.v2+json ; q=1"}, "v2"),
        ({"Accept": "application/vnd.example.v1+json"}, "v1"),
        ({"Accept": "application/vnd.example.v20+json"}, "v1"),
        ({"Accept": "application/vnd.example.v2+jsonx"}, "v1"),
        ({"Accept": "application/json"}, "v1"),
        ({"Accept-Version": "1", "Accept": "application/vnd.example.v2+json"}, "v2"),  # either selects v2
    ]
    conn = gw.connect()
    for headers, version in cases:
        response = conn.request("GET", "/users", headers)
        body = json.loads(response.body)
        assert (body["upstream"], body["target"]) == (version, "/users"), headers
    conn.close()


def test_a_deprecated_version_announces_its_deprecation_and_sunset_and_the_current_one_does_not(
    start_gateway: StartGateway, versions: tuple[Upstream, Upstream]
) -> None:
    gw = start(start_gateway, "versions-deprecation", *versions)
    conn = gw.connect()
    v1 = conn.request("GET", "/v1/users")
    v2 = conn.request("GET", "/v2/users")
    conn.close()
    assert answered_by(v1) == "v1" and json.loads(v1.body)["target"] == "/users"
    assert answered_by(v2) == "v2"
    deprecated = calendar.timegm((2026, 7, 1, 0, 0, 0))
    sunset = calendar.timegm((2027, 7, 1, 0, 0, 0))
    assert v1.header("deprecation") == f"@{deprecated}"  # RFC 9745: a structured-field Date
    assert v1.header("sunset") == email.utils.formatdate(sunset, usegmt=True)  # RFC 8594: an HTTP-date
    assert v1.header("sunset") == "Thu, 01 Jul 2027 00:00:00 GMT"
    assert v1.header("link") == (
        '<https://developer.example.com/v1-deprecation>; rel="deprecation", '
        '<https://developer.example.com/v2-migration>; rel="sunset"'
    )
    for name in ("deprecation", "sunset", "link"):
        assert v2.header(name) is None, name
    # What the doc shows a v1 response carrying is what it carries.
    shown = DOC.split("Every v1 response then carries:\n\n```\n", 1)[1].split("```", 1)[0]
    for line in shown.splitlines():
        name, _, value = line.partition(": ")
        assert v1.header(name) == value, line


def test_a_split_rule_that_changes_index_draws_everyone_again_as_the_doc_warns(
    start_gateway: StartGateway, arms: tuple[Upstream, Upstream]
) -> None:
    import yaml

    gw = start(start_gateway, "ab-select", *arms)
    users = [Visitor(gw) for _ in range(10)]
    assert Counter(user.arm() for user in users) == {"stable": 9, "canary": 1}
    # The same route with choose-b moved in front: the split is rule 1 now, its sessions another scope.
    docs = list(yaml.safe_load_all(served("ab-switch", gw.port, *arms)))
    route = next(d for d in docs if d["kind"] == "HTTPRoute")
    route["spec"]["rules"].reverse()
    reload(gw, yaml.safe_dump_all(docs))
    # Nothing fails, but each cookie is refused and its user drawn again, by the new 50/50.
    assert Counter(user.arm() for user in users) == {"stable": 5, "canary": 5}
    assert all(user.issued == 2 for user in users)
