"""Status written back by `gw controller` (FAKE API server): `gw check`'s conditions, with observedGeneration.

Patched through the /status subresource only when something changed; other controllers' entries
in a route's parents[] are kept; Gateway addresses come from the gateway Service's load balancer.
"""

from __future__ import annotations

from typing import Any

from gw.config import DEFAULT_CONTROLLER_NAME, load_text, status_document
from gw.state.config_store import ConfigStore
from tests.controller import cluster
from tests.controller.conftest import eventually, new_controller, running
from tests.support.fake_apiserver import FakeApiServer

PORT = 18080


def bare(conditions: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Conditions without what the cluster adds (observedGeneration, lastTransitionTime)."""
    return [{k: c[k] for k in ("type", "status", "reason", "message")} for c in conditions]


def status_of(fake: FakeApiServer, kind: str, name: str, namespace: str = "default") -> dict[str, Any]:
    return (fake.get(kind, namespace, name) or {}).get("status") or {}


async def test_the_status_is_what_gw_check_computes_with_observed_generation(
    fake: FakeApiServer, store: ConfigStore, prefix: str
) -> None:
    objects = cluster.basic(PORT, 9999)
    for obj in objects:
        fake.put(obj)
    async with running(new_controller(store, prefix)):
        await eventually(lambda: status_of(fake, "HTTPRoute", "app").get("parents"), "the route's status")
        await eventually(lambda: status_of(fake, "Gateway", "web").get("listeners"), "the gateway's status")
        await eventually(lambda: status_of(fake, "GatewayClass", "gw", "").get("conditions"), "the class's status")
        # What `gw check` says of the same objects, compiled from files.
        import yaml

        expected = status_document(load_text(yaml.safe_dump_all(objects)))
        gateway = status_of(fake, "Gateway", "web")
        assert bare(gateway["conditions"]) == expected["gateways"][0]["conditions"]
        listener = gateway["listeners"][0]
        assert listener["attachedRoutes"] == 1
        assert bare(listener["conditions"]) == expected["gateways"][0]["listeners"][0]["conditions"]
        assert {c["observedGeneration"] for c in gateway["conditions"] + listener["conditions"]} == {1}
        gc = status_of(fake, "GatewayClass", "gw", "")
        assert [c["type"] for c in gc["conditions"]] == ["Accepted", "SupportedVersion"]
        [parent] = status_of(fake, "HTTPRoute", "app")["parents"]
        assert parent["controllerName"] == DEFAULT_CONTROLLER_NAME
        assert parent["parentRef"]["name"] == "web"
        assert bare(parent["conditions"]) == expected["httpRoutes"][0]["parents"][0]["conditions"]
        assert {c["observedGeneration"] for c in parent["conditions"]} == {1}

        # A spec change bumps the generation: the status follows it.
        fake.put(cluster.route("app", "missing-service"))
        await eventually(
            lambda: {c["observedGeneration"] for c in status_of(fake, "HTTPRoute", "app")["parents"][0]["conditions"]}
            == {2}, "observedGeneration 2",
        )  # fmt: skip
        [parent] = status_of(fake, "HTTPRoute", "app")["parents"]
        resolved = next(c for c in parent["conditions"] if c["type"] == "ResolvedRefs")
        assert resolved["status"] == "False"
        assert resolved["reason"] == "BackendNotFound"


async def test_status_is_patched_only_when_it_changes(fake: FakeApiServer, store: ConfigStore, prefix: str) -> None:
    for obj in cluster.basic(PORT, 9999):
        fake.put(obj)
    async with running(new_controller(store, prefix)) as controller:
        await eventually(lambda: len(fake.status_patches()) == 3, "class, gateway and route status")
        await eventually(lambda: not controller.changed.is_set(), "the echo of its own patches reconciled")
        reconciles = controller.counters["reconciles"]
        # An endpoint change: a new version, the same status.
        fake.put(cluster.endpoint_slice("app", 9998))
        fake.bookmark()
        await eventually(lambda: controller.counters["reconciles"] > reconciles and not controller.changed.is_set(),
                         "the change reconciled")  # fmt: skip
        assert controller.version == 2
        assert len(fake.status_patches()) == 3
        # A route that changes: its status is rewritten (observedGeneration), the others are not.
        fake.put(cluster.route("app", "app", hostname="app.example"))
        await eventually(lambda: len(fake.status_patches()) == 4, "the route's status patched")
        assert "/httproutes/app/status" in fake.status_patches()[-1][0]


async def test_other_controllers_parent_entries_are_kept(fake: FakeApiServer, store: ConfigStore, prefix: str) -> None:
    for obj in cluster.basic(PORT, 9999):
        fake.put(obj)
    theirs = {
        "parentRef": {"group": "gateway.networking.k8s.io", "kind": "Gateway", "namespace": "default", "name": "x"},
        "controllerName": "example.net/other",
        "conditions": [{"type": "Accepted", "status": "True", "reason": "Accepted", "message": "",
                        "lastTransitionTime": "2026-01-01T00:00:00Z"}],
    }  # fmt: skip
    route = cluster.route("app", "app")
    route["spec"]["parentRefs"].append({"name": "x"})
    route["status"] = {"parents": [theirs]}
    fake.put(route)
    async with running(new_controller(store, prefix)):
        await eventually(lambda: len(status_of(fake, "HTTPRoute", "app")["parents"]) == 2, "gw's entry added")
        parents = status_of(fake, "HTTPRoute", "app")["parents"]
        assert parents[0] == theirs
        assert parents[1]["controllerName"] == DEFAULT_CONTROLLER_NAME


async def test_gateway_addresses_come_from_the_gateway_service(
    fake: FakeApiServer, store: ConfigStore, prefix: str
) -> None:
    for obj in cluster.basic(PORT, 9999):
        fake.put(obj)
    lb = cluster.service("gw", namespace="gw-system")
    lb["status"] = {"loadBalancer": {"ingress": [{"ip": "203.0.113.7"}, {"hostname": "lb.example"}]}}
    fake.put(lb)
    async with running(new_controller(store, prefix, GW_GATEWAY_SERVICE="gw-system/gw")):
        await eventually(lambda: status_of(fake, "Gateway", "web").get("addresses"), "the gateway's addresses")
        assert status_of(fake, "Gateway", "web")["addresses"] == [
            {"type": "IPAddress", "value": "203.0.113.7"}, {"type": "Hostname", "value": "lb.example"},
        ]  # fmt: skip


def condition(fake: FakeApiServer, type_: str, name: str = "gw") -> dict[str, Any]:
    """One condition of the GatewayClass's status ({} until written)."""
    return next((c for c in status_of(fake, "GatewayClass", name, "").get("conditions") or () if c["type"] == type_),
                {})  # fmt: skip


async def test_supported_version_is_the_installed_crds_bundle_version(
    fake: FakeApiServer, store: ConfigStore, prefix: str
) -> None:
    for obj in cluster.basic(PORT, 9999):
        fake.put(obj)
    async with running(new_controller(store, prefix)) as controller:
        await eventually(lambda: condition(fake, "SupportedVersion"), "SupportedVersion written")
        supported = condition(fake, "SupportedVersion")
        assert (supported["status"], supported["reason"]) == ("True", "SupportedVersion")
        assert "v1.6.1" in supported["message"] and "v2.0.0" in supported["message"]
        assert supported["observedGeneration"] == 1
        assert condition(fake, "Accepted")["status"] == "True"
        assert controller.version == 1
        # Each CRD is watched by name (a metadata.name selector: what RBAC's resourceNames grants).
        reads = {r.query.get("fieldSelector") for r in fake.requests if r.path.endswith("/customresourcedefinitions")}
        judged = (*cluster.GATEWAY_API_CRDS, *cluster.OPTIONAL_CRDS)
        assert reads == {f"metadata.name={p}.gateway.networking.k8s.io" for p in judged}


async def test_crds_outside_the_supported_range_refuse_the_class_and_publish_nothing(
    fake: FakeApiServer, store: ConfigStore, prefix: str
) -> None:
    for obj in cluster.basic(PORT, 9999):
        fake.put(obj)
    fake.put(cluster.crd("httproutes", "v2.0.0"))
    async with running(new_controller(store, prefix)) as controller:
        await eventually(lambda: condition(fake, "SupportedVersion"), "SupportedVersion written")
        supported, accepted = condition(fake, "SupportedVersion"), condition(fake, "Accepted")
        assert (supported["status"], supported["reason"]) == ("False", "UnsupportedVersion")
        assert (accepted["status"], accepted["reason"]) == ("False", "UnsupportedVersion")
        assert "httproutes.gateway.networking.k8s.io is at v2.0.0" in accepted["message"]
        assert "v1.0.0 <= version < v2.0.0" in accepted["message"]
        assert accepted["observedGeneration"] == 1
        assert await store.history() == []  # nothing published from a cluster gw does not support
        assert controller.error.startswith("not published: ")
        assert not status_of(fake, "Gateway", "web") and not status_of(fake, "HTTPRoute", "app")

        # The CRD upgraded back into the range (the watch sees it): accepted, published.
        fake.put(cluster.crd("httproutes", "v1.6.1"))
        await eventually(lambda: condition(fake, "SupportedVersion").get("status") == "True", "SupportedVersion True")
        assert condition(fake, "Accepted")["status"] == "True"
        await eventually(lambda: controller.version == 1, "the cluster's config published")

        # And a downgrade below v1 (no gateway.networking.k8s.io/v1 served) is refused again.
        fake.put(cluster.crd("gateways", "v0.5.0"))
        await eventually(lambda: condition(fake, "Accepted").get("status") == "False", "Accepted False")
        assert "gateways.gateway.networking.k8s.io is at v0.5.0" in condition(fake, "SupportedVersion")["message"]
        await eventually(lambda: not controller.changed.is_set(), "the echo of its own patches reconciled")
        reconciles = controller.counters["reconciles"]
        fake.put(cluster.route("app", "app", hostname="app.example"))  # a change meanwhile: not published
        await eventually(lambda: controller.counters["reconciles"] > reconciles and not controller.changed.is_set(),
                         "the route change reconciled")  # fmt: skip
        assert controller.version == 1 and len(await store.history()) == 1


async def test_crds_without_the_annotation_are_served_best_effort(
    fake: FakeApiServer, store: ConfigStore, prefix: str
) -> None:
    for obj in cluster.basic(PORT, 9999):
        fake.put(obj)
    fake.put(cluster.crd("gateways", None))
    async with running(new_controller(store, prefix)) as controller:
        await eventually(lambda: condition(fake, "SupportedVersion"), "SupportedVersion written")
        supported = condition(fake, "SupportedVersion")
        assert (supported["status"], supported["reason"]) == ("False", "UnsupportedVersion")
        assert (
            "gateways.gateway.networking.k8s.io has no gateway.networking.k8s.io/bundle-version"
            in (supported["message"])
        )
        assert condition(fake, "Accepted")["status"] == "True"
        assert controller.version == 1


async def test_crds_gw_may_not_read_do_not_block_publishing(
    fake: FakeApiServer, store: ConfigStore, prefix: str
) -> None:
    for obj in cluster.basic(PORT, 9999):
        fake.put(obj)
    fake.forbid("CustomResourceDefinition")
    async with running(new_controller(store, prefix)) as controller:
        await eventually(lambda: condition(fake, "SupportedVersion"), "SupportedVersion written")
        supported = condition(fake, "SupportedVersion")
        assert (supported["status"], supported["reason"]) == ("Unknown", "Pending")
        assert "cannot read the Gateway API CRDs (403: " in supported["message"]
        assert condition(fake, "Accepted")["status"] == "True"
        assert controller.version == 1


async def test_crds_not_installed_do_not_block_publishing(fake: FakeApiServer, store: ConfigStore, prefix: str) -> None:
    for obj in cluster.basic(PORT, 9999)[len(cluster.GATEWAY_API_CRDS) :]:
        fake.put(obj)  # everything but the CRDs: the lists by name come back empty (a GET would 404)
    async with running(new_controller(store, prefix)) as controller:
        await eventually(lambda: condition(fake, "SupportedVersion"), "SupportedVersion written")
        assert condition(fake, "SupportedVersion")["status"] == "True"
        assert condition(fake, "Accepted")["status"] == "True"
        assert controller.version == 1


async def test_a_backend_tls_policy_reads_its_ca_config_map_and_reports_under_its_gateways(
    fake: FakeApiServer, store: ConfigStore, prefix: str
) -> None:
    import trustme

    for obj in cluster.basic(PORT, 9999):
        fake.put(obj)
    fake.put({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "app-ca", "namespace": "default"},
              "data": {"ca.crt": trustme.CA().cert_pem.bytes().decode()}})  # fmt: skip
    ca_ref = {"group": "", "kind": "ConfigMap", "name": "app-ca"}
    fake.put({"apiVersion": cluster.GATEWAY_API, "kind": "BackendTLSPolicy",
              "metadata": {"name": "app-tls", "namespace": "default"},
              "spec": {"targetRefs": [{"group": "", "kind": "Service", "name": "app"}],
                       "validation": {"hostname": "app.internal", "caCertificateRefs": [ca_ref]}}})  # fmt: skip
    async with running(new_controller(store, prefix)):
        await eventually(lambda: status_of(fake, "BackendTLSPolicy", "app-tls").get("ancestors"), "the policy's status")
        [ancestor] = status_of(fake, "BackendTLSPolicy", "app-tls")["ancestors"]
        assert ancestor["ancestorRef"] == {
            "group": "gateway.networking.k8s.io", "kind": "Gateway", "namespace": "default", "name": "web"
        }  # fmt: skip
        assert ancestor["controllerName"] == DEFAULT_CONTROLLER_NAME
        # The ConfigMap reached the config: the CA resolved.
        assert bare(ancestor["conditions"]) == [
            {"type": "Accepted", "status": "True", "reason": "Accepted", "message": "verified against 1 CA bundle(s)"},
            {"type": "ResolvedRefs", "status": "True", "reason": "ResolvedRefs", "message": ""},
        ]
