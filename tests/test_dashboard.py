"""The admin dashboard in a real browser, and who may read the admin port (GW_ADMIN_TOKEN).

Headless Chromium (Debian's chromium and chromium-driver, driven by selenium) loads /dashboard
from a running gateway with real upstreams and traffic, and the tables must show what /status
says. Without a browser the browser tests skip, unless GW_REQUIRE_BROWSER=1 (.ci/run sets it):
then they fail. The screenshot goes to the test's temp dir (scripts/dashboard-screenshot makes
docs/dashboard.png the same way).
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from gw.admin import AdminApp
from tests.support.gateway import REPO, GatewayProcess, free_port
from tests.support.servers import launch_gateway
from tests.support.upstream import Upstream
from tests.support.wait import wait_until

TOKEN = "0123456789abcdef-dashboard-token"
ROUTES: list[dict[str, object]] = [
    {"name": "shop", "hostnames": ["shop.test"], "rules": [{"backendRefs": [{"backend": "shop"}]}]},
    {"name": "api", "hostnames": ["api.test"], "rules": [{"backendRefs": [{"backend": "api"}]}]},
]
POLICIES = [
    {
        "apiVersion": "gw.dev/v1alpha1",
        "kind": "RateLimitPolicy",
        "metadata": {"name": "api-limit", "namespace": "default"},
        "spec": {
            "targetRefs": [{"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "name": "api"}],
            "limits": [{"name": "per-second", "requests": 100000, "per": "1s"}],
            "failureMode": "Local",  # its workers heartbeat into Redis: the Fleet section has them
        },
    },
    {
        "apiVersion": "gw.dev/v1alpha1",
        "kind": "BackendTrafficPolicy",
        "metadata": {"name": "shop", "namespace": "default"},
        "spec": {
            "targetRefs": [{"group": "gw.dev", "kind": "Backend", "name": "shop"}],
            "circuitBreaker": {"maxConnections": 1000},
        },
    },
]
EXTRA = yaml.safe_dump_all(POLICIES, sort_keys=False)
# The config file's name is the served version's `source`: markup in it must show as text.
HOSTILE_NAME = 'gw<img src=x onerror="document.title=1">'


# -- the browser ------------------------------------------------------------------------------


def _browser_missing() -> str:
    """Why no browser can run here ("" when one can)."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[test]')"
    if not shutil.which("chromedriver") or not (shutil.which("chromium") or shutil.which("chromium-browser")):
        return "no chromium/chromedriver (apt-get install chromium chromium-driver)"
    return ""


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    missing = _browser_missing()
    if missing:
        if os.environ.get("GW_REQUIRE_BROWSER") == "1":
            pytest.fail(f"GW_REQUIRE_BROWSER=1 but {missing}")
        pytest.skip(missing)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or shutil.which("chromium-browser") or ""
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1440,1180", "--hide-scrollbars"):  # fmt: skip
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(shutil.which("chromedriver")))
    yield driver
    driver.quit()


def wait_for(driver: Any, condition: Any, timeout: float = 20.0) -> Any:
    """Until condition(driver) is truthy (selenium polls the page; no sleeps here)."""
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.1).until(condition)


def column(driver: Any, table: str, index: int) -> list[str]:
    """The text of one column of a table's body rows (tables are rebuilt on every refresh)."""
    return driver.execute_script(
        "return [...document.querySelectorAll(`#${arguments[0]} tbody tr`)]"
        ".map(tr => tr.children[arguments[1]] ? tr.children[arguments[1]].textContent : '')",
        table,
        index,
    )


def refreshes(driver: Any) -> int:
    return int(driver.execute_script("return document.body.dataset.refreshes || '0'"))


def screenshot(driver: Any, path: Path) -> None:
    """The whole page: the window grown to the document's height first."""
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(driver.get_window_size()["width"], height + 16)
    driver.execute_script("window.scrollTo(0, 0)")
    driver.save_screenshot(str(path))


def csp_errors(driver: Any) -> list[str]:
    return [e["message"] for e in driver.get_log("browser") if "Content Security Policy" in e["message"]]


# -- a gateway with traffic ---------------------------------------------------------------------


@dataclass
class Site:
    gateway: GatewayProcess
    upstreams: list[Upstream]
    stop_traffic: threading.Event
    traffic: threading.Thread

    def admin(self, path: str) -> str:
        return f"http://127.0.0.1:{self.gateway.admin}{path}"

    def status(self, token: str = "") -> dict[str, Any]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.get(self.admin("/status"), headers=headers, timeout=10).json()


