"""The RPM as Amazon Linux 2023 users get it: built by `make rpm`, linted, inspected,
and installed, upgraded, triggered and erased in a scratch root without --nodeps."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Dict, List, Optional

import pytest
import yaml

from tests.conftest import REPO
from tests.e2e.harness import unpacked
from tests.rpm.scratch import SITE_PACKAGES, build_root, chroot, diff, rpm, snapshot

pytestmark = pytest.mark.rpm
REQUIRED = os.environ.get("CC_IMDS_REQUIRE_E2E") == "1"
BUILD = REPO / "rpm" / "build"
FIXTURE = REPO / "tests" / "fixtures" / "al2023-like-cloud.cfg"
BUILD_PYTHON = REPO / ".venv" / "al2023-build" / "bin" / "python"
DROPIN = "etc/cloud/cloud.cfg.d/zz-cc-imds.cfg"


def need(condition: bool, reason: str) -> None:
    if not condition:
        (pytest.fail if REQUIRED else pytest.skip)(reason)


@pytest.fixture(scope="session")
def binary_rpm() -> Path:
    found = sorted(BUILD.glob("RPMS/noarch/cc-imds-*.rpm"))
    need(bool(found), "no RPM built: run `make rpm`")
    return found[0]


@pytest.fixture(scope="session")
def source_rpm() -> Path:
    found = sorted(BUILD.glob("SRPMS/cc-imds-*.src.rpm"))
    need(bool(found), "no source RPM built: run `make rpm`")
    return found[0]


def rpmbuild(topdir: Path, *args: str, env: Optional[Dict[str, str]] = None) -> Path:
    result = subprocess.run(["rpmbuild", "--define", f"_topdir {topdir}", *args], capture_output=True, text=True,
                            env={**os.environ, **(env or {})})
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return topdir


@pytest.fixture(scope="session")
def stubs(tmp_path_factory: pytest.TempPathFactory) -> Dict[str, Path]:
    need(FIXTURE.exists(), f"{FIXTURE} is missing")
    top = tmp_path_factory.mktemp("stubs")
    for release in ("1", "2"):
        rpmbuild(top, "--define", "dist .amzn2023", "--define", f"stub_release {release}", "-bb",
                 str(REPO / "rpm/ci/stubs.spec"), env={"CLOUD_CFG_FIXTURE": str(FIXTURE)})
    rpms = top / "RPMS/noarch"
    return {
        "python": next(rpms.glob("al2023-python-*.rpm")),
        "cloud-init-1": next(rpms.glob("cloud-init-22.2.2-1.*.rpm")),
        "cloud-init-2": next(rpms.glob("cloud-init-22.2.2-2.*.rpm")),
    }


@pytest.fixture(scope="session")
def upgrade_rpm(source_rpm: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same source rebuilt with a higher release: a real upgrade."""
    need(BUILD_PYTHON.exists(), "the AL2023 build toolchain is missing: run `make rpm`")
    top = tmp_path_factory.mktemp("upgrade")
    rpmbuild(top, "--load", str(REPO / "rpm/ci/macros.debian"), "--nodeps", "--define", "dist .amzn2023.1",
             "--without", "tests", "--rebuild", str(source_rpm), env={"AL2023_PYTHON": str(BUILD_PYTHON)})
    return next((top / "RPMS/noarch").glob("cc-imds-*.rpm"))


@pytest.fixture
def scratch(tmp_path: Path) -> Path:
    need(os.geteuid() == 0 and shutil.which("chroot") is not None, "installing into a scratch root needs root")
    cloudinit_site = unpacked("22.4.2")
    need(cloudinit_site is not None, "cloud-init 22.4.2 not unpacked (tests/e2e/fetch-cloud-init)")
    need(BUILD_PYTHON.exists(), "the AL2023 build toolchain is missing: run `make rpm`")
    root = tmp_path / "root"
    venv_site = next((REPO / ".venv/al2023-build/lib").glob("python3.9/site-packages"))
    py39_home = Path(os.path.realpath(BUILD_PYTHON)).parent.parent
    requests_site = next((REPO / ".venv/py39/lib").glob("python3.9/site-packages"))
    build_root(root, py39_home, [venv_site, requests_site], cloudinit_site)  # type: ignore[arg-type]
    assert rpm(root, "--initdb").returncode == 0
    return root


def cloud_config_modules(root: Path) -> List[object]:
    return list(yaml.safe_load((root / DROPIN).read_text())["cloud_config_modules"])


def fixture_modules() -> List[object]:
    return list(yaml.safe_load(FIXTURE.read_text())["cloud_config_modules"])


# -- the built packages -------------------------------------------------------------
def test_file_list_matches_the_committed_one(binary_rpm: Path) -> None:
    listed = subprocess.run(["rpm", "-qlp", str(binary_rpm)], capture_output=True, text=True, check=True).stdout
    assert listed == (REPO / "rpm/ci/expected-files.txt").read_text()


