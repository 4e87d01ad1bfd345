"""SELinux labels (cc_imds/files/labels.py): every file cc-imds creates gets the context its path
has in the policy's file_contexts, set before the rename, as restorecon / `setfiles -r` would.

Two kinds of test:
- the decisions that a host without SELinux takes (no selinuxfs, no binding, disabled, an image
  without a policy): a stand-in `selinux` module that fails if it is touched, since this is
  about what is never imported or called;
- everything else against the real thing: Debian's libselinux Python binding and the reference
  policy built by semodule (tests/selinux/fetch-selinux, under .cache/selinux), on a real
  filesystem, the result checked by Debian's setfiles. This host's kernel has no SELinux, so the
  real checks use --root (the image's policy), which is what labels an AMI built in a chroot,
  and, for the boot run on `/`, a private mount namespace whose /etc/selinux holds the policy,
  with only the kernel's answers stood in for; docs/selinux.md says what that leaves out.

Debian builds the binding per Python version; the one this host can load is Debian 11's, for
Python 3.9 (Debian 13's, for 3.13, needs a newer glibc than Debian 12's), so the real checks are
marked `selinux` and run in the 3.9 run, as AL2023 runs cloud-init on 3.9.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable, Dict, Iterator, List, Optional

import pytest

from cc_imds.files import labels
from cc_imds.testing.emulator import Emulator
from tests.conftest import REPO, cli_env, needs_root, require

CACHE = REPO / ".cache/selinux"
POLICY = CACHE / "policy/etc/selinux"  # the reference policy, built as an image holds it
FILE_CONTEXTS = "/etc/selinux/default/contexts/files/file_contexts"
USERLAND = CACHE / "bookworm"  # setfiles, with this host's own libselinux version
# Debian's python3-selinux built for this Python, where this host can load it.
BINDING = {(3, 9): CACHE / "bullseye/usr/lib/python3/dist-packages",
           (3, 11): CACHE / "bookworm/usr/lib/python3/dist-packages"}.get(sys.version_info[:2])
FETCH = "tests/selinux/fetch-selinux (make selinux) has not run"


@pytest.fixture(autouse=True)
def _fresh_labels() -> Iterator[None]:
    """Each test starts a new run: no policy open, no warning given yet."""
    labels.forget()
    yield
    labels.forget()


# -- what a host without SELinux does: nothing ------------------------------------------------
@pytest.fixture
def untouchable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A `selinux` module on the path that fails the test if anything imports it."""
    (tmp_path / "fake-binding").mkdir()
    (tmp_path / "fake-binding/selinux.py").write_text('raise AssertionError("selinux was imported")\n')
    monkeypatch.syspath_prepend(str(tmp_path / "fake-binding"))
    monkeypatch.delitem(sys.modules, "selinux", raising=False)


def kernel(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, selinuxfs: bool) -> None:
    listing = tmp_path / "filesystems"
    listing.write_text("nodev\tsysfs\nnodev\ttmpfs\n\text4\n" + ("nodev\tselinuxfs\n" if selinuxfs else ""))
    monkeypatch.setattr(labels, "_FILESYSTEMS", str(listing))


def fake_binding(monkeypatch: pytest.MonkeyPatch, enabled: int) -> List[str]:
    """A stand-in binding that records what is called; only is_selinux_enabled answers."""
    calls: List[str] = []

    def called(name: str) -> Callable[..., Any]:
        def call(*args: Any) -> Any:
            calls.append(name)
            if name == "is_selinux_enabled":
                return enabled
            raise AssertionError(f"selinux.{name} called on a host where SELinux is disabled")
        return call

    names = ["is_selinux_enabled", "selabel_open", "selabel_lookup_raw", "fsetfilecon_raw", "selinux_opt"]
    module = SimpleNamespace(SELABEL_CTX_FILE=0, SELABEL_OPT_PATH=5, **{name: called(name) for name in names})
    monkeypatch.setitem(sys.modules, "selinux", module)
    return calls


