"""End to end: `gw controller` (a process, KUBECONFIG → a FAKE API server) publishes, real `gw run` replicas serve.

Replicas start on bootstrap files while the fleet's current version is the controller's: they
serve that version (a pod's files only bootstrap it). An HTTPRoute changed in the API server is
served by every replica; the time from the change to the last replica serving it is printed.
The controller's /healthz and /readyz are probed while the API server is up, down and back.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.controller import cluster
from tests.support import valkey
from tests.support.fake_apiserver import FakeApiServer
from tests.support.gateway import REPO, GatewayProcess, config_yaml, free_port
from tests.support.upstream import Upstream

REPLICAS = 3


class ControllerProcess:
    """`gw controller` as a process of its own, its stderr kept."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.admin = free_port()
        self.log = log
        full = {**os.environ, **env, "GW_ADMIN_ADDR": f"127.0.0.1:{self.admin}", "PYTHONPATH": str(REPO)}
        with log.open("wb") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "gw", "controller"], env=full, stderr=out,
                                         stdout=subprocess.DEVNULL)  # fmt: skip

    def get(self, path: str) -> httpx.Response:
        return httpx.get(f"http://127.0.0.1:{self.admin}{path}", timeout=5)

    def stop(self) -> int:
        self.proc.terminate()
        try:
            return self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


def wait_until(condition: object, what: str, deadline: float = 20.0) -> None:
    end = time.monotonic() + deadline
    while True:
        try:
            if condition():  # type: ignore[operator]
                return
        except (httpx.HTTPError, OSError):
            pass
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def upstream_of(gw: GatewayProcess, host: str) -> str | None:
    """Which upstream answers `host` on this replica (None: no route answers it)."""
    client = gw.connect()
    try:
        response = client.request("GET", "/echo", {"Host": host})
    finally:
        client.close()
    return json.loads(response.body)["upstream"] if response.status == 200 else None  # type: ignore[no-any-return]


@pytest.fixture
def fleet_env(fake: FakeApiServer, redis_server: valkey.Server, tmp_path: Path) -> dict[str, str]:
    # The replicas share one listener port on purpose (as pods behind one Service would not need to).
    return {"KUBECONFIG": str(fake.kubeconfig(tmp_path / "kubeconfig")), "GW_REDIS_URL": redis_server.url,
            "GW_SHARE_PORTS": "true"}  # fmt: skip


@pytest.fixture
def controller_process(fleet_env: dict[str, str], tmp_path: Path) -> Iterator[ControllerProcess]:
    process = ControllerProcess(fleet_env, tmp_path / "controller.log")
    yield process
    process.stop()


def test_replicas_serve_what_the_controller_publishes_from_the_cluster(
    fake: FakeApiServer,
    upstreams: list[Upstream],
    fleet_env: dict[str, str],
    tmp_path: Path,
    controller_process: ControllerProcess,
) -> None:
    a, b, c = upstreams
    port = free_port()
    for obj in cluster.basic(port, a.port):
        fake.put(obj)
    wait_until(lambda: controller_process.get("/readyz").status_code == 200, "the controller ready")
    wait_until(lambda: controller_process.get("/status").json()["version"] >= 1, "a first version")

    # Bootstrap files on the same port, routing elsewhere: the replicas serve the controller's version instead.
    bootstrap = tmp_path / "bootstrap.yaml"
    bootstrap.write_text(config_yaml(port, {"c": [("127.0.0.1", c.port)]}, [{"name": "c", "rules": [
        {"backendRefs": [{"backend": "c"}]}]}]))  # fmt: skip
    replicas: list[GatewayProcess] = []
    try:
        for i in range(REPLICAS):
            replica = GatewayProcess(
                config_path=bootstrap, port=port, admin=free_port(), access_log=tmp_path / f"a{i}.log", env=fleet_env
            )
            replicas.append(replica.start())
            # Not published over the controller's version (which the controller would then restore).
            assert replica.wait_for_log("gw: the fleet serves version").endswith(
                "published by `gw controller`: serving it, not these files"
            )
        for replica in replicas:
            wait_until(lambda r=replica: upstream_of(r, "any.example") == "a", "a replica serving the cluster's route")

        fake.put(cluster.service("b"))
        fake.put(cluster.endpoint_slice("b", b.port))
        changed = time.monotonic()
        fake.put(cluster.route("b", "b", path="/", hostname="b.example"))
        served = []
        for replica in replicas:
            wait_until(lambda r=replica: upstream_of(r, "b.example") == "b", "every replica serving the new route")
            served.append(time.monotonic() - changed)
        each = ", ".join(f"{s * 1000:.0f}" for s in served)
        print(f"HTTPRoute change → served by all {REPLICAS} replicas in {max(served) * 1000:.0f} ms "
              f"(debounce 200 ms; per replica as polled: {each} ms)")  # fmt: skip
        status = controller_process.get("/status").json()
        assert status["leading"] is True
        assert status["counters"]["versions_published"] >= 2
    finally:
        for replica in replicas:
            replica.stop()


def test_the_controller_probes_while_the_api_server_goes_and_comes_back(
    fake: FakeApiServer, controller_process: ControllerProcess
) -> None:
    for obj in cluster.basic(free_port(), 9999):
        fake.put(obj)
    wait_until(lambda: controller_process.get("/readyz").status_code == 200, "ready")
    assert controller_process.get("/healthz").status_code == 200
    wait_until(lambda: "gw_controller_versions_published_total 1\n" in controller_process.get("/metrics").text,
               "a version published, in /metrics")  # fmt: skip
    fake.stop()
    wait_until(lambda: controller_process.get("/readyz").status_code == 503, "not ready")
    assert "API server unreachable" in controller_process.get("/readyz").text
    assert controller_process.get("/healthz").status_code == 200
    fake.start()
    wait_until(lambda: controller_process.get("/readyz").status_code == 200, "ready again")
    assert controller_process.stop() == 0


def test_without_a_cluster_configuration_the_controller_says_so_and_exits_2(tmp_path: Path) -> None:
    env = {**os.environ, "KUBECONFIG": str(tmp_path / "missing"), "GW_REDIS_URL": "redis://127.0.0.1:1",
           "PYTHONPATH": str(REPO)}  # fmt: skip
    done = subprocess.run([sys.executable, "-m", "gw", "controller"], env=env, capture_output=True, text=True,
                          timeout=30)  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        f"gw controller: cannot reach the cluster: no Kubernetes configuration: not in a pod, and "
        f"Configuration file {tmp_path / 'missing'} not found"
    ]
