"""The resolver: defaults only on 404, every problem at once, each path once."""

from __future__ import annotations

from typing import Callable

import pytest

from cc_imds.client import ClientSettings, ImdsClient
from cc_imds.config import SourceDocument, build_declaration
from cc_imds.emulator import Emulator
from cc_imds.errors import ResolveError
from cc_imds.resolve import TreeSource, resolve
from cc_imds.tree import MetadataTree, load_tree


def declaration(values: dict):
    return build_declaration([SourceDocument("ud", "imds", {"values": values})])


def test_all_missing_values_are_named_in_one_error(tree: MetadataTree) -> None:
    with pytest.raises(ResolveError) as caught:
        resolve(declaration({
            "a": "meta-data/nope-a",
            "b": "meta-data/nope-b",
            "c": {"path": "meta-data/nope-c", "default": "fine"},
            "d": {"path": "dynamic/instance-identity/document", "key": "nokey"},
            "e": {"path": "meta-data/instance-id", "key": "x"},
        }), TreeSource(tree))
    assert caught.value.problems == [
        "ud: imds.values.a: required value missing: /latest/meta-data/nope-a: not found (404)",
        "ud: imds.values.b: required value missing: /latest/meta-data/nope-b: not found (404)",
        "ud: imds.values.d: /latest/dynamic/instance-identity/document: the JSON document has no key 'nokey'",
        "ud: imds.values.e: /latest/meta-data/instance-id: not a JSON document, so key 'x' cannot be read",
    ]


def test_missing_tags_hint_at_instance_metadata_tags() -> None:
    with pytest.raises(ResolveError, match=r"InstanceMetadataTags"):
        resolve(declaration({"t": "meta-data/tags/instance/"}), TreeSource(load_tree(tags_enabled=False)))


def test_invalid_utf8_is_an_error_not_a_crash() -> None:
    tree = MetadataTree({"meta-data/x": b"ok\xff\xfe"})
    with pytest.raises(ResolveError, match=r"values.x: /latest/meta-data/x: not valid UTF-8 text \(byte 2\)"):
        resolve(declaration({"x": "meta-data/x"}), TreeSource(tree))


def test_directory_becomes_a_mapping_and_json_keys_are_read(tree: MetadataTree) -> None:
    values = resolve(declaration({
        "tags": "meta-data/tags/instance/",
        "region": {"path": "dynamic/instance-identity/document", "key": "region"},
        "env": {"path": "meta-data/tags/instance/Nope", "default": "dev"},
    }), TreeSource(tree))
    assert values.data["tags"]["aws:cloudformation:stack-name"] == "web-stack"
    assert values.data["region"] == "eu-west-1"
    assert values.data["env"] == "dev"


def test_one_get_per_distinct_path_against_the_emulator(make_emulator: Callable[..., Emulator]) -> None:
    emulator = make_emulator()
    decl = declaration({
        "region": {"path": "dynamic/instance-identity/document", "key": "region"},
        "account": {"path": "dynamic/instance-identity/document", "key": "accountId"},
        "tags": "meta-data/tags/instance/",
        "name": "meta-data/tags/instance/Name",
        "iid": "meta-data/instance-id",
    })
    with ImdsClient(ClientSettings(endpoint=emulator.url)) as client:
        values = resolve(decl, client)
    assert values.data["account"] == "123456789012" and values.data["name"] == "web-1"
    gets = [r.path for r in emulator.requests if r.method == "GET"]
    assert sorted(gets) == sorted(set(gets))  # never the same path twice
    # 1 document + 1 listing + 5 tags + instance-id (Name is shared with the tag directory)
    assert (emulator.count("PUT"), len(gets)) == (1, 8)


def test_user_data_stays_bytes_and_is_sensitive() -> None:
    tree = MetadataTree({"user-data": b"\x1f\x8b\x08binary"})
    values = resolve(declaration({"ud": "user-data"}), TreeSource(tree))
    assert values.data["ud"] == b"\x1f\x8b\x08binary" and "ud" in values.sensitive
