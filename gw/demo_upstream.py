"""A tiny echo upstream for `gw demo`: answers every request with JSON describing what it got."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import socket

import httptools
import orjson
import uvloop


class EchoProtocol(asyncio.Protocol):
    def __init__(self, name: str) -> None:
        self.name = name
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.body: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            assert self.transport is not None
            self.transport.write(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
            self.transport.close()

    def on_message_begin(self) -> None:
        self.url, self.headers, self.body = b"", [], []

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        assert self.transport is not None
        body = b"".join(self.body)
        payload = orjson.dumps(
            {
                "upstream": self.name,
                "pid": os.getpid(),
                "method": self.parser.get_method().decode(),
                "url": self.url.decode("latin-1"),
                "headers": {n.decode("latin-1"): v.decode("latin-1") for n, v in self.headers},
                "body_bytes": len(body),
            },
            option=orjson.OPT_INDENT_2,
        ) + b"\n"
        keep = self.parser.should_keep_alive()
        self.transport.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n%s\r\n%s"
            % (len(payload), b"" if keep else b"connection: close\r\n", payload)
        )
        if not keep:
            self.transport.close()


async def serve(host: str, port: int, name: str, fd: int | None = None) -> None:
    loop = asyncio.get_running_loop()
    if fd is not None:  # a listening socket handed over by `gw demo`, which bound it
        server = await loop.create_server(lambda: EchoProtocol(name), sock=socket.socket(fileno=fd))
    else:
        server = await loop.create_server(lambda: EchoProtocol(name), host, port, reuse_address=True)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--port", type=int)
    where.add_argument("--fd", type=int, help="an inherited listening socket")
    parser.add_argument("--name", default="echo")
    args = parser.parse_args()
    # Run by hand, Ctrl-C stops it: exit quietly.
    with contextlib.suppress(KeyboardInterrupt):
        uvloop.run(serve(args.host, args.port, args.name, args.fd))


if __name__ == "__main__":
    main()
