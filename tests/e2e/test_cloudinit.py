"""cc_imds under real cloud-init (Amazon Linux 2023's 22.2.2 on Python 3.9, Debian 12's 22.4.2,
Debian 13's 25.1.4), via cloud-init's CLI.

Every run is isolated (see harness.py) and checked to write nothing outside its temp dir.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, Iterator

import pytest
import yaml

from cc_imds.testing.emulator import Emulator
from cc_imds.tools.enable import enable
from tests.conftest import REPO, require, requires
from tests.e2e.harness import VERSIONS, CloudInit, can_isolate, shipped_config, unpacked, wrong_python

pytestmark = pytest.mark.cloudinit


def available(version: str) -> Any:
    not_here = wrong_python(version)
    if not_here:
        return pytest.param(version, marks=pytest.mark.skip(reason=not_here))
    if unpacked(version) is None:
        return pytest.param(version, marks=requires(False, f"cloud-init {version} not unpacked "
                                                           "(tests/e2e/fetch-cloud-init)"))
    return pytest.param(version, marks=requires(can_isolate(),
                                                 "needs root, unshare and strace to isolate cloud-init from the host"))


@pytest.fixture(params=[available(v) for v in VERSIONS])
def cloud_init(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[CloudInit]:
    harness = CloudInit(request.param, tmp_path)
    yield harness
    if not getattr(harness, "writes_outside_on_purpose", False):
        assert harness.outside_writes() == []


def declaration(emulator: Emulator, out: Path, **extra: Any) -> Dict[str, Any]:
    doc: Dict[str, Any] = {
        "endpoint": emulator.url,
        "values": {
            "instance_id": "meta-data/instance-id",
            "region": {"path": "dynamic/instance-identity/document", "key": "region"},
            "tags": "meta-data/tags/instance/",
        },
        "env": [
            {"path": f"{out}/instance.sh", "format": "shell", "vars": {"INSTANCE_ID": "instance_id"},
             "expand": {"tags": "TAG_"}},
            {"path": f"{out}/instance.env", "format": "systemd", "vars": {"AWS_REGION": "region"}},
        ],
    }
    doc.update(extra)
    return doc


def cc_imds_warnings(cloud_init: CloudInit) -> list:
    return cloud_init.log_lines("WARNING") + cloud_init.log_lines("DEPRECAT")


def test_single_renders_outputs(cloud_init: CloudInit, emulator: Emulator) -> None:
    cloud_init.configure({"imds": declaration(emulator, cloud_init.out)})
    result = cloud_init.run("single", "--name", "imds", "--frequency", "always")
    assert result.returncode == 0, cloud_init.log.read_text()[-3000:]
    assert "export TAG_Name='web-1'" in (cloud_init.out / "instance.sh").read_text()
    assert (cloud_init.out / "instance.env").read_text().endswith("AWS_REGION='eu-west-1'\n")
    assert emulator.count("PUT") == 1
    assert cc_imds_warnings(cloud_init) == []


def test_a_refresh_hands_this_boots_declaration_to_the_watcher(cloud_init: CloudInit, emulator: Emulator) -> None:
    doc = declaration(emulator, cloud_init.out)
    doc["values"]["tags"] = {"path": "meta-data/tags/instance/", "refresh": 300}
    cloud_init.configure({"imds": doc})
    result = cloud_init.run("single", "--name", "imds", "--frequency", "always")
    assert result.returncode == 0, cloud_init.log.read_text()[-3000:]
    assert json.loads((cloud_init.run_dir / "cloud-config.json").read_text()) == doc  # as cloud-init gave it
    assert (cloud_init.run_dir / "watch").read_text() == (
        f"refresh meta-data/tags/instance/\nrewrite {cloud_init.out}/instance.sh\n")
    assert "imds: cc-imds watch will keep 1 output(s) current" in cloud_init.log.read_text()
    assert cc_imds_warnings(cloud_init) == []


def test_no_declaration_skips_quietly(cloud_init: CloudInit) -> None:
    cloud_init.configure({})
    result = cloud_init.run("single", "--name", "imds", "--frequency", "always")
    assert result.returncode == 0
    assert "Skipping module imds: no `imds` key and no declarations" in cloud_init.log.read_text()
    assert cc_imds_warnings(cloud_init) == []


def boot(cloud_init: CloudInit) -> None:
    """The three stages in order, as systemd runs them at boot."""
    for stage in (("init",), ("modules", "--mode", "config"), ("modules", "--mode", "final")):
        cloud_init.run(*stage)


def test_boot_with_the_generated_module_list(cloud_init: CloudInit, emulator: Emulator) -> None:
    out = cloud_init.out
    runcmd = [["sh", "-c", f'. {out}/instance.sh && printf "%s" "$INSTANCE_ID" > {out}/seen-by-runcmd']]
    cloud_init.configure({"imds": declaration(emulator, out)},
                         userdata="#cloud-config\n" + yaml.safe_dump({"runcmd": runcmd}))
    enable(root=str(cloud_init.tmp), cloud_cfg="/etc/cloud/cloud.cfg", dropin="/etc/cloud/cloud.cfg.d/zz-cc-imds.cfg")
    boot(cloud_init)
    log = cloud_init.log.read_text()
    assert log.index("Running module imds") < log.index("Running module runcmd")
    assert (out / "seen-by-runcmd").read_text() == "i-0a1b2c3d4e5f60789"  # the final stage saw the outputs
    assert cloud_init.status()["v1"]["modules-config"]["errors"] == []
    assert cc_imds_warnings(cloud_init) == []


def test_failing_declaration_is_recorded_and_other_modules_run(cloud_init: CloudInit, emulator: Emulator) -> None:
    out = cloud_init.out
    broken = declaration(emulator, out)
    broken["values"]["missing"] = "meta-data/no-such-value"
    runcmd = [["sh", "-c", f"touch {out}-runcmd-ran"]]
    cloud_init.configure({"imds": broken}, userdata="#cloud-config\n" + yaml.safe_dump({"runcmd": runcmd}))
    enable(root=str(cloud_init.tmp), cloud_cfg="/etc/cloud/cloud.cfg", dropin="/etc/cloud/cloud.cfg.d/zz-cc-imds.cfg")
    boot(cloud_init)
    errors = cloud_init.status()["v1"]["modules-config"]["errors"]
    assert len(errors) == 1 and "imds" in errors[0]
    log = cloud_init.log.read_text()
    assert "imds: cloud-config: imds.values.missing: required value missing: /latest/meta-data/no-such-value" in log
    assert "Running module imds" in log and "failed" in log
    assert Path(f"{out}-runcmd-ran").exists()  # runcmd, later in the stage, still ran
    assert not out.exists()  # and nothing of ours was written


def test_user_data_imds_key_warns_only_on_23_4_and_later(cloud_init: CloudInit, emulator: Emulator) -> None:
    userdata = "#cloud-config\n" + yaml.safe_dump({"imds": declaration(emulator, cloud_init.out)})
    cloud_init.configure({}, userdata=userdata)
    enable(root=str(cloud_init.tmp), cloud_cfg="/etc/cloud/cloud.cfg", dropin="/etc/cloud/cloud.cfg.d/zz-cc-imds.cfg")
    boot(cloud_init)
    assert (cloud_init.out / "instance.sh").exists()
    warnings = cc_imds_warnings(cloud_init)
    if cloud_init.version.startswith("22."):
        assert warnings == []
        return
    # The one documented exception: cloud-init's own schema cannot know our key. Its log
    # line is generic, so ask cloud-init's validator what it objects to: only `imds`.
    assert len(warnings) == 1 and "cloud-config failed schema validation!" in warnings[0]
    user_data = cloud_init.tmp / "user-data.yaml"
    user_data.write_text(userdata)
    code = (
        "import sys, yaml\n"
        "from cloudinit.config.schema import SchemaValidationError, get_schema, validate_cloudconfig_schema\n"
        "try:\n"
        "    validate_cloudconfig_schema(yaml.safe_load(open(sys.argv[1])), schema=get_schema(), strict=True)\n"
        "except SchemaValidationError as error:\n"
        "    print(error)\n"
    )
    objection = cloud_init.python(code, str(user_data)).stdout.strip()
    expected = "Cloud config schema errors: imds: Additional properties are not allowed ('imds' was unexpected)"
    assert objection == expected


def test_write_files_dropin_is_warning_free(cloud_init: CloudInit, emulator: Emulator) -> None:
    dropin = yaml.safe_dump(declaration(emulator, cloud_init.out))
    userdata = "#cloud-config\n" + yaml.safe_dump(
        {"write_files": [{"path": f"{cloud_init.conf_d}/60-user-data.yaml", "content": dropin}]}
    )
    cloud_init.configure({}, userdata=userdata)
    enable(root=str(cloud_init.tmp), cloud_cfg="/etc/cloud/cloud.cfg", dropin="/etc/cloud/cloud.cfg.d/zz-cc-imds.cfg")
    boot(cloud_init)
    assert "export INSTANCE_ID='i-0a1b2c3d4e5f60789'" in (cloud_init.out / "instance.sh").read_text()
    assert cloud_init.log_lines("WARNING") == []
    assert cloud_init.status()["v1"]["modules-config"]["errors"] == []


def test_the_isolation_check_sees_a_write_outside(cloud_init: CloudInit, emulator: Emulator,
                                                   tmp_path_factory: pytest.TempPathFactory) -> None:
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    cloud_init.configure({"imds": declaration(emulator, elsewhere)})
    cloud_init.run("single", "--name", "imds", "--frequency", "always")
    cloud_init.writes_outside_on_purpose = True
    assert f"renameat: {elsewhere}/instance.sh" in cloud_init.outside_writes()


def unpacked_here(version: str) -> None:
    """Skip (or fail, when required) unless `version` is unpacked and runs on this Python."""
    not_here = wrong_python(version)
    if not_here:
        pytest.skip(not_here)
    require(unpacked(version) is not None, f"cloud-init {version} not unpacked (tests/e2e/fetch-cloud-init)")


@pytest.mark.parametrize("version", VERSIONS)
def test_generated_list_on_the_shipped_config_is_read_back_by_cloud_init(version: str, tmp_path: Path) -> None:
    """The generator on the config the distribution ships, checked by cloud-init's own reader."""
    unpacked_here(version)
    harness = CloudInit(version, tmp_path / "h")
    root = tmp_path / "image"
    shipped_config(version, root)
    shipped = harness.read_config(root / "etc/cloud/cloud.cfg")["cloud_config_modules"]
    assert "imds" not in str(shipped)
    # With cloud-init importable (as in the RPM's scriptlets), and without (a bare build host).
    code = "import sys; from cc_imds.tools.enable import enable; sys.stdout.write(enable(root=sys.argv[1]))"
    with_cloudinit = harness.python(code, str(root)).stdout
    without_cloudinit = enable(root=str(root))
    assert with_cloudinit == without_cloudinit
    assert harness.read_config(root / "etc/cloud/cloud.cfg")["cloud_config_modules"] == [["imds", "always"], *shipped]
    # The image-build gate agrees, reading with cloud-init's own merger.
    gate = "import sys; from cc_imds.tools.enable import check; print(check(root=sys.argv[1]))"
    assert harness.python(gate, str(root)).stdout.startswith("imds runs first in cloud_config_modules (")


