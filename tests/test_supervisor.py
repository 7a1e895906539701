"""The supervisor end to end: real `gw run` processes with several workers, real signals.

Each test starts its own gateway (signals change it for good); the upstream is shared.
"""

from __future__ import annotations

import base64
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import psutil
import pytest

from gw.state.embedded import ping
from gw.supervisor.arbiter import Supervisor
from gw.supervisor.signals import SIGNALS
from gw.worker import TEST_EXIT_AT_START
from tests.conftest import StartGateway
from tests.support.gateway import REPO, Client, GatewayProcess, config_yaml, free_port
from tests.support.servers import read_ws_frame
from tests.support.upstream import Upstream, ws_frame
from tests.support.wait import wait_until

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()
ROUTES = [{"name": "all", "rules": [{"backendRefs": [{"backend": "up"}]}]}]




def workers(gw: GatewayProcess) -> list[dict[str, object]]:
    return gw.status()["workers"]  # type: ignore[return-value]


def ready_pids(gw: GatewayProcess) -> list[int]:
    return [w["pid"] for w in workers(gw) if w["state"] == "ready"]  # type: ignore[misc]


def start(start_gateway: StartGateway, upstream: Upstream, n: int = 2, **env: str) -> GatewayProcess:
    return start_gateway({"up": [("127.0.0.1", upstream.port)]}, ROUTES, env={"GW_WORKERS": str(n), **env})


def websocket(gw: GatewayProcess) -> Client:
    client = gw.connect()
    key = base64.b64encode(os.urandom(16)).decode()
    resp = client.request(
        "GET",
        "/ws",
        {"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Key": key, "Sec-WebSocket-Version": "13"},
    )
    assert resp.status == 101
    return client


def echo(client: Client, text: bytes) -> bytes:
    client.send(ws_frame(text))
    opcode, payload = read_ws_frame(client)
    assert opcode == 0x1
    return payload


def ok(gw: GatewayProcess, n: int = 20) -> None:
    """n requests on fresh connections (spread over the workers by the kernel) all succeed."""
    for _ in range(n):
        client = gw.connect()
        assert client.request("GET", "/echo").status == 200
        client.close()


# -- the README documents the signals the supervisor handles ---------------------------------


@pytest.mark.parametrize("sig", list(SIGNALS), ids=lambda s: s.name)
def test_readme_signal_table_matches_the_handlers(sig: signal.Signals) -> None:
    method, doc = SIGNALS[sig]
    assert callable(getattr(Supervisor, method, None)), method
    assert f"| `{sig.name.removeprefix('SIG')}` | {doc} |" in README


def test_readme_names_no_signal_the_supervisor_ignores() -> None:
    section = README[README.index("### Signals") :]
    section = section[: section.index("\n\n", section.index("|"))]
    named = set(re.findall(r"^\| `([A-Z0-9]+)` \|", section, re.M))
    assert named == {s.name.removeprefix("SIG") for s in SIGNALS}


# -- workers ------------------------------------------------------------------------------


def test_workers_run_as_separate_processes_with_titles(start_gateway: StartGateway, upstream: Upstream) -> None:
    gw = start(start_gateway, upstream, 2)
    status = gw.status()
    pids = ready_pids(gw)
    assert len(pids) == 2 and gw.pid not in pids
    for w in workers(gw):
        assert psutil.Process(w["pid"]).ppid() == gw.pid  # type: ignore[arg-type]
        title = " ".join(psutil.Process(w["pid"]).cmdline())  # type: ignore[arg-type]
        assert title.startswith(f"gw: worker {w['slot']} [config v1]")
        assert w["rss_bytes"] > 0 and w["config_version"] == 1
    assert status["config"]["version"] == 1  # type: ignore[index]
    assert httpx.get(f"http://127.0.0.1:{gw.admin}/readyz", timeout=5).status_code == 200


