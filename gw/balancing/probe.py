"""One active health probe of one endpoint: an HTTP/1.1 request or a TCP connect, within a timeout.

Plain asyncio, no client library: a probe is one request on a fresh connection (`Connection:
close`), and all it needs of the answer is the status line. A probe *passes* (the status is
expected, the connection opened), *fails* (the endpoint answered with another status) or meets an
*error* (no connection, no valid answer in time): gw_health_checks_total counts the three apart,
and both of the last two count towards unhealthy.

An endpoint under a BackendTLSPolicy is probed over TLS, verified as the proxy verifies it (the
`tls` given, a ProbeTLS the health checker builds from the backend's UpstreamTLS): a certificate
the proxy would refuse makes the probe an error, so the endpoint is not called healthy while every
request to it fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Callable
from dataclasses import dataclass

PASS, FAIL, ERROR = "pass", "fail", "error"
MAX_STATUS_LINE = 8192


@dataclass(frozen=True, slots=True)
class ProbeTLS:
    """How to reach an endpoint over TLS, as the proxy does."""

    context: ssl.SSLContext | None  # None: the policy cannot be honoured (`refusal` says why)
    server_hostname: str
    # Why a verified peer certificate (getpeercert()) is still refused (subjectAltNames); None: accepted.
    check: Callable[[dict[str, object] | None], str | None] | None = None
    refusal: str = ""


class _Refused(Exception):
    """The policy cannot be honoured, or the certificate names none of its subjectAltNames."""


async def _open(
    address: str, port: int, tls: ProbeTLS | None, limit: int = 2**16
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    if tls is None:
        return await asyncio.open_connection(address, port, limit=limit)
    if tls.context is None:
        raise _Refused(tls.refusal or "TLS refused")
    reader, writer = await asyncio.open_connection(
        address, port, limit=limit, ssl=tls.context, server_hostname=tls.server_hostname
    )
    if tls.check is not None:
        why = tls.check(writer.get_extra_info("peercert"))
        if why is not None:
            writer.transport.abort()
            raise _Refused(why)
    return reader, writer


@dataclass(frozen=True, slots=True)
class ProbeResult:
    result: str  # PASS | FAIL | ERROR
    why: str  # for logs: "status 500", "connection refused", "timed out after 1s"

    @property
    def passed(self) -> bool:
        return self.result == PASS


def authority(address: str, port: int) -> str:
    """address:port as a Host field writes it (an IPv6 address in brackets)."""
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


async def probe_http(
    address: str,
    port: int,
    *,
    path: str = "/",
    method: str = "GET",
    hostname: str | None = None,
    expected: tuple[int, ...] = (200,),
    timeout: float = 1.0,
    tls: ProbeTLS | None = None,
) -> ProbeResult:
    """Send `method path` with Host `hostname` (default: the endpoint's address:port); pass iff the
    status is in `expected`, all within `timeout` seconds."""
    host = hostname or authority(address, port)
    request = f"{method} {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: gw-health-check\r\nConnection: close\r\n\r\n"
    writer: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await _open(address, port, tls, MAX_STATUS_LINE)
            writer.write(request.encode("latin-1"))
            line = await reader.readuntil(b"\n")
    except TimeoutError:
        return ProbeResult(ERROR, f"timed out after {timeout:g}s")
    except asyncio.IncompleteReadError:
        return ProbeResult(ERROR, "connection closed before a response")
    except asyncio.LimitOverrunError:
        return ProbeResult(ERROR, "response line too long")
    except _Refused as exc:
        return ProbeResult(ERROR, f"TLS: {exc}")
    except OSError as exc:
        return ProbeResult(ERROR, _os_error(exc))
    finally:
        if writer is not None:
            writer.transport.abort()  # nothing more to read; do not wait for the close handshake
    status = _status(line)
    if status is None:
        return ProbeResult(ERROR, "not an HTTP/1.x response")
    return ProbeResult(PASS if status in expected else FAIL, f"status {status}")


async def probe_tcp(address: str, port: int, *, timeout: float = 1.0, tls: ProbeTLS | None = None) -> ProbeResult:
    """Pass iff a TCP connection to the endpoint opens within `timeout` seconds (with `tls`, and its
    TLS handshake verifies)."""
    try:
        async with asyncio.timeout(timeout):
            _reader, writer = await _open(address, port, tls)
    except TimeoutError:
        return ProbeResult(ERROR, f"connect timed out after {timeout:g}s")
    except _Refused as exc:
        return ProbeResult(ERROR, f"TLS: {exc}")
    except OSError as exc:
        return ProbeResult(ERROR, _os_error(exc))
    with contextlib.suppress(OSError):
        writer.transport.abort()
    return ProbeResult(PASS, "connected")


def _status(line: bytes) -> int | None:
    parts = line.split(None, 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or len(parts[1]) != 3 or not parts[1].isdigit():
        return None
    return int(parts[1])


def _os_error(exc: OSError) -> str:
    if isinstance(exc, ssl.SSLError | ssl.CertificateError):
        return f"TLS: {exc}"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    return exc.strerror or str(exc) or type(exc).__name__
