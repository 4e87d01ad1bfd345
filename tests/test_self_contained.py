"""The repository stands alone: no file refers to a path outside it, and a fresh clone in an
empty folder builds and passes the fast suite.

What counts as "outside", found by reading every tracked file (binary files aside):
- a relative path that climbs above its base: `../sibling/x`, `../..`, or `$(dirname "$0")/../../..`
  from a script two levels down; `os.path.join(..., "..")`, whose destination cannot be checked
  (a lone `../`, as in prose or `"../" * n`, names nothing);
- `Path(__file__)` followed by more `.parent`s than the file is deep, or `REPO.parent`;
- an absolute path into a home directory or a workspace root (`/home/...`, `/Users/...`,
  `/root/...`, `/workspace/...`, `.../Users/...` under a mount): a developer's or a CI worker's
  machine. System paths the product and its tooling use (`/etc/cloud`, `/usr/bin`, `/run`,
  `/mnt/image` for an image being built), and the virtual paths tests write inside a scratch
  root (`/a/etc/x`), are fine;
- a home-relative path: `~/`, `$HOME/`, `${HOME}/`, `$(HOME)/`, or a Windows drive path;
- a tracked symlink whose target leaves the repository, or a submodule.
A few legitimate hits are listed in ALLOWED, each with why.
"""

from __future__ import annotations

import os
import posixpath
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Dict, Iterator, List, NamedTuple, Tuple

import pytest

from tests.conftest import HUNG_AFTER, REPO, require

# Where people's and CI workers' files live: an absolute path under one is on somebody's machine.
MACHINE_ROOTS = {"home", "Users", "root", "Volumes", "work", "workspace", "workspaces", "builds", "runner", "scratch"}
# This file's examples of what the scan must catch are outside on purpose.
SELF = "tests/test_self_contained.py"
# (file, text, why): hits that do not leave the repository, or leave it on purpose.
ALLOWED: List[Tuple[str, str, str]] = [
    ("Makefile", "$(HOME)/.pyenv", "where pyenv keeps the Python interpreters; overridable with PYENV_ROOT"),
    ("tests/test_write.py", "../run", "a symlink target inside a scratch root (/var/run -> ../run)"),
    ("tests/test_write.py", "../../../../../../../../..", "a hostile symlink target: --root must confine it"),
]

_PATH_CHARS = r"[\w.+@=:,~%-]"
_DOTDOT = re.compile(r"(?<![\w.])\.\.(?=/|[\"'`\s)]|$)")
_ABSOLUTE = re.compile(
    r"(?:^|(?<=[\s\"'`=(\[,:]))/(?P<top>[A-Za-z_][\w.-]*)(?P<rest>/" + _PATH_CHARS + r"[^\s\"'`()<>,;|*\[\]{}]*)",
    re.MULTILINE,
)
_HOME = re.compile(r"(?:(?<![\w/])~|\$HOME|\$\{HOME\}|\$\(HOME\))/|\b[A-Za-z]:\\\\?[A-Za-z]")
_FILE_PARENTS = re.compile(r"Path\(__file__\)(?:\.resolve\(\))?(?P<chain>(?:\.parent\b)+|\.parents\[(?P<n>\d+)\])")
_JOIN_UP = re.compile(r"""(?:\bjoin\(.*,\s*|/\s*)["']\.\.["']""")
_REPO_PARENT = re.compile(r"\b(?:REPO|ROOT|TOP|HERE)\.parent\b")
_SCRIPT_DIR = re.compile(r"""\$\(dirname\s+(?:--\s+)?"?\$(?:0|\{BASH_SOURCE\[0\]\})"?\)"?$""")


class Finding(NamedTuple):
    file: str
    line: int
    text: str
    why: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.text!r}: {self.why}"


def _token_around(line: str, start: int, end: int) -> Tuple[int, int]:
    chars = re.compile(_PATH_CHARS + "|/")
    while start > 0 and chars.match(line[start - 1]):
        start -= 1
    while end < len(line) and chars.match(line[end]):
        end += 1
    return start, end


