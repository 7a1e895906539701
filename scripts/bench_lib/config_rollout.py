"""How fast does a config version reach every worker of every replica, and does anything fail?

Three supervisors x two workers on this machine share one listener port (SO_REUSEPORT) and one
Valkey server, as replicas behind a load balancer share a Redis. While HTTP clients keep a steady
load on the port, 50 config versions are published (as `gw config push` does); for each, the time
from the publish until all six workers report serving it is measured by polling every replica's
/status. Failed requests over the whole run are counted.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from bench_lib.reload import Gateway, Plan, read_response  # noqa: E402
from gw.config.loader import read_snapshot  # noqa: E402
from gw.state import ConfigStore, Keys, connect  # noqa: E402
from tests.support import valkey  # noqa: E402
from tests.support.gateway import config_yaml, free_port  # noqa: E402
from tests.support.upstream import Upstream  # noqa: E402


@dataclass
class Result:
    rollout: list[float] = field(default_factory=list)  # seconds until every worker served a version
    requests: int = 0
    failed: int = 0
    failures: list[str] = field(default_factory=list)


async def load(port: int, rate: float, connections: int, stop: asyncio.Event, result: Result) -> None:
    async def client(index: int) -> None:
        interval = connections / rate
        next_at = time.monotonic() + interval * index / connections
        reader = writer = None
        while not stop.is_set():
            if writer is None:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
            next_at += interval
            result.requests += 1
            try:
                writer.write(b"GET /echo HTTP/1.1\r\nHost: load.test\r\n\r\n")
                status, close = await asyncio.wait_for(read_response(reader), 10)  # type: ignore[arg-type]
                if status != 200:
                    raise RuntimeError(f"status {status}")
            except (OSError, asyncio.IncompleteReadError, RuntimeError, TimeoutError) as exc:
                result.failed += 1
                if len(result.failures) < 10:
                    result.failures.append(repr(exc))
                close = True
            if close:
                writer.close()
                reader = writer = None

    await asyncio.gather(*(client(i) for i in range(connections)))


async def served_everywhere(http: httpx.AsyncClient, admins: list[int], version: int, workers: int) -> bool:
    replies = await asyncio.gather(*(http.get(f"http://127.0.0.1:{a}/status") for a in admins))
    serving = [w["config_version"] for r in replies for w in r.json()["workers"] if w["state"] == "ready"]
    return len(serving) == workers and all(v == version for v in serving)


async def pushes(
    store: ConfigStore,
    config: Path,
    target: tuple[int, int],  # (listener port, upstream port)
    admins: list[int],
    count: int,
    workers: int,
    result: Result,
) -> None:
    port, upstream = target
    async with httpx.AsyncClient(timeout=5) as http:
        for n in range(1, count + 1):
            routes = [
                {"name": "all", "rules": [{"backendRefs": [{"backend": "up"}]}]},
                {"name": f"r{n}", "hostnames": [f"r{n}.test"], "rules": [{"backendRefs": [{"backend": "up"}]}]},
            ]
            config.write_text(config_yaml(port, {"up": [("127.0.0.1", upstream)]}, routes))
            started = time.monotonic()
            published = await store.publish(read_snapshot(str(config)), author="bench-config")
            while not await served_everywhere(http, admins, published.version, workers):
                await asyncio.sleep(0.005)  # polling the replicas is the measurement
            result.rollout.append(time.monotonic() - started)
            await asyncio.sleep(0.2)  # versions apart, as operators push them


async def measure(
    url: str, config: Path, port: int, upstream: int, admins: list[int], args: argparse.Namespace
) -> Result:
    result = Result()
    store = ConfigStore(connect(url), Keys("gw"))
    stop = asyncio.Event()
    loader = asyncio.create_task(load(port, args.rate, args.connections, stop, result))
    try:
        await pushes(store, config, (port, upstream), admins, args.pushes, args.replicas * args.workers, result)
    finally:
        stop.set()
        await loader
        await store.client.aclose()
    return result


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/bench-config", description=__doc__.split("\n")[0])
    parser.add_argument("--replicas", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--pushes", type=int, default=50)
    parser.add_argument("--rate", type=float, default=300.0, help="requests per second during the run")
    parser.add_argument("--connections", type=int, default=30)
    args = parser.parse_args(argv)

    directory = Path(tempfile.mkdtemp(prefix="gw-bench-config-"))
    server = valkey.standalone(directory / "valkey")
    upstream = Upstream("bench-config-up").start()
    port = free_port()
    config = directory / "gateway.yaml"
    routes = [{"name": "all", "rules": [{"backendRefs": [{"backend": "up"}]}]}]
    config.write_text(config_yaml(port, {"up": [("127.0.0.1", upstream.port)]}, routes))
    plan = Plan(workers=args.workers)
    replicas = []
    try:
        for _ in range(args.replicas):
            replicas.append(
                Gateway(config, port, free_port(), plan, env={"GW_REDIS_URL": server.url, "GW_SHARE_PORTS": "true"})
            )
        admins = [r.admin for r in replicas]
        result = asyncio.run(measure(server.url, config, port, upstream.port, admins, args))
    finally:
        for replica in replicas:
            replica.stop()
        upstream.stop()
        server.stop()
    rollout = result.rollout
    print(
        f"{args.replicas} replicas x {args.workers} workers, one Valkey; {len(rollout)} config versions pushed under "
        f"{args.rate:g} req/s over {args.connections} keep-alive connections"
    )
    print(
        f"time until all {args.replicas * args.workers} workers serve a new version: "
        f"p50 {statistics.median(rollout) * 1000:.0f} ms, p99 {percentile(rollout, 0.99) * 1000:.0f} ms, "
        f"max {max(rollout) * 1000:.0f} ms"
    )
    print(f"requests: {result.requests}, failed: {result.failed}")
    for why in result.failures:
        print(f"  {why}")
    return 0 if result.failed == 0 and percentile(rollout, 0.99) < 1.0 else 1
