"""A FAKE Kubernetes API server for the controller's tests: HTTP/1.1 on loopback, in a thread of its own.

Not Kubernetes: an in-memory store behind the real URL paths (/api/v1/..., /apis/GROUP/VERSION/
[namespaces/NS/]PLURAL[/NAME[/status]]) that answers as the API server does where the controller
relies on it: lists with a resourceVersion and limit/continue paging; watches from a
resourceVersion with events streamed in chunked JSON lines, BOOKMARK events when asked for
(`allowWatchBookmarks`), and a 410 Gone ERROR event for a resourceVersion older than what it keeps
(`compact()` forgets history); `fieldSelector=type=...` (a Secret without one is Opaque, as the
API server defaults it) and `metadata.name=...`; JSON merge patches of the /status
subresource, conditional on a resourceVersion in the patch (409); Leases with create (POST),
read and conditional replace (PUT, 409 on a stale resourceVersion); 403 Forbidden for the
collections a test `forbid`s (RBAC that does not grant them). Every request is recorded.

Tests change objects with `put` and `delete` (generation bumps when anything but metadata and
status changes, as for CRDs with a status subresource), stop it (every connection dropped, the
port refusing) and start it again on the same port.
"""

from __future__ import annotations

import asyncio
import copy
import json
import threading
import time
import uuid
from collections.abc import Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from tests.support.gateway import free_port

Object = dict[str, Any]

PLURALS = {
    "GatewayClass": "gatewayclasses",
    "Gateway": "gateways",
    "HTTPRoute": "httproutes",
    "GRPCRoute": "grpcroutes",
    "ReferenceGrant": "referencegrants",
    "Service": "services",
    "EndpointSlice": "endpointslices",
    "Secret": "secrets",
    "Namespace": "namespaces",
    "Backend": "backends",
    "RateLimitPolicy": "ratelimitpolicies",
    "BackendTrafficPolicy": "backendtrafficpolicies",
    "BackendTLSPolicy": "backendtlspolicies",
    "SecurityPolicy": "securitypolicies",
    "ConfigMap": "configmaps",
    "Lease": "leases",
    "CustomResourceDefinition": "customresourcedefinitions",
}
CLUSTER_SCOPED = frozenset({"GatewayClass", "Namespace", "CustomResourceDefinition"})


def group_of(api_version: str) -> str:
    group, _, _ = api_version.rpartition("/")
    return group


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    body: bytes


