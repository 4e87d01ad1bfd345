"""The RPM as Amazon Linux 2023 users get it: built by `make rpm`, linted, inspected, and
installed, upgraded, triggered and erased in a scratch root without --nodeps, with
AL2023's cloud-init 22.2.2 doing the config reading in the scriptlets."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Set

import pytest
import yaml

from tests.conftest import HUNG_AFTER, REPO, require
from tests.e2e.harness import unpacked
from tests.rpm.scratch import SITE_PACKAGES, build_root, chroot, diff, rpm, snapshot
from tests.test_readme import links

pytestmark = pytest.mark.rpm
BUILD = REPO / "rpm" / "build"
FIXTURE = REPO / "tests" / "fixtures" / "al2023-like-cloud.cfg"
BUILD_PYTHON = REPO / ".venv" / "al2023-build" / "bin" / "python"
# Exactly what the spec BuildRequires without tests (see the Makefile): a clean build root.
NOTESTS_PYTHON = REPO / ".venv" / "al2023-build-notests" / "bin" / "python"
CI_MACROS = ["--load", str(REPO / "rpm/ci/macros.debian"), "--define", f"_cc_imds_ci {REPO / 'rpm/ci'}"]
DROPIN = "etc/cloud/cloud.cfg.d/zz-cc-imds.cfg"
SITE = f"/{SITE_PACKAGES}"
# rpmbuild's %doc directory here (NAME-VERSION: Debian's rpm has no _docdir_fmt; AL2023's is NAME).
DOC_DIR = "/usr/share/doc/cc-imds-0.1.0"
IMDS_FIRST = ["imds", "always"]


def need(condition: bool, reason: str) -> None:
    require(condition, reason)


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


def rpmbuild(topdir: Path, *args: str, env: Optional[Dict[str, str]] = None) -> subprocess.CompletedProcess:
    result = subprocess.run(["rpmbuild", "--define", f"_topdir {topdir}", *args], capture_output=True, text=True,
                            env={**os.environ, **(env or {})}, timeout=HUNG_AFTER)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


@pytest.fixture(scope="session")
def stubs(tmp_path_factory: pytest.TempPathFactory) -> Dict[str, Path]:
    need(FIXTURE.exists(), f"{FIXTURE} is missing")
    top = tmp_path_factory.mktemp("stubs")
    for release, modules in (("1", "[timezone, runcmd]"), ("2", "[ntp, runcmd]")):
        rpmbuild(top, "--define", "dist .amzn2023", "--define", f"stub_release {release}",
                 "--define", f"site_modules {modules}", "-bb", str(REPO / "rpm/ci/stubs.spec"),
                 env={"CLOUD_CFG_FIXTURE": str(FIXTURE)})
    rpms = top / "RPMS/noarch"
    return {
        "python": next(rpms.glob("al2023-python-*.rpm")),
        "cloud-init-1": next(rpms.glob("cloud-init-22.2.2-1.*.rpm")),
        "cloud-init-2": next(rpms.glob("cloud-init-22.2.2-2.*.rpm")),
        "site-modules-1": next(rpms.glob("site-modules-1.0-1.*.rpm")),
        "site-modules-2": next(rpms.glob("site-modules-1.0-2.*.rpm")),
    }


@pytest.fixture(scope="session")
def notests_build(source_rpm: Path, tmp_path_factory: pytest.TempPathFactory) -> subprocess.CompletedProcess:
    """The source RPM rebuilt `--without tests` with a higher release (a real upgrade), with
    a Python holding only what the spec BuildRequires without tests."""
    need(NOTESTS_PYTHON.exists(), "the AL2023 build toolchain is missing: run `make rpm`")
    top = tmp_path_factory.mktemp("notests")
    result = rpmbuild(top, *CI_MACROS, "--nodeps", "--define", "dist .amzn2023.1", "--without", "tests",
                      "--rebuild", str(source_rpm), env={"AL2023_PYTHON": str(NOTESTS_PYTHON)})
    result.args = top  # where the packages are
    return result


@pytest.fixture(scope="session")
def upgrade_rpm(notests_build: subprocess.CompletedProcess) -> Path:
    return next((Path(notests_build.args) / "RPMS/noarch").glob("cc-imds-*.rpm"))


def new_root(base: Path) -> Path:
    need(os.geteuid() == 0 and shutil.which("chroot") is not None, "installing into a scratch root needs root")
    cloudinit_site = unpacked("22.2.2")
    need(cloudinit_site is not None, "cloud-init 22.2.2 not unpacked (tests/e2e/fetch-cloud-init)")
    need(NOTESTS_PYTHON.exists(), "the AL2023 build toolchain is missing: run `make rpm`")
    root = base / "root"
    # AL2023's libraries: the runtime ones from the build toolchain (which has no pytest),
    # what cloud-init's config reader imports besides from the py39 environment.
    runtime_site = next((REPO / ".venv/al2023-build-notests/lib").glob("python3.9/site-packages"))
    requests_site = next((REPO / ".venv/py39/lib").glob("python3.9/site-packages"))
    py39_home = Path(os.path.realpath(NOTESTS_PYTHON)).parent.parent
    build_root(root, py39_home, [runtime_site, requests_site], cloudinit_site)  # type: ignore[arg-type]
    assert rpm(root, "--initdb").returncode == 0
    return root


@pytest.fixture(scope="session")
def pristine_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return new_root(tmp_path_factory.mktemp("pristine"))


@pytest.fixture
def scratch(pristine_root: Path, tmp_path: Path) -> Path:
    """A fresh copy of the scratch root for each test (building one takes many seconds)."""
    root = tmp_path / "root"
    subprocess.run(["cp", "-a", str(pristine_root), str(root)], check=True, timeout=HUNG_AFTER)
    return root


def installed(root: Path, *packages: Path, args: Sequence[str] = ("-ivh",)) -> subprocess.CompletedProcess:
    result = rpm(root, *args, *map(str, packages))  # dependencies checked for real: no --nodeps
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def cloud_config_modules(root: Path) -> List[object]:
    return list(yaml.safe_load((root / DROPIN).read_text())["cloud_config_modules"])


def fixture_modules() -> List[object]:
    return list(yaml.safe_load(FIXTURE.read_text())["cloud_config_modules"])


def check(root: Path) -> subprocess.CompletedProcess:
    program = shutil.which("chroot") or "/usr/sbin/chroot"
    return subprocess.run([program, str(root), "/usr/bin/cc-imds", "enable-module", "--check"],
                          capture_output=True, text=True, env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"},
                          timeout=HUNG_AFTER)


# -- the built packages -------------------------------------------------------------
def rpm_query(package: Path, *args: str) -> str:
    return subprocess.run(["rpm", "-qp", *args, str(package)], capture_output=True, text=True, check=True,
                          timeout=HUNG_AFTER).stdout


def expected_files() -> Set[str]:
    """What the package must hold, derived from the source tree rather than kept as a list."""
    dist = f"{SITE}/cc_imds-{version()}.dist-info"
    files = {
        "/usr/bin/cc-imds", "/usr/share/man/man1/cc-imds.1.gz", DOC_DIR, f"{DOC_DIR}/docs",
        "/etc/cc-imds", "/etc/cc-imds/conf.d", f"/{DROPIN}",
        *documentation(),
        dist, *(f"{dist}/{name}" for name in ("INSTALLER", "LICENSE", "METADATA", "WHEEL", "top_level.txt")),
        f"{SITE}/cc_imds", f"{SITE}/cc_imds/__pycache__", f"{SITE}/cc_imds/data",
        f"{SITE}/cc_imds/data/default-tree.json", f"{SITE}/cc_imds/schemas", f"{SITE}/cc_imds/examples",
    }
    for package in (init.parent for init in (REPO / "cc_imds").rglob("__init__.py")):
        where = f"{SITE}/{package.relative_to(REPO)}"
        files |= {where, f"{where}/__pycache__"}
        for module in package.glob("*.py"):
            files.add(f"{where}/{module.name}")
            files |= {f"{where}/__pycache__/{module.stem}.cpython-39{opt}.pyc" for opt in ("", ".opt-1")}
    files |= {f"{SITE}/cc_imds/schemas/{p.name}" for p in (REPO / "schemas").glob("*.json")}
    files |= {f"{SITE}/cc_imds/examples/{p.name}" for p in (REPO / "examples").glob("*.yaml")}
    for unit in (REPO / "systemd").iterdir():  # cc-imds watch's units, and the preset that enables them
        directory = "system-preset" if unit.suffix == ".preset" else "system"
        files.add(f"/usr/lib/systemd/{directory}/{unit.name}")
    return files


def documentation() -> List[str]:
    """The README and every page under docs/, where the README's relative links find them."""
    return [f"{DOC_DIR}/README.md", *(f"{DOC_DIR}/docs/{page.name}" for page in sorted((REPO / "docs").iterdir()))]


