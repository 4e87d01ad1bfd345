"""Atomic, all-or-nothing writes. The only module that touches output files.

1. Every owner is looked up before anything is touched.
2. Stage: each changed file is written to a temp file in its own directory,
   created with its final (or narrower) mode and owner, and fsynced.
3. Commit: only when every temp file is staged are they renamed into place.
If staging fails (disk full, permission denied), every temp file is removed and no
output changes. Unchanged files (content, mode and owner) are not rewritten.

Parent directories are walked with O_NOFOLLOW: a symlink is followed only when
root owns it (like /var/run -> /run), so nobody else can redirect a write.
"""

from __future__ import annotations

import errno
import fcntl
import grp
import os
import pwd
import secrets
import stat
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any, Iterator, List, Optional, Sequence, Tuple

from .errors import WriteError
from .render import Output

DEFAULT_LOCK = "/run/lock/cc-imds.lock"
LOCK_ENV = "CC_IMDS_LOCK"  # relocates the lock, as CC_IMDS_CONF_DIR relocates drop-ins (tests, odd layouts)
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC


@dataclass(frozen=True)
class Change:
    path: str
    action: str  # "created", "updated" or "unchanged"
    mode: int
    sensitive: bool


@dataclass
class _Staged:
    output: Output
    dir_fd: int
    name: str
    temp: Optional[str]
    action: str


def owner_ids(owner: Optional[str], path: str) -> Tuple[int, int]:
    """(uid, gid) for `user[:group]`; (-1, -1) leaves ownership to the running user.

    Names are looked up in this system's user database, also with --root: for an image,
    use root or numeric ids.
    """
    if owner is None:
        return -1, -1
    user, _, group = owner.partition(":")
    try:
        entry = pwd.getpwuid(int(user)) if user.isdigit() else pwd.getpwnam(user)
        uid, gid = entry.pw_uid, entry.pw_gid
    except KeyError:
        if not user.isdigit():
            raise WriteError(path, f"owner {owner!r}: no such user") from None
        uid, gid = int(user), -1
    if group:
        try:
            gid = int(group) if group.isdigit() else grp.getgrnam(group).gr_gid
        except KeyError:
            raise WriteError(path, f"owner {owner!r}: no such group") from None
    return uid, gid


def _open_dir(parent_fd: int, name: str, shown: str) -> int:
    try:
        return os.open(name, _DIR_FLAGS | os.O_NOFOLLOW, dir_fd=parent_fd)
    except FileNotFoundError:
        try:
            os.mkdir(name, 0o755, dir_fd=parent_fd)
        except FileExistsError:
            pass  # created meanwhile by a concurrent run
        return os.open(name, _DIR_FLAGS | os.O_NOFOLLOW, dir_fd=parent_fd)
    except OSError as exc:
        if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
            raise
    info = os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
    if stat.S_ISLNK(info.st_mode) and info.st_uid == 0:
        return os.open(name, _DIR_FLAGS, dir_fd=parent_fd)
    if stat.S_ISLNK(info.st_mode):
        raise WriteError(shown, f"refusing to follow a symlink owned by uid {info.st_uid}")
    raise WriteError(shown, "is not a directory")


def open_parent(root: str, path: str) -> Tuple[int, str]:
    """Open (creating as needed) the directory that will hold `path` under `root`."""
    parts = [p for p in path.split("/") if p]
    os.makedirs(root, mode=0o755, exist_ok=True)
    fd = os.open(root, _DIR_FLAGS)
    shown = root.rstrip("/")
    try:
        for part in parts[:-1]:
            shown = f"{shown}/{part}"
            next_fd = _open_dir(fd, part, shown)
            os.close(fd)
            fd = next_fd
    except BaseException:
        os.close(fd)
        raise
    return fd, parts[-1]


def _unchanged(dir_fd: int, name: str, output: Output, uid: int, gid: int) -> Optional[bool]:
    """True if the file already holds exactly this; None if it does not exist."""
    try:
        info = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None
    if stat.S_ISDIR(info.st_mode):
        raise WriteError(output.path, "is a directory")
    if not stat.S_ISREG(info.st_mode) or stat.S_IMODE(info.st_mode) != output.mode:
        return False
    if (uid != -1 and info.st_uid != uid) or (gid != -1 and info.st_gid != gid):
        return False
    if info.st_size != len(output.content):
        return False
    fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    try:
        with os.fdopen(fd, "rb") as handle:
            return handle.read(len(output.content) + 1) == output.content
    except OSError:
        return False


def _stage(output: Output, root: str) -> _Staged:
    uid, gid = owner_ids(output.owner, output.path)
    dir_fd, name = open_parent(root, output.path)
    try:
        same = _unchanged(dir_fd, name, output, uid, gid)
        if same:
            return _Staged(output, dir_fd, name, None, "unchanged")
        for _ in range(100):
            temp = f".{name}.cc-imds-{secrets.token_hex(6)}"
            try:
                # O_EXCL + O_NOFOLLOW: an attacker's file or symlink of that name is never used.
                fd = os.open(
                    temp,
                    os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                    output.mode & 0o600,  # never wider than the final mode, even briefly
                    dir_fd=dir_fd,
                )
                break
            except FileExistsError:
                continue
        else:
            raise WriteError(output.path, "could not create a temporary file")
        try:
            if uid != -1 or gid != -1:
                os.fchown(fd, uid, gid)
            os.fchmod(fd, output.mode)
            view = memoryview(output.content)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            os.unlink(temp, dir_fd=dir_fd)
            raise
        os.close(fd)
        return _Staged(output, dir_fd, name, temp, "updated" if same is False else "created")
    except BaseException:
        os.close(dir_fd)
        raise


@contextmanager
def locked(lock_path: str) -> Iterator[None]:
    """Serialise concurrent runs (a boot and a manual apply) over their write phase."""
    try:
        os.makedirs(os.path.dirname(lock_path), exist_ok=True)
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise WriteError(lock_path, f"cannot open the lock file: {exc.strerror}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def default_lock_path() -> str:
    return os.environ.get(LOCK_ENV, DEFAULT_LOCK)


def write_outputs(
    outputs: Sequence[Output],
    root: str = "/",
    lock_path: Optional[str] = None,
    lock: bool = True,
    deadline: Any = None,
) -> List[Change]:
    """Write every output atomically, or none. Returns what changed."""
    for output in outputs:  # fail on a bad owner before touching anything
        owner_ids(output.owner, output.path)
    staged: List[_Staged] = []
    with locked(lock_path or default_lock_path()) if lock else nullcontext():
        try:
            for output in outputs:
                try:
                    staged.append(_stage(output, root))
                except OSError as exc:
                    raise WriteError(_shown(root, output.path), f"{exc.strerror}; nothing was changed") from None
            for item in staged:
                if item.temp is not None:
                    os.rename(item.temp, item.name, src_dir_fd=item.dir_fd, dst_dir_fd=item.dir_fd)
                    os.fsync(item.dir_fd)
                    item.temp = None
        finally:
            for item in staged:
                if item.temp is not None:
                    try:
                        os.unlink(item.temp, dir_fd=item.dir_fd)
                    except OSError:
                        pass
                os.close(item.dir_fd)
    return [Change(_shown(root, s.output.path), s.action, s.output.mode, s.output.sensitive) for s in staged]


def _shown(root: str, path: str) -> str:
    return path if root in ("", "/") else root.rstrip("/") + path
