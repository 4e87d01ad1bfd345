"""Metadata trees (`plan --metadata`, `emulate --tree`) are read like every untrusted input:
any JSON document gives a tree or a TreeError naming the file and the place in it."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cc_imds.imds.tree import TreeError, load_tree, tree_from_document
from tests.conftest import examples

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
        st.sampled_from(["metadata", "dynamic", "userdata", "paths", "values", "a", "$base64", "/latest/x"]),
        inner, max_size=3),
    max_leaves=12,
)


@settings(max_examples=examples(300), deadline=None)
@given(json_values)
def test_any_json_gives_a_tree_or_a_tree_error(document: Any) -> None:
    try:
        tree_from_document(document)
    except TreeError as exc:
        assert str(exc)


@pytest.mark.parametrize(("document", "message"), [
    ({"metadata": {"paths": 5}}, "metadata.paths: expected a JSON object, got int"),
    ({"metadata": {"paths": {"a": 5}, "values": {"a": "x"}}}, "metadata.paths.a: expected a URL path string, got int"),
    ({"metadata": {"paths": {}}, "dynamic": [1]}, "dynamic: expected a JSON object, got list"),
    ({"metadata": {"paths": {}}, "userdata": {"paths": {"u": "/latest/user-data"}, "values": {"u": "abc"}}},
     "userdata.values.u: invalid base64: Incorrect padding"),
    ({"user-data": {"$base64": 5}}, "user-data: invalid $base64 value: "),
    ({"meta-data/x": True}, "meta-data/x: unsupported value of type bool"),
])
def test_malformed_trees_name_the_place(tmp_path: Path, document: Any, message: str) -> None:
    path = tmp_path / "tree.json"
    path.write_text(json.dumps(document))
    with pytest.raises(TreeError) as caught:
        load_tree(str(path))
    assert str(caught.value).startswith(f"{path}: {message}")


def test_unusable_files(tmp_path: Path) -> None:
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(TreeError, match=r"deep.json: refused: a JSON document nested deeper than 64 levels$"):
        load_tree(str(deep))
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(TreeError, match=r"fifo: cannot read: a FIFO, not a regular file$"):
        load_tree(str(tmp_path / "fifo"))
    latin1 = tmp_path / "latin1.json"
    latin1.write_bytes(b'{"meta-data/x": "caf\xe9"}')
    with pytest.raises(TreeError, match=r"latin1.json: not UTF-8 text \(byte 20\)$"):
        load_tree(str(latin1))
