"""The controller's Kubernetes API calls: list, watch with bookmarks, status patches, Lease reads and writes.

lightkube provides the connection: in a pod the service account (its rotated token re-read on
401, the cluster CA), outside `KUBECONFIG` or ~/.kube/config (client certificates, exec plugins),
as an httpx client. The calls themselves are plain JSON over that client: the cache and the YAML
rendering want the objects as the API server sends them (every field, unknown ones included,
not a typed model's view), and the watch loop must own its resourceVersion, bookmarks and the
relist after 410 Gone, which lightkube's own watch hides (it restarts from "now" and would miss
deletions).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx2 as httpx

from gw.controller.kinds import Kind

Object = dict[str, Any]

LIST_CHUNK = 500  # objects per list page (limit/continue), as client-go's reflector pages
REQUEST_TIMEOUT = 10.0


class ApiError(Exception):
    """The API server answered with an error status (or could not be reached: `status` 0)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}" if status else message)
        self.status = status


class Gone(ApiError):
    """410: the resourceVersion asked for is older than the server keeps; relist."""


class Conflict(ApiError):
    """409: the object changed since the resourceVersion the write was based on."""


class NotFound(ApiError):
    """404."""


class Unreachable(ApiError):
    """No answer: connection refused or reset, timeout, TLS failure."""

    def __init__(self, message: str) -> None:
        super().__init__(0, message)


def _error(status: int, body: bytes) -> ApiError:
    message = body.decode(errors="replace")[:300]
    try:
        data = json.loads(body)
        if isinstance(data, dict) and data.get("message"):
            message = str(data["message"])
    except ValueError:
        pass
    cls = {404: NotFound, 409: Conflict, 410: Gone}.get(status, ApiError)
    return cls(status, message)


def connect_http() -> httpx.AsyncClient:
    """An httpx client for the cluster: the pod's service account inside one, KUBECONFIG outside."""
    from lightkube.config.client_adapter import AsyncClient, ConnectionParams
    from lightkube.config.kubeconfig import KubeConfig
    from lightkube.core.exceptions import ConfigError

    try:
        config = KubeConfig.from_env().get()
    except ConfigError as exc:  # neither a pod's service account nor a readable KUBECONFIG
        raise ApiError(0, f"no Kubernetes configuration: not in a pod, and {exc}") from None
    if config is None:
        raise ApiError(0, "no Kubernetes configuration: not in a pod and no current context in KUBECONFIG")
    timeout = httpx.Timeout(REQUEST_TIMEOUT)
    return AsyncClient(config, ConnectionParams(timeout=timeout))


def in_cluster_namespace() -> str:
    """The pod's namespace from its service account; "" outside a cluster."""
    try:
        with open("/var/run/secrets/kubernetes.io/serviceaccount/namespace") as f:
            return f.read().strip()
    except OSError:
        return ""


class Api:
    """The calls the controller makes, each raising an ApiError subclass on failure."""

    def __init__(self, http: httpx.AsyncClient) -> None:
        self.http = http

    async def aclose(self) -> None:
        await self.http.aclose()

    async def _request(self, method: str, path: str, **kwargs: Any) -> Object:
        try:
            response = await self.http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise Unreachable(f"{type(exc).__name__}: {exc}") from None
        if response.status_code >= 400:
            raise _error(response.status_code, response.content)
        return response.json()  # type: ignore[no-any-return]

    async def list(self, kind: Kind) -> tuple[list[Object], str]:
        """Every object of `kind` (all namespaces) and the resourceVersion the list was read at."""
        items: list[Object] = []
        params: dict[str, Any] = {"limit": LIST_CHUNK}
        if kind.field_selector:
            params["fieldSelector"] = kind.field_selector
        while True:
            page = await self._request("GET", kind.path(), params=params)
            for item in page.get("items") or ():
                # List items carry neither kind nor apiVersion; the rendering needs both.
                items.append({"apiVersion": kind.api_version, "kind": kind.kind, **item})
            meta = page.get("metadata") or {}
            if not meta.get("continue"):
                return items, str(meta.get("resourceVersion", ""))
            params["continue"] = meta["continue"]

    async def watch(self, kind: Kind, resource_version: str, timeout: int) -> AsyncIterator[tuple[str, Object]]:
        """Events after `resource_version` until the server ends the watch (after about `timeout` s).

        Yields ("OPEN", {}) once the server accepted the watch, then (type, object) with type ADDED,
        MODIFIED, DELETED or BOOKMARK (the object then carries only the resourceVersion to resume
        from). A 410 in the stream raises Gone.
        """
        params: dict[str, Any] = {
            "watch": "true",
            "resourceVersion": resource_version,
            "allowWatchBookmarks": "true",
            "timeoutSeconds": timeout,
        }
        if kind.field_selector:
            params["fieldSelector"] = kind.field_selector
        # The server ends the watch after timeoutSeconds; a read timeout a little longer notices
        # a connection that died silently (no FIN: a node gone, a partition).
        read = httpx.Timeout(REQUEST_TIMEOUT, read=timeout + REQUEST_TIMEOUT)
        try:
            async with self.http.stream("GET", kind.path(), params=params, timeout=read) as response:
                if response.status_code >= 400:
                    raise _error(response.status_code, await response.aread())
                yield "OPEN", {}  # the server answers: reachable, though no event may come for minutes
                async for line in response.aiter_lines():
                    if not line.strip():
                        continue
                    event = json.loads(line)
                    kind_of_event = event.get("type", "")
                    obj = event.get("object") or {}
                    if kind_of_event == "ERROR":
                        raise _error(int(obj.get("code") or 500), json.dumps(obj).encode())
                    yield kind_of_event, obj
        except httpx.TransportError as exc:
            raise Unreachable(f"{type(exc).__name__}: {exc}") from None
        except ValueError as exc:  # a line that is not JSON: the stream is not one we can follow
            raise ApiError(0, f"bad watch event: {exc}") from None

    async def patch_status(self, kind: Kind, namespace: str, name: str, patch: Object) -> Object:
        """A JSON merge patch of the object's /status subresource (status only: RBAC grants no more)."""
        return await self._request(
            "PATCH",
            kind.path(namespace, name, "status"),
            content=json.dumps(patch).encode(),
            headers={"Content-Type": "application/merge-patch+json"},
        )

    async def get(self, kind: Kind, namespace: str, name: str) -> Object:
        return await self._request("GET", kind.path(namespace, name))

    async def create(self, kind: Kind, namespace: str, obj: Object) -> Object:
        return await self._request("POST", kind.path(namespace), json=obj)

    async def replace(self, kind: Kind, namespace: str, name: str, obj: Object) -> Object:
        """PUT: the object's metadata.resourceVersion makes it conditional (Conflict when it moved)."""
        return await self._request("PUT", kind.path(namespace, name), json=obj)
