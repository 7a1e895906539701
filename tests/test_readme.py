"""The README documents every GW_* variable with its real default (the table is generated from Settings)."""

from pathlib import Path

import pytest

from gw.settings import Settings

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


@pytest.mark.parametrize(("variable", "default", "meaning"), Settings.table(), ids=lambda v: str(v)[:40])
def test_every_setting_is_in_the_readme_table(variable: str, default: str, meaning: str) -> None:
    shown_default = f"`{default}`" if default else "(none)"
    assert f"| `{variable}` | {shown_default} | {meaning} |" in README


def test_readme_names_no_unknown_setting() -> None:
    known = {v for v, _, _ in Settings.table()}
    import re

    mentioned = set(re.findall(r"\bGW_[A-Z_]+[A-Z]", README))
    assert mentioned <= known, mentioned - known