def _escapes(base: str, path: str) -> bool:
    """Whether `path`, taken relative to repository-relative directory `base`, leaves the repository."""
    return posixpath.normpath(posixpath.join(base or ".", path)).split("/")[0] == ".."


def _base_of(name: str, line: str, start: int) -> str:
    """Where a relative path starts: a Markdown link's target from its page's directory (where the
    renderer resolves it), anything else from the repository's top."""
    if name.endswith(".md") and line[:start].endswith("]("):
        return posixpath.dirname(name)
    return ""


def scan_text(name: str, text: str) -> Iterator[Finding]:
    """Every reference to a path outside the repository in one file's text."""
    here = posixpath.dirname(name)
    depth = name.count("/") + 1
    for number, line in enumerate(text.splitlines(), 1):
        seen = set()
        for match in _DOTDOT.finditer(line):
            start, end = _token_around(line, match.start(), match.end())
            token = line[start:end]
            if (start, end) in seen:
                continue
            seen.add((start, end))
            if token.startswith("/"):
                if _SCRIPT_DIR.search(line[:start]):
                    if _escapes(here, token.lstrip("/")):
                        yield Finding(name, number, token, "climbs above the repository from the script's directory")
                elif start > 0 and line[start - 1] in ")}":
                    yield Finding(name, number, line[max(0, start - 20):end], "climbs from a computed directory")
            elif "/" in token and _escapes(_base_of(name, line, start), token) and posixpath.normpath(token) != "..":
                yield Finding(name, number, token, "climbs above its base: a sibling folder or beyond")
        for match in _ABSOLUTE.finditer(line):
            parts = match.group(0).split("/")
            if match.group("top") in MACHINE_ROOTS or "home" in parts[2:] or "Users" in parts[2:]:
                yield Finding(name, number, match.group(0), "a path on a developer's or CI worker's machine")
        for match in _HOME.finditer(line):
            yield Finding(name, number, line[match.start():match.end() + 20].split()[0], "a home-relative path")
        for match in _FILE_PARENTS.finditer(line):
            ups = int(match.group("n")) + 1 if match.group("n") else match.group("chain").count(".parent")
            if ups > depth:
                yield Finding(name, number, match.group(0), f"{ups} levels up from a file {depth} deep")
        for match in _JOIN_UP.finditer(line):
            yield Finding(name, number, match.group(0), "joins a parent directory: where it leads cannot be checked")
        for match in _REPO_PARENT.finditer(line):
            yield Finding(name, number, match.group(0), "the folder that holds the repository")


def tracked_files() -> List[Tuple[str, str]]:
    """(path, git mode) of every tracked file, or of every file when this is not a git checkout."""
    listing = subprocess.run(["git", "-C", str(REPO), "ls-files", "-s", "-z"], capture_output=True, text=True,
                             timeout=HUNG_AFTER)
    if listing.returncode != 0:  # an unpacked source archive, as in the RPM build
        skip = {".git", ".venv", ".cache", "build", "__pycache__", ".hypothesis"}
        found = []
        for top, dirs, files in os.walk(REPO):
            dirs[:] = [d for d in dirs if d not in skip]
            found += [(os.path.relpath(os.path.join(top, f), REPO), "100644") for f in files]
        return found
    entries = []
    for entry in listing.stdout.split("\0"):
        if entry:
            meta, path = entry.split("\t", 1)
            entries.append((path, meta.split()[0]))
    return entries


def repository_findings() -> List[Finding]:
    findings: List[Finding] = []
    for name, mode in tracked_files():
        path = REPO / name
        if mode == "160000":
            findings.append(Finding(name, 0, name, "a submodule: content from outside the repository"))
            continue
        if mode == "120000" or path.is_symlink():
            target = os.readlink(path)
            if target.startswith("/") or _escapes(posixpath.dirname(name), target):
                findings.append(Finding(name, 0, target, "a symlink that leaves the repository"))
            continue
        if name in (".gitignore", SELF) or not path.exists():  # .gitignore's patterns are repository-relative
            continue
        data = path.read_bytes()
        if b"\0" in data:
            continue
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            continue
        findings.extend(scan_text(name, text))
    return findings


