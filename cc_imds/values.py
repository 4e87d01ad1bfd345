"""Value specs -> values, each IMDS path fetched once, all problems reported together.

The resolver does not care where bytes come from: the IMDS client, or a metadata
tree read from JSON (`cc-imds plan --metadata`). Both offer `fetch_all`.
"""

from __future__ import annotations

import json
import re
from collections import deque
from dataclasses import dataclass
from typing import Callable, Deque, Dict, FrozenSet, Iterable, List, Mapping, Optional, Protocol, Union

from .deadline import Deadline
from .declaration.build import ROLE_CREDENTIALS_DIR, Declaration, ValueSpec
from .errors import ImdsError, ImdsNotFound, ImdsUnreachable, ResolveError
from .imds.tree import TAGS_PREFIX, MetadataTree
from .jsontext import JsonRefused, parse

Value = Union[str, bytes, Mapping[str, str]]
Outcome = Union[bytes, ImdsError]
Expander = Callable[[str, bytes], List[str]]

# IMDS tag keys are [0-9a-zA-Z-_+=,.@:]; directory entries must look like that.
_ENTRY = re.compile(r"^[0-9A-Za-z_+=,.@:-]+/?$")
_RAW_PATHS = ("user-data",)


class Source(Protocol):
    def fetch_all(
        self, paths: Iterable[str], expand: Expander = ..., *, deadline: Optional[Deadline] = None
    ) -> Dict[str, Outcome]: ...


@dataclass(frozen=True)
class Values:
    data: Mapping[str, Value]
    sensitive: FrozenSet[str]


class TreeSource:
    """A metadata tree that answers like IMDS: the offline `Source`."""

    def __init__(self, tree: MetadataTree) -> None:
        self.tree = tree

    def fetch_all(
        self, paths: Iterable[str], expand: Expander = lambda p, b: [], *, deadline: Optional[Deadline] = None
    ) -> Dict[str, Outcome]:
        results: Dict[str, Outcome] = {}
        queue: Deque[str] = deque(dict.fromkeys(paths))
        while queue:
            path = queue.popleft()
            if path in results:
                continue
            if deadline is not None and deadline.expired():
                passed = f"not read: the {deadline.seconds:g}s deadline passed"
                results[path] = ImdsUnreachable("/latest/" + path, passed)
                continue
            body = self.tree.lookup(path)
            results[path] = body if body is not None else ImdsNotFound("/latest/" + path)
            if body is not None:
                queue.extend(expand(path, body))
        return results


def directory_entries(listing: bytes) -> List[str]:
    """Leaf entries of a directory listing; subdirectories (trailing /) are skipped."""
    return [line for line in listing.decode("utf-8", "replace").splitlines() if line and not line.endswith("/")]


def resolve(
    declaration: Declaration,
    source: Source,
    *,
    names: Optional[Iterable[str]] = None,
    deadline: Optional[Deadline] = None,
) -> Values:
    """The declared values (only those in `names` when given), each IMDS path fetched once,
    within `deadline` (None: the source's own, the client's run deadline)."""
    specs = list(declaration.values.values())
    if names is not None:
        wanted = set(names)
        unknown = sorted(wanted - set(declaration.values))
        if unknown:
            raise ResolveError([f"no value named {name!r} is declared" for name in unknown])
        specs = [s for s in specs if s.name in wanted]
    directories = {s.path for s in specs if s.is_directory}
    malformed: Dict[str, List[str]] = {}

    def expand(path: str, body: bytes) -> List[str]:
        if path not in directories:
            return []
        entries = directory_entries(body)
        bad = [e for e in entries if not _ENTRY.match(e) or e in (".", "..")]
        if bad:
            malformed[path] = bad
        return [path + e for e in entries if e not in bad]

    outcomes = source.fetch_all([s.path for s in specs], expand, deadline=deadline)
    data: Dict[str, Value] = {}
    problems: List[str] = []
    for spec in specs:
        try:
            data[spec.name] = _value(spec, outcomes, malformed)
        except _Missing as exc:
            problems.append(f"{spec.origin}: {exc}")
    if problems:
        raise ResolveError(problems)
    return Values(data, frozenset(s.name for s in specs if s.sensitive))


class _Missing(Exception):
    pass


def _value(spec: ValueSpec, outcomes: Mapping[str, Outcome], malformed: Mapping[str, List[str]]) -> Value:
    outcome = outcomes[spec.path]
    if isinstance(outcome, ImdsNotFound):
        if spec.default is not None:
            return spec.default
        hint = ""
        if spec.path.startswith(TAGS_PREFIX):
            hint = "; instance tags in metadata may be disabled (InstanceMetadataTags=enabled turns them on)"
        elif spec.path == ROLE_CREDENTIALS_DIR:
            hint = "; the instance has no IAM role (attach an instance profile with a role)"
        elif spec.path.startswith(ROLE_CREDENTIALS_DIR):
            hint = f"; the instance has no role named {spec.path[len(ROLE_CREDENTIALS_DIR):]}"
        raise _Missing(f"required value missing: {outcome}{hint}")
    if isinstance(outcome, ImdsError):
        raise _Missing(str(outcome))
    if spec.is_directory:
        if spec.path in malformed:
            raise _Missing(f"/latest/{spec.path}: the listing has {len(malformed[spec.path])} malformed entries")
        mapping: Dict[str, str] = {}
        for entry in directory_entries(outcome):
            child = outcomes[spec.path + entry]
            if isinstance(child, ImdsError):
                raise _Missing(str(child))
            mapping[entry] = _text(spec.path + entry, child)
        return mapping
    if spec.path in _RAW_PATHS and spec.key is None:
        return outcome  # user-data stays bytes: it may be gzip
    text = _text(spec.path, outcome)
    if spec.key is None:
        return text
    try:
        document = parse(text)
    except JsonRefused as exc:
        raise _Missing(f"/latest/{spec.path}: refused: {exc}, so key {spec.key!r} cannot be read") from None
    except ValueError:
        raise _Missing(f"/latest/{spec.path}: not a JSON document, so key {spec.key!r} cannot be read") from None
    if not isinstance(document, dict) or spec.key not in document:
        raise _Missing(f"/latest/{spec.path}: the JSON document has no key {spec.key!r}")
    found = document[spec.key]
    return found if isinstance(found, str) else json.dumps(found)


def _text(path: str, body: bytes) -> str:
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _Missing(f"/latest/{path}: not valid UTF-8 text (byte {exc.start})") from None
