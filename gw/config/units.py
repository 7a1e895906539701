"""Gateway API durations (GEP-2257) and Kubernetes quantities as gw reads them from manifests."""

from __future__ import annotations

import re

# GEP-2257: one to four <number><unit> pairs, units h, m, s, ms; e.g. "1h30m", "500ms", "0s".
_DURATION = re.compile(r"^([0-9]{1,5}(h|m|s|ms)){1,4}$")
_DURATION_PART = re.compile(r"([0-9]{1,5})(ms|h|m|s)")
_DURATION_UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}

_QUANTITY = re.compile(r"^([0-9]+)(Ki|Mi|Gi|Ti|k|M|G|T)?$")
_QUANTITY_UNITS = {
    None: 1,
    "k": 1000,
    "M": 1000**2,
    "G": 1000**3,
    "T": 1000**4,
    "Ki": 1024,
    "Mi": 1024**2,
    "Gi": 1024**3,
    "Ti": 1024**4,
}


def parse_duration(text: str) -> float:
    """'10s', '500ms', '1h30m' → seconds. Raises ValueError with the accepted form."""
    if not isinstance(text, str) or not _DURATION.match(text):
        raise ValueError(f"not a Gateway API duration: {text!r} (use e.g. 10s, 500ms, 1m30s)")
    return sum(int(n) * _DURATION_UNITS[u] for n, u in _DURATION_PART.findall(text))


def parse_quantity(text: object) -> int:
    """'10Mi', '1G', '1048576' → bytes (Kubernetes quantity suffixes, integers only)."""
    if isinstance(text, int) and not isinstance(text, bool) and text >= 0:
        return text
    m = _QUANTITY.match(text.strip()) if isinstance(text, str) else None
    if not m:
        raise ValueError(f"not a size: {text!r} (use e.g. 1048576, 64Ki, 10Mi, 1G)")
    return int(m.group(1)) * _QUANTITY_UNITS[m.group(2)]
