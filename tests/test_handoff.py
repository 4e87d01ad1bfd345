"""The boot run starts the watcher in the same boot only when a declaration needs it: it leaves
this boot's `imds:` key and a marker under the run directory, which the .path unit waits for."""

from __future__ import annotations

import json
import logging
import os
import stat
import subprocess
import time
from pathlib import Path
from typing import Any, Callable, Dict

import pytest

import cc_imds
from cc_imds.testing.emulator import Emulator
from cc_imds.watch import rundir
from tests.conftest import CLI, cli_env, requires


class FakeCloud:
    datasource = None


def run_dir() -> Path:
    return Path(os.environ["CC_IMDS_RUN_DIR"])


def boot_only(emulator: Emulator, out: Path) -> Dict[str, Any]:
    return {"endpoint": emulator.url, "values": {"iid": "meta-data/instance-id"},
            "env": [{"path": f"{out}/instance.env", "format": "systemd", "vars": {"IID": "iid"}}]}


def refreshing(emulator: Emulator, out: Path) -> Dict[str, Any]:
    declaration = boot_only(emulator, out)
    declaration["values"]["name"] = {"path": "meta-data/tags/instance/Name", "refresh": 1}
    declaration["files"] = [{"path": f"{out}/name", "content": "{{ name }}\n"}]
    return declaration


def test_a_boot_only_declaration_leaves_nothing_for_a_watcher(emulator: Emulator, tmp_path: Path) -> None:
    cc_imds.handle(name="imds", cfg={"imds": boot_only(emulator, tmp_path)}, cloud=FakeCloud(), args=[])
    assert (tmp_path / "instance.env").exists()
    assert not run_dir().exists()


def test_a_refresh_leaves_the_declaration_and_the_marker(emulator: Emulator, tmp_path: Path,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    declaration = refreshing(emulator, tmp_path)
    cc_imds.handle(name="imds", cfg={"imds": declaration}, cloud=FakeCloud(), args=[])
    saved = run_dir() / rundir.CLOUD_CONFIG
    assert json.loads(saved.read_text()) == declaration
    assert stat.S_IMODE(saved.stat().st_mode) == 0o600
    assert stat.S_IMODE(run_dir().stat().st_mode) == 0o755
    assert (run_dir() / rundir.MARKER).read_text() == (
        f"refresh meta-data/tags/instance/Name\nrewrite {tmp_path}/name\n")
    assert "imds: cc-imds watch will keep 1 output(s) current (cc-imds status shows it)" in caplog.messages


def test_events_alone_are_a_reason_to_watch(tmp_path: Path) -> None:
    cc_imds.handle(name="imds", cfg={"imds": {"events": [{"event": "rebalance-recommendation", "run": ["true"]}]}},
                   cloud=FakeCloud(), args=[])
    assert (run_dir() / rundir.MARKER).read_text() == "event rebalance-recommendation\n"


def test_a_failed_boot_run_still_starts_the_watcher(make_emulator: Callable[..., Emulator], tmp_path: Path) -> None:
    emulator = make_emulator(mode="disabled")
    with pytest.raises(cc_imds.errors.ImdsError):
        cc_imds.handle(name="imds", cfg={"imds": refreshing(emulator, tmp_path)}, cloud=FakeCloud(), args=[])
    assert (run_dir() / rundir.MARKER).exists()  # the watcher retries until IMDS answers


def test_an_invalid_declaration_starts_nothing_and_withdraws_an_earlier_request(
        emulator: Emulator, tmp_path: Path) -> None:
    cc_imds.handle(name="imds", cfg={"imds": refreshing(emulator, tmp_path)}, cloud=FakeCloud(), args=[])
    assert (run_dir() / rundir.MARKER).exists()
    with pytest.raises(cc_imds.errors.DeclarationError):
        cc_imds.handle(name="imds", cfg={"imds": {"values": {"x": {"path": "meta-data/x", "refresh": 0}}}},
                       cloud=FakeCloud(), args=[])
    assert not (run_dir() / rundir.MARKER).exists() and not (run_dir() / rundir.CLOUD_CONFIG).exists()


def test_a_later_run_that_needs_no_watcher_withdraws_the_marker(emulator: Emulator, tmp_path: Path) -> None:
    cc_imds.handle(name="imds", cfg={"imds": refreshing(emulator, tmp_path)}, cloud=FakeCloud(), args=[])
    assert (run_dir() / rundir.MARKER).exists()
    cc_imds.handle(name="imds", cfg={"imds": boot_only(emulator, tmp_path)}, cloud=FakeCloud(), args=[])
    assert not (run_dir() / rundir.MARKER).exists() and not (run_dir() / rundir.CLOUD_CONFIG).exists()


@requires(os.geteuid() == 0, "needs root: trust checks apply to root runs")
@pytest.mark.parametrize("problem", ["owner", "mode"])
def test_an_untrusted_run_directory_is_refused_and_the_files_still_written(
        emulator: Emulator, tmp_path: Path, caplog: pytest.LogCaptureFixture, problem: str) -> None:
    directory = run_dir()
    directory.mkdir(parents=True)
    if problem == "owner":
        os.chown(directory, 65534, 65534)
        expected = "owned by uid 65534, not root"
    else:
        directory.chmod(0o777)
        expected = "writable by group and others (mode 0777), not only by its owner"
    cc_imds.handle(name="imds", cfg={"imds": refreshing(emulator, tmp_path)}, cloud=FakeCloud(), args=[])
    assert (tmp_path / "name").read_text() == "web-1\n"
    assert not (directory / rundir.MARKER).exists()
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR] == [
        f"imds: cannot start cc-imds watch: {directory}: refusing to use it: {expected}"]


def test_the_watcher_runs_what_the_boot_run_ran(emulator: Emulator, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """`cc-imds watch` without a FILE reads the drop-ins and the saved `imds:` key."""
    conf_d = tmp_path / "conf.d"
    conf_d.mkdir()
    (conf_d / "50-app.yaml").write_text(json.dumps({
        "values": {"env_tag": {"path": "meta-data/tags/instance/Environment", "refresh": 1}},
        "files": [{"path": f"{tmp_path}/out/environment", "content": "{{ env_tag }}\n"}]}))
    monkeypatch.setenv("CC_IMDS_CONF_DIR", str(conf_d))
    cc_imds.handle(name="imds", cfg={"imds": refreshing(emulator, tmp_path / "out")}, cloud=FakeCloud(), args=[])
    watcher = subprocess.Popen([*CLI, "watch"], env=cli_env({"CC_IMDS_CONF_DIR": str(conf_d)}),
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        emulator.set_value("meta-data/tags/instance/Name", "renamed")
        emulator.set_value("meta-data/tags/instance/Environment", "changed")
        give_up = time.monotonic() + 30
        while time.monotonic() < give_up:
            name, environment = tmp_path / "out/name", tmp_path / "out/environment"
            if name.read_text() == "renamed\n" and environment.exists() and environment.read_text() == "changed\n":
                break
            time.sleep(0.1)
        assert (tmp_path / "out/name").read_text() == "renamed\n"
        assert (tmp_path / "out/environment").read_text() == "changed\n"
    finally:
        watcher.terminate()
        output, _ = watcher.communicate(timeout=30)
    assert watcher.returncode == 0, output
    status = json.loads((run_dir() / rundir.STATUS).read_text())
    assert status["watcher"]["sources"] == [str(conf_d / "50-app.yaml"), "cloud-config"]
