"""The filesystem fights back: targets that cannot be replaced, renames and fsyncs failing in
the commit (real bind mounts, chattr, and syscall faults injected by strace), symlinks
leading out of --root, a lock squatted or held by someone else, drop-ins others control.
Each run is `cc-imds apply` in its own process; each ends in all outputs written, or in a
clear error (exit 4, or 1 for a refused drop-in) with every output exactly as it was:
names, bytes, mode, owner and inode."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import pytest
import yaml

from cc_imds.testing.emulator import Emulator
from tests.conftest import HUNG_AFTER, PROCESS_SLACK, REPO, requires, wait_for
from tests.reliability.conftest import Run, Scenario, declaration, digest
from tests.reliability.test_faults import figures

Record = Any
NOBODY = 65534

pytestmark = requires(os.geteuid() == 0, "needs root: mounts, chattr, strace and other users' files")


def wrapped(scenario: Scenario, prefix: Sequence[str], *args: str, emulator: Optional[Emulator] = None,
            env: Optional[Dict[str, str]] = None, timeout: float = 120) -> Run:
    """`prefix... python -m cc_imds ARGS` (prefix: strace, unshare ...), recorded like scenario.cli."""
    full_env = dict(os.environ)
    full_env["PYTHONPATH"] = str(REPO) + os.pathsep + full_env.get("PYTHONPATH", "")
    full_env["PYTHONDONTWRITEBYTECODE"] = "1"  # no stray syscalls for strace to count
    full_env.update(env or {})
    before = (emulator.count("PUT"), emulator.count("GET")) if emulator else (0, 0)
    started = time.monotonic()
    result = subprocess.run([*prefix, sys.executable, "-m", "cc_imds", *args], capture_output=True, env=full_env,
                            timeout=timeout)
    seconds = time.monotonic() - started
    after = (emulator.count("PUT"), emulator.count("GET")) if emulator else (0, 0)
    run = Run(result.returncode, result.stdout.decode(errors="replace"), result.stderr.decode(errors="replace"),
              seconds, after[0] - before[0], after[1] - before[1])
    assert "Traceback" not in run.stderr, run.stderr
    scenario.runs.append(run)
    return run


def apply_args(scenario: Scenario, emulator: Emulator, doc: Optional[Dict[str, Any]] = None) -> List[str]:
    path = scenario.write_declaration(doc or declaration(scenario.out))
    return ["apply", str(path), "--endpoint", emulator.url, "--no-conf-dir"]


def state(directory: Path) -> Dict[str, Tuple[Any, ...]]:
    """'Exactly as it was': every name (temp and backup files included), bytes, mode, owner, inode."""
    found = {}
    for path in sorted(directory.rglob("*")):
        info = path.lstat()
        content = path.read_bytes() if path.is_file() and not path.is_symlink() else None
        found[str(path.relative_to(directory))] = (content, info.st_mode, info.st_uid, info.st_gid, info.st_ino)
    return found


def old_outputs(scenario: Scenario) -> Dict[str, str]:
    """Good outputs, then made old: instance.sh with other bytes, mode and owner, instance.env
    with other bytes, credentials gone. A run then replaces two files and creates one.
    Returns the digest of the good outputs."""
    good = scenario.good_outputs()
    sh, env = scenario.out / "instance.sh", scenario.out / "instance.env"
    sh.write_text("INSTANCE_ID=i-old\n")
    sh.chmod(0o640)
    os.chown(sh, NOBODY, NOBODY)
    env.write_text("AWS_REGION=old-region\n")
    (scenario.out / "credentials").unlink()
    return good


def expect_as_before(scenario: Scenario, before: Dict[str, Tuple[Any, ...]], run: Run, message: str) -> None:
    assert run.code == 4, run.stderr
    assert message in run.stderr, run.stderr
    assert state(scenario.out) == before


# -- targets that cannot be replaced ---------------------------------------------------------------
def test_bind_mounted_target(scenario: Scenario, record: Record) -> None:
    old_outputs(scenario)
    mounted = scenario.tmp / "mounted"
    mounted.write_text("AWS_REGION=from-the-bind-mount\n")
    before, source = state(scenario.out), mounted.read_bytes()
    emulator = scenario.emulator()
    mount = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
             'mount --bind "$1" "$2" && shift 2 && exec "$@"', "sh", str(mounted), str(scenario.out / "instance.env")]
    run = wrapped(scenario, mount, *apply_args(scenario, emulator), emulator=emulator)
    expect_as_before(scenario, before, run, f"{scenario.out}/instance.env: is a mount point (a bind mount?) and "
                                            "cannot be replaced; nothing was changed")
    assert mounted.read_bytes() == source
    record("bind-mounted-target", "refused before any change, files untouched", **figures(run))


def test_immutable_target(scenario: Scenario, record: Record) -> None:
    good = old_outputs(scenario)
    target = scenario.out / "instance.env"
    before = state(scenario.out)
    subprocess.run(["chattr", "+i", str(target)], check=True, timeout=HUNG_AFTER)
    try:
        run = scenario.apply(scenario.emulator())
        expect_as_before(scenario, before, run, f"{target}: is immutable (chattr +i) and cannot be replaced; "
                                                "nothing was changed")
    finally:
        subprocess.run(["chattr", "-i", str(target)], check=True, timeout=HUNG_AFTER)
    assert scenario.apply(scenario.emulator()).code == 0 and digest(scenario.out) == good  # and then it works
    record("immutable-target", "refused before any change, files untouched", **figures(run))


# -- the commit fails: everything is put back -----------------------------------------------------
def inject(syscall: str, error: str, when: str) -> List[str]:
    return ["strace", "-f", "-qq", "-o", "/dev/null", "-e", f"inject={syscall}:error={error}:when={when}"]


def fail_each_call(scenario: Scenario, syscall: str, error: str) -> Tuple[List[Run], Run]:
    """Fail the 1st, then the 2nd, ... call of `syscall` until a run no longer reaches that many:
    every failing run must leave the old state; the first clean run must write the new one."""
    good = old_outputs(scenario)
    before = state(scenario.out)
    emulator = scenario.emulator()
    failed: List[Run] = []
    for nth in range(1, 12):
        run = wrapped(scenario, inject(syscall, error, str(nth)), *apply_args(scenario, emulator), emulator=emulator)
        if run.code == 0:
            assert digest(scenario.out) == good
            return failed, run
        assert run.code == 4, run.stderr
        assert state(scenario.out) == before, (nth, run.stderr)
        failed.append(run)
    raise AssertionError(f"{syscall} failing: no clean run after {len(failed)} injections")


def test_rename_fails_in_the_commit(scenario: Scenario, record: Record) -> None:
    failed, _ = fail_each_call(scenario, "renameat", "EBUSY")
    assert len(failed) == 3  # one rename per changed file; for the 2nd and 3rd, earlier ones were put back
    for run, name in zip(failed, ("instance.sh", "instance.env", "credentials")):
        assert run.stderr == (f"cc-imds: {scenario.out}/{name}: cannot replace it: Device or resource busy; "
                              "every output was put back as it was\n")
    record("commit-rename-fails", "each of 3 renames failed in turn: old files put back each time",
           **figures(failed[-1]))


def test_fsync_fails(scenario: Scenario, record: Record) -> None:
    failed, _ = fail_each_call(scenario, "fsync", "EIO")
    assert len(failed) == 4  # three temp files (staging), then the directory (commit)
    for run, name in zip(failed, ("instance.sh", "instance.env", "credentials")):
        assert run.stderr.endswith(f"{scenario.out}/{name}: Input/output error; nothing was changed\n"), run.stderr
    assert failed[3].stderr == (f"cc-imds: {scenario.out}: fsync failed after replacing files in it: "
                                "Input/output error; every output was put back as it was\n")
    record("commit-fsync-fails", "each of 4 fsyncs failed in turn (last: the directory's): old files put back",
           **figures(failed[3]))


def test_rollback_fails_too(scenario: Scenario, record: Record) -> None:
    old_outputs(scenario)
    emulator = scenario.emulator()
    old_sh = (scenario.out / "instance.sh").read_bytes()
    run = wrapped(scenario, inject("renameat", "EIO", "2+"), *apply_args(scenario, emulator), emulator=emulator)
    backups = [p for p in scenario.out.iterdir() if p.name.startswith(".instance.sh.cc-imds-old-")]
    assert run.code == 4 and len(backups) == 1
    assert run.stderr.splitlines() == [
        f"cc-imds: {scenario.out}/instance.env: cannot replace it: Input/output error; putting the old files back "
        "failed, so these hold new content:",
        f"cc-imds: {scenario.out}/instance.sh: holds the NEW content; the old file is kept at {backups[0]} "
        "(putting it back failed: Input/output error)",
    ]
    assert backups[0].read_bytes() == old_sh and backups[0].stat().st_uid == NOBODY  # the old file, intact
    assert (scenario.out / "instance.sh").read_bytes() != old_sh
    assert not (scenario.out / "credentials").exists()
    assert sorted(p.name for p in scenario.out.iterdir()) == sorted(["instance.sh", "instance.env", backups[0].name])
    record("rollback-fails", "error says which file holds new content and where the old one is kept",
           **figures(run))


STEP_FAULTS = [  # a syscall of the write phase, and what it fails with
    ("mkdirat", "EROFS", "Read-only file system; nothing was changed"),
    ("fchmod", "EACCES", "Permission denied; nothing was changed"),
    ("fsync", "EDQUOT", "Disk quota exceeded; nothing was changed"),
    ("linkat", "ENOSPC", "cannot keep the old file to roll back to: No space left on device; nothing was changed"),
    ("renameat", "EIO", "Input/output error; every output was put back as it was"),
]


def test_each_step_failing(scenario: Scenario, record: Record) -> None:
    old_outputs(scenario)
    emulator = scenario.emulator()
    doc = declaration(scenario.out)
    doc["env"].append({"path": f"{scenario.out}/new/dir/region.env", "format": "systemd",
                       "vars": {"AWS_REGION": "region"}})  # a directory to make
    before = state(scenario.out)
    runs = []
    for syscall, error, message in STEP_FAULTS:
        run = wrapped(scenario, inject(syscall, error, "1"), *apply_args(scenario, emulator, doc), emulator=emulator)
        assert run.code == 4, (syscall, run.stderr)
        assert run.stderr.startswith(f"cc-imds: {scenario.out}/") and run.stderr.endswith(f"{message}\n"), run.stderr
        assert state(scenario.out) == before, syscall  # no temp, no link, no new directory
        runs.append(run)
    record("write-step-errors", f"{len(runs)} steps x errnos: each named, nothing changed, nothing left",
           **figures(runs[-1]))


# -- --root is a chroot ---------------------------------------------------------------------------
def test_root_escape(scenario: Scenario, record: Record) -> None:
    root, host = scenario.tmp / "image", scenario.tmp / "host"
    (host / "etc").mkdir(parents=True)
    (host / "var").mkdir()
    root.mkdir()
    (root / "etc").symlink_to(host / "etc")  # absolute: restarts at the root
    (root / "var").symlink_to("../" * 20 + str(host / "var").lstrip("/"))  # `..` never climbs above the root
    emulator = scenario.emulator()
    doc = {"values": {"instance_id": "meta-data/instance-id"},
           "env": [{"path": "/etc/app/instance.sh", "format": "shell", "vars": {"INSTANCE_ID": "instance_id"}},
                   {"path": "/var/app/instance.env", "format": "systemd", "vars": {"INSTANCE_ID": "instance_id"}}]}
    run = wrapped(scenario, [], *apply_args(scenario, emulator, doc), "--root", str(root), emulator=emulator)
    assert run.code == 0, run.stderr
    assert list((host / "etc").iterdir()) == [] and list((host / "var").iterdir()) == []
    inside = root / str(host).lstrip("/")
    assert "INSTANCE_ID='i-0a1b2c3d4e5f60789'" in (inside / "etc/app/instance.sh").read_text()
    assert "INSTANCE_ID='i-0a1b2c3d4e5f60789'" in (inside / "var/app/instance.env").read_text()
    assert run.stdout.splitlines() == [  # reported as they really are
        f"created   {root}/etc/app/instance.sh -> {inside}/etc/app/instance.sh (0644)",
        f"created   {root}/var/app/instance.env -> {inside}/var/app/instance.env (0644)",
    ]
    record("root-escape", "absolute and ../ links resolved inside --root; nothing written outside",
           **figures(run))


def test_symlink_loop(scenario: Scenario, record: Record) -> None:
    root = scenario.tmp / "image"
    root.mkdir()
    (root / "etc").symlink_to("/loop")
    (root / "loop").symlink_to("etc")
    emulator = scenario.emulator()
    doc = {"values": {"instance_id": "meta-data/instance-id"},
           "env": [{"path": "/etc/app.sh", "format": "shell", "vars": {"INSTANCE_ID": "instance_id"}}]}
    run = wrapped(scenario, [], *apply_args(scenario, emulator, doc), "--root", str(root), emulator=emulator)
    assert run.code == 4
    assert run.stderr.startswith(f"cc-imds: {root}/etc/app.sh: {root}/")
    assert run.stderr.endswith(": more than 40 symbolic links on the way (a loop?); nothing was changed\n")
    assert sorted(os.listdir(root)) == ["etc", "loop"]
    record("symlink-loop", "error naming the loop, nothing written", **figures(run))


# -- the lock -------------------------------------------------------------------------------------
PRIVATE_RUN = """set -e
mount -t tmpfs -o mode=0755 cc-imds-test /run
mkdir -m 1777 /run/lock
{setup}
set +e
"$@"
status=$?
{teardown}
exit $status
"""
AS_NOBODY = "setpriv --reuid=65534 --regid=65534 --clear-groups"


def in_private_run(setup: str, teardown: str = "") -> List[str]:
    """A private mount namespace with an empty /run (and a world-writable /run/lock): as at boot."""
    script = PRIVATE_RUN.format(setup=setup, teardown=teardown)
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh"]


def without_lock_env() -> Dict[str, str]:
    return {"CC_IMDS_LOCK": ""}  # the default lock, as cloud-init's handle uses it


def test_lock_squatted_by_another_user(scenario: Scenario, record: Record) -> None:
    good = scenario.good_outputs()
    shutil.rmtree(scenario.out)
    emulator = scenario.emulator()
    # nobody creates and holds the lock file where the lock used to be, and tries where it is now
    squat = (f"{AS_NOBODY} flock -o /run/lock/cc-imds.lock sleep 20 >/dev/null 2>&1 &\n"
             "squatter=$!\n"
             "while [ ! -e /run/lock/cc-imds.lock ]; do sleep 0.01; done\n"
             "while flock -n /run/lock/cc-imds.lock true; do sleep 0.01; done\n"  # until it is held
             f"! {AS_NOBODY} mkdir /run/cc-imds 2>/dev/null\n"
             f"! {AS_NOBODY} touch /run/cc-imds/lock 2>/dev/null")
    release = "kill $(pgrep -P $squatter) $squatter"
    doc = declaration(scenario.out, deadline=5)
    run = wrapped(scenario, [*in_private_run(squat, release), "timeout", "30"], *apply_args(scenario, emulator, doc),
                  emulator=emulator, env=without_lock_env())
    assert run.code == 0, run.stderr
    assert run.seconds < 5 + PROCESS_SLACK
    assert digest(scenario.out) == good
    # root's run directory, if someone else got to own it, is refused with a clear message
    misowned = "mkdir -m 0755 /run/cc-imds\nchown 65534:65534 /run/cc-imds"
    refused = wrapped(scenario, [*in_private_run(misowned), "timeout", "30"], *apply_args(scenario, emulator, doc),
                      emulator=emulator, env=without_lock_env())
    assert refused.code == 4
    assert refused.stderr == ("cc-imds: lock /run/cc-imds/lock: /run/cc-imds is owned by uid 65534, not root; "
                              "remove it (it is made again at the next run)\n")
    record("lock-squatted", "ignored: the lock is where only root can create it", **figures(run))


def test_lock_held_past_the_deadline(scenario: Scenario, record: Record) -> None:
    good = scenario.good_outputs()
    lock = scenario.tmp / "held.lock"
    holder = subprocess.Popen(["flock", str(lock), "sleep", "60"])
    try:
        wait_for(lambda: subprocess.run(["flock", "-n", str(lock), "true"], timeout=30).returncode != 0,
                 what="flock(1) to hold the lock")
        run = scenario.apply(scenario.emulator(), declaration(scenario.out, deadline=2), "--lock", str(lock))
    finally:
        holder.kill()
        holder.wait(timeout=30)
    assert run.code == 4, run.stderr
    assert f"cc-imds: lock {lock}: another run (pid {holder.pid}, flock) held it for the whole 2s deadline; " \
           "nothing was changed\n" in run.stderr
    assert 2 <= run.seconds < 2 + PROCESS_SLACK
    assert digest(scenario.out) == good
    record("lock-held", "error naming the lock and its holder at the deadline, files untouched", **figures(run))


# -- drop-ins -------------------------------------------------------------------------------------
@pytest.fixture
def conf_dir(scenario: Scenario) -> Iterator[Path]:
    """A root-owned drop-in directory holding the good declaration."""
    conf = scenario.tmp / "conf.d"
    conf.mkdir()
    (conf / "10-app.yaml").write_text(yaml.safe_dump(declaration(scenario.out)))
    yield conf


def planted(conf: Path, out: Path) -> Path:
    path = conf / "20-planted.yaml"
    path.write_text(yaml.safe_dump({"values": {"iid": "meta-data/instance-id"},
                                    "files": [{"path": f"{out}/pwned", "content": "{{ iid }}"}]}))
    return path


def apply_dropins(scenario: Scenario, conf: Path) -> Run:
    return scenario.cli("apply", "--conf-dir", str(conf), "--endpoint", scenario.emulator().url)


def test_untrusted_dropin_file(scenario: Scenario, record: Record, conf_dir: Path) -> None:
    good = scenario.good_outputs()
    by_user, group_writable = planted(conf_dir, scenario.out), conf_dir / "30-shared.yaml"
    os.chown(by_user, NOBODY, NOBODY)
    shutil.copy(by_user, group_writable)
    group_writable.chmod(0o664)
    run = apply_dropins(scenario, conf_dir)
    assert run.code == 1
    assert run.stderr.splitlines() == [
        f"cc-imds: {by_user}: refused: owned by uid 65534, not root",
        f"cc-imds: {group_writable}: refused: writable by group (mode 0664), not only by its owner",
    ]
    assert digest(scenario.out) == good and not (scenario.out / "pwned").exists()
    record("dropin-untrusted-file", "refused, each file named with its reason; nothing written", **figures(run))


def test_untrusted_dropin_dir(scenario: Scenario, record: Record, conf_dir: Path) -> None:
    good = scenario.good_outputs()
    conf_dir.chmod(0o777)
    run = apply_dropins(scenario, conf_dir)
    assert run.code == 1
    assert run.stderr == (f"cc-imds: {conf_dir}: drop-ins refused: {conf_dir}: writable by group and others "
                          "(mode 0777), not only by its owner\n")
    assert digest(scenario.out) == good
    record("dropin-untrusted-dir", "refused with the reason; nothing written", **figures(run))


def test_oversized_dropin(scenario: Scenario, record: Record, conf_dir: Path) -> None:
    good = scenario.good_outputs()
    huge = conf_dir / "30-huge.yaml"
    huge.write_text("values: {iid: meta-data/instance-id}\n# " + "x" * (8 << 20) + "\n")
    run = apply_dropins(scenario, conf_dir)
    assert run.code == 1
    assert run.stderr == f"cc-imds: {huge}: refused: larger than 1024 KiB, the limit for a drop-in\n"
    assert digest(scenario.out) == good
    record("dropin-oversized", "refused by name at 1 MiB, without reading the rest", **figures(run))
