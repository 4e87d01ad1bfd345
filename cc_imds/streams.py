"""Writing every byte: the one loop that every write to a descriptor goes through.

`os.write` may write less than it was given: a pipe takes what fits, and a signal can cut a
write short. Python's own buffered streams have been seen to report success to a script
after writing the first 64 KiB of 3 MB into a pipe whose reader then left. So output files,
the run directory, the render child's frames and standard output are all written here, and
a write that cannot be completed is an OSError (EPIPE when the reader went away), never a
silent success. Standard library only: `cc-imds get` writes its values through this.
"""

from __future__ import annotations

import os

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Union


def write_all(fd: int, data: Union[bytes, bytearray, memoryview]) -> None:
    """All of `data` to `fd`, or OSError. A non-blocking descriptor (stdout shared with a
    process that set O_NONBLOCK) is waited on until it takes more."""
    view = memoryview(data).cast("B")
    while view:
        try:
            written = os.write(fd, view)
        except BlockingIOError:
            import select

            select.select([], [fd], [])
            continue
        if written <= 0:  # cannot happen for a non-empty write, but would loop forever
            raise OSError(f"wrote nothing of {len(view)} bytes")
        view = view[written:]
