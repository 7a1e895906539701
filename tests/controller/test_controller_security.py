"""SecurityPolicy in cluster mode (FAKE API server, real Valkey): the policy and the Opaque Secrets it names are
published, sealed, and compile as `gw check` compiles them; a Secret's new data makes a new version; a Secret
no served object names is never published; the policy's status is written under its targets. And a
BackendTLSPolicy's CA in an Opaque Secret reaches the config (the TLS-only Secret watch never brought it)."""

from __future__ import annotations

import base64
import hashlib
import os
from typing import Any

from gw.config import compile_snapshot
from gw.config.snapshot import Snapshot
from gw.controller.api import Api, connect_http
from gw.controller.controller import Controller
from gw.controller.kinds import OPAQUE_SECRET
from gw.state import Client, Keys
from gw.state.config_store import ConfigStore
from gw.state.sealing import SealingKeys
from tests.controller import cluster
from tests.controller.conftest import eventually, running, settings
from tests.support.fake_apiserver import FakeApiServer

PORT = 18080
GW_API = "gw.dev/v1alpha1"


def secret(name: str, data: dict[str, bytes], namespace: str = "default", type_: str | None = None) -> dict[str, Any]:
    """A Secret as the API server holds it: base64 data; no type is Opaque (the server's default)."""
    obj: dict[str, Any] = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": namespace},
                           "data": {k: base64.b64encode(v).decode() for k, v in data.items()}}  # fmt: skip
    if type_:
        obj["type"] = type_
    return obj


