"""scripts/bench: gw against nginx as a reverse proxy, measured as DESIGN.md §2 describes."""
