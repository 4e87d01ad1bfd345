"""The box's disk images: Debian's packages, cc-imds from the checkout's wheel, the box's units.

Two layers, each cached under .cache/box/ and keyed by everything that goes into it:

- the base: `mmdebstrap` of a Debian release with systemd, cloud-init and the kernel, from
  the mirror the host's own apt sources name. Slow (about a minute), rebuilt only when the
  release, mirror or package list changes.
- the image: a copy of the base with cc-imds installed as the RPM installs it: from a wheel
  built from the checkout into /usr, the watcher's units and preset from systemd/, then
  what the RPM's %post runs (`cc-imds enable-module`, and `systemctl preset` of the path
  unit); plus the box's units and scripts (guest/), made into an ext4 disk with `mkfs.ext4
  -d`. A few seconds; rebuilt when the wheel's contents, systemd/ or guest/ change.

The kernel is Debian's cloud kernel. Its NVMe driver and ext4 are built in, so the box boots
it directly from an NVMe disk (as EC2's Nitro instances do), with no initramfs and without
the kernel's modules, which nothing here needs and which are slow to load under emulation.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
import zipfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Optional

from tests.conftest import HUNG_AFTER

REPO = Path(__file__).resolve().parents[2]
CACHE = REPO / ".cache" / "box"
GUEST = Path(__file__).resolve().parent / "guest"
UNITS = REPO / "systemd"  # the RPM's units and preset
LAUNCHER = REPO / "bin/cc-imds"  # /usr/bin/cc-imds, as the RPM installs it
DISK_SIZE = "2G"


@dataclass(frozen=True)
class Release:
    name: str  # "debian-12"
    suite: str  # "bookworm"
    cloud_init: str  # the cloud-init the guest runs
    # The suite's own cloud-init, when the guest runs another: the package is installed for
    # its dependencies, units and ds-identify, and its `cloudinit` replaced by upstream's
    # (tests/vendor/cloud-init/, unpacked under .cache/cloud-init/).
    packaged_cloud_init: str = ""
    # The suite has python3-installer (Debian 12 and later); otherwise the image build brings
    # the same package's source, installer, from PyPI.
    has_installer: bool = True

    @property
    def debian_cloud_init(self) -> str:
        return self.packaged_cloud_init or self.cloud_init


RELEASES = {
    r.name: r
    for r in (
        # Debian 11 has Amazon Linux 2023's Python stack (3.9, jsonschema 3.2.0, Jinja2 2.11.3)
        # and runs AL2023's cloud-init 22.2.2 in place of its own 20.4.1.
        Release("debian-11", "bullseye", "22.2.2", packaged_cloud_init="20.4.1", has_installer=False),
        Release("debian-12", "bookworm", "22.4.2"),
        Release("debian-13", "trixie", "25.1.4"),
    )
}

# What an EC2 image of the release needs to boot cloud-init and run cc-imds: systemd,
# cloud-init and cc-imds's three libraries, `ip` (the emulator's addresses), ifupdown
# (cloud-init's network renderer on Debian), e2fsprogs and openssh-client (cloud-init's
# resizefs and host keys), the kernel, and python3-installer to install the wheel. And
# node_exporter, which reads the watcher's metrics file where operators would.
PACKAGES = (
    "systemd", "systemd-sysv", "udev", "cloud-init", "python3-yaml", "python3-jsonschema", "python3-jinja2",
    "python3-installer", "iproute2", "ifupdown", "e2fsprogs", "openssh-client", "linux-image-cloud-amd64",
    "prometheus-node-exporter",
)
# Documentation, translations and kernel modules are left out: smaller, faster to build.
DPKG_EXCLUDES = (
    "/usr/share/doc/*", "/usr/share/man/*", "/usr/share/info/*", "/usr/share/locale/*",
    "/lib/modules/*/kernel/*", "/usr/lib/modules/*/kernel/*",
)
# Upstream's cloud-init, unpacked by tests/e2e/fetch-cloud-init from the vendored tarball,
# whose checksum file names the version.
UNPACKED_CLOUD_INIT = REPO / ".cache" / "cloud-init"
VENDORED_SUMS = REPO / "tests/vendor/cloud-init/SHA256SUMS"
# The variant upstream's tools/render-cloudcfg renders its cloud.cfg for, in a guest that
# runs upstream's cloud-init. Not `amazon`: its distro sets the hostname with hostnamectl,
# which needs D-Bus, and Debian's cloud-init.service runs before sysinit.target, so before
# D-Bus can be up (dbus installed or not): set_hostname fails and cloud-init ends in error.
CLOUD_CFG_VARIANT = "debian"
QUIET_UNITS = ("getty@.service", "serial-getty@.service", "getty-static.service", "e2scrub_reap.service")
# Bump when the base's build steps change in a way their inputs do not show. (The image's
# key includes this file, so any change here rebuilds the image.)
BASE_RECIPE = "1"


@dataclass(frozen=True)
class Image:
    release: Release
    disk: Path  # raw ext4 image; copy it before booting
    kernel: Path
    key: str
    built: bool  # False when it came from the cache
    seconds: float


class BuildError(Exception):
    pass


def run(command: List[str], *, log: Optional[Path] = None, env: Optional[Dict[str, str]] = None) -> str:
    """Run a build step; on failure, raise with the command and the end of its output."""
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=HUNG_AFTER)
    output = done.stdout + done.stderr
    if log is not None:
        with log.open("a") as handle:
            handle.write(f"$ {' '.join(command)}\n{output}\n")
    if done.returncode != 0:
        raise BuildError(f"{' '.join(command[:3])}... exited {done.returncode}:\n{output[-3000:]}")
    return done.stdout


def debian_mirror() -> str:
    """The Debian mirror of the host's apt sources (the rule tests/e2e/fetch-cloud-init uses)."""
    for sources in sorted(Path("/etc/apt/sources.list.d").glob("*.sources")):
        for line in sources.read_text().splitlines():
            if line.startswith("URIs:"):
                return line.split()[1]
    listing = Path("/etc/apt/sources.list")
    if listing.exists():
        for line in listing.read_text().splitlines():
            words = line.split()
            if words[:1] == ["deb"] and "security" not in line:
                for word in words[1:]:
                    if "://" in word:
                        return word
    raise BuildError("cannot find a Debian mirror in the host's apt sources")


