"""Signals for the commands that run until stopped (`emulate`, `watch`).

They install their own handlers rather than rely on what the process inherited: a shell starts a
background job with SIGINT ignored (so Python never raises KeyboardInterrupt), and SIGTERM's
default kills without cleanup. A handler only sets a flag; the C-level handler also writes a byte
to a wake-up pipe, so a loop asleep in select() wakes, whenever the signal arrives.
"""

from __future__ import annotations

import os
import select
import signal
from contextlib import contextmanager
from types import FrameType
from typing import Callable, Dict, Iterator, Mapping, Optional

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


@contextmanager
def handled(handlers: Mapping[signal.Signals, Callable[[], None]], wake_fd: int) -> Iterator[None]:
    """Run `handlers[signum]()` on each signal (in the main thread), waking `wake_fd`'s reader;
    the previous handlers and wake-up fd are restored on exit."""

    def make(action: Callable[[], None]) -> Callable[[int, Optional[FrameType]], None]:
        def handler(signum: int, frame: Optional[FrameType]) -> None:
            action()

        return handler

    previous: Dict[signal.Signals, object] = {}
    previous_fd = signal.set_wakeup_fd(wake_fd)
    try:
        for signum, action in handlers.items():
            previous[signum] = signal.signal(signum, make(action))
        yield
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)  # type: ignore[arg-type]
        signal.set_wakeup_fd(previous_fd)


def drain(fd: int) -> None:
    """Empty a non-blocking wake-up pipe."""
    try:
        while os.read(fd, 4096):
            pass
    except BlockingIOError:
        pass


class StopRequest:
    """SIGTERM and SIGINT ask to stop, from the moment the `with` block starts: `wait()` returns
    once one has arrived, even if it arrived before the call."""

    def __init__(self) -> None:
        self.requested = False
        self._read, self._write = os.pipe()
        for fd in (self._read, self._write):
            os.set_blocking(fd, False)
        self._handled = handled({s: self._request for s in STOP_SIGNALS}, self._write)

    def _request(self) -> None:
        self.requested = True

    def __enter__(self) -> StopRequest:
        self._handled.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self._handled.__exit__(None, None, None)
        finally:
            os.close(self._read)
            os.close(self._write)

    def wait(self) -> None:
        while not self.requested:
            select.select([self._read], [], [], 1.0)  # the 1 s bound is a backstop; the pipe wakes it
            drain(self._read)