def version() -> str:
    match = re.search(r'^__version__ = "(.*)"$', (REPO / "cc_imds/version.py").read_text(), re.MULTILINE)
    assert match
    return match.group(1)


def test_holds_exactly_what_the_source_tree_makes(binary_rpm: Path) -> None:
    listed = set(rpm_query(binary_rpm, "-l").splitlines())
    assert sorted(listed - expected_files()) == []
    assert sorted(expected_files() - listed) == []
    # %pyproject_save_files marks the wheel's License-File; RECORD and REQUESTED are not shipped.
    assert rpm_query(binary_rpm, "-L").split() == [f"{SITE}/cc_imds-{version()}.dist-info/LICENSE"]
    assert sorted(rpm_query(binary_rpm, "-d").split()) == sorted([*documentation(), "/usr/share/man/man1/cc-imds.1.gz"])


def test_the_readme_s_links_to_its_pages_resolve_where_it_is_installed(binary_rpm: Path) -> None:
    """An instance has no checkout: the README's links to its pages (docs/NAME.md) and the
    pages' links to each other find their targets in the installed documentation. (Links
    into the source tree, such as tests/ or bench/, are to the project's repository.)"""
    listed = set(rpm_query(binary_rpm, "-l").splitlines())
    checked, broken = 0, []
    for page in (REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))):
        installed = f"{DOC_DIR}/{page.relative_to(REPO)}"
        assert installed in listed, installed
        for target in links(page):
            path = target.partition("#")[0]
            resolved = os.path.normpath(os.path.join(os.path.dirname(installed), path)) if path else installed
            if resolved == f"{DOC_DIR}/README.md" or resolved.startswith(f"{DOC_DIR}/docs/"):
                checked += 1
                if resolved not in listed:
                    broken.append(f"{page.name}: {target}")
    assert broken == []
    assert checked >= len(list((REPO / "docs").iterdir()))  # at least the README's link to every page


