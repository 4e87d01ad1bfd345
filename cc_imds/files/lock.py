"""The lock that serialises runs (a boot, a manual apply, the watcher) over their write phase,
and the one flock of cc-imds: the watcher's own lock (one watcher at a time) is taken here too.

Only root can create a file in RUN_DIR, so no other user can squat or hold root's lock.
The lock file is opened without following links and checked after opening (a regular
file, owned by the running user), taken with a non-blocking flock polled until the
deadline, and checked to still be the file at the path once held (a lock file replaced
meanwhile is opened again). Waiting ends at the deadline with an error naming the lock
and, when /proc/locks says, the process holding it.

Default paths: root uses RUN_DIR/lock. Other users (tests, `--root` image builds as a
user) use a lock of their own: $XDG_RUNTIME_DIR/cc-imds.lock, or /tmp/cc-imds-UID/lock.
CC_IMDS_LOCK or `--lock` relocate it; any lock directory must belong to root or to the
running user, and be writable by nobody else (unless sticky, like /tmp): files/trusted.py.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
import time
from contextlib import contextmanager
from typing import Iterator, Mapping, Optional

from ..deadline import Deadline
from ..errors import WriteError
from .trusted import LOCK_DIR, RUN_DIR, RUN_DIR_LOCK, untrusted

LOCK_ENV = "CC_IMDS_LOCK"  # relocates the lock, as CC_IMDS_CONF_DIR relocates drop-ins
DEFAULT_WAIT = 60.0  # seconds, when no deadline is given: the default run deadline
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
_POLL_FIRST, _POLL_MAX = 0.005, 0.1  # seconds between attempts while another run holds the lock


class LockError(WriteError):
    """The lock could not be taken: nothing was written (exit 4)."""

    def __init__(self, lock_path: str, message: str) -> None:
        super().__init__(f"lock {lock_path}", message)


def default_lock_path(environ: Optional[Mapping[str, str]] = None) -> str:
    """The one lock that apply, cloud-init's handle and the watcher share (see the module docstring)."""
    env = os.environ if environ is None else environ
    if env.get(LOCK_ENV):
        return env[LOCK_ENV]
    if os.geteuid() == 0:
        return f"{RUN_DIR}/lock"
    runtime = env.get("XDG_RUNTIME_DIR", "")
    if runtime.startswith("/"):
        return os.path.join(runtime, "cc-imds.lock")
    import tempfile  # only here: it brings shutil, bz2 and lzma, which the watcher would keep resident

    return os.path.join(tempfile.gettempdir(), f"cc-imds-{os.geteuid()}", "lock")


@contextmanager
def locked(lock_path: str, deadline: Optional[Deadline] = None) -> Iterator[None]:
    """Hold the lock for the `with` block; wait for it at most until `deadline`."""
    fd = _acquire(lock_path, deadline or Deadline(DEFAULT_WAIT), "")
    try:
        yield
    finally:
        os.close(fd)  # releases the flock


@contextmanager
def locked_alone(lock_path: str, other: str) -> Iterator[None]:
    """Hold the lock for the `with` block, or LockError at once, never waiting, when `other`
    (say "another cc-imds watch") holds it: for a process of which only one may run."""
    fd = _acquire(lock_path, None, other)
    try:
        yield
    finally:
        os.close(fd)


def _acquire(lock_path: str, deadline: Optional[Deadline], other: str) -> int:
    """The descriptor holding the lock: waited for until `deadline`, or, without one, taken
    at once or refused as held by `other`."""
    directory, name = os.path.split(os.path.abspath(lock_path))
    dir_fd = _open_lock_dir(directory, lock_path)
    try:
        delay = _POLL_FIRST
        while True:
            fd = _open_lock_file(dir_fd, name, lock_path)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if deadline is None or deadline.expired():
                    holder = _holder(os.fstat(fd))
                    os.close(fd)
                    if deadline is None:
                        raise LockError(lock_path, f"{other}{holder} is running") from None
                    reason = f"another run{holder} held it for the whole {deadline.seconds:g}s deadline"
                    raise LockError(lock_path, f"{reason}; nothing was changed") from None
                os.close(fd)
                time.sleep(min(delay, deadline.remaining()))
                delay = min(delay * 2, _POLL_MAX)
                continue
            except OSError as exc:
                os.close(fd)
                raise LockError(lock_path, f"cannot take it: {exc.strerror}") from None
            if _still_at_path(fd, dir_fd, name):
                _label(fd, os.path.abspath(lock_path))
                return fd
            os.close(fd)  # replaced while we waited (removed by hand?): take the new one
    finally:
        os.close(dir_fd)


