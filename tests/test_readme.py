"""The docs cannot drift: the declaration reference (docs/declaration.md) matches the schema, its
defaults match the code, and the README
is the front door: it starts with the two commands and reaches every page, and no link is broken."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Dict, List, Set

import pytest

from cc_imds.declaration.build import EVENT_POLL, EVENT_TIMEOUT, ON_CHANGE_TIMEOUT
from cc_imds.declaration.schema import load_schema
from cc_imds.imds.client import ClientSettings
from tests.conftest import REPO

README = (REPO / "README.md").read_text(encoding="utf-8")
DOCS = REPO / "docs"
PAGES = [REPO / "README.md", *sorted(DOCS.glob("*.md"))]


def reference_rows() -> Dict[str, str]:
    """The declaration page's reference table, and the rows of the pages that document a part of
    the schema (a row for a key the table has adds to its text)."""
    page = (DOCS / "declaration.md").read_text(encoding="utf-8")
    sections = [page.split("\n## Declaration reference\n", 1)[1].split("\n## ", 1)[0]]
    credentials = (DOCS / "credentials.md").read_text(encoding="utf-8")
    sections.append(credentials.split("### Reference", 1)[1].split("\n## ", 1)[0])
    fleet = (DOCS / "fleet.md").read_text(encoding="utf-8")
    sections.append(fleet.split("\n## Declaration keys\n", 1)[1].split("\n## ", 1)[0])
    rows: Dict[str, str] = {}
    for section in sections:
        for key, meaning in re.findall(r"^\| `([^`]+)` \| (.+) \|$", section, flags=re.M):
            rows[key] = f"{rows[key]} {meaning}" if key in rows else meaning
    return rows


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


def test_the_readme_starts_with_the_two_commands() -> None:
    """A newcomer's first code to run is `make demo`, then `make test`: the first shell block, in that order."""
    first = re.findall(r"```sh\n(.*?)```", README.split("\n## Try it: two commands\n", 1)[1], flags=re.S)[0]
    commands = [line.split()[:2] for line in first.splitlines() if not line.startswith("#")]  # not its marker
    assert commands == [["make", "demo"], ["make", "test"]]


def test_the_readme_stays_a_front_door() -> None:
    assert len(README.splitlines()) <= 250


def test_every_docs_page_is_linked_from_the_readme() -> None:
    linked = {target.split("#", 1)[0] for target in links(REPO / "README.md")}
    pages = {f"docs/{page.name}" for page in DOCS.iterdir() if page.suffix in (".md", ".1")}
    assert sorted(pages - linked) == []


def links(page: Path) -> List[str]:
    """The relative targets of the page's Markdown links, outside code blocks and code spans."""
    text = re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.S)
    text = re.sub(r"(?<!\[)`[^`\n]*`(?!\])", "", text)
    targets = re.findall(r"\]\(([^)\s]+)\)", text)
    return [target for target in targets if not re.match(r"[a-z][a-z0-9+.-]*:", target)]


def anchors(page: Path) -> Set[str]:
    """GitHub's heading anchors: lower case, punctuation but `-` and `_` dropped, spaces made `-`, repeats numbered."""
    seen: Dict[str, int] = {}
    text = re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.S)
    for heading in re.findall(r"^#{1,6} (.+)$", text, flags=re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        if count:
            seen[f"{slug}-{count}"] = 1
    return set(seen)


@pytest.mark.parametrize("page", PAGES, ids=lambda page: str(page.relative_to(REPO)))
def test_every_relative_link_resolves(page: Path) -> None:
    broken = []
    for target in links(page):
        path, _, anchor = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        if not resolved.exists():
            broken.append(target)
        elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
            broken.append(target)
    assert broken == []
