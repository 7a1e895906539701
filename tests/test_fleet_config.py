"""Config versions across the fleet: real supervisors and workers, real Valkey servers.

The embedded Valkey by default; replicas sharing one server converge on one version; `gw config
push` reaches every worker without a signal, through its supervisor; Redis going away and coming
back empty heals.
"""

from __future__ import annotations

import base64
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import psutil
import redis
import trustme
import yaml
from cryptography import x509

from gw.settings import Settings
from gw.state import Keys
from tests.conftest import StartGateway
from tests.support import valkey
from tests.support.gateway import GatewayProcess, config_yaml, free_port, runtime_dir
from tests.support.upstream import Upstream
from tests.test_supervisor import wait_until

KEY = os.urandom(32)
ROUTES = [{"name": "all", "rules": [{"backendRefs": [{"backend": "up"}]}]}]


def routes_with(host: str) -> list[dict[str, object]]:
    return [*ROUTES, {"name": host.split(".")[0], "hostnames": [host], "rules": [{"backendRefs": [{"backend": "up"}]}]}]


def versions(gw: GatewayProcess) -> set[int]:
    return {w["config_version"] for w in gw.status()["workers"]}  # type: ignore[index,union-attr]


def served(gw: GatewayProcess, host: str) -> int:
    client = gw.connect()
    try:
        return client.request("GET", "/echo", {"Host": host}).status
    finally:
        client.close()


def gw_config(gw: GatewayProcess, *args: str) -> subprocess.CompletedProcess[str]:
    # The same GW_ADMIN_ADDR and GW_RUNTIME_DIR as the gateway: they name its embedded Valkey's socket.
    env = {**os.environ, "GW_ADMIN_ADDR": f"127.0.0.1:{gw.admin}", **gw.env}
    return subprocess.run([sys.executable, "-m", "gw", "config", *args], env=env, capture_output=True, text=True,
                          timeout=30)  # fmt: skip


def start(start_gateway: StartGateway, upstream: Upstream, workers: int = 2, **env: str) -> GatewayProcess:
    env = {"GW_WORKERS": str(workers), "GW_RUNTIME_DIR": runtime_dir(), **env}
    return start_gateway({"up": [("127.0.0.1", upstream.port)]}, ROUTES, env=env)


def test_the_embedded_valkey_holds_the_versions(start_gateway: StartGateway, upstream: Upstream) -> None:
    gw = start(start_gateway, upstream)
    # The follower connects after the workers are ready: on a loaded machine /status may come first.
    wait_until(lambda: gw.status()["redis"]["connected"], what="the follower to connect")  # type: ignore[index]
    redis = gw.status()["redis"]
    assert redis["embedded"] and redis["url"].startswith("unix://")  # type: ignore[index]
    assert versions(gw) == {1}
    current = gw_config(gw, "current")
    assert current.returncode == 0 and current.stdout.split()[1] == "1", current.stdout + current.stderr
    server = [p for p in psutil.Process(gw.pid).children() if "valkey" in " ".join(p.cmdline())]
    assert len(server) == 1
    gw.stop()
    assert not server[0].is_running() or server[0].status() == psutil.STATUS_ZOMBIE


def test_gw_config_push_reaches_every_worker_without_a_signal(
    start_gateway: StartGateway, upstream: Upstream, tmp_path: Path
) -> None:
    gw = start(start_gateway, upstream, GW_CONFIG_POLL_INTERVAL="30s")  # the change event must do it
    new = tmp_path / "new.yaml"
    new.write_text(config_yaml(gw.port, {"up": [("127.0.0.1", upstream.port)]}, routes_with("pushed.test")))
    pushed = gw_config(gw, "push", str(new))
    assert pushed.returncode == 0, pushed.stdout + pushed.stderr
    wait_until(lambda: versions(gw) == {2} and gw.status()["config"]["version"] == 2, what="version 2 everywhere")
    routes = {r["name"] for r in gw.status()["gatewayAPI"]["httpRoutes"]}  # type: ignore[index]
    assert "pushed" in routes
    metrics = httpx.get(f"http://127.0.0.1:{gw.admin}/metrics", timeout=5).text
    per_worker = [ln for ln in metrics.splitlines() if ln.startswith("gw_worker_config_version{")]
    assert len(per_worker) == 2 and all(ln.endswith(" 2") for ln in per_worker), per_worker
    # One reload, counted once: from the fleet (not also as "applied", which counts HUPs).
    assert 'gw_config_reloads_total{result="fleet"} 1' in metrics
    assert 'gw_config_reloads_total{result="applied"} 0' in metrics


