"""The README cannot drift: its reference table matches the schema, its defaults match the
code, and its cloud-config examples validate."""

from __future__ import annotations

import re
from typing import Any, Dict, List, Set

import pytest
import yaml

from cc_imds.declaration.build import EVENT_POLL, EVENT_TIMEOUT, ON_CHANGE_TIMEOUT, SourceDocument, build_declaration
from cc_imds.declaration.schema import load_schema
from cc_imds.imds.client import ClientSettings
from tests.conftest import REPO

README = (REPO / "README.md").read_text(encoding="utf-8")
CREDENTIALS_PAGE = (REPO / "docs/credentials.md").read_text(encoding="utf-8")


def reference_rows() -> Dict[str, str]:
    """The README's reference table, and the rows of the pages that document a part of the schema."""
    section = README.split("### Declaration reference", 1)[1].split("\n## ", 1)[0]
    pages = CREDENTIALS_PAGE.split("### Reference", 1)[1].split("\n## ", 1)[0]
    return dict(re.findall(r"^\| `([^`]+)` \| (.+) \|$", section + pages, flags=re.M))


def schema_keys() -> Set[str]:
    schema = load_schema()
    defs = schema["definitions"]
    keys = set(schema["properties"])
    keys |= {f"values.NAME.{k}" for k in defs["value"]["else"]["properties"]}
    keys |= {f"env[].{k}" for k in defs["env_file"]["properties"]}
    keys |= {f"files[].{k}" for k in defs["template_file"]["properties"]}
    keys |= {f"events[].{k}" for k in defs["event_action"]["properties"]}
    keys |= {f"credentials[].{k}" for k in defs["credential_file"]["properties"]}
    return keys


def test_reference_table_matches_the_schema() -> None:
    assert set(reference_rows()) == schema_keys()


@pytest.mark.parametrize("key", ["token_ttl", "timeout", "deadline", "concurrency"])
def test_documented_defaults_match_the_code(key: str) -> None:
    default = getattr(ClientSettings(), key)
    assert f"Default `{default:g}`" in reference_rows()[key]


def test_on_change_row_names_every_key_of_its_long_form() -> None:
    long_form = load_schema()["definitions"]["on_change"]["else"]["properties"]
    row = reference_rows()["env[].on_change"]
    assert all(f"{key}:" in row for key in long_form)


def test_documented_command_defaults_match_the_code() -> None:
    rows = reference_rows()
    assert f"Timeout default `{ON_CHANGE_TIMEOUT:g}`" in rows["env[].on_change"]
    assert f"Default `{EVENT_TIMEOUT:g}`" in rows["events[].timeout"]
    assert f"Default `{EVENT_POLL:g}`" in rows["events[].poll"]


def test_documented_endpoint_and_imdsv1_defaults() -> None:
    assert ClientSettings().endpoint == "auto" and "`auto` (default" in reference_rows()["endpoint"]
    assert ClientSettings().imdsv1 == "never" and "`never` (default)" in reference_rows()["imdsv1"]


def yaml_blocks() -> List[Any]:
    blocks = re.findall(r"```yaml\n(.*?)```", README, flags=re.S)
    return [yaml.safe_load(block) for block in blocks]


def test_readme_declarations_validate() -> None:
    checked = 0
    for block in yaml_blocks():
        if isinstance(block, dict) and "imds" in block:
            build_declaration([SourceDocument("README", "imds", block["imds"])])
            checked += 1
        elif isinstance(block, dict) and "values" in block:  # a drop-in file
            build_declaration([SourceDocument("README", "", block)])
            checked += 1
        for item in (block or {}).get("write_files", []) if isinstance(block, dict) else []:
            if item["path"].startswith("/etc/cc-imds/conf.d/"):
                build_declaration([SourceDocument("README", "", yaml.safe_load(item["content"]))])
                checked += 1
    assert checked >= 4
