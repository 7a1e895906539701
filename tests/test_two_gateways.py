"""Two `gw run` on one host: a second on a taken port refuses to start; each gets its own embedded Valkey."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import psutil

from tests.conftest import StartGateway
from tests.support.gateway import REPO, GatewayProcess, config_yaml, free_port
from tests.support.upstream import Upstream

ROUTES: list[dict[str, object]] = [{"name": "all", "rules": [{"backendRefs": [{"backend": "up"}]}]}]


def gw_run(config: Path, runtime: Path, **extra: str) -> subprocess.CompletedProcess[str]:
    """`gw run` on `config` with its own admin port, expected to exit at start."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GW_")}
    env.update(PYTHONPATH=str(REPO), GW_CONFIG=str(config), GW_ADMIN_ADDR=f"127.0.0.1:{free_port()}",
               GW_RUNTIME_DIR=str(runtime), GW_WORKERS="1", GW_ACCESS_LOG="off", **extra)  # fmt: skip
    return subprocess.run([sys.executable, "-m", "gw", "run"], env=env, capture_output=True, text=True, timeout=60)


def test_a_second_gateway_on_a_taken_port_refuses_to_start_and_names_the_port_and_its_holder(
    gateway: GatewayProcess, tmp_path: Path
) -> None:
    # SO_REUSEPORT would let the newcomer join the running gateway's socket group and take a share
    # of its connections while serving another config.
    result = gw_run(gateway.config_path, tmp_path)
    assert result.returncode == 1, result.stderr
    holders = {gateway.pid, *(p.pid for p in psutil.Process(gateway.pid).children())}
    line = next(x for x in result.stderr.splitlines() if "already in use" in x)
    assert f"port {gateway.port} is already in use by pid " in line
    assert int(line.split("by pid ")[1].split()[0]) in holders, line
    assert "gw: " in line  # the holder's title
    assert gateway.alive() and gateway.status()["config"]["version"] == 1  # type: ignore[index]


def test_a_port_taken_by_a_plain_listener_is_refused_too(tmp_path: Path, upstream: Upstream) -> None:
    config = tmp_path / "gw.yaml"
    config.write_text(config_yaml(upstream.port, {"up": [("127.0.0.1", upstream.port)]}, ROUTES))
    result = gw_run(config, tmp_path)
    assert result.returncode == 1
    assert f"port {upstream.port} is already in use" in result.stderr


def test_two_gateways_with_one_runtime_dir_each_start_their_own_embedded_valkey(
    start_gateway: StartGateway, upstream: Upstream, tmp_path: Path
) -> None:
    # The default GW_RUNTIME_DIR is one directory for every gw of a user: the sockets must differ.
    runtime = tmp_path / "rt"
    backends = {"up": [("127.0.0.1", upstream.port)]}
    first = start_gateway(backends, ROUTES, env={"GW_RUNTIME_DIR": str(runtime)})
    second = start_gateway(backends, ROUTES, env={"GW_RUNTIME_DIR": str(runtime)})
    for gw in (first, second):
        assert gw.status()["redis"]["url"] == f"unix://{runtime}/gw-valkey-{gw.admin}.sock"  # type: ignore[index]
        assert httpx.get(gw.url("/"), timeout=10).status_code == 200


def test_listeners_bind_gw_listener_address(start_gateway: StartGateway, upstream: Upstream) -> None:
    gw = start_gateway({"up": [("127.0.0.1", upstream.port)]}, ROUTES, env={"GW_LISTENER_ADDRESS": "127.0.0.1"})
    assert [x["address"] for x in gw.status()["listeners"]] == ["127.0.0.1"]  # type: ignore[index,union-attr]
    bound = {c.laddr for c in psutil.Process(gw.pid).net_connections("tcp") if c.status == psutil.CONN_LISTEN}
    assert ("127.0.0.1", gw.port) in bound and ("0.0.0.0", gw.port) not in bound


def test_gw_share_ports_lets_a_replica_of_the_same_fleet_join_the_port(
    start_gateway: StartGateway, upstream: Upstream
) -> None:
    # Deliberate: replicas on one host behind SO_REUSEPORT, as the test fleets and benchmarks run.
    first = start_gateway({"up": [("127.0.0.1", upstream.port)]}, ROUTES)
    second = start_gateway({}, [], env={"GW_SHARE_PORTS": "true"}, yaml_text=first.config_path.read_text())
    assert [x["bind_port"] for x in second.status()["listeners"]] == [first.port]  # type: ignore[index,union-attr]
