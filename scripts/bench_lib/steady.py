"""A steady request rate over several gateway ports, every response recorded with its time and origin.

Each connection belongs to one port (one replica) and sends at its share of the rate on keep-alive,
reconnecting when the gateway closes. A response is recorded with the replica that answered, its
status, the endpoint that made it (the `X-Endpoint` field the faulty upstream sets) and, for
problem+json answers, the problem type; a connection error or timeout is status 0.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

TIMEOUT = 5.0  # a response later than this is a failure (status 0)


@dataclass(frozen=True, slots=True)
class Row:
    sent: float  # wall clock (time.time()), comparable with the faulty upstream's counts
    done: float
    replica: int
    status: int
    endpoint: str
    problem: str


@dataclass
class Answer:
    status: int
    endpoint: str
    problem: str
    close: bool


@dataclass
class Steady:
    """`rate` requests per second on `path`, over `connections` connections per port in `ports`.

    `path` may be changed while running; `rows` grows until `stop` is set.
    """

    ports: Sequence[int]
    rate: float
    connections: int = 4
    path: str = "/"
    rows: list[Row] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self) -> None:
        total = len(self.ports) * self.connections
        await asyncio.gather(*(self._client(i, total) for i in range(total)))

    async def _client(self, index: int, total: int) -> None:
        replica = index % len(self.ports)
        port = self.ports[replica]
        interval = total / self.rate
        next_at = time.monotonic() + interval * index / total
        reader: asyncio.StreamReader | None = None
        writer: asyncio.StreamWriter | None = None
        while not self.stop.is_set():
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
            next_at = max(next_at + interval, time.monotonic() - interval)  # no burst after a stall
            sent = time.time()
            try:
                if writer is None:
                    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), TIMEOUT)
                assert reader is not None
                writer.write(f"GET {self.path} HTTP/1.1\r\nHost: bench.test\r\n\r\n".encode())
                answer = await asyncio.wait_for(read_answer(reader), TIMEOUT)
            except (OSError, asyncio.IncompleteReadError, TimeoutError, ValueError) as exc:
                self.errors[type(exc).__name__] += 1
                answer = Answer(0, "", "", True)
            self.rows.append(Row(sent, time.time(), replica, answer.status, answer.endpoint, answer.problem))
            if answer.close and writer is not None:
                writer.close()
                reader = writer = None
        if writer is not None:
            writer.close()


async def read_answer(reader: asyncio.StreamReader) -> Answer:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head[:-4].decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    fields = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    if fields.get("transfer-encoding", "").lower() == "chunked":
        body = b""
        while size := int((await reader.readuntil(b"\r\n")).split(b";")[0], 16):
            body += (await reader.readexactly(size + 2))[:-2]
        while await reader.readuntil(b"\r\n") != b"\r\n":
            pass
    else:
        body = await reader.readexactly(int(fields.get("content-length", "0")))
    problem = ""
    if "problem+json" in fields.get("content-type", ""):
        try:
            problem = str(json.loads(body).get("type", ""))
        except (ValueError, AttributeError):
            problem = "?"
    return Answer(status, fields.get("x-endpoint", ""), problem, fields.get("connection", "").lower() == "close")
