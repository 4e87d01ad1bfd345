"""When an `on_change` command runs after its output changed. Pure: times in, times out.

A tag edited on an Auto Scaling group reaches every instance within one poll, so without
this every instance would restart its service at the same moment. Two settings, as
consul-template gives its commands:

- `wait: {min, max}`: run once the output has not changed for `min` seconds, and at the
  latest `max` seconds after the first change not yet acted on (a value that keeps
  changing still gets its command);
- `splay`: then a random delay of up to that many seconds, drawn once per run, so
  instances that saw the change in the same poll spread their commands out.

The file itself is always rewritten at once: only its command waits. Without either
setting the command runs at once, as it always did. Instance events never come here.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional

from ..declaration.build import Quiet


@dataclass(frozen=True)
class Burst:
    """Changes of one output whose command has not run yet (wall-clock seconds)."""

    first: float  # the first change not yet acted on
    last: float  # the latest change
    delay: float  # the splay drawn for this run, in [0, splay)
    action: str  # what the latest write did: created, updated, ... (CC_IMDS_CHANGE)

    def due(self, quiet: Quiet) -> float:
        """When the command runs: quiet for wait_min, or wait_max after the first change,
        whichever comes first, then the splay."""
        return min(self.last + quiet.wait_min, self.first + max(quiet.wait_max, quiet.wait_min)) + self.delay


def changed(burst: Optional[Burst], quiet: Quiet, now: float, action: str, draw: float) -> Burst:
    """The burst after one more change at `now`. `draw` in [0, 1) picks the splay; it is
    used only by the change that starts a burst, so later changes do not move it again."""
    if burst is None:
        return Burst(now, now, quiet.splay * draw, action)
    return replace(burst, last=max(burst.last, now), action=action)


def moved(burst: Burst, step: float) -> Burst:
    """The same burst after the wall clock was stepped back `step` seconds (NTP): its
    times move with the clock, so the command is not held back by the step."""
    return replace(burst, first=burst.first - step, last=burst.last - step)