def test_no_file_refers_to_a_path_outside_the_repository() -> None:
    allowed = {(name, text) for name, text, _ in ALLOWED}
    left = [f for f in repository_findings() if not any(f.file == a and a_text in f.text for a, a_text in allowed)]
    assert left == [], "\n".join(map(str, left))


@pytest.mark.parametrize(
    ("name", "line", "outside"),
    [
        # The defect this test exists for: a fixture read from a sibling folder.
        ("tests/rpm/test_package.py", 'FIXTURE = REPO / "../sibling/fixtures/al2023-like-cloud.cfg"', True),
        ("tests/x.py", "open('../../notes.txt')", True),
        ("tests/e2e/fetch", 'cd "$(dirname "$0")/../.."', False),
        ("tests/e2e/fetch", 'cd "$(dirname "$0")/../../.."', True),
        (".ci/run", 'cd "$(dirname "$0")/.."', False),
        ("Makefile", "cp $(TOP)/../other/x .", True),
        ("tests/x.py", 'CFG = "/home/dev/cc-imds/fixtures/cloud.cfg"', True),
        ("README.md", "see /Users/me/src/notes.md", True),
        ("tests/x.py", 'DATA = "/home/runner/src/cc-imds/trees"', True),
        ("tests/x.py", 'DATA = "/mnt/c/Users/me/trees"', True),
        ("tests/x.py", 'DATA = "/workspace/fixtures/trees"', True),
        ("cc_imds/files/inside_root.py", "`--root /mnt/image` must never reach outside the image", False),
        ("tests/test_write.py", 'write(tmp_path, [out("/a/etc/x", b"x")])', False),
        ("tests/x.py", "os.chdir('../..')", True),
        ("docs/RELIABILITY.md", "Absolute and ../ symlinks inside --root", False),
        ("docs/bounds.md", "measured in [`bench/DEADLINE.md`](../bench/DEADLINE.md)", False),
        ("docs/bounds.md", "see [notes](../../notes/x.md)", True),
        ("docs/bounds.md", "the figures in ../bench/DEADLINE.md", True),
        ("README.md", "see [notes](../notes/x.md)", True),
        ("tests/x.py", 'target = "../" * 20 + "etc"', False),
        ("tests/x.py", 'p = os.path.expanduser("~/fixtures/x")', True),
        ("tests/x.sh", 'source "$HOME/.config/cc-imds"', True),
        ("tests/x.py", "REPO = Path(__file__).resolve().parent.parent.parent", True),
        ("tests/x.py", "REPO = Path(__file__).resolve().parents[1]", False),
        ("tests/x.py", 'up = os.path.join(os.path.dirname(__file__), "..", "..")', True),
        ("cc_imds/declaration/build.py", 'if any(part in (".", "..") for part in parts):', False),
        ("tests/e2e/x.py", "SHARED = REPO.parent / 'shared'", True),
        ("cc_imds/tools/enable.py", 'CLOUD_CFG = "/etc/cloud/cloud.cfg"', False),
        ("cc_imds/imds/client.py", 'TOKEN = "/latest/api/token"', False),
        ("tests/test_config.py", '"dotty": "meta-data/../secret",', False),
        ("tests/test_config.py", '{"path": "/etc/../etc/passwd"}', False),
        ("README.md", "`VAR=$(curl .../instance-id)`", False),
        ("README.md", "http://169.254.169.254/latest/meta-data/ and https://github.com/canonical/cloud-init", False),
        ("rpm/cc-imds.spec", "%{python3_sitelib}/cc_imds/examples/instance-env.yaml", False),
    ],
)
def test_the_scan_sees_what_leaves_the_repository(name: str, line: str, outside: bool) -> None:
    assert bool(list(scan_text(name, line + "\n"))) is outside


# -- a fresh clone --------------------------------------------------------------------
def _tree_to_clone() -> str:
    """The commit being submitted: HEAD plus uncommitted changes to tracked files (as rpm/build-rpm takes it)."""
    stash = subprocess.run(["git", "-C", str(REPO), "stash", "create"], capture_output=True, text=True, check=True,
                           timeout=HUNG_AFTER)
    return stash.stdout.strip() or "HEAD"


