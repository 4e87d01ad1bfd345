"""Writes: atomic, all or nothing, final mode from creation, symlink-safe, serialised."""

from __future__ import annotations

import errno
import grp
import os
import pwd
import resource
import stat
import subprocess
import threading
from pathlib import Path
from typing import Any, Callable, List, Optional

import pytest

from cc_imds.declaration.build import Origin
from cc_imds.errors import WriteError
from cc_imds.files import atomic
from cc_imds.outputs import write as write_module
from cc_imds.outputs.render import Output
from cc_imds.outputs.write import write_outputs
from tests.conftest import HUNG_AFTER, needs_root

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
    needs_root("changing ownership")
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
    needs_root("a root-owned symlink")
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
    monkeypatch.setattr(atomic, "random_part", lambda: next(names))  # files/atomic.py names temp files
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
        thread.join(timeout=120)
        assert not thread.is_alive(), "a write never ended"
    assert not errors
    a = (tmp_path / "root/shared/a").read_bytes()
    assert a in contents and (tmp_path / "root/shared/b").read_bytes() == a
    assert sorted(os.listdir(tmp_path / "root/shared")) == ["a", "b"]


def test_directory_in_the_way_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "root/etc/app.conf").mkdir(parents=True)
    with pytest.raises(WriteError, match=r"/etc/app.conf: is a directory"):
        write(tmp_path, [out("/etc/app.conf", b"x")])


# -- --root is a chroot: nothing is written outside it -------------------------------------------
def needs_chroot_root() -> None:
    needs_root("only root-owned symlinks are followed, and chattr needs root")


@pytest.mark.parametrize("link", ["{outside}", "../../../../../../../../..{outside}", "/../..{outside}"])
def test_symlink_out_of_the_root_is_resolved_inside_it(tmp_path: Path, link: str) -> None:
    needs_chroot_root()
    outside, root = tmp_path / "outside", tmp_path / "root"
    (outside / "etc").mkdir(parents=True)
    root.mkdir()
    (root / "etc").symlink_to(link.format(outside=outside / "etc"))  # root-owned: followed, as a chroot would
    changes = write(tmp_path, [out("/etc/app.conf", b"x")])
    assert list((outside / "etc").iterdir()) == []
    inside = root / str(outside / "etc/app.conf").lstrip("/")
    assert inside.read_bytes() == b"x"
    assert [(c.path, c.real_path) for c in changes] == [(f"{root}/etc/app.conf", str(inside))]


def test_real_path_is_reported_when_a_link_leads_elsewhere(tmp_path: Path) -> None:
    needs_chroot_root()
    root = tmp_path / "root"
    (root / "run").mkdir(parents=True)
    (root / "var").mkdir()
    (root / "var/run").symlink_to("/run")
    changes = write(tmp_path, [out("/var/run/app.env", b"x"), out("/run/other", b"y")])
    assert [(c.path, c.real_path) for c in changes] == [
        (f"{root}/var/run/app.env", f"{root}/run/app.env"),
        (f"{root}/run/other", None),
    ]


def test_symlink_loop_is_an_error_not_a_hang(tmp_path: Path) -> None:
    needs_chroot_root()
    root = tmp_path / "root"
    root.mkdir()
    (root / "a").symlink_to("b")
    (root / "b").symlink_to("/a")
    with pytest.raises(WriteError, match=r"/etc/x: .*root/[ab]: more than 40 symbolic links on the way"):
        write(tmp_path, [out("/a/etc/x", b"x")])


# -- a failing commit puts everything back -------------------------------------------------------
def state(directory: Path) -> dict:
    """Everything 'as it was' means: names, content, mode, owner, inode, mtime."""
    result = {}
    for path in sorted(directory.iterdir()):
        info = path.lstat()
        result[path.name] = (path.read_bytes() if path.is_file() else None, info.st_mode, info.st_uid,
                             info.st_gid, info.st_ino, info.st_mtime_ns)
    return result


