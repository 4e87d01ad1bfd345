"""Resolve a path inside a root directory as a chroot would, one directory at a time.

`--root /mnt/image` must never reach outside the image: an absolute symlink inside it
(`ROOT/etc -> /etc`) restarts at ROOT, `..` never climbs above ROOT, and at most
MAX_LINKS symlinks are followed (ELOOP), as in the kernel. With root `/` this is the
kernel's own resolution, with one rule added: a symlink is followed only when root owns
it (like /var/run -> /run), so no other user can redirect a root run.

Every directory is opened with O_NOFOLLOW relative to the one before, and a symlink is
read through the descriptor whose owner was checked, so what was checked is what is used.
Paths are reported as they really are: the root as given, then the directories actually
walked through.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass, field
from typing import Callable, List, Optional, Tuple, Union

MAX_LINKS = 40  # Linux's MAXSYMLINKS
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC

# Called with each directory opened on the way (the root included) and its real path.
DirCheck = Callable[[os.stat_result, str], None]
# Called with each directory a walk made, open, and its real path, before anything is made in it
# (where its SELinux label is set).
DirMade = Callable[[int, str], None]


class PathRefused(Exception):
    """A path that is not followed or not usable; `path` is where the walk stopped, really."""

    def __init__(self, path: str, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"{path}: {reason}")


@dataclass
class Created:
    """A directory this walk made: removed again if the write it was made for fails."""

    parent_fd: int
    name: str
    path: str


@dataclass
class Directory:
    """An open directory reached by a walk. The caller closes it (`close`)."""

    fd: int
    path: str  # its real path: the root as given, then the names walked through
    created: List[Created] = field(default_factory=list)

    def join(self, name: str) -> str:
        return f"{self.path.rstrip('/')}/{name}"

    def close(self) -> None:
        os.close(self.fd)
        for made in self.created:
            os.close(made.parent_fd)
        self.created = []

    def remove_created(self) -> None:
        remove_created(self.created)


def remove_created(created: List[Created]) -> None:
    """rmdir what a walk made, innermost first; a directory someone filled meanwhile stays."""
    for made in reversed(created):
        try:
            os.rmdir(made.name, dir_fd=made.parent_fd)
        except OSError:
            pass


def split(path: str) -> Tuple[List[str], str]:
    """(directory parts, final name) of an absolute file path."""
    parts = path.split("/")
    name = parts[-1]
    if not path.startswith("/") or name in ("", ".", ".."):
        raise PathRefused(path, "is not an absolute file path")
    return parts[1:-1], name


def open_parent(
    root: str, path: str, *, create: bool = True, check: Optional[DirCheck] = None, on_made: Optional[DirMade] = None
) -> Tuple[Directory, str]:
    """Open the directory that holds `path` inside `root` (creating directories, 0755, if
    `create`), and return it with the file's name in it."""
    parts, name = split(path)
    return walk(root, parts, create=create, check=check, on_made=on_made), name


def open_directory(root: str, path: str, *, check: Optional[DirCheck] = None) -> Directory:
    """Open the directory `path` itself inside `root`, creating nothing."""
    return walk(root, path.split("/"), create=False, check=check)


def walk(
    root: str, parts: List[str], *, create: bool, check: Optional[DirCheck] = None, on_made: Optional[DirMade] = None
) -> Directory:
    root_shown = root.rstrip("/") or "/"
    if create and not os.path.isdir(root):
        try:
            os.makedirs(root, 0o755, exist_ok=True)
        except OSError as exc:
            raise OSError(exc.errno, f"cannot create the directory: {exc.strerror}", root_shown) from None
    root_fd = _named(root_shown, lambda: os.open(root, DIR_FLAGS))
    stack: List[Tuple[int, str]] = [(root_fd, root_shown)]  # the directories walked into, for `..`
    created: List[Created] = []
    pending = [p for p in parts if p not in ("", ".")]
    pending.reverse()  # a stack: the next part is at the end
    links = 0
    try:
        if check is not None:
            check(os.fstat(root_fd), root_shown)
        while pending:
            part = pending.pop()
            if part in ("", "."):
                continue
            if part == "..":
                if len(stack) > 1:  # never above the root
                    os.close(stack.pop()[0])
                continue
            parent_fd, parent_path = stack[-1]
            shown = f"{parent_path.rstrip('/')}/{part}"
            opened = _open_dir(parent_fd, part, shown, create, created, on_made)
            if isinstance(opened, int):
                stack.append((opened, shown))
                if check is not None:
                    check(os.fstat(opened), shown)
                continue
            links += 1
            if links > MAX_LINKS:
                raise PathRefused(shown, f"more than {MAX_LINKS} symbolic links on the way (a loop?)")
            target = opened
            if target.startswith("/"):  # an absolute link restarts at the root, as in a chroot
                while len(stack) > 1:
                    os.close(stack.pop()[0])
            pending.extend(reversed([p for p in target.split("/") if p not in ("", ".")]))
    except BaseException:
        for fd, _ in stack:
            os.close(fd)
        remove_created(created)  # a failed walk leaves no directory behind
        for made in created:
            os.close(made.parent_fd)
        raise
    for fd, _ in stack[:-1]:
        os.close(fd)
    fd, path = stack[-1]
    return Directory(fd, path, created)


def _open_dir(
    parent_fd: int, name: str, shown: str, create: bool, created: List[Created], on_made: Optional[DirMade] = None
) -> Union[int, str]:
    """The directory's descriptor, or the target of a root-owned symlink to follow."""
    flags = DIR_FLAGS | os.O_NOFOLLOW
    try:
        return os.open(name, flags, dir_fd=parent_fd)
    except FileNotFoundError:
        if not create:
            raise OSError(2, os.strerror(2), shown) from None
        mine = False
        try:
            os.mkdir(name, 0o755, dir_fd=parent_fd)
            created.append(Created(os.dup(parent_fd), name, shown))
            mine = True
        except FileExistsError:
            pass  # made meanwhile by a concurrent run
        except OSError as exc:
            raise OSError(exc.errno, f"cannot create the directory: {exc.strerror}", shown) from None
        fd = _named(shown, lambda: os.open(name, flags, dir_fd=parent_fd))
        if mine and on_made is not None:
            on_made(fd, shown)
        return fd
    except OSError as exc:
        if exc.errno not in (errno.ELOOP, errno.ENOTDIR):  # a symlink, or not a directory at all
            raise OSError(exc.errno, exc.strerror, shown) from None
    return _read_link(parent_fd, name, shown)


def _read_link(parent_fd: int, name: str, shown: str) -> str:
    """The target of a symlink that root owns. Read through the descriptor whose owner was
    checked, so a link swapped in meanwhile is never followed."""
    fd = _named(shown, lambda: os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent_fd))
    try:
        info = os.fstat(fd)
        if not stat.S_ISLNK(info.st_mode):
            raise PathRefused(shown, "is not a directory")
        if info.st_uid != 0:
            raise PathRefused(shown, f"refusing to follow a symlink owned by uid {info.st_uid}")
        return os.readlink("", dir_fd=fd)
    finally:
        os.close(fd)


def _named(shown: str, call: Callable[[], int]) -> int:
    """Run one os call; its OSError names `shown`, the path as it really is."""
    try:
        return call()
    except OSError as exc:
        raise OSError(exc.errno, exc.strerror, shown) from None