def test_requires_python_3_9_cloud_init_and_the_libraries(binary_rpm: Path) -> None:
    requires = subprocess.run(["rpm", "-qp", "--requires", str(binary_rpm)], capture_output=True, text=True,
                              check=True).stdout.splitlines()
    for expected in ("python(abi) = 3.9", "cloud-init", "python3.9dist(pyyaml)", "python3.9dist(jsonschema)",
                     "python3.9dist(jinja2)", "python3-pyyaml", "python3-jsonschema", "python3-jinja2"):
        assert expected in requires
    assert [r for r in requires if r.startswith("python(abi)")] == ["python(abi) = 3.9"]
    other = [r for r in requires if r.startswith("python3") and "dist(" in r and not r.startswith("python3.9dist(")]
    assert other == []


def test_rpmlint_reports_no_errors(binary_rpm: Path, source_rpm: Path) -> None:
    result = subprocess.run(["rpmlint", "-c", str(REPO / "rpm/ci/rpmlint.toml"), "-r", str(REPO / "rpm/ci/rpmlintrc"),
                             str(binary_rpm), str(source_rpm)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout
    assert "0 errors, 0 warnings" in result.stdout


def test_the_wheel_was_built_by_al2023_setuptools(binary_rpm: Path) -> None:
    """setuptools 59.6 ignores PEP 621 metadata: an UNKNOWN-0.0.0 wheel would be empty."""
    version = subprocess.run([str(BUILD_PYTHON), "-c", "import setuptools; print(setuptools.__version__)"],
                             capture_output=True, text=True, check=True).stdout.strip()
    assert version == "59.6.0"
    listed = subprocess.run(["rpm", "-qlp", str(binary_rpm)], capture_output=True, text=True, check=True).stdout
    assert "UNKNOWN" not in listed and f"{SITE_PACKAGES}/cc_imds/__init__.py".replace("usr", "/usr", 1) in listed


# -- installed into a scratch root -------------------------------------------------------
def test_missing_dependencies_are_refused(binary_rpm: Path, tmp_path: Path) -> None:
    root = tmp_path / "empty"
    root.mkdir()
    assert rpm(root, "--initdb").returncode == 0
    result = rpm(root, "--test", "-ivh", str(binary_rpm))
    assert result.returncode != 0
    for missing in ("cloud-init is needed", "python(abi) = 3.9 is needed", "python3.9dist(pyyaml) is needed"):
        assert missing in result.stderr


def test_install_upgrade_trigger_and_erase(
    scratch: Path, binary_rpm: Path, upgrade_rpm: Path, stubs: Dict[str, Path]
) -> None:
    root = scratch
    installed = rpm(root, "-ivh", str(stubs["python"]), str(stubs["cloud-init-1"]))
    assert installed.returncode == 0, installed.stderr
    before = snapshot(root)

    result = rpm(root, "-ivh", str(binary_rpm))  # dependencies checked for real: no --nodeps
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""  # the %post scriptlet said nothing
    modules = cloud_config_modules(root)
    assert modules == [["imds", "always"], *fixture_modules()]  # imds once, first; the rest kept in order
    first = (root / DROPIN).read_bytes()

    imported = chroot(root, "/usr/bin/python3.9", "-c", "import cc_imds.config as c; print(c.schema_path())")
    assert imported.stdout.strip() == f"/{SITE_PACKAGES}/cc_imds/schemas/cc-imds.schema.json"
    validated = chroot(root, "/usr/bin/cc-imds", "validate", f"/{SITE_PACKAGES}/cc_imds/examples/instance-env.yaml")
    assert validated.stdout == "1 declaration(s) valid\n"

    assert rpm(root, "-Uvh", "--replacepkgs", str(binary_rpm)).returncode == 0  # reinstall
    assert (root / DROPIN).read_bytes() == first
    upgraded = rpm(root, "-Uvh", str(upgrade_rpm))
    assert upgraded.returncode == 0, upgraded.stderr
    assert (root / DROPIN).read_bytes() == first

    # Another drop-in replaces the module list; upgrading cloud-init fires our trigger.
    override = root / "etc/cloud/cloud.cfg.d/50-site.cfg"
    override.write_text("cloud_config_modules: [timezone, runcmd]\n")
    triggered = rpm(root, "-Uvh", str(stubs["cloud-init-2"]))
    assert triggered.returncode == 0, triggered.stderr
    assert cloud_config_modules(root) == [["imds", "always"], "timezone", "runcmd"]

    erased = rpm(root, "-e", "cc-imds")
    assert erased.returncode == 0, erased.stderr
    assert (root / "etc/cloud/cloud.cfg").read_bytes() == FIXTURE.read_bytes()
    override.unlink()
    changes = diff(before, snapshot(root))
    # Only cloud-init's own upgrade (its package, not its unchanged cloud.cfg) may differ.
    assert changes == [], changes