def _send_traffic(gateway: GatewayProcess, stop: threading.Event) -> None:
    """Keep-alive requests to both routes until told to stop: the dashboard's req/s move."""
    client = gateway.connect()
    try:
        while not stop.is_set():
            for host in ("shop.test", "api.test", "api.test"):
                client.request("GET", "/items", {"Host": host})
            stop.wait(0.01)  # pacing, not synchronisation: a few hundred requests a second
    finally:
        client.close()


def site(directory: Path, env: dict[str, str], name: str = "gateway") -> Site:
    upstreams = [Upstream("shop").start(), Upstream("api").start()]
    backends = {u.name: [("127.0.0.1", u.port)] for u in upstreams}
    gateway = launch_gateway(directory, backends, ROUTES, env=env, extra_yaml=EXTRA, name=name)
    stop = threading.Event()
    traffic = threading.Thread(target=_send_traffic, args=(gateway, stop), daemon=True)
    traffic.start()
    return Site(gateway, upstreams, stop, traffic)


def close(s: Site) -> None:
    s.stop_traffic.set()
    s.traffic.join(10)
    s.gateway.stop()
    for u in s.upstreams:
        u.stop()


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    s = site(tmp_path_factory.mktemp("dashboard"), {"GW_WORKERS": "2"}, name=HOSTILE_NAME)
    yield s
    close(s)


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    """Admin on every address, with a token."""
    env = {"GW_ADMIN_TOKEN": TOKEN, "GW_ADMIN_ADDR": f"0.0.0.0:{free_port()}"}
    s = site(tmp_path_factory.mktemp("guarded"), env)
    s.gateway.admin = int(env["GW_ADMIN_ADDR"].rpartition(":")[2])
    yield s
    close(s)


# -- the page ---------------------------------------------------------------------------------


def test_dashboard_is_one_strict_page(served: Site) -> None:
    resp = httpx.get(served.admin("/dashboard"), timeout=10)
    assert resp.status_code == 200
    assert resp.headers["content-type"] == "text/html; charset=utf-8"
    assert resp.headers["cache-control"] == "no-store"
    csp = resp.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "connect-src 'self'" in csp
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
    assert "script-src 'sha256-" in csp and "style-src 'sha256-" in csp
    # Nothing from elsewhere, and no server data through the HTML parser.
    assert "http://" not in resp.text and "https://" not in resp.text
    assert "innerHTML" not in resp.text and "insertAdjacentHTML" not in resp.text
    assert httpx.post(served.admin("/status"), timeout=10).status_code == 405