def old_state(tmp_path: Path) -> dict:
    """/a and /b exist (b owned by nobody when root), /c does not: the run updates two and creates one."""
    root = tmp_path / "root"
    write(tmp_path, [out("/a", b"old a", 0o640), out("/b", b"old b")])
    if os.geteuid() == 0:
        os.chown(root / "b", 65534, 65534)
    return state(root)


NEW = [out("/a", b"new a"), out("/b", b"new b", 0o600), out("/c", b"new c")]


def failing(monkeypatch: pytest.MonkeyPatch, name: str, when: Callable[[int], bool], error: int) -> None:
    real = getattr(os, name)
    calls = {"n": 0}

    def fake(*args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if when(calls["n"]):
            raise OSError(error, os.strerror(error))
        return real(*args, **kwargs)

    monkeypatch.setattr(write_module.os, name, fake)


@pytest.mark.parametrize("nth", [1, 2, 3])
def test_a_failing_rename_puts_back_every_replaced_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                        nth: int) -> None:
    before = old_state(tmp_path)
    failing(monkeypatch, "rename", lambda n: n == nth, errno.EBUSY)
    with pytest.raises(WriteError) as caught:
        write(tmp_path, NEW)
    monkeypatch.undo()
    name = "abc"[nth - 1]
    assert str(caught.value) == (f"{tmp_path}/root/{name}: cannot replace it: Device or resource busy; "
                                 "every output was put back as it was")
    assert state(tmp_path / "root") == before  # same names, bytes, modes, owners, inodes


def test_a_failing_directory_fsync_puts_back_every_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    before = old_state(tmp_path)
    directory_fsyncs = {"n": 0}
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            directory_fsyncs["n"] += 1
            if directory_fsyncs["n"] == 1:
                raise OSError(errno.EIO, os.strerror(errno.EIO))
        real_fsync(fd)

    monkeypatch.setattr(write_module.os, "fsync", fsync)
    with pytest.raises(WriteError, match=r"root: fsync failed after replacing files in it: Input/output error; "
                                         r"every output was put back as it was$"):
        write(tmp_path, NEW)
    assert state(tmp_path / "root") == before


