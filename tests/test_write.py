"""Writes: atomic, all or nothing, final mode from creation, symlink-safe, serialised."""

from __future__ import annotations

import errno
import grp
import os
import pwd
import stat
import threading
from pathlib import Path
from typing import List, Optional

import pytest

from cc_imds import write as write_module
from cc_imds.config import Origin
from cc_imds.errors import WriteError
from cc_imds.render import Output
from cc_imds.write import write_outputs

ORIGIN = Origin("test", "files[0]")


def out(path: str, content: bytes, mode: int = 0o644, owner: Optional[str] = None, sensitive: bool = False) -> Output:
    return Output(path, content, mode, owner, sensitive, ORIGIN)


def write(tmp_path: Path, outputs: List[Output]):
    return write_outputs(outputs, root=str(tmp_path / "root"), lock_path=str(tmp_path / "lock"))


def test_creates_parents_and_files_with_modes(tmp_path: Path) -> None:
    changes = write(tmp_path, [out("/etc/app/a.env", b"A=1\n"), out("/etc/app/secret", b"s", 0o600, sensitive=True)])
    root = tmp_path / "root"
    assert [(c.action, c.mode) for c in changes] == [("created", 0o644), ("created", 0o600)]
    assert (root / "etc/app/a.env").read_bytes() == b"A=1\n"
    assert stat.S_IMODE((root / "etc/app/secret").stat().st_mode) == 0o600
    assert stat.S_IMODE((root / "etc/app").stat().st_mode) == 0o755
    assert sorted(os.listdir(root / "etc/app")) == ["a.env", "secret"]  # no temp files left


def test_unchanged_files_are_not_rewritten(tmp_path: Path) -> None:
    write(tmp_path, [out("/a", b"same")])
    before = os.stat(tmp_path / "root/a")
    changes = write(tmp_path, [out("/a", b"same")])
    after = os.stat(tmp_path / "root/a")
    assert changes[0].action == "unchanged"
    assert (before.st_ino, before.st_mtime_ns) == (after.st_ino, after.st_mtime_ns)
    assert write(tmp_path, [out("/a", b"same", 0o640)])[0].action == "updated"  # a mode change counts
    assert write(tmp_path, [out("/a", b"new", 0o640)])[0].action == "updated"


def test_owner_is_applied_and_unknown_owner_fails_before_any_write(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("changing ownership needs root")
    nobody = pwd.getpwnam("nobody")
    group = grp.getgrgid(nobody.pw_gid).gr_name  # nogroup on Debian, nobody on Amazon Linux
    write(tmp_path, [out("/owned", b"x", owner=f"nobody:{group}")])
    info = os.stat(tmp_path / "root/owned")
    assert (info.st_uid, info.st_gid) == (nobody.pw_uid, nobody.pw_gid)
    with pytest.raises(WriteError, match=r"^/other: owner 'no-such-user-x': no such user$"):
        write(tmp_path, [out("/first", b"x"), out("/other", b"x", owner="no-such-user-x")])
    assert not (tmp_path / "root/first").exists()


def test_sensitive_temp_file_never_has_a_wider_mode(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    created = []
    real_open = os.open

    def watching_open(path, flags, mode=0o777, *, dir_fd=None):
        fd = real_open(path, flags, mode, dir_fd=dir_fd)
        if flags & os.O_CREAT:
            created.append(stat.S_IMODE(os.fstat(fd).st_mode))
        return fd

    monkeypatch.setattr(write_module.os, "open", watching_open)
    old_umask = os.umask(0)  # even with no umask to help
    try:
        write(tmp_path, [out("/secret", b"s3cr3t", 0o600, sensitive=True), out("/ro", b"x", 0o400)])
    finally:
        os.umask(old_umask)
    # lock file, then the two temp files: each born no wider than its final mode
    assert created[1:] == [0o600, 0o400]


def test_disk_full_leaves_old_files_and_no_temp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path, [out("/a", b"old a"), out("/b", b"old b")])
    real_write = os.write
    calls = {"n": 0}

    def failing_write(fd: int, data: bytes) -> int:
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(fd, data)

    monkeypatch.setattr(write_module.os, "write", failing_write)
    with pytest.raises(WriteError, match=r"root/b: No space left on device; nothing was changed"):
        write(tmp_path, [out("/a", b"new a"), out("/b", b"new b")])
    assert (tmp_path / "root/a").read_bytes() == b"old a"  # staged but never committed
    assert (tmp_path / "root/b").read_bytes() == b"old b"
    assert sorted(os.listdir(tmp_path / "root")) == ["a", "b"]


def test_symlinked_parent_not_owned_by_root_is_refused(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    root = tmp_path / "root"
    root.mkdir()
    (root / "etc").symlink_to(outside)
    if os.geteuid() == 0:
        os.lchown(root / "etc", 65534, 65534)  # as an unprivileged attacker would own it
        with pytest.raises(WriteError, match=r"root/etc: refusing to follow a symlink owned by uid 65534"):
            write(tmp_path, [out("/etc/app.conf", b"x")])
        assert list(outside.iterdir()) == []
    else:
        with pytest.raises(WriteError, match="refusing to follow a symlink"):
            write(tmp_path, [out("/etc/app.conf", b"x")])


def test_root_owned_symlinked_parent_is_followed(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs a root-owned symlink")
    root = tmp_path / "root"
    (root / "run").mkdir(parents=True)
    (root / "var").mkdir()
    (root / "var/run").symlink_to("../run")  # the classic /var/run -> /run
    write(tmp_path, [out("/var/run/app.env", b"x")])
    assert (root / "run/app.env").read_bytes() == b"x"


def test_symlink_at_the_target_is_replaced_not_followed(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    (tmp_path / "root").mkdir()
    (tmp_path / "root/out").symlink_to(victim)
    write(tmp_path, [out("/out", b"new")])
    assert victim.read_bytes() == b"precious"
    assert not (tmp_path / "root/out").is_symlink() and (tmp_path / "root/out").read_bytes() == b"new"


def test_existing_temp_names_are_never_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    (tmp_path / "root").mkdir()
    names = iter(["aaaaaaaaaaaa", "bbbbbbbbbbbb"])
    monkeypatch.setattr(write_module.secrets, "token_hex", lambda n: next(names))
    (tmp_path / "root/.out.cc-imds-aaaaaaaaaaaa").symlink_to(victim)  # an attacker guessed the first name
    write(tmp_path, [out("/out", b"new")])
    assert victim.read_bytes() == b"precious"
    assert (tmp_path / "root/out").read_bytes() == b"new"


def test_concurrent_writers_leave_one_consistent_result(tmp_path: Path) -> None:
    contents = [bytes([65 + i]) * 100_000 for i in range(8)]
    errors: List[BaseException] = []

    def writer(content: bytes) -> None:
        try:
            write(tmp_path, [out("/shared/a", content), out("/shared/b", content)])
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(c,)) for c in contents]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    a = (tmp_path / "root/shared/a").read_bytes()
    assert a in contents and (tmp_path / "root/shared/b").read_bytes() == a
    assert sorted(os.listdir(tmp_path / "root/shared")) == ["a", "b"]


def test_directory_in_the_way_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "root/etc/app.conf").mkdir(parents=True)
    with pytest.raises(WriteError, match=r"/etc/app.conf: is a directory"):
        write(tmp_path, [out("/etc/app.conf", b"x")])
