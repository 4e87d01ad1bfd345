"""The resolver: defaults only on 404, every problem at once, each path once."""

from __future__ import annotations

from typing import Callable

import pytest

from cc_imds.deadline import Deadline
from cc_imds.declaration.build import SourceDocument, build_declaration
from cc_imds.errors import ResolveError
from cc_imds.imds.client import ClientSettings, ImdsClient
from cc_imds.imds.tree import MetadataTree, load_tree
from cc_imds.testing.emulator import Emulator
from cc_imds.values import TreeSource, resolve


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


# -- a default stands in for a 404 only ----------------------------------------------------------
OWNER = {"owner": {"path": "meta-data/tags/instance/Owner", "default": "nobody"}}  # no such tag: a 404


def warm_client(emulator: Emulator) -> ImdsClient:
    """A client that already holds its token, so that an injected fault hits the value's GET."""
    client = ImdsClient(ClientSettings(endpoint=emulator.url, timeout=0.3))
    client.fetch("meta-data/instance-id")
    return client


def test_the_default_stands_in_for_a_404(emulator: Emulator) -> None:
    with warm_client(emulator) as client:
        assert resolve(declaration(OWNER), client).data == {"owner": "nobody"}
    assert emulator.requests[-1].status == 404


@pytest.mark.parametrize(("status", "problem"), [
    (500, "no usable answer within the 1s deadline (HTTP 500)"),
    (503, "no usable answer within the 1s deadline (HTTP 503)"),
    (429, "no usable answer within the 1s deadline (HTTP 429)"),
    (403, "IMDS endpoint disabled, or request forbidden (HTTP 403)"),
    (400, "unexpected HTTP 400"),
])
def test_the_default_is_not_used_when_imds_fails(emulator: Emulator, status: int, problem: str) -> None:
    with warm_client(emulator) as client:
        emulator.fail_next(status, count=1000)
        with pytest.raises(ResolveError) as caught:
            resolve(declaration(OWNER), client, deadline=Deadline(1))
    assert caught.value.problems == [f"ud: imds.values.owner: /latest/meta-data/tags/instance/Owner: {problem}"]


def test_the_default_is_not_used_when_imds_times_out(emulator: Emulator) -> None:
    with warm_client(emulator) as client:
        emulator.latency = 0.6  # twice the attempt timeout
        with pytest.raises(ResolveError) as caught:
            resolve(declaration(OWNER), client, deadline=Deadline(1))
    [problem] = caught.value.problems
    assert problem.startswith("ud: imds.values.owner: /latest/meta-data/tags/instance/Owner: "
                              "no usable answer within the 1s deadline (no answer within")


# -- names and deadlines -----------------------------------------------------------------------------
def test_only_the_named_values_are_resolved(emulator: Emulator) -> None:
    decl = declaration({"iid": "meta-data/instance-id", "region": "meta-data/placement/region",
                        "tags": "meta-data/tags/instance/"})
    with ImdsClient(ClientSettings(endpoint=emulator.url)) as client:
        values = resolve(decl, client, names=["region"], deadline=Deadline(5))
    assert values.data == {"region": "eu-west-1"}
    assert [r.path for r in emulator.requests if r.method == "GET"] == ["/latest/meta-data/placement/region"]


def test_an_unknown_name_is_an_error() -> None:
    with pytest.raises(ResolveError, match=r"^no value named 'nope' is declared$"):
        resolve(declaration({"iid": "meta-data/instance-id"}), TreeSource(load_tree()), names=["iid", "nope"])


def test_a_tree_source_honours_the_deadline(tree: MetadataTree) -> None:
    now = [0.0]
    deadline = Deadline(1, clock=lambda: now[0])
    now[0] = 1.0
    with pytest.raises(ResolveError) as caught:
        resolve(declaration({"iid": "meta-data/instance-id"}), TreeSource(tree), deadline=deadline)
    assert caught.value.problems == ["ud: imds.values.iid: /latest/meta-data/instance-id: not read: "
                                     "the 1s deadline passed"]