def digest(*parts: object) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


@contextmanager
def locked(name: str) -> Iterator[None]:
    """Builds of one release never overlap, even across concurrent test runs."""
    CACHE.mkdir(parents=True, exist_ok=True)
    with (CACHE / f".lock-{name}").open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def _remove_others(directory: Path, prefix: str, keep: Path) -> None:
    for stale in directory.glob(prefix + "*"):
        if stale != keep and not stale.name.endswith(".tmp"):
            shutil.rmtree(stale) if stale.is_dir() else stale.unlink()


# -- the base ------------------------------------------------------------------------------
def packages(release: Release) -> List[str]:
    return [p for p in PACKAGES if release.has_installer or p != "python3-installer"]


def base_root(release: Release, mirror: str) -> Path:
    """A Debian root with everything from PACKAGES installed, and upstream's cloud-init in
    place of Debian's where the release says so; cached."""
    replaced = [release.cloud_init, VENDORED_SUMS.read_text(), CLOUD_CFG_VARIANT] if release.packaged_cloud_init else []
    key = digest(BASE_RECIPE, release.suite, mirror, packages(release), DPKG_EXCLUDES, replaced)
    bases = CACHE / "base"
    final = bases / f"{release.name}-{key}"
    if (final / ".complete").exists():
        return final / "root"
    work = bases / f"{release.name}-{key}.tmp"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    command = [
        "mmdebstrap", "--variant=minbase", "--include=" + ",".join(packages(release)),
        *(f"--dpkgopt=path-exclude={pattern}" for pattern in DPKG_EXCLUDES),
        release.suite, str(work / "root"), f"deb {mirror} {release.suite} main",
    ]
    # INITRD=No: the kernel's postinst makes no initramfs (the box boots without one).
    run(command, log=work / "build.log", env={**os.environ, "INITRD": "No"})
    version = run(["dpkg-query", f"--admindir={work}/root/var/lib/dpkg", "-W", "-f=${Version}", "cloud-init"])
    if not version.startswith(release.debian_cloud_init + "-"):
        raise BuildError(f"{release.suite} has cloud-init {version}, expected {release.debian_cloud_init}")
    if release.packaged_cloud_init:
        _replace_cloud_init(work / "root", release.cloud_init, work / "build.log")
    kernel(work / "root")  # fails now, not at boot, if there is none
    (work / ".complete").touch()
    work.rename(final)
    _remove_others(bases, release.name + "-", final)
    return final / "root"


def _replace_cloud_init(root: Path, version: str, log: Path) -> None:
    """Upstream's `cloudinit` package in place of Debian's, compiled as Debian's packages are
    at install, and its cloud.cfg, which upstream renders at build time with its own tool
    (Debian's cloud.cfg names modules that upstream's release may no longer have)."""
    unpacked = UNPACKED_CLOUD_INIT / version
    site = root / "usr/lib/python3/dist-packages"
    shutil.rmtree(site / "cloudinit")
    shutil.copytree(unpacked / "usr/lib/python3/dist-packages/cloudinit", site / "cloudinit")
    run(["chroot", str(root), "python3", "-m", "compileall", "-q", "/usr/lib/python3/dist-packages/cloudinit"],
        log=log)
    source = root / "tmp/cloud-init-source"
    for name in ("tools/render-cloudcfg", "config/cloud.cfg.tmpl"):
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(unpacked / "src" / name, source / name)
    run(["chroot", str(root), "python3", "/tmp/cloud-init-source/tools/render-cloudcfg", "--variant",
         CLOUD_CFG_VARIANT, "/tmp/cloud-init-source/config/cloud.cfg.tmpl", "/etc/cloud/cloud.cfg"], log=log)
    shutil.rmtree(source)
    ran = run(["chroot", str(root), "cloud-init", "--version"], log=log)
    if version not in ran:
        raise BuildError(f"the image's cloud-init says {ran.strip()!r}, expected {version}")