def test_a_version_the_supervisor_refuses_is_served_by_none_of_its_workers(
    start_gateway: StartGateway, upstream: Upstream, tmp_path: Path
) -> None:
    """Workers hear of versions only from their supervisor, which refuses one whose new listener
    port it cannot bind: they keep the running config with it (they followed Redis on their own,
    and served the refused version's routes while /status said the old version)."""
    gw = start(start_gateway, upstream)
    with socket.socket() as taken:  # no SO_REUSEPORT: the supervisor cannot bind this port too
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        only = routes_with("pushed.test")[1:]  # no catch-all
        docs = list(yaml.safe_load_all(config_yaml(gw.port, {"up": [("127.0.0.1", upstream.port)]}, only)))
        gateway = next(d for d in docs if d["kind"] == "Gateway")
        gateway["spec"]["listeners"].append({"name": "more", "port": taken.getsockname()[1], "protocol": "HTTP"})
        new = tmp_path / "new.yaml"
        new.write_text(yaml.safe_dump_all(docs))
        mark = len(gw.log)
        pushed = gw_config(gw, "push", str(new))
        assert pushed.returncode == 0, pushed.stdout + pushed.stderr
        gw.wait_for_log("gw: config version 2 from Redis rejected, keeping the running config", after=mark)
        assert gw.status()["config"]["version"] == 1 and versions(gw) == {1}  # type: ignore[index]
        assert served(gw, "other.test") == 200  # the running config's catch-all route; version 2 has none


def test_replicas_reading_the_same_files_converge(
    start_gateway: StartGateway, upstream: Upstream, redis_server: valkey.Server
) -> None:
    first = start(start_gateway, upstream, GW_REDIS_URL=redis_server.url)
    # A second replica: same files, same listener port (SO_REUSEPORT), same Redis.
    second = GatewayProcess(
        config_path=first.config_path, port=first.port, admin=free_port(),
        env={"GW_WORKERS": "1", "GW_REDIS_URL": redis_server.url, "GW_SHARE_PORTS": "true"},
        access_log=first.access_log.with_suffix(".2"),
    ).start()  # fmt: skip
    try:
        assert versions(first) == versions(second) == {1}  # the second publish was a no-op
        routes = routes_with("edited.test")
        first.config_path.write_text(config_yaml(first.port, {"up": [("127.0.0.1", upstream.port)]}, routes))
        os.kill(first.pid, signal.SIGHUP)  # only one replica is told
        wait_until(lambda: versions(second) == {2}, what="the other replica to follow")
        assert versions(first) == {2}
        assert "edited" in {r["name"] for r in second.status()["gatewayAPI"]["httpRoutes"]}  # type: ignore[index]
    finally:
        second.stop()


def test_redis_gone_keeps_serving_and_back_empty_is_republished(
    start_gateway: StartGateway, upstream: Upstream, redis_server: valkey.Server
) -> None:
    gw = start(start_gateway, upstream, GW_REDIS_URL=redis_server.url, GW_CONFIG_POLL_INTERVAL="200ms")
    redis_server.stop()
    wait_until(lambda: not gw.status()["redis"]["connected"], what="the supervisor to notice")  # type: ignore[index]
    assert all(served(gw, "any.test") == 200 for _ in range(10))
    ready = httpx.get(f"http://127.0.0.1:{gw.admin}/readyz", timeout=5)
    assert ready.status_code == 200 and "degraded" in ready.text
    assert "\ngw_redis_connected 0\n" in httpx.get(f"http://127.0.0.1:{gw.admin}/metrics", timeout=5).text
    # A HUP while Redis is away: served at once, published when Redis answers again.
    gw.config_path.write_text(config_yaml(gw.port, {"up": [("127.0.0.1", upstream.port)]}, routes_with("late.test")))
    mark = len(gw.log)
    os.kill(gw.pid, signal.SIGHUP)
    gw.wait_for_log("gw: config reloaded", after=mark)
    assert gw.status()["redis"]["unpublished"]  # type: ignore[index]
    redis_server.start()  # same port, nothing stored
    wait_until(lambda: gw.status()["redis"]["connected"] and not gw.status()["redis"]["unpublished"],  # type: ignore[index]
               what="the republish")  # fmt: skip
    with redis_server.client() as client:
        current = client.get("{gw:config}:current")
    assert current is not None
    assert "\ngw_redis_connected 1\n" in httpx.get(f"http://127.0.0.1:{gw.admin}/metrics", timeout=5).text
    wait_until(lambda: versions(gw) == {gw.status()["config"]["version"]},  # type: ignore[index]
               what="workers to serve the republished version")  # fmt: skip
    assert "late" in {r["name"] for r in gw.status()["gatewayAPI"]["httpRoutes"]}  # type: ignore[index]


