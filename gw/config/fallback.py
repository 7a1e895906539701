"""Keep the running version of an object whose new version is invalid (a reload's "Fall Back").

In a cluster the API server refuses an invalid update and the object keeps its last valid state;
a file has no such guard. So that a typo saved into one file does not take that object out of
service at the next reload, the running snapshot's copy of every object the new snapshot refuses
(or, for an HTTPRoute, has rules to drop) is carried over into the new one, as an extra source
file (KEPT_FILE), whose objects win over the new copies. For a route this is the Gateway API's
"Fall Back" approach to a PartiallyInvalid route. The new version stays a plain list of files:
every worker and every replica compiles it to the same config, and `gw check` and `/status` list
both the errors of the new copy and the carried-over object.
"""

from __future__ import annotations

from collections.abc import Callable

import yaml

from gw.config.compile import LoadResult, describe_dropped
from gw.config.errors import Condition, ConfigError
from gw.config.loader import parse_files
from gw.config.parse import object_label, parse_object
from gw.config.resources import KEPT_FILE, HTTPRoute
from gw.config.snapshot import Snapshot


def keep_running_objects(
    read: Snapshot,
    result: LoadResult,
    running: Snapshot,
    compile_snapshot: Callable[[Snapshot], LoadResult],
) -> tuple[Snapshot, LoadResult, list[str]]:
    """`read` (compiled to `result`) plus the running copies of the objects it refuses.

    Returns the snapshot to serve, its compiled result and the labels of the objects kept. An
    object that is new (nothing running to fall back to) is refused as before.
    """
    refused = set(result.resources.rejected)
    partial = {r.meta.label: r for r in result.resources.http_routes if r.dropped and r.meta.file != KEPT_FILE}
    refused |= partial.keys()
    if not refused or not running.files:
        return read, result, []
    try:
        documents = parse_files(running.files)
    except ConfigError:
        return read, result, []  # the running snapshot parsed when it was loaded; be safe anyway
    kept: dict[str, object] = {}
    for file, doc in documents:
        label = object_label(doc)
        # The running copy that was valid (an object may have been invalid there too).
        if label in refused and label not in kept and _whole(parse_object(file, doc, [])):
            kept[label] = doc
    if not kept:
        return read, result, []
    text = yaml.safe_dump_all(list(kept.values()), sort_keys=False).encode()
    with_kept = Snapshot.of([*(s for s in read.files if s[0] != KEPT_FILE), (KEPT_FILE, text)], read.source)
    merged = compile_snapshot(with_kept)
    present = {obj.meta.label for obj in merged.resources.objects()}
    labels = sorted(kept.keys() & present)
    if not labels:
        return read, result, []
    for label in labels:
        merged.errors.append(
            ConfigError(KEPT_FILE, label, "", "its new version is invalid (see above): the running version is kept")
        )
        route = partial.get(label)
        if route is not None:
            dropped, why = describe_dropped(route)
            message = f"Fall Back: the running version is served; rules {dropped} of the new one are invalid: {why}"
            merged.conditions.setdefault(label, []).append(
                Condition("PartiallyInvalid", True, "UnsupportedValue", message)
            )
    return with_kept, merged, labels


def _whole(obj: object) -> bool:
    """A running copy worth keeping: it parsed, (a route) with none of its rules dropped, and (a
    SecurityPolicy) not kept only to fail closed."""
    return obj is not None and not (isinstance(obj, HTTPRoute) and obj.dropped) and not getattr(obj, "invalid", None)
