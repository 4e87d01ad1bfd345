"""The lock: where only its user can create it, never followed through a link, and waited for
at most until the deadline."""

from __future__ import annotations

import fcntl
import os
import stat
import subprocess
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Iterator, List, Tuple

import pytest

from cc_imds.deadline import Deadline
from cc_imds.errors import WriteError
from cc_imds.files import lock as lock_module
from cc_imds.files.lock import RUN_DIR, default_lock_path, locked, locked_alone
from tests.conftest import DEADLINE_SLACK, needs_root, wait_for

# The lock is polled (every 0.1 s at most) within the deadline, in-process: the deadline's own slack.
SLACK = DEADLINE_SLACK


def is_held(path: Path) -> bool:
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


@pytest.fixture
def holder(tmp_path: Path) -> Iterator[Tuple[Path, int]]:
    """A lock file held by another process (flock(1)) until the test ends: (path, its pid)."""
    path = tmp_path / "held.lock"
    process = subprocess.Popen(["flock", str(path), "sleep", "60"])
    try:
        wait_for(lambda: is_held(path) or process.poll() is not None, what="flock(1) to hold the lock")
        assert process.poll() is None, f"flock(1) exited {process.returncode} without holding the lock"
        yield path, process.pid
    finally:
        process.kill()
        process.wait(timeout=30)


def test_default_paths(monkeypatch: pytest.MonkeyPatch) -> None:
    assert default_lock_path({"CC_IMDS_LOCK": "/elsewhere/x.lock"}) == "/elsewhere/x.lock"
    monkeypatch.setattr(lock_module.os, "geteuid", lambda: 0)
    assert default_lock_path({}) == f"{RUN_DIR}/lock" == "/run/cc-imds/lock"
    monkeypatch.setattr(lock_module.os, "geteuid", lambda: 1000)
    assert default_lock_path({"XDG_RUNTIME_DIR": "/run/user/1000"}) == "/run/user/1000/cc-imds.lock"
    assert default_lock_path({}) == "/tmp/cc-imds-1000/lock"


def test_a_held_lock_is_waited_for_until_the_deadline_then_named(holder: Tuple[Path, int]) -> None:
    path, pid = holder
    started = time.monotonic()
    with pytest.raises(WriteError) as caught:
        with locked(str(path), Deadline(1.0)):
            pytest.fail("the lock is held by another process")
    waited = time.monotonic() - started
    assert 1.0 <= waited < 1.0 + SLACK
    assert caught.value.exit_code == 4
    assert str(caught.value) == (f"lock {path}: another run (pid {pid}, flock) held it for the whole 1s deadline; "
                                 "nothing was changed")


def test_a_lock_for_one_process_alone_is_refused_at_once_naming_the_holder(holder: Tuple[Path, int],
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    path, pid = holder
    waits: List[float] = []
    monkeypatch.setattr(lock_module, "time", SimpleNamespace(sleep=waits.append))  # its only use of time
    with pytest.raises(WriteError) as caught:
        with locked_alone(str(path), "another cc-imds watch"):
            pytest.fail("the lock is held by another process")
    assert waits == []
    assert caught.value.exit_code == 4
    assert str(caught.value) == f"lock {path}: another cc-imds watch (pid {pid}, flock) is running"
    free = path.with_name("free.lock")
    with locked_alone(str(free), "another cc-imds watch"):
        assert is_held(free)
    assert not is_held(free)


def test_a_lock_released_while_waiting_is_taken(tmp_path: Path) -> None:
    path = tmp_path / "lock"
    released = tmp_path / "released"
    process = subprocess.Popen(["flock", str(path), "sh", "-c", f"sleep 0.5; touch {released}"])
    try:
        wait_for(lambda: is_held(path) or process.poll() is not None, what="flock(1) to hold the lock")
        with locked(str(path), Deadline(30)):
            assert released.exists()  # only once the other holder was done with it
    finally:
        process.kill()
        process.wait(timeout=30)


def test_lock_file_is_made_0600_and_a_wider_one_narrowed(tmp_path: Path) -> None:
    path = tmp_path / "dir/lock"
    with locked(str(path), Deadline(5)):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    path.chmod(0o644)  # as `flock LOCK command` makes it: anyone could open it and hold it
    with locked(str(path), Deadline(5)):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_symlinked_lock_is_never_followed(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("precious")
    (tmp_path / "lock").symlink_to(victim)
    with pytest.raises(WriteError, match=r"^lock .*/lock: cannot open it: Too many levels of symbolic links$"):
        with locked(str(tmp_path / "lock"), Deadline(5)):
            pass
    assert victim.read_text() == "precious"


def test_lock_squatted_by_another_user_is_refused_at_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    needs_root("files owned by another user")
    shared = tmp_path / "common"
    shared.mkdir(mode=0o1777)
    shared.chmod(0o1777)  # like /run/lock or /tmp
    squatted = shared / "cc-imds.lock"
    squatted.touch()
    os.chown(squatted, 65534, 65534)
    waits: List[float] = []
    monkeypatch.setattr(lock_module, "time", SimpleNamespace(sleep=waits.append))  # its only use of time
    with pytest.raises(WriteError, match=r"cc-imds.lock: (is owned by uid 65534: not a lock this user made|"
                                         r"cannot open it: Permission denied \(it is owned by uid 65534\))"):
        with locked(str(squatted), Deadline(30)):
            pass
    assert waits == []  # refused at once, not waited on until the deadline


def test_lock_directory_others_can_write_is_refused(tmp_path: Path) -> None:
    needs_root("files owned by another user")
    shared = tmp_path / "common"
    shared.mkdir()
    shared.chmod(0o777)  # not sticky: anyone could swap the lock file
    with pytest.raises(WriteError, match=r"common is writable by group and others \(mode 0777\), "
                                         r"not only by its owner: another user could replace the lock"):
        with locked(str(shared / "lock"), Deadline(5)):
            pass
    os.chown(shared, 65534, 65534)
    shared.chmod(0o755)
    with pytest.raises(WriteError, match=r"common is owned by uid 65534, not root: "
                                         r"another user could replace the lock"):
        with locked(str(shared / "lock"), Deadline(5)):
            pass


def test_run_dir_is_made_0755_and_trusted_only_if_only_root_can_write_it(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    needs_root("files owned by another user")
    run_dir = tmp_path / "run/cc-imds"
    monkeypatch.setattr(lock_module, "RUN_DIR", str(run_dir))
    with locked(str(run_dir / "lock"), Deadline(5)):
        assert stat.S_IMODE(run_dir.stat().st_mode) == 0o755
    run_dir.chmod(0o1777)  # sticky is fine for /tmp, never for RUN_DIR
    with pytest.raises(WriteError, match=r"cc-imds is writable by group and others \(mode 1777\), "
                                         r"not only by its owner; remove it"):
        with locked(str(run_dir / "lock"), Deadline(5)):
            pass
    run_dir.chmod(0o755)
    os.chown(run_dir, 65534, 65534)
    with pytest.raises(WriteError, match=r"cc-imds is owned by uid 65534, not root; remove it"):
        with locked(str(run_dir / "lock"), Deadline(5)):
            pass
