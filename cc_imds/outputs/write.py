"""Atomic, all-or-nothing writes. The only module that touches output files.

1. Every owner is looked up, then the lock is taken (waiting at most until the deadline).
2. Stage, touching no output: each changed file is written to a temp file in its own
   directory, with its final owner and mode before any byte, and fsynced (files/atomic.py:
   the steps of every atomic replace in cc-imds, whose renames wait here for the commit).
   An existing file gets a hard link beside it: the old file exactly (content, mode, owner,
   inode), kept to roll back to. A file that cannot be linked could not be replaced either (immutable,
   append-only, a mount point such as a bind mount): that is found here, before any change.
3. Commit: every temp file is renamed into place, then every directory involved is fsynced.
   If a rename or an fsync fails, every file already replaced gets its old one back (the
   link, renamed over it) and every new file is removed again.
4. Only when the whole commit succeeded are the links removed.
On any failure, temp files, links and the directories this run made are removed: the
outputs are as they were. Unchanged files (content, mode and owner) are not rewritten.

Paths are resolved inside the root as a chroot would (files/inside_root.py): a symlink is followed only
when root owns it, absolute links restart at the root, `..` stops there.
"""

from __future__ import annotations

import errno
import fcntl
import grp
import os
import pwd
import stat
import struct
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

from ..deadline import Deadline
from ..errors import WriteError
from ..files import atomic
from ..files.inside_root import Directory, PathRefused, open_parent
from ..files.labels import Labels, for_root
from ..files.lock import default_lock_path, locked
from ..logs import std_logger
from .render import Output

__all__ = ["Change", "owner_ids", "write_outputs"]

LOG = std_logger(__name__)

# FS_IOC_GETFLAGS (_IOR('f', 1, long)) and the inode flags that forbid replacing a file
_FS_IOC_GETFLAGS = (2 << 30) | (struct.calcsize("l") << 16) | (ord("f") << 8) | 1
_FS_IMMUTABLE_FL, _FS_APPEND_FL = 0x10, 0x20


@dataclass(frozen=True)
class Change:
    path: str  # the declared path, under the root
    action: str  # "created", "updated" or "unchanged"
    mode: int
    sensitive: bool
    real_path: Optional[str] = None  # where the file really is, when a root-owned symlink led elsewhere


@dataclass
class _Staged:
    output: Output
    shown: str  # the declared path under the root, as reported
    directory: Directory
    name: str
    action: str
    temp: Optional[str] = None  # the new file, until renamed into place
    backup: Optional[str] = None  # a hard link to the old file, until the commit completed
    replaced: bool = False

    @property
    def real(self) -> str:
        return self.directory.join(self.name)

    @property
    def where(self) -> str:
        """The output in messages: the declared path, and the real one if it differs."""
        return self.shown if self.real == self.shown else f"{self.shown} (really {self.real})"

    def remove(self, name: Optional[str]) -> Optional[OSError]:
        if name is None:
            return None
        try:
            os.unlink(name, dir_fd=self.directory.fd)
        except FileNotFoundError:
            pass
        except OSError as exc:
            return exc
        return None


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


def write_outputs(
    outputs: Sequence[Output],
    root: str = "/",
    lock_path: Optional[str] = None,
    lock: bool = True,
    deadline: Optional[Deadline] = None,
) -> List[Change]:
    """Write every output atomically, or none. Returns what changed."""
    for output in outputs:  # fail on a bad owner before touching anything
        owner_ids(output.owner, output.path)
    with locked(lock_path or default_lock_path(), deadline) if lock else nullcontext():
        labels = for_root(root)  # SELinux: each file gets its path's context before its rename
        staged: List[_Staged] = []
        directories: Dict[Tuple[int, int], Directory] = {}  # one descriptor per directory, however many outputs
        try:
            for output in outputs:
                staged.append(_stage(output, root, directories, labels))
            _commit(staged)
        except BaseException:
            _discard(staged)
            raise
        finally:
            for directory in directories.values():
                directory.close()
    return [
        Change(s.shown, s.action, s.output.mode, s.output.sensitive, s.real if s.real != s.shown else None)
        for s in staged
    ]