def second_replica(first: GatewayProcess, redis_url: str, **env: str) -> GatewayProcess:
    """Another supervisor on the same files, listener port (SO_REUSEPORT) and Redis."""
    return GatewayProcess(
        config_path=first.config_path, port=first.port, admin=free_port(),
        env={"GW_WORKERS": "1", "GW_REDIS_URL": redis_url, "GW_SHARE_PORTS": "true", **env},
        access_log=first.access_log.with_suffix(".2"),
    ).start()  # fmt: skip


def current_version(gw: GatewayProcess) -> int:
    current = gw_config(gw, "current")
    assert current.returncode == 0, current.stdout + current.stderr
    return int(current.stdout.split()[1])


def test_a_hup_made_while_redis_was_stuck_is_published_when_it_answers_with_its_data(
    start_gateway: StartGateway, upstream: Upstream, redis_server: valkey.Server
) -> None:
    d = start(start_gateway, upstream, GW_REDIS_URL=redis_server.url, GW_CONFIG_POLL_INTERVAL="200ms")
    e = second_replica(d, redis_server.url, GW_CONFIG_POLL_INTERVAL="200ms")
    try:
        assert versions(d) == versions(e) == {1}
        redis_server.pause()  # keeps its data: it comes back holding version 1
        try:
            routes = routes_with("late.test")
            d.config_path.write_text(config_yaml(d.port, {"up": [("127.0.0.1", upstream.port)]}, routes))
            mark = len(d.log)
            os.kill(d.pid, signal.SIGHUP)
            line = d.wait_for_log("gw: config reloaded", after=mark)
            assert "unpublished, based on version 1" in line, line  # not "version 1": that is other content
            assert d.status()["redis"]["unpublished"]  # type: ignore[index]
        finally:
            redis_server.resume()
        wait_until(lambda: versions(e) == {2}, what="the other replica to serve the HUP's version")
        wait_until(lambda: not d.status()["redis"]["unpublished"] and versions(d) == {2},  # type: ignore[index]
                   what="d to publish and serve version 2")  # fmt: skip
        assert d.status()["config"]["version"] == 2 and current_version(d) == 2  # type: ignore[index]
        assert "late" in {r["name"] for r in e.status()["gatewayAPI"]["httpRoutes"]}  # type: ignore[index]
    finally:
        e.stop()


def serving_a_push(
    start_gateway: StartGateway, upstream: Upstream, redis_server: valkey.Server, tmp_path: Path
) -> GatewayProcess:
    """A gateway whose files made version 1, serving version 2 from `gw config push`."""
    gw = start(start_gateway, upstream, GW_REDIS_URL=redis_server.url)
    path = tmp_path / "pushed.yaml"
    path.write_text(config_yaml(gw.port, {"up": [("127.0.0.1", upstream.port)]}, routes_with("pushed.test")))
    pushed = gw_config(gw, "push", str(path))
    assert pushed.returncode == 0 and pushed.stdout.startswith("published version 2"), pushed.stdout + pushed.stderr
    wait_until(lambda: versions(gw) == {2}, what="the push to be served")
    return gw


def test_a_restarted_replica_does_not_undo_a_push(
    start_gateway: StartGateway, upstream: Upstream, redis_server: valkey.Server, tmp_path: Path
) -> None:
    gw = serving_a_push(start_gateway, upstream, redis_server, tmp_path)
    gw.stop()
    again = second_replica(gw, redis_server.url)  # its files are unchanged since version 1
    try:
        assert current_version(again) == 2 and versions(again) == {2}
        assert "pushed" in {r["name"] for r in again.status()["gatewayAPI"]["httpRoutes"]}  # type: ignore[index]
        assert any("unchanged since version 1, are not published again" in line for line in again.log), again.log
    finally:
        again.stop()


def test_a_hup_with_unchanged_files_does_not_undo_a_push_and_an_edit_publishes_over_it(
    start_gateway: StartGateway, upstream: Upstream, redis_server: valkey.Server, tmp_path: Path
) -> None:
    gw = serving_a_push(start_gateway, upstream, redis_server, tmp_path)
    mark = len(gw.log)
    os.kill(gw.pid, signal.SIGHUP)
    assert "unchanged" in gw.wait_for_log("gw: config reloaded", after=mark)
    assert current_version(gw) == 2 and versions(gw) == {2}
    # An edit is deliberate: it publishes over the push.
    gw.config_path.write_text(config_yaml(gw.port, {"up": [("127.0.0.1", upstream.port)]}, routes_with("edit.test")))
    mark = len(gw.log)
    os.kill(gw.pid, signal.SIGHUP)
    assert "version 3" in gw.wait_for_log("gw: config reloaded", after=mark)
    assert current_version(gw) == 3
    wait_until(lambda: versions(gw) == {3}, what="the edit to be served")


