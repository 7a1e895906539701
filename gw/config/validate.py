"""Validation beyond shape: the spec's value rules (the CRDs' patterns and CEL) and cross-object checks.

Value checks return an error message or None, so the parser can name the field; cross-object
checks (duplicates, listener conflicts) return ConfigErrors for the objects they reject.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable

from gw.config.errors import Condition, ConfigError
from gw.config.resources import KEPT_FILE, Gateway, Listener, Resources
from gw.routing.paths import UnsafePath, normalize_escapes, normalize_path

# RFC 1123 hostname, lower case, optionally with a leading "*." wildcard label (CRD pattern).
_HOSTNAME = re.compile(r"^(\*\.)?[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_HEADER_NAME = re.compile(r"^[A-Za-z0-9!#$%&'*+\-.^_`|~]+$")
_FORBIDDEN_IN_PATH = ("//", "/./", "/../", "%2f", "%2F", "#")
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"})
SUPPORTED_PROTOCOLS = frozenset({"HTTP"})  # what the data plane serves without TLS support
KNOWN_PROTOCOLS = frozenset({"HTTP", "HTTPS"})  # what gw's config pipeline understands


def check_hostname(value: str) -> str | None:
    if len(value) > 253:
        return "hostname longer than 253 characters"
    try:
        ipaddress.ip_address(value)
    except ValueError:
        pass
    else:
        return f"{value!r} is an IP address; hostnames must be DNS names"
    if value == "*":
        return "'*' alone is not a hostname; omit the hostname to match every host"
    if not _HOSTNAME.match(value):
        return (
            f"{value!r} is not a valid hostname (lower-case RFC 1123 name, "
            "optionally starting with a '*.' wildcard label)"
        )
    return None


def check_object_name(value: str) -> str | None:
    if len(value) > 253 or not _DNS_SUBDOMAIN.match(value):
        return f"{value!r} is not a valid name (lower-case RFC 1123 subdomain)"
    return None


def check_section_name(value: str) -> str | None:
    if len(value) > 253 or not _DNS_SUBDOMAIN.match(value):
        return f"{value!r} is not a valid section name (lower-case RFC 1123 subdomain)"
    return None


def check_rule_name(value: str) -> str | None:
    if len(value) > 253 or not _DNS_SUBDOMAIN.match(value):
        return f"{value!r} is not a valid rule name (lower-case RFC 1123 subdomain)"
    return None


# The CRD's pattern for Exact and PathPrefix values: RFC 3986 pchars, '/', and %-escapes.
_PATH_CHARS = re.compile(r"^(?:[-A-Za-z0-9/._~!$&'()*+,;=:@]|%[0-9a-fA-F]{2})+$")


def check_path(path_type: str, value: str) -> str | None:
    """The CRD's rules for path values; regular expressions must compile."""
    if len(value) > 1024:
        return "path longer than 1024 characters"
    if path_type == "RegularExpression":
        try:
            re.compile(value)
        except re.error as exc:
            return f"invalid regular expression {value!r}: {exc}"
        return None
    if not value.startswith("/"):
        return f"path {value!r} must start with '/'"
    for bad in _FORBIDDEN_IN_PATH:
        if bad in value:
            return f"path {value!r} must not contain {bad!r}"
    if value.endswith(("/..", "/.")):
        return f"path {value!r} must not end with '/..' or '/.'"
    if not _PATH_CHARS.match(value):
        return f"path {value!r} has characters a path may not hold unencoded (percent-encode them)"
    # Requests are matched in their normal form (gw.routing.paths): a value that has none would
    # never match, and one whose encoded dots resolve away ("/a/%2e%2e") would match elsewhere.
    try:
        normal = normalize_path(value.encode("ascii"))
    except UnsafePath as exc:
        return f"path {value!r} would never match: gw answers 400 to requests with {exc}"
    if normal != normalize_escapes(value.encode("ascii")):
        return f"path {value!r} holds an encoded dot segment (it would match {normal.decode()!r})"
    return None


def check_header_name(value: str) -> str | None:
    if not _HEADER_NAME.match(value) or len(value) > 256:
        return f"{value!r} is not a valid HTTP header name"
    return None


