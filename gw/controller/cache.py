"""The controller's copy of the cluster: every watched object by kind, namespace and name."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

Object = dict[str, Any]
Key = tuple[str, str]  # (namespace, name); namespace "" for cluster-scoped objects


def key_of(obj: Object) -> Key:
    meta = obj.get("metadata") or {}
    return str(meta.get("namespace") or ""), str(meta.get("name") or "")


def _trimmed(obj: Object) -> Object:
    """The object without managedFields: the largest part of most objects, and nothing gw reads."""
    meta = obj.get("metadata")
    if isinstance(meta, dict) and "managedFields" in meta:
        obj = {**obj, "metadata": {k: v for k, v in meta.items() if k != "managedFields"}}
    return obj


class Cache:
    """Objects as last listed or watched; `on_change(kind)` is called when a kind's content changes.

    A kind's objects are replaced whole by a (re)list, so an object deleted while a watch was
    down goes away too; they are never dropped because a list or watch failed.
    """

    def __init__(self, on_change: Callable[[str], None] = lambda kind: None) -> None:
        self.objects: dict[str, dict[Key, Object]] = {}
        self.on_change = on_change

    def of(self, kind: str) -> dict[Key, Object]:
        return self.objects.get(kind, {})

    def get(self, kind: str, namespace: str, name: str) -> Object | None:
        return self.of(kind).get((namespace, name))

    def replace(self, kind: str, items: Iterable[Object]) -> bool:
        """A kind's objects as a list returned them; True when anything differs from before."""
        fresh = {key_of(obj): _trimmed(obj) for obj in items}
        changed = kind not in self.objects or fresh != self.objects[kind]
        self.objects[kind] = fresh
        if changed:
            self.on_change(kind)
        return changed

    def apply(self, kind: str, event: str, obj: Object) -> bool:
        """One watch event (ADDED, MODIFIED, DELETED); True when it changed the cache."""
        store = self.objects.setdefault(kind, {})
        key = key_of(obj)
        if event == "DELETED":
            changed = store.pop(key, None) is not None
        else:
            obj = _trimmed(obj)
            changed = store.get(key) != obj
            store[key] = obj
        if changed:
            self.on_change(kind)
        return changed
