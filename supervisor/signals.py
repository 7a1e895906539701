"""The supervisor's signals: one table, read by the handlers' installer and checked against the README."""

from __future__ import annotations

import signal

# signal → (Supervisor method, what it does). The README's signal table must say the same.
SIGNALS: dict[signal.Signals, tuple[str, str]] = {
    signal.SIGHUP: (
        "reload",
        "Reload the config from its source and validate it; workers switch to it without being replaced "
        "(open connections and WebSockets stay). An invalid config is logged and the running one kept; "
        "`/status` (`config.rejected`) and `/readyz` (`degraded`) say so until a reload succeeds.",
    ),
    signal.SIGUSR2: (
        "upgrade",
        "Replace the workers one at a time with freshly started processes (new code after a package upgrade); "
        "each new worker is ready before its predecessor stops accepting and drains.",
    ),
    signal.SIGTERM: (
        "shutdown",
        "Graceful shutdown: stop accepting, finish in-flight requests, close idle keep-alive connections, "
        "within `GW_DRAIN_TIMEOUT`.",
    ),
    signal.SIGINT: ("shutdown", "Same as `TERM` (Ctrl-C)."),
    signal.SIGQUIT: ("quit", "Fast shutdown: workers exit at once, in-flight requests are cut."),
    signal.SIGTTIN: ("add_worker", "One worker more."),
    signal.SIGTTOU: ("remove_worker", "One worker less (it drains first; never below one)."),
}
