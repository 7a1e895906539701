"""`gw config` end to end: a real `python -m gw config ...` process against a real server."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import yaml

from gw.settings import Settings
from gw.state import EmbeddedValkey
from tests.support import valkey
from tests.support.gateway import REPO, config_yaml, free_port


def gw_config(*args: str, env: dict[str, str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("GW_")}
    return subprocess.run(
        [sys.executable, "-m", "gw", "config", *args],
        env={**base, "PYTHONPATH": str(REPO), **env},
        capture_output=True,
        text=True,
        timeout=30,
        cwd=cwd,
    )


def write_config(path: Path, backend_port: int) -> Path:
    routes: list[dict[str, object]] = [{"name": "all", "rules": [{"backendRefs": [{"backend": "up"}]}]}]
    path.write_text(config_yaml(8080, {"up": [("127.0.0.1", backend_port)]}, routes))
    return path


@pytest.fixture
def env(server: valkey.Server) -> dict[str, str]:
    return {"GW_REDIS_URL": server.url, "GW_REDIS_PREFIX": f"cli{uuid.uuid4().hex[:8]}"}


def test_push_publishes_and_the_other_commands_read_it_back(tmp_path: Path, env: dict[str, str]) -> None:
    first = write_config(tmp_path / "gw.yaml", 9001)
    pushed = gw_config("push", str(first), "--author", "alice", env=env)
    assert pushed.returncode == 0, pushed.stderr
    assert "published version 1" in pushed.stdout

    again = gw_config("push", str(first), env=env)
    assert again.returncode == 0 and "unchanged: version 1" in again.stdout

    write_config(first, 9002)
    assert "published version 2" in gw_config("push", str(first), env=env).stdout

    current = gw_config("current", env=env)
    assert current.returncode == 0 and current.stdout.startswith("*    2 ")

    history = gw_config("history", env=env).stdout.splitlines()
    assert [(line[0], line[1:].split()[0]) for line in history] == [("*", "2"), (" ", "1")]
    assert "by alice" in history[1]

    show = gw_config("show", "1", env=env)
    assert f"--- {first}" in show.stdout and "port: 9001" in show.stdout

    diff = gw_config("diff", "1", "2", env=env).stdout
    assert "-    port: 9001" in diff and "+    port: 9002" in diff

    rollback = gw_config("rollback", "1", env=env)
    assert rollback.returncode == 0 and "published version 3" in rollback.stdout
    assert "identical files" in gw_config("diff", "1", "3", env=env).stdout


def test_push_of_the_same_bytes_under_another_spelling_creates_no_version(tmp_path: Path, env: dict[str, str]) -> None:
    (tmp_path / "rv2").mkdir()
    config = write_config(tmp_path / "rv2" / "gw.yaml", 9001)  # named as the supervisor names it: absolute
    assert "published version 1" in gw_config("push", str(config), env=env).stdout
    for spelling, cwd in (("gw.yaml", config.parent), ("./gw.yaml", config.parent), ("rv2/gw.yaml", tmp_path)):
        again = gw_config("push", spelling, env=env, cwd=cwd)
        assert again.returncode == 0 and "unchanged: version 1" in again.stdout, (spelling, again.stdout, again.stderr)


def test_push_refuses_an_invalid_config_naming_file_object_and_field(tmp_path: Path, env: dict[str, str]) -> None:
    path = write_config(tmp_path / "gw.yaml", 9001)
    docs = list(yaml.safe_load_all(path.read_text()))
    route = next(d for d in docs if d["kind"] == "HTTPRoute")
    route["spec"]["rules"][0]["backendRefs"][0]["name"] = "missing"
    path.write_text(yaml.safe_dump_all(docs))
    result = gw_config("push", str(path), env=env)
    assert result.returncode == 1
    assert f"error: {path}: HTTPRoute default/all: spec.rules[0].backendRefs[0]" in result.stderr
    assert "no config version published" in gw_config("current", env=env).stdout


def test_show_of_an_unknown_version_says_so(env: dict[str, str]) -> None:
    result = gw_config("show", "42", env=env)
    assert result.returncode == 1 and "version 42 does not exist" in result.stderr


def test_without_redis_url_the_cli_uses_a_running_gws_embedded_server(tmp_path: Path) -> None:
    embedded = EmbeddedValkey.from_settings(Settings(runtime_dir=str(tmp_path)))  # as `gw run` names it
    embedded.start()
    try:
        result = gw_config("push", str(write_config(tmp_path / "gw.yaml", 9001)), env={"GW_RUNTIME_DIR": str(tmp_path)})
        assert result.returncode == 0, result.stderr
        assert "published version 1" in result.stdout
    finally:
        embedded.stop()


def test_without_redis_url_or_embedded_server_the_cli_says_there_is_no_redis(tmp_path: Path) -> None:
    result = gw_config("current", env={"GW_RUNTIME_DIR": str(tmp_path)})
    assert result.returncode == 2
    assert "no Redis to talk to" in result.stderr and str(tmp_path / "gw-valkey-9901.sock") in result.stderr


def test_an_unreachable_redis_is_reported_not_raised(tmp_path: Path) -> None:
    result = gw_config("history", env={"GW_REDIS_URL": f"redis://127.0.0.1:{free_port()}"})
    assert result.returncode == 2 and "Redis at redis://127.0.0.1:" in result.stderr
    assert "Traceback" not in result.stderr


def test_show_and_diff_hide_secrets_and_reseal_seals_the_kept_versions(tmp_path: Path, env: dict[str, str]) -> None:
    key = base64.b64encode(os.urandom(32)).decode()
    config = write_config(tmp_path / "gw.yaml", 9001)
    secret = "\n---\napiVersion: v1\nkind: Secret\nmetadata: {name: api}\nstringData: {token: s3cret-%s}\n"
    config.write_text(config.read_text() + secret % "one")
    assert "published version 1" in gw_config("push", str(config), env=env).stdout  # in the clear: no keys
    config.write_text(config.read_text().replace("s3cret-one", "s3cret-two"))
    keyed = {**env, "GW_CONFIG_KEYS": key}
    assert "published version 2" in gw_config("push", str(config), env=keyed).stdout

    for number, environment in (("1", env), ("2", env), ("2", keyed)):
        shown = gw_config("show", number, env=environment)
        assert shown.returncode == 0, shown.stderr
        assert "s3cret" not in shown.stdout and 'stringData: "(hidden: stringData)"' in shown.stdout
    diff = gw_config("diff", "1", "2", env=env)
    assert diff.stdout == "versions 1 and 2 differ only in secret material (not shown)\n"
    assert "(secrets sealed)" in gw_config("history", env=env).stdout.splitlines()[0]

    refused = gw_config("rollback", "2", env=env)
    assert refused.returncode != 0 and "is sealed with key" in refused.stderr and "it is not set" in refused.stderr
    assert "GW_CONFIG_KEYS is not set" in gw_config("reseal", env=env).stderr
    resealed = gw_config("reseal", env=keyed)
    assert resealed.returncode == 0 and resealed.stdout.startswith("resealed with key ") and "version 1" in (
        resealed.stdout
    )
    assert "already" in gw_config("reseal", env=keyed).stdout
    history = gw_config("history", env=env).stdout.splitlines()
    assert [line[1:].split()[0] for line in history] == ["2", "1"] and all("(secrets sealed)" in h for h in history)


def test_push_of_a_missing_file_says_so(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.yaml"
    result = gw_config("push", str(missing), env={"GW_RUNTIME_DIR": str(tmp_path)})
    assert result.returncode == 1
    assert result.stderr == f"gw config: {missing}: no such file or directory: nothing pushed\n"
