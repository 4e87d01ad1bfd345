"""The scrubber: no form of a secret survives in a message, and nothing else changes."""

from __future__ import annotations

import json
from typing import Callable, List

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cc_imds.declaration.build import SourceDocument, build_declaration
from cc_imds.errors import ImdsError, RenderError, WriteError
from cc_imds.outputs.scrub import REDACTED, Scrubber
from cc_imds.pipeline import scrubbed, scrubber_for

# Any text a value can hold (UTF-8: no lone surrogates).
texts = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=30)

# The ways a message may quote a value: as is, in a repr, in JSON, both, in a bytes repr.
QUOTINGS: List[Callable[[str], str]] = [
    lambda s: s,
    repr,
    ascii,
    json.dumps,
    lambda s: json.dumps(s, ensure_ascii=False),
    lambda s: repr({"key": s}),
    lambda s: repr(["it's", s]),
    lambda s: repr(json.dumps(s)),
    lambda s: json.dumps(repr(s)),
    lambda s: repr(s.encode("utf-8")),
    lambda s: repr("'\"" + s),
]


def revealed(text: str, secret: str) -> bool:
    """Whether some stretch of `text` between two REDACTED holds the secret, as is or escaped."""
    forms = {secret, repr(secret)[1:-1], ascii(secret)[1:-1], json.dumps(secret)[1:-1],
             json.dumps(secret, ensure_ascii=False)[1:-1], repr(secret.encode("utf-8"))[2:-1]}
    return any(form in piece for piece in text.split(REDACTED) for form in forms)


@given(secret=texts, quoting=st.sampled_from(QUOTINGS), before=st.text(max_size=10), after=st.text(max_size=10))
def test_no_quoting_of_a_secret_survives(secret: str, quoting: Callable[[str], str], before: str, after: str) -> None:
    message = f"{before}: {quoting(secret)} {after}"
    assert not revealed(Scrubber([secret])(message), secret)


@given(leaf=texts, quoting=st.sampled_from(QUOTINGS))
def test_each_string_of_a_json_document_is_a_secret(leaf: str, quoting: Callable[[str], str]) -> None:
    document = json.dumps({"Code": "Success", "SecretAccessKey": leaf, "Nested": [{"Token": leaf[::-1]}]}, indent=2)
    scrub = Scrubber([document])
    assert not revealed(scrub(f"x {quoting(leaf)} y"), leaf)
    assert not revealed(scrub(f"x {quoting(leaf[::-1])} y"), leaf[::-1])
    assert not revealed(scrub(repr(document)), leaf)


@given(message=st.text(max_size=50))
def test_a_message_without_a_secret_is_unchanged(message: str) -> None:
    secret = "\x00never-in-a-message\x00"
    assert Scrubber([secret])(message) == message
    assert Scrubber()(message) == message


def test_bytes_and_mappings_as_resolved() -> None:
    scrub = Scrubber([b"raw-user-data\xff", {"role": '{"Token": "tok/en=="}'}])
    assert scrub("a raw-user-data\udcff b 'raw-user-data\\xff' c tok/en== d") == (
        f"a {REDACTED} b '{REDACTED}' c {REDACTED} d"
    )


def test_overlapping_occurrences_become_one_marker() -> None:
    assert Scrubber(["abab", "bab"])("xababab y") == f"x{REDACTED} y"


def test_a_scrubbed_error_keeps_its_type_exit_code_and_fields() -> None:
    scrub = Scrubber(["s3cr3t"])
    problems = RenderError(["a: s3cr3t here", "b: fine"]).scrubbed(scrub)
    assert type(problems) is RenderError and problems.exit_code == 1
    assert problems.problems == [f"a: {REDACTED} here", "b: fine"] and str(problems) == "\n".join(problems.problems)
    imds = ImdsError("/latest/s3cr3t", "bad s3cr3t").scrubbed(scrub)
    assert (type(imds), imds.exit_code, imds.path, str(imds)) == (
        ImdsError, 3, f"/latest/{REDACTED}", f"/latest/{REDACTED}: bad {REDACTED}")
    write = WriteError("/etc/x", "s3cr3t").scrubbed(scrub)
    assert (type(write), write.exit_code, str(write)) == (WriteError, 4, f"/etc/x: {REDACTED}")


def test_the_pipeline_boundary_scrubs_errors_and_defects() -> None:
    scrub = Scrubber(["s3cr3t"])

    def fails() -> None:
        try:
            raise ValueError("chained s3cr3t")
        except ValueError:
            raise RenderError(["x: s3cr3t"]) from None

    with pytest.raises(RenderError) as caught:
        scrubbed(scrub, fails)
    assert caught.value.problems == [f"x: {REDACTED}"]
    assert caught.value.__context__ is None and caught.value.__cause__ is None

    def defect() -> None:
        raise KeyError("s3cr3t")

    with pytest.raises(KeyError) as bug:  # a defect keeps its type and traceback, not the secret
        scrubbed(scrub, defect)
    assert str(bug.value) == repr(REDACTED) and bug.value.__traceback__ is not None


def test_one_builder_hides_sensitive_defaults_values_and_tokens_and_nothing_else() -> None:
    """pipeline.scrubber_for, which apply, plan and the watcher all use."""
    declaration = build_declaration([SourceDocument("test", "imds", {"values": {
        "key": {"path": "meta-data/key", "sensitive": True, "default": "dflt-s3cr3t"},
        "iid": "meta-data/instance-id",
    }, "env": [{"path": "/etc/x.env", "format": "shell", "vars": {"K": "key", "I": "iid"}}]})])
    scrub = scrubber_for(declaration, {"key": "val-s3cr3t", "iid": "i-0123"}, ["tok-s3cr3t"])
    message = "dflt-s3cr3t val-s3cr3t tok-s3cr3t i-0123"
    assert scrub(message) == f"{REDACTED} {REDACTED} {REDACTED} i-0123"
    assert scrubber_for(declaration)(message) == f"{REDACTED} val-s3cr3t tok-s3cr3t i-0123"