def test_metrics_are_summed_over_workers(start_gateway: StartGateway, upstream: Upstream) -> None:
    gw = start(start_gateway, upstream, 2)
    ok(gw, 40)
    served = [w.get("requests", 0) for w in workers(gw)]
    assert sum(served) == 40  # type: ignore[arg-type]
    text = httpx.get(f"http://127.0.0.1:{gw.admin}/metrics", timeout=5).text
    line = next(ln for ln in text.splitlines() if ln.startswith("gw_http_requests_total{") and "2xx" in ln)
    assert float(line.rsplit(" ", 1)[1]) == 40
    assert "gw_workers 2" in text


def test_a_killed_worker_is_restarted(start_gateway: StartGateway, upstream: Upstream) -> None:
    gw = start(start_gateway, upstream, 2)
    victim = ready_pids(gw)[0]
    mark = len(gw.log)
    os.kill(victim, signal.SIGKILL)
    gw.wait_for_log("gw: worker", after=mark)
    pids = wait_until(lambda: (p := ready_pids(gw)) and len(p) == 2 and victim not in p and p, what="restart")
    assert victim not in pids  # type: ignore[operator]
    ok(gw)
    assert any("exited with signal SIGKILL" in line for line in gw.log[mark:])


def test_a_crash_loop_backs_off_and_is_reported(start_gateway: StartGateway, upstream: Upstream) -> None:
    gw = start(start_gateway, upstream, 1)
    delays = []
    for _ in range(5):
        pid = wait_until(lambda: ready_pids(gw), what="a ready worker")[0]  # type: ignore[index]
        mark = len(gw.log)
        os.kill(pid, signal.SIGKILL)
        line = gw.wait_for_log(f"gw: worker 0 (pid {pid}) exited", after=mark)
        found = re.search(r"in ([0-9.]+)s", line)
        delays.append(float(found.group(1)) if found else 0.0)
    assert delays == sorted(delays) and delays[0] == 0.0 and delays[-1] > delays[1] > 0
    assert "crash loop" in line
    (waiting,) = gw.status()["restarting"]  # type: ignore[misc]
    assert waiting["slot"] == 0 and waiting["failures_in_a_row"] == 5 and waiting["next_start_in_seconds"] > 0
    assert "SIGKILL" in waiting["last_exit"], waiting
    wait_until(lambda: ready_pids(gw), what="the worker back after the backoff")
    ok(gw, 3)


def test_hup_reloads_in_place_and_keeps_websockets(start_gateway: StartGateway, upstream: Upstream) -> None:
    gw = start(start_gateway, upstream, 2)
    before = sorted(ready_pids(gw))
    sockets = [websocket(gw) for _ in range(4)]
    routes = [*ROUTES, {"name": "new", "hostnames": ["new.test"], "rules": [{"backendRefs": [{"backend": "up"}]}]}]
    gw.config_path.write_text(config_yaml(gw.port, {"up": [("127.0.0.1", upstream.port)]}, routes))
    mark = len(gw.log)
    os.kill(gw.pid, signal.SIGHUP)
    assert "version 2" in gw.wait_for_log("gw: config reloaded", after=mark)
    assert sorted(ready_pids(gw)) == before  # no worker replaced
    assert {w["config_version"] for w in workers(gw)} == {2}
    for i, ws in enumerate(sockets):
        assert echo(ws, b"after reload %d" % i) == b"after reload %d" % i
    assert gw.connect().request("GET", "/echo", {"Host": "new.test"}).status == 200


def test_hup_with_an_invalid_config_keeps_the_running_one(start_gateway: StartGateway, upstream: Upstream) -> None:
    gw = start(start_gateway, upstream, 2)
    gw.config_path.write_text("kind: [unclosed\n")
    mark = len(gw.log)
    os.kill(gw.pid, signal.SIGHUP)
    line = gw.wait_for_log("gw: reload rejected", after=mark)
    assert str(gw.config_path) in line and "invalid YAML" in line
    assert gw.status()["config"]["version"] == 1  # type: ignore[index]
    ok(gw)