def test_dashboard_shows_what_status_says(served: Site, browser: Any, tmp_path: Path) -> None:
    browser.get(served.admin("/dashboard?refresh=0.5"))
    # Two refreshes: the second has counter deltas, so req/s shows a number.
    wait_for(browser, lambda d: refreshes(d) >= 2)
    status = served.status()
    pids = sorted(str(w["pid"]) for w in status["workers"])
    assert len(pids) == 2
    wait_for(browser, lambda d: sorted(column(d, "workers", 1)) == pids)
    version = str(status["config"]["version"])
    assert browser.find_element("id", "config-version").text == version
    assert set(column(browser, "workers", 3)) == {version}
    # One keep-alive client: the worker that accepted it has the traffic.
    assert sum(float(rate) for rate in column(browser, "workers", 8)) > 0, column(browser, "workers", 8)
    routes = {f"{r['namespace']}/{r['name']}" for r in status["gatewayAPI"]["httpRoutes"]}
    assert routes == {"default/shop", "default/api"}
    assert set(column(browser, "routes", 0)) == routes
    assert all(text.startswith("AcceptedResolvedRefs") for text in column(browser, "routes", 2))
    assert column(browser, "listeners", 0) == ["default/test/http"]
    assert column(browser, "listeners", 1) == [str(served.gateway.port)]
    # Backends: every one the rules send to, its endpoints, and the circuit of the one with a policy.
    shown = browser.execute_script(
        "return [...document.querySelectorAll('#backends [data-endpoint]')].map(e => e.dataset.endpoint)"
    )
    assert sorted(shown) == sorted(e for lb in status["load_balancers"] for e in lb["endpoints"])
    assert sorted(shown) == sorted(f"127.0.0.1:{u.port}" for u in served.upstreams)
    backends = dict(zip(column(browser, "backends", 0), column(browser, "backends", 2), strict=True))
    assert backends == {"Backend default/api": "no policy", "Backend default/shop": "closed"}
    assert status["backends"][0]["circuit"]["state"] == "closed"
    # The rate limit's decisions and their rate.
    wait_for(browser, lambda d: column(d, "ratelimits", 0) == ["default/api-limit"])
    assert re.search(r"allowed \d+", column(browser, "ratelimits", 2)[0])
    assert [r["policy"] for r in served.status()["rate_limits"]] == ["default/api-limit"]
    # Redis and the versions Redis keeps.
    redis = dict(zip(column(browser, "redis", 0), column(browser, "redis", 1), strict=True))
    assert redis["mode"] == status["redis"]["mode"] == "embedded"
    assert redis["latency"].endswith(" ms")
    wait_for(browser, lambda d: column(d, "versions", 0) == [f"{version} current served"])
    # The fleet as Redis holds it (/fleet): this replica's two workers, the same version, the circuit.
    # (Each worker's first heartbeat follows its start: both are in within a beat or two.)
    wait_until(lambda: httpx.get(served.admin("/fleet"), timeout=10).json()["workers"] == 2, what="both heartbeats")
    (replica,) = httpx.get(served.admin("/fleet"), timeout=10).json()["replicas"]
    shown = [replica["replica"] + " (this)"]
    wait_for(browser, lambda d: column(d, "fleet", 0) == shown and column(d, "fleet", 5)[0].startswith("2 "))
    assert column(browser, "fleet", 2) == ["2"]  # its record: workers alive
    assert column(browser, "fleet", 3)[0].endswith(" s ago")
    assert column(browser, "fleet", 4) == [version] and column(browser, "fleet", 8) == ["loopback only"]
    summary = dict(zip(column(browser, "fleet-summary", 0), column(browser, "fleet-summary", 1), strict=True))
    assert summary["Redis"].startswith("available (embedded, ") and summary["fleet workers"] == "2"
    assert summary["replicas"] == "1" and summary["heartbeating workers"].startswith("2 ")
    assert summary["fleet version"].startswith(f"{version} (files, ") and summary["served here"] == version
    assert summary["circuits open"] == "0" and summary["ejected"] == "0"
    assert column(browser, "fleet-backends", 0) == ["Backend default/shop"]  # the backend with a policy
    assert column(browser, "fleet-backends", 1) == ["closed (none stored)"]
    # Markup in a served string stays text.
    source = dict(zip(column(browser, "config", 0), column(browser, "config", 1), strict=True))["source"]
    assert source == status["config"]["source"] and source.endswith(HOSTILE_NAME + ".yaml")
    assert browser.find_elements("css selector", "main img") == []
    assert browser.title == "gw dashboard"
    assert not browser.find_element("id", "banner").is_displayed()
    assert csp_errors(browser) == []
    screenshot(browser, tmp_path / "dashboard.png")


def test_dashboard_follows_a_reload_and_shows_its_diff(served: Site, browser: Any) -> None:
    browser.get(served.admin("/dashboard?refresh=0.5"))
    before = served.status()["config"]["version"]
    wait_for(browser, lambda d: d.find_element("id", "config-version").text == str(before))
    path = served.gateway.config_path
    documents = list(yaml.safe_load_all(path.read_text()))
    extra = next(d for d in documents if d["kind"] == "HTTPRoute" and d["metadata"]["name"] == "shop")
    extra = {**extra, "metadata": {"name": "extra", "namespace": "default"}}
    extra["spec"] = {**extra["spec"], "hostnames": ["extra.test"]}
    path.write_text(yaml.safe_dump_all([*documents, extra], sort_keys=False))
    os.kill(served.gateway.pid, signal.SIGHUP)
    after = str(before + 1)
    wait_for(browser, lambda d: d.find_element("id", "config-version").text == after)
    wait_for(browser, lambda d: "default/extra" in column(d, "routes", 0))
    wait_for(browser, lambda d: column(d, "versions", 0)[:2] == [f"{after} current served", str(before)])
    browser.find_element("css selector", "#versions button").click()
    diff = wait_for(browser, lambda d: d.find_element("id", "diff").text)
    assert "+  name: extra" in diff and "+  - extra.test" in diff
    # The same text for scripts.
    text = httpx.get(served.admin(f"/config/diff?from={before}&to={after}"), timeout=10).text
    assert "+  name: extra" in text
    versions = httpx.get(served.admin("/config/versions"), timeout=10).json()
    assert versions["current"] == versions["served"] == before + 1
    assert [v["origin"] for v in versions["versions"][:2]] == ["files", "files"]
    assert httpx.get(served.admin("/config/diff?from=1&to=x"), timeout=10).status_code == 400
    missing = httpx.get(served.admin("/config/diff?from=1&to=999"), timeout=10)
    assert missing.status_code == 404 and missing.headers["content-type"] == "application/problem+json"


def test_dashboard_says_when_the_admin_is_gone(tmp_path: Path, browser: Any) -> None:
    s = site(tmp_path, {})
    try:
        browser.get(s.admin("/dashboard?refresh=0.5"))
        wait_for(browser, lambda d: refreshes(d) >= 1)
    finally:
        close(s)
    banner = wait_for(browser, lambda d: d.find_element("id", "banner").text)
    assert banner.startswith("admin unreachable")


