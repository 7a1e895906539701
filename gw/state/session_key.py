"""The fleet's session-cookie key when GW_SESSION_KEYS is unset: made once, kept in Redis, read by all.

Every replica must sign and verify with the same key, or a cookie one replica set is not honoured
by another. The first supervisor to start stores a random key (SET NX) and every later one reads
it; the supervisor hands it to its workers as GW_SESSION_KEYS.
"""

from __future__ import annotations

import secrets
from typing import Any

from gw.state.keys import Keys

KEY_BYTES = 32


async def fleet_session_key(client: Any, keys: Keys) -> str:
    """The fleet's key (hex): the stored one, or a new one stored now if there is none."""
    await client.set(keys.session_key, secrets.token_hex(KEY_BYTES), nx=True)
    key = await client.get(keys.session_key)
    return key.decode() if isinstance(key, bytes) else str(key)