# -- stage -------------------------------------------------------------------------------
def _stage(
    output: Output, root: str, directories: Dict[Tuple[int, int], Directory], labels: Optional[Labels] = None
) -> _Staged:
    uid, gid = owner_ids(output.owner, output.path)
    shown = _shown(root, output.path)
    on_made = None if labels is None else (lambda fd, path: labels.label(fd, path, stat.S_IFDIR))
    try:
        directory, name = open_parent(root, output.path, on_made=on_made)
    except PathRefused as exc:
        raise WriteError(shown, _nothing_changed(exc.reason if exc.path == shown else str(exc))) from None
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename and exc.filename != shown else ""
        raise WriteError(shown, _nothing_changed(f"{where}{exc.strerror}")) from None
    info = os.fstat(directory.fd)
    known = directories.setdefault((info.st_dev, info.st_ino), directory)
    if known is not directory:  # already open for an earlier output (so this walk made nothing)
        directory.close()
        directory = known
    item = _Staged(output, shown, directory, name, "unchanged")
    try:
        same = _unchanged(directory.fd, name, item, uid, gid, labels)
        if not same:
            item.action = "created" if same is None else "updated"
            _refuse_unreplaceable_dir(item)
            if same is False:
                item.backup = _link_old(item)
            item.temp = atomic.write_temp(directory.fd, name, output.content, output.mode, uid, gid,
                                          path=item.real, root=root, labels=labels)
    except OSError as exc:
        _discard([item])
        raise WriteError(item.where, _nothing_changed(exc.strerror or str(exc))) from None
    except BaseException:
        _discard([item])
        raise
    return item


