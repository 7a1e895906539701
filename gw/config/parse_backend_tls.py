"""Parse BackendTLSPolicy objects (gateway.networking.k8s.io/v1), every problem naming its field.

What the CRD's schema and CEL rules refuse is refused here too (the object is dropped, as the API
server would not store it); what the spec answers with status (an unresolvable or unsupported CA
reference, an unsupported wellKnownCACertificates) is kept for gw.config.backend_tls_attach.
"""

from __future__ import annotations

import re
from typing import Any

from gw.config import fields as f
from gw.config import validate as v
from gw.config.backend_tls import HOSTNAME, MIN_VERSION_OPTION, MIN_VERSIONS, URI, BackendTLSPolicy
from gw.config.ca_refs import parse_ca_refs
from gw.config.parse_targets import group_matches, refuse_namespace
from gw.config.ratelimit import TargetRef
from gw.config.reader import Reader, type_name
from gw.config.resources import CORE_GROUP, GW_GROUP, Meta

# The kinds a BackendTLSPolicy may target: a Service (the spec's Extended support, sectionName a
# port name) and gw's static Backend (implementation-specific: TLS to upstreams outside Kubernetes).
TARGET_GROUPS = {"Service": CORE_GROUP, "Backend": GW_GROUP}
MAX_TARGETS, MAX_CA_REFS, MAX_SANS, MAX_OPTIONS = 16, 8, 5, 16
_PRECISE_HOSTNAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
# wellKnownCACertificates: System, or a domain-prefixed name of an implementation's own set.
_WELL_KNOWN = re.compile(
    r"^(System|([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/([A-Za-z0-9][-A-Za-z0-9_.]{0,61})?[A-Za-z0-9]))$"
)
_URI = re.compile(r"^(([^:/?#]+):)(//([^/?#]*))([^?#]*)(\?([^#]*))?(#(.*))?")  # the CRD's AbsoluteURI


def parse_backend_tls_policy(
    r: Reader, meta: Meta, spec: dict[str, Any], obj: Any, field: str
) -> BackendTLSPolicy | None:
    before = r.count
    targets = _targets(r, spec, field)
    v_field = f"{field}.validation"
    if spec.get("validation") is None:
        r.error(v_field, "is required: how the backend's certificate is verified")
    val = r.map(spec.get("validation"), v_field, f.BACKEND_TLS_VALIDATION)
    hostname = r.str(val, "hostname", v_field, required=True, check=_check_precise_hostname)
    c_field = f"{v_field}.caCertificateRefs"
    ca_items = r.list(val.get("caCertificateRefs"), c_field)
    ca_refs = parse_ca_refs(r, ca_items, c_field, at_most=MAX_CA_REFS, namespaced=False)
    well_known = r.str(val, "wellKnownCACertificates", v_field, check=_check_well_known) or None
    if isinstance(spec.get("validation"), dict):
        if ca_refs and well_known:
            r.error(v_field, "must not contain both caCertificateRefs and wellKnownCACertificates")
        elif not ca_refs and not well_known and r.count == before:
            r.error(v_field, "must specify either caCertificateRefs or wellKnownCACertificates")
    sans = _subject_alt_names(r, val.get("subjectAltNames"), f"{v_field}.subjectAltNames")
    min_version = _options(r, spec.get("options"), f"{field}.options")
    if r.count != before or hostname is None:
        return None  # a half-read policy would verify a backend otherwise than written
    return BackendTLSPolicy(meta, targets, hostname, ca_refs, well_known, sans, min_version)


