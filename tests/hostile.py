"""Hostile inputs, shared by the unit tests, the generated CLI test and the reliability suite."""

from __future__ import annotations

import struct
import sys
import zlib
from typing import List

# The classic "billion laughs": 9 levels of 9 aliases, 9**9 (387 million) strings, in 342 bytes.
ALIAS_BOMB = 'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n' + "".join(
    f"{b}: &{b} [{', '.join(['*' + a] * 9)}]\n" for a, b in zip("abcdefgh", "bcdefghi")
)


def nested(depth: int) -> str:
    """`x: [[[...]]]`: a mapping and `depth` flow sequences."""
    return "x: " + "[" * depth + "]" * depth + "\n"


def gzip_bomb(mebibytes: int) -> bytes:
    """A valid gzip file of `mebibytes` MiB of zeros, about 1 KiB per MiB, made in well under
    a second: after a full flush the compressor forgets its history, so every further MiB
    compresses to the same bytes, which are repeated rather than recomputed."""
    zeros = bytes(1 << 20)
    compressor = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    first = compressor.compress(zeros) + compressor.flush(zlib.Z_FULL_FLUSH)
    again = compressor.compress(zeros) + compressor.flush(zlib.Z_FULL_FLUSH)
    last_block = compressor.flush()[:-8]  # the final empty block; the trailer is rebuilt below
    crc = 0
    for _ in range(mebibytes):
        crc = zlib.crc32(zeros, crc)
    trailer = struct.pack("<II", crc, (mebibytes << 20) & 0xFFFFFFFF)
    return first + again * (mebibytes - 1) + last_block + trailer


MEMORY_LIMIT = 1 << 30  # address space for a CLI run fed hostile input


def cc_imds_limited(*args: str, peak_file: str = "") -> List[str]:
    """The command line for `python -m cc_imds ARGS` in a process that may map at most
    MEMORY_LIMIT: a bound that regresses then fails fast with MemoryError, instead of
    taking the machine's memory. With `peak_file`, the process writes its peak resident
    memory there (VmHWM, in kB) as it exits: the parent's ru_maxrss would include what the
    process inherited when it was forked."""
    code = ("import atexit, resource, runpy, sys; "
            f"resource.setrlimit(resource.RLIMIT_AS, ({MEMORY_LIMIT}, {MEMORY_LIMIT})); "
            f"peak = {peak_file!r}; "
            "atexit.register(lambda: peak and open(peak, 'w').write("
            "[l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM:')][0])); "
            "runpy.run_module('cc_imds', run_name='__main__', alter_sys=True)")
    return [sys.executable, "-c", code, *args]
