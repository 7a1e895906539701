"""k8s/ and the Dockerfile: every overlay renders, every object passes the Kubernetes schemas, gw's own
kinds pass (and fail) their CRD schemas as `gw check` does, RBAC stays least-privilege, a scale-in drains.

Rendering needs kubectl 1.21+ (kustomize built in; these machines have 1.32). Without it the
rendering tests skip, unless GW_REQUIRE_KUBECTL is set (.ci/run sets it: CI must not pass by
skipping them).
"""

from __future__ import annotations

import ast
import base64
import copy
import functools
import os
import re
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from gw.config import parse_documents
from gw.settings import Settings, parse_addr

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "k8s"
OVERLAYS = ("dev", "production")
KUBERNETES_VERSION = "1.32.0"  # the schemas objects are checked against: the oldest cluster we claim
GW_GROUP = "gw.dev"
OUR_KINDS = ("Backend", "RateLimitPolicy", "BackendTrafficPolicy", "SecurityPolicy")
# Kinds whose schema is not bundled with kubernetes-validate: the Gateway API's own CRDs.
UPSTREAM_CRD_KINDS = {"GatewayClass", "Gateway"}
# Set by the controller's issue (16), not in gw/settings.py yet: each must be documented in k8s/README.md.
# Set from the downward API, not gw settings: the controller's Lease holder names its pod.
DOWNWARD_VARIABLES = {"POD_NAME"}
# supervisor/arbiter.py, Supervisor.shutdown: the workers get GW_DRAIN_TIMEOUT plus this to exit.
WORKER_EXIT_MARGIN = 5.0


# -- rendering -----------------------------------------------------------------------------------


def _kubectl() -> str:
    """kubectl with kustomize built in, or a skip (a failure when GW_REQUIRE_KUBECTL is set)."""
    path = shutil.which("kubectl")
    reason = "kubectl is not installed"
    if path is not None:
        out = subprocess.run([path, "version", "--client", "-o", "yaml"], capture_output=True, text=True)
        info = yaml.safe_load(out.stdout or "{}") or {}
        minor = int(re.sub(r"\D", "", str(info.get("clientVersion", {}).get("minor", "0"))) or 0)
        if out.returncode == 0 and minor >= 21:
            return path
        reason = f"kubectl at {path} is older than 1.21 (no kustomize overlays): {out.stdout or out.stderr}"
    if os.environ.get("GW_REQUIRE_KUBECTL"):
        pytest.fail(f"{reason}; GW_REQUIRE_KUBECTL is set")
    pytest.skip(reason)


