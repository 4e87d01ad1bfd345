"""Hostile inputs, shared by the unit tests, the generated CLI test and the reliability suite."""

from __future__ import annotations

import struct
import zlib

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
