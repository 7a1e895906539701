"""How long from an HTTPRoute change in the cluster until every gateway replica serves it?

A FAKE API server (tests/support/fake_apiserver.py, in this process) holds the cluster's objects;
`gw controller` (a process, KUBECONFIG pointing at the fake) publishes config versions into one
Valkey; N `gw run` replicas (default 3, one worker each) follow them. Each round adds an HTTPRoute
for a new hostname to a second upstream and polls every replica with that Host until that
upstream answers (until then the catch-all route's does): the time from the API write to the last
replica answering is the figure. It includes the controller's debounce (GW_CONTROLLER_DEBOUNCE,
200 ms by default).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from tests.controller import cluster  # noqa: E402
from tests.support import valkey  # noqa: E402
from tests.support.fake_apiserver import FakeApiServer  # noqa: E402
from tests.support.gateway import GatewayProcess, config_yaml, free_port  # noqa: E402
from tests.support.upstream import Upstream  # noqa: E402


def answered_by(gw: GatewayProcess, host: str) -> str | None:
    client = gw.connect()
    try:
        response = client.request("GET", "/echo", {"Host": host})
    finally:
        client.close()
    return json.loads(response.body)["upstream"] if response.status == 200 else None  # type: ignore[no-any-return]


def wait(condition: object, what: str, deadline: float = 30.0) -> None:
    end = time.monotonic() + deadline
    while not _true(condition):
        if time.monotonic() > end:
            raise SystemExit(f"bench-controller: timed out waiting for {what}")
        time.sleep(0.002)


def _true(condition: object) -> bool:
    try:
        return bool(condition())  # type: ignore[operator]
    except OSError:
        return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--replicas", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--debounce", default="200ms", help="GW_CONTROLLER_DEBOUNCE of the controller")
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="gw-bench-controller-"))
    fake = FakeApiServer().start()
    redis = valkey.standalone(work / "valkey")
    upstream = Upstream("app").start()
    new = Upstream("new").start()  # the new routes' backend: an answer from it is the new route serving
    port = free_port()
    env = {"KUBECONFIG": str(fake.kubeconfig(work / "kubeconfig")), "GW_REDIS_URL": redis.url, "GW_SHARE_PORTS": "true"}
    for obj in [*cluster.basic(port, upstream.port), cluster.service("new"), cluster.endpoint_slice("new", new.port)]:
        fake.put(obj)
    controller_env = {**os.environ, **env, "GW_ADMIN_ADDR": f"127.0.0.1:{free_port()}",
                      "GW_CONTROLLER_DEBOUNCE": args.debounce, "PYTHONPATH": str(REPO)}  # fmt: skip
    log = (work / "controller.log").open("wb")
    controller = subprocess.Popen([sys.executable, "-m", "gw", "controller"], env=controller_env, stderr=log)
    replicas: list[GatewayProcess] = []
    try:
        bootstrap = work / "bootstrap.yaml"
        bootstrap.write_text(config_yaml(port, {"app": [("127.0.0.1", upstream.port)]}, []))
        wait(lambda: b"published version 1" in (work / "controller.log").read_bytes(), "the controller's first version")
        for i in range(args.replicas):
            gw = GatewayProcess(config_path=bootstrap, port=port, admin=free_port(), env=env,
                                access_log=work / f"access-{i}.log")  # fmt: skip
            replicas.append(gw.start())
        for gw in replicas:
            wait(lambda gw=gw: answered_by(gw, "any.example") == "app", "a replica serving the cluster's config")
        times = []
        for n in range(args.rounds):
            host = f"r{n}.example"
            started = time.monotonic()
            fake.put(cluster.route(f"r{n}", "new", hostname=host))
            for gw in replicas:
                wait(lambda gw=gw, host=host: answered_by(gw, host) == "new", f"every replica serving {host}")
            times.append(time.monotonic() - started)
            time.sleep(0.3)  # let the next change be a burst of its own
        ms = sorted(t * 1000 for t in times)
        print(f"HTTPRoute change → served by all {args.replicas} replicas, {args.rounds} rounds, "
              f"GW_CONTROLLER_DEBOUNCE={args.debounce}:")  # fmt: skip
        print(f"  median {statistics.median(ms):.0f} ms, p90 {ms[int(len(ms) * 0.9) - 1]:.0f} ms, "
              f"min {ms[0]:.0f} ms, max {ms[-1]:.0f} ms")  # fmt: skip
        return 0
    finally:
        for gw in replicas:
            gw.stop()
        controller.terminate()
        controller.wait(15)
        upstream.stop()
        new.stop()
        redis.stop()
        fake.close()
        log.close()
        shutil.rmtree(work, ignore_errors=True)
