"""The deadline is absolute: what is left only shrinks, and a bound never exceeds it."""

from __future__ import annotations

import math

import pytest

from cc_imds.deadline import Deadline, DeadlineExceeded


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_remaining_shrinks_with_the_clock_and_never_goes_negative() -> None:
    clock = FakeClock()
    deadline = Deadline(5, clock)
    assert deadline.remaining() == 5
    clock.now += 2
    assert deadline.remaining() == 3
    assert deadline.bound(10) == 3  # a 10 s attempt is cut to what is left
    assert deadline.bound(1) == 1
    clock.now += 7
    assert deadline.remaining() == 0
    assert deadline.expired()
    with pytest.raises(DeadlineExceeded, match="5s deadline"):
        deadline.check()


def test_check_passes_before_the_deadline() -> None:
    clock = FakeClock()
    deadline = Deadline(1, clock)
    clock.now += 0.999
    deadline.check()
    assert not deadline.expired()


@pytest.mark.parametrize("seconds", [0, -1, math.nan, math.inf, -math.inf, 10**400])
def test_only_positive_finite_deadlines_exist(seconds: float) -> None:
    with pytest.raises(ValueError, match="positive, finite"):
        Deadline(seconds)
