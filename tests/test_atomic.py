"""The one atomic replace (cc_imds.files.atomic) that outputs, the run directory and the
validation cache share: owner and mode before any byte, nothing planted ever used, fsynced,
nothing left behind on failure."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import Any, Dict, Iterator, List

import pytest

from cc_imds.files import atomic
from cc_imds.watch import rundir
from tests.conftest import needs_root


def fails_with(error: int) -> Any:
    def fail(*args: Any, **kwargs: Any) -> Any:
        raise OSError(error, os.strerror(error))

    return fail


@pytest.fixture
def directory(tmp_path: Path) -> Iterator[int]:
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        yield fd
    finally:
        os.close(fd)


def test_replace_gives_the_bytes_and_mode_and_leaves_nothing_else(tmp_path: Path, directory: int) -> None:
    (tmp_path / "f").write_bytes(b"old")
    old_umask = os.umask(0o077)  # the mode is exact, whatever the umask
    try:
        atomic.replace(directory, "f", b"new", 0o644, path=f"{tmp_path}/f")
    finally:
        os.umask(old_umask)
    assert (tmp_path / "f").read_bytes() == b"new"
    assert stat.S_IMODE((tmp_path / "f").stat().st_mode) == 0o644
    assert os.listdir(tmp_path) == ["f"]


def test_owner_mode_and_label_come_before_any_byte(tmp_path: Path, directory: int,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """What the temp file is at the label hook, the last step before its bytes: who may read
    it is already who may read the final file."""
    needs_root("a file given to another user")
    seen: List[Dict[str, Any]] = []

    def label(fd: int, path: str, root: str, labels: object) -> None:
        info = os.fstat(fd)
        seen.append({"path": path, "size": info.st_size, "mode": stat.S_IMODE(info.st_mode), "uid": info.st_uid})

    monkeypatch.setattr(atomic, "_label", label)
    atomic.replace(directory, "secret", b"s3cr3t", 0o440, 65534, 65534, path=f"{tmp_path}/secret")
    assert seen == [{"path": f"{tmp_path}/secret", "size": 0, "mode": 0o440, "uid": 65534}]
    info = (tmp_path / "secret").stat()
    assert (stat.S_IMODE(info.st_mode), info.st_uid, info.st_gid) == (0o440, 65534, 65534)


def test_a_planted_temp_name_is_never_used(tmp_path: Path, directory: int, monkeypatch: pytest.MonkeyPatch) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    names = iter(["aaaaaaaaaaaa", "bbbbbbbbbbbb"])
    monkeypatch.setattr(atomic, "random_part", lambda: next(names))
    (tmp_path / ".f.cc-imds-aaaaaaaaaaaa").symlink_to(victim)  # an attacker guessed the first name
    atomic.replace(directory, "f", b"new", 0o600, path=f"{tmp_path}/f")
    assert victim.read_bytes() == b"precious"
    assert (tmp_path / "f").read_bytes() == b"new"


def test_file_and_directory_are_fsynced_before_it_returns(tmp_path: Path, directory: int,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    synced: List[str] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append("directory" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file")
        real_fsync(fd)

    monkeypatch.setattr(atomic.os, "fsync", fsync)
    atomic.replace(directory, "f", b"new", 0o600, path=f"{tmp_path}/f")
    assert synced == ["file", "directory"]


@pytest.mark.parametrize("step", ["fchmod", "write", "fsync", "rename"])
def test_a_failing_step_leaves_the_old_file_and_no_temp(tmp_path: Path, directory: int,
                                                        monkeypatch: pytest.MonkeyPatch, step: str) -> None:
    (tmp_path / "f").write_bytes(b"old")
    monkeypatch.setattr(atomic.os, step, fails_with(errno.ENOSPC))
    with pytest.raises(OSError, match="No space left on device"):
        atomic.replace(directory, "f", b"new", 0o600, path=f"{tmp_path}/f")
    monkeypatch.undo()
    assert (tmp_path / "f").read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["f"]


def test_the_run_directory_writes_through_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    replaced: List[str] = []
    real_replace = atomic.replace

    def replace(dir_fd: int, name: str, data: bytes, mode: int, uid: int = -1, gid: int = -1, **label: str) -> None:
        replaced.append(name)
        real_replace(dir_fd, name, data, mode, uid, gid, **label)

    monkeypatch.setattr(atomic, "replace", replace)
    rundir.write_atomic(tmp_path / rundir.STATUS, b"{}\n", 0o644)
    assert replaced == [rundir.STATUS]
    assert stat.S_IMODE((tmp_path / rundir.STATUS).stat().st_mode) == 0o644
    monkeypatch.setattr(atomic.os, "rename", fails_with(errno.EROFS))
    with pytest.raises(rundir.RunDirError, match=r"status.json: cannot write: Read-only file system$"):
        rundir.write_atomic(tmp_path / rundir.STATUS, b"{}\n", 0o644)
    assert os.listdir(tmp_path) == [rundir.STATUS]
