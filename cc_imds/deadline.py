"""One absolute point in time that a whole operation must finish by.

A boot run has one deadline, and everything under it (connecting, every byte of every
response, backoff sleeps, waiting for the lock, rendering templates) is bounded by what
is left of it. The watcher makes a new one for each poll. Standard library only.
"""

from __future__ import annotations

import sys
import time

TYPE_CHECKING = False  # not typing's, which `cc-imds get` would import for nothing
if TYPE_CHECKING:
    from typing import Callable

    Clock = Callable[[], float]


RUN_SECONDS = 60.0  # a whole run's deadline unless the declaration sets `deadline`, retries included


def positive_finite(seconds: float) -> bool:
    """0 < seconds <= the largest float, for ints and floats alike (NaN fails every comparison).
    Not math.isfinite: `math` is a shared library that a cold `cc-imds get` would load for this
    alone, and it raises for an int too large to be a float instead of answering."""
    return 0 < seconds <= sys.float_info.max


class DeadlineExceeded(Exception):
    """Internal signal: the deadline passed. Callers turn it into an error naming what was cut short."""


class Deadline:
    """`seconds` from now on a monotonic clock. Immutable once made."""

    __slots__ = ("_clock", "at", "seconds")

    def __init__(self, seconds: float, clock: Clock = time.monotonic) -> None:
        if not positive_finite(seconds):
            raise ValueError(f"a deadline must be a positive, finite number of seconds, not {seconds!r}")
        self._clock = clock
        self.seconds = float(seconds)
        self.at = clock() + self.seconds

    def remaining(self) -> float:
        """Seconds left, never negative."""
        return max(0.0, self.at - self._clock())

    def expired(self) -> bool:
        return self._clock() >= self.at

    def bound(self, timeout: float) -> float:
        """`timeout`, cut down to what is left of the deadline."""
        return min(timeout, self.remaining())

    def check(self) -> None:
        """Raise DeadlineExceeded once the deadline has passed."""
        if self.expired():
            raise DeadlineExceeded(f"the {self.seconds:g}s deadline passed")

    def __repr__(self) -> str:
        return f"Deadline({self.seconds:g}s, {self.remaining():.3f}s left)"
