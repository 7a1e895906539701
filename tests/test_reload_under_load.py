"""The reload-under-load proof, shortened: HUP, USR2, TTIN/TTOU and a killed worker under load.

The full run (60 s, 20 HUP, 5 USR2, 2 TTIN/TTOU pairs, a kill) is `scripts/reload-under-load`;
this one checks the same things in about 25 s.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

from bench_lib.reload import Plan, report, run_plan


def test_nothing_fails_under_reloads_upgrades_scaling_and_a_kill() -> None:
    plan = Plan(duration=20, rate=300, connections=30, websockets=8, hups=6, usr2=2, scale_pairs=1, drain_timeout=3)
    tally, _gw = run_plan(plan)
    summary = report(plan, tally)
    assert tally.requests > plan.rate * plan.duration * 0.8, summary
    assert tally.unexpected == 0, summary
    assert tally.signals == {"HUP": 6, "USR2": 2, "TTIN": 1, "TTOU": 1, "KILL": 1}, summary
    assert tally.versions == 1 + 6, summary  # every HUP became a version every worker confirmed
    assert tally.ws_messages > 0 and tally.ws_closed_by_drain > 0, summary  # USR2 did close them, late
