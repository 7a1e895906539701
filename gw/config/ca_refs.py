"""caCertificateRefs: read from YAML, and resolved to one PEM CA bundle with the problem of each
entry that does not resolve.

Shared by BackendTLSPolicy (validation.caCertificateRefs: the backends' CA) and the Gateway's
spec.tls.frontend (validation.caCertificateRefs: the clients' CA). Both read a ConfigMap or a
Secret, key ca.crt; they differ in the reason an unsupported kind gets and in whether another
namespace may be named (a frontend reference may, with a ReferenceGrant).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from gw.config import fields as f
from gw.config import validate as v
from gw.config.backend_tls import CA_KEY, CARef, check_ca_bundle
from gw.config.reader import Reader
from gw.config.resources import CORE_GROUP

INVALID_CA_REF = "InvalidCACertificateRef"
REF_NOT_PERMITTED = "RefNotPermitted"
CA_KINDS = ("ConfigMap", "Secret")

# (kind, namespace, name) → the object's data (ConfigMap data and binaryData, Secret data)
Stores = dict[tuple[str, str, str], dict[str, bytes]]


def parse_ca_refs(r: Reader, items: list[Any], field: str, *, at_most: int, namespaced: bool) -> tuple[CARef, ...]:
    """The references of a caCertificateRefs list (`items`, already read as a list). Any group and
    kind parses: an unsupported one is status (the caller's kind_reason), not a refusal."""
    if len(items) > at_most:
        r.error(field, f"lists {len(items)} references: at most {at_most}")
    refs = []
    for i, ref in enumerate(items):
        i_field = f"{field}[{i}]"
        ref = r.map(ref, i_field, f.OBJECT_REF if namespaced else f.LOCAL_OBJECT_REF)
        group = r.str(ref, "group", i_field, required=True)
        kind = r.str(ref, "kind", i_field, required=True)
        name = r.str(ref, "name", i_field, required=True, check=v.check_object_name)
        namespace = r.str(ref, "namespace", i_field, check=v.check_object_name) or None if namespaced else None
        if group is not None and kind and name:
            refs.append(CARef(CORE_GROUP if group == "core" else group, kind, name, i, namespace))
    return tuple(refs)


def ca_bundle(
    refs: Sequence[CARef],
    namespace: str,
    stores: Stores,
    *,
    kind_reason: str,
    permitted: Callable[[CARef], bool] | None = None,
) -> tuple[bytes, list[tuple[str, str]]]:
    """(the PEM bundle of every entry that resolves, [(reason, message)] of those that do not).

    `namespace`: the referring object's, where an entry without one is looked up; `permitted`
    decides an entry naming another namespace (None: such an entry is not permitted).
    """
    bundle: list[bytes] = []
    problems: list[tuple[str, str]] = []
    for ref in refs:
        ns = ref.namespace or namespace
        what = f"caCertificateRefs[{ref.index}] {ref.kind} {ns}/{ref.name}"
        if ref.group != CORE_GROUP or ref.kind not in CA_KINDS:
            group = ref.group or "core"
            why = f"{what}: {ref.kind} ({group}) is not a kind gw reads CA certificates from (ConfigMap, Secret)"
            problems.append((kind_reason, why))
            continue
        if ns != namespace and (permitted is None or not permitted(ref)):
            why = f"{what} is in another namespace and no ReferenceGrant in {ns!r} allows it"
            problems.append((REF_NOT_PERMITTED, why))
            continue
        data = stores.get((ref.kind, ns, ref.name))
        if data is None:
            problems.append((INVALID_CA_REF, f"{what} not found"))
            continue
        pem = data.get(CA_KEY)
        if pem is None:
            problems.append((INVALID_CA_REF, f"{what} has no key {CA_KEY}"))
            continue
        problem = check_ca_bundle(pem)
        if problem:
            problems.append((INVALID_CA_REF, f"{what}: {CA_KEY} {problem}"))
            continue
        bundle.append(pem.rstrip(b"\n") + b"\n")
    return b"".join(bundle), problems