def test_a_rejected_reload_shows_in_status_and_readyz_until_a_reload_succeeds(
    start_gateway: StartGateway, upstream: Upstream
) -> None:
    gw = start(start_gateway, upstream, 1)
    good = gw.config_path.read_text()
    gw.config_path.write_text("kind: [unclosed\n")
    mark = len(gw.log)
    os.kill(gw.pid, signal.SIGHUP)
    gw.wait_for_log("gw: reload rejected", after=mark)
    rejected = gw.status()["config"]["rejected"]  # type: ignore[index]
    assert rejected["config"] == f"reload of {gw.config_path}" and rejected["since"]
    assert any("invalid YAML" in error for error in rejected["errors"])
    ready = httpx.get(f"http://127.0.0.1:{gw.admin}/readyz", timeout=10)
    # The old config serves, so a load balancer keeps sending; the body says why it is degraded.
    assert ready.status_code == 200
    assert ready.text.startswith("ready (degraded: reload of ") and f"since {rejected['since']}" in ready.text
    ok(gw)
    gw.config_path.write_text(good + "\n# fixed\n")
    mark = len(gw.log)
    os.kill(gw.pid, signal.SIGHUP)
    gw.wait_for_log("gw: config reloaded", after=mark)
    assert gw.status()["config"]["rejected"] is None  # type: ignore[index]
    assert httpx.get(f"http://127.0.0.1:{gw.admin}/readyz", timeout=10).text == "ready\n"


def test_hup_keeps_the_running_version_of_an_object_made_invalid(
    start_gateway: StartGateway, upstream: Upstream
) -> None:
    tag = {"type": "ResponseHeaderModifier", "responseHeaderModifier": {"set": [{"name": "X-Route", "value": "shop"}]}}
    rules = [{"filters": [tag], "backendRefs": [{"backend": "up"}]}]
    shop = {"name": "shop", "hostnames": ["shop.test"], "rules": rules}
    backends = {"up": [("127.0.0.1", upstream.port)]}
    gw = start_gateway(backends, [*ROUTES, shop], env={"GW_WORKERS": "1"})
    assert gw.connect().request("GET", "/echo", {"Host": "shop.test"}).header("x-route") == "shop"
    # The next save breaks route shop (a hostname the API server would refuse) and adds route new.
    broken = {**shop, "hostnames": ["shop.test", "Not_A_Host"]}
    added = {"name": "new", "hostnames": ["new.test"], "rules": [{"backendRefs": [{"backend": "up"}]}]}
    gw.config_path.write_text(config_yaml(gw.port, backends, [*ROUTES, broken, added]))
    mark = len(gw.log)
    os.kill(gw.pid, signal.SIGHUP)
    assert "version 2" in gw.wait_for_log("gw: config reloaded", after=mark)
    kept = "(running version kept): HTTPRoute default/shop: its new version is invalid (see above): the running"
    assert any(kept in line for line in gw.log[mark:])
    assert gw.connect().request("GET", "/echo", {"Host": "new.test"}).status == 200  # the rest reloaded
    metrics = httpx.get(f"http://127.0.0.1:{gw.admin}/metrics", timeout=10).text
    assert 'gw_config_reloads_total{result="applied"} 1' in metrics  # once per reload, not per push
    # The running version of shop is still what is served, whatever the follower did meanwhile.
    # (Open: in 2 of 3 fresh-clone full runs on 2026-12-04, gw_config_reloads_total{result="fleet"}
    # was not 0 here, though never alone; that count is not asserted until the race is found.)
    assert gw.connect().request("GET", "/echo", {"Host": "shop.test"}).header("x-route") == "shop"
    assert gw.connect().request("GET", "/echo", {"Host": "shop.test"}).header("x-route") == "shop"
    gateway_api = gw.status()["gatewayAPI"]
    errors = [e for e in gateway_api["errors"] if e["object"] == "HTTPRoute default/shop"]  # type: ignore[index]
    assert any("Not_A_Host" in e["message"] for e in errors) and any("kept" in e["message"] for e in errors), errors


