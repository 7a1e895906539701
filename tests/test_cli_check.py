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


UNSERVED = """
---
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: grpc, namespace: default}
spec:
  parentRefs: [{name: public}]
---
apiVersion: v1
kind: ConfigMap
metadata: {name: settings, namespace: default}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: addressed, namespace: default}
spec:
  gatewayClassName: gw
  addresses: [{type: IPAddress, value: 10.0.0.1}]
  listeners: [{name: http, port: 8081, protocol: HTTP}]
"""


class TestFirstContact:
    def test_check_warns_about_kinds_and_fields_it_accepts_but_does_not_serve(self, tmp_path, capsys):
        code, out = run(capsys, "check", str(write(tmp_path, CONFIG + UNSERVED)))
        assert code == 0  # served as far as gw serves it: a warning, not an error
        warnings = [line for line in out.splitlines() if line.startswith("warning: ")]
        assert warnings == [
            "warning: GRPCRoute default/grpc: accepted, not served by gw (skipped; gw serves HTTPRoute)",
            "warning: Gateway default/addressed: spec.addresses: accepted, not served by gw "
            "(listeners bind GW_LISTENER_ADDRESS)",
        ]  # a ConfigMap is no Gateway API kind: nothing to say

    @pytest.mark.parametrize("verb", ["check", "routes"])
    def test_check_and_routes_read_gw_config_without_a_path(self, tmp_path, capsys, monkeypatch, verb):
        path = write(tmp_path, CONFIG)
        expected = run(capsys, verb, str(path))
        monkeypatch.setenv("GW_CONFIG", str(path))
        assert run(capsys, verb) == expected and expected[0] == 0

    def test_check_without_a_path_or_gw_config_says_what_to_give(self, capsys):
        code, out = run(capsys, "check")
        assert code == 1 and out == "error: no config given: name a file or directory, or set GW_CONFIG\n"

    def test_version(self, capsys):
        from gw import __version__

        with pytest.raises(SystemExit) as exit_:
            main(["--version"])
        assert exit_.value.code == 0 and capsys.readouterr().out == f"gw {__version__}\n"

    @pytest.mark.parametrize(
        ("variable", "value", "expected"),
        [
            ("GW_WORKERS", "abc", "GW_WORKERS='abc': not a whole number: 'abc' (use e.g. 4)"),
            ("GW_MAX_CONNECTIONS", "many", "GW_MAX_CONNECTIONS='many': not a whole number: 'many' (use e.g. 4)"),
            ("GW_ACCESS_LOG_SAMPLE", "half", "GW_ACCESS_LOG_SAMPLE='half': not a number: 'half' (a fraction"),
            ("GW_ADMIN_ADDR", "nowhere", "GW_ADMIN_ADDR='nowhere': not host:port: 'nowhere' (use e.g. 127.0.0.1:9901)"),
            ("GW_LISTENER_ADDRESS", "lo", "GW_LISTENER_ADDRESS='lo': not an IP address: 'lo' (use e.g."),
        ],
    )
    def test_a_bad_setting_names_the_variable_and_the_expected_form(self, variable, value, expected):
        from gw.settings import SettingsError

        with pytest.raises(SettingsError) as error:
            Settings.from_env({variable: value})
        assert str(error.value).startswith(expected)
        assert "int()" not in str(error.value) and "float" not in str(error.value)