def _label(fd: int, path: str, file_type: int = stat.S_IFREG) -> None:
    """SELinux: the lock file (or a directory made for it) gets the context its path has, where
    the policy gives one."""
    from .labels import label_new  # only runs that write take the lock

    label_new(fd, path, file_type)


def _open_lock_dir(directory: str, lock_path: str) -> int:
    """The lock's directory, made if missing (0755 for root, else 0700), checked after opening."""
    made = not os.path.isdir(directory)
    if made:
        try:
            os.makedirs(directory, 0o755 if os.geteuid() == 0 else 0o700, exist_ok=True)
        except OSError as exc:
            raise LockError(lock_path, f"cannot create {directory}: {exc.strerror}") from None
    try:
        fd = os.open(directory, _DIR_FLAGS)
    except OSError as exc:
        raise LockError(lock_path, f"cannot open {directory}: {exc.strerror}") from None
    if made:
        _label(fd, os.path.abspath(directory), stat.S_IFDIR)
    policy = RUN_DIR_LOCK if os.path.abspath(directory) == RUN_DIR else LOCK_DIR
    problem = untrusted(os.fstat(fd), policy)
    if problem:
        os.close(fd)
        advice = "; remove it (it is made again at the next run)" if policy is RUN_DIR_LOCK else (
            ": another user could replace the lock")
        raise LockError(lock_path, f"{directory} is {problem}{advice}")
    return fd


def _open_lock_file(dir_fd: int, name: str, lock_path: str) -> int:
    try:
        fd = os.open(
            name, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o600, dir_fd=dir_fd
        )
    except OSError as exc:
        owner = ""
        if exc.errno in (errno.EACCES, errno.EPERM):  # fs.protected_regular refuses another user's file
            try:
                owner = f" (it is owned by uid {os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_uid})"
            except OSError:
                pass
        raise LockError(lock_path, f"cannot open it: {exc.strerror}{owner}") from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode) or info.st_uid != os.geteuid():
        os.close(fd)
        what = "is not a regular file" if not stat.S_ISREG(info.st_mode) else f"is owned by uid {info.st_uid}"
        raise LockError(lock_path, f"{what}: not a lock this user made; remove it")
    if info.st_mode & 0o077:  # made by hand (say `flock LOCK cmd`, 0644): nobody else may open it to hold it
        os.fchmod(fd, 0o600)
    return fd


def _still_at_path(fd: int, dir_fd: int, name: str) -> bool:
    try:
        now = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (now.st_dev, now.st_ino) == (held.st_dev, held.st_ino)


def _holder(info: os.stat_result) -> str:
    """' (pid N, comm)' of the process holding the lock, from /proc/locks; '' if unknown."""
    wanted = f"{os.major(info.st_dev):02x}:{os.minor(info.st_dev):02x}:{info.st_ino}"
    try:
        with open("/proc/locks", encoding="ascii", errors="replace") as handle:
            lines = handle.read(1 << 20).splitlines()
    except OSError:
        return ""
    for line in lines:
        fields = line.split()
        if len(fields) >= 6 and fields[1] == "FLOCK" and fields[5] == wanted:
            pid = fields[4]
            try:
                with open(f"/proc/{pid}/comm", encoding="utf-8", errors="replace") as handle:
                    name = "".join(c for c in handle.read(64).strip() if c.isprintable())
                return f" (pid {pid}, {name})"
            except OSError:
                return f" (pid {pid})"
    return ""
