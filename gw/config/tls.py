"""TLS termination, config side: listener certificateRefs → validated certificates → an SNI-selecting SSLContext.

The compiled config keeps PEM bytes only (a snapshot must stay plain data); each worker builds
its SSLContext with `build_ssl_context(port_config)` when it installs a snapshot, so certificates
are reloaded with the config without restarting workers.
"""

from __future__ import annotations

import contextlib
import os
import ssl
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from gw.config.resources import (
    CORE_GROUP,
    GATEWAY_GROUP,
    TLS_SECRET_TYPE,
    Gateway,
    Listener,
    ReferenceGrant,
    Secret,
    SecretRef,
)
from gw.routing.hostnames import hostname_matches, is_wildcard

if TYPE_CHECKING:
    from gw.config.frontend_tls import ClientValidation

# Listener ResolvedRefs reasons (gateway_types.go).
INVALID_CERTIFICATE_REF = "InvalidCertificateRef"
REF_NOT_PERMITTED = "RefNotPermitted"

# Modern ciphers for TLS 1.2 (TLS 1.3 suites are OpenSSL's defaults, all modern): forward secrecy
# and AEAD only.
CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:DHE+AESGCM:DHE+CHACHA20"
ALPN = ["http/1.1"]


@dataclass(frozen=True, slots=True)
class Certificate:
    """One certificate chain and its key, from a kubernetes.io/tls Secret."""

    name: str  # "Secret namespace/name"
    cert_pem: bytes = field(repr=False)
    key_pem: bytes = field(repr=False)
    hostnames: tuple[str, ...] = ()  # DNS names of the leaf certificate (subjectAltName)


@dataclass(frozen=True, slots=True)
class TLSConfig:
    """Certificates of one HTTPS port: SNI hostname → certificate, plus the default.

    `by_name` keys are exact names and "*.suffix" wildcards; `listeners` is the port's listener
    hostnames (None = any) in order, with each listener's first certificate.
    """

    by_name: dict[str, Certificate]
    default: Certificate
    listeners: tuple[tuple[str | None, Certificate], ...] = ()
    # The Gateway's spec.tls.frontend for this port: every certificate's context verifies clients so.
    client: ClientValidation | None = None

    def select(self, server_name: str | None) -> Certificate:
        """The certificate for a ClientHello's SNI (lower case; None when the client sent none)."""
        if server_name:
            cert = self.by_name.get(server_name)
            if cert is not None:
                return cert
            i = server_name.find(".")
            while i >= 0:
                cert = self.by_name.get("*" + server_name[i:])
                if cert is not None:
                    return cert
                i = server_name.find(".", i + 1)
        return self.default

    def listener_for(self, server_name: str | None) -> str | None:
        """The hostname of the listener an SNI selects (exact > longest wildcard > none); "" if none."""
        best: str | None = ""
        rank: tuple[int, int] | None = None
        for hostname, _ in self.listeners:
            if hostname is None:
                r = (2, 0)
            elif server_name and hostname_matches(hostname, server_name):
                r = (1, -len(hostname)) if is_wildcard(hostname) else (0, 0)
            else:
                continue
            if rank is None or r < rank:
                best, rank = hostname, r
        return best

    def misdirected(self, server_name: str | None, host: str) -> bool:
        """True when the Host selects another listener than the SNI did: answer 421."""
        if not server_name or server_name == host:
            return False
        return self.listener_for(server_name) != self.listener_for(host)


