"""The systemd units that start `cc-imds watch` only in a boot that needs it. Checked by
systemd's own verifier; booting them is the VM box's job."""

from __future__ import annotations

import configparser
import shutil
import subprocess
from pathlib import Path

from cc_imds.watch import rundir
from tests.conftest import REPO, require

UNITS = REPO / "systemd"


def unit(name: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None, delimiters=("=",))
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string((UNITS / name).read_text())
    return parser


def test_the_path_unit_waits_for_the_marker_the_boot_run_leaves() -> None:
    path = unit("cc-imds-watch.path")
    assert path["Path"]["PathExists"] == f"{rundir.RUN_DIR}/{rundir.MARKER}"
    assert path["Path"]["Unit"] == "cc-imds-watch.service"
    assert path["Install"]["WantedBy"] == "paths.target"


def test_the_service_runs_after_the_boot_run_and_reloads_on_sighup() -> None:
    service = unit("cc-imds-watch.service")
    assert service["Unit"]["After"] == "cloud-config.service"
    assert service["Unit"]["ConditionPathExists"] == f"{rundir.RUN_DIR}/{rundir.MARKER}"
    assert service["Service"]["ExecStart"] == "/usr/bin/cc-imds watch"
    assert service["Service"]["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert service["Service"]["KillMode"] == "mixed"
    assert not service.has_section("Install")  # started by the path unit only


def test_the_preset_enables_only_the_path_unit() -> None:
    lines = [line for line in (UNITS / "80-cc-imds.preset").read_text().splitlines()
             if line and not line.startswith("#")]
    assert lines == ["enable cc-imds-watch.path"]


def test_systemd_accepts_the_units(tmp_path: Path) -> None:
    require(shutil.which("systemd-analyze") is not None, "systemd-analyze is missing (install systemd)")
    root = tmp_path / "root"
    shutil.copytree("/usr/lib/systemd/system", root / "usr/lib/systemd/system", symlinks=True)
    for name in ("cc-imds-watch.path", "cc-imds-watch.service"):
        shutil.copy(UNITS / name, root / "usr/lib/systemd/system" / name)
    for program in ("usr/bin/cc-imds", "bin/kill"):  # what the units run must exist and be executable
        (root / program).parent.mkdir(parents=True, exist_ok=True)
        (root / program).write_text("#!/bin/sh\n")
        (root / program).chmod(0o755)
    result = subprocess.run(
        ["systemd-analyze", "verify", f"--root={root}", "--man=no",
         "/usr/lib/systemd/system/cc-imds-watch.path", "/usr/lib/systemd/system/cc-imds-watch.service"],
        capture_output=True, text=True, timeout=120)
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def test_the_spec_ships_and_enables_them() -> None:
    spec = (REPO / "rpm/cc-imds.spec").read_text()
    for name, directory in (("cc-imds-watch.service", "_unitdir"), ("cc-imds-watch.path", "_unitdir"),
                            ("80-cc-imds.preset", "_presetdir")):
        assert f"install -D -m 0644 systemd/{name} %{{buildroot}}%{{{directory}}}/{name}" in spec
        assert f"\n%{{{directory}}}/{name}\n" in spec
    assert "%systemd_post cc-imds-watch.path" in spec
    assert "%systemd_preun cc-imds-watch.path cc-imds-watch.service" in spec
    assert "%systemd_postun_with_restart cc-imds-watch.service" in spec
