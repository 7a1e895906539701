"""The events that carry a backend's fleet-wide resilience state between replicas.

Scripts (gw/state/lua/backend_*.lua, probe_*.lua) publish one JSON object per change on
`Keys.backend_events`; each supervisor relays them to its workers, and reads the backend hashes
(`BackendKeys`) as the same events to heal a missed message. Fields:

    b      the backend (model.Backend.name)
    k      "circuit" | "eject" | "probe"
    e      the endpoint ("address:port"); absent for "circuit"
    v      the backend's event number: per item, a higher v replaces a lower one, never the reverse
    s      circuit: "closed" | "open" | "half-open"; eject: "ejected" | "returned"; probe: "healthy" | "unhealthy"
    until  ms, Redis's clock: when an open circuit may go half-open, when an ejection ends
    now    ms, Redis's clock when the event was made: `until - now` is the time left, whatever the
           receiver's own clock says
    why    a reason a person reads ("5 consecutive 5xx", "failure ratio 0.62 over 40 calls", ...)
    by     who decided: a worker id (gw.state.fleet) or a checker id
"""

from __future__ import annotations

from typing import Any

import orjson

CIRCUIT, EJECT, PROBE = "circuit", "eject", "probe"
CLOSED, OPEN, HALF_OPEN = "closed", "open", "half-open"
EJECTED, RETURNED = "ejected", "returned"
HEALTHY, UNHEALTHY = "healthy", "unhealthy"


def decode(data: bytes | str) -> dict[str, Any] | None:
    """One published event, or None for something that is not one (logged by the caller)."""
    try:
        event = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(event, dict) or event.get("k") not in (CIRCUIT, EJECT, PROBE) or "b" not in event:
        return None
    if not isinstance(event.get("v"), int):
        return None
    return event


def item(event: dict[str, Any]) -> tuple[str, str, str]:
    """What an event is about, for ordering: (backend, kind, endpoint)."""
    return (event["b"], event["k"], event.get("e", ""))
