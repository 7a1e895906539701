"""Client-certificate validation on HTTPS listeners: the Gateway's spec.tls.frontend (GEP-91, v1.6).

`default` applies to every HTTPS listener whose port has no `perPort` entry; a `perPort` entry
replaces it for its port (an entry without `validation` turns validation off there). What one
port gets is a ClientValidation: the mode and the PEM bundle of the CAs that resolved, or a
`refusal` when none did. A refusing port fails closed: every handshake is refused, whatever the
mode, rather than clients being served unverified.

Modes, as Python's ssl can honour them: AllowValidOnly requests a certificate and refuses the
handshake without a valid one (CERT_REQUIRED). AllowInsecureFallback requests one and serves a
client that sends none (CERT_OPTIONAL); a client that sends an invalid one is still refused,
as OpenSSL gives Python no way to accept a certificate that fails verification.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from gw.config import fields
from gw.config.backend_tls import CARef
from gw.config.ca_refs import Stores, ca_bundle, parse_ca_refs
from gw.config.reader import Reader

ALLOW_VALID_ONLY = "AllowValidOnly"
ALLOW_INSECURE_FALLBACK = "AllowInsecureFallback"
MODES = (ALLOW_VALID_ONLY, ALLOW_INSECURE_FALLBACK)
MAX_PER_PORT, MAX_CA_REFS = 64, 16
# Listener reasons (gateway_types.go)
INVALID_CA_KIND = "InvalidCACertificateKind"
NO_VALID_CA = "NoValidCACertificate"
# The Gateway's condition while a validation is AllowInsecureFallback, and its reason.
INSECURE_MODE = "InsecureFrontendValidationMode"
CONFIGURATION_CHANGED = "ConfigurationChanged"


@dataclass(frozen=True, slots=True)
class FrontendValidation:
    """One TLSConfig.validation: the CAs clients' certificates are verified against, and the mode."""

    ca_refs: tuple[CARef, ...]
    mode: str = ALLOW_VALID_ONLY
    field: str = ""  # where it was written ("spec.tls.frontend.default.validation"), for messages


@dataclass(frozen=True, slots=True)
class FrontendTLS:
    """spec.tls.frontend: the default validation (None: none) and per-port replacements."""

    default: FrontendValidation | None
    per_port: dict[int, FrontendValidation | None] = field(default_factory=dict, compare=False)

    def for_port(self, port: int) -> FrontendValidation | None:
        return self.per_port.get(port, self.default)

    @property
    def insecure(self) -> bool:
        validations = (self.default, *self.per_port.values())
        return any(val is not None and val.mode == ALLOW_INSECURE_FALLBACK for val in validations)


@dataclass(frozen=True, slots=True)
class ClientValidation:
    """What an HTTPS port verifies client certificates against (plain data in the snapshot)."""

    mode: str
    ca_certificates: bytes = field(default=b"", repr=False)  # PEM bundle
    refusal: str | None = None  # no CA resolved: every handshake is refused
    source: str = ""  # "Gateway ns/name spec.tls.frontend.…", for logs

    @property
    def required(self) -> bool:
        """A client without a verified certificate is refused (AllowValidOnly, or a refusing port)."""
        return self.mode == ALLOW_VALID_ONLY or self.refusal is not None


# -- parsing ----------------------------------------------------------------------------------


def parse_frontend(r: Reader, raw: Any, field: str) -> FrontendTLS | None:
    """spec.tls.frontend with the CRD's rules; None when absent. Check r.count for problems."""
    if raw is None:
        return None
    frontend = r.map(raw, field, fields.FRONTEND_TLS)
    if frontend.get("default") is None:
        r.error(f"{field}.default", "is required")
    default = _tls_config(r, frontend.get("default"), f"{field}.default")
    per_port: dict[int, FrontendValidation | None] = {}
    p_field = f"{field}.perPort"
    items = r.list(frontend.get("perPort"), p_field)
    if len(items) > MAX_PER_PORT:
        r.error(p_field, f"lists {len(items)} ports: at most {MAX_PER_PORT}")
    for i, item in enumerate(items):
        i_field = f"{p_field}[{i}]"
        item = r.map(item, i_field, fields.FRONTEND_TLS_PORT)
        port = r.int(item, "port", i_field, required=True, lo=1, hi=65535)
        if item.get("tls") is None:
            r.error(f"{i_field}.tls", "is required")
        validation = _tls_config(r, item.get("tls"), f"{i_field}.tls")
        if port is None:
            continue
        if port in per_port:
            r.error(p_field, "Port for TLS configuration must be unique within the Gateway")
        per_port[port] = validation
    return FrontendTLS(default, per_port)


def _tls_config(r: Reader, raw: Any, field: str) -> FrontendValidation | None:
    tls = r.map(raw, field, fields.FRONTEND_TLS_CONFIG)
    if tls.get("validation") is None:
        return None
    v_field = f"{field}.validation"
    val = r.map(tls.get("validation"), v_field, fields.FRONTEND_TLS_VALIDATION)
    mode = r.str(val, "mode", v_field, default=ALLOW_VALID_ONLY, choices=MODES) or ALLOW_VALID_ONLY
    c_field = f"{v_field}.caCertificateRefs"
    items = r.list(val.get("caCertificateRefs"), c_field)
    if not items:
        r.error(c_field, "is required: at least one reference to the CA certificates clients are verified against")
    refs = parse_ca_refs(r, items, c_field, at_most=MAX_CA_REFS, namespaced=True)
    return FrontendValidation(refs, mode, v_field)


# -- resolution -------------------------------------------------------------------------------


def resolve_validation(
    validation: FrontendValidation,
    namespace: str,
    stores: Stores,
    permitted: Callable[[CARef], bool],
    source: str,
) -> tuple[ClientValidation, list[tuple[str, str]]]:
    """The ClientValidation of a port and the problems of its references (reason, message)."""
    bundle, problems = ca_bundle(
        validation.ca_refs, namespace, stores, kind_reason=INVALID_CA_KIND, permitted=permitted
    )
    if not bundle:
        why = "no valid CA certificate: " + "; ".join(m for _, m in problems)
        return ClientValidation(validation.mode, refusal=why, source=source), problems
    return ClientValidation(validation.mode, bundle, source=source), problems