def kernel(root: Path) -> Path:
    kernels = sorted((root / "boot").glob("vmlinuz-*"))
    if not kernels:
        raise BuildError(f"no kernel in {root}/boot")
    return kernels[-1]


# -- the wheel -----------------------------------------------------------------------------
WHEEL_SOURCES = ("cc_imds", "bin", "schemas", "examples", "setup.cfg", "pyproject.toml", "README.md", "LICENSE")


def build_wheel(out: Path) -> Path:
    """cc-imds's wheel, from the checkout as it is (uncommitted changes included).

    Built with Amazon Linux 2023's toolchain (setuptools 59.6, the venv `make rpm` sets up)
    when it is there, as the RPM is; otherwise with pip's isolated build."""
    shutil.rmtree(out, ignore_errors=True)
    source = out / "source"
    source.mkdir(parents=True)
    for name in WHEEL_SOURCES:
        path = REPO / name
        if path.is_dir():
            shutil.copytree(path, source / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(path, source / name)
    al2023 = REPO / ".venv" / "al2023-build" / "bin" / "python"
    python, isolation = (str(al2023), ["--no-build-isolation"]) if al2023.exists() else (sys.executable, [])
    run([python, "-m", "pip", "wheel", "--quiet", "--no-deps", "--disable-pip-version-check", *isolation,
         "--wheel-dir", str(out), str(source)])
    wheels = sorted(out.glob("cc_imds-*.whl"))
    if len(wheels) != 1:
        raise BuildError(f"expected one cc_imds wheel in {out}, found {[w.name for w in wheels]}")
    return wheels[0]


def wheel_digest(wheel: Path) -> str:
    """What the wheel holds, not its zip timestamps: an unchanged checkout reuses the image."""
    with zipfile.ZipFile(wheel) as archive:
        members = sorted((info.filename, hashlib.sha256(archive.read(info)).hexdigest()) for info in archive.infolist())
    return digest(members)


def tree_digest(top: Path) -> str:
    files = sorted(p for p in top.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    return digest([(str(p.relative_to(top)), p.stat().st_mode & 0o777, p.read_bytes().hex()) for p in files])


# -- the image -----------------------------------------------------------------------------
def build_image(release: Release, wheel: Path, mirror: str) -> Image:
    started = time.monotonic()
    with locked(release.name):
        base = base_root(release, mirror)
        recipe = Path(__file__).read_bytes().hex()  # how the image is made (QUIET_UNITS, _install...)
        key = digest(base.parent.name, wheel_digest(wheel), tree_digest(GUEST), tree_digest(UNITS),
                     LAUNCHER.read_bytes().hex(), recipe)
        images = CACHE / "images"
        disk, vmlinuz = images / f"{release.name}-{key}.raw", images / f"{release.name}-{key}.vmlinuz"
        built = not (disk.exists() and vmlinuz.exists())
        if built:
            images.mkdir(parents=True, exist_ok=True)
            work = CACHE / "work" / release.name
            shutil.rmtree(work, ignore_errors=True)
            work.mkdir(parents=True)
            try:
                root = work / "root"
                run(["cp", "-a", "--reflink=auto", str(base), str(root)])
                _install(root, release, wheel, work / "build.log")
                run(["mkfs.ext4", "-q", "-d", str(root), "-L", "root", str(work / "disk.raw"), DISK_SIZE])
                shutil.copyfile(kernel(root), work / "vmlinuz")
                (work / "disk.raw").rename(disk)
                (work / "vmlinuz").rename(vmlinuz)
            finally:
                shutil.rmtree(work, ignore_errors=True)
            for stale in images.glob(release.name + "-*"):
                if stale not in (disk, vmlinuz):
                    stale.unlink()
    return Image(release, disk, vmlinuz, key, built, time.monotonic() - started)


# Installs a wheel with `installer` (python3-installer) into Debian's layout for its own
# packages, which `DEB_PYTHON_INSTALL_LAYOUT=deb_system` selects from Debian 12 on, named here
# so that Debian 11's Python 3.9, whose default scheme is another, installs the same way.
INSTALL_WHEEL = """
import sys
from installer import install
from installer.destinations import SchemeDictionaryDestination
from installer.sources import WheelFile
site = "/usr/lib/python3/dist-packages"
scheme = {"purelib": site, "platlib": site, "headers": "/usr/include/python3", "scripts": "/usr/bin", "data": "/usr"}
destination = SchemeDictionaryDestination(
    scheme, interpreter="/usr/bin/python3", script_kind="posix", bytecode_optimization_levels=(0, 1))
with WheelFile.open(sys.argv[1]) as source:
    install(source, destination, {"INSTALLER": b"installer\\n"})
"""
# installer's own wheel, for a suite that does not package it, from PyPI; checked.
INSTALLER = ("installer==0.7.0", "installer-0.7.0-py3-none-any.whl",
             "05d1933f0a5ba7d8d6296bb6d5018e7c94fa473ceb10cf198a92ccea19c27b53")


def installer_wheel() -> Path:
    requirement, name, sha256 = INSTALLER
    wheel = CACHE / "installer" / name
    with locked("installer"):
        if not wheel.exists():
            run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
                 "--disable-pip-version-check", "--dest", str(wheel.parent), requirement])
        if hashlib.sha256(wheel.read_bytes()).hexdigest() != sha256:
            raise BuildError(f"{wheel} does not have the sha256 {sha256}")
    return wheel


