"""Run-time state under /run/cc-imds: what the boot run leaves for `cc-imds watch`, and what
the watcher leaves for `cc-imds status`.

- `watch`: the marker. The boot run writes it only when a declaration asks for a refresh
  or an event; the `cc-imds-watch.path` unit starts the watcher when it exists. /run is a
  tmpfs, so every boot starts without it.
- `cloud-config.json`: this boot's `imds:` cloud-config key (root only), which the watcher
  reads with the drop-ins, so it runs the declarations the boot run ran.
- `status.json`: the watcher's state, for `cc-imds status` (no secret is ever in it).
- `events-handled.json`: the notices already acted on, so a restarted watcher does not
  run a command twice for one notice.

The directory and its files are trusted only if root owns them and nobody else can write
them, when we run as root (files/trusted.py, RUN_STATE): otherwise another user could
plant a declaration, or fake a healthy status.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any, Optional

from ..errors import CcImdsError
from ..files import atomic
from ..files.trusted import RUN_DIR, RUN_STATE, untrusted
from ..jsontext import JsonRefused, parse
from ..logs import std_logger

LOG = std_logger(__name__)

RUN_DIR_ENV = "CC_IMDS_RUN_DIR"  # relocates the run-time state (tests, unusual layouts)
MARKER = "watch"
CLOUD_CONFIG = "cloud-config.json"
STATUS = "status.json"
HANDLED = "events-handled.json"
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class RunDirError(CcImdsError):
    """The run-time directory or a file in it cannot be used."""

    exit_code = 4


def run_dir() -> Path:
    return Path(os.environ.get(RUN_DIR_ENV, RUN_DIR))


def ensure(directory: Path) -> Path:
    """Create the directory (0755) if needed, and check it can be trusted."""
    try:
        made = not directory.exists()
        directory.mkdir(mode=0o755, parents=True, exist_ok=True)
        info = os.lstat(directory)
    except OSError as exc:
        raise RunDirError(f"{directory}: cannot create: {exc.strerror}") from None
    check_dir(directory, info)
    if made:
        _label_directory(directory)
    return directory


def _label_directory(directory: Path) -> None:
    """SELinux: a directory made here gets the context the policy gives its path, if it gives one."""
    from ..files.labels import label_new

    try:
        fd = os.open(directory, _DIR_FLAGS)
    except OSError:
        return
    try:
        label_new(fd, os.path.abspath(directory), stat.S_IFDIR)
    finally:
        os.close(fd)


def check_dir(directory: Path, info: Optional[os.stat_result] = None) -> None:
    try:
        info = info or os.lstat(directory)
    except OSError as exc:
        raise RunDirError(f"{directory}: {exc.strerror}") from None
    if not stat.S_ISDIR(info.st_mode):
        raise RunDirError(f"{directory}: not a directory")
    problem = untrusted(info, RUN_STATE)
    if problem:
        raise RunDirError(f"{directory}: refusing to use it: {problem}")


def read(path: Path, limit: int = 4 * 1024 * 1024) -> Optional[bytes]:
    """A file of the run directory, or None if it does not exist. Never follows a symlink."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise RunDirError(f"{path}: cannot read: {exc.strerror}") from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):  # checked before fdopen, which refuses a directory with its own error
        os.close(fd)
        raise RunDirError(f"{path}: not a regular file")
    with os.fdopen(fd, "rb") as handle:
        problem = untrusted(info, RUN_STATE)
        if problem:
            raise RunDirError(f"{path}: refusing to read it: {problem}")
        data = handle.read(limit + 1)
    if len(data) > limit:
        raise RunDirError(f"{path}: larger than {limit} bytes")
    return data


def read_json(path: Path) -> Any:
    data = read(path)
    if data is None:
        return None
    try:
        return parse(data)
    except JsonRefused as exc:
        raise RunDirError(f"{path}: refused: {exc}") from None
    except ValueError:
        raise RunDirError(f"{path}: not valid JSON") from None


def write_atomic(path: Path, data: bytes, mode: int) -> None:
    """Replace `path` with `data` (files/atomic.py: owner and mode before any byte, fsynced, renamed)."""
    try:
        directory = os.open(path.parent, _DIR_FLAGS)
        try:
            atomic.replace(directory, path.name, data, mode, path=os.path.abspath(path))
        finally:
            os.close(directory)
    except OSError as exc:
        raise RunDirError(f"{path}: cannot write: {exc.strerror}") from None


def write_json(path: Path, document: Any, mode: int) -> None:
    write_atomic(path, (json.dumps(document, indent=1, sort_keys=True) + "\n").encode("utf-8"), mode)


def remove(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise RunDirError(f"{path}: cannot remove: {exc.strerror}") from None
