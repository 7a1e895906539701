"""Leader election on a coordination.k8s.io/v1 Lease, as client-go's leaderelection does it.

Every retry period each candidate reads the Lease. The holder renews it (renewTime); a candidate
takes it when it is free (no holder) or when its record has not changed for a whole lease
duration as measured on the candidate's own clock from when it last saw the record change (so
clocks that disagree between nodes do not matter). Every write is a PUT conditional on the
resourceVersion read: of two candidates racing, one gets 409 Conflict and stays a follower. A
leader that cannot renew for the renew deadline steps down before a successor can take over
(renew deadline < lease duration). A leader that stops cleanly releases the Lease so a successor
takes over at its next try.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
import socket
import time
from collections.abc import Callable
from typing import Any

from gw.controller.api import Api, ApiError, NotFound
from gw.controller.kinds import LEASE

log = logging.getLogger("gw.controller")


def identity() -> str:
    """This candidate's holderIdentity: the pod's name (its hostname in a pod) and the process id."""
    return f"{os.environ.get('POD_NAME') or socket.gethostname()}_{os.getpid()}"


def micro_time(when: float | None = None) -> str:
    """metav1.MicroTime: RFC 3339 with microseconds."""
    stamp = dt.datetime.fromtimestamp(time.time() if when is None else when, dt.UTC)
    return stamp.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaderElector:
    """Holds or waits for the Lease; `on_change(leading)` is called whenever leadership changes."""

    def __init__(
        self,
        api: Api,
        namespace: str,
        name: str,
        *,
        holder: str | None = None,
        lease_duration: float = 15.0,
        renew_deadline: float = 10.0,
        retry_period: float = 2.0,
        on_change: Callable[[bool], None] = lambda leading: None,
    ) -> None:
        self.api = api
        self.namespace, self.name = namespace, name
        self.holder = holder or identity()
        self.lease_duration = lease_duration
        self.renew_deadline = renew_deadline
        self.retry_period = retry_period
        self.on_change = on_change
        self.leading = False
        self.leader = ""  # holderIdentity last seen
        self.transitions = 0
        self._observed: tuple[str, float] = ("", 0.0)  # (resourceVersion, monotonic time first seen)
        self._renewed = 0.0  # monotonic time of the last successful renewal
        self._lease: dict[str, Any] | None = None

    async def run(self) -> None:
        while True:
            try:
                acquired = await self._try()
            except ApiError as exc:
                log.warning("leader election: Lease %s/%s: %s", self.namespace, self.name, exc)
                acquired = False
            now = time.monotonic()
            if acquired:
                self._renewed = now
                self._set(True)
            elif self.leading and self.leader not in ("", self.holder):
                self._set(False)  # another candidate holds it: it thought ours expired
            elif self.leading and now - self._renewed >= self.renew_deadline:
                log.warning("leader election: could not renew the Lease for %.1fs: stepping down", self.renew_deadline)
                self._set(False)
            await asyncio.sleep(self.retry_period)

    def _set(self, leading: bool) -> None:
        if leading != self.leading:
            self.leading = leading
            log.info("leader election: %s", "leading" if leading else f"following {self.leader or '(nobody)'}")
            self.on_change(leading)

    async def _try(self) -> bool:
        """One attempt to acquire or renew; True when this candidate holds the Lease now."""
        try:
            lease = await self.api.get(LEASE, self.namespace, self.name)
        except NotFound:
            self._lease = await self.api.create(LEASE, self.namespace, self._record(None))
            self.leader = self.holder
            return True
        meta, spec = lease.get("metadata") or {}, lease.get("spec") or {}
        rv = str(meta.get("resourceVersion", ""))
        if rv != self._observed[0]:
            self._observed = (rv, time.monotonic())
        self.leader = str(spec.get("holderIdentity") or "")
        duration = float(spec.get("leaseDurationSeconds") or self.lease_duration)
        held_by_other = self.leader and self.leader != self.holder
        if held_by_other and time.monotonic() - self._observed[1] < duration:
            return False
        self._lease = await self.api.replace(LEASE, self.namespace, self.name, self._record(lease))
        self.leader = self.holder
        self._observed = (str((self._lease.get("metadata") or {}).get("resourceVersion", "")), time.monotonic())
        return True

    def _record(self, lease: dict[str, Any] | None) -> dict[str, Any]:
        now = micro_time()
        spec = dict((lease or {}).get("spec") or {})
        if spec.get("holderIdentity") != self.holder:
            spec["acquireTime"] = now
            spec["leaseTransitions"] = int(spec.get("leaseTransitions") or 0) + (1 if lease else 0)
            self.transitions += 1
        spec.update(holderIdentity=self.holder, leaseDurationSeconds=max(1, round(self.lease_duration)), renewTime=now)
        meta: dict[str, Any] = {"name": self.name, "namespace": self.namespace}
        if lease is not None:
            meta["resourceVersion"] = (lease.get("metadata") or {}).get("resourceVersion")
        return {"apiVersion": LEASE.api_version, "kind": "Lease", "metadata": meta, "spec": spec}

    async def release(self) -> None:
        """Give the Lease up (a clean stop): the next candidate need not wait for it to expire."""
        if not self.leading or self._lease is None:
            return
        self._set(False)
        spec = {**(self._lease.get("spec") or {}), "holderIdentity": "", "leaseDurationSeconds": 1,
                "renewTime": micro_time()}  # fmt: skip
        lease = {**self._lease, "spec": spec}
        try:
            await self.api.replace(LEASE, self.namespace, self.name, lease)
        except ApiError as exc:
            log.warning("leader election: could not release the Lease: %s", exc)