def test_requires_python_3_9_cloud_init_and_the_libraries(binary_rpm: Path) -> None:
    requires = rpm_query(binary_rpm, "--requires").splitlines()
    for expected in ("python(abi) = 3.9", "cloud-init", "python3.9dist(pyyaml)", "python3.9dist(jsonschema)",
                     "python3.9dist(jinja2)", "python3-pyyaml", "python3-jsonschema", "python3-jinja2"):
        assert expected in requires
    assert [r for r in requires if r.startswith("python(abi)")] == ["python(abi) = 3.9"]
    other = [r for r in requires if r.startswith("python3") and "dist(" in r and not r.startswith("python3.9dist(")]
    assert other == []


def test_recommends_the_selinux_binding_without_requiring_it(binary_rpm: Path) -> None:
    assert rpm_query(binary_rpm, "--recommends").splitlines() == ["python3-libselinux"]
    assert not [r for r in rpm_query(binary_rpm, "--requires").splitlines() if "selinux" in r]


def test_scriptlet_dependencies_are_declared_for_the_scriptlets(binary_rpm: Path) -> None:
    """%post runs cc-imds with cloud-init's reader; %preun runs cc-imds: rpm must order them."""
    kinds: Dict[str, Set[str]] = {}
    for line in rpm_query(binary_rpm, "--qf", "[%{REQUIRENAME}\t%{REQUIREFLAGS:deptype}\n]").splitlines():
        name, kind = line.split("\t")
        kinds.setdefault(name, set()).update(kind.split(","))
    assert {"post"} <= kinds["cloud-init"] and {"post"} <= kinds["python3-pyyaml"]
    assert {"post", "preun"} <= kinds["python3"]


