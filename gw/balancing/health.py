"""Passive health of a backend's endpoints: what the proxy saw of them decides which ones are picked.

Today one signal: an endpoint that refused a connection is ejected until a given time (the
proxy's GW_ENDPOINT_EJECT_TIME later) and skipped by picks meanwhile. Outlier detection and
circuit breaking join it here. State is per snapshot by design: a reload starts it afresh.
"""

from __future__ import annotations

from typing import Any


class EndpointHealth:
    """Ejected endpoints of one backend and until when (monotonic seconds)."""

    __slots__ = ("ejected",)

    def __init__(self) -> None:
        # Empty in the common case, so a pick pays one truthiness test for health.
        self.ejected: dict[Any, float] = {}

    def eject(self, endpoint: Any, until: float) -> None:
        self.ejected[endpoint] = until

    def usable(self, endpoint: Any, now: float) -> bool:
        until = self.ejected.get(endpoint)
        if until is None:
            return True
        if until <= now:
            del self.ejected[endpoint]
            return True
        return False
