"""Clients refused during the TLS handshake for their certificate (spec.tls.frontend): said, not shouted.

uvloop drops a failed server handshake without a word (an OSError is logged only in debug mode)
and the connection's protocol never hears of it. The listener context's SSLObject class sees the
handshake's outcome instead: a certificate refusal on a port that verifies clients is logged as
one line naming the port, the Gateway field and OpenSSL's reason, then at most once a minute per
port and reason, with the count of those not logged. Nothing per handshake but the call itself.
"""

from __future__ import annotations

import hashlib
import logging
import ssl
from time import monotonic
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gw.proxy.dataplane import DataPlane

log = logging.getLogger("gw.tls")

LOG_INTERVAL = 60.0  # seconds between two lines for the same port and reason
MAX_KEYS = 1024  # distinct (port, reason) pairs remembered: reasons come from OpenSSL, a short list
# What OpenSSL says when a client sends no certificate where one is required.
NO_CERTIFICATE = "PEER_DID_NOT_RETURN_A_CERTIFICATE"


class ClientRejections:
    """Rate-limited log of handshakes refused for the client's certificate, one worker's."""

    def __init__(self) -> None:
        self.logged: dict[tuple[int, str], tuple[float, int]] = {}  # (port, why) → (last line, not logged since)
        self.count = 0  # every refusal, logged or not (for tests and /status)

    def refused(self, port: int, why: str, source: str) -> None:
        self.count += 1
        key = (port, why)
        now = monotonic()
        last = self.logged.get(key)
        if last is not None and now - last[0] < LOG_INTERVAL:
            self.logged[key] = (last[0], last[1] + 1)
            return
        if len(self.logged) >= MAX_KEYS:
            self.logged.clear()
        self.logged[key] = (now, 0)
        more = f" ({last[1]} more not logged)" if last is not None and last[1] else ""
        log.warning("HTTPS port %d: client refused in the TLS handshake (%s): %s%s", port, source, why, more)

    def handshake_class(self, plane: DataPlane, bind_port: int) -> type[ssl.SSLObject]:
        """The SSLObject class of one listening port's handshakes."""
        rejections = self

        class Handshake(ssl.SSLObject):
            def do_handshake(self) -> None:
                try:
                    super().do_handshake()
                except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                    raise
                except ssl.SSLCertVerificationError as exc:
                    rejections.verdict(plane, bind_port, exc.verify_message or str(exc.reason))
                    raise
                except ssl.SSLError as exc:
                    if exc.reason == NO_CERTIFICATE:
                        rejections.verdict(plane, bind_port, "no client certificate")
                    raise

        return Handshake

    def verdict(self, plane: DataPlane, bind_port: int, why: str) -> None:
        port = plane.ports.get(bind_port)
        client = port.tls.client if port is not None and port.tls is not None else None
        if client is None:
            return  # not a client-certificate refusal (a handshake begun under the previous snapshot)
        if client.refusal is not None:
            why = f"{why}; the port refuses every client: {client.refusal}"
        self.refused(port.declared_port if port is not None else bind_port, why, client.source)


# -- the verified client certificate, told to the backend ----------------------------------------

XFCC = b"X-Forwarded-Client-Cert"
# RFC 4514 short names of the attributes certificates carry (Python names them long).
_SHORT = {
    "commonName": "CN", "organizationName": "O", "organizationalUnitName": "OU", "countryName": "C",
    "localityName": "L", "stateOrProvinceName": "ST", "streetAddress": "STREET", "domainComponent": "DC",
    "userId": "UID",
}  # fmt: skip
_SPECIAL = frozenset(',+"\\<>;')  # RFC 4514 §2.4


def forwarded_client_cert(ssl_object: ssl.SSLObject) -> bytes:
    """The X-Forwarded-Client-Cert line (Envoy's format, which its ClientTrafficPolicy forwards) of a
    connection whose client presented a verified certificate; b"" without one. Hash: SHA-256 of the
    DER certificate, hex; Subject: RFC 4514, quoted; URI and DNS: its subjectAltNames."""
    der = ssl_object.getpeercert(True)
    if der is None:
        return b""
    decoded = ssl_object.getpeercert() or {}
    subject = ",".join(
        "+".join(f"{_SHORT.get(name, name)}={_escape(value)}" for name, value in rdn)
        for rdn in reversed(decoded.get("subject", ()))  # type: ignore[arg-type]
    )
    parts = [f"Hash={hashlib.sha256(der).hexdigest()}", f'Subject="{subject}"']
    for kind, value in decoded.get("subjectAltName", ()):  # type: ignore[misc]
        if kind in ("URI", "DNS"):
            value = _printable(value)
            if any(c in value for c in ',;="'):
                value = '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
            parts.append(f"{kind}={value}")
    return XFCC + b": " + ";".join(parts).encode("ascii") + b"\r\n"


def _escape(value: str) -> str:
    """RFC 4514 escaping of an attribute value."""
    out = []
    for i, ch in enumerate(value):
        if ch in _SPECIAL or (ch in " #" and i == 0) or (ch == " " and i == len(value) - 1):
            out.append("\\" + ch)
        else:
            out.append(ch)
    return _printable("".join(out))


def _printable(value: str) -> str:
    """Every byte outside printable ASCII as \\XX (RFC 4514's hex pairs): the value goes in a header."""
    if value.isascii() and value.isprintable():
        return value
    return "".join(ch if " " <= ch <= "~" else "".join(f"\\{b:02X}" for b in ch.encode("utf-8")) for ch in value)
