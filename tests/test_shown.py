"""Text from outside leaves with its control characters escaped: in log lines, whichever handler."""

from __future__ import annotations

import logging

import pytest

from cc_imds.logs import get_logger, shown, shown_lines, std_logger


@pytest.mark.parametrize(("text", "expected"), [
    ("plain text, é and 😀", "plain text, é and 😀"),
    ("\x1b]0;title\x07", "\\x1b]0;title\\x07"),
    ("a\r\nFAKE", "a\\r\\nFAKE"),
    ("\x9b31m\x7f\x00", "\\x9b31m\\x7f\\x00"),
    ("\u202eevil\u2066", "\\u202eevil\\u2066"),
    ("tab\there", "tab\\there"),
])
def test_shown_escapes_what_is_not_printable(text: str, expected: str) -> None:
    assert shown(text) == expected


def test_shown_lines_keeps_the_line_breaks_between_lines() -> None:
    assert shown_lines("one \x1b[2J\ntwo") == "one \\x1b[2J\ntwo"


def test_every_cc_imds_logger_escapes_whatever_handler_takes_it(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    std_logger("cc_imds.watch.watcher").warning("notice: %s", "\x1b[31mred\x07")
    get_logger("cc_imds.imds.client").warning("%s", "x\ny")
    assert [r.getMessage() for r in caplog.records] == ["notice: \\x1b[31mred\\x07", "x\\ny"]
