"""scripts/bench: gw against nginx as a reverse proxy, measured as docs/architecture.md describes."""
