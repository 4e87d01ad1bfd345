"""Which drop-in files to believe, as sudo believes sudoers.d.

A drop-in tells a root run which files to write, so whoever can change one can make root
write anything anywhere. Running as root, a drop-in is read only when root owns it and no
one else can write it, in a directory root owns and no one else can write, reached through
directories root owns that no one else can write (sticky ones, like /tmp, allowed on the
way). Run as another user (tests, image builds), the running user stands beside root as
a trusted owner, and only writable-by-others is refused: such a run can write nothing its
user could not.

Every refused file is named with the reason, and the run fails: a run that skipped one
would write a different set of outputs than the image declares. What is checked is what
is read: files are opened with O_NOFOLLOW (a symlinked drop-in is refused) and O_NONBLOCK
(a FIFO never blocks), checked with fstat, and read from that descriptor, at most
MAX_DROPIN_BYTES.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import List, Tuple

from ..errors import DeclarationError
from ..files.inside_root import PathRefused, open_directory
from ..files.trusted import DROPINS, ON_THE_WAY_TO_DROPINS, Policy, untrusted

DEFAULT_CONF_DIR = "/etc/cc-imds/conf.d"
CONF_DIR_ENV = "CC_IMDS_CONF_DIR"  # relocates the drop-in directory (tests, unusual layouts)
MAX_DROPIN_BYTES = 1 << 20  # 1 MiB: a declaration is a few KiB; anything near this is a mistake or an attack
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC


def is_dropin(name: str) -> bool:
    """Which files of the drop-in directory are declarations."""
    return name.endswith(".yaml") and not name.startswith(".")


def read_dropins(conf_dir: Path) -> List[Tuple[Path, str]]:
    """(path, text) of every drop-in in lexical order; a missing directory has none.

    Raises DeclarationError naming every refused file and why, all at once.
    """
    trust = Trust()
    try:
        directory = open_directory("/", os.path.abspath(conf_dir), check=trust.check_on_the_way)
    except FileNotFoundError:
        return []
    except PathRefused as exc:
        raise DeclarationError([f"{conf_dir}: drop-ins refused: {exc}"]) from None
    except OSError as exc:
        raise DeclarationError([f"{conf_dir}: cannot open: {exc.strerror}"]) from None
    texts, problems = [], []
    try:
        trust.check_dropin_dir(os.fstat(directory.fd), directory.path)
        names = sorted(n for n in os.listdir(directory.fd) if is_dropin(n))
        for name in names:
            try:
                texts.append((conf_dir / name, trust.read(directory.fd, name)))
            except PathRefused as exc:
                problems.append(f"{conf_dir / name}: {exc.reason}")
    except PathRefused as exc:
        raise DeclarationError([f"{conf_dir}: drop-ins refused: {exc}"]) from None
    except OSError as exc:
        raise DeclarationError([f"{conf_dir}: cannot list: {exc.strerror}"]) from None
    finally:
        directory.close()
    if problems:
        raise DeclarationError(problems)
    return texts


class Trust:
    """The rules for the running user (see the module docstring; files/trusted.py states them)."""

    def check_on_the_way(self, info: os.stat_result, path: str) -> None:
        """Every directory from / to the drop-in directory: a sticky one owned by root (/tmp) is fine."""
        self._check(info, path, ON_THE_WAY_TO_DROPINS)

    def check_dropin_dir(self, info: os.stat_result, path: str) -> None:
        self._check(info, path)

    def _check(self, info: os.stat_result, path: str, policy: Policy = DROPINS) -> None:
        problem = untrusted(info, policy)
        if problem:
            raise PathRefused(path, problem)

    def read(self, dir_fd: int, name: str) -> str:
        """The text of one drop-in if it is trusted; PathRefused saying why not."""
        try:
            fd = os.open(name, _FILE_FLAGS, dir_fd=dir_fd)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise PathRefused(name, "refused: a symlink (drop-ins must be regular files)") from None
            raise PathRefused(name, f"cannot open: {exc.strerror}") from None
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise PathRefused(name, "refused: not a regular file")
            try:
                self._check(info, name)
            except PathRefused as exc:
                raise PathRefused(name, f"refused: {exc.reason}") from None
            data = _read_at_most(fd, MAX_DROPIN_BYTES + 1)
        except OSError as exc:
            raise PathRefused(name, f"cannot read: {exc.strerror}") from None
        finally:
            os.close(fd)
        if len(data) > MAX_DROPIN_BYTES:
            raise PathRefused(name, f"refused: larger than {MAX_DROPIN_BYTES // 1024} KiB, the limit for a drop-in")
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            raise PathRefused(name, "not UTF-8 text") from None


def _read_at_most(fd: int, limit: int) -> bytes:
    chunks, size = [], 0
    while size < limit:
        chunk = os.read(fd, min(65536, limit - size))
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)

