"""Drop-ins are trusted as sudo trusts sudoers.d: as root, only files root owns and only root
can write, in a directory likewise; every refused file is named with the reason, and the
run fails."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Callable

import pytest

from cc_imds.declaration import dropins as trust_module
from cc_imds.declaration.build import documents_from_dir
from cc_imds.declaration.dropins import MAX_DROPIN_BYTES
from cc_imds.errors import DeclarationError
from cc_imds.testing.emulator import Emulator
from tests.conftest import needs_root

NOBODY = 65534


def dropin(directory: Path, name: str, text: str = "values: {iid: meta-data/instance-id}\n") -> Path:
    directory.mkdir(exist_ok=True)
    path = directory / name
    path.write_text(text)
    path.chmod(0o644)
    return path


def problems(conf_dir: Path) -> list:
    with pytest.raises(DeclarationError) as caught:
        documents_from_dir(conf_dir)
    return caught.value.problems


def test_root_owned_dropins_are_read_in_order(tmp_path: Path) -> None:
    conf = tmp_path / "conf.d"
    dropin(conf, "50-b.yaml")
    dropin(conf, "10-a.yaml")
    dropin(conf, ".hidden.yaml")
    dropin(conf, "notes.txt")
    assert [d.source for d in documents_from_dir(conf)] == [str(conf / "10-a.yaml"), str(conf / "50-b.yaml")]
    assert documents_from_dir(tmp_path / "missing") == []


def test_every_untrusted_file_is_named_with_its_reason(tmp_path: Path) -> None:
    needs_root("files owned by another user")
    conf = tmp_path / "conf.d"
    dropin(conf, "10-good.yaml")
    os.chown(dropin(conf, "20-user.yaml"), NOBODY, NOBODY)
    dropin(conf, "30-group.yaml").chmod(0o664)
    dropin(conf, "40-world.yaml").chmod(0o646)
    (conf / "50-link.yaml").symlink_to(conf / "10-good.yaml")
    os.mkfifo(conf / "60-fifo.yaml")
    # Opening the FIFO would block for ever: the check runs in a thread, waited on with a bound.
    found: list = []
    checker = threading.Thread(target=lambda: found.append(problems(conf)), daemon=True)
    checker.start()
    checker.join(timeout=60)
    assert not checker.is_alive(), "the FIFO was waited on"
    assert found, "the check failed (see the thread's exception above)"
    assert found[0] == [
        f"{conf}/20-user.yaml: refused: owned by uid 65534, not root",
        f"{conf}/30-group.yaml: refused: writable by group (mode 0664), not only by its owner",
        f"{conf}/40-world.yaml: refused: writable by others (mode 0646), not only by its owner",
        f"{conf}/50-link.yaml: refused: a symlink (drop-ins must be regular files)",
        f"{conf}/60-fifo.yaml: refused: not a regular file",
    ]


def test_untrusted_directory_is_refused(tmp_path: Path) -> None:
    needs_root("files owned by another user")
    conf = tmp_path / "conf.d"
    dropin(conf, "10-good.yaml")
    conf.chmod(0o777)
    assert problems(conf) == [f"{conf}: drop-ins refused: {conf}: writable by group and others (mode 0777), "
                              "not only by its owner"]
    conf.chmod(0o1777)  # sticky is no better: anyone could add a file
    assert problems(conf)[0].endswith("writable by group and others (mode 1777), not only by its owner")
    conf.chmod(0o755)
    os.chown(conf, NOBODY, NOBODY)
    assert problems(conf) == [f"{conf}: drop-ins refused: {conf}: owned by uid 65534, not root"]


def test_untrusted_directory_on_the_way_is_refused(tmp_path: Path) -> None:
    needs_root("files owned by another user")
    parent = tmp_path / "etc"
    conf = parent / "conf.d"
    parent.mkdir()
    dropin(conf, "10-good.yaml")
    os.chown(parent, NOBODY, NOBODY)  # its owner could rename conf.d away and put their own in its place
    assert problems(conf) == [f"{conf}: drop-ins refused: {parent}: owned by uid 65534, not root"]
    os.chown(parent, 0, 0)
    parent.chmod(0o1777)  # sticky and root-owned, like /tmp: fine on the way
    assert len(documents_from_dir(conf)) == 1


def test_symlinked_directory_is_followed_only_if_root_owns_the_link(tmp_path: Path) -> None:
    needs_root("files owned by another user")
    real = tmp_path / "real"
    dropin(real, "10-good.yaml")
    link = tmp_path / "conf.d"
    link.symlink_to(real)
    assert len(documents_from_dir(link)) == 1
    os.lchown(link, NOBODY, NOBODY)
    assert problems(link) == [f"{link}: drop-ins refused: {link}: refusing to follow a symlink owned by uid 65534"]


def test_oversized_dropin_is_refused_by_name_without_reading_it_all(tmp_path: Path) -> None:
    conf = tmp_path / "conf.d"
    dropin(conf, "10-big.yaml", "# " + "x" * MAX_DROPIN_BYTES + "\n")
    dropin(conf, "20-limit.yaml", "#" * (MAX_DROPIN_BYTES - 1) + "\n")  # exactly the limit: fine
    assert problems(conf) == [f"{conf}/10-big.yaml: refused: larger than 1024 KiB, the limit for a drop-in"]
    (conf / "10-big.yaml").unlink()
    assert documents_from_dir(conf) == []  # a comment only: empty, allowed


def test_non_utf8_dropin_is_named(tmp_path: Path) -> None:
    conf = tmp_path / "conf.d"
    conf.mkdir()
    (conf / "10-latin1.yaml").write_bytes(b"# caf\xe9\n")
    assert problems(conf) == [f"{conf}/10-latin1.yaml: not UTF-8 text"]


def test_as_another_user_their_own_and_roots_files_are_trusted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    needs_root("files owned by another user")
    conf = tmp_path / "conf.d"
    dropin(conf, "10-root.yaml")
    os.chown(dropin(conf, "20-mine.yaml"), 1000, 1000)
    dropin(conf, "30-group.yaml").chmod(0o664)  # a user's own group is their business
    monkeypatch.setattr(trust_module.os, "geteuid", lambda: 1000)
    assert len(documents_from_dir(conf)) == 3
    os.chown(dropin(conf, "40-other.yaml"), NOBODY, NOBODY)
    dropin(conf, "50-world.yaml").chmod(0o666)
    assert problems(conf) == [
        f"{conf}/40-other.yaml: refused: owned by uid 65534, not root or uid 1000",
        f"{conf}/50-world.yaml: refused: writable by group and others (mode 0666), not only by its owner",
    ]


def test_apply_with_an_untrusted_dropin_fails_and_writes_nothing(cli: Callable, emulator: Emulator,
                                                               tmp_path: Path) -> None:
    needs_root("files owned by another user")
    conf, root = tmp_path / "conf.d", tmp_path / "root"
    dropin(conf, "10-app.yaml", "values: {iid: meta-data/instance-id}\n"
                                "env: [{path: /etc/app.env, format: systemd, vars: {IID: iid}}]\n")
    planted = dropin(conf, "20-planted.yaml", "values: {iid: meta-data/instance-id}\n"
                                              "files: [{path: /etc/sudoers.d/zz, content: 'ALL ALL=(ALL) ALL'}]\n")
    os.chown(planted, NOBODY, NOBODY)
    result = cli("apply", "--conf-dir", str(conf), "--endpoint", emulator.url, "--root", str(root))
    assert result.returncode == 1
    assert result.stderr.decode() == f"cc-imds: {planted}: refused: owned by uid 65534, not root\n"
    assert not root.exists()
