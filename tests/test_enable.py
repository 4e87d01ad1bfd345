"""`cc-imds enable-module`: the generated drop-in, and `--check`, the gate for image builds,
on an image laid out under a temp dir (--root), through the CLI."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Callable, List

import pytest
import yaml

from tests.conftest import REPO

FIXTURE = REPO / "tests/fixtures/al2023-like-cloud.cfg"
DROPIN = "etc/cloud/cloud.cfg.d/zz-cc-imds.cfg"


@pytest.fixture
def image(tmp_path: Path) -> Path:
    (tmp_path / "etc/cloud/cloud.cfg.d").mkdir(parents=True)
    shutil.copy(FIXTURE, tmp_path / "etc/cloud/cloud.cfg")
    return tmp_path


def dropin(image: Path, name: str, config: dict) -> None:
    (image / "etc/cloud/cloud.cfg.d" / name).write_text(yaml.safe_dump(config))


def stage(image: Path) -> List[object]:
    return list(yaml.safe_load((image / DROPIN).read_text())["cloud_config_modules"])


def errors(result: object) -> List[str]:
    return result.stderr.decode().splitlines()  # type: ignore[attr-defined, no-any-return]


def test_enable_then_check_passes(cli: Callable, image: Path) -> None:
    assert cli("enable-module", "--root", str(image)).returncode == 0
    shipped = yaml.safe_load(FIXTURE.read_text())["cloud_config_modules"]
    assert stage(image) == [["imds", "always"], *shipped]
    result = cli("enable-module", "--check", "--root", str(image))
    assert result.returncode == 0, result.stderr
    assert result.stdout.decode() == (
        f"imds runs first in cloud_config_modules ({len(shipped) + 1} modules, from /etc/cloud/cloud.cfg and "
        "1 drop-in(s))\n"
    )
    assert cli("enable-module", "--root", str(image)).returncode == 0  # idempotent
    assert cli("enable-module", "--check", "--root", str(image)).returncode == 0


def test_check_fails_when_the_module_was_never_enabled(cli: Callable, image: Path) -> None:
    result = cli("enable-module", "--check", "--root", str(image))
    assert result.returncode == 1
    assert errors(result) == [
        "cc-imds: imds is not in cloud_config_modules (set last by /etc/cloud/cloud.cfg), so it never runs; "
        "run `cc-imds enable-module`"
    ]
    assert not (image / DROPIN).exists()  # a check writes nothing


def test_check_fails_when_a_later_dropin_replaces_the_list(cli: Callable, image: Path) -> None:
    cli("enable-module", "--root", str(image))
    dropin(image, "zzz-site.cfg", {"cloud_config_modules": ["ntp", "runcmd"]})
    result = cli("enable-module", "--check", "--root", str(image))
    assert result.returncode == 1
    assert errors(result) == [
        "cc-imds: imds is not in cloud_config_modules (set last by /etc/cloud/cloud.cfg.d/zzz-site.cfg), so it "
        "never runs; it sorts after /etc/cloud/cloud.cfg.d/zz-cc-imds.cfg and replaces the list: put imds first "
        "in it, or give it an earlier name"
    ]


def test_check_fails_when_imds_is_not_first(cli: Callable, image: Path) -> None:
    dropin(image, "zzz-site.cfg", {"cloud_config_modules": ["ntp", "timezone", ["imds", "always"], "runcmd"]})
    result = cli("enable-module", "--check", "--root", str(image))
    assert result.returncode == 1
    assert errors(result) == [
        "cc-imds: imds is not first in cloud_config_modules (set last by /etc/cloud/cloud.cfg.d/zzz-site.cfg): "
        "ntp, timezone run before it; it sorts after /etc/cloud/cloud.cfg.d/zz-cc-imds.cfg and replaces the "
        "list: put imds first in it, or give it an earlier name"
    ]


def test_check_reports_every_problem(cli: Callable, image: Path) -> None:
    dropin(image, "50-site.cfg", {
        "cloud_config_modules": ["imds", "runcmd", "cc_imds"],
        "cloud_final_modules": ["scripts-user", "imds"],
    })
    result = cli("enable-module", "--check", "--root", str(image))
    assert result.returncode == 1
    assert errors(result) == [
        "cc-imds: imds is listed 2 times in cloud_config_modules, so it runs 2 times",
        "cc-imds: imds is also in cloud_final_modules, so it runs in that stage too",
    ]


def test_check_fails_when_the_generated_dropin_is_out_of_date(cli: Callable, image: Path) -> None:
    """A drop-in copied into the image after the package (no rpm trigger) changes the list."""
    cli("enable-module", "--root", str(image))
    dropin(image, "50-site.cfg", {"cloud_config_modules": ["timezone", "ntp", "chef"]})
    result = cli("enable-module", "--check", "--root", str(image))
    assert result.returncode == 1
    assert errors(result) == [
        "cc-imds: /etc/cloud/cloud.cfg.d/zz-cc-imds.cfg is out of date with cloud.cfg and the other drop-ins "
        "(missing chef; still lists ssh-import-id, keyboard, locale, set-passwords, disable-ec2-metadata, runcmd); "
        "run `cc-imds enable-module`"
    ]
    cli("enable-module", "--root", str(image))
    assert stage(image) == [["imds", "always"], "timezone", "ntp", "chef"]
    assert cli("enable-module", "--check", "--root", str(image)).returncode == 0


def test_check_print_and_remove_exclude_each_other(cli: Callable, image: Path) -> None:
    result = cli("enable-module", "--check", "--print", "--root", str(image))
    assert result.returncode == 2
    assert "not allowed with argument" in result.stderr.decode()