def test_a_failing_rollback_says_exactly_what_is_where(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    old_state(tmp_path)
    root = tmp_path / "root"
    failing(monkeypatch, "rename", lambda n: n >= 3, errno.EIO)  # a, b replaced; c fails; putting back fails
    with pytest.raises(WriteError) as caught:
        write(tmp_path, NEW)
    monkeypatch.undo()
    lines = str(caught.value).splitlines()
    assert lines[0] == (f"{root}/c: cannot replace it: Input/output error; putting the old files back failed, "
                        "so these hold new content:")
    assert len(lines) == 3
    for name in ("b", "a"):
        backup = next(p for p in root.iterdir() if p.name.startswith(f".{name}.cc-imds-old-"))
        assert f"{root}/{name}: holds the NEW content; the old file is kept at {backup} (putting it back failed: " \
               "Input/output error)" in lines
        assert backup.read_bytes() == f"old {name}".encode()  # the only copy of the old file is never removed
        assert (root / name).read_bytes() == f"new {name}".encode()
    assert not (root / "c").exists() and not [p for p in root.iterdir() if p.name.startswith(".c.")]


def test_files_that_cannot_be_replaced_are_found_before_anything_changes(tmp_path: Path) -> None:
    needs_chroot_root()
    before = old_state(tmp_path)
    root = tmp_path / "root"
    subprocess.run(["chattr", "+i", str(root / "b")], check=True, timeout=HUNG_AFTER)
    try:
        with pytest.raises(WriteError, match=r"root/b: is immutable \(chattr \+i\) and cannot be replaced; "
                                             r"nothing was changed$"):
            write(tmp_path, NEW)
        assert state(root) == before
    finally:
        subprocess.run(["chattr", "-i", str(root / "b")], check=True, timeout=HUNG_AFTER)


def test_append_only_directory_is_refused_before_anything_changes(tmp_path: Path) -> None:
    needs_chroot_root()
    before = old_state(tmp_path)
    root = tmp_path / "root"
    (root / "log").mkdir()
    subprocess.run(["chattr", "+a", str(root / "log")], check=True, timeout=HUNG_AFTER)
    try:
        with pytest.raises(WriteError, match=r"root/log/x: .*root/log is append-only \(chattr \+a\): no file in it "
                                             r"can be replaced; nothing was changed$"):
            write(tmp_path, [*NEW, out("/log/x", b"x")])
        assert state(root) == {**before, "log": state(root)["log"]}
        assert os.listdir(root / "log") == []
    finally:
        subprocess.run(["chattr", "-a", str(root / "log")], check=True, timeout=HUNG_AFTER)


# -- every failing step: named, nothing changed, nothing left behind -------------------------------
STEPS = {  # the os function, and which of its calls is the step (the first to come after a directory was made)
    "creating a directory": ("mkdir", lambda n, args: n == 2),
    "creating the temp file": ("open", lambda n, args: bool(args[1] & os.O_EXCL)),
    "setting the mode": ("fchmod", lambda n, args: True),
    "writing": ("write", lambda n, args: True),
    "fsyncing the temp file": ("fsync", lambda n, args: not stat.S_ISDIR(os.fstat(args[0]).st_mode)),
    "linking the old file": ("link", lambda n, args: True),
}


@pytest.mark.parametrize("error", [errno.ENOSPC, errno.EACCES, errno.EROFS, errno.EDQUOT, errno.EIO])
@pytest.mark.parametrize("step", sorted(STEPS))
def test_every_step_failing_names_the_output_and_changes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                 step: str, error: int) -> None:
    before = old_state(tmp_path)
    name, is_step = STEPS[step]
    real = getattr(os, name)
    calls = {"n": 0}

    def fake(*args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if is_step(calls["n"], args):
            raise OSError(error, os.strerror(error))
        return real(*args, **kwargs)

    monkeypatch.setattr(write_module.os, name, fake)
    outputs = [out("/new/dir/c", b"new c"), out("/a", b"new a"), out("/b", b"new b")]
    with pytest.raises(WriteError) as caught:
        write(tmp_path, outputs)
    monkeypatch.undo()
    message = str(caught.value)
    assert message.startswith(f"{tmp_path}/root/"), message
    assert message.endswith(f"{os.strerror(error)}; nothing was changed"), message
    assert state(tmp_path / "root") == before  # no temp file, no link, no directory made by the run


def test_same_content_owned_by_someone_else_is_rewritten(tmp_path: Path) -> None:
    needs_chroot_root()
    write(tmp_path, [out("/a", b"same")])
    os.chown(tmp_path / "root/a", 65534, 65534)  # its owner could change it later; a file root wrote, they cannot
    assert write(tmp_path, [out("/a", b"same")])[0].action == "updated"
    assert os.stat(tmp_path / "root/a").st_uid == 0


def test_many_outputs_need_one_descriptor_per_directory(tmp_path: Path) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (128, hard))  # systemd services start with 1024
    try:
        changes = write(tmp_path, [out(f"/d{i % 5}/f{i}", b"x") for i in range(500)])
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert [c.action for c in changes] == ["created"] * 500
    assert sum(len(os.listdir(tmp_path / f"root/d{i}")) for i in range(5)) == 500


def test_a_temp_file_that_cannot_be_removed_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    old_state(tmp_path)
    failing(monkeypatch, "rename", lambda n: n == 1, errno.EIO)
    failing(monkeypatch, "unlink", lambda n: True, errno.EIO)
    with pytest.raises(WriteError, match="every output was put back as it was"):
        write(tmp_path, NEW)
    monkeypatch.undo()
    left = sorted(p.name for p in (tmp_path / "root").iterdir() if ".cc-imds-" in p.name)
    assert len(left) == 5  # three temp files, two links to old files: each one named
    for name in left:
        assert f"could not remove {name}: Input/output error" in caplog.text