def _fresh_clone(tmp_path: Path) -> Tuple[Path, Dict[str, str]]:
    """The commit under test, cloned into an empty folder with no siblings, and an environment
    that lends it nothing of this checkout."""
    if subprocess.run(["git", "-C", str(REPO), "rev-parse"], capture_output=True, timeout=HUNG_AFTER).returncode != 0:
        require(False, "not a git checkout")
    empty = tmp_path / "empty"
    empty.mkdir()
    clone = empty / "cc-imds"
    commit = _tree_to_clone()
    subprocess.run(["git", "clone", "--quiet", "--no-checkout", "--shared", str(REPO), str(clone)], check=True,
                   timeout=HUNG_AFTER)
    subprocess.run(["git", "-C", str(clone), "checkout", "--quiet", "--detach", commit], check=True, timeout=HUNG_AFTER)
    assert sorted(p.name for p in empty.iterdir()) == ["cc-imds"]
    return clone, {"PATH": os.environ["PATH"], "LANG": "C.UTF-8", "HOME": str(tmp_path), "PIP_NO_INDEX": "1"}


@pytest.mark.clone
def test_a_fresh_clone_builds_the_rpm_with_only_its_build_requires(tmp_path: Path) -> None:
    """The build is `--without tests` (its import check and validation still run), in a
    virtualenv holding only what the spec BuildRequires, from a clone with no .cache and no
    build output."""
    build_python = REPO / ".venv/al2023-build-notests/bin/python"
    can_build = build_python.exists() and shutil.which("rpmbuild") is not None
    require(can_build, "no AL2023 build toolchain (`make rpm` sets it up)")
    clone, env = _fresh_clone(tmp_path)
    built = subprocess.run(["rpm/build-rpm", "--ci", "--without", "tests"], cwd=clone, capture_output=True,
                           text=True, env={**env, "AL2023_PYTHON": str(build_python)}, timeout=HUNG_AFTER)
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    assert list((clone / "rpm/build/RPMS/noarch").glob("cc-imds-*.noarch.rpm"))
    assert "Check import: cc_imds.cli" in built.stderr  # %check ran, on the clone's build root
    _assert_untouched(clone)


@pytest.mark.clone
def test_a_fresh_clone_passes_the_fast_suite(tmp_path: Path) -> None:
    """Tools come from outside (this interpreter), but nothing of the repository does: the
    clone has no .cache, no build output, no sibling folder.

    CI's checkout is itself such a clone: `.ci/run` names its commit in CC_IMDS_FRESH_CHECKOUT
    when it found nothing but tracked files there before setup, and the whole suite then runs
    from it on both Pythons. Running the fast suite a third time would prove nothing more."""
    fresh = os.environ.get("CC_IMDS_FRESH_CHECKOUT")
    if fresh and fresh == subprocess.run(["git", "-C", str(REPO), "rev-parse", _tree_to_clone()],
                                         capture_output=True, text=True, timeout=HUNG_AFTER).stdout.strip():
        pytest.skip(f"this checkout of {fresh[:12]} was a fresh clone when CI began, and the suite runs from it")
    clone, env = _fresh_clone(tmp_path)
    fast = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-x",
         "-m", "not slow and not cloudinit and not rpm and not clone", "tests"],
        cwd=clone, capture_output=True, text=True, env=env,
        timeout=HUNG_AFTER)
    assert fast.returncode == 0, fast.stdout[-4000:] + fast.stderr[-2000:]
    assert " passed" in fast.stdout.splitlines()[-1]
    _assert_untouched(clone)


def _assert_untouched(clone: Path) -> None:
    """The run read its code from the clone, and left the clone's tracked files as they were."""
    status = subprocess.run(["git", "-C", str(clone), "status", "--porcelain"], capture_output=True, text=True,
                            timeout=HUNG_AFTER)
    assert status.stdout == ""