def test_usr2_replaces_every_worker_and_drains_the_old(start_gateway: StartGateway, upstream: Upstream) -> None:
    gw = start(start_gateway, upstream, 2, GW_DRAIN_TIMEOUT="2s")
    old = set(ready_pids(gw))
    ws = websocket(gw)
    # A busy keep-alive client: draining workers answer it, then say "Connection: close".
    done = threading.Event()
    outcome = {"ok": 0, "closed": 0, "failed": 0}

    def keep_asking() -> None:
        client = gw.connect()
        while not done.is_set():
            try:
                resp = client.request("GET", "/echo")
            except OSError:
                outcome["failed"] += 1
                client = gw.connect()
                continue
            outcome["ok" if resp.status == 200 else "failed"] += 1
            if (resp.header("connection") or "").lower() == "close":
                outcome["closed"] += 1
                client.close()
                client = gw.connect()
            time.sleep(0.05)

    asker = threading.Thread(target=keep_asking)
    asker.start()
    mark = len(gw.log)
    os.kill(gw.pid, signal.SIGUSR2)
    gw.wait_for_log("gw: upgrade done", after=mark)
    new = set(ready_pids(gw))
    assert len(new) == 2 and not new & old
    assert echo(ws, b"still here") == b"still here"  # WebSockets last until GW_DRAIN_TIMEOUT
    ws.sock.settimeout(10)
    assert ws.read_until_close() is not None  # … and are closed then
    wait_until(lambda: not any(psutil.pid_exists(p) and psutil.Process(p).status() != "zombie" for p in old))
    done.set()
    asker.join()
    assert outcome["failed"] == 0 and outcome["closed"] >= 1 and outcome["ok"] > 0, outcome
    ok(gw)


def test_ttin_and_ttou_change_the_worker_count(start_gateway: StartGateway, upstream: Upstream) -> None:
    gw = start(start_gateway, upstream, 1)
    os.kill(gw.pid, signal.SIGTTIN)
    wait_until(lambda: len(ready_pids(gw)) == 2, what="a second worker")
    ok(gw)
    mark = len(gw.log)
    os.kill(gw.pid, signal.SIGTTOU)
    gw.wait_for_log("gw: worker 1 removed", after=mark)
    wait_until(lambda: len(workers(gw)) == 1, what="one worker")
    ok(gw, 30)  # the removed slot's socket was adopted by worker 0: nothing lands in a dead queue
    mark = len(gw.log)
    os.kill(gw.pid, signal.SIGTTOU)
    gw.wait_for_log("gw: TTOU ignored", after=mark)


def test_term_finishes_in_flight_requests(start_gateway: StartGateway, upstream: Upstream) -> None:
    gw = start(start_gateway, upstream, 2)
    client = gw.connect()
    client.send(b"GET /echo?delay=1 HTTP/1.1\r\nHost: x\r\n\r\n")
    upstream_saw = len(upstream.seen)
    wait_until(lambda: len(upstream.seen) > upstream_saw, what="the request upstream")
    os.kill(gw.pid, signal.SIGTERM)
    resp = client.read_response()
    assert resp.status == 200 and (resp.header("connection") or "").lower() == "close"
    assert gw.proc is not None and gw.proc.wait(20) == 0


def test_quit_stops_at_once(start_gateway: StartGateway, upstream: Upstream) -> None:
    gw = start(start_gateway, upstream, 2)
    pids = ready_pids(gw)
    os.kill(gw.pid, signal.SIGQUIT)
    assert gw.proc is not None and gw.proc.wait(10) == 0
    assert not any(psutil.pid_exists(p) and psutil.Process(p).status() != "zombie" for p in pids)


