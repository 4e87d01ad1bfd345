"""Untrusted input files: only regular files, bounded in size; YAML bounded in nesting and
alias expansion, with PyYAML's C loader and its pure-Python one alike."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any, List

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from cc_imds.untrusted import (
    MAX_DECLARATION_BYTES,
    MAX_YAML_DEPTH,
    MAX_YAML_NODES,
    InputError,
    load_yaml,
    read_bytes,
    read_text,
)
from tests.conftest import examples
from tests.hostile import ALIAS_BOMB, nested

LOADERS = [yaml.SafeLoader] + ([yaml.CSafeLoader] if hasattr(yaml, "CSafeLoader") else [])
loaders = pytest.mark.parametrize("loader", LOADERS, ids=lambda loader: loader.__name__)

@loaders
def test_alias_bomb_is_refused_at_once(loader: Any) -> None:
    with pytest.raises(InputError) as caught:  # unbounded, this runs for minutes and takes gigabytes
        load_yaml("bomb.yaml", ALIAS_BOMB, loader)
    assert str(caught.value) == f"bomb.yaml: line 5, column 12: more than {MAX_YAML_NODES} nodes once aliases " \
                                "are expanded"


@loaders
def test_aliases_within_the_budget_are_kept(loader: Any) -> None:
    text = "env:\n  - vars: &shared {A: a, B: b}\n  - vars: *shared\n"
    document = load_yaml("d.yaml", text, loader)
    assert document["env"][1]["vars"] == {"A": "a", "B": "b"}


@loaders
def test_expansion_exactly_at_the_budget_is_accepted(loader: Any) -> None:
    # A flow sequence of N scalars is N + 1 nodes; a mapping {x: seq} adds 2 more.
    text = "x: [" + ", ".join(["1"] * (MAX_YAML_NODES - 3)) + "]\n"
    assert len(load_yaml("n.yaml", text, loader)["x"]) == MAX_YAML_NODES - 3
    with pytest.raises(InputError, match="more than"):
        load_yaml("n.yaml", text.replace("[", "[1, "), loader)


@loaders
def test_nesting_beyond_the_depth_is_refused_without_recursion_error(loader: Any) -> None:
    assert load_yaml("ok.yaml", nested(MAX_YAML_DEPTH - 1), loader) is not None  # the mapping is one level
    with pytest.raises(InputError) as caught:
        load_yaml("deep.yaml", nested(20_000), loader)
    # The mapping is the first level: the 64th "[" (column 3 + 64) is one too many.
    assert str(caught.value) == f"deep.yaml: line 1, column {3 + MAX_YAML_DEPTH}: nested deeper than 64 levels"


@loaders
def test_nesting_through_an_alias_counts_too(loader: Any) -> None:
    half = MAX_YAML_DEPTH // 2 + 1
    text = "a: &a " + "[" * half + "]" * half + "\nb: " + "[" * half + "*a" + "]" * half + "\n"
    with pytest.raises(InputError, match=r"line 2, column \d+: alias \*a nests deeper than 64 levels"):
        load_yaml("d.yaml", text, loader)


@loaders
def test_recursive_alias_is_refused(loader: Any) -> None:
    with pytest.raises(InputError, match=r"r.yaml: line 1, column 11: alias \*a is inside the node it names"):
        load_yaml("r.yaml", "x: &a [1, *a]\n", loader)


@loaders
def test_syntax_errors_name_line_and_column(loader: Any) -> None:
    with pytest.raises(InputError, match=r"^b.yaml: invalid YAML: line 2, column 1: "):
        load_yaml("b.yaml", "a: [\n", loader)


@loaders
@settings(max_examples=examples(200), deadline=None)
@given(st.text(st.sampled_from("ab:-[]{},&*!|>'\"#? \n\t0"), max_size=60))
def test_any_text_loads_or_fails_with_input_error(loader: Any, text: str) -> None:
    try:
        load_yaml("g.yaml", text, loader)
    except InputError as exc:
        assert str(exc).startswith("g.yaml: ")


# -- files ------------------------------------------------------------------------------------
def test_regular_file_is_read(tmp_path: Path) -> None:
    path = tmp_path / "d.yaml"
    path.write_bytes(b"a: 1\n")
    assert read_text(path) == "a: 1\n"


def test_oversized_file_is_refused_before_reading(tmp_path: Path) -> None:
    path = tmp_path / "huge.yaml"
    with open(path, "wb") as handle:
        handle.truncate(1 << 40)  # sparse: a terabyte that costs nothing, never read
    with pytest.raises(InputError) as caught:
        read_text(path)
    assert str(caught.value) == f"{path}: {1 << 40} bytes exceeds the {MAX_DECLARATION_BYTES}-byte limit"


def test_file_at_the_limit_is_read(tmp_path: Path) -> None:
    path = tmp_path / "big"
    path.write_bytes(b"x" * 1000)
    assert len(read_bytes(path, 1000)) == 1000
    with pytest.raises(InputError, match="1000 bytes exceeds the 999-byte limit"):
        read_bytes(path, 999)


def in_thread(function: Any, *args: Any) -> List[Any]:
    """Run `function`, failing the test if it blocks: a FIFO must never hang a read."""
    outcome: List[Any] = []

    def run() -> None:
        try:
            outcome.append(function(*args))
        except InputError as exc:
            outcome.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout=30)
    assert not thread.is_alive(), "blocked"
    return outcome


@pytest.mark.parametrize(("make", "kind"), [
    (lambda p: os.mkfifo(p), "a FIFO"),
    (lambda p: p.mkdir(), "a directory"),
])
def test_special_files_are_refused_without_blocking(tmp_path: Path, make: Any, kind: str) -> None:
    path = tmp_path / "special.yaml"
    make(path)
    [outcome] = in_thread(read_text, path)
    assert str(outcome) == f"{path}: cannot read: {kind}, not a regular file"


def test_devices_are_refused() -> None:
    [outcome] = in_thread(read_text, "/dev/zero")
    assert str(outcome) == "/dev/zero: cannot read: a character device, not a regular file"


def test_missing_and_non_utf8(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"/missing.yaml: cannot read: No such file or directory$"):
        read_text(tmp_path / "missing.yaml")
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"name: caf\xe9\n")
    with pytest.raises(InputError, match=r"latin1.yaml: not UTF-8 text \(byte 9\)$"):
        read_text(path)