def test_tls_keys_reach_replicas_sealed_and_a_replica_without_the_key_keeps_its_own(
    start_gateway: StartGateway, upstream: Upstream, redis_server: valkey.Server, tmp_path: Path
) -> None:
    """GW_CONFIG_KEYS: the private key never sits in Redis in the clear, a replica holding the key
    serves a pushed certificate, one holding another key refuses that version and serves its own."""
    from tests.test_https_proxy import _secret, connect

    ca = trustme.CA()
    env = {"GW_WORKERS": "1", "GW_REDIS_URL": redis_server.url, "GW_CONFIG_KEYS": base64.b64encode(KEY).decode()}

    def tls_config(port: int, leaf: trustme.LeafCert) -> str:
        docs = [
            {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "GatewayClass", "metadata": {"name": "gw"},
             "spec": {"controllerName": "gw.dev/gateway-controller"}},
            {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
             "metadata": {"name": "tls", "namespace": "default"},
             "spec": {"gatewayClassName": "gw", "listeners": [
                 {"name": "a", "port": port, "protocol": "HTTPS", "hostname": "a.test",
                  "tls": {"certificateRefs": [{"name": "a-cert"}]}}]}},
            _secret("a-cert", leaf),
            {"apiVersion": "gw.dev/v1alpha1", "kind": "Backend", "metadata": {"name": "up", "namespace": "default"},
             "spec": {"endpoints": [{"address": "127.0.0.1", "port": upstream.port}]}},
            {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
             "metadata": {"name": "site", "namespace": "default"},
             "spec": {"parentRefs": [{"name": "tls"}],
                      "rules": [{"backendRefs": [{"group": "gw.dev", "kind": "Backend", "name": "up"}]}]}},
        ]  # fmt: skip
        return yaml.safe_dump_all(docs)

    def served_serial(gw: GatewayProcess) -> int:
        client = connect(gw, ca, "a.test")
        try:
            assert client.request("GET", "/", headers={"Host": "a.test"}).status == 200
            return int(client.sock.getpeercert()["serialNumber"], 16)  # type: ignore[attr-defined]
        finally:
            client.close()

    def serial(leaf: trustme.LeafCert) -> int:
        return x509.load_pem_x509_certificate(leaf.cert_chain_pems[0].bytes()).serial_number

    first, second = ca.issue_cert("a.test"), ca.issue_cert("a.test")
    port = free_port()
    keyed = start_gateway({}, [], env=env, yaml_text=tls_config(port, first))
    keyed.port = port
    assert keyed.status()["redis"]["sealed"] is True  # type: ignore[index]
    pushed = tmp_path / "pushed.yaml"
    pushed.write_text(tls_config(port, second))
    result = gw_config(keyed, "push", str(pushed))
    assert result.returncode == 0, result.stdout + result.stderr
    wait_until(lambda: versions(keyed) == {2}, what="version 2")
    assert served_serial(keyed) == serial(second)  # opened from Redis: the pushed key and certificate
    raw = redis.Redis.from_url(redis_server.url)
    try:
        blobs = list(raw.hvals(Keys(Settings().redis_prefix).config.versions))
    finally:
        raw.close()
    assert len(blobs) == 2 and not any(b"PRIVATE KEY" in b for b in blobs)
    assert not any(base64.b64encode(leaf.private_key_pem.bytes())[:40] in b for b in blobs for leaf in (first, second))

    # Another key: version 2 is refused, the replica serves its own files and says why.
    other = {**env, "GW_CONFIG_KEYS": base64.b64encode(os.urandom(32)).decode()}
    own_port = free_port()
    stranger = start_gateway({}, [], env=other, yaml_text=tls_config(own_port, first))
    stranger.port = own_port
    wait_until(lambda: stranger.status()["redis"]["refused"], what="the stranger to refuse version 2")  # type: ignore[index]
    refused = stranger.status()["redis"]["refused"]  # type: ignore[index]
    assert refused.startswith("version 2: ") and "is sealed with key" in refused, refused
    assert served_serial(stranger) == serial(first) and keyed.status()["config"]["version"] == 2  # type: ignore[index]
