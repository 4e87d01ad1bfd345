"""The one parser of outside JSON: nesting and size refused before `json` sees them."""

from __future__ import annotations

import json
import sys

import pytest

from cc_imds.jsontext import MAX_DEPTH, JsonRefused, parse


@pytest.mark.parametrize("shape", ["[{}]", '{{"a":{}}}'])
def test_depth_up_to_the_limit_parses_and_one_more_is_refused(shape: str) -> None:
    def nested(depth: int) -> str:
        text = "1"
        for _ in range(depth):
            text = shape.format(text) if shape == '{{"a":{}}}' else "[" + text + "]"
        return text

    assert json.dumps(parse(nested(MAX_DEPTH))).count("1") == 1
    with pytest.raises(JsonRefused, match=rf"^a JSON document nested deeper than {MAX_DEPTH} levels$"):
        parse(nested(MAX_DEPTH + 1))


@pytest.mark.parametrize("text", ["[" * 100_000, "[" * 100_000 + "]" * 100_000, '{"a":' * 50_000,
                                  '[{"a":' * 20_000 + "1" + "}]" * 20_000])
def test_thousands_deep_is_refused_unread(text: str) -> None:
    limit = sys.getrecursionlimit()
    with pytest.raises(JsonRefused, match="nested deeper than 64 levels"):
        parse(text)
    assert sys.getrecursionlimit() == limit


@pytest.mark.parametrize("text", ['"' + "[" * 500 + '"', '["\\"' + "[" * 500 + '"]', '["\\\\", "' + "{" * 500 + '"]',
                                  '{"k": "' + "]" * 500 + "[" * 500 + '"}'])
def test_brackets_inside_strings_are_not_depth(text: str) -> None:
    assert parse(text) == json.loads(text)


def test_size_is_bounded_and_not_json_is_a_plain_value_error() -> None:
    with pytest.raises(JsonRefused, match="^a JSON document larger than 10 bytes$"):
        parse(b'["12345678"]', max_bytes=10)
    for bad in (b"\xff[]", b"not json", b"[1,]"):
        with pytest.raises(ValueError) as caught:
            parse(bad)
        assert not isinstance(caught.value, JsonRefused)
    assert parse(b'{"a": "\xc3\xa9"}') == {"a": "\u00e9"}
