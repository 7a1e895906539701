"""`python -m gw` is the `gw` command."""

from gw.cli import main

raise SystemExit(main())
