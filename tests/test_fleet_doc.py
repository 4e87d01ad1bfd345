"""docs/fleet.md cannot drift: its YAML examples validate, and its metrics table is the file's."""

from __future__ import annotations

import re
from typing import Any, List

import yaml

from cc_imds.declaration.build import WAIT_MAX_TIMES_MIN, SourceDocument, build_declaration
from cc_imds.declaration.schema import load_schema
from cc_imds.watch.metrics import FAMILIES
from tests.conftest import REPO

PAGE = (REPO / "docs" / "fleet.md").read_text(encoding="utf-8")


def yaml_blocks() -> List[Any]:
    return [yaml.safe_load(block) for block in re.findall(r"```yaml\n(.*?)```", PAGE, flags=re.S)]


def test_every_yaml_example_validates() -> None:
    blocks = yaml_blocks()
    assert len(blocks) == 3
    for block in blocks:
        document = block["imds"] if "imds" in block else block  # cloud-config, or a drop-in file
        build_declaration([SourceDocument("docs/fleet.md", "imds" if "imds" in block else "", document)])


def test_the_metrics_table_names_every_metric_with_its_type() -> None:
    rows = re.findall(r"^\| `(cc_imds_[a-z_]+)` \| (counter|gauge) \|", PAGE, flags=re.M)
    assert rows == [(name, kind) for name, (kind, _) in FAMILIES.items()]


def test_the_documented_bounds_are_the_schema_s() -> None:
    on_change = load_schema()["definitions"]["on_change"]["else"]["properties"]
    wait = on_change["wait"]["properties"]
    assert f"`min` seconds ({wait['min']['minimum']} to {wait['min']['maximum']})" in PAGE
    assert f"`max` seconds ({wait['max']['minimum']} to {wait['max']['maximum']})" in PAGE
    assert f"up to that many seconds ({on_change['splay']['minimum']} to {on_change['splay']['maximum']})" in PAGE
    assert WAIT_MAX_TIMES_MIN == 4 and "`max` defaults to 4 times `min`" in PAGE
