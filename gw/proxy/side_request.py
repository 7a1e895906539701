"""A request gw makes on its own (a mirror's copy, an extAuth check), as the upstream connection it borrows sees it.

An UpstreamConnection reports to whoever lent it (gw.proxy.upstream): the client's connection, or
one of these. They share what nobody downstream waits on: no interim responses, no flow control
back to a client, no tunnel; an upgrade or a broken answer ends them as an invalid response, a
bug in them ends them alone (said once, counted), and the worker's sweeper ends them at their
deadline. Each says in `_end` what an ending means to it.
"""

from __future__ import annotations

import traceback
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gw.proxy.upstream import UpstreamConnection

TIMEOUT = "timeout"
INVALID_RESPONSE = "invalid-response"
ERROR = "error"  # a bug on this side: the side request ends, the client's exchange carries on


class SideRequest:
    __slots__ = ()

    plane: Any  # gw.proxy.dataplane.DataPlane
    connecting: Any  # the connect under way (an asyncio.Task), or None
    conn: Any  # the UpstreamConnection borrowed, or None

    def upstream_interim(self, status: int, block: bytes) -> None:
        pass

    def flush(self) -> None:
        pass

    def upstream_broken(self, conn: UpstreamConnection, detail: str) -> None:
        self._end(INVALID_RESPONSE)

    def upstream_upgraded(self, rest: bytes) -> None:
        self._end(INVALID_RESPONSE)  # never asked for: a 101 is not an answer to a side request

    def tunnel_from_upstream(self, data: bytes) -> None:
        pass

    def pause_reading(self, reason: int) -> None:
        pass  # no client to hold back

    def resume_reading(self, reason: int) -> None:
        pass

    def crash(self, exc: BaseException) -> None:
        traceback.print_exception(exc)
        self.plane.metrics.inc("gw_internal_errors_total")
        self._end(ERROR)

    def expire(self) -> None:
        """The deadline passed (called by the worker's sweeper)."""
        self._end(TIMEOUT)

    def _drop_connection(self) -> None:
        """Ending early: the connect under way is cancelled, a borrowed connection aborted (mid-exchange,
        it cannot be reused)."""
        if self.connecting is not None:
            self.connecting.cancel()
            self.connecting = None
        conn = self.conn
        if conn is not None:
            self.conn = None
            conn.abort()

    def _end(self, reason: Any) -> None:
        raise NotImplementedError
