"""A backend's fleet-wide resilience state as the supervisor reads and writes it: heal reads, the
active checker's lease and its probe results.

The hashes (`BackendKeys`) are read back as the very events the scripts publish
(gw.state.backend_events), so a supervisor heals a missed message by relaying them again: workers
keep the higher version of an item, and a resent event changes nothing.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from gw.state.backend_events import CIRCUIT, EJECT, EJECTED, HEALTHY, PROBE, RETURNED, UNHEALTHY
from gw.state.keys import Keys
from gw.state.scripts import load

LEASE_HOLD = load("lease_hold")
LEASE_RELEASE = load("lease_release")
PROBE_RESULT = load("probe_result")
PROBE_RESYNC = load("probe_resync")

Event = dict[str, Any]


async def read_events(client: Any, keys: Keys, names: Iterable[str]) -> list[Event]:
    """Every stored item of the backends `names` (circuit, ejections, probe health) as events, in
    one pipeline; `now` is Redis's clock, read just before (a Cluster pipeline refuses TIME, which
    has no key to route by)."""
    names = list(names)
    seconds, micros = await client.time()
    now = int(seconds) * 1000 + int(micros) // 1000
    pipe = client.pipeline(transaction=False)
    for name in names:
        backend = keys.backend(name)
        pipe.hgetall(backend.circuit)
        pipe.hgetall(backend.endpoints)
    replies = await pipe.execute() if names else []
    events: list[Event] = []
    for i, name in enumerate(names):
        circuit, endpoints = replies[2 * i], replies[2 * i + 1]
        if circuit:
            events += _circuit(name, _text(circuit), now)
        if endpoints:
            events += _endpoints(name, _text(endpoints), now)
    return events


def _text(fields: dict[Any, Any]) -> dict[str, str]:
    return {_str(k): _str(v) for k, v in fields.items()}


def _str(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _int(value: str | None) -> int:
    try:
        return int(float(value)) if value else 0
    except ValueError:
        return 0


def _circuit(name: str, fields: dict[str, str], now: int) -> list[Event]:
    v = _int(fields.get("v"))
    if not v:
        return []
    event: Event = {"b": name, "k": CIRCUIT, "v": v, "s": fields.get("s", ""), "now": now}
    _times(event, fields, "until", "since")
    event["why"] = fields.get("why", "")
    event["by"] = fields.get("by", "")
    return [event]


def _endpoints(name: str, fields: dict[str, str], now: int) -> list[Event]:
    """Fields "<endpoint>|<field>": an ejection (ev until since why by), probe health (pv pok psince pwhy pby)."""
    by_endpoint: dict[str, dict[str, str]] = {}
    for key, value in fields.items():
        endpoint, _, field = key.rpartition("|")
        by_endpoint.setdefault(endpoint, {})[field] = value
    events: list[Event] = []
    for endpoint, item in sorted(by_endpoint.items()):
        if v := _int(item.get("ev")):
            until = _int(item.get("until"))
            event: Event = {"b": name, "k": EJECT, "e": endpoint, "v": v, "s": EJECTED if until > now else RETURNED}
            event.update(until=until, now=now)
            _times(event, item, "since")
            events.append({**event, "why": item.get("why", ""), "by": item.get("by", "")})
        if v := _int(item.get("pv")):
            state = HEALTHY if item.get("pok") == "1" else UNHEALTHY
            event = {"b": name, "k": PROBE, "e": endpoint, "v": v, "s": state, "now": now}
            if since := _int(item.get("psince")):
                event["since"] = since
            events.append({**event, "why": item.get("pwhy", ""), "by": item.get("pby", "")})
    return events


def _times(event: Event, fields: dict[str, str], *names: str) -> None:
    for name in names:
        if value := _int(fields.get(name)):
            event[name] = value


async def hold_lease(client: Any, keys: Keys, name: str, checker: str, ttl: float) -> bool:
    """Take or extend the active-check lease of backend `name` for `ttl` seconds: whether we hold it."""
    return bool(await LEASE_HOLD(client, [keys.backend(name).lease], [checker, max(1, int(ttl * 1000))]))


async def release_lease(client: Any, keys: Keys, name: str, checker: str) -> bool:
    """Give the lease up if we hold it, so another checker takes over at its next attempt."""
    return bool(await LEASE_RELEASE(client, [keys.backend(name).lease], [checker]))


async def probe_result(client: Any, keys: Keys, name: str, endpoint: str, ok: bool, why: str, checker: str) -> int:
    """Store and publish a probe-health change: its version, or 0 when `checker` lost the lease."""
    backend = keys.backend(name)
    args = [name, endpoint, "1" if ok else "0", why, checker, keys.backend_events]
    return int(await PROBE_RESULT(client, [backend.version, backend.endpoints, backend.lease], args))


async def probe_resync(client: Any, keys: Keys, name: str, endpoints: Iterable[str], floor: int, checker: str) -> int:
    """Renumber and republish the stored probe health of `endpoints` above `floor` (the highest
    version this replica made up while Redis was away); the backend's last version."""
    backend = keys.backend(name)
    args = [name, floor, checker, keys.backend_events, *endpoints]
    return int(await PROBE_RESYNC(client, [backend.version, backend.endpoints], args))
