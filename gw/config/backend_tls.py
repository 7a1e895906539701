"""TLS towards backends (Gateway API BackendTLSPolicy): the policy's shape, what a backend keeps of
it, the client SSLContext built from that, and the subjectAltNames check OpenSSL cannot do for us.

A backend reached under a BackendTLSPolicy gets an UpstreamTLS (gw.config.backend_tls_attach).
The worker builds one SSLContext per distinct UpstreamTLS (gw.proxy.dataplane), the supervisor's
health checker one per probed backend: never one per connection.
"""

from __future__ import annotations

import hashlib
import ssl
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from gw.config.ratelimit import TargetRef

if TYPE_CHECKING:
    from gw.config.resources import Meta

KIND = "BackendTLSPolicy"
SYSTEM = "System"  # validation.wellKnownCACertificates: the system's trust store
HOSTNAME, URI = "Hostname", "URI"  # subjectAltNames[].type
CA_KEY = "ca.crt"  # the ConfigMap (or Secret) key holding the PEM bundle
# options gw reads (domain-prefixed, as the spec asks of implementation-specific keys)
MIN_VERSION_OPTION = "gw.dev/min-tls-version"
MIN_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}


@dataclass(frozen=True, slots=True)
class CARef:
    """A validation.caCertificateRefs entry: a BackendTLSPolicy's LocalObjectReference (the policy's
    namespace), or a Gateway frontend's ObjectReference (`namespace` None: the Gateway's)."""

    group: str
    kind: str
    name: str
    index: int  # position in the list, for messages
    namespace: str | None = None


@dataclass(frozen=True, slots=True)
class BackendTLSPolicy:
    meta: Meta
    targets: tuple[TargetRef, ...]
    hostname: str
    ca_refs: tuple[CARef, ...] = ()
    well_known: str | None = None  # "System", or an unsupported prefixed name (then not Accepted)
    subject_alt_names: tuple[tuple[str, str], ...] = ()  # (HOSTNAME | URI, value)
    min_version: str = "1.2"


@dataclass(frozen=True, slots=True)
class UpstreamTLS:
    """How the proxy connects to a backend's endpoints: over TLS, verified as the policy says.

    `refusal` is set when the policy cannot be honoured (no valid CA certificate, an unsupported
    wellKnownCACertificates): every connection then fails with 502, never falls back to plain text.
    """

    policy: str  # "namespace/name" of the BackendTLSPolicy, for logs
    hostname: str  # SNI, and what the certificate must be valid for unless subject_alt_names is set
    subject_alt_names: tuple[tuple[str, str], ...] = ()
    ca_certificates: bytes = b""  # PEM bundle; empty with well_known
    well_known: str | None = None
    min_version: str = "1.2"
    refusal: str | None = None
    # The client certificate chain and key presented (the Gateway's spec.tls.backend), PEM; empty: none.
    client_certificate: bytes = field(default=b"", repr=False)
    client_key: bytes = field(default=b"", repr=False)
    identity: tuple[object, ...] = field(init=False, compare=False)

    def __post_init__(self) -> None:
        # What pools and contexts are keyed by: equal policies (across reloads too) share both.
        digest = _digest(self.ca_certificates)
        client = _digest(self.client_certificate + self.client_key)
        identity = (self.hostname, self.subject_alt_names, digest, self.well_known, self.min_version, self.refusal)
        identity += (client,)
        object.__setattr__(self, "identity", identity)


def _digest(data: bytes) -> str | None:
    return hashlib.sha256(data).hexdigest()[:16] if data else None


def client_context(tls: UpstreamTLS) -> ssl.SSLContext:
    """The client SSLContext for `tls`: TLS 1.2 or later, the chain verified against the policy's CA
    bundle or the system store, the name checked against `hostname` by OpenSSL (with
    subjectAltNames, by `san_mismatch` after the handshake: Python checks server_hostname only)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = MIN_VERSIONS.get(tls.min_version, ssl.TLSVersion.TLSv1_2)
    ctx.check_hostname = not tls.subject_alt_names
    ctx.verify_mode = ssl.CERT_REQUIRED
    if tls.well_known == SYSTEM:
        ctx.load_default_certs(ssl.Purpose.SERVER_AUTH)
    elif tls.ca_certificates:
        ctx.load_verify_locations(cadata=tls.ca_certificates.decode("ascii"))
    if tls.client_certificate:
        from gw.config.tls import load_key_pair  # (gw.config.tls imports resources, which import this module)

        load_key_pair(ctx, tls.client_certificate, tls.client_key)
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


def check_ca_bundle(pem: bytes) -> str | None:
    """Why `pem` is no usable CA bundle (None when it is): at least one PEM certificate OpenSSL reads."""
    try:
        text = pem.decode("ascii")
    except UnicodeDecodeError:
        return "is not PEM text"
    if "-----BEGIN CERTIFICATE-----" not in text:
        return "holds no PEM certificate"
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cadata=text)
    except (ssl.SSLError, ValueError) as exc:
        return f"is not a valid PEM certificate bundle ({exc})"
    return None


def san_mismatch(tls: UpstreamTLS, cert: dict[str, object] | None) -> str | None:
    """Why the verified peer certificate `cert` (SSLObject.getpeercert()) matches none of the
    policy's subjectAltNames; None when one matches (the spec: at least one must)."""
    names = cert.get("subjectAltName", ()) if cert else ()
    dns = [str(v).lower() for k, v in names if k == "DNS"]  # type: ignore[union-attr]
    uris = [str(v) for k, v in names if k == "URI"]  # type: ignore[union-attr]
    for kind, wanted in tls.subject_alt_names:
        if kind == HOSTNAME and any(_dns_matches(pattern, wanted.lower()) for pattern in dns):
            return None
        if kind == URI and wanted in uris:
            return None
    have = ", ".join([f"DNS:{d}" for d in dns] + [f"URI:{u}" for u in uris]) or "none"
    want = ", ".join(f"{'DNS' if k == HOSTNAME else 'URI'}:{v}" for k, v in tls.subject_alt_names)
    return f"certificate subjectAltNames ({have}) match none of the policy's ({want})"


def _dns_matches(pattern: str, name: str) -> bool:
    """RFC 6125 §6.4: exact, or a certificate's '*.' wildcard standing for exactly the leftmost label."""
    if pattern == name:
        return True
    if pattern.startswith("*.") and "." in name:
        label, _, rest = name.partition(".")
        return bool(label) and rest == pattern[2:]
    return False
