"""Retry pacing: floors and caps, whatever a server says."""

from __future__ import annotations

import email.utils

from hypothesis import given, settings
from hypothesis import strategies as st

from cc_imds.imds.retry import RETRY_AFTER_CAP, backoff, delay, retry_after

NOW = 1_700_000_000.0


def lowest(low: float, high: float) -> float:
    return low


def highest(low: float, high: float) -> float:
    return high


def test_backoff_doubles_from_a_floor_to_a_cap() -> None:
    assert [backoff(n, lowest) for n in range(7)] == [0.05, 0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    assert [backoff(n, highest) for n in range(7)] == [0.1, 0.2, 0.4, 0.8, 1.6, 2.0, 2.0]


@given(st.integers(min_value=-10, max_value=10**9))
@settings(deadline=None)  # timing on a loaded machine is not what is tested
def test_backoff_never_overflows_and_stays_within_its_bounds(attempt: int) -> None:
    assert 0.05 <= backoff(attempt) <= 2.0


def test_retry_after_seconds_and_dates() -> None:
    assert retry_after("0", lambda: NOW) == 0.0
    assert retry_after(" 120 ", lambda: NOW) == 120.0
    assert retry_after(email.utils.formatdate(NOW + 30, usegmt=True), lambda: NOW) == 30.0
    assert retry_after(email.utils.formatdate(NOW - 3600, usegmt=True), lambda: NOW) == 0.0  # in the past
    assert retry_after("9" * 5000, lambda: NOW) == RETRY_AFTER_CAP  # no int() of 5000 digits
    assert retry_after("Fri, 31 Dec 99999 23:59:59 GMT", lambda: NOW) in (None, RETRY_AFTER_CAP)
    for unreadable in (None, "", "soon", "-1", "1.5", "\u00b2", "Mon, 99 Foo 2020"):
        assert retry_after(unreadable, lambda: NOW) is None


@given(st.text(max_size=60))
@settings(deadline=None)
def test_any_retry_after_is_read_or_ignored_never_a_crash(value: str) -> None:
    seconds = retry_after(value, lambda: NOW)
    assert seconds is None or 0.0 <= seconds <= RETRY_AFTER_CAP


def test_retry_after_only_lengthens_the_wait() -> None:
    assert 0.05 <= delay(0, asked=0.0) <= 0.1  # Retry-After: 0 still waits the backoff
    assert 1.0 <= delay(40, asked=0.0) <= 2.0
    assert delay(0, asked=5.0) == 5.0
