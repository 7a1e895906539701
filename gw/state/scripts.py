"""Lua scripts from gw/state/lua/, called by SHA and reloaded transparently after NOSCRIPT."""

from __future__ import annotations

import hashlib
from importlib import resources
from typing import Any

from redis.exceptions import NoScriptError


class Script:
    """One server-side script: EVALSHA first; EVAL on NOSCRIPT, which also caches it again.

    EVAL (rather than SCRIPT LOAD + EVALSHA) routes by the first key, so on a Cluster the script
    lands on the node that owns the key family, and a restarted, flushed or failed-over server
    costs one extra round trip once.
    """

    __slots__ = ("name", "sha", "source")

    def __init__(self, name: str, source: str) -> None:
        self.name = name
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()

    async def __call__(self, client: Any, keys: list[str], args: list[Any]) -> Any:
        try:
            return await client.evalsha(self.sha, len(keys), *keys, *args)
        except NoScriptError:
            return await client.eval(self.source, len(keys), *keys, *args)


def load(name: str) -> Script:
    """The script gw/state/lua/<name>.lua."""
    source = (resources.files("gw.state") / "lua" / f"{name}.lua").read_text()
    return Script(name, source)