# -- GW_ADMIN_TOKEN ---------------------------------------------------------------------------


def test_token_guards_everything_but_the_probes(guarded: Site) -> None:
    for path in ("/status", "/fleet", "/config/versions", "/config/diff?from=1&to=1"):
        resp = httpx.get(guarded.admin(path), timeout=10)
        assert resp.status_code == 401, path
        assert resp.headers["www-authenticate"].startswith("Bearer")
        assert resp.headers["content-type"] == "application/problem+json"
        assert resp.json()["status"] == 401
        wrong = httpx.get(guarded.admin(path), headers={"Authorization": "Bearer " + TOKEN[:-1] + "x"}, timeout=10)
        assert wrong.status_code == 401, path
        right = httpx.get(guarded.admin(path), headers={"Authorization": "Bearer " + TOKEN}, timeout=10)
        assert right.status_code == 200, path
    for path in ("/healthz", "/readyz", "/metrics", "/dashboard"):
        assert httpx.get(guarded.admin(path), timeout=10).status_code == 200, path
    assert guarded.status(TOKEN)["workers"]


def test_dashboard_takes_the_token_from_its_fragment(guarded: Site, browser: Any) -> None:
    browser.get(guarded.admin("/dashboard?refresh=0.5"))
    wait_for(browser, lambda d: d.find_element("id", "login").is_displayed())
    assert "token" in browser.find_element("id", "banner").text
    browser.get(guarded.admin(f"/dashboard?refresh=0.5#token={TOKEN}"))
    pids = sorted(str(w["pid"]) for w in guarded.status(TOKEN)["workers"])
    wait_for(browser, lambda d: sorted(column(d, "workers", 1)) == pids)
    # Taken out of the address bar (and never in a query string a server would log).
    assert TOKEN not in browser.current_url
    assert not browser.find_element("id", "login").is_displayed()
    browser.execute_script("sessionStorage.clear()")


def _outside_address() -> str | None:
    """An address of this host that is not loopback (a peer from it is not a loopback peer)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # TEST-NET-1: no packet is sent, only the route is chosen
        except OSError:
            return None
        address = s.getsockname()[0]
    return None if address.startswith("127.") else address


def test_without_a_token_only_loopback_peers_read_a_public_admin(tmp_path: Path) -> None:
    admin = free_port()
    s = site(tmp_path, {"GW_ADMIN_ADDR": f"0.0.0.0:{admin}"})
    s.gateway.admin = admin
    try:
        assert any("set GW_ADMIN_TOKEN" in line for line in s.gateway.log)
        assert httpx.get(s.admin("/status"), timeout=10).status_code == 200
        outside = _outside_address()
        if outside is None:
            pytest.skip("this host has no non-loopback address to call from")
        for path in ("/status", "/fleet", "/config/versions"):
            resp = httpx.get(f"http://{outside}:{admin}{path}", timeout=10)
            assert resp.status_code == 403, path
            assert "GW_ADMIN_TOKEN" in resp.json()["detail"]
        for path in ("/healthz", "/readyz", "/metrics", "/dashboard"):
            assert httpx.get(f"http://{outside}:{admin}{path}", timeout=10).status_code == 200, path
    finally:
        close(s)


async def test_the_loopback_rule_looks_at_the_peer() -> None:
    """The same rule on the ASGI app, for peers a test host cannot be (IPv6, IPv4-mapped)."""
    app = AdminApp(lambda: (True, "ready"), lambda: b"", lambda: {"ok": True}, loopback_only=True)

    async def get(client: tuple[str, int] | None) -> int:
        sent: list[dict[str, Any]] = []
        scope = {"type": "http", "method": "GET", "path": "/status", "headers": [], "client": client}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        await app(scope, None, send)
        return sent[0]["status"]

    assert await asyncio.gather(get(("127.0.0.1", 1)), get(("::1", 1)), get(("::ffff:127.0.0.1", 1)), get(None)) == [
        200, 200, 200, 200
    ]  # fmt: skip
    assert await asyncio.gather(get(("10.1.2.3", 1)), get(("2001:db8::1", 1)), get(("::ffff:10.0.0.1", 1))) == [
        403, 403, 403
    ]  # fmt: skip


def test_a_short_token_stops_start_up() -> None:
    env = {**os.environ, "GW_ADMIN_TOKEN": "short", "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-m", "gw", "run"], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "GW_ADMIN_TOKEN=(secret): shorter than 16 characters" in done.stderr
    assert "short" not in done.stderr.replace("shorter", "")
