"""`scan --suggest` offers the one-call `cc-imds get --shell` form for a script that reads several
values: run in the script's place, it gives the variables the script got from IMDSv1."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Callable, List

import pytest

from cc_imds.testing.emulator import Emulator
from cc_imds.tools.scan import suggest_get
from tests.conftest import HUNG_AFTER, REPO
from tests.test_scan import FIXTURES, variables_of


def eval_command(cli: Callable, fixture: str) -> str:
    text = cli("scan", str(FIXTURES / fixture), "--suggest").stdout.decode()
    start = text.index("values=$(cc-imds get --shell")
    end = text.index('eval "$values"', start) + len('eval "$values"')
    return text[start:end]


@pytest.mark.parametrize(("fixture", "names"), [
    ("classic-v1.sh", ["INSTANCE_ID", "AZ", "REGION", "NAME", "PRIVATE_IP", "ROLE"]),
    ("obfuscated.sh", ["INSTANCE_TYPE", "HOSTNAME_VALUE", "MAC"]),
])
def test_the_one_call_form_gives_what_the_script_got(cli: Callable, make_emulator: Callable[..., Emulator],
                                                     tmp_path: Path, fixture: str, names: List[str]) -> None:
    emulator = make_emulator(mode="optional")  # IMDSv1 works, as on the instances these came from
    host = emulator.url.split("//", 1)[1]
    original = tmp_path / fixture
    original.write_text((FIXTURES / fixture).read_text().replace("169.254.169.254", host).replace("echo ", ": "))
    expected = variables_of(original, names)

    (tmp_path / "cc-imds").write_text(f'#!/bin/sh\nPYTHONPATH={REPO} exec {sys.executable} -m cc_imds "$@"\n')
    (tmp_path / "cc-imds").chmod(0o755)
    script = "set -e\n" + eval_command(cli, fixture) + "\n" + "".join(f'printf "%s\\0" "${n}"\n' for n in names)
    result = subprocess.run(["bash", "-c", script], capture_output=True, check=True, env={
        **os.environ, "PATH": f"{tmp_path}:/usr/bin:/bin", "AWS_EC2_METADATA_SERVICE_ENDPOINT": emulator.url},
        timeout=HUNG_AFTER)
    assert dict(zip(names, result.stdout.decode().split("\0")[:-1])) == expected
    assert emulator.count("PUT") == 1


def test_one_value_needs_no_multi_value_form() -> None:
    declaration = {"values": {"id": "meta-data/instance-id"},
                   "env": [{"path": "/x.sh", "format": "shell", "vars": {"ID": "id"}}]}
    assert suggest_get(declaration) is None
    declaration["values"]["region"] = {"path": "dynamic/instance-identity/document", "key": "region"}
    declaration["env"][0]["vars"]["REGION"] = "region"
    assert suggest_get(declaration) == ('values=$(cc-imds get --shell \\\n    ID=meta-data/instance-id \\\n'
                                        '    REGION=dynamic/instance-identity/document --key region)\n'
                                        'eval "$values"')
