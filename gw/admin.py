"""Admin endpoints (/healthz, /readyz, /metrics, /status, /fleet, /config/*, /dashboard): a small ASGI app.

Served by uvicorn; control plane only: never on the proxied request path. The supervisor serves it
with callbacks that ask its workers over their control channels or read Redis. Everything but the
three probe endpoints is private: with GW_ADMIN_TOKEN set it asks for the bearer token, without one
(on a non-loopback address) it answers loopback peers only.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import inspect
import ipaddress
import re
from collections.abc import Awaitable, Callable, Iterator, Sequence
from importlib import resources
from typing import Any
from urllib.parse import parse_qs

import orjson
import uvicorn

Send = Callable[[dict[str, Any]], Awaitable[None]]
Headers = Sequence[tuple[bytes, bytes]]

# Kubelet probes and Prometheus scrape these without credentials; they say nothing about the config.
OPEN_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
JSON = b"application/json"
PROBLEM = b"application/problem+json"


class AdminProblem(Exception):
    """An admin request gw answers with a problem document (unknown version, Redis away)."""

    def __init__(self, status: int, kind: str, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.kind = kind
        self.detail = detail


class AdminApp:
    """Routes admin paths to callbacks; every answer is small and computed on demand."""

    def __init__(
        self,
        ready: Callable[[], tuple[bool, str]],
        metrics: Callable[[], bytes | Awaitable[bytes]],
        status: Callable[[], dict[str, Any] | Awaitable[dict[str, Any]]],
        *,
        token: str = "",
        loopback_only: bool = False,
        versions: Callable[[], Awaitable[dict[str, Any]]] | None = None,
        diff: Callable[[int, int], Awaitable[str]] | None = None,
        fleet: Callable[[], Awaitable[dict[str, Any]]] | None = None,
    ) -> None:
        self.ready = ready
        self.metrics = metrics
        self.status = status
        self.token = token.encode()
        self.loopback_only = loopback_only and not token
        self.versions = versions
        self.diff = diff
        self.fleet = fleet

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        path = scope["path"]
        if scope["method"] not in ("GET", "HEAD"):  # read-only: nothing here changes the gateway
            await _problem(
                send, 405, "admin-method", "the admin endpoints are read-only (GET)", [(b"allow", b"GET, HEAD")]
            )
            return
        if path == "/healthz":
            await _respond(send, 200, b"ok\n", b"text/plain")
        elif path == "/readyz":
            ok, why = self.ready()
            await _respond(send, 200 if ok else 503, (why + "\n").encode(), b"text/plain")
        elif path == "/metrics":
            metrics = await _value(self.metrics())
            await _respond(send, 200, metrics, b"text/plain; version=0.0.4; charset=utf-8")
        elif path == "/dashboard":
            # The page holds no data (its script fetches the JSON below with the token), so it is
            # served to anyone who reaches the port; a browser cannot send a header on navigation.
            page = dashboard_page()
            await _respond(send, 200, page.body, b"text/html; charset=utf-8", page.headers)
        elif (refusal := self._refusal(scope)) is not None:
            await refusal(send)
        else:
            try:
                await self._private(path, scope, send)
            except AdminProblem as problem:
                await _problem(send, problem.status, problem.kind, problem.detail)

    def _refusal(self, scope: dict[str, Any]) -> Callable[[Send], Awaitable[None]] | None:
        """None when the caller may read the private endpoints, else what to answer."""
        if self.token:
            for name, value in scope["headers"]:
                if name == b"authorization":
                    scheme, _, credentials = value.partition(b" ")
                    if scheme.lower() == b"bearer" and hmac.compare_digest(credentials.strip(), self.token):
                        return None
            return lambda send: _problem(
                send, 401, "admin-unauthorized", "send Authorization: Bearer GW_ADMIN_TOKEN",
                [(b"www-authenticate", b'Bearer realm="gw admin"')],
            )  # fmt: skip
        if self.loopback_only and not _loopback(scope.get("client")):
            return lambda send: _problem(
                send, 403, "admin-forbidden",
                "the admin port answers this path to loopback peers only until GW_ADMIN_TOKEN is set",
            )  # fmt: skip
        return None

    async def _private(self, path: str, scope: dict[str, Any], send: Send) -> None:
        if path == "/status":
            status = await _value(self.status())
            body = orjson.dumps(status, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS)
            await _respond(send, 200, body, JSON, NO_STORE)
        elif path == "/fleet" and self.fleet is not None:
            # 200 with Redis away too: the document says so (redis.available) next to what this
            # replica knows alone, so a script and the dashboard read one shape.
            await _respond(send, 200, orjson.dumps(await self.fleet(), option=orjson.OPT_INDENT_2), JSON, NO_STORE)
        elif path == "/config/versions" and self.versions is not None:
            await _respond(send, 200, orjson.dumps(await self.versions(), option=orjson.OPT_INDENT_2), JSON, NO_STORE)
        elif path == "/config/diff" and self.diff is not None:
            query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
            numbers = [query.get(name, [""])[0] for name in ("from", "to")]
            if not all(n.isdigit() for n in numbers):
                raise AdminProblem(400, "admin-query", "give two version numbers: /config/diff?from=1&to=2")
            text = await self.diff(int(numbers[0]), int(numbers[1]))
            await _respond(send, 200, text.encode(), b"text/plain; charset=utf-8", NO_STORE)
        else:
            await _respond(send, 404, b"not found\n", b"text/plain")


NO_STORE: Headers = [(b"cache-control", b"no-store")]


def _loopback(client: tuple[str, int] | None) -> bool:
    if client is None:  # a unix socket: only this host reaches it
        return True
    try:
        address = ipaddress.ip_address(client[0])
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    return (mapped or address).is_loopback


def access(host: str, token: str) -> dict[str, Any]:
    """AdminApp's keyword arguments for who may read the private endpoints (GW_ADMIN_ADDR's host, GW_ADMIN_TOKEN)."""
    return {"token": token, "loopback_only": not is_loopback_host(host)}


def access_note(host: str, token: str) -> str:
    """A start-up line when the private endpoints answer loopback peers only, else ""."""
    if token or is_loopback_host(host):
        return ""
    return (
        f"admin on {host}: /status, /config and the dashboard's data answer loopback peers only; "
        "set GW_ADMIN_TOKEN to read them from elsewhere"
    )


def is_loopback_host(host: str) -> bool:
    """Whether GW_ADMIN_ADDR's host keeps the port on this machine (a name counts as not)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Page:
    """The dashboard's bytes and headers, its Content-Security-Policy naming its one script and style."""

    def __init__(self, body: bytes) -> None:
        self.body = body
        hashes = {
            kind: " ".join(
                f"'sha256-{base64.b64encode(hashlib.sha256(block).digest()).decode()}'"
                for block in re.findall(rb"<%b>(.*?)</%b>" % (kind, kind), body, re.S)
            )
            for kind in (b"script", b"style")
        }
        csp = (
            f"default-src 'none'; script-src {hashes[b'script']}; style-src {hashes[b'style']}; "
            "connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
        )
        self.headers: Headers = [
            *NO_STORE,
            (b"content-security-policy", csp.encode()),
            (b"x-content-type-options", b"nosniff"),
            (b"referrer-policy", b"no-referrer"),
        ]


