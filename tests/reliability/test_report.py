"""docs/RELIABILITY.md lists every scenario of the suite; the check that `make test` runs
against its own run finds every way the document and a run can disagree."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict

from tests.conftest import REPO
from tests.reliability.report import Record, check, document_rows, load, main, render
from tests.reliability.scenarios import SCENARIOS


def test_every_scenario_has_a_row_with_a_result() -> None:
    rows = document_rows((REPO / "docs/RELIABILITY.md").read_text(encoding="utf-8"))
    assert set(rows) == set(SCENARIOS), "regenerate the document: make reliability-doc"
    assert all(rows[s][0] == checks.replace("|", "\\|") for s, checks in SCENARIOS.items())
    assert all(result.strip() not in ("", "not run") for _, result in rows.values())


def a_run() -> Dict[str, Record]:
    lines = [json.dumps({"id": s, "result": f"result of {s}", "figures": {"exit": 0, "seconds": 0.5, "peak MiB": 20},
                         "python": "3.13.0"}) for s in SCENARIOS]
    return load(lines)


def test_a_rendered_document_agrees_with_its_run() -> None:
    records = a_run()
    document = render(records)
    assert check(records, document) == []
    first = next(iter(SCENARIOS))
    assert f"| `{first}` | {SCENARIOS[first]} | result of {first} | 0 | 0.5 |  |  |  | peak MiB 20 |" in document


def test_figures_may_differ_but_results_may_not() -> None:
    records = a_run()
    document = render(records)
    first, second = list(SCENARIOS)[:2]
    records[first]["figures"] = {"exit": 0, "seconds": 9.9}
    assert check(records, document) == []
    records[second]["result"] = "something else"
    assert check(records, document) == [
        f"{second}: the document says 'result of {second}', the run 'something else'"]


def test_missing_extra_and_stale_rows_are_reported() -> None:
    records = a_run()
    first, second = list(SCENARIOS)[:2]
    document = render(records).replace(f"| `{first}` |", "| `no-longer-a-scenario` |")
    document = document.replace(SCENARIOS[second], "an old description")
    del records[second]
    assert check(records, document) == [
        f"{first}: no row in the document",
        f"{second}: the run recorded no result (did its test run, or skip?)",
        f"{second}: the document says it checks 'an old description', scenarios.py {SCENARIOS[second]!r}",
        "no-longer-a-scenario: a row in the document, but no such scenario",
    ]


def test_the_last_record_of_a_scenario_counts() -> None:
    first = next(iter(SCENARIOS))
    lines = [json.dumps({"id": first, "result": r, "figures": {}}) for r in ("early", "final")]
    assert load(lines)[first]["result"] == "final"


def test_check_command_exit_status(tmp_path: Path) -> None:
    run = tmp_path / "run.jsonl"
    run.write_text("\n".join(json.dumps(r) for r in a_run().values()) + "\n")
    document = tmp_path / "RELIABILITY.md"
    document.write_text(render(a_run()))
    assert main(["check", str(run), str(document)]) == 0
    document.write_text(render(a_run()).replace("result of", "outcome of", 1))
    assert main(["check", str(run), str(document)]) == 1
    assert main(["render"]) == 2