def security_policy(name: str, target: str = "app", **spec: Any) -> dict[str, Any]:
    return {"apiVersion": GW_API, "kind": "SecurityPolicy", "metadata": {"name": name, "namespace": "default"},
            "spec": {"targetRefs": [{"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "name": target}],
                     **spec}}  # fmt: skip


API_KEY = {"credentialRefs": [{"name": "api-keys"}], "extractFrom": [{"headers": ["x-api-key"]}]}
HTPASSWD = b"carol:{SHA}" + base64.b64encode(hashlib.sha1(b"pw").digest()) + b"\n"


def sealed_store(redis: Client, prefix: str) -> ConfigStore:
    return ConfigStore(redis, Keys(prefix), config_keys=SealingKeys((os.urandom(32),)))


def new_controller(store: ConfigStore, prefix: str) -> Controller:
    return Controller(settings(prefix), Api(connect_http()), store, backoff_cap=0.5)


async def current(store: ConfigStore) -> Snapshot:
    version = await store.fetch(await store.current())
    return Snapshot.of(version.files, "cluster")


def security_of(snapshot: Snapshot) -> Any:
    """The compiled rule of route `app` and its SecurityPolicy, as `gw run` would serve the version."""
    result = compile_snapshot(snapshot, settings("unused"))
    [rule] = [r for r in result.config.rules if r.route == "default/app"]
    return result, rule.security


async def test_a_security_policy_and_the_opaque_secret_it_names_are_published_sealed_and_served(
    fake: FakeApiServer, redis: Client, prefix: str
) -> None:
    for obj in cluster.basic(PORT, 9999):
        fake.put(obj)
    fake.put(secret("api-keys", {"alice": b"key-a"}))
    fake.put(secret("htpasswd", {".htpasswd": HTPASSWD}))
    fake.put(secret("unrelated", {"password": b"hunter2"}))  # Opaque, named by nothing gw serves
    fake.put(secret("named-by-another", {"alice": b"other"}))
    # A policy targeting a route gw does not serve: its Secret stays out too.
    fake.put(security_policy("elsewhere", target="not-served", apiKeyAuth={**API_KEY, "credentialRefs": [
        {"name": "named-by-another"}]}))  # fmt: skip
    fake.put(security_policy("app-auth", apiKeyAuth=API_KEY))
    store = sealed_store(redis, prefix)
    async with running(new_controller(store, prefix)) as controller:
        await eventually(store.current, "a first version")
        snapshot = await current(store)
        names = {name for name, _ in snapshot.files}
        assert {"SecurityPolicy/default/app-auth.yaml", "Secret/default/api-keys.yaml"} <= names
        assert not {"Secret/default/unrelated.yaml", "Secret/default/named-by-another.yaml",
                    "Secret/default/htpasswd.yaml"} & names  # fmt: skip
        result, security = security_of(snapshot)
        assert not [e for e in result.errors if "app-auth" in e.obj], result.errors
        assert security.policy == "default/app-auth" and security.api_keys == {"alice": b"key-a"}
        # Sealed in Redis: the key is not there in the clear.
        raw = await redis.hget(Keys(prefix).config.versions, str(await store.current()))
        assert b"api-keys" in raw and base64.b64encode(b"key-a") not in raw
        assert controller.status()["kinds"][OPAQUE_SECRET.label]["synced"]

        # New data in the Secret: a new version, serving the new key.
        first = controller.version
        fake.put(secret("api-keys", {"alice": b"key-a2", "bob": b"key-b"}))
        await eventually(lambda: controller.version > first, "a version for the Secret's new data")
        _, security = security_of(await current(store))
        assert security.api_keys == {"alice": b"key-a2", "bob": b"key-b"}

        # The policy now asks for basicAuth: its htpasswd Secret comes in, the API keys' goes.
        second = controller.version
        fake.put(security_policy("app-auth", basicAuth={"users": {"name": "htpasswd"}}))
        await eventually(lambda: controller.version > second, "a version for the changed policy")
        snapshot = await current(store)
        names = {name for name, _ in snapshot.files}
        assert "Secret/default/htpasswd.yaml" in names and "Secret/default/api-keys.yaml" not in names
        _, security = security_of(snapshot)
        assert list(security.users) == ["carol"]

        # A change to a Secret nothing names makes no version.
        third = controller.version
        renders, reconciles = controller.counters["renders"], controller.counters["reconciles"]
        fake.put(secret("unrelated", {"password": b"hunter3"}))
        await eventually(lambda: controller.counters["reconciles"] > reconciles, "the change seen")
        assert controller.version == third and controller.counters["renders"] == renders


async def test_the_security_policy_status_is_written_under_its_targets(
    fake: FakeApiServer, redis: Client, prefix: str
) -> None:
    for obj in cluster.basic(PORT, 9999):
        fake.put(obj)
    fake.put(security_policy("app-auth", apiKeyAuth=API_KEY))  # its Secret is missing: fails closed
    store = sealed_store(redis, prefix)

    def ancestors() -> list[dict[str, Any]]:
        return ((fake.get("SecurityPolicy", "default", "app-auth") or {}).get("status") or {}).get("ancestors") or []

    def accepted() -> dict[str, Any]:
        [ancestor] = ancestors()
        return next(c for c in ancestor["conditions"] if c["type"] == "Accepted")

    async with running(new_controller(store, prefix)):
        await eventually(ancestors, "the policy's status")
        [ancestor] = ancestors()
        assert ancestor["ancestorRef"] == {"group": "gateway.networking.k8s.io", "kind": "HTTPRoute",
                                           "namespace": "default", "name": "app"}  # fmt: skip
        assert ancestor["controllerName"] == "gw.dev/gateway-controller"
        assert accepted()["status"] == "False" and "Secret default/api-keys not found" in accepted()["message"]
        assert accepted()["observedGeneration"] == 1

        fake.put(secret("api-keys", {"alice": b"key-a"}))
        await eventually(lambda: accepted()["status"] == "True", "Accepted once the Secret exists")
        assert accepted()["reason"] == "Accepted"


async def test_a_backend_tls_policy_ca_in_an_opaque_secret_reaches_the_config(
    fake: FakeApiServer, redis: Client, prefix: str
) -> None:
    import trustme

    for obj in cluster.basic(PORT, 9999):
        fake.put(obj)
    fake.put(secret("app-ca", {"ca.crt": trustme.CA().cert_pem.bytes()}))  # Opaque, as `kubectl create secret generic`
    ca_ref = {"group": "", "kind": "Secret", "name": "app-ca"}
    fake.put({"apiVersion": cluster.GATEWAY_API, "kind": "BackendTLSPolicy",
              "metadata": {"name": "app-tls", "namespace": "default"},
              "spec": {"targetRefs": [{"group": "", "kind": "Service", "name": "app"}],
                       "validation": {"hostname": "app.internal", "caCertificateRefs": [ca_ref]}}})  # fmt: skip
    store = sealed_store(redis, prefix)

    def resolved() -> list[Any]:
        ancestors = ((fake.get("BackendTLSPolicy", "default", "app-tls") or {}).get("status") or {}).get("ancestors")
        return [c for a in ancestors or () for c in a["conditions"] if c["type"] == "ResolvedRefs"]

    async with running(new_controller(store, prefix)):
        await eventually(resolved, "the policy's status")
        assert [c["status"] for c in resolved()] == ["True"]
        assert "Secret/default/app-ca.yaml" in {name for name, _ in (await current(store)).files}


async def test_an_ext_auth_service_and_its_endpoints_are_published_and_served(
    fake: FakeApiServer, redis: Client, prefix: str
) -> None:
    for obj in cluster.basic(PORT, 9999):
        fake.put(obj)
    fake.put(cluster.service("auth"))  # named by nothing but the policy's extAuth
    fake.put(cluster.endpoint_slice("auth", 9998))
    fake.put(security_policy("app-ext", extAuth={"http": {"backendRefs": [{"name": "auth", "port": 80}]}}))
    store = sealed_store(redis, prefix)
    async with running(new_controller(store, prefix)):
        await eventually(store.current, "a first version")
        snapshot = await current(store)
        names = {name for name, _ in snapshot.files}
        assert {"Service/default/auth.yaml", "SecurityPolicy/default/app-ext.yaml"} <= names
        assert any(n.startswith("EndpointSlice/default/auth") for n in names)
        result, security = security_of(snapshot)
        assert not [e for e in result.errors if "app-ext" in e.obj], result.errors
        assert [(e.address, e.port) for e in security.ext_auth.backend.endpoints] == [("127.0.0.1", 9998)]
