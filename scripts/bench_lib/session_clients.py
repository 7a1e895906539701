"""Clients that keep a cookie jar each and send through random replicas; every answer recorded with its endpoint.

A session is a browser-like client: it sends back the cookies the gateway set (name=value; a
`Max-Age=0` or a past `Expires` deletes one), or the session id the application issued in a header
(type Header), and remembers the endpoint of its first answer, the endpoint it is pinned to if
persistence works. Requests go over keep-alive connections that
`Pool` workers hold, one per replica each; a request that fails on a connection the gateway
closed (a draining worker) is retried once on a new connection, as an HTTP client retries an
idempotent GET, and counted as a retry.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

TIMEOUT = 10.0  # seconds: an answer later than this is a failure (status 0)


@dataclass(slots=True)
class Answer:
    status: int
    endpoint: str
    cookies: list[str]  # Set-Cookie field values
    close: bool
    issued: str = ""  # the session id the application issued (Pool's `session_header`), if any


@dataclass(frozen=True, slots=True)
class Row:
    phase: str
    session: int
    replica: int
    status: int
    endpoint: str
    after_switch: bool  # sent once the phase's switch had completed
    pins: bool = False  # the session's first answer: it defines the endpoint, it cannot move off it


@dataclass
class Session:
    number: int
    jar: dict[str, str] = field(default_factory=dict)
    first: str = ""  # endpoint of the first answered request
    last: str = ""
    sid: str = ""  # the id the application issued (type Header), sent back on every request

    def cookie_field(self) -> str:
        return "; ".join(f"{k}={v}" for k, v in self.jar.items())

    def keep(self, set_cookies: Sequence[str]) -> None:
        for value in set_cookies:
            pair, *attributes = value.split(";")
            name, _, content = pair.strip().partition("=")
            gone = any(a.strip().lower() in ("max-age=0", "max-age=-1") for a in attributes)
            gone = gone or any(a.strip().lower().startswith("expires=thu, 01 jan 1970") for a in attributes)
            if gone:
                self.jar.pop(name, None)
            else:
                self.jar[name] = content


async def read_answer(reader: asyncio.StreamReader, session_header: str = "") -> Answer:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head[:-4].decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    endpoint, cookies, length, chunked, close, issued = "", [], 0, False, False, ""
    for line in lines[1:]:
        name, _, value = line.partition(":")
        name, value = name.strip().lower(), value.strip()
        if name == "x-endpoint":
            endpoint = value
        elif name == "set-cookie":
            cookies.append(value)
        elif name == "content-length":
            length = int(value)
        elif name == "transfer-encoding":
            chunked = "chunked" in value.lower()
        elif name == "connection":
            close = "close" in value.lower()
        elif name == session_header:
            issued = value
    if chunked:
        while size := int((await reader.readuntil(b"\r\n")).split(b";")[0], 16):
            await reader.readexactly(size + 2)
        while await reader.readuntil(b"\r\n") != b"\r\n":
            pass
    elif length:
        await reader.readexactly(length)
    return Answer(status, endpoint, cookies, close, issued)


class Pool:
    """`workers` coroutines sending jobs; each holds at most one connection per replica port."""

    def __init__(self, ports: list[int], workers: int, session_header: str = "") -> None:
        self.ports = ports  # grows when a replica joins: new jobs may pick it
        self.workers = workers
        self.session_header = session_header.lower()  # a response field to read into Answer.issued
        self.errors: Counter[str] = Counter()
        self.retries = 0

    async def run(self, jobs: Sequence[tuple[int, str, dict[str, str]]],
                  done: Callable[[int, int, Answer | None], None]) -> None:  # fmt: skip
        """Send every job (replica, target, fields); done(index, replica, answer or None) for each."""
        queue: asyncio.Queue[int] = asyncio.Queue()
        for i in range(len(jobs)):
            queue.put_nowait(i)

        async def worker() -> None:
            conns: dict[int, tuple[asyncio.StreamReader, asyncio.StreamWriter]] = {}
            try:
                while not queue.empty():
                    i = queue.get_nowait()
                    replica, target, fields = jobs[i]
                    done(i, replica, await self._send(conns, replica, target, fields))
            finally:
                for _, writer in conns.values():
                    writer.close()

        await asyncio.gather(*(worker() for _ in range(self.workers)))

    async def _send(self, conns: dict[int, tuple[asyncio.StreamReader, asyncio.StreamWriter]], replica: int,
                    target: str, fields: dict[str, str]) -> Answer | None:  # fmt: skip
        extra = "".join(f"{k}: {v}\r\n" for k, v in fields.items() if v)
        request = f"GET {target} HTTP/1.1\r\nHost: bench.test\r\n{extra}\r\n".encode()
        for attempt in range(2):
            reused = replica in conns
            try:
                if not reused:
                    conns[replica] = await asyncio.wait_for(
                        asyncio.open_connection("127.0.0.1", self.ports[replica]), TIMEOUT
                    )
                reader, writer = conns[replica]
                writer.write(request)
                answer = await asyncio.wait_for(read_answer(reader, self.session_header), TIMEOUT)
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError, TimeoutError) as exc:
                _, writer = conns.pop(replica, (None, None))
                if writer is not None:
                    writer.close()
                # Only a kept-alive connection the gateway closed meanwhile earns the retry.
                if reused and attempt == 0 and not isinstance(exc, TimeoutError):
                    self.retries += 1
                    continue
                self.errors[type(exc).__name__] += 1
                return None
            if answer.close:
                conns.pop(replica)[1].close()
            return answer
        return None


def pick_replicas(count: int, replicas: int, rng: random.Random) -> list[int]:
    return [rng.randrange(replicas) for _ in range(count)]