@dataclass
class Collection:
    """One resource type: its objects and the events that made them, for watches to replay."""

    objects: dict[tuple[str, str], Object] = field(default_factory=dict)
    events: list[tuple[int, str, Object]] = field(default_factory=list)
    watchers: list[asyncio.Queue[tuple[str, Object] | None]] = field(default_factory=list)


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386."""
    if not isinstance(patch, dict):
        return patch
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


class FakeApiServer:
    """The fake; `url` for clients, `kubeconfig(path)` for `gw controller` processes."""

    def __init__(self) -> None:
        self.port = free_port()
        self.collections: dict[tuple[str, str], Collection] = {}  # (group, plural) → collection
        self.rv = 100
        self.oldest = 0  # watches from a resourceVersion below this get 410 Gone
        self.requests: list[Request] = []
        self.patches: list[tuple[str, str, Object]] = []  # (path, content type, body) of status patches
        self.lease_writes = 0
        self.forbidden: set[str] = set()  # plurals every request for answers 403
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="fake-apiserver", daemon=True)
        self._server: asyncio.base_events.Server | None = None
        self._connections: set[asyncio.StreamWriter] = set()
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def kubeconfig(self, path: Path) -> Path:
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
            "users": [{"name": "fake", "user": {"token": "fake-token"}}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake", "namespace": "default"}}],
            "current-context": "fake",
        }
        path.write_text(json.dumps(config))
        return path

    # -- control, from the test's thread ----------------------------------------------------

    def _call(self, coro: Coroutine[Any, Any, Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)

    def start(self) -> FakeApiServer:
        self._call(self._start())
        return self

    def stop(self) -> None:
        """Close the port and drop every connection, watches included (an API server gone)."""
        self._call(self._stop())

    def close(self) -> None:
        self.stop()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    def put(self, obj: Object) -> Object:
        """Create or update an object as a user's kubectl apply would (status kept, generation bumped)."""
        return self._call(self._put(copy.deepcopy(obj)))  # type: ignore[no-any-return]

    def delete(self, kind: str, namespace: str, name: str, api_version: str = "") -> None:
        self._call(self._delete(kind, namespace, name, api_version))

    def get(self, kind: str, namespace: str, name: str, api_version: str = "") -> Object | None:
        collection = self._collection(kind, api_version)
        obj = collection.objects.get(("" if kind in CLUSTER_SCOPED else namespace, name))
        return copy.deepcopy(obj)

    def forbid(self, kind: str) -> None:
        """Answer every request for `kind`'s collection 403 Forbidden, as the API server without an RBAC grant."""
        self.forbidden.add(PLURALS[kind])

    def bookmark(self) -> None:
        """A BOOKMARK to every watch that asked for them: the current resourceVersion."""
        self._call(self._bookmark())

    def compact(self) -> None:
        """Forget history: every resourceVersion before the current one is now too old to watch from (410).

        The current one stays watchable, as a real server's list's resourceVersion is: a relist
        after 410 must not get 410 again until something else writes (a busy-loop the real server
        never causes).
        """
        self._call(self._compact())

    def status_patches(self, kind: str = "") -> list[tuple[str, str, Object]]:
        plural = PLURALS.get(kind, "")
        return [p for p in self.patches if not kind or f"/{plural}/" in p[0]]

    # -- state, on the server's loop --------------------------------------------------------

    def _collection(self, kind: str, api_version: str = "") -> Collection:
        if not api_version:
            api_version = _API_VERSIONS[kind]
        return self.collections.setdefault((group_of(api_version), PLURALS[kind]), Collection())

    def _record(self, collection: Collection, event: str, obj: Object) -> None:
        collection.events.append((self.rv, event, copy.deepcopy(obj)))
        for queue in collection.watchers:
            queue.put_nowait((event, copy.deepcopy(obj)))

    async def _put(self, obj: Object) -> Object:
        kind = obj["kind"]
        collection = self._collection(kind, obj.get("apiVersion", ""))
        meta = obj.setdefault("metadata", {})
        if kind in CLUSTER_SCOPED:
            meta.pop("namespace", None)
        else:
            meta.setdefault("namespace", "default")
        key = (meta.get("namespace", ""), meta["name"])
        old = collection.objects.get(key)
        self.rv += 1
        meta["resourceVersion"] = str(self.rv)
        if old is None:
            meta.setdefault("uid", str(uuid.uuid4()))
            meta.setdefault("creationTimestamp", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
            meta["generation"] = 1
            event = "ADDED"
        else:
            old_meta = old["metadata"]
            meta["uid"] = old_meta["uid"]
            meta["creationTimestamp"] = old_meta["creationTimestamp"]
            spec_changed = _spec(old) != _spec(obj)
            meta["generation"] = old_meta.get("generation", 1) + (1 if spec_changed else 0)
            if "status" not in obj and "status" in old:
                obj["status"] = old["status"]
            event = "MODIFIED"
        collection.objects[key] = obj
        self._record(collection, event, obj)
        return copy.deepcopy(obj)

    async def _delete(self, kind: str, namespace: str, name: str, api_version: str) -> None:
        collection = self._collection(kind, api_version)
        obj = collection.objects.pop(("" if kind in CLUSTER_SCOPED else namespace, name))
        self.rv += 1
        obj["metadata"]["resourceVersion"] = str(self.rv)
        self._record(collection, "DELETED", obj)

    async def _bookmark(self) -> None:
        for collection in self.collections.values():
            for queue in collection.watchers:
                queue.put_nowait(("BOOKMARK", {"metadata": {"resourceVersion": str(self.rv)}}))

    async def _compact(self) -> None:
        self.oldest = self.rv
        for collection in self.collections.values():
            collection.events.clear()

    # -- HTTP ---------------------------------------------------------------------------------

    async def _start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port, reuse_address=True)

    async def _stop(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in list(self._connections):
            writer.transport.abort()
        self._connections.clear()
        for collection in self.collections.values():
            for queue in collection.watchers:
                queue.put_nowait(None)
            collection.watchers.clear()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._connections.add(writer)
        try:
            while True:
                request = await _read_request(reader)
                if request is None:
                    return
                self.requests.append(request)
                plural = self._route(request.path)[1]
                watch = request.method == "GET" and request.query.get("watch") in ("true", "1")
                if watch and plural not in self.forbidden:
                    await self._watch(request, writer)
                else:
                    if plural in self.forbidden:
                        status, body = _status(403, "Forbidden", f"{plural} is forbidden: RBAC does not grant it")
                    else:
                        status, body = self._handle(request)
                    data = json.dumps(body).encode()
                    writer.write(
                        f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n"
                        .encode() + data
                    )
                    await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self._connections.discard(writer)
            writer.close()

    def _route(self, path: str) -> tuple[str, str, str, str, str]:
        """(group, plural, namespace, name, subresource) of a path."""
        parts = path.strip("/").split("/")
        if parts[0] == "api":
            group, rest = "", parts[2:]
        else:
            group, rest = parts[1], parts[3:]
        namespace = ""
        if len(rest) >= 3 and rest[0] == "namespaces":
            namespace, rest = rest[1], rest[2:]
        plural = rest[0]
        name = rest[1] if len(rest) > 1 else ""
        sub = rest[2] if len(rest) > 2 else ""
        return group, plural, namespace, name, sub

    def _handle(self, request: Request) -> tuple[int, Object]:
        group, plural, namespace, name, sub = self._route(request.path)
        collection = self.collections.setdefault((group, plural), Collection())
        if request.method == "GET" and not name:
            return 200, self._list(collection, group, plural, namespace, request.query)
        key = (namespace, name)
        obj = collection.objects.get(key)
        if request.method == "GET":
            return (200, obj) if obj is not None else _status(404, "NotFound", f"{plural} {name!r} not found")
        if request.method == "POST":
            new = json.loads(request.body)
            key = (namespace, new["metadata"]["name"])
            if key in collection.objects:
                return _status(409, "AlreadyExists", f"{plural} {key[1]!r} already exists")
            return self._write(collection, key, new, "ADDED")
        if obj is None:
            return _status(404, "NotFound", f"{plural} {name!r} not found")
        body = json.loads(request.body)
        wanted_rv = (body.get("metadata") or {}).get("resourceVersion")
        if wanted_rv and wanted_rv != obj["metadata"]["resourceVersion"]:
            return _status(409, "Conflict", "the object has been modified; apply your changes to the latest version")
        if request.method == "PUT" and not sub:
            return self._write(collection, key, body, "MODIFIED")
        if request.method == "PATCH" and sub == "status":
            self.patches.append((request.path, "merge", body))
            new = copy.deepcopy(obj)
            new["status"] = merge_patch(obj.get("status") or {}, body.get("status") or {})
            return self._write(collection, key, new, "MODIFIED")
        return _status(405, "MethodNotAllowed", f"{request.method} {request.path}")

    def _write(self, collection: Collection, key: tuple[str, str], obj: Object, event: str) -> tuple[int, Object]:
        self.rv += 1
        meta = obj.setdefault("metadata", {})
        meta["resourceVersion"] = str(self.rv)
        if key[0]:
            meta["namespace"] = key[0]
        if event == "ADDED":
            meta.setdefault("uid", str(uuid.uuid4()))
            meta.setdefault("creationTimestamp", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        if obj.get("kind") == "Lease":
            self.lease_writes += 1
        collection.objects[key] = obj
        self._record(collection, event, obj)
        return (201 if event == "ADDED" else 200), obj

    def _list(self, collection: Collection, group: str, plural: str, namespace: str, query: dict[str, str]) -> Object:
        items = [copy.deepcopy(o) for k, o in sorted(collection.objects.items()) if _selected(o, namespace, query)]
        if not group:  # core lists carry no kind/apiVersion per item, as the real server's JSON
            for item in items:
                item.pop("kind", None)
                item.pop("apiVersion", None)
        start = int(query.get("continue") or 0)
        limit = int(query.get("limit") or 0) or len(items) or 1
        page = items[start : start + limit]
        meta: Object = {"resourceVersion": str(self.rv)}
        if start + limit < len(items):
            meta["continue"] = str(start + limit)
        return {"kind": "List", "apiVersion": "v1", "metadata": meta, "items": page}

    async def _watch(self, request: Request, writer: asyncio.StreamWriter) -> None:
        group, plural, namespace, _, _ = self._route(request.path)
        collection = self.collections.setdefault((group, plural), Collection())
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
        since = int(request.query.get("resourceVersion") or 0)
        if since < self.oldest:
            gone = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Expired", "code": 410,
                    "message": f"too old resource version: {since} ({self.oldest})"}  # fmt: skip
            await _chunk(writer, {"type": "ERROR", "object": gone})
            writer.write(b"0\r\n\r\n")
            return
        bookmarks = request.query.get("allowWatchBookmarks") == "true"
        queue: asyncio.Queue[tuple[str, Object] | None] = asyncio.Queue()
        for rv, event, obj in collection.events:
            if rv > since:
                queue.put_nowait((event, copy.deepcopy(obj)))
        collection.watchers.append(queue)
        timeout = float(request.query.get("timeoutSeconds") or 3600)
        try:
            async with asyncio.timeout(timeout):
                while True:
                    item = await queue.get()
                    if item is None:
                        return  # stopped: the connection is aborted
                    event, obj = item
                    if event == "BOOKMARK" and not bookmarks:
                        continue
                    if event != "BOOKMARK" and not _selected(obj, namespace, request.query):
                        continue
                    await _chunk(writer, {"type": event, "object": obj})
        except TimeoutError:
            writer.write(b"0\r\n\r\n")
        finally:
            if queue in collection.watchers:
                collection.watchers.remove(queue)


def _spec(obj: Object) -> Object:
    return {k: v for k, v in obj.items() if k not in ("metadata", "status")}


def _selected(obj: Object, namespace: str, query: dict[str, str]) -> bool:
    if namespace and obj.get("metadata", {}).get("namespace") != namespace:
        return False
    selector = query.get("fieldSelector", "")
    for term in filter(None, selector.split(",")):
        name, _, value = term.partition("=")
        if name == "type" and obj.get("type", "Opaque" if obj.get("kind") == "Secret" else None) != value:
            return False
        if name == "metadata.name" and obj.get("metadata", {}).get("name") != value:
            return False
    return True


def _status(code: int, reason: str, message: str) -> tuple[int, Object]:
    return code, {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": reason, "message": message,
                  "code": code}  # fmt: skip


async def _chunk(writer: asyncio.StreamWriter, event: Object) -> None:
    data = json.dumps(event).encode() + b"\n"
    writer.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
    await writer.drain()


async def _read_request(reader: asyncio.StreamReader) -> Request | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError):
        return None
    lines = head.decode().split("\r\n")
    method, target, _ = lines[0].split(" ", 2)
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
    body = b""
    if "content-length" in headers:
        body = await reader.readexactly(int(headers["content-length"]))
    elif headers.get("transfer-encoding", "").lower() == "chunked":
        while True:
            size = int((await reader.readline()).strip(), 16)
            chunk = await reader.readexactly(size + 2)
            if size == 0:
                break
            body += chunk[:-2]
    parts = urlsplit(target)
    query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    return Request(method, parts.path, query, body)


_API_VERSIONS = {
    "GatewayClass": "gateway.networking.k8s.io/v1",
    "Gateway": "gateway.networking.k8s.io/v1",
    "HTTPRoute": "gateway.networking.k8s.io/v1",
    "ReferenceGrant": "gateway.networking.k8s.io/v1beta1",
    "Service": "v1",
    "EndpointSlice": "discovery.k8s.io/v1",
    "Secret": "v1",
    "Namespace": "v1",
    "Backend": "gw.dev/v1alpha1",
    "RateLimitPolicy": "gw.dev/v1alpha1",
    "BackendTrafficPolicy": "gw.dev/v1alpha1",
    "SecurityPolicy": "gw.dev/v1alpha1",
    "BackendTLSPolicy": "gateway.networking.k8s.io/v1",
    "ConfigMap": "v1",
    "Lease": "coordination.k8s.io/v1",
    "CustomResourceDefinition": "apiextensions.k8s.io/v1",
}
