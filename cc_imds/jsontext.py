"""Every JSON document that comes from outside is parsed here, bounded in size and depth.

IMDS answers (a `key:` into a document, event notices, credential `Expiration`), the
emulator's control bodies and the files of the run directory are read with `parse`. Its
bounds hold before `json` sees a byte: the size is checked first, then the nesting depth is
counted by a scan of the text that skips string contents. A document nested deeper than
MAX_DEPTH is refused with JsonRefused, never handed to `json`, whose C parser recurses once
per level: thousands of levels raise RecursionError (or, on some builds, exhaust the C
stack), and a RecursionError caught late can leave the interpreter short of stack for
whatever runs next. So the depth is refused up front rather than caught after the fact.

No IMDS document is nested more than a few levels; MAX_DEPTH is the declaration's own
YAML nesting limit. `json` (and the `re` it loads) is imported only when a document is
parsed, so `cc-imds get` without `--key` never pays for it.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Optional, Pattern, Union

MAX_DEPTH = 64  # levels of [ and {
# The largest input parsed here, the metadata tree file. IMDS bodies are bounded before (4 MiB by
# default, the client's limit), the emulator's control bodies at 1 MiB, the run directory's files at 4 MiB.
MAX_BYTES = 64 * 1024 * 1024

_TOKENS: Optional[Pattern[str]] = None


class JsonRefused(ValueError):
    """A document past a bound (size or nesting): refused unread. The message names the bound."""


def depth_problem(text: str, max_depth: int = MAX_DEPTH) -> Optional[str]:
    """Why `text` is nested too deeply to be parsed, or None. Brackets inside strings do
    not count; a document that is not JSON at all is left for the parser to describe."""
    if text.count("[") + text.count("{") <= max_depth:
        return None  # cannot be deeper than that: no scan
    global _TOKENS  # compiled once, on first use
    if _TOKENS is None:
        import re

        # A string (escapes included; an unterminated one runs to the end), or a bracket.
        _TOKENS = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"?|[\[\]{}]', re.S)
    depth = 0
    for match in _TOKENS.finditer(text):
        token = match.group()
        if token in ("[", "{"):
            depth += 1
            if depth > max_depth:
                return f"nested deeper than {max_depth} levels"
        elif token in ("]", "}"):
            depth -= 1
    return None


def parse(data: Union[str, bytes], max_bytes: int = MAX_BYTES, max_depth: int = MAX_DEPTH) -> Any:
    """The document in `data` (bytes are UTF-8). Raises JsonRefused past a bound, and
    ValueError (json's own, or UnicodeDecodeError) for what is not JSON."""
    if len(data) > max_bytes:
        raise JsonRefused(f"a JSON document larger than {max_bytes} bytes")
    text = data.decode("utf-8") if isinstance(data, bytes) else data
    problem = depth_problem(text, max_depth)
    if problem is not None:
        raise JsonRefused(f"a JSON document {problem}")
    import json

    return json.loads(text)