def test_a_kernel_without_selinux_imports_nothing(untouchable: None, monkeypatch: pytest.MonkeyPatch,
                                                  tmp_path: Path) -> None:
    kernel(monkeypatch, tmp_path, selinuxfs=False)
    assert labels.for_root("/") is None
    assert "selinux" not in sys.modules


def test_writes_on_a_host_without_selinux_import_nothing(untouchable: None, monkeypatch: pytest.MonkeyPatch,
                                                         tmp_path: Path) -> None:
    from cc_imds.outputs.write import write_outputs
    from tests.test_write import out

    kernel(monkeypatch, tmp_path, selinuxfs=False)
    write_outputs([out("/etc/nginx/a.env", b"A=1\n")], root=str(tmp_path / "image"), lock=False)
    assert (tmp_path / "image/etc/nginx/a.env").read_bytes() == b"A=1\n"
    assert "selinux" not in sys.modules


def test_selinux_disabled_calls_nothing_but_the_question(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    kernel(monkeypatch, tmp_path, selinuxfs=True)
    calls = fake_binding(monkeypatch, enabled=0)
    assert labels.for_root("/") is None
    assert calls == ["is_selinux_enabled"]


def test_selinux_without_its_binding_is_one_warning(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    kernel(monkeypatch, tmp_path, selinuxfs=True)
    monkeypatch.setitem(sys.modules, "selinux", None)  # import selinux raises ImportError
    assert labels.for_root("/") is None
    assert labels.for_root("/") is None
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "no libselinux Python binding" in warnings[0], warnings


@pytest.mark.parametrize("config", [None, "SELINUX=disabled\nSELINUXTYPE=default\n"])
def test_an_image_without_selinux_imports_nothing(untouchable: None, tmp_path: Path, config: Optional[str]) -> None:
    image = tmp_path / "image"
    (image / "etc/selinux/default/contexts/files").mkdir(parents=True)
    (image / "etc/selinux/default/contexts/files/file_contexts").write_text("/etc(/.*)?  system_u:object_r:etc_t\n")
    if config is not None:
        (image / "etc/selinux/config").write_text(config)
    assert labels.for_root(str(image)) is None
    assert "selinux" not in sys.modules


def test_an_image_with_a_policy_but_no_binding_here_is_one_warning_naming_setfiles(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    image = tmp_path / "image"
    (image / "etc/selinux/default/contexts/files").mkdir(parents=True)
    (image / "etc/selinux/default/contexts/files/file_contexts").write_text("/etc(/.*)?  system_u:object_r:etc_t\n")
    (image / "etc/selinux/config").write_text("SELINUX=enforcing\nSELINUXTYPE=default\n")
    monkeypatch.setitem(sys.modules, "selinux", None)
    assert labels.for_root(str(image)) is None
    assert labels.for_root(str(image)) is None
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1, warnings
    assert f"setfiles -r {image} {image}/etc/selinux/default/contexts/files/file_contexts" in warnings[0]


@pytest.mark.parametrize(("root", "real", "inside"), [
    ("/", "/etc/a.env", "/etc/a.env"),
    ("/mnt/image", "/mnt/image/etc/a.env", "/etc/a.env"),
    ("/mnt/image/", "/mnt/image/etc/a.env", "/etc/a.env"),
    ("/mnt/image", "/mnt/image", "/"),
])
def test_paths_are_looked_up_inside_the_root(root: str, real: str, inside: str) -> None:
    assert labels.inside(root, real) == inside


# -- the real binding and the reference policy ------------------------------------------------
@pytest.fixture
def binding(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """Debian's libselinux binding for this Python, imported from where fetch-selinux unpacked it."""
    require(BINDING is not None and BINDING.is_dir(),
            f"no Debian libselinux binding for Python {sys.version_info[0]}.{sys.version_info[1]} that this "
            "host can load" if BINDING is None else FETCH)
    before = set(sys.modules)
    monkeypatch.syspath_prepend(str(BINDING))
    import selinux

    assert selinux.__file__.startswith(str(BINDING)), selinux.__file__  # the real one, not a stand-in
    yield selinux
    for name in set(sys.modules) - before:
        if name.split(".")[0] in ("selinux", "_selinux"):
            del sys.modules[name]


@pytest.fixture
def image(tmp_path: Path) -> Path:
    """An image root holding the reference policy, as `SELINUXTYPE=default` in permissive mode."""
    require((POLICY / "default/contexts/files/file_contexts").is_file(), FETCH)
    root = tmp_path / "image"
    (root / "etc").mkdir(parents=True)
    shutil.copytree(POLICY, root / "etc/selinux")
    return root


def xattr(path: Path) -> Optional[str]:
    try:
        return os.getxattr(path, labels.XATTR, follow_symlinks=False).rstrip(b"\0").decode()
    except OSError:
        return None



@pytest.mark.selinux
@pytest.mark.parametrize(("path", "file_type", "context"), [
    ("/etc/nginx/instance.env", stat.S_IFREG, "system_u:object_r:httpd_config_t:s0"),
    ("/etc/nginx", stat.S_IFDIR, "system_u:object_r:httpd_config_t:s0"),
    ("/var/lib/nginx/instance.json", stat.S_IFREG, "system_u:object_r:httpd_var_lib_t:s0"),
    ("/etc/cc-imds/instance.env", stat.S_IFREG, "system_u:object_r:etc_t:s0"),
    ("/lib/systemd/system/app.service", stat.S_IFREG, "system_u:object_r:systemd_unit_t:s0"),  # .subs_dist: /usr/lib
    ("/etc/ssh/ssh_host_ed25519_key", stat.S_IFREG, "system_u:object_r:sshd_key_t:s0"),  # a rule for files only (--)
    ("/etc/ssh/ssh_host_ed25519_key", stat.S_IFDIR, "system_u:object_r:etc_t:s0"),
    ("/run/cc-imds/status.json", stat.S_IFREG, None),  # the policy says <<none>>: no rule
])
def test_contexts_are_the_image_policys(binding: Any, image: Path, path: str, file_type: int,
                                        context: Optional[str]) -> None:
    found = labels.for_root(str(image))
    assert found is not None and found.policy == f"{image}{FILE_CONTEXTS}"
    assert found.context(path, file_type) == context


@pytest.mark.selinux
def test_a_local_file_context_applies(binding: Any, image: Path) -> None:
    """What `semanage fcontext -a -t httpd_sys_content_t '/srv/app(/.*)?'` leaves in the policy."""
    local = image / (FILE_CONTEXTS.lstrip("/") + ".local")
    assert labels.for_root(str(image)).context("/srv/app/x.env", stat.S_IFREG) == "system_u:object_r:var_t:s0"
    local.write_text("/srv/app(/.*)?    system_u:object_r:httpd_sys_content_t:s0\n")
    found = labels.for_root(str(image))  # reopened: the policy's files changed
    assert found is not None and found.context("/srv/app/x.env", stat.S_IFREG) == \
        "system_u:object_r:httpd_sys_content_t:s0"


@pytest.mark.selinux
def test_a_path_without_a_rule_is_left_alone(binding: Any, image: Path, tmp_path: Path) -> None:
    needs_root("security.* extended attributes are root's to set")
    target = image / "run/cc-imds/status.json"
    target.parent.mkdir(parents=True)
    target.write_text("{}")
    os.setxattr(target, labels.XATTR, b"system_u:object_r:var_run_t:s0\0")
    found = labels.for_root(str(image))
    assert found is not None
    fd = os.open(target, os.O_RDONLY)
    try:
        found.label(fd, str(target), stat.S_IFREG)
    finally:
        os.close(fd)
    assert xattr(target) == "system_u:object_r:var_run_t:s0"


@pytest.mark.selinux
def test_a_file_that_cannot_carry_a_label_is_one_warning(binding: Any, image: Path,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    """A pipe stands for a filesystem without xattrs: the kernel answers EOPNOTSUPP for real."""
    found = labels.for_root(str(image))
    assert found is not None
    reader, writer = os.pipe()
    try:
        for _ in range(3):
            found.label(writer, f"{image}/etc/nginx/instance.env", stat.S_IFREG)
    finally:
        os.close(reader)
        os.close(writer)
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1, warnings
    assert "filesystem has no SELinux labels" in warnings[0] and "httpd_config_t" in warnings[0]


@pytest.mark.selinux
def test_the_temp_file_has_its_context_before_its_rename(binding: Any, image: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """files/atomic.py, which every writer uses: at the rename, the temp file already carries the
    context of the final path, so no reader sees the final name with another label."""
    needs_root("security.* extended attributes are root's to set")
    from cc_imds.files import atomic

    (image / "etc/nginx").mkdir(parents=True)
    at_rename: List[Optional[str]] = []
    real_rename = os.rename

    def rename(src: str, dst: str, *, src_dir_fd: int, dst_dir_fd: int) -> None:
        at_rename.append(xattr(Path(f"/proc/self/fd/{src_dir_fd}/{src}")))
        real_rename(src, dst, src_dir_fd=src_dir_fd, dst_dir_fd=dst_dir_fd)

    monkeypatch.setattr(atomic.os, "rename", rename)
    directory = os.open(image / "etc/nginx", os.O_RDONLY | os.O_DIRECTORY)
    try:
        atomic.replace(directory, "instance.env", b"A=1\n", 0o640, path=f"{image}/etc/nginx/instance.env",
                       root=str(image))
    finally:
        os.close(directory)
    assert at_rename == ["system_u:object_r:httpd_config_t:s0"]
    assert xattr(image / "etc/nginx/instance.env") == "system_u:object_r:httpd_config_t:s0"


# -- the proof: cc-imds writes into an image, setfiles finds nothing to change ------------------
DECLARATION = """\
    imds:
      values:
        instance_id: meta-data/instance-id
        region: {path: dynamic/instance-identity/document, key: region}
      env:
        - path: /etc/nginx/instance.env
          format: systemd
          vars: {INSTANCE_ID: instance_id, AWS_REGION: region}
        - path: /etc/cc-imds/instance.sh
          format: shell
          vars: {INSTANCE_ID: instance_id}
      files:
        - path: /var/lib/nginx/conf.d/instance.json
          permissions: "0640"
          content: '{"region": {{ region | json }}}'
        - path: /run/app/instance.txt
          content: '{{ instance_id }}'
"""
WRITTEN = {  # the outputs and the directories cc-imds makes for them, and the context each must end with
    "etc/nginx": "system_u:object_r:httpd_config_t:s0",
    "etc/nginx/instance.env": "system_u:object_r:httpd_config_t:s0",
    "etc/cc-imds": "system_u:object_r:etc_t:s0",
    "etc/cc-imds/instance.sh": "system_u:object_r:etc_t:s0",
    "var/lib/nginx": "system_u:object_r:httpd_var_lib_t:s0",
    "var/lib/nginx/conf.d": "system_u:object_r:httpd_var_lib_t:s0",
    "var/lib/nginx/conf.d/instance.json": "system_u:object_r:httpd_var_lib_t:s0",
    "etc/cloud/cloud.cfg.d/zz-cc-imds.cfg": "system_u:object_r:etc_t:s0",  # enable-module's drop-in
}
UNLABELED = ["run/app", "run/app/instance.txt"]  # /run/.* is <<none>> in the reference policy


def setfiles(image: Path, paths: List[Path], *, dry_run: bool = True) -> str:
    """Debian's setfiles with the image's own file_contexts, as an image build runs it."""
    program = USERLAND / "sbin/setfiles"
    require(program.is_file(), FETCH)
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"),
           "LD_LIBRARY_PATH": f"{USERLAND}/lib/x86_64-linux-gnu:{USERLAND}/usr/lib/x86_64-linux-gnu"}
    args = [str(program), *(["-n"] if dry_run else []), "-v", "-r", str(image), f"{image}{FILE_CONTEXTS}",
            *map(str, paths)]
    result = subprocess.run(args, capture_output=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr.decode()
    return result.stdout.decode() + result.stderr.decode()


@pytest.mark.selinux
def test_outputs_written_into_an_image_carry_its_policys_contexts(
    binding: Any, image: Path, tmp_path: Path, emulator: Emulator, cli: Callable[..., subprocess.CompletedProcess]
) -> None:
    needs_root("security.* extended attributes are root's to set")
    (image / "etc/cloud/cloud.cfg.d").mkdir(parents=True)
    shutil.copy(REPO / "tests/fixtures/al2023-like-cloud.cfg", image / "etc/cloud/cloud.cfg")
    declaration = tmp_path / "declaration.yaml"
    declaration.write_text("#cloud-config\n" + textwrap.dedent(DECLARATION))
    # The CLI in its own process, finding the binding as an installed one is found: on its path.
    env: Dict[str, str] = {"PYTHONPATH": os.pathsep.join([str(REPO), str(BINDING)])}
    apply = ("apply", str(declaration), "--endpoint", emulator.url, "--root", str(image))

    first = cli(*apply, env=env)
    assert first.returncode == 0, first.stderr.decode()
    assert "SELinux" not in first.stderr.decode()  # nothing to warn about
    enabled = cli("enable-module", "--root", str(image), env=env)
    assert enabled.returncode == 0, enabled.stderr.decode()

    assert {path: xattr(image / path) for path in WRITTEN} == WRITTEN
    assert {path: xattr(image / path) for path in UNLABELED} == dict.fromkeys(UNLABELED)
    labeled = [image / path for path in WRITTEN]
    assert setfiles(image, labeled) == ""  # restorecon's verdict: nothing to change
    # and for the paths without a rule, nothing either: setfiles only says it has no label for them
    assert setfiles(image, [image / path for path in UNLABELED]).splitlines() == [
        f"Warning no default label for /{path}" for path in UNLABELED]

    # An unchanged output whose label someone changed gets its context back, as restorecon would
    # give it; its content is not rewritten.
    env_file = image / "etc/nginx/instance.env"
    inode = env_file.stat().st_ino
    os.setxattr(env_file, labels.XATTR, b"system_u:object_r:tmp_t:s0\0")
    assert "Would relabel" in setfiles(image, [env_file])  # setfiles does see a wrong label
    second = cli(*apply, env=env)
    assert second.returncode == 0, second.stderr.decode()
    assert all(line.startswith("unchanged") for line in second.stdout.decode().splitlines()), second.stdout
    assert env_file.stat().st_ino == inode
    assert setfiles(image, labeled) == ""


# The boot run on `/` with the loaded policy, in a private mount namespace where /etc/selinux holds
# the reference policy and /var/lib and /run are fresh tmpfs: the binding's lookups (selabel_open
# with no options: the policy /etc/selinux/config names) and its setting of labels are real; only
# the kernel's two answers (selinuxfs registered, SELinux enabled) are stood in for, since this
# kernel has no SELinux.
ON_HOST = """
import os, sys
import selinux
from cc_imds.files import labels
from cc_imds.cli import main
labels._kernel_has_selinux = lambda: True
selinux.is_selinux_enabled = lambda: 1
code = main(sys.argv[1:])
for path in os.environ["LABELED"].split():
    print("label", path, os.getxattr(path, "security.selinux").rstrip(b"\\0").decode())
sys.exit(code)
"""
HOST_DECLARATION = """\
    imds:
      values:
        instance_id: meta-data/instance-id
      files:
        - path: /var/lib/nginx/conf.d/instance.txt
          content: '{{ instance_id }}'
        - path: /var/lib/app/instance.txt
          content: '{{ instance_id }}'
"""


@pytest.mark.selinux
def test_the_boot_run_on_the_host_labels_with_the_loaded_policy(
    binding: Any, image: Path, tmp_path: Path, emulator: Emulator
) -> None:
    needs_root("mounts in a private mount namespace")
    require(shutil.which("unshare") is not None, "unshare (util-linux) is missing")
    require(Path("/etc/selinux").is_dir(), "no /etc/selinux to mount the policy on (libsemanage-common makes it)")
    declaration = tmp_path / "declaration.yaml"
    declaration.write_text("#cloud-config\n" + textwrap.dedent(HOST_DECLARATION))
    expected = {
        "/var/lib/nginx": "system_u:object_r:httpd_var_lib_t:s0",
        "/var/lib/nginx/conf.d": "system_u:object_r:httpd_var_lib_t:s0",
        "/var/lib/nginx/conf.d/instance.txt": "system_u:object_r:httpd_var_lib_t:s0",
        "/var/lib/app": "system_u:object_r:var_lib_t:s0",
        "/var/lib/app/instance.txt": "system_u:object_r:var_lib_t:s0",
    }
    program = USERLAND / "sbin/setfiles"
    require(program.is_file(), FETCH)
    script = ('mount --bind "$0" /etc/selinux && mount -t tmpfs cc-imds-test /var/lib && '
              'mount -t tmpfs cc-imds-test /run && "$@" || exit; '
              f'LD_LIBRARY_PATH={USERLAND}/lib/x86_64-linux-gnu {program} -n -v {FILE_CONTEXTS} {" ".join(expected)}')
    result = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, str(image / "etc/selinux"),
         sys.executable, "-c", ON_HOST, "apply", str(declaration), "--endpoint", emulator.url],
        capture_output=True, timeout=120,
        env=cli_env({"PYTHONPATH": os.pathsep.join([str(REPO), str(BINDING)]), "LABELED": " ".join(expected)}),
    )
    assert result.returncode == 0, result.stderr.decode()
    lines = result.stdout.decode().splitlines()
    assert [line.split()[0] for line in lines] == ["created", "created", *["label"] * len(expected)], lines
    # the labels the run left, and no line from setfiles after them: nothing to change
    assert dict(line.split()[1:] for line in lines[2:]) == expected
    assert "SELinux" not in result.stderr.decode()


@pytest.mark.selinux
def test_outputs_on_a_filesystem_without_labels_are_written_with_one_warning(
    binding: Any, image: Path, tmp_path: Path, emulator: Emulator
) -> None:
    """ramfs has no extended attributes at all: mounted on the image's /var/lib (in a private
    mount namespace), every file cc-imds makes there is unlabelable, for real (EOPNOTSUPP)."""
    needs_root("mounts a ramfs in a private mount namespace")
    require(shutil.which("unshare") is not None, "unshare (util-linux) is missing")
    declaration = tmp_path / "declaration.yaml"
    declaration.write_text("#cloud-config\n" + textwrap.dedent(DECLARATION))
    (image / "var/lib").mkdir(parents=True)
    written = image / "var/lib/nginx/conf.d/instance.json"
    script = 'mount -t ramfs ramfs "$1" || exit 90; shift; "$@" || exit; cat "$0"'
    result = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, str(written), str(image / "var/lib"),
         sys.executable, "-m", "cc_imds", "apply", str(declaration), "--endpoint", emulator.url, "--root", str(image)],
        capture_output=True, timeout=120, env=cli_env({"PYTHONPATH": os.pathsep.join([str(REPO), str(BINDING)])}),
    )
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout.decode().endswith('{"region": "eu-west-1"}'), result.stdout.decode()
    warnings = [line for line in result.stderr.decode().splitlines() if "SELinux" in line]
    assert len(warnings) == 1, result.stderr.decode()
    assert "cannot label" in warnings[0] and "the filesystem has no SELinux labels" in warnings[0]
    # the outputs elsewhere in the image got their contexts all the same
    assert xattr(image / "etc/nginx/instance.env") == "system_u:object_r:httpd_config_t:s0"
