"""The fleet's heartbeats against a real Valkey: every worker reads back the live worker count."""

from __future__ import annotations

import asyncio

from gw.state import Keys, RedisGuard, connect
from gw.state.fleet import Fleet
from tests.support import valkey


async def test_workers_count_each_other_through_heartbeats(server: valkey.Server, keys: Keys) -> None:
    client = connect(server.url)
    loop = asyncio.get_running_loop()
    fleets = [Fleet(loop, client, RedisGuard(1.0), keys.fleet.workers) for _ in range(3)]
    try:
        for fleet in fleets:
            fleet.start()
        await valkey.eventually(lambda: all(f.live == 3 for f in fleets), "three live workers", timeout=10)
    finally:
        for fleet in fleets:
            fleet.stop()
        await client.aclose()