_page: Page | None = None


def dashboard_page() -> Page:
    global _page
    if _page is None:
        _page = Page(resources.files("gw.observe").joinpath("dashboard.html").read_bytes())
    return _page


async def _value(result: Any) -> Any:
    """Callbacks may answer at once or, when they must ask the workers, with an awaitable."""
    return await result if inspect.isawaitable(result) else result


async def _respond(send: Send, status: int, body: bytes, content_type: bytes, headers: Headers = ()) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", content_type), (b"content-length", str(len(body)).encode()), *headers],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def _problem(send: Send, status: int, kind: str, detail: str, headers: Headers = ()) -> None:
    title = {400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed",
             503: "Service Unavailable"}.get(status, "Error")  # fmt: skip
    document = {"type": "urn:gw:problem:" + kind, "title": title, "status": status, "detail": detail}
    await _respond(send, status, orjson.dumps(document), PROBLEM, [*NO_STORE, *headers])


class AdminServer(uvicorn.Server):
    """uvicorn on the caller's event loop; signals stay with the process that owns them."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def admin_server(app: AdminApp, host: str, port: int) -> AdminServer:
    config = uvicorn.Config(
        app, host=host, port=port, log_level="warning", access_log=False, lifespan="off", loop="none"
    )
    return AdminServer(config)
