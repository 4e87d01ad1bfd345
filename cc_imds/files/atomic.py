"""Replacing a file atomically: the one routine every writer of cc-imds uses.

The outputs (outputs/write.py, which commits several files all or nothing around it), the
run directory (watch/rundir.py) and the validation cache (declaration/cache.py) all replace
files the same way, in a directory they hold open (so a directory swapped meanwhile is never
written into):

1. A temp file beside the final name, `.NAME.cc-imds-RANDOM`, created with O_EXCL and
   O_NOFOLLOW (a file or symlink an attacker put at that name is never used; another random
   name is tried), born no wider than owner-only and its final mode.
2. Its final owner, then its final mode (chown clears setuid bits, so the mode comes
   after), then its SELinux label (`_label`: the context the policy gives the final path,
   files/labels.py): all before any byte is written and before the rename, so a secret is
   never readable by anyone who may not read the final file, and no reader ever sees the
   final name with another label.
3. Every byte (streams.write_all), then fsync.
4. Renamed over the final name, then the directory fsynced: once this returns, the new
   file survives a crash.
On any failure the temp file is removed and the final name is untouched.

Standard library and the kernel only, and not `secrets`: the validation cache imports this
on a declaration's cold path, and `secrets` would keep `hmac` and OpenSSL resident in the
watcher (3.5 MiB) for the names of its temp files.
"""

from __future__ import annotations

import errno
import os

from ..streams import write_all

TYPE_CHECKING = False  # typing costs a cold validate; mypy reads this like typing's
if TYPE_CHECKING:
    from typing import Callable, Optional, Union

    from .labels import Labels

    Data = Union[bytes, bytearray, memoryview]

TEMP_MARK = ".cc-imds-"  # in every name this module makes beside a file: `.NAME.cc-imds-[KIND]RANDOM`
_TRIES = 100  # random names tried before giving up (one is enough unless someone plants names)
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_S_IFREG = 0o100000  # stat.S_IFREG, without importing stat on the cold path


def replace(dir_fd: int, name: str, data: Data, mode: int, uid: int = -1, gid: int = -1, *,
            path: str, root: str = "/", labels: Optional[Labels] = None) -> None:
    """`name` in the directory `dir_fd` holds `data` with `mode` (and owner `uid`:`gid`, -1 for
    the running user's), or OSError with the old file untouched and nothing left behind.
    `path` is where that is, really (under `root`, an image's with --root): its SELinux label
    is looked up by it, in `labels` when the caller holds the run's, else in `root`'s policy."""
    temp = write_temp(dir_fd, name, data, mode, uid, gid, path=path, root=root, labels=labels)
    try:
        os.rename(temp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        remove_quietly(dir_fd, temp)
        raise
    os.fsync(dir_fd)


def write_temp(dir_fd: int, name: str, data: Data, mode: int, uid: int = -1, gid: int = -1, *,
               path: str, root: str = "/", labels: Optional[Labels] = None) -> str:
    """Steps 1-3: a new temp file beside `name` holding `data`, fsynced, with its final owner,
    mode and label (for `path`, as in `replace`); returns its name, for the caller to rename
    over `name`. Nothing is left behind if it fails."""
    fds = []

    def create(temp: str) -> None:
        fds.append(os.open(temp, _CREATE, mode & 0o600, dir_fd=dir_fd))  # never wider than the final mode

    temp = make_beside(name, "", create)
    fd = fds[0]
    try:
        if uid != -1 or gid != -1:
            os.fchown(fd, uid, gid)
        os.fchmod(fd, mode)
        _label(fd, path, root, labels)
        write_all(fd, data)
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        remove_quietly(dir_fd, temp)
        raise
    os.close(fd)
    return temp


def _label(fd: int, path: str, root: str, labels: Optional[Labels]) -> None:
    """The temp file gets the SELinux context the policy gives its final `path`, before any
    byte is written and before it is renamed into place; where SELinux is not used, or the
    policy has no rule for the path, it keeps its directory's default, as any new file."""
    if labels is not None:
        labels.label(fd, path, _S_IFREG)
        return
    from .labels import label_new  # only once a file is written

    label_new(fd, path, _S_IFREG, root)


def random_part() -> str:
    """12 random hex digits: what secrets.token_hex(6) returns, without importing secrets."""
    return os.urandom(6).hex()


def make_beside(name: str, kind: str, make: Callable[[str], None]) -> str:
    """A new hidden name beside `name`, made with `make(candidate)`: fresh random candidates
    are tried while `make` raises FileExistsError. Returns the name made."""
    for _ in range(_TRIES):
        candidate = f".{name}{TEMP_MARK}{kind}{random_part()}"
        try:
            make(candidate)
            return candidate
        except FileExistsError:
            continue
    raise OSError(errno.EEXIST, "could not find a free temporary name")


def remove_quietly(dir_fd: int, name: str) -> None:
    """Remove a temp file after a failure that is already being reported: a second error
    (the disk is failing) must not hide the first."""
    try:
        os.unlink(name, dir_fd=dir_fd)
    except OSError:
        pass
