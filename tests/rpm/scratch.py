"""A scratch root that stands in for an Amazon Linux 2023 image, for `rpm --root` installs.

rpm runs scriptlets chrooted into the root, so it gets what they call: /bin/sh,
Python 3.9 with AL2023's library versions, real cloud-init code (for the module-list
generator), and the shared libraries all of these load. The packages AL2023 would
have are represented by stub RPMs (rpm/ci/stubs.spec) so that dependencies are
checked for real.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import stat
import subprocess
from pathlib import Path
from typing import Dict, Iterable, List

from tests.conftest import HUNG_AFTER

SITE_PACKAGES = "usr/lib/python3.9/site-packages"
# What cc-imds and cloud-init's config reader import, besides the standard library.
LIBRARIES = (
    "yaml", "_yaml", "jsonschema", "pyrsistent", "_pyrsistent_version.py", "attr", "six.py", "jinja2",
    "markupsafe", "requests", "urllib3", "idna", "chardet", "certifi", "configobj.py", "jsonpatch.py",
    "jsonpointer.py",
)
STDLIB_SKIP = ("test", "idlelib", "tkinter", "turtledemo", "ensurepip", "site-packages", "lib2to3", "config-3.9")


def _copy_libraries(binaries: Iterable[Path], root: Path) -> None:
    """Copy every shared library the binaries load (per ldd) to the same path in root."""
    needed = set()
    for binary in binaries:
        result = subprocess.run(["ldd", str(binary)], capture_output=True, text=True, timeout=HUNG_AFTER)
        for match in re.finditer(r"(/\S+\.so[^\s]*) \(0x", result.stdout):
            needed.add(match.group(1))
    for lib in needed:
        target = root / lib.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(os.path.realpath(lib), target)


def build_root(root: Path, python_home: Path, library_sites: List[Path], cloudinit_site: Path) -> None:
    (root / "usr/bin").mkdir(parents=True)
    for name in ("bin", "lib", "lib64", "sbin"):
        (root / name).symlink_to(f"usr/{name}")
    # The directories AL2023's `filesystem` and `systemd` packages own, which rpm would
    # otherwise create unowned and leave behind.
    for name in ("etc", "tmp", "var/tmp", "run", "usr/lib64", "usr/sbin", "usr/share/doc", "usr/share/licenses",
                 "usr/share/man/man1", "usr/lib/systemd/system", "usr/lib/systemd/system-preset"):
        (root / name).mkdir(parents=True, exist_ok=True)
    (root / "dev").mkdir()
    os.mknod(root / "dev/null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    (root / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (root / "etc/group").write_text("root:x:0:\n")

    shutil.copy2("/bin/dash", root / "usr/bin/sh")
    shutil.copy2(python_home / "bin/python3.9", root / "usr/bin/python3.9")
    (root / "usr/bin/python3").symlink_to("python3.9")
    stdlib = python_home / "lib/python3.9"
    shutil.copytree(stdlib, root / "usr/lib/python3.9", symlinks=True,
                    ignore=lambda d, names: [n for n in names if Path(d) == stdlib and n in STDLIB_SKIP])
    site = root / SITE_PACKAGES
    site.mkdir(parents=True)
    wanted = {n.lstrip("_").split(".")[0].lower() for n in LIBRARIES} | {"pyyaml"}
    for library_site in library_sites:
        for entry in library_site.iterdir():
            # Packages and modules, their metadata (jsonschema 3.2 reads its own version), C extensions.
            key = entry.name.split("-")[0].lower() if entry.suffix in (".dist-info", ".egg-info") else entry.name
            if (entry.name in LIBRARIES or key in wanted or entry.suffix == ".so") and not (site / entry.name).exists():
                (shutil.copytree if entry.is_dir() else shutil.copy2)(entry, site / entry.name)
    shutil.copytree(cloudinit_site / "cloudinit", site / "cloudinit")
    elves = [root / "usr/bin/sh", root / "usr/bin/python3.9", *root.glob("usr/lib/python3.9/**/*.so")]
    _copy_libraries(elves, root)
    # Warm the bytecode caches, so that later runs add nothing that could be mistaken for ours
    # (cloud-init loads its mergers on first use).
    chroot(root, "/usr/bin/python3.9", "-c", "import yaml, jsonschema, jinja2, argparse, json; "
           "from cloudinit import util; util.mergemanydict([{'a': [1], 'b': 'x'}, {'a': [2], 'b': 'y'}])")


def chroot(root: Path, *command: str) -> subprocess.CompletedProcess:
    program = shutil.which("chroot") or "/usr/sbin/chroot"
    return subprocess.run([program, str(root), *command], capture_output=True, text=True, check=True,
                          env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}, timeout=HUNG_AFTER)


def rpm(root: Path, *args: str) -> subprocess.CompletedProcess:
    # --force-debian: Debian's rpm otherwise warns that it is not Debian's package manager.
    debian = [] if "--initdb" in args else ["--force-debian"]
    return subprocess.run(["rpm", *debian, "--root", str(root), "--dbpath", "/var/lib/rpm", *args],
                          capture_output=True, text=True, timeout=HUNG_AFTER)


def snapshot(root: Path) -> Dict[str, str]:
    """Every file and directory under root (but rpm's database) with a content digest."""
    state: Dict[str, str] = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        if rel.startswith("var/lib/rpm"):
            continue
        if path.is_symlink():
            state[rel] = "-> " + os.readlink(path)
        elif path.is_file():
            state[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
        else:
            state[rel] = "dir"
    return state


def diff(before: Dict[str, str], after: Dict[str, str]) -> List[str]:
    keys = sorted(set(before) | set(after))
    return [f"{k}: {before.get(k)} -> {after.get(k)}" for k in keys if before.get(k) != after.get(k)]
