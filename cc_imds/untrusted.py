"""Reading untrusted input: regular files of bounded size, YAML of bounded shape.

Declarations, drop-ins, metadata trees, cloud.cfg and the files `scan` reads may be
written by someone else. None of them may hang a run (a FIFO, a device), exhaust
memory (a huge file, a YAML alias bomb) or end it with a traceback (deep nesting).
Every refusal names the file and, for YAML, the line and column.
"""

from __future__ import annotations

import os
import stat
from typing import Any, Dict, List, Tuple, Union

from .errors import CcImdsError

# Declarations are a few KiB (EC2 user-data is at most 16 KiB); metadata trees and
# scanned scripts are larger but never near these.
MAX_DECLARATION_BYTES = 1024 * 1024
# A YAML document's size once aliases are expanded, and its nesting depth. What reads a
# document (schema validation, messages, templates) pays for the expanded size, so that
# is what is bounded. A declaration is 5 levels deep; cloud.cfg about the same.
MAX_YAML_NODES = 20_000
MAX_YAML_DEPTH = 64

_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
)


class InputError(CcImdsError):
    """An input file cannot be used: unreadable, not a regular file, too large, not text."""

    exit_code = 1


def _kind(mode: int) -> str:
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def read_bytes(path: Union[str, os.PathLike[str]], limit: int) -> bytes:
    """The content of a regular file of at most `limit` bytes.

    Special files are refused before they are opened where possible; the file is opened
    with O_NONBLOCK and checked again with fstat, so one swapped in meanwhile (a FIFO
    with no writer) cannot block. A file that grows past `limit` while read is refused.
    """
    name = os.fspath(path)
    try:
        mode = os.stat(name).st_mode
        if not stat.S_ISREG(mode):
            raise InputError(f"{name}: cannot read: {_kind(mode)}, not a regular file")
        fd = os.open(name, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as exc:
        raise InputError(f"{name}: cannot read: {exc.strerror}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise InputError(f"{name}: cannot read: {_kind(info.st_mode)}, not a regular file")
        if info.st_size > limit:
            raise InputError(f"{name}: {info.st_size} bytes exceeds the {limit}-byte limit")
        chunks: List[bytes] = []
        size = 0
        while size <= limit:
            chunk = os.read(fd, min(1024 * 1024, limit + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except OSError as exc:
        raise InputError(f"{name}: cannot read: {exc.strerror}") from None
    finally:
        os.close(fd)
    if size > limit:
        raise InputError(f"{name}: more than {limit} bytes (it grew while being read)")
    return b"".join(chunks)


def decode_utf8(name: str, data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"{name}: not UTF-8 text (byte {exc.start})") from None


def read_text(path: Union[str, os.PathLike[str]], limit: int = MAX_DECLARATION_BYTES) -> str:
    """A bounded regular file as UTF-8 text."""
    return decode_utf8(os.fspath(path), read_bytes(path, limit))


# -- YAML ---------------------------------------------------------------------------------
def default_loader() -> Any:
    """libyaml's safe loader when PyYAML was built with it (much faster), else the pure one."""
    import yaml  # deferred: cloud-init imports this package at every boot

    return getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _where(event: Any) -> str:
    mark = getattr(event, "start_mark", None)
    return f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""


def check_yaml_shape(name: str, text: str, loader: Any = None) -> None:
    """Refuse a document nested deeper than MAX_YAML_DEPTH, or larger than MAX_YAML_NODES
    nodes once aliases are expanded, or with an alias inside the node it names (a cycle).

    Works on the parser's event stream, which both PyYAML's parsers produce without
    recursion and without building anything, so the check costs one linear pass and
    stops at the first node over a limit. Aliases are allowed: sharing a `vars` mapping
    between two env files is legitimate; expanding one a billion times is not.
    """
    import yaml

    open_nodes: List[List[Any]] = []  # [anchor, nodes counted before it started, height of its tallest child]
    anchored: Dict[str, Tuple[int, int]] = {}  # anchor -> (expanded nodes, height)
    total = 0
    try:
        for event in yaml.parse(text, Loader=loader or default_loader()):
            if isinstance(event, yaml.CollectionStartEvent):
                if len(open_nodes) >= MAX_YAML_DEPTH:
                    raise InputError(f"{name}: {_where(event)}nested deeper than {MAX_YAML_DEPTH} levels")
                open_nodes.append([event.anchor, total, 0])
                total += 1
            elif isinstance(event, yaml.CollectionEndEvent):
                anchor, before, tallest = open_nodes.pop()
                height = tallest + 1
                if anchor is not None:
                    anchored[anchor] = (total - before, height)
                if open_nodes:
                    open_nodes[-1][2] = max(open_nodes[-1][2], height)
            elif isinstance(event, yaml.ScalarEvent):
                total += 1
                if event.anchor is not None:
                    anchored[event.anchor] = (1, 0)
            elif isinstance(event, yaml.AliasEvent):
                if any(node[0] == event.anchor for node in open_nodes):
                    raise InputError(f"{name}: {_where(event)}alias *{event.anchor} is inside the node it names")
                nodes, height = anchored.get(event.anchor, (1, 0))  # an undefined alias fails in the loader
                total += nodes
                if len(open_nodes) + height > MAX_YAML_DEPTH:
                    raise InputError(
                        f"{name}: {_where(event)}alias *{event.anchor} nests deeper than {MAX_YAML_DEPTH} levels"
                    )
                if open_nodes:
                    open_nodes[-1][2] = max(open_nodes[-1][2], height)
            if total > MAX_YAML_NODES:
                raise InputError(
                    f"{name}: {_where(event)}more than {MAX_YAML_NODES} nodes once aliases are expanded"
                )
    except yaml.YAMLError:
        return  # a syntax error: the loader reports it with its own location


def load_yaml(name: str, text: str, loader: Any = None) -> Any:
    """Parse one YAML document with a safe loader, within the bounds above.

    Syntax errors are reported as `NAME: invalid YAML: line L, column C: problem`.
    """
    import yaml

    loader = loader or default_loader()
    check_yaml_shape(name, text, loader)
    try:
        return yaml.load(text, Loader=loader)  # noqa: S506 - a safe loader, chosen above
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise InputError(f"{name}: invalid YAML: {where}{problem}") from None
    except RecursionError:  # not reachable within MAX_YAML_DEPTH; kept as a last line of defence
        raise InputError(f"{name}: nested too deeply") from None


def load_yaml_file(path: Union[str, os.PathLike[str]], limit: int = MAX_DECLARATION_BYTES) -> Any:
    name = os.fspath(path)
    return load_yaml(name, read_text(name, limit))