def test_triggers_cover_cloud_init_and_every_packages_dropins(binary_rpm: Path) -> None:
    triggers = rpm_query(binary_rpm, "--triggers", "--filetriggers")
    assert "triggerin scriptlet (using /bin/sh) -- cloud-init" in triggers
    assert "filetriggerin scriptlet (using /bin/sh) -- /etc/cloud/cloud.cfg.d" in triggers
    assert "filetriggerpostun scriptlet (using /bin/sh) -- /etc/cloud/cloud.cfg.d" in triggers


def test_rpmlint_reports_no_errors(binary_rpm: Path, source_rpm: Path) -> None:
    result = subprocess.run(["rpmlint", "-c", str(REPO / "rpm/ci/rpmlint.toml"), "-r", str(REPO / "rpm/ci/rpmlintrc"),
                             str(binary_rpm), str(source_rpm)], capture_output=True, text=True, timeout=HUNG_AFTER)
    assert result.returncode == 0, result.stdout
    assert "0 errors, 0 warnings" in result.stdout


def test_the_wheel_was_built_by_al2023_setuptools(binary_rpm: Path) -> None:
    """setuptools 59.6 ignores PEP 621 metadata: an UNKNOWN-0.0.0 wheel would be empty."""
    version = subprocess.run([str(BUILD_PYTHON), "-c", "import setuptools; print(setuptools.__version__)"],
                             capture_output=True, text=True, check=True, timeout=HUNG_AFTER).stdout.strip()
    assert version == "59.6.0"
    listed = rpm_query(binary_rpm, "-l")
    assert "UNKNOWN" not in listed and f"{SITE}/cc_imds/__init__.py" in listed


# -- built without tests, from the BuildRequires alone ------------------------------------
PIP_NAMES = {"python3-pyyaml": "pyyaml", "python3-jsonschema": "jsonschema", "python3-jinja2": "jinja2",
             "python3-setuptools": "setuptools", "python3-wheel": "wheel", "python3-pip": "pip",
             "python3-pytest": "pytest"}
DISTRIBUTIONS = (
    "import json, re\n"
    "from importlib.metadata import distributions\n"
    "name = lambda s: re.split(r'[ ;<>=!~\\[(]', s.strip(), 1)[0].lower().replace('_', '-')\n"
    "print(json.dumps({name(d.metadata['Name']): [name(r) for r in d.requires or [] if 'extra ==' not in r]\n"
    "                  for d in distributions()}))\n"
)


