"""When an `on_change` command runs after its output changed (watch/quiet.py): pure, so
every case is a few numbers. Times are seconds; `draw` is the random number in [0, 1)."""

from __future__ import annotations

from typing import List, Optional

from hypothesis import given
from hypothesis import strategies as st

from cc_imds.declaration.build import Quiet
from cc_imds.watch.quiet import Burst, changed, moved

AT_ONCE = Quiet()


def burst_of(quiet: Quiet, times: List[float], draw: float = 0.0) -> Burst:
    burst: Optional[Burst] = None
    for when in times:
        burst = changed(burst, quiet, when, "updated", draw)
    assert burst is not None
    return burst


def test_without_wait_or_splay_the_command_runs_at_the_change() -> None:
    assert burst_of(AT_ONCE, [100.0]).due(AT_ONCE) == 100.0


def test_it_runs_once_changes_stop_for_min() -> None:
    quiet = Quiet(wait_min=10, wait_max=60)
    assert burst_of(quiet, [100.0]).due(quiet) == 110.0
    assert burst_of(quiet, [100.0, 105.0, 108.0]).due(quiet) == 118.0  # each change restarts the quiet time


def test_changes_that_go_on_still_run_it_max_after_the_first() -> None:
    quiet = Quiet(wait_min=10, wait_max=30)
    assert burst_of(quiet, [100.0 + 5 * i for i in range(20)]).due(quiet) == 130.0


def test_splay_is_drawn_once_per_run_and_added_after_the_wait() -> None:
    quiet = Quiet(wait_min=10, wait_max=30, splay=60)
    first = changed(None, quiet, 100.0, "created", 0.5)
    assert first.delay == 30.0 and first.due(quiet) == 140.0
    later = changed(first, quiet, 105.0, "updated", 0.9)  # a later change does not draw again
    assert later.delay == 30.0 and later.due(quiet) == 145.0
    assert later.action == "updated" and later.first == 100.0


def test_splay_alone_delays_from_the_first_change() -> None:
    quiet = Quiet(splay=60)
    assert burst_of(quiet, [100.0, 120.0], draw=0.25).due(quiet) == 115.0


def test_a_clock_stepped_back_moves_the_burst_with_it() -> None:
    quiet = Quiet(wait_min=10, wait_max=30)
    burst = moved(burst_of(quiet, [3700.0]), 3600.0)
    assert burst.due(quiet) == 110.0


@given(st.lists(st.floats(0, 1e6), min_size=1, max_size=30), st.floats(1, 3600), st.floats(1, 86400),
       st.floats(0, 3600), st.floats(0, 0.999))
def test_it_never_runs_before_the_first_change_nor_after_max_plus_splay(
        offsets: List[float], low: float, high: float, splay: float, draw: float) -> None:
    quiet = Quiet(low, max(low, high), splay)
    times = sorted(1_800_000_000.0 + o for o in offsets)
    burst = burst_of(quiet, times, draw)
    due = burst.due(quiet)
    assert times[0] <= due <= times[0] + quiet.wait_max + splay
    assert due <= times[-1] + quiet.wait_min + splay