def test_a_worker_that_exits_at_start_is_reported_at_once_with_its_code(tmp_path: Path, upstream: Upstream) -> None:
    broken = tmp_path / "broken"
    broken.touch()  # every worker exits with code 3 at start, as one of a broken install would
    port = free_port()
    config = tmp_path / "gw.yaml"
    config.write_text(config_yaml(port, {"up": [("127.0.0.1", upstream.port)]}, ROUTES))
    env = {TEST_EXIT_AT_START: str(broken), "GW_RUNTIME_DIR": str(tmp_path / "rt")}
    gw = GatewayProcess(config, port, free_port(), env, tmp_path / "access.log")
    result = subprocess.run(
        [sys.executable, "-m", "gw", "run"], env=gw.environment(), capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 1
    failed = r"^gw: workers did not start: worker 0 \(pid \d+\) exited with code 3 before it was ready$"
    assert re.search(failed, result.stderr, re.M), result.stderr
    assert "restarting" not in result.stderr  # start-up gives up: nothing is restarted


def test_usr2_whose_new_workers_exit_at_start_keeps_the_running_ones(
    start_gateway: StartGateway, upstream: Upstream, tmp_path: Path
) -> None:
    broken = tmp_path / "broken"  # absent at start: the first worker starts
    gw = start(start_gateway, upstream, 1, **{TEST_EXIT_AT_START: str(broken)})
    running = ready_pids(gw)
    broken.touch()
    mark = len(gw.log)
    os.kill(gw.pid, signal.SIGUSR2)
    line = gw.wait_for_log("gw: upgrade: worker 0 failed to start", after=mark)
    assert re.search(r"worker 0 \(pid \d+\) exited with code 3 before it was ready$", line), line
    gw.wait_for_log("gw: upgrade stopped", after=mark)
    assert ready_pids(gw) == running
    ok(gw, 3)


def test_term_stops_a_gateway_whose_stderr_reader_has_left(tmp_path: Path, upstream: Upstream) -> None:
    # `gw run 2>&1 | head -1`: once head has its line, every log line meets a closed pipe.
    port = free_port()
    config = tmp_path / "gw.yaml"
    config.write_text(config_yaml(port, {"up": [("127.0.0.1", upstream.port)]}, ROUTES))
    runtime = tmp_path / "rt"
    env = {"GW_WORKERS": "2", "GW_RUNTIME_DIR": str(runtime)}
    gw = GatewayProcess(config, port, free_port(), env, tmp_path / "access.log")
    read, write = os.pipe()
    proc = subprocess.Popen(
        [sys.executable, "-m", "gw", "run"], env=gw.environment(), stdout=subprocess.DEVNULL, stderr=write
    )
    os.close(write)
    try:
        with open(read, "rb") as stderr:  # closed when the block ends: the reader leaves
            assert any(line.startswith(b"gw: serving") for line in stderr), "the gateway did not start"
        children = psutil.Process(proc.pid).children()
        assert len(children) == 3  # two workers and the embedded Valkey
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    _gone, alive = psutil.wait_procs(children, timeout=15)
    assert not alive, [p.cmdline() for p in alive]
    assert list(runtime.iterdir()) == []  # Valkey stopped cleanly: neither socket nor log left


def test_a_worker_over_its_rss_limit_is_replaced(start_gateway: StartGateway, upstream: Upstream) -> None:
    gw = start(start_gateway, upstream, 1, GW_WORKER_MAX_RSS="1Mi")
    first = ready_pids(gw)[0]
    line = gw.wait_for_log("gw: worker 0", timeout=20)
    assert "exceeds GW_WORKER_MAX_RSS" in line
    wait_until(lambda: (p := ready_pids(gw)) and p[0] != first, what="a replacement")
    ok(gw, 3)


def test_an_rss_limit_below_a_fresh_workers_size_stops_replacements(
    start_gateway: StartGateway, upstream: Upstream
) -> None:
    gw = start(start_gateway, upstream, 1, GW_WORKER_MAX_RSS="1Mi")
    line = gw.wait_for_log("gw: GW_WORKER_MAX_RSS (1.0 MiB) is below a fresh worker's size", timeout=20)
    fresh = ready_pids(gw)
    assert f"(pid {fresh[0]}) has" in line and line.endswith("RSS replacements stop here"), line
    # One replacement, then none: the line comes right after the first, from the watcher that stops.
    assert sum("exceeds GW_WORKER_MAX_RSS" in line for line in gw.log) == 1, gw.log
    ok(gw, 3)


def test_a_workers_log_lines_name_the_worker() -> None:
    """gw's loggers in a worker (gw.state's, the policies') say which worker speaks; the supervisor says `gw: `."""
    code = (
        "import logging, os\nfrom gw.worker import log_as_worker\nlog_as_worker(3)\nprint(os.getpid())\n"
        "logging.getLogger('gw.state').warning('gw: Redis holds no config version')"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=30)
    assert proc.stderr == f"gw[worker 3 pid {proc.stdout.strip()}]: Redis holds no config version\n"


def test_only_the_supervisor_follows_the_config_in_redis(start_gateway: StartGateway, upstream: Upstream) -> None:
    gw = start(start_gateway, upstream, 1)
    valkey = next(p for p in psutil.Process(gw.pid).children() if "valkey" in p.name())
    valkey.kill()
    gw.wait_for_log("gw: config follower lost Redis")
    assert [line for line in gw.log if "config follower" in line and not line.startswith("gw: ")] == []


def test_a_bad_setting_stops_start_up_with_exit_code_2(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "gw", "run"],
        env={**os.environ, "GW_CONFIG": str(tmp_path), "GW_WORKERS": "many", "GW_RUNTIME_DIR": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 2
    assert "GW_WORKERS" in proc.stderr


def test_workers_and_the_embedded_valkey_leave_with_a_killed_supervisor(
    start_gateway: StartGateway, upstream: Upstream
) -> None:
    gw = start(start_gateway, upstream, 2)
    children = psutil.Process(gw.pid).children()
    assert len(children) == 3  # two workers and the embedded Valkey
    os.kill(gw.pid, signal.SIGKILL)
    # Workers see their control channel close and drain (GW_DRAIN_TIMEOUT is 5 s in tests);
    # the Valkey server gets SIGTERM from the kernel when its parent dies.
    _gone, alive = psutil.wait_procs(children, timeout=15)
    assert not alive, [p.cmdline() for p in alive]


def test_ctrl_c_leaves_the_embedded_valkey_serving_until_the_workers_have_drained(
    tmp_path: Path, upstream: Upstream
) -> None:
    # What a terminal's Ctrl-C does: SIGINT to every process of the gateway's process group.
    port = free_port()
    config = tmp_path / "gw.yaml"
    config.write_text(config_yaml(port, {"up": [("127.0.0.1", upstream.port)]}, ROUTES))
    runtime = tmp_path / "rt"
    gw = GatewayProcess(
        config, port, free_port(), {"GW_RUNTIME_DIR": str(runtime)}, tmp_path / "access.log", own_session=True
    )
    gw.start()
    try:
        valkey = next(p for p in psutil.Process(gw.pid).children() if "valkey" in p.name())
        client = gw.connect()
        client.send(b"GET /wait/ctrl-c HTTP/1.1\r\nHost: x\r\n\r\n")
        wait_until(lambda: any(s.target == "/wait/ctrl-c" for s in upstream.seen), what="the request upstream")
        workers = [p for p in psutil.Process(gw.pid).children() if p is not valkey and p.pid != valkey.pid]
        os.killpg(gw.pid, signal.SIGINT)
        gw.wait_for_log("gw: shutting down")
        # The worker hears of the drain over its control channel: after the supervisor's line.
        wait_until(lambda: all("draining" in " ".join(w.cmdline()) for w in workers), what="the workers draining")
        # The worker drains with the request in flight; Redis is still there for it and the supervisor.
        assert valkey.is_running() and ping(runtime / f"gw-valkey-{gw.admin}.sock")
        upstream.open_gate("ctrl-c")
        resp = client.read_response()
        assert resp.status == 200 and (resp.header("connection") or "").lower() == "close"
        assert gw.proc is not None and gw.proc.wait(20) == 0
    finally:
        gw.stop()
    assert not valkey.is_running()  # stopped by the supervisor, at the end
    assert not [line for line in gw.log if "lost Redis" in line], gw.log
    assert list(runtime.iterdir()) == []  # neither socket nor log left behind
