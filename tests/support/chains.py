"""A compiled config installed as a worker installs it, without sockets: rules get their phase chains."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from gw.config.model import CompiledConfig
from gw.policies.registry import PHASES, Build
from gw.proxy.dataplane import DataPlane
from gw.settings import Settings


@contextmanager
def installed(config: CompiledConfig, phases: Sequence[tuple[str, Build]] = PHASES) -> Iterator[DataPlane]:
    """The worker state serving `config`; its event loop never runs and is closed afterwards."""
    loop = asyncio.new_event_loop()
    plane = DataPlane(loop, Settings.from_env({"GW_ACCESS_LOG": "off"}), phases)
    try:
        plane.install(config)
        yield plane
    finally:
        plane.stop()
        loop.close()


def kinds(rule: Any) -> list[str]:
    """The phase kinds of an installed rule's chain, in order ([] for no chain)."""
    return [] if rule.chain is None else [p.kind for p in rule.chain.phases]