def _targets(r: Reader, spec: dict[str, Any], field: str) -> tuple[TargetRef, ...]:
    given = spec.get("targetRefs")
    t_field = f"{field}.targetRefs"
    raw = r.list(given, t_field)
    if not raw and (given is None or isinstance(given, list)):
        r.error(t_field, "is required: at least one Service")
    if len(raw) > MAX_TARGETS:
        r.error(t_field, f"lists {len(raw)} targets: at most {MAX_TARGETS}")
    targets: list[TargetRef] = []
    for i, t in enumerate(raw):
        i_field = f"{t_field}[{i}]"
        t = r.map(t, i_field, f.POLICY_TARGET_REF)
        kind = r.str(t, "kind", i_field, required=True, choices=TARGET_GROUPS)
        name = r.str(t, "name", i_field, required=True, check=v.check_object_name)
        section = r.str(t, "sectionName", i_field, check=v.check_section_name) or None
        refuse_namespace(r, t, i_field)
        if kind is None or not name:
            continue
        expected = TARGET_GROUPS[kind]
        if not group_matches(r, t, i_field, kind, expected):
            continue
        if section is not None and kind == "Backend":
            r.error(f"{i_field}.sectionName", "is not supported for a Backend: a gw Backend has no sections")
            continue
        same = [p for p in targets if (p.kind, p.name) == (kind, name)]
        if any((p.section_name is None) != (section is None) for p in same):
            r.error(
                t_field,
                "sectionName must be specified when targetRefs includes 2 or more references to the same target",
            )
        elif any(p.section_name == section for p in same):
            r.error(
                t_field, "sectionName must be unique when targetRefs includes 2 or more references to the same target"
            )
        targets.append(TargetRef(expected, kind, name, section, i))
    return tuple(targets)


def _subject_alt_names(r: Reader, raw: Any, field: str) -> tuple[tuple[str, str], ...]:
    items = r.list(raw, field)
    if len(items) > MAX_SANS:
        r.error(field, f"lists {len(items)} names: at most {MAX_SANS}")
    sans = []
    for i, san in enumerate(items):
        i_field = f"{field}[{i}]"
        san = r.map(san, i_field, f.SUBJECT_ALT_NAME)
        kind = r.str(san, "type", i_field, required=True, choices=(HOSTNAME, URI))
        hostname = san.get("hostname") or None
        uri = san.get("uri") or None
        if kind != HOSTNAME and hostname is not None:
            r.error(f"{i_field}.hostname", "must not be set unless type is Hostname")
        if kind != URI and uri is not None:
            r.error(f"{i_field}.uri", "must not be set unless type is URI")
        if kind == HOSTNAME:
            value = r.str(san, "hostname", i_field, required=True, check=v.check_hostname)
        elif kind == URI:
            value = r.str(san, "uri", i_field, required=True, check=_check_uri)
        else:
            continue
        if value:
            sans.append((kind, value))
    return tuple(sans)


def _options(r: Reader, raw: Any, field: str) -> str:
    """The minimum TLS version (gw's one option); any other key is refused rather than ignored, as an
    ignored option could leave the connection less protected than written."""
    options = r.map(raw, field)
    if len(options) > MAX_OPTIONS:
        r.error(field, f"has {len(options)} keys: at most {MAX_OPTIONS}")
    min_version = "1.2"
    for key, value in options.items():
        if key == MIN_VERSION_OPTION:
            if value not in MIN_VERSIONS:
                r.error(f"{field}[{key}]", f"{value!r} is not one of {', '.join(MIN_VERSIONS)}")
            else:
                min_version = value
        elif not isinstance(value, str):
            r.error(f"{field}[{key}]", f"must be a string, not {type_name(value)}")
        else:
            r.error(f"{field}[{key}]", f"is not an option gw knows (gw reads {MIN_VERSION_OPTION}: 1.2 or 1.3)")
    return min_version


def _check_precise_hostname(value: str) -> str | None:
    if len(value) > 253 or not _PRECISE_HOSTNAME.match(value):
        return f"{value!r} is not a precise hostname (lower-case RFC 1123 name, no wildcard)"
    return None


def _check_well_known(value: str) -> str | None:
    if len(value) > 253 or not _WELL_KNOWN.match(value):
        return f"{value!r} is neither System nor a domain-prefixed name (example.com/my-cas)"
    return None


def _check_uri(value: str) -> str | None:
    return None if _URI.match(value) else f"{value!r} is not an absolute URI with a scheme and an authority"
