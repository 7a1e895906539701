"""Admin endpoints (/healthz, /readyz, /metrics, /status) as a small ASGI app served by uvicorn.

Control plane only: never on the proxied request path. The supervisor serves it with callbacks
that ask its workers over their control channels.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import orjson
import uvicorn

Send = Callable[[dict[str, Any]], Awaitable[None]]


class AdminApp:
    """Routes admin paths to callbacks; every answer is small and computed on demand."""

    def __init__(
        self,
        ready: Callable[[], tuple[bool, str]],
        metrics: Callable[[], bytes | Awaitable[bytes]],
        status: Callable[[], dict[str, Any] | Awaitable[dict[str, Any]]],
    ) -> None:
        self.ready = ready
        self.metrics = metrics
        self.status = status

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
        if path == "/healthz":
            await _respond(send, 200, b"ok\n", b"text/plain")
        elif path == "/readyz":
            ok, why = self.ready()
            await _respond(send, 200 if ok else 503, (why + "\n").encode(), b"text/plain")
        elif path == "/metrics":
            metrics = await _value(self.metrics())
            await _respond(send, 200, metrics, b"text/plain; version=0.0.4; charset=utf-8")
        elif path == "/status":
            status = await _value(self.status())
            body = orjson.dumps(status, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS)
            await _respond(send, 200, body, b"application/json")
        else:
            await _respond(send, 404, b"not found\n", b"text/plain")


async def _value(result: Any) -> Any:
    """Callbacks may answer at once or, when they must ask the workers, with an awaitable."""
    return await result if inspect.isawaitable(result) else result


async def _respond(send: Send, status: int, body: bytes, content_type: bytes) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", content_type), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


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
