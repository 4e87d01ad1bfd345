"""Every shipped example validates, and applies against the emulator with every output written."""

from __future__ import annotations

from pathlib import Path

import pytest

from cc_imds.declaration.build import documents_from_file
from cc_imds.pipeline import RunOptions, apply, gather
from cc_imds.testing.emulator import Emulator
from tests.conftest import EXAMPLES

EXAMPLE_FILES = sorted(EXAMPLES.glob("*.yaml"))


def test_there_are_examples() -> None:
    assert len(EXAMPLE_FILES) >= 2


@pytest.mark.parametrize("example", EXAMPLE_FILES, ids=lambda p: p.name)
def test_example_applies_against_the_emulator(example: Path, emulator: Emulator, tmp_path: Path) -> None:
    docs = gather(documents=documents_from_file(example))
    changes = apply(docs, RunOptions(endpoint=emulator.url, root=str(tmp_path)))
    declared = [o["path"] for d in docs
                for o in d.document.get("env", []) + d.document.get("files", []) + d.document.get("credentials", [])]
    assert [c.path for c in changes] == [f"{tmp_path}{p}" for p in declared]
    assert all(Path(c.path).stat().st_size > 0 for c in changes)
    assert emulator.count("PUT") == 1
