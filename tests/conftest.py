"""Fixtures: real upstream servers and real gateway processes, started per test or module."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support import valkey
from tests.support.capture import CaptureUpstream
from tests.support.desync import BACKENDS, Desync, desync_gateway
from tests.support.gateway import GatewayProcess, config_yaml, free_port
from tests.support.upstream import Upstream

StartGateway = Callable[..., GatewayProcess]


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    up = Upstream("up").start()
    yield up
    up.stop()


@pytest.fixture
def upstreams() -> Iterator[list[Upstream]]:
    ups = [Upstream(name).start() for name in ("a", "b", "c")]
    yield ups
    for up in ups:
        up.stop()


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[valkey.Server]:
    """A Valkey of the test's own (replicas share it; a test may stop, pause or restart it)."""
    server = valkey.standalone(tmp_path / "valkey")
    yield server
    server.stop()


def _gateway_starter(tmp_path: Path, started: list[GatewayProcess]) -> StartGateway:
    def start(
        backends: dict[str, list[tuple[str, int]]],
        routes: list[dict[str, object]],
        env: dict[str, str] | None = None,
        yaml_text: str | None = None,
    ) -> GatewayProcess:
        port = free_port()
        index = len(started)
        path = tmp_path / f"gateway-{index}.yaml"
        path.write_text(yaml_text if yaml_text is not None else config_yaml(port, backends, routes))
        gw = GatewayProcess(
            config_path=path,
            port=port,
            admin=free_port(),
            env=dict(env or {}),
            access_log=tmp_path / f"access-{index}.log",
        )
        started.append(gw)
        return gw.start()

    return start


@pytest.fixture
def start_gateway(tmp_path: Path) -> Iterator[StartGateway]:
    """start_gateway(backends, routes, env={}) → a running gateway; all are stopped at teardown."""
    started: list[GatewayProcess] = []
    yield _gateway_starter(tmp_path, started)
    for gw in started:
        gw.stop()


@pytest.fixture
def gateway(upstream: Upstream, start_gateway: StartGateway) -> GatewayProcess:
    """A gateway routing every path to `upstream`."""
    return start_gateway(
        {"up": [("127.0.0.1", upstream.port)]},
        [{"name": "all", "rules": [{"backendRefs": [{"backend": "up"}]}]}],
    )


# -- module-scoped variants: one upstream and gateway shared by a module's tests (start-up ~1.5 s) --


@pytest.fixture(scope="module")
def module_upstream() -> Iterator[Upstream]:
    up = Upstream("up").start()
    yield up
    up.stop()


@pytest.fixture(scope="module")
def module_start_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StartGateway]:
    """Like `start_gateway`, but the gateways live until the module's tests are done."""
    started: list[GatewayProcess] = []
    yield _gateway_starter(tmp_path_factory.mktemp("gateways"), started)
    for gw in started:
        gw.stop()


@pytest.fixture(scope="module")
def module_gateway(module_upstream: Upstream, module_start_gateway: StartGateway) -> GatewayProcess:
    """A gateway routing every path to `module_upstream`, shared by a module's tests."""
    return module_start_gateway(
        {"up": [("127.0.0.1", module_upstream.port)]},
        [{"name": "all", "rules": [{"backendRefs": [{"backend": "up"}]}]}],
    )


@pytest.fixture(scope="module")
def module_capture() -> Iterator[CaptureUpstream]:
    """A capturing upstream with a port per desync backend, shared by a module's tests."""
    capture = CaptureUpstream().start(BACKENDS)
    yield capture
    capture.stop()


@pytest.fixture(scope="module")
def module_desync(module_capture: CaptureUpstream, module_start_gateway: StartGateway) -> Desync:
    """The differential desync check (tests.support.desync) against one gateway for the module."""
    return Desync(desync_gateway(module_start_gateway, module_capture), module_capture)