@functools.cache
def _render(directory: str) -> tuple[dict[str, Any], ...]:
    out = subprocess.run([_kubectl(), "kustomize", str(K8S / directory)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return tuple(d for d in yaml.safe_load_all(out.stdout) if d)


def render(directory: str) -> list[dict[str, Any]]:
    return copy.deepcopy(list(_render(directory)))


def one(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind} {name}: {len(found)} found"
    return found[0]


def container_env(objects: list[dict[str, Any]], deployment: dict[str, Any]) -> dict[str, str | None]:
    """The container's GW_* variables: envFrom ConfigMaps' values, then env; a Secret's value when the
    overlay makes the Secret, else None (a Secret the user creates, or the pod's own fields)."""
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    env: dict[str, str | None] = {}
    for source in container.get("envFrom", []):
        env.update(one(objects, "ConfigMap", source["configMapRef"]["name"])["data"])
    for var in container.get("env", []):
        value = var.get("value")
        ref = var.get("valueFrom", {}).get("secretKeyRef")
        secrets = [o for o in objects if o["kind"] == "Secret" and ref and o["metadata"]["name"] == ref["name"]]
        if secrets:
            value = base64.b64decode(secrets[0]["data"][ref["key"]]).decode()
        env[var["name"]] = value
    return env


# -- the Kubernetes schemas ---------------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_object_passes_the_kubernetes_schemas(overlay: str) -> None:
    unchecked = set()
    for obj in render(f"overlays/{overlay}"):
        try:
            kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.SchemaNotFoundError:
            unchecked.add(obj["kind"])
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{obj['kind']} {obj['metadata']['name']}: {exc}")
    assert unchecked == UPSTREAM_CRD_KINDS


def test_the_kubernetes_schemas_refuse_a_broken_object() -> None:
    """The check above is live: strict validation names an unknown field and a wrong type."""
    gateway = one(render("overlays/dev"), "Deployment", "gw-gateway")
    gateway["spec"]["template"]["spec"]["terminationGracePeriodSecond"] = 45
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(gateway, KUBERNETES_VERSION, strict=True)
    gateway = one(render("overlays/dev"), "Deployment", "gw-gateway")
    gateway["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] = "45"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(gateway, KUBERNETES_VERSION, strict=True)


def test_the_gateway_class_is_gws() -> None:
    objects = render("overlays/dev")
    gateway_class = one(objects, "GatewayClass", "gw")
    assert gateway_class["spec"]["controllerName"] == Settings().controller_name
    controller_env = container_env(objects, one(objects, "Deployment", "gw-controller"))
    assert controller_env["GW_CONTROLLER_NAME"] == gateway_class["spec"]["controllerName"]


def test_the_gateway_config_gw_serves_at_start_passes_gw_check() -> None:
    objects = render("overlays/dev")
    data = one(
        objects,
        "ConfigMap",
        next(o["metadata"]["name"] for o in objects if "gw-gateway-config" in o["metadata"]["name"]),
    )["data"]
    docs = [d for text in data.values() for d in yaml.safe_load_all(text) if d]
    _, errors = parse_documents(("gateway.yaml", d) for d in docs)
    assert not errors
    env = container_env(objects, one(objects, "Deployment", "gw-gateway"))
    namespace, name = env["GW_GATEWAY"].split("/")
    assert {(d["kind"], d["metadata"].get("namespace"), d["metadata"]["name"]) for d in docs} >= {
        ("Gateway", namespace, name)
    }
    pod = one(objects, "Deployment", "gw-gateway")["spec"]["template"]["spec"]
    (mount,) = [m for m in pod["containers"][0]["volumeMounts"] if m["mountPath"] == env["GW_CONFIG"]]
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    assert "gw-gateway-config" in volume["configMap"]["name"]


# -- the gateway's pod ---------------------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_a_scale_in_drains_within_the_grace_period(overlay: str) -> None:
    objects = render(f"overlays/{overlay}")
    deployment = one(objects, "Deployment", "gw-gateway")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    drain = Settings.from_env(container_env(objects, deployment)).drain_timeout  # type: ignore[arg-type]
    command = container["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    pause = float(command[1])
    assert pod["terminationGracePeriodSeconds"] > pause + drain + WORKER_EXIT_MARGIN


@pytest.mark.parametrize("overlay", OVERLAYS)
@pytest.mark.parametrize("deployment", ["gw-gateway", "gw-controller"])
def test_every_gw_setting_in_the_manifests_is_known_parses_and_is_documented(overlay: str, deployment: str) -> None:
    objects = render(f"overlays/{overlay}")
    env = container_env(objects, one(objects, "Deployment", deployment))
    known = {name for name, _, _ in Settings.table()}
    readme = (K8S / "README.md").read_text()
    for name in set(env) - DOWNWARD_VARIABLES:
        assert name.startswith("GW_")
        assert name in known, f"{name} is not a gw setting"
        assert f"| `{name}` |" in readme, f"{name} is not in k8s/README.md's table"
    # Parsed as gw parses them at start (a value gw refuses would crash-loop the pods).
    settings = Settings.from_env({k: v for k, v in env.items() if k in known and v is not None})
    if overlay == "dev":  # its Secret is in the overlay: the key is checked too
        assert settings.config_keys
    # Without GW_REDIS_URL every pod would start its own embedded Valkey: a fleet sharing nothing.
    assert "GW_REDIS_URL" in env


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_probes_and_ports_are_gws(overlay: str) -> None:
    objects = render(f"overlays/{overlay}")
    admin_source = (ROOT / "gw" / "admin.py").read_text()
    for name in ("gw-gateway", "gw-controller"):
        deployment = one(objects, "Deployment", name)
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        _, admin_port = parse_addr(container_env(objects, deployment)["GW_ADMIN_ADDR"] or "")
        assert ports["admin"] == admin_port
        for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz"), ("startupProbe", "/healthz")):
            assert container[probe]["httpGet"] == {"path": path, "port": "admin"}
            assert f'"{path}"' in admin_source
    # The Service's ports are the served Gateway's listeners; the pod binds them + the offset.
    deployment = one(objects, "Deployment", "gw-gateway")
    env = container_env(objects, deployment)
    settings = Settings.from_env({k: v for k, v in env.items() if v is not None})
    namespace, gateway_name = settings.gateway.split("/")
    gateway = one(objects, "Gateway", gateway_name)
    assert gateway["metadata"]["namespace"] == namespace
    service = one(objects, "Service", "gw")
    assert service["spec"]["type"] == "LoadBalancer"
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    container_ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    listeners = {listener["port"] for listener in gateway["spec"]["listeners"]}
    assert {p["port"] for p in service["spec"]["ports"]} == listeners
    for port in service["spec"]["ports"]:
        assert container_ports[port["targetPort"]] == port["port"] + settings.listener_port_offset
        assert 1024 <= container_ports[port["targetPort"]] < 65536  # no capability needed to bind it


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_gws_pods_run_unprivileged_on_a_read_only_root(overlay: str) -> None:
    objects = render(f"overlays/{overlay}")
    uid = int(re.search(r"^USER (\d+):\d+$", (ROOT / "Dockerfile").read_text(), re.M).group(1))  # type: ignore[union-attr]
    for name in ("gw-gateway", "gw-controller"):
        pod = one(objects, "Deployment", name)["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] == uid
        (container,) = pod["containers"]
        assert container["securityContext"] == {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        }
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert "emptyDir" in volumes[mounts["/tmp"]]  # TLS material and the embedded Valkey's socket
        assert container["resources"]["requests"] and container["resources"]["limits"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_gateway_fleet_is_spread_budgeted_and_autoscaled(overlay: str) -> None:
    objects = render(f"overlays/{overlay}")
    deployment = one(objects, "Deployment", "gw-gateway")
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert "replicas" not in deployment["spec"]  # the autoscaler owns it
    spread = deployment["spec"]["template"]["spec"]["topologySpreadConstraints"]
    assert {s["topologyKey"] for s in spread} == {"kubernetes.io/hostname", "topology.kubernetes.io/zone"}
    assert all(s["labelSelector"]["matchLabels"] == selector for s in spread)
    assert one(objects, "PodDisruptionBudget", "gw-gateway")["spec"]["selector"]["matchLabels"] == selector
    hpa = one(objects, "HorizontalPodAutoscaler", "gw-gateway")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "gw-gateway"}
    assert hpa["spec"]["minReplicas"] >= 2  # one pod may be disrupted (the PDB) and one still serves
    assert [m["resource"]["name"] for m in hpa["spec"]["metrics"]] == ["cpu"]
    controller = one(objects, "Deployment", "gw-controller")
    assert controller["spec"]["replicas"] == 2


def test_production_is_scaled_higher_and_reads_redis_from_a_secret() -> None:
    dev, production = render("overlays/dev"), render("overlays/production")
    hpa = "HorizontalPodAutoscaler", "gw-gateway"
    assert one(production, *hpa)["spec"]["minReplicas"] > one(dev, *hpa)["spec"]["minReplicas"]
    for name in ("gw-gateway", "gw-controller"):
        (container,) = one(production, "Deployment", name)["spec"]["template"]["spec"]["containers"]
        (redis,) = [e for e in container["env"] if e["name"] == "GW_REDIS_URL"]
        assert redis["valueFrom"]["secretKeyRef"] == {"name": "gw-redis", "key": "url"}
    assert not [o for o in production if o["kind"] == "StatefulSet"]
    assert one(dev, "StatefulSet", "valkey")


# -- RBAC ------------------------------------------------------------------------------------------

READ = {"get", "list", "watch"}
STATUS_WRITE = {"patch", "update"}
LEASE = {"create", "get", "update"}


def test_rbac_grants_the_controller_no_more_than_it_needs() -> None:
    objects = render("overlays/dev")
    roles = [o for o in objects if o["kind"] in ("ClusterRole", "Role")]
    assert {(o["kind"], o["metadata"]["name"]) for o in roles} == {
        ("ClusterRole", "gw-controller"),
        ("Role", "gw-controller-leader-election"),
    }
    for role in roles:
        for rule in role["rules"]:
            assert "*" not in rule["verbs"] + rule["resources"] + rule["apiGroups"], rule
            assert not rule.get("nonResourceURLs"), rule
            verbs = set(rule["verbs"])
            for resource in rule["resources"]:
                if resource == "leases":
                    assert role["kind"] == "Role" and verbs <= LEASE and rule["apiGroups"] == ["coordination.k8s.io"]
                elif resource.endswith("/status"):
                    assert verbs <= STATUS_WRITE, rule
                else:
                    assert verbs <= READ, rule
    # Renewing is limited to the controller's own Lease.
    role = one(objects, "Role", "gw-controller-leader-election")
    env = container_env(objects, one(objects, "Deployment", "gw-controller"))
    assert all(
        r.get("resourceNames") == [env["GW_LEADER_ELECTION_NAME"]]
        for r in role["rules"]
        if set(r["verbs"]) - {"create"}
    )
    # Every gw kind the CRDs define is read, its status written.
    cluster_role = one(objects, "ClusterRole", "gw-controller")
    granted = {
        (g, r, v)
        for rule in cluster_role["rules"]
        for g in rule["apiGroups"]
        for r in rule["resources"]
        for v in rule["verbs"]
    }
    for crd in (o for o in objects if o["kind"] == "CustomResourceDefinition"):
        plural = crd["spec"]["names"]["plural"]
        assert {(GW_GROUP, plural, v) for v in READ} <= granted
        assert {(GW_GROUP, f"{plural}/status", v) for v in STATUS_WRITE} <= granted
    # CRDs are read by name only: the Gateway API's that the controller judges the version of.
    from gw.controller.versions import crd_names

    [crd_rule] = [r for r in cluster_role["rules"] if "customresourcedefinitions" in r["resources"]]
    assert crd_rule["apiGroups"] == ["apiextensions.k8s.io"] and crd_rule["resources"] == ["customresourcedefinitions"]
    assert sorted(crd_rule["resourceNames"]) == crd_names()
    assert set(crd_rule["verbs"]) == {"list", "watch"}


def test_the_gateway_has_no_api_access() -> None:
    objects = render("overlays/dev")
    assert one(objects, "ServiceAccount", "gw-gateway")["automountServiceAccountToken"] is False
    pod = one(objects, "Deployment", "gw-gateway")["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "gw-gateway" and pod["automountServiceAccountToken"] is False
    bindings = [o for o in objects if o["kind"] in ("ClusterRoleBinding", "RoleBinding")]
    assert bindings
    assert all(s["name"] == "gw-controller" for b in bindings for s in b["subjects"])


def test_the_network_policies_cover_every_gw_pod() -> None:
    objects = render("overlays/dev")
    policies = [o for o in objects if o["kind"] == "NetworkPolicy"]
    for name in ("gw-gateway", "gw-controller"):
        labels = one(objects, "Deployment", name)["spec"]["template"]["metadata"]["labels"]
        covering = [p for p in policies if p["spec"]["podSelector"]["matchLabels"].items() <= labels.items()]
        assert covering and all(set(p["spec"]["policyTypes"]) == {"Ingress", "Egress"} for p in covering)
    gateway = one(objects, "NetworkPolicy", "gw-gateway")
    open_rule, admin_rule = gateway["spec"]["ingress"]
    assert "from" not in open_rule and [p["port"] for p in open_rule["ports"]] == ["http"]
    assert admin_rule["from"] and [p["port"] for p in admin_rule["ports"]] == ["admin"]


# -- the CRDs' schemas against `gw check` ----------------------------------------------------------


def crd_validators() -> dict[str, jsonschema.protocols.Validator]:
    crds = [yaml.safe_load(p.read_text()) for p in sorted((K8S / "base" / "crds").glob("*.yaml"))]
    validators = {}
    for crd in crds:
        assert crd["spec"]["group"] == GW_GROUP
        (version,) = crd["spec"]["versions"]
        assert version["name"] == "v1alpha1" and version["subresources"] == {"status": {}}
        schema = to_json_schema(version["schema"]["openAPIV3Schema"])
        validators[crd["spec"]["names"]["kind"]] = jsonschema.Draft202012Validator(schema)
    assert sorted(validators) == sorted(OUR_KINDS)
    return validators


def to_json_schema(node: Any) -> Any:
    """A CRD's structural schema as JSON Schema, with the API server's strict field validation: an
    object's unknown fields are refused (kubectl's default `--validate=strict`) unless it keeps them."""
    if isinstance(node, list):
        return [to_json_schema(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: to_json_schema(v) for k, v in node.items() if not k.startswith("x-kubernetes-")}
    if out.get("exclusiveMinimum") is True:  # OpenAPI v3.0's boolean form
        out["exclusiveMinimum"] = out.pop("minimum")
    if out.get("exclusiveMaximum") is True:
        out["exclusiveMaximum"] = out.pop("maximum")
    if out.pop("nullable", False):
        out["type"] = [out["type"], "null"]
    if node.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
    if "properties" in node and not node.get("x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False
    out.pop("description", None)
    return out


def gw_accepts(obj: dict[str, Any]) -> bool:
    _, errors = parse_documents([("object.yaml", obj)])
    return not errors


def schema_accepts(validators: dict[str, jsonschema.protocols.Validator], obj: dict[str, Any]) -> bool:
    return validators[obj["kind"]].is_valid(obj)


def _yaml_texts() -> Iterator[tuple[str, str]]:
    """Where gw objects are written in this repository: examples, the READMEs' and docs' YAML
    blocks, and YAML strings in tests and docstrings."""
    for path in sorted((ROOT / "gw" / "examples").glob("*.yaml")) + sorted((K8S / "examples").glob("*.yaml")):
        yield str(path), path.read_text()
    for path in [ROOT / "README.md", K8S / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for block in re.findall(r"```ya?ml\n(.*?)```", path.read_text(), re.S):
            yield str(path), block
    for path in sorted((ROOT / "tests").rglob("*.py")) + sorted((ROOT / "gw").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and "gw.dev/v1alpha1" in node.value:
                yield str(path), node.value


def written_objects() -> list[tuple[str, dict[str, Any]]]:
    found = []
    for where, text in _yaml_texts():
        text = textwrap.dedent(text)
        try:
            docs = list(yaml.safe_load_all(text))
        except yaml.YAMLError:
            # A docstring: the example runs from its apiVersion line to the first blank line.
            start = text.find("apiVersion: gw.dev")
            if start < 0:
                continue
            try:
                docs = list(
                    yaml.safe_load_all(textwrap.dedent(text[text.rfind("\n", 0, start) + 1 :].split("\n\n")[0]))
                )
            except yaml.YAMLError:
                continue
        for doc in docs:
            if isinstance(doc, dict) and doc.get("kind") in OUR_KINDS and doc.get("apiVersion") == "gw.dev/v1alpha1":
                found.append((where, doc))
    return found


META = {"name": "example", "namespace": "default"}

# Every field of each kind, set to a value gw accepts.
FULL = {
    "Backend": {
        "spec": {
            "endpoints": [
                {"address": "10.0.0.1", "port": 8080, "weight": 0},
                {"address": "api.example.com", "port": 65535, "weight": 1000000},
            ]
        }
    },
    "RateLimitPolicy": {
        "spec": {
            "targetRefs": [
                {"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "name": "api", "sectionName": "orders"},
                {"kind": "Gateway", "name": "public"},
            ],
            "algorithm": "GCRA",
            "mode": "Leased",
            "scope": "Local",
            "failureMode": "Local",
            "responseHeaders": True,
            "trustedProxies": ["10.0.0.0/8", "2001:db8::1"],
            "limits": [
                {
                    "name": "per-second",
                    "requests": 10,
                    "per": "1s",
                    "burst": 20,
                    "key": [
                        {"type": "ClientAddress"},
                        {"type": "Header", "name": "X-Api-Key"},
                        {"type": "QueryParam", "name": "tenant"},
                        {"type": "Method"},
                        {"type": "Route"},
                        {"type": "JWTClaim", "name": "org.team"},
                    ],
                },
                {"requests": 1000000000000, "per": "1h30m"},
            ],
        }
    },
    "BackendTrafficPolicy": {
        "spec": {
            "targetRefs": [
                {"group": "", "kind": "Service", "name": "api", "sectionName": "http"},
                {"group": "core", "kind": "Service", "name": "web"},
                {"group": "gw.dev", "kind": "Backend", "name": "external"},
                {"kind": "HTTPRoute", "name": "api", "sectionName": "orders"},
                {"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "public"},
            ],
            "circuitBreaker": {
                "maxConnections": 100,
                "maxPendingRequests": 0,
                "maxParallelRequests": 2147483647,
                "maxParallelRetries": 3,
                "failureRatio": 1,
                "slowCallDuration": "2s",
                "slowCallRatio": 0.5,
                "window": "10s",
                "minimumRequests": 1,
                "openDuration": "30s",
                "halfOpenRequests": 1,
            },
            "healthCheck": {
                "passive": {
                    "consecutive5XxErrors": 5,
                    "consecutiveGatewayErrors": 0,
                    "consecutiveLocalOriginFailures": 3,
                    "interval": "10s",
                    "baseEjectionTime": "30s",
                    "maxEjectionPercent": 100,
                },
                "active": {
                    "type": "HTTP",
                    "http": {
                        "path": "/healthz?full=1",
                        "method": "HEAD",
                        "hostname": "api.internal",
                        "expectedStatuses": [200, 204],
                    },
                    "interval": "5s",
                    "timeout": "1s",
                    "unhealthyThreshold": 3,
                    "healthyThreshold": 1,
                    "initialJitter": "0s",
                },
                "panicThreshold": 0,
            },
            "retry": {"budget": {"percent": 20, "interval": "10s"}, "minRetryRate": {"count": 3, "interval": "1s"}},
            "sessionPersistence": {
                "sessionName": "orders",
                "type": "Cookie",
                "absoluteTimeout": "1h",
                "cookieConfig": {"lifetimeType": "Permanent"},
            },
            "loadBalancer": {
                "type": "ConsistentHash",
                "consistentHash": {"type": "Cookie", "cookie": {"name": "user", "ttl": "1h"}, "tableSize": 5000011},
            },
        }
    },
    "SecurityPolicy": {
        "spec": {
            "targetRefs": [
                {"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "name": "api", "sectionName": "orders"},
                {"kind": "Gateway", "name": "public"},
            ],
            "apiKeyAuth": {
                "credentialRefs": [{"group": "", "kind": "Secret", "name": "api-keys"}, {"name": "more-keys"}],
                "extractFrom": [{"headers": ["X-Api-Key"]}, {"params": ["api_key"]}, {"cookies": ["key"]}],
                "forwardClientIDHeader": "X-Client-Id",
                "sanitize": True,
            },
            "basicAuth": {
                "users": {"group": "core", "kind": "Secret", "name": "htpasswd"},
                "forwardUsernameHeader": "X-User",
            },
            "authorization": {
                "defaultAction": "Deny",
                "rules": [
                    {
                        "name": "office",
                        "action": "Allow",
                        "principal": {
                            "clientCIDRs": ["10.0.0.0/8", "2001:db8::/32"],
                            "headers": [{"name": "X-Team", "values": ["ops", "dev"]}],
                        },
                        "operation": {"methods": ["GET", "POST"]},
                    },
                    {"action": "Deny", "principal": {"headers": [{"name": "x-banned", "values": ["yes"]}]}},
                ],
            },
        }
    },
}


def full(kind: str) -> dict[str, Any]:
    return {"apiVersion": "gw.dev/v1alpha1", "kind": kind, "metadata": dict(META), **copy.deepcopy(FULL[kind])}


def test_every_gw_object_written_in_the_repository_that_gw_accepts_passes_its_crd_schema() -> None:
    validators = crd_validators()
    accepted = [(where, obj) for where, obj in written_objects() if gw_accepts(obj)]
    assert {obj["kind"] for _, obj in accepted} == set(OUR_KINDS)
    assert len(accepted) >= 15  # the corpus is found (a broken search must not pass by finding nothing)
    for where, obj in accepted:
        errors = [e.message for e in validators[obj["kind"]].iter_errors(obj)]
        assert not errors, f"{obj['kind']} {obj['metadata'].get('name')} in {where}: {errors}"


@pytest.mark.parametrize("kind", OUR_KINDS)
def test_an_object_with_every_field_passes_gw_and_its_crd_schema(kind: str) -> None:
    obj = full(kind)
    assert gw_accepts(obj)
    errors = [e.message for e in crd_validators()[kind].iter_errors(obj)]
    assert not errors


def test_a_route_rules_trace_sampling_passes_both() -> None:
    """telemetry.tracing goes on a policy that targets no Service or Backend, which FULL does."""
    spec = {
        "targetRefs": [
            {"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "name": "api", "sectionName": "orders"},
            {"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "public"},
        ],
        "telemetry": {"tracing": {"samplingFraction": {"numerator": 1, "denominator": 1000}}},
    }
    obj = {"apiVersion": "gw.dev/v1alpha1", "kind": "BackendTrafficPolicy", "metadata": dict(META), "spec": spec}
    assert gw_accepts(obj)
    assert not [e.message for e in crd_validators()["BackendTrafficPolicy"].iter_errors(obj)]


def test_a_retry_constraint_session_header_and_each_balancer_pass_both() -> None:
    """The alternatives FULL cannot hold at once."""
    validators = crd_validators()
    base = full("BackendTrafficPolicy")["spec"]
    variants: list[dict[str, Any]] = [
        {"retryConstraint": base["retry"]},
        {"sessionPersistence": {"type": "Header", "sessionName": "x-session"}},
        {"loadBalancer": {"type": "RoundRobin", "slowStart": {"window": "30s"}}},
        {"loadBalancer": {"type": "LeastRequest"}},
        {"loadBalancer": {"type": "Random"}},
        {"loadBalancer": {"type": "ConsistentHash", "consistentHash": {"type": "SourceIP"}}},
        {
            "loadBalancer": {
                "type": "ConsistentHash",
                "consistentHash": {"type": "Header", "header": {"name": "x-user"}},
            }
        },
        {
            "loadBalancer": {
                "type": "ConsistentHash",
                "consistentHash": {"type": "QueryParams", "queryParams": [{"name": "user"}]},
            }
        },
        {"healthCheck": {"active": {"type": "TCP"}}},
    ]
    for variant in variants:
        obj = {
            "apiVersion": "gw.dev/v1alpha1",
            "kind": "BackendTrafficPolicy",
            "metadata": dict(META),
            "spec": {"targetRefs": base["targetRefs"], **variant},
        }
        assert gw_accepts(obj), variant
        assert schema_accepts(validators, obj), variant
    security = full("SecurityPolicy")["spec"]
    for section in ("apiKeyAuth", "basicAuth", "authorization"):
        obj = {"apiVersion": "gw.dev/v1alpha1", "kind": "SecurityPolicy", "metadata": dict(META),
               "spec": {"targetRefs": security["targetRefs"], section: security[section]}}  # fmt: skip
        assert gw_accepts(obj), section
        assert schema_accepts(validators, obj), section
    rlp = full("RateLimitPolicy")
    rlp["spec"]["algorithm"] = "SlidingWindow"
    del rlp["spec"]["limits"][0]["burst"]
    assert gw_accepts(rlp) and schema_accepts(validators, rlp)


# (kind, path to the field, value): a value outside an enum or a range, a required field missing
# (value DELETE), or a field gw does not know or refuses as unsupported.
DELETE = object()
REFUSED: list[tuple[str, str, Any]] = [
    ("Backend", "spec.endpoints.0.port", 0),
    ("Backend", "spec.endpoints.0.port", 65536),
    ("Backend", "spec.endpoints.0.weight", -1),
    ("Backend", "spec.endpoints.0.weight", 1000001),
    ("Backend", "spec.endpoints.0.address", DELETE),
    ("Backend", "spec.endpoints.0.port", "8080"),
    ("Backend", "spec.endpoints.0.zone", "a"),
    ("Backend", "spec.servers", []),
    ("RateLimitPolicy", "spec.algorithm", "FixedWindow"),
    ("RateLimitPolicy", "spec.mode", "Fast"),
    ("RateLimitPolicy", "spec.scope", "Cluster"),
    ("RateLimitPolicy", "spec.failureMode", "Ignore"),
    ("RateLimitPolicy", "spec.responseHeaders", "yes"),
    ("RateLimitPolicy", "spec.limits", DELETE),
    ("RateLimitPolicy", "spec.limits", []),
    ("RateLimitPolicy", "spec.limits", [{"requests": 1, "per": "1s", "name": f"l{i}"} for i in range(9)]),
    ("RateLimitPolicy", "spec.limits.0.requests", 0),
    ("RateLimitPolicy", "spec.limits.0.requests", 10**12 + 1),
    ("RateLimitPolicy", "spec.limits.0.requests", DELETE),
    ("RateLimitPolicy", "spec.limits.0.per", "1 second"),
    ("RateLimitPolicy", "spec.limits.0.per", DELETE),
    ("RateLimitPolicy", "spec.limits.0.burst", 0),
    ("RateLimitPolicy", "spec.limits.0.name", "Per_Second"),
    ("RateLimitPolicy", "spec.limits.0.key.0.type", "JWTClaims"),
    ("RateLimitPolicy", "spec.limits.0.key.0.type", DELETE),
    ("RateLimitPolicy", "spec.targetRefs.0.kind", "Service"),
    ("RateLimitPolicy", "spec.targetRefs.0.group", "gw.dev"),
    ("RateLimitPolicy", "spec.targetRefs.0.name", "Bad_Name"),
    ("RateLimitPolicy", "spec.targetRefs.0.name", DELETE),
    ("RateLimitPolicy", "spec.targetRefs.0.namespace", "other"),
    ("BackendTrafficPolicy", "spec.targetRefs", DELETE),
    ("BackendTrafficPolicy", "spec.targetRefs", []),
    ("BackendTrafficPolicy", "spec.targetRefs.0.kind", "Pod"),
    ("BackendTrafficPolicy", "spec.targetRefs.0.group", "apps"),
    ("BackendTrafficPolicy", "spec.targetRefs.0.namespace", "other"),
    ("BackendTrafficPolicy", "spec.targetRefs.0.sectionName", "Http"),
    ("BackendTrafficPolicy", "spec.circuitBreaker.maxConnections", -1),
    ("BackendTrafficPolicy", "spec.circuitBreaker.maxConnections", 2**31),
    ("BackendTrafficPolicy", "spec.circuitBreaker.failureRatio", 0),
    ("BackendTrafficPolicy", "spec.circuitBreaker.failureRatio", 1.5),
    ("BackendTrafficPolicy", "spec.circuitBreaker.slowCallRatio", 0),
    ("BackendTrafficPolicy", "spec.circuitBreaker.minimumRequests", 0),
    ("BackendTrafficPolicy", "spec.circuitBreaker.halfOpenRequests", 0),
    ("BackendTrafficPolicy", "spec.circuitBreaker.window", "10 seconds"),
    ("BackendTrafficPolicy", "spec.circuitBreaker.maxRequests", 10),
    ("BackendTrafficPolicy", "spec.healthCheck.panicThreshold", 101),
    ("BackendTrafficPolicy", "spec.healthCheck.passive.maxEjectionPercent", 101),
    ("BackendTrafficPolicy", "spec.healthCheck.passive.consecutive5XxErrors", -1),
    ("BackendTrafficPolicy", "spec.healthCheck.passive.interval", "1d"),
    ("BackendTrafficPolicy", "spec.healthCheck.active.type", "GRPC"),
    ("BackendTrafficPolicy", "spec.healthCheck.active.unhealthyThreshold", 0),
    ("BackendTrafficPolicy", "spec.healthCheck.active.healthyThreshold", 0),
    ("BackendTrafficPolicy", "spec.healthCheck.active.http.path", "healthz"),
    ("BackendTrafficPolicy", "spec.healthCheck.active.http.path", "/health z"),
    ("BackendTrafficPolicy", "spec.healthCheck.active.http.method", "GET /"),
    ("BackendTrafficPolicy", "spec.healthCheck.active.http.expectedStatuses", []),
    ("BackendTrafficPolicy", "spec.healthCheck.active.http.expectedStatuses", [99]),
    ("BackendTrafficPolicy", "spec.healthCheck.active.http.expectedStatuses", [600]),
    ("BackendTrafficPolicy", "spec.retry.budget.percent", 101),
    ("BackendTrafficPolicy", "spec.retry.minRetryRate.count", -1),
    ("BackendTrafficPolicy", "spec.sessionPersistence.type", "URL"),
    ("BackendTrafficPolicy", "spec.sessionPersistence.sessionName", "x" * 129),
    ("BackendTrafficPolicy", "spec.sessionPersistence.sessionName", "my session"),
    ("BackendTrafficPolicy", "spec.sessionPersistence.idleTimeout", "10m"),
    ("BackendTrafficPolicy", "spec.sessionPersistence.absoluteTimeout", "forever"),
    ("BackendTrafficPolicy", "spec.sessionPersistence.cookieConfig.lifetimeType", "Forever"),
    ("BackendTrafficPolicy", "spec.loadBalancer.type", "Maglev"),
    ("BackendTrafficPolicy", "spec.loadBalancer.type", DELETE),
    ("BackendTrafficPolicy", "spec.loadBalancer.zoneAware", {}),
    ("BackendTrafficPolicy", "spec.loadBalancer.endpointOverride", {}),
    ("BackendTrafficPolicy", "spec.loadBalancer.consistentHash.type", "Body"),
    ("BackendTrafficPolicy", "spec.loadBalancer.consistentHash.type", DELETE),
    ("BackendTrafficPolicy", "spec.loadBalancer.consistentHash.tableSize", 1),
    ("BackendTrafficPolicy", "spec.loadBalancer.consistentHash.tableSize", 5000012),
    ("BackendTrafficPolicy", "spec.loadBalancer.consistentHash.headers", [{"name": "x"}]),
    ("BackendTrafficPolicy", "spec.loadBalancer.consistentHash.cookie.name", DELETE),
    ("BackendTrafficPolicy", "spec.loadBalancer.consistentHash.cookie.name", "a b"),
    ("BackendTrafficPolicy", "spec.loadBalancer.consistentHash.cookie.attributes", {"Path": "/"}),
    ("BackendTrafficPolicy", "spec.loadBalancer.consistentHash.cookie.ttl", "1 hour"),
    ("BackendTrafficPolicy", "spec.telemetry", {"tracing": {"samplingRate": 50}}),
    ("BackendTrafficPolicy", "spec.telemetry", {"tracing": {}}),
    ("BackendTrafficPolicy", "spec.telemetry", {"tracing": {"samplingFraction": {"numerator": -1}}}),
    ("BackendTrafficPolicy", "spec.telemetry", {"tracing": {"samplingFraction": {"numerator": 1, "denominator": 0}}}),
    ("BackendTrafficPolicy", "spec.telemetry", {"tracing": {"samplingFraction": {"denominator": 10}}}),
    ("BackendTrafficPolicy", "spec.telemetry", {"tracing": {"samplingFraction": {"numerator": 1}, "tags": {}}}),
    ("BackendTrafficPolicy", "spec.telemetry", {"tracing": {"samplingFraction": {"numerator": 1}, "customTags": {}}}),
    ("BackendTrafficPolicy", "spec.telemetry", {"metrics": {"routeStatName": "%ROUTE_NAME%"}}),
    ("SecurityPolicy", "spec.targetRefs", DELETE),
    ("SecurityPolicy", "spec.targetRefs", []),
    ("SecurityPolicy", "spec.targetRefs.0.kind", "GRPCRoute"),
    ("SecurityPolicy", "spec.targetRefs.0.group", "gw.dev"),
    ("SecurityPolicy", "spec.targetRefs.0.namespace", "other"),
    ("SecurityPolicy", "spec.targetRefs.0.name", "Bad_Name"),
    ("SecurityPolicy", "spec.targetRef", {"kind": "Gateway", "name": "public"}),
    ("SecurityPolicy", "spec.targetSelectors", [{"kind": "HTTPRoute"}]),
    ("SecurityPolicy", "spec.mergeType", "StrategicMerge"),
    ("SecurityPolicy", "spec.sessionCookie", {}),
    ("SecurityPolicy", "spec.apiKeyAuth.credentialRefs", DELETE),
    ("SecurityPolicy", "spec.apiKeyAuth.credentialRefs", []),
    ("SecurityPolicy", "spec.apiKeyAuth.credentialRefs.0.kind", "ConfigMap"),
    ("SecurityPolicy", "spec.apiKeyAuth.credentialRefs.0.namespace", "other"),
    ("SecurityPolicy", "spec.apiKeyAuth.credentialRefs.0.name", DELETE),
    ("SecurityPolicy", "spec.apiKeyAuth.extractFrom", DELETE),
    ("SecurityPolicy", "spec.apiKeyAuth.extractFrom.0", {"headers": ["x-key"], "params": ["key"]}),
    ("SecurityPolicy", "spec.apiKeyAuth.extractFrom.0", {}),
    ("SecurityPolicy", "spec.apiKeyAuth.extractFrom.0.headers", []),
    ("SecurityPolicy", "spec.apiKeyAuth.extractFrom.0.headers", ["x key"]),
    ("SecurityPolicy", "spec.apiKeyAuth.forwardClientIDHeader", "x:client"),
    ("SecurityPolicy", "spec.apiKeyAuth.sanitize", "yes"),
    ("SecurityPolicy", "spec.apiKeyAuth.hashed", True),
    ("SecurityPolicy", "spec.basicAuth.users", DELETE),
    ("SecurityPolicy", "spec.basicAuth.users.group", "apps"),
    ("SecurityPolicy", "spec.basicAuth.users.namespace", "other"),
    ("SecurityPolicy", "spec.authorization.defaultAction", "Reject"),
    ("SecurityPolicy", "spec.authorization.rules.0.action", "Log"),
    ("SecurityPolicy", "spec.authorization.rules.0.action", DELETE),
    ("SecurityPolicy", "spec.authorization.rules.0.principal", DELETE),
    ("SecurityPolicy", "spec.authorization.rules.0.principal", {}),
    ("SecurityPolicy", "spec.authorization.rules.0.principal.headers.0.values", DELETE),
    ("SecurityPolicy", "spec.authorization.rules.0.operation.methods.0", "get"),
    ("SecurityPolicy", "spec.authorization.rules.0.operation", {}),
    ("SecurityPolicy", "spec.authorization.rules.0.subject", {}),
]


def _set(obj: dict[str, Any], path: str, value: Any) -> None:
    *parents, last = path.split(".")
    node: Any = obj
    for key in parents:
        node = node[int(key)] if isinstance(node, list) else node[key]
    if value is DELETE:
        del node[int(last) if isinstance(node, list) else last]
    elif isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value


@pytest.mark.parametrize(("kind", "path", "value"), REFUSED, ids=lambda v: str(v)[:30])
def test_what_gw_check_refuses_by_enum_range_or_field_the_crd_schema_refuses_too(
    kind: str, path: str, value: Any
) -> None:
    obj = full(kind)
    _set(obj, path, value)
    assert not gw_accepts(obj), "gw check accepts it: the case is no longer a refusal"
    assert not schema_accepts(crd_validators(), obj), "the CRD schema accepts what gw check refuses"


# -- the image -------------------------------------------------------------------------------------


def test_the_dockerfile_builds_from_files_that_exist_and_runs_gw() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    stages = re.split(r"^FROM ", dockerfile, flags=re.M)[1:]
    assert len(stages) == 2, "a builder stage and the final one"
    builder, final = stages
    assert builder.split()[1:3] == ["AS", "builder"]
    for line in re.findall(r"^COPY (?!--from)(.*)$", builder, re.M):
        *sources, _target = line.split()
        for source in sources:
            assert (ROOT / source).exists(), f"COPY {source}: no such file"
    ignored = (ROOT / ".dockerignore").read_text().splitlines()
    assert ignored[1] == "*"  # everything is excluded but what is listed back
    for source in ("pyproject.toml", "README.md", "LICENSE", "gw/", "supervisor/"):
        assert f"!{source}" in ignored
    # No compiler in the final image: it installs wheels only, from the builder.
    assert "build-essential" in builder and "build-essential" not in final and "gcc" not in final
    assert "--no-index" in final
    # The entry point is tini running gw, whose scripts pyproject.toml declares; `run` is a gw command.
    entrypoint = yaml.safe_load(re.search(r"^ENTRYPOINT (.*)$", final, re.M).group(1))  # type: ignore[union-attr]
    cmd = yaml.safe_load(re.search(r"^CMD (.*)$", final, re.M).group(1))  # type: ignore[union-attr]
    assert entrypoint == ["/usr/bin/tini", "--", "gw"] and cmd == ["run"]
    assert "tini" in final
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert re.search(r'^gw = "gw\.cli:main"$', pyproject, re.M)
    out = subprocess.run([sys.executable, "-m", "gw", "--help"], capture_output=True, text=True, cwd=ROOT)
    assert re.search(r"\brun\b", out.stdout), out.stdout + out.stderr
    assert re.search(r"^USER \d+:\d+$", final, re.M), "a numeric user, so runAsNonRoot can check it"
    assert (ROOT / "LICENSE").read_text().lstrip().startswith("Apache License")


def test_the_demo_app_passes_the_kubernetes_schemas_and_gw_check_with_the_base_gateway() -> None:
    docs = [d for d in yaml.safe_load_all((K8S / "examples" / "demo-app.yaml").read_text()) if d]
    for obj in docs:
        if obj["kind"] != "HTTPRoute":
            kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
    gateway = [d for d in yaml.safe_load_all((K8S / "base" / "gateway-api.yaml").read_text()) if d]
    resources, errors = parse_documents(("k8s.yaml", d) for d in gateway + docs)
    assert not errors
    assert len(resources.http_routes) == 2


def test_rbac_grants_every_kind_the_controller_watches_and_the_status_it_writes() -> None:
    from gw.controller.kinds import BACKEND_TLS_POLICY, GATEWAY, GATEWAY_CLASS, GW_API, HTTP_ROUTE, WATCHED

    objects = render("overlays/dev")
    granted = {
        (g, r, v)
        for rule in one(objects, "ClusterRole", "gw-controller")["rules"]
        for g in rule["apiGroups"]
        for r in rule["resources"]
        for v in rule["verbs"]
    }
    for kind in WATCHED:
        assert {(kind.group, kind.plural, v) for v in ("list", "watch")} <= granted, kind.kind
    # And the Gateway API CRDs whose bundle version it watches (SupportedVersion).
    assert {("apiextensions.k8s.io", "customresourcedefinitions", v) for v in ("list", "watch")} <= granted
    # Status is written on the Gateway API's objects and gw's policies (not on core kinds or grants).
    written = (GATEWAY_CLASS, GATEWAY, HTTP_ROUTE, BACKEND_TLS_POLICY)
    for kind in (*(k for k in WATCHED if k.api_version == GW_API), *written):
        assert kind in WATCHED and (kind.group, f"{kind.plural}/status", "patch") in granted, kind.kind
