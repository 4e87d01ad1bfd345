"""The one write-everything loop: a pipe that takes a little at a time gets every byte, a
non-blocking one is waited on, and a reader that left is an error, never a short success."""

from __future__ import annotations

import os
import threading

import pytest

from cc_imds.streams import write_all


@pytest.mark.parametrize("blocking", [True, False], ids=["blocking", "non-blocking"])
def test_every_byte_reaches_a_slow_reader(blocking: bool) -> None:
    data = bytes(range(256)) * 12_000  # 3 MB, far more than a pipe holds
    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, blocking)
    received = bytearray()

    def reader() -> None:
        while True:
            chunk = os.read(read_fd, 4096)  # less than a pipe holds: the writer's writes come back short
            if not chunk:
                return
            received.extend(chunk)

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        write_all(write_fd, data)
    finally:
        os.close(write_fd)
        thread.join(60)
        os.close(read_fd)
    assert bytes(received) == data


def test_a_reader_that_left_is_an_error() -> None:
    read_fd, write_fd = os.pipe()
    os.close(read_fd)
    try:
        with pytest.raises(BrokenPipeError):
            write_all(write_fd, b"x" * 100_000)
    finally:
        os.close(write_fd)
