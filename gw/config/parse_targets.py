"""What the policies' targetRefs parsers share (BackendTrafficPolicy, BackendTLSPolicy, SecurityPolicy):
the GEP-713 rules every policy kind applies the same way, with the same words."""

from __future__ import annotations

from typing import Any

from gw.config.reader import Reader
from gw.config.resources import CORE_GROUP


def refuse_namespace(r: Reader, ref: dict[str, Any], field: str) -> None:
    if ref.get("namespace") is not None:
        r.error(f"{field}.namespace", "is not allowed: a policy targets objects in its own namespace (GEP-713)")


def group_matches(r: Reader, ref: dict[str, Any], field: str, kind: str, expected: str) -> bool:
    """Whether the ref's `group` (default: `expected`) is the kind's; says why not. A Service's
    core group may be written '' or 'core'."""
    group = r.str(ref, "group", field, default=expected)
    if group == "core" and kind == "Service":
        group = CORE_GROUP
    if group is not None and group != expected:
        home = f"group {expected!r}" if expected else "the core group ('' or 'core')"
        r.error(f"{field}.group", f"{group!r}: a {kind} is in {home}")
        return False
    return True