def test_builds_without_tests_from_its_build_requires_alone(notests_build: subprocess.CompletedProcess) -> None:
    """`--without tests` in a clean build root: %check imports every module and validates the
    examples, so the runtime libraries must be BuildRequired whether or not tests run. The
    build above ran with a Python holding exactly the BuildRequires and what they need."""
    spec = str(REPO / "rpm/cc-imds.spec")
    query = subprocess.run(["rpmspec", *CI_MACROS, "-q", "--buildrequires", "--without", "tests", spec],
                           capture_output=True, text=True, check=True, env={**os.environ,
                                                                            "AL2023_PYTHON": str(NOTESTS_PYTHON)},
                                                                            timeout=HUNG_AFTER)
    build_requires = query.stdout.split()
    assert {"python3-pyyaml", "python3-jsonschema", "python3-jinja2"} <= set(build_requires)
    assert "python3-pytest" not in build_requires
    # From /, not the checkout: `python -c` puts the working directory on sys.path, where a
    # `pip install .` (make demo) leaves cc_imds.egg-info, which would read as installed.
    dists = json.loads(subprocess.run([str(NOTESTS_PYTHON), "-c", DISTRIBUTIONS], capture_output=True, text=True,
                                      check=True, cwd="/", timeout=HUNG_AFTER).stdout)
    closure: Set[str] = set()
    todo = [PIP_NAMES[b] for b in build_requires if b in PIP_NAMES]
    while todo:
        name = todo.pop()
        if name not in closure:
            closure.add(name)
            todo.extend(dists.get(name, []))
    assert sorted(set(dists) - closure) == []  # nothing in that Python that the spec does not ask for
    assert "pytest" not in dists
    assert "%check" in notests_build.stderr + notests_build.stdout  # %check ran, and passed
    assert "Check import: cc_imds.outputs.write" in notests_build.stderr + notests_build.stdout


# -- installed into a scratch root -------------------------------------------------------
def test_missing_dependencies_are_refused(binary_rpm: Path, tmp_path: Path) -> None:
    root = tmp_path / "empty"
    root.mkdir()
    assert rpm(root, "--initdb").returncode == 0
    result = rpm(root, "--test", "-ivh", str(binary_rpm))
    assert result.returncode != 0
    for missing in ("cloud-init is needed", "python(abi) = 3.9 is needed", "python3.9dist(pyyaml) is needed"):
        assert missing in result.stderr


def test_install_upgrade_trigger_check_and_erase(
    scratch: Path, binary_rpm: Path, upgrade_rpm: Path, stubs: Dict[str, Path]
) -> None:
    root = scratch
    installed(root, stubs["python"], stubs["cloud-init-1"])
    before = snapshot(root)

    result = installed(root, binary_rpm)
    assert result.stderr == ""  # the scriptlets said nothing
    assert cloud_config_modules(root) == [IMDS_FIRST, *fixture_modules()]  # imds once, first; the rest in order
    first = (root / DROPIN).read_bytes()
    assert check(root).returncode == 0

    imported = chroot(root, "/usr/bin/python3.9", "-c",
                      "import cc_imds.declaration.schema as s; print(s.schema_path())")
    assert imported.stdout.strip() == f"{SITE}/cc_imds/schemas/cc-imds.schema.json"
    validated = chroot(root, "/usr/bin/cc-imds", "validate", f"{SITE}/cc_imds/examples/instance-env.yaml")
    assert validated.stdout == "1 declaration(s) valid\n"
    # The command is the project's script, not a console script pip writes (which imports `re` first).
    launcher = (REPO / "bin/cc-imds").read_text()
    assert (root / "usr/bin/cc-imds").read_text() == "#!/usr/bin/python3 -s\n" + launcher.split("\n", 1)[1]
    # The pytest plugin is opt-in: installing the package registers no entry point at all.
    groups = chroot(root, "/usr/bin/python3.9", "-c",
                    "from importlib.metadata import distribution as d; print(sorted({e.group for e in "
                    "d('cc-imds').entry_points}))")
    assert groups.stdout.strip() == "[]"

    installed(root, binary_rpm, args=("-Uvh", "--replacepkgs"))  # reinstall
    assert (root / DROPIN).read_bytes() == first
    installed(root, upgrade_rpm, args=("-Uvh",))
    assert (root / DROPIN).read_bytes() == first

    # A drop-in copied in by hand (no package: no trigger) replaces the module list; upgrading
    # cloud-init fires our trigger, which takes it in.
    override = root / "etc/cloud/cloud.cfg.d/50-site.cfg"
    override.write_text("cloud_config_modules: [timezone, runcmd]\n")
    assert check(root).returncode == 1  # the generated drop-in no longer matches
    installed(root, stubs["cloud-init-2"], args=("-Uvh",))
    assert cloud_config_modules(root) == [IMDS_FIRST, "timezone", "runcmd"]
    assert check(root).returncode == 0

    # One sorting after ours, without imds, takes it out of the effective list: the gate fails.
    late = root / "etc/cloud/cloud.cfg.d/zzz-late.cfg"
    late.write_text("cloud_config_modules: [runcmd]\n")
    gate = check(root)
    assert gate.returncode == 1
    assert "imds is not in cloud_config_modules" in gate.stderr
    late.unlink()

    erased = rpm(root, "-e", "cc-imds")
    assert erased.returncode == 0, erased.stderr
    assert (root / "etc/cloud/cloud.cfg").read_bytes() == FIXTURE.read_bytes()
    override.unlink()
    changes = diff(before, snapshot(root))
    # Only cloud-init's own upgrade (its package, not its unchanged cloud.cfg) may differ.
    assert changes == [], changes


