"""Remember declaration files that passed validation, so an unchanged one skips YAML and the schema.

A cold `cc-imds apply` spends most of its time importing PyYAML and jsonschema. For a file
whose exact text was parsed and schema-checked before, with the same schema, validating code,
cc-imds version and Python, the outcome is known: the parsed document, which was valid. It is
kept as JSON, which the standard library reads. Only that is skipped: the checks across
documents (merging, unknown names, conflicting outputs) run every time.

The record is as trusted as the declarations themselves, so it is used only from a directory
that the running user owns and nobody else can write, every entry likewise (files/trusted.py,
VALIDATION_CACHE): as root,
RUN_DIR/validated, under a RUN_DIR that root owns (/run is emptied at boot, so nothing
outlives a reboot); as anyone else, only a directory named by CC_IMDS_CACHE_DIR. Anything
else (a planted file, a symlink, a wider mode, unreadable JSON) is ignored, never trusted,
and the declaration is validated as if nothing was remembered.
"""

from __future__ import annotations

import os
import stat

from ..files.trusted import RUN_DIR, VALIDATION_CACHE, untrusted

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, List, Optional, Tuple

    Documents = List[Tuple[str, Any]]  # (location root, parsed document) per document in a file

CACHE_ENV = "CC_IMDS_CACHE_DIR"
_FORMAT = b"cc-imds validated declarations 1"
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def key(text: str) -> str:
    """Names the outcome of validating `text`: its exact bytes and everything that decides how
    they are parsed and checked (the schema, the validating code, the version, the Python)."""
    import hashlib
    import sys

    from ..version import __version__

    digest = hashlib.sha256(_FORMAT)
    here = os.path.dirname(os.path.abspath(__file__))
    from .schema import schema_path

    for part in (
        __version__.encode(),
        sys.version.encode(),
        _read(str(schema_path())),
        _read(os.path.join(here, "build.py")),
        text.encode("utf-8"),
    ):
        digest.update(len(part).to_bytes(8, "big"))
        digest.update(part)
    return digest.hexdigest()


def _read(path: str) -> bytes:
    with open(path, "rb") as handle:
        return handle.read()


def _directory(create: bool) -> Optional[int]:
    """The trusted cache directory, opened (each step without following a link), or None."""
    configured = os.environ.get(CACHE_ENV)
    if configured:
        steps = [configured]
    elif os.geteuid() == 0:
        steps = [RUN_DIR, "validated"]  # RUN_DIR must be root's alone too, or a user could swap its content
    else:
        return None
    fd: Optional[int] = None
    walked = ""
    try:
        for step in steps:
            made = False
            if create:
                try:
                    os.mkdir(step, 0o755 if step == RUN_DIR else 0o700, dir_fd=fd)
                    made = True
                except FileExistsError:
                    pass
            opened = os.open(step, _DIR_FLAGS, dir_fd=fd)
            if fd is not None:
                os.close(fd)
            fd = opened
            walked = os.path.join(walked, step) if walked else os.path.abspath(step)
            if untrusted(os.fstat(fd), VALIDATION_CACHE):
                os.close(fd)
                return None
            if made:
                _label_directory(fd, walked)
    except OSError:
        if fd is not None:
            os.close(fd)
        return None
    return fd


def _label_directory(fd: int, path: str) -> None:
    """SELinux: a directory made here gets the context the policy gives its path, if it gives one."""
    from ..files.labels import label_new  # only when a directory is made: not on a cold validate

    label_new(fd, path, stat.S_IFDIR)


def recall(digest: str) -> Optional[Documents]:
    """The documents remembered under `digest`, or None (never validated, or not trustworthy)."""
    directory = _directory(create=False)
    if directory is None:
        return None
    try:
        fd = os.open(digest, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=directory)
    except OSError:
        return None
    finally:
        os.close(directory)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or untrusted(info, VALIDATION_CACHE):
            return None
        with os.fdopen(fd, "rb") as handle:
            fd = -1
            data = handle.read()
    except OSError:
        return None
    finally:
        if fd != -1:
            os.close(fd)
    from ..jsontext import parse

    try:
        entry = parse(data)
    except ValueError:  # not JSON, or past a bound: no record
        return None
    if not (isinstance(entry, list) and all(isinstance(d, list) and len(d) == 2 and isinstance(d[0], str)
                                            for d in entry)):
        return None
    return [(str(d[0]), d[1]) for d in entry]


def remember(digest: str, documents: Documents) -> None:
    """Record that these documents, parsed from the text `digest` names, are valid. Best effort:
    a record that cannot be written is simply not there next time."""
    if not all(_exact_in_json(document) for _, document in documents):
        return
    import json

    from ..files import atomic

    data = json.dumps([[root, document] for root, document in documents]).encode("utf-8")
    directory = _directory(create=True)
    if directory is None:
        return
    try:
        where = os.path.abspath(os.environ.get(CACHE_ENV) or f"{RUN_DIR}/validated")
        atomic.replace(directory, digest, data, 0o600, path=f"{where}/{digest}")
    except OSError:
        pass
    finally:
        os.close(directory)


def _exact_in_json(value: Any) -> bool:
    """JSON gives this value back exactly, types included (YAML can hold dates, bytes, sets,
    non-string keys; none of those is remembered)."""
    if value is None or isinstance(value, (str, bool, int)):
        return True
    if isinstance(value, float):
        return value == value and value not in (float("inf"), float("-inf"))
    if isinstance(value, list):
        return all(_exact_in_json(item) for item in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _exact_in_json(v) for k, v in value.items())
    return False
