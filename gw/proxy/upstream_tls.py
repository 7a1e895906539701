"""The keep-alive pool of an endpoint reached over TLS (a BackendTLSPolicy): verified connections,
reused like plain ones, and new ones resuming the endpoint's last TLS session.

Plain endpoints keep gw.proxy.upstream.EndpointPool: what TLS needs lives in this subclass's
`open` and `release`, so a backend without a policy pays nothing for it.

Session resumption: uvloop's create_connection takes no `session`; it calls `wrap_bio` on what it
is given as `ssl`. Each pool hands it a _Resumer that wraps with the policy's shared SSLContext and
this endpoint's last session (sessions are per server: one per policy would rarely resume with
several endpoints).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from typing import Any

from gw.config.backend_tls import UpstreamTLS, san_mismatch
from gw.proxy.upstream import EndpointPool, UpstreamConnection

log = logging.getLogger("gw.upstream")


class TLSRefused(Exception):
    """A TLS connection gw refuses itself: the policy cannot be honoured, or the verified
    certificate names none of the policy's subjectAltNames. `attempt`: whether it was an attempt on
    the endpoint (the endpoint's certificate) or no attempt at all (the policy's configuration)."""

    def __init__(self, detail: str, *, attempt: bool) -> None:
        super().__init__(detail)
        self.attempt = attempt


class _Resumer:
    """What uvloop's SSL protocol is given as its context (it only calls `wrap_bio`)."""

    __slots__ = ("context", "session")

    def __init__(self, context: ssl.SSLContext) -> None:
        self.context = context
        self.session: ssl.SSLSession | None = None

    def wrap_bio(
        self,
        incoming: ssl.MemoryBIO,
        outgoing: ssl.MemoryBIO,
        server_side: bool = False,
        server_hostname: str | None = None,
    ) -> ssl.SSLObject:
        return self.context.wrap_bio(
            incoming, outgoing, server_side=server_side, server_hostname=server_hostname, session=self.session
        )


class TLSEndpointPool(EndpointPool):
    """Keep-alive TLS connections to one endpoint under one UpstreamTLS."""

    __slots__ = ("failure", "resumer", "tls")

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        address: str,
        port: int,
        tls: UpstreamTLS,
        context: ssl.SSLContext | None,
        **limits: Any,
    ) -> None:
        super().__init__(loop, address, port, **limits)
        self.tls = tls
        self.resumer = _Resumer(context) if context is not None else None
        self.failure = ""  # the last TLS failure logged (once, until it changes or a connection opens)

    async def open(self) -> UpstreamConnection:
        try:
            conn = await self._open()
        except Exception as exc:
            why = str(exc)
            if tls_failure(exc) and why != self.failure:
                self.failure = why
                policy = self.tls.policy
                log.warning("TLS to %s:%d failed (BackendTLSPolicy %s): %s", self.address, self.port, policy, why)
            raise
        self.failure = ""
        return conn

    async def _open(self) -> UpstreamConnection:
        tls, resumer = self.tls, self.resumer
        if resumer is None:
            raise TLSRefused(f"BackendTLSPolicy {tls.policy}: {tls.refusal}", attempt=False)
        transport, conn = await self.loop.create_connection(
            lambda: UpstreamConnection(self),
            self.address,
            self.port,
            ssl=resumer,  # type: ignore[arg-type]
            server_hostname=tls.hostname,
        )
        self.connections += 1  # before the name check: an aborted connection is forgotten (connection_lost)
        if tls.subject_alt_names:
            why = san_mismatch(tls, transport.get_extra_info("peercert"))
            if why is not None:
                transport.abort()
                raise TLSRefused(why, attempt=True)
        return conn  # type: ignore[return-value]

    def release(self, conn: UpstreamConnection, now: float) -> None:
        if conn.requests == 1 and not conn.closed:
            # After its first response a connection has read the server's TLS 1.3 session tickets
            # (sent after the handshake): its session is the one the next new connection resumes.
            sslobj = conn.transport.get_extra_info("ssl_object")
            if sslobj is not None and self.resumer is not None:
                session = sslobj.session
                if session is not None:
                    self.resumer.session = session
        EndpointPool.release(self, conn, now)


def tls_failure(exc: BaseException) -> bool:
    """Whether a connect failure is about TLS (the handshake, the certificate, the policy)."""
    return isinstance(exc, ssl.SSLError | ssl.CertificateError | TLSRefused)
