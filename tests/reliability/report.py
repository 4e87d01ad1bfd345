"""docs/RELIABILITY.md, generated from what a run of the reliability suite recorded, and
checked against such a run.

Every scenario test records one JSON line (id, result, figures) when
CC_IMDS_RELIABILITY_REPORT names a file. `make test` records its own runs and then checks
that the committed document lists exactly the scenarios the run ran, with the same
results (figures such as seconds may differ). `make reliability-doc` runs the suite and
rewrites the document:

    python -m tests.reliability.report render RUN.jsonl > docs/RELIABILITY.md
    python -m tests.reliability.report check RUN.jsonl docs/RELIABILITY.md
"""

from __future__ import annotations

import json
import re
import sys
from typing import Dict, List, Sequence

from tests.reliability.scenarios import SCENARIOS

COLUMNS = ("exit", "seconds", "PUT", "GET", "retries")
ROW = re.compile(r"^\| `([a-z0-9-]+)` \| (.*?) \| (.*?) \|", flags=re.M)
Record = Dict[str, object]


def load(lines: Sequence[str]) -> Dict[str, Record]:
    """The run's record for each scenario: the last one, if a test recorded several."""
    records: Dict[str, Record] = {}
    for line in lines:
        if line.strip():
            record = json.loads(line)
            records[str(record["id"])] = record
    return records


def _cell(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _other_figures(figures: Dict[str, object]) -> str:
    return ", ".join(f"{key} {value}" for key, value in figures.items() if key not in COLUMNS)


def render(records: Dict[str, Record]) -> str:
    pythons = sorted({str(r.get("python", "")) for r in records.values()} - {""})
    lines = [
        "# Reliability and security",
        "",
        "Every scenario runs cc-imds in a separate process, as a user would: most run `cc-imds apply --debug` against",
        "the bundled emulator on loopback with a fault injected, over outputs that already exist, and check that it",
        "ends in exactly the right outputs or in a clear error with every existing file byte-identical (content and",
        "mode) and no temp file left; the hostile-input scenarios feed the CLI files built to exhaust or hang it.",
        "After every run, stdout and stderr are searched for every token the emulator issued and for the IAM",
        "`SecretAccessKey` and `Token`: zero hits in every scenario. The same search runs over cloud-init's own log",
        "in the real-cloud-init tests (tests/e2e). The `watch-` scenarios run `cc-imds watch` instead, and also search",
        "its status file.",
        "",
        "This document is generated from a run: `make reliability-doc`. `make test` records its own runs and fails",
        "if the scenarios or their results differ from the ones below (figures such as seconds may differ).",
        f"Figures: Python {', '.join(pythons) or '?'} on 2 cores, in the run that wrote this; seconds include",
        "start-up (about 0.15 s). `retries` counts retried attempts in the debug log; `peak MiB` is the process's",
        "maximum resident memory.",
        "",
        "| scenario | what it checks | result | exit | seconds | PUT | GET | retries | other figures |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for scenario_id, checks in SCENARIOS.items():
        record = records.get(scenario_id)
        figures = record.get("figures", {}) if record else {}
        assert isinstance(figures, dict)
        cells = [_cell(figures.get(c, "")) for c in COLUMNS] + [_cell(_other_figures(figures))]
        result = _cell(record["result"]) if record else "not run"
        lines.append(f"| `{scenario_id}` | {_cell(checks)} | {result} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Secrets are also checked where they are written: files holding a sensitive value are created with their final",
        "mode from the first byte (tests/test_write.py watches the mode at creation, with no umask to help).",
        "",
        "## Keep-alive and a server out of step",
        "",
        "A server that sends more body than its `Content-Length` leaves bytes on a kept-alive connection that the next",
        "request would read as its answer. Nothing in an IMDS answer says which request it answers, so the client",
        "decides by what it can see: a connection is reused only when its answer ended exactly where its length said,",
        "nothing more was buffered, and a zero-timeout poll finds nothing to read when it is taken again. The first",
        "time surplus shows up (left after an answer, or found on an idle connection), that connection is closed, an",
        "answer read on a reused connection with surplus behind it is asked again on a fresh one, and the endpoint is",
        "marked out of step: every later request to it gets a fresh connection, for the life of the client (a",
        "`get`, an `apply`, the watcher). What this cannot catch: surplus that arrives after the poll that takes the",
        "connection and is read as the next answer, before the real answer arrives. Then one answer, from the same",
        "server, may be wrong; the surplus found afterwards stops every further reuse. Only a server that breaks HTTP",
        "can do this, and it could send a wrong answer anyway. `keepalive-surplus-at-once` and",
        "`keepalive-surplus-late` check both detected cases.",
        "",
    ]
    return "\n".join(lines)


def document_rows(text: str) -> Dict[str, List[str]]:
    """Scenario id -> [what it checks, result], as the document shows them."""
    return {m.group(1): [m.group(2), m.group(3)] for m in ROW.finditer(text)}


def check(records: Dict[str, Record], document: str) -> List[str]:
    """Every difference between the document and the run, one line each; empty when they agree."""
    rows = document_rows(document)
    problems = []
    for scenario_id, checks in SCENARIOS.items():
        record = records.get(scenario_id)
        row = rows.get(scenario_id)
        if record is None:
            problems.append(f"{scenario_id}: the run recorded no result (did its test run, or skip?)")
        if row is None:
            problems.append(f"{scenario_id}: no row in the document")
            continue
        if row[0] != _cell(checks):
            problems.append(f"{scenario_id}: the document says it checks {row[0]!r}, scenarios.py {checks!r}")
        if record is not None and row[1] != _cell(record["result"]):
            problems.append(f"{scenario_id}: the document says {row[1]!r}, the run {record['result']!r}")
    for extra in sorted(set(rows) - set(SCENARIOS)):
        problems.append(f"{extra}: a row in the document, but no such scenario")
    return problems


def main(argv: Sequence[str]) -> int:
    if len(argv) == 2 and argv[0] == "render":
        with open(argv[1], encoding="utf-8") as handle:
            sys.stdout.write(render(load(handle.readlines())))
        return 0
    if len(argv) == 3 and argv[0] == "check":
        with open(argv[1], encoding="utf-8") as handle:
            records = load(handle.readlines())
        with open(argv[2], encoding="utf-8") as handle:
            problems = check(records, handle.read())
        for problem in problems:
            print(f"{argv[2]}: {problem}", file=sys.stderr)
        if problems:
            print(f"{argv[2]} does not match this run: if the differences are meant, regenerate it with "
                  "`make reliability-doc`", file=sys.stderr)
        return 1 if problems else 0
    print("usage: python -m tests.reliability.report render RUN.jsonl | check RUN.jsonl DOCUMENT", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