def _unchanged(dir_fd: int, name: str, item: _Staged, uid: int, gid: int,
               labels: Optional[Labels] = None) -> Optional[bool]:
    """True if the file already holds exactly this; None if it does not exist. An unchanged
    file is given its SELinux context through the descriptor it was read by, as restorecon would."""
    output = item.output
    try:
        info = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None
    if stat.S_ISDIR(info.st_mode):
        raise WriteError(item.where, _nothing_changed("is a directory"))
    if not stat.S_ISREG(info.st_mode) or stat.S_IMODE(info.st_mode) != output.mode:
        return False
    # no owner declared means the running user: a file someone else owns is rewritten, never kept
    if info.st_uid != (os.geteuid() if uid == -1 else uid) or (gid != -1 and info.st_gid != gid):
        return False
    if info.st_size != len(output.content):
        return False
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd)
    except OSError:
        return False
    with os.fdopen(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return False
        try:
            same = handle.read(len(output.content) + 1) == output.content
        except OSError:
            return False
        if same and labels is not None:
            labels.label(fd, item.real, stat.S_IFREG)
        return same


def _refuse_unreplaceable_dir(item: _Staged) -> None:
    flags = _inode_flags(item.directory.fd)
    if flags & _FS_IMMUTABLE_FL:
        raise WriteError(item.where, _nothing_changed(f"{item.directory.path} is immutable (chattr +i)"))
    if flags & _FS_APPEND_FL:
        reason = f"{item.directory.path} is append-only (chattr +a): no file in it can be replaced"
        raise WriteError(item.where, _nothing_changed(reason))


def _link_old(item: _Staged) -> str:
    """A hard link to the file being replaced: what a rollback puts back."""
    fd = item.directory.fd

    def link(backup: str) -> None:
        os.link(item.name, backup, src_dir_fd=fd, dst_dir_fd=fd, follow_symlinks=False)

    try:
        return atomic.make_beside(item.name, "old-", link)
    except OSError as exc:
        if exc.errno == errno.EXDEV:  # the file is a mount point: rename would give EBUSY
            reason = "is a mount point (a bind mount?) and cannot be replaced"
        elif exc.errno == errno.EPERM and _inode_flags_of(fd, item.name) & _FS_IMMUTABLE_FL:
            reason = "is immutable (chattr +i) and cannot be replaced"
        elif exc.errno == errno.EPERM and _inode_flags_of(fd, item.name) & _FS_APPEND_FL:
            reason = "is append-only (chattr +a) and cannot be replaced"
        else:
            reason = f"cannot keep the old file to roll back to: {exc.strerror}"
        raise WriteError(item.where, _nothing_changed(reason)) from None


# -- commit and roll back ---------------------------------------------------------------------
def _commit(staged: Sequence[_Staged]) -> None:
    changing = [item for item in staged if item.temp is not None]
    where, step = "", ""
    try:
        for item in changing:
            assert item.temp is not None
            where, step = item.where, "cannot replace it"
            os.rename(item.temp, item.name, src_dir_fd=item.directory.fd, dst_dir_fd=item.directory.fd)
            item.temp, item.replaced = None, True
        for fd, path in _directories(changing).items():
            where, step = path, "fsync failed after replacing files in it"
            os.fsync(fd)
    except BaseException as exc:
        problems = _roll_back(changing)
        if not isinstance(exc, OSError):
            raise
        if not problems:
            raise WriteError(where, f"{step}: {exc.strerror}; every output was put back as it was") from None
        lines = [f"{step}: {exc.strerror}; putting the old files back failed, so these hold new content:"]
        raise WriteError(where, "\n".join(lines + problems)) from None
    for item in changing:
        trouble = item.remove(item.backup)
        if trouble is not None:
            LOG.warning("%s: could not remove %s, a link to the old file: %s", item.real, item.backup, trouble.strerror)
        item.backup = None


def _roll_back(changing: Sequence[_Staged]) -> List[str]:
    """Put back every file already replaced. Returns what could not be put back, exactly."""
    problems: List[str] = []
    for item in reversed(changing):
        if not item.replaced:
            continue
        fd = item.directory.fd
        try:
            if item.backup is not None:
                os.rename(item.backup, item.name, src_dir_fd=fd, dst_dir_fd=fd)
                item.backup = None
            else:
                os.unlink(item.name, dir_fd=fd)
            item.replaced = False
        except OSError as exc:
            if item.backup is not None:
                problems.append(
                    f"{item.real}: holds the NEW content; the old file is kept at "
                    f"{item.directory.join(item.backup)} (putting it back failed: {exc.strerror})"
                )
                item.backup = None  # never remove the only copy of the old file
            else:
                problems.append(f"{item.real}: holds the NEW content and did not exist before "
                                f"(removing it failed: {exc.strerror})")
    for fd in _directories(changing):
        try:
            os.fsync(fd)
        except OSError:
            pass  # best effort: the names are back; the error above already says the disk is failing
    return problems


def _discard(staged: Sequence[_Staged]) -> None:
    """Remove temp files and links of a write that will not happen, then the directories it made."""
    for item in staged:
        names = [item.temp] + ([item.backup] if not item.replaced else [])
        for name in names:
            trouble = item.remove(name)
            if trouble is not None:  # the disk is failing: say what is left, never hide it
                LOG.warning("%s: could not remove %s: %s", item.real, name, trouble.strerror)
        item.temp = None
        if not item.replaced:
            item.backup = None
    if not any(item.replaced for item in staged):
        for item in reversed(staged):
            item.directory.remove_created()


def _directories(items: Sequence[_Staged]) -> Dict[int, str]:
    """Every directory whose entries these items change (made directories' parents too), once each."""
    seen: Dict[Tuple[int, int], Tuple[int, str]] = {}
    for item in items:
        for fd, path in [(item.directory.fd, item.directory.path)] + [
            (made.parent_fd, made.path.rsplit("/", 1)[0] or "/") for made in item.directory.created
        ]:
            info = os.fstat(fd)
            seen.setdefault((info.st_dev, info.st_ino), (fd, path))
    return dict(seen.values())


# -- helpers ----------------------------------------------------------------------------------
def _inode_flags(fd: int) -> int:
    """The inode flags (chattr) of an open file; 0 where the filesystem has none."""
    buffer = bytearray(8)
    try:
        fcntl.ioctl(fd, _FS_IOC_GETFLAGS, buffer)
    except OSError:
        return 0
    return int(struct.unpack_from("i", buffer)[0])


def _inode_flags_of(dir_fd: int, name: str) -> int:
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC, dir_fd=dir_fd)
    except OSError:
        return 0
    try:
        return _inode_flags(fd) if stat.S_ISREG(os.fstat(fd).st_mode) else 0
    finally:
        os.close(fd)


def _nothing_changed(reason: str) -> str:
    return f"{reason}; nothing was changed"


def _shown(root: str, path: str) -> str:
    return path if root in ("", "/") else root.rstrip("/") + path