def check_regex(value: str) -> str | None:
    try:
        re.compile(value)
    except re.error as exc:
        return f"invalid regular expression {value!r}: {exc}"
    return None


def check_address(value: str) -> str | None:
    """An endpoint address: an IP address or a DNS name."""
    try:
        ipaddress.ip_address(value)
    except ValueError:
        pass
    else:
        return None
    if len(value) > 253 or not all(_DNS_LABEL.match(label) for label in value.lower().split(".")):
        return f"{value!r} is neither an IP address nor a DNS name"
    return None


def check_listeners(
    gateway: Gateway, protocols: Iterable[str] = SUPPORTED_PROTOCOLS
) -> tuple[tuple[Listener, ...], list[ConfigError], dict[str, list[Condition]]]:
    """Listeners that can be served, errors for those that cannot (each rejected alone), and the
    Accepted/Conflicted conditions of every listener by name (the caller adds ResolvedRefs and
    Programmed)."""
    protocols = frozenset(protocols)
    errors: list[ConfigError] = []
    conditions: dict[str, list[Condition]] = {}
    kept: list[Listener] = []
    names: set[str] = set()
    # (port, hostname) pairs already taken: two listeners may share a port only with distinct hostnames.
    taken: dict[tuple[int, str | None], str] = {}
    port_protocols: dict[int, str] = {}
    for listener in gateway.listeners:
        field = f"spec.listeners[{listener.index}]"

        def reject(sub: str, message: str, field: str = field) -> None:
            errors.append(ConfigError(gateway.meta.file, gateway.meta.label, f"{field}{sub}", message))

        if listener.name in names:
            reject(".name", f"duplicate listener name {listener.name!r}")
            continue
        names.add(listener.name)
        status = conditions[listener.name] = []
        if listener.protocol not in protocols:
            known = "yet by the data plane" if listener.protocol in KNOWN_PROTOCOLS else "by gw"
            reject(
                ".protocol",
                f"protocol {listener.protocol!r} is not supported {known} (supported: "
                f"{', '.join(sorted(protocols))}); listener {listener.name!r} is not served",
            )
            status.append(Condition("Accepted", False, "UnsupportedProtocol", f"{listener.protocol} is not supported"))
            continue
        if port_protocols.get(listener.port, listener.protocol) != listener.protocol:
            message = f"port {listener.port} is already used with protocol {port_protocols[listener.port]!r}"
            reject(".protocol", message)
            status.append(Condition("Conflicted", True, "ProtocolConflict", message))
            status.append(Condition("Accepted", False, "PortUnavailable", message))
            continue
        other = taken.get((listener.port, listener.hostname))
        if other is not None:
            hostname = listener.hostname or "(any)"
            message = f"listener {other!r} already serves hostname {hostname} on port {listener.port}"
            reject(".hostname", message)
            status.append(Condition("Conflicted", True, "HostnameConflict", message))
            status.append(Condition("Accepted", False, "HostnameConflict", message))
            continue
        port_protocols[listener.port] = listener.protocol
        taken[(listener.port, listener.hostname)] = listener.name
        status.append(Condition("Accepted", True, "Accepted"))
        status.append(Condition("Conflicted", False, "NoConflicts"))
        kept.append(listener)
    return tuple(kept), errors, conditions


def check_duplicates(resources: Resources) -> list[ConfigError]:
    """The same kind/namespace/name twice: the later copy is reported (and ignored by compile)."""
    errors: list[ConfigError] = []
    seen: dict[str, str] = {}  # label → the file of the copy kept
    for group in resources.groups():
        unique = []
        # A running version kept by a reload (gw.config.fallback) wins over the new, invalid copy.
        for obj in sorted(group, key=lambda o: o.meta.file != KEPT_FILE):
            label = obj.meta.label
            if label in seen and seen[label] == KEPT_FILE:
                continue  # the new, invalid copy: gw.config.fallback reports the kept one
            if label in seen:
                message = f"defined more than once: this copy is ignored, the one in {seen[label]} is served"
                errors.append(ConfigError(obj.meta.file, label, "metadata.name", message))
                continue
            seen[label] = obj.meta.file
            unique.append(obj)
        group[:] = unique
    return errors
