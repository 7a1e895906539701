"""Process titles: `ps` shows what each gw process is (gunicorn-style), supervisor and workers alike."""

from __future__ import annotations


def set_title(title: str) -> None:
    """Best effort: without setproctitle the process keeps its command line."""
    try:
        import setproctitle
    except ImportError:  # pragma: no cover - it is a dependency; a broken install still serves
        return
    setproctitle.setproctitle(title)
