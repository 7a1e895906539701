"""What a worker's policies reach Redis with: the request-path client, its guard and the key schema."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gw.observe.metrics import Registry
from gw.state.connect import Client, connect_request_path
from gw.state.guard import RedisGuard
from gw.state.keys import Keys


@dataclass(frozen=True, slots=True)
class SharedState:
    """Handed to a worker's data plane when it is built; policies take what they need from it."""

    redis: Client
    guard: RedisGuard
    keys: Keys

    @classmethod
    def from_settings(cls, settings: Any, metrics: Registry | None = None) -> SharedState | None:
        """GW_REDIS_URL's (None without one: policies apply their failure modes), bounded by
        GW_REDIS_BUDGET, its keys under GW_REDIS_PREFIX. No I/O: the client connects when first used."""
        url = settings.redis_url
        if not url:
            return None
        client = connect_request_path(url)  # bounded by the guard's budget alone
        return cls(client, RedisGuard.from_settings(settings, metrics=metrics), Keys(settings.redis_prefix))
