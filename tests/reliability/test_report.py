"""docs/RELIABILITY.md lists every scenario of the suite, each with recorded figures."""

from __future__ import annotations

import re

from tests.conftest import REPO
from tests.reliability.scenarios import SCENARIOS


def test_every_scenario_has_a_row_with_a_result() -> None:
    text = (REPO / "docs/RELIABILITY.md").read_text(encoding="utf-8")
    rows = dict(re.findall(r"^\| `([a-z0-9-]+)` \| [^|]+ \| ([^|]+) \|", text, flags=re.M))
    assert set(rows) == set(SCENARIOS)
    assert all(result.strip() not in ("", "not run") for result in rows.values())