def _install(root: Path, release: Release, wheel: Path, log: Path) -> None:
    """What an image build does on top of the distribution: the AMI's own cloud-init
    settings, the box's units, then cc-imds as its RPM installs it, and the RPM's %post."""
    cfg = root / "etc/cloud/cloud.cfg.d/01-box.cfg"
    shutil.copyfile(GUEST / "01-box.cfg", cfg)
    scripts = root / "usr/local/lib/box"
    scripts.mkdir(parents=True)
    for script in ("imds_box.py", "collect.py", "record.py", "agent.py", "scrape.py"):
        shutil.copyfile(GUEST / script, scripts / script)
        (scripts / script).chmod(0o755)
    units = sorted((GUEST / "units").glob("*.service"))
    for unit in units:
        shutil.copyfile(unit, root / "etc/systemd/system" / unit.name)
    (root / "etc/box").mkdir()
    (root / "var/lib/box/results").mkdir(parents=True)
    run(["systemctl", f"--root={root}", "enable", "--quiet", *(u.name for u in units)], log=log)
    # Nobody logs in to the box and it has no ext4 snapshots: what these do at boot costs
    # seconds under emulation and tests nothing.
    run(["systemctl", f"--root={root}", "mask", "--quiet", *QUIET_UNITS], log=log)

    # The RPM's files: the package in the system's site-packages and the script in /usr/bin
    # (Debian's layout for its own packages), the units and preset where the unit files say.
    staged = root / "tmp" / wheel.name
    shutil.copyfile(wheel, staged)
    env = dict(os.environ)
    if not release.has_installer:
        tool = installer_wheel()
        shutil.copyfile(tool, root / "tmp" / tool.name)
        env["PYTHONPATH"] = f"/tmp/{tool.name}"  # a pure-Python wheel is importable as it is
    run(["chroot", str(root), "python3", "-c", INSTALL_WHEEL, f"/tmp/{wheel.name}"], log=log, env=env)
    for name in (wheel.name, *(() if release.has_installer else (installer_wheel().name,))):
        (root / "tmp" / name).unlink()
    command = root / "usr/bin/cc-imds"  # with `-s`, as the RPM's %py3_shebang_fix leaves it
    command.write_text("#!/usr/bin/python3 -s\n" + LAUNCHER.read_text().split("\n", 1)[1])
    command.chmod(0o755)
    for name, directory in (("cc-imds-watch.service", "usr/lib/systemd/system"),
                            ("cc-imds-watch.path", "usr/lib/systemd/system"),
                            ("80-cc-imds.preset", "usr/lib/systemd/system-preset")):
        (root / directory).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(UNITS / name, root / directory / name)
    (root / "etc/cc-imds/conf.d").mkdir(parents=True)
    # The RPM's %post: the module drop-in, and the path unit enabled by the preset
    # (%systemd_post on a first install runs `systemctl preset`).
    run(["chroot", str(root), "/usr/bin/cc-imds", "enable-module"], log=log)
    run(["systemctl", f"--root={root}", "preset", "cc-imds-watch.path"], log=log)
    # Last: record that /etc and /var match /usr, as systemd-update-done does at a first
    # boot (systemd's ConditionNeedsUpdate would otherwise rerun ldconfig at every boot).
    usr = (root / "usr").stat().st_mtime_ns
    for directory in ("etc", "var"):
        stamp = root / directory / ".updated"
        stamp.write_text("# /etc and /var are up to date with /usr (see systemd-update-done.service(8)).\n")
        os.utime(stamp, ns=(usr, usr))