def test_no_secret_reaches_cloud_inits_log(cloud_init: CloudInit, emulator: Emulator) -> None:
    doc = declaration(emulator, cloud_init.out)
    doc["values"]["secret_key"] = {"path": "meta-data/iam/security-credentials/app-server", "key": "SecretAccessKey"}
    doc["values"]["session_token"] = {"path": "meta-data/iam/security-credentials/app-server", "key": "Token"}
    doc["files"] = [{"path": f"{cloud_init.out}/credentials", "content": "{{ secret_key }} {{ session_token }}\n"}]
    cloud_init.configure({"imds": doc})
    assert cloud_init.run("single", "--name", "imds", "--frequency", "always").returncode == 0
    assert (cloud_init.out / "credentials").stat().st_mode & 0o777 == 0o600
    log = cloud_init.log.read_text()  # cloud-init logs at DEBUG here
    assert "GET /latest/meta-data/iam/security-credentials/app-server -> 200" in log
    secrets = ["demoSecretAccessKey", "demoSessionToken", *emulator.issued_tokens()]
    assert [s for s in secrets if s in log] == []


def test_the_al2023_like_fixture_is_upstreams_amazon_config(tmp_path: Path) -> None:
    """tests/fixtures/NOTICE says where the fixture comes from; upstream's own renderer agrees."""
    unpacked_here("22.2.2")
    rendered = shipped_config("22.2.2", tmp_path) / "cloud.cfg"
    assert rendered.read_bytes() == (REPO / "tests/fixtures/al2023-like-cloud.cfg").read_bytes()