class CertificateResolver:
    """Resolves listener certificateRefs to validated Certificates (ReferenceGrant for other namespaces)."""

    def __init__(self, secrets: Sequence[Secret], grants: Sequence[ReferenceGrant]) -> None:
        self._secrets = {(s.meta.namespace, s.meta.name): s for s in secrets}
        self._grants = grants
        self._cache: dict[tuple[str, str], Certificate | str] = {}

    def resolve(self, gateway: Gateway, ref: SecretRef) -> tuple[Certificate | None, str, str]:
        """(certificate, "", "") or (None, reason, message) for one certificateRef."""
        if (ref.group, ref.kind) != (CORE_GROUP, "Secret"):
            return None, INVALID_CERTIFICATE_REF, f"{ref.kind} ({ref.group or 'core'}) is not a Secret"
        if ref.namespace != gateway.meta.namespace and not self._granted(gateway, ref):
            return (
                None,
                REF_NOT_PERMITTED,
                f"{ref.label} is in another namespace and no ReferenceGrant in {ref.namespace!r} allows it",
            )
        key = (ref.namespace, ref.name)
        cached = self._cache.get(key)
        if cached is None:
            cached = self._cache[key] = self._load(key)
        if isinstance(cached, str):
            return None, INVALID_CERTIFICATE_REF, cached
        return cached, "", ""

    def _granted(self, gateway: Gateway, ref: SecretRef) -> bool:
        return granted(self._grants, gateway.meta.namespace, ref.namespace, "Secret", ref.name)

    def _load(self, key: tuple[str, str]) -> Certificate | str:
        label = f"Secret {key[0]}/{key[1]}"
        secret = self._secrets.get(key)
        if secret is None:
            return f"{label} not found"
        if secret.type != TLS_SECRET_TYPE:
            return f"{label} has type {secret.type!r}, not {TLS_SECRET_TYPE}"
        cert, key_pem = secret.data.get("tls.crt"), secret.data.get("tls.key")
        if not cert or not key_pem:
            return f"{label} lacks data tls.crt or tls.key"
        problem = check_key_pair(cert, key_pem)
        if problem:
            return f"{label}: {problem}"
        return Certificate(label, cert, key_pem, certificate_hostnames(cert))


def granted(grants: Sequence[ReferenceGrant], gateway_namespace: str, namespace: str, kind: str, name: str) -> bool:
    """Whether a ReferenceGrant in `namespace` lets Gateways of `gateway_namespace` name the core
    `kind` object `name` there."""
    for grant in grants:
        if grant.meta.namespace != namespace:
            continue
        if not any(
            f.group == GATEWAY_GROUP and f.kind == "Gateway" and f.namespace == gateway_namespace for f in grant.from_
        ):
            continue
        if any(t.group == CORE_GROUP and t.kind == kind and t.name in (None, name) for t in grant.to):
            return True
    return False


def check_key_pair(cert_pem: bytes, key_pem: bytes) -> str | None:
    """None when the PEM chain parses and the key belongs to its first certificate; else why not."""
    if b"-----BEGIN" not in cert_pem:
        return "tls.crt is not PEM"
    try:
        _context_for(cert_pem, key_pem)
    except ssl.SSLError as exc:
        reason = exc.reason or str(exc)
        if "KEY_VALUES_MISMATCH" in str(exc):
            return "tls.key does not match the certificate in tls.crt"
        return f"cannot load the certificate and key: {reason}"
    return None


def certificate_hostnames(cert_pem: bytes) -> tuple[str, ...]:
    """DNS names of the leaf certificate (subjectAltName; the CN when there is none), lower case."""
    try:
        with _pem_files(cert_pem) as (path,):
            # The stdlib decodes certificates only from files and only through this helper;
            # there is no public API for a certificate that is not a peer's.
            decoded: dict[str, Any] = ssl._ssl._test_decode_cert(path)  # type: ignore[attr-defined]
    except (ssl.SSLError, AttributeError, OSError):
        return ()
    names = [v.lower() for k, v in decoded.get("subjectAltName", ()) if k == "DNS"]
    if not names:
        for rdn in decoded.get("subject", ()):
            names += [v.lower() for k, v in rdn if k == "commonName"]
    return tuple(dict.fromkeys(names))


def _base_context() -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(CIPHERS)
    ctx.set_alpn_protocols(ALPN)
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE | ssl.OP_NO_RENEGOTIATION
    return ctx


def _context_for(cert_pem: bytes, key_pem: bytes) -> ssl.SSLContext:
    ctx = _base_context()
    load_key_pair(ctx, cert_pem, key_pem)
    return ctx


def load_key_pair(ctx: ssl.SSLContext, cert_pem: bytes, key_pem: bytes) -> None:
    """ctx.load_cert_chain from PEM bytes (a listener's certificate, a Gateway's client certificate)."""
    with _pem_files(cert_pem, key_pem) as (cert_path, key_path):
        ctx.load_cert_chain(cert_path, key_path)


@contextlib.contextmanager
def _pem_files(*blobs: bytes) -> Iterator[tuple[str, ...]]:
    # load_cert_chain reads files only; private files in a private directory, removed at once.
    with tempfile.TemporaryDirectory(prefix="gw-tls-") as tmp:
        paths = []
        for i, blob in enumerate(blobs):
            path = os.path.join(tmp, f"{i}.pem")
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(blob)
            paths.append(path)
        yield tuple(paths)