def test_file_triggers_follow_other_packages_dropins(scratch: Path, binary_rpm: Path, stubs: Dict[str, Path]) -> None:
    root = scratch
    installed(root, stubs["python"], stubs["cloud-init-1"], binary_rpm)
    assert cloud_config_modules(root) == [IMDS_FIRST, *fixture_modules()]

    result = installed(root, stubs["site-modules-1"])  # its drop-in sets its own list
    assert result.stderr == ""
    assert cloud_config_modules(root) == [IMDS_FIRST, "timezone", "runcmd"]
    assert check(root).returncode == 0
    installed(root, stubs["site-modules-2"], args=("-Uvh",))  # a new version changes the list
    assert cloud_config_modules(root) == [IMDS_FIRST, "ntp", "runcmd"]
    erased = rpm(root, "-e", "site-modules")  # and removing it restores cloud.cfg's
    assert erased.returncode == 0 and erased.stderr == "", erased.stderr
    assert cloud_config_modules(root) == [IMDS_FIRST, *fixture_modules()]
    assert check(root).returncode == 0


def test_one_transaction_installs_in_scriptlet_order(scratch: Path, binary_rpm: Path,
                                                     stubs: Dict[str, Path]) -> None:
    """As `dnf --installroot` building an image does: everything in one rpm transaction, named
    in the worst order. Python and cloud-init must be installed, and cloud-init's %post done,
    before cc-imds's %post reads cloud-init's configuration."""
    root = scratch
    result = rpm(root, "-ivv", str(binary_rpm), str(stubs["cloud-init-1"]), str(stubs["python"]))
    assert result.returncode == 0, result.stderr[-3000:]
    log = result.stderr
    ran = re.findall(r"^D: (?:=+ \+\+\+ (\S+?)-\d\S* noarch-linux|(%\w+)\((\S+?)-\d[^)]*\): scriptlet start)",
                     log[log.index("tsorting packages"):], re.MULTILINE)
    events = [f"install {name}" if name else f"{scriptlet} {package}" for name, scriptlet, package in ran]
    assert events == [
        "install al2023-python",
        "install cloud-init",
        "%post cloud-init",
        "install cc-imds",
        # rpm runs our file trigger for the cloud.cfg.d/ already installed, then %post, then
        # the cloud-init trigger: each regenerates the same drop-in, all after cloud-init.
        "%filetriggerin cc-imds",
        "%post cc-imds",
        "%triggerin cc-imds",
    ]
    assert "could not" not in log
    assert cloud_config_modules(root) == [IMDS_FIRST, *fixture_modules()]
    assert check(root).returncode == 0
