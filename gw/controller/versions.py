"""Judge the installed Gateway API CRDs' bundle version against what gw supports: the GatewayClass SupportedVersion.

The Gateway API marks each CRD with the release it came from (the `gateway.networking.k8s.io/
bundle-version` annotation). The spec's rules for the GatewayClass (apis/v1/gatewayclass_types.go):
SupportedVersion MUST be False when any Gateway API CRD lacks the annotation or carries a version
the implementation does not support; an implementation MAY then serve on a best-effort basis
(Accepted True, SupportedVersion False) or refuse the class (Accepted False, reason
UnsupportedVersion). gw does both, by what it knows:

- every CRD within the range: SupportedVersion True;
- a CRD without the annotation, or one that is not a version (a CRD applied by hand, a fork):
  SupportedVersion False, and gw serves best-effort, since nothing says the schema is wrong;
- a CRD whose version is outside the range: SupportedVersion False and Accepted False
  (UnsupportedVersion), and nothing of the cluster is published until it is back in range;
- CRDs gw may not read (403) or cannot reach: SupportedVersion Unknown (reason Pending, gw has no
  version to decide on), served as if supported: RBAC trimmed by an operator must not stop traffic.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from gw.config.resources import GATEWAY_GROUP
from gw.controller.cache import Cache, Object
from gw.controller.kinds import WATCHED, Kind

BUNDLE_VERSION = "gateway.networking.k8s.io/bundle-version"

# gw reads GatewayClass, Gateway and HTTPRoute at gateway.networking.k8s.io/v1, which the bundle
# serves from v1.0.0 on (before, v1beta1 only: the watches would find nothing), and ReferenceGrant
# at v1beta1, served by every v1.x bundle. Within v1 the Gateway API keeps the standard channel
# compatible (fields are added, never removed or redefined), so later v1 minors are read as v1.6
# is: their new fields are ignored, as unknown fields in files are. A v2 bundle may change the
# meaning of what gw reads.
SUPPORTED_FROM = (1, 0, 0)
SUPPORTED_BELOW = (2, 0, 0)
SUPPORTED_RANGE = "v1.0.0 <= version < v2.0.0"

_VERSION = re.compile(r"v(\d+)\.(\d+)\.(\d+)(?:-[0-9A-Za-z.-]+)?")

CRD = Kind("CustomResourceDefinition", "apiextensions.k8s.io/v1", "customresourcedefinitions", namespaced=False)


def crd_names() -> list[str]:
    """The Gateway API CRDs whose kinds the controller reads: the ones whose version matters to it."""
    return sorted({f"{k.plural}.{k.group}" for k in WATCHED if k.group == GATEWAY_GROUP})


def crd_kind(name: str) -> Kind:
    """One CRD by name: a list/watch with a metadata.name selector, which RBAC's resourceNames can grant."""
    return Kind(CRD.kind, CRD.api_version, CRD.plural, namespaced=False, field_selector=f"metadata.name={name}")


@dataclass(frozen=True, slots=True)
class Verdict:
    """The SupportedVersion condition's status ("True", "False", "Unknown"), reason and message, and whether
    gw refuses the classes (Accepted False: a version known to be outside the range)."""

    status: str
    reason: str
    message: str
    refused: bool = False

    def condition(self) -> dict[str, str]:
        return {"type": "SupportedVersion", "status": self.status, "reason": self.reason, "message": self.message}


def parse(version: str) -> tuple[int, int, int] | None:
    match = _VERSION.fullmatch(version.strip())
    if match is None:
        return None
    return int(match[1]), int(match[2]), int(match[3])


def judge(crds: Mapping[str, Object | None], unreadable: str = "") -> Verdict:
    """The verdict on the CRDs as read (None: not installed); `unreadable` says why some could not be read."""
    if unreadable:
        return Verdict("Unknown", "Pending", f"cannot read the Gateway API CRDs ({unreadable}): their bundle "
                       f"version is unknown; served as if supported ({SUPPORTED_RANGE})")  # fmt: skip
    outside, unknown, found = [], [], []
    for name, crd in sorted(crds.items()):
        if crd is None:
            continue  # not installed: no version to judge (and no object of that kind to serve)
        annotations = (crd.get("metadata") or {}).get("annotations") or {}
        version = annotations.get(BUNDLE_VERSION)
        if not isinstance(version, str) or not version:
            unknown.append(f"{name} has no {BUNDLE_VERSION} annotation")
            continue
        parsed = parse(version)
        if parsed is None:
            unknown.append(f"{name} is at {version!r}, not a version")
        elif not SUPPORTED_FROM <= parsed < SUPPORTED_BELOW:
            outside.append(f"{name} is at {version}")
        else:
            found.append(version)
    if outside:
        message = f"{'; '.join(outside)}: gw supports {SUPPORTED_RANGE}"
        return Verdict("False", "UnsupportedVersion", message, refused=True)
    if unknown:
        message = f"{'; '.join(unknown)}: served best-effort (gw supports {SUPPORTED_RANGE})"
        return Verdict("False", "UnsupportedVersion", message)
    versions = ", ".join(sorted(set(found))) or "none installed"
    return Verdict("True", "SupportedVersion", f"Gateway API CRDs at {versions}: gw supports {SUPPORTED_RANGE}")


class MetadataCache(Cache):
    """A cache of CRDs that keeps their name and bundle version only.

    A Gateway API CRD is hundreds of kilobytes of schema (and as much again in kubectl's
    last-applied annotation) of which gw reads one annotation; a CRD change that leaves it alone
    (a schema patch, a label) changes nothing here, so it sets off no reconcile.
    """

    def replace(self, kind: str, items: Iterable[Object]) -> bool:
        return super().replace(kind, [_version_only(obj) for obj in items])

    def apply(self, kind: str, event: str, obj: Object) -> bool:
        return super().apply(kind, event, _version_only(obj))


def _version_only(obj: Object) -> Object:
    meta = obj.get("metadata") or {}
    annotations = meta.get("annotations") or {}
    kept: Object = {"name": meta.get("name", "")}
    if BUNDLE_VERSION in annotations:
        kept["annotations"] = {BUNDLE_VERSION: annotations[BUNDLE_VERSION]}
    return {"metadata": kept}
