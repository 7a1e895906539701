"""`gw check` and `gw routes`: every error with file, object and field; conditions per object; the table in order."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from gw.cli import main
from gw.settings import Settings

CONFIG = """
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: gw}
spec: {controllerName: gw.dev/gateway-controller}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: public, namespace: default}
spec:
  gatewayClassName: gw
  listeners: [{name: http, port: 8080, protocol: HTTP}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: internal, namespace: default}
spec:
  gatewayClassName: gw
  listeners: [{name: http, port: 9090, protocol: HTTP}]
---
apiVersion: gw.dev/v1alpha1
kind: Backend
metadata: {name: one, namespace: default}
spec: {endpoints: [{address: 127.0.0.1, port: 18081}]}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: api, namespace: default}
spec:
  parentRefs: [{name: public}, {name: internal}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /api}}]
    backendRefs: [{group: gw.dev, kind: Backend, name: one}]
  - matches: [{path: {type: PathPrefix, value: /api/v2}}]
    backendRefs: [{group: gw.dev, kind: Backend, name: one}]
  - matches: [{path: {type: Exact, value: /api/health}}]
    backendRefs: [{group: gw.dev, kind: Backend, name: one}]
"""

BROKEN_ROUTE = """
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: broken, namespace: default}
spec:
  parentRefs: [{name: public}]
  rules:
  - backendRefs: [{group: gw.dev, kind: Backend, name: missing}]
"""


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    import os

    for key in list(os.environ):
        if key.startswith("GW_"):
            monkeypatch.delenv(key)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "gw.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def run(capsys, *args: str) -> tuple[int, str]:
    code = main(list(args))
    return code, capsys.readouterr().out


class TestCheck:
    def test_valid_config_prints_ok_then_conditions(self, tmp_path, capsys):
        code, out = run(capsys, "check", str(write(tmp_path, CONFIG)))
        assert code == 0
        lines = out.splitlines()
        assert lines[0] == "ok: 3 rules on ports 8080/HTTP, 9090/HTTP"
        assert "GatewayClass gw: Accepted=True (Accepted)" in lines
        assert "Gateway default/public: Accepted=True (Accepted); Programmed=True (Programmed)" in lines
        assert any(line.startswith("  listener http (attachedRoutes=1): Accepted=True") for line in lines)
        assert "HTTPRoute default/api:" in lines
        assert "  parent Gateway default/public: Accepted=True (Accepted); ResolvedRefs=True (ResolvedRefs)" in lines
        assert "  parent Gateway default/internal: Accepted=True (Accepted); ResolvedRefs=True (ResolvedRefs)" in lines

    def test_errors_name_file_object_and_field_and_exit_non_zero(self, tmp_path, capsys):
        path = write(tmp_path, CONFIG + BROKEN_ROUTE)
        code, out = run(capsys, "check", str(path))
        assert code == 1
        assert out.startswith("invalid:")
        assert f"error: {path}: HTTPRoute default/broken: spec.rules[0].backendRefs[0]: " in out
        assert "ResolvedRefs=False (BackendNotFound)" in out

    def test_gw_gateway_selects_one_gateway(self, tmp_path, capsys, monkeypatch):
        monkeypatch.setenv("GW_GATEWAY", "default/internal")
        code, out = run(capsys, "check", str(write(tmp_path, CONFIG)))
        assert code == 0
        assert "ports 9090/HTTP" in out.splitlines()[0]
        assert "Gateway default/public" not in out

    def test_gw_controller_name_selects_the_class(self, tmp_path, capsys, monkeypatch):
        monkeypatch.setenv("GW_CONTROLLER_NAME", "example.net/other")
        code, out = run(capsys, "check", str(write(tmp_path, CONFIG)))
        assert code == 1
        assert "example.net/other" in out

    def test_bad_gw_gateway_exits_2(self, tmp_path, capsys, monkeypatch):
        monkeypatch.setenv("GW_GATEWAY", "no-slash")
        with pytest.raises(SystemExit) as exc:
            main(["check", str(write(tmp_path, CONFIG))])
        assert exc.value.code == 2
        assert "GW_GATEWAY" in capsys.readouterr().err

    def test_missing_file(self, tmp_path, capsys):
        code, out = run(capsys, "check", str(tmp_path / "nope.yaml"))
        assert code == 1
        assert "no such file" in out


class TestRoutes:
    def test_routes_print_in_precedence_order(self, tmp_path, capsys, monkeypatch):
        monkeypatch.setenv("GW_GATEWAY", "default/public")
        code, out = run(capsys, "routes", str(write(tmp_path, CONFIG)))
        assert code == 0
        matches = [line.strip().split(" → ")[0] for line in out.splitlines() if " → " in line]
        assert matches == ["Exact /api/health", "PathPrefix /api/v2", "PathPrefix /api"]

    def test_routes_show_why_a_rule_answers_500(self, tmp_path, capsys):
        code, out = run(capsys, "routes", str(write(tmp_path, CONFIG + BROKEN_ROUTE)))
        assert code == 0
        assert "default/broken#0 → 500: no backendRef can be resolved" in out


def test_settings_document_controller_name_and_gateway():
    rows = {name: (default, doc) for name, default, doc in Settings.table()}
    assert rows["GW_CONTROLLER_NAME"][0] == "gw.dev/gateway-controller"
    assert "namespace/name" in rows["GW_GATEWAY"][1]
    assert Settings.from_env({"GW_GATEWAY": "ns/gw"}).gateway == "ns/gw"