def port_tls(listeners: Sequence[tuple[Listener, Sequence[Certificate]]]) -> TLSConfig | None:
    """The TLSConfig of one port from its HTTPS listeners and their resolved certificates.

    A listener's certificates are offered for the names they cover within the listener hostname;
    the listener hostname itself gets the listener's first certificate when none covers it; the
    default (no or unknown SNI) is the catch-all listener's first certificate, else the first one.
    """
    by_name: dict[str, Certificate] = {}
    first: list[tuple[str | None, Certificate]] = []
    # Most specific listener first, so a name a narrower listener claims is its certificate's.
    ordered = sorted(listeners, key=lambda lc: _listener_rank(lc[0].hostname))
    for listener, certs in ordered:
        if not certs:
            continue
        first.append((listener.hostname, certs[0]))
        for cert in certs:
            for name in cert.hostnames:
                if listener.hostname is None or hostname_matches(listener.hostname, name):
                    by_name.setdefault(name, cert)
                elif hostname_matches(name, listener.hostname):
                    by_name.setdefault(listener.hostname, cert)
        if listener.hostname is not None:
            by_name.setdefault(listener.hostname, certs[0])
    if not first:
        return None
    default = next((c for h, c in first if h is None), None)
    if default is None:
        default = next(c for li, certs in listeners for c in certs[:1])
    return TLSConfig(by_name, default, tuple(first))


def _listener_rank(hostname: str | None) -> tuple[int, int]:
    if hostname is None:
        return (2, 0)
    return (1, -len(hostname)) if is_wildcard(hostname) else (0, 0)


def client_verify_mode(client: ClientValidation | None) -> ssl.VerifyMode:
    """CERT_REQUIRED for AllowValidOnly and for a port with no valid CA (fail closed), CERT_OPTIONAL
    for AllowInsecureFallback, CERT_NONE without validation."""
    if client is None:
        return ssl.CERT_NONE
    return ssl.CERT_REQUIRED if client.required else ssl.CERT_OPTIONAL


def verify_clients(ctx: ssl.SSLContext, client: ClientValidation) -> None:
    """Make `ctx` verify client certificates as `client` says. OpenSSL takes the trust store from the
    context the SNI callback switches to, but whether a certificate is requested at all from the
    context the handshake began with: the listener's (gw.proxy.dataplane) must follow it."""
    ctx.verify_mode = client_verify_mode(client)
    if client.refusal is None:  # else no trust anchor at all: every certificate fails
        ctx.load_verify_locations(cadata=client.ca_certificates.decode("ascii"))


def build_ssl_context(port_config: Any) -> ssl.SSLContext:
    """The server SSLContext for an HTTPS PortConfig: TLS 1.2+, modern ciphers, ALPN http/1.1.

    The returned context serves the default certificate; its SNI callback switches each
    connection to the context of the certificate `port_config.tls.select()` picks. One context
    per certificate is built here, once per snapshot, each verifying clients as the port's
    spec.tls.frontend says.
    """
    tls: TLSConfig | None = port_config.tls
    if tls is None:
        raise ValueError(f"port {port_config.declared_port} has no TLS configuration")
    contexts: dict[int, ssl.SSLContext] = {}
    client = tls.client

    def context(cert: Certificate) -> ssl.SSLContext:
        ctx = contexts.get(id(cert))
        if ctx is None:
            ctx = contexts[id(cert)] = _context_for(cert.cert_pem, cert.key_pem)
            if client is not None:
                verify_clients(ctx, client)
        return ctx

    for cert in (tls.default, *tls.by_name.values()):
        context(cert)
    default = context(tls.default)
    by_name = {name: context(cert) for name, cert in tls.by_name.items()}
    select = tls.select

    def on_sni(conn: ssl.SSLObject | ssl.SSLSocket, server_name: str | None, _ctx: ssl.SSLContext) -> None:
        chosen = by_name.get(server_name) if server_name else None
        if chosen is None:
            chosen = contexts[id(select(server_name.lower() if server_name else None))]
        if chosen is not default:
            conn.context = chosen
        return None

    default.sni_callback = on_sni
    return default
