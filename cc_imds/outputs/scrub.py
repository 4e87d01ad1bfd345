"""Sensitive values and tokens out of every message, in every form they can take there.

A value reaches a message as is, or escaped the way the message was built: Python's repr
(either quote, ASCII-only or not), JSON, a bytes repr, or one of those applied twice (the
repr of a JSON text). A JSON document also leaks through its parts: each string leaf of
an IAM credentials document (SecretAccessKey, Token...) is a secret of its own. The
pipeline scrubs every error it raises with one Scrubber (pipeline.py): one boundary,
after which no message holds a secret in any of these forms.

What a template computes from a value (a slice, its reverse) cannot be recognised here;
templates.failure_message keeps such fragments out of template errors to begin with.
"""

from __future__ import annotations

import json
from typing import Any, Iterable, Iterator, List, Optional, Set, Tuple, Union

from ..jsontext import parse

REDACTED = "<redacted>"
_MAX_DEPTH = 32


def _inner(shown: str, opening: int, quote: str) -> str:
    """The repr of `text + quote` without its delimiters and the appended quote: `text` as
    it appears inside a longer string that also holds `quote`."""
    inner = shown[opening + 1 : -1]
    return inner[:-2] if shown[opening] == quote else inner[:-1]  # escaped (\') when it is the delimiter


def _escapes(text: str) -> Set[str]:
    """The forms `text` takes inside a quoted string of a message."""
    found = {text, json.dumps(text)[1:-1], json.dumps(text, ensure_ascii=False)[1:-1]}
    raw = text.encode("utf-8", "surrogatepass")
    for quote in ("'", '"'):  # repr picks its quote from the whole string: both forms exist
        found.add(_inner(repr(text + quote), 0, quote))
        found.add(_inner(ascii(text + quote), 0, quote))
        found.add(_inner(repr(raw + quote.encode()), 1, quote))
    return found


def _json_leaves(document: Any, depth: int = 0) -> Iterator[str]:
    if depth > _MAX_DEPTH:
        return
    if isinstance(document, str):
        yield document
    elif isinstance(document, dict):
        for item in document.values():
            yield from _json_leaves(item, depth + 1)
    elif isinstance(document, list):
        for item in document:
            yield from _json_leaves(item, depth + 1)


def _parts(secret: str) -> Set[str]:
    parts = {secret}
    stripped = secret.strip()
    if stripped[:1] in ("{", "["):
        try:
            parts.update(_json_leaves(parse(stripped)))
        except ValueError:  # not JSON, or refused (too deep to be a credential document)
            pass
    return parts


def forms(secret: str) -> Set[str]:
    """Every string that reveals `secret` in a message: itself, its JSON leaves, and their
    escaped forms, escaped once more."""
    found: Set[str] = set()
    for part in _parts(secret):
        once = _escapes(part)
        found |= once
        for form in once:
            found |= _escapes(form)
    found.discard("")
    return found


def _texts(value: Union[str, bytes, Any]) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, bytes):
        yield value.decode("utf-8", "surrogateescape")
        yield repr(value)[2:-1]
    elif isinstance(value, dict) or hasattr(value, "values"):
        for item in value.values():
            yield from _texts(item)


class Scrubber:
    """Replaces every stretch of a text covered by some form of some secret with REDACTED.

    Overlapping and adjacent occurrences become one REDACTED, so no text left between two
    of them holds a whole form of a secret. Forms are computed once, on first use: only a
    failing run (or a preview) pays for them."""

    def __init__(self, secrets: Iterable[Any] = ()) -> None:
        self._secrets: List[str] = []
        self._forms: Optional[List[str]] = None
        self.add(secrets)

    def add(self, secrets: Iterable[Any]) -> None:
        """Values (text, bytes, or mappings of them, as resolved) and tokens to scrub."""
        for secret in secrets:
            self._secrets.extend(text for text in _texts(secret) if text)
        self._forms = None

    def _spans(self, text: str) -> List[Tuple[int, int]]:
        if self._forms is None:
            every: Set[str] = set()
            for secret in self._secrets:
                every |= forms(secret)
            self._forms = sorted(every)
        spans = []
        for form in self._forms:
            start = text.find(form)
            while start != -1:
                spans.append((start, start + len(form)))
                start = text.find(form, start + 1)
        return sorted(spans)

    def __call__(self, text: str) -> str:
        if not self._secrets:
            return text
        pieces: List[str] = []
        position = 0  # end of the text already handled
        for start, end in self._spans(text):
            if start > position:
                pieces.extend((text[position:start], REDACTED))
            elif not pieces:
                pieces.append(REDACTED)
            position = max(position, end)
        if not pieces:
            return text
        pieces.append(text[position:])
        return "".join(pieces)

    def lines(self, lines: Iterable[str]) -> List[str]:
        return [self(line) for line in lines]
