"""`cc-imds scan`: exact findings on realistic fixtures, and suggestions that validate and,
applied against the emulator, give the values the old script got from IMDSv1."""

from __future__ import annotations

import base64
import gzip
import json
import subprocess
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from pathlib import Path
from typing import Callable, Dict, List, Tuple

import pytest
import yaml

from cc_imds.emulator import Emulator
from cc_imds.scan import scan_bytes, scan_paths
from tests.conftest import REPO

FIXTURES = REPO / "tests/fixtures/scan"
V1, V2, UNKNOWN = "IMDSv1", "IMDSv2", "unknown"


def found(path: Path) -> List[Tuple[int, str, str, object, object]]:
    return [(f.line, f.kind, f.tool, f.path, f.variable) for f in scan_paths([str(path)])]


def test_classic_v1_script() -> None:
    assert found(FIXTURES / "classic-v1.sh") == [
        (4, V1, "curl", "meta-data/instance-id", "INSTANCE_ID"),
        (5, V1, "curl", "meta-data/placement/availability-zone", "AZ"),
        (6, V1, "curl", "meta-data/placement/availability-zone", "REGION"),
        (7, V1, "curl", "meta-data/tags/instance/Name", "NAME"),
        (8, V1, "wget", "meta-data/local-ipv4", "PRIVATE_IP"),
        (9, V1, "curl", "meta-data/iam/security-credentials/", "ROLE"),
    ]
    region = scan_paths([str(FIXTURES / "classic-v1.sh")])[2]
    assert region.region_from_az and "Local Zones" in region.replacement


def test_v2_script_is_not_flagged() -> None:
    assert found(FIXTURES / "v2.sh") == [
        (3, V2, "curl", "api/token", "TOKEN"),
        (4, V2, "curl", "meta-data/instance-id", "INSTANCE_ID"),
        (5, V2, "curl", "meta-data/placement/region", "REGION"),  # a continuation line
    ]


def test_obfuscated_forms() -> None:
    assert found(FIXTURES / "obfuscated.sh") == [
        (5, V1, "curl", "meta-data/instance-type", "INSTANCE_TYPE"),  # URL in a variable, three lines
        (8, V1, "curl", "meta-data/local-hostname", "HOSTNAME_VALUE"),  # host in a variable
        (9, V1, "curl", "meta-data/mac", "MAC"),
        (11, V2, "curl", "meta-data/ami-id", "AMI"),  # the token header comes from a known variable
        (12, UNKNOWN, "curl", "meta-data/kernel-id", "KERNEL"),  # options from an unknown variable
    ]


def test_cloud_config() -> None:
    assert found(FIXTURES / "user-data.yaml") == [
        (3, V1, "curl", "meta-data/instance-id", None),  # bootcmd
        (9, V1, "curl", "meta-data/public-ipv4", "IP"),  # write_files content
        (12, V1, "curl", "meta-data/placement/region", None),  # runcmd, list form
        (13, V2, "curl", "api/token", "TOKEN"),
    ]


def test_python() -> None:
    assert found(FIXTURES / "fetch_metadata.py") == [
        (7, V1, "requests", "meta-data/instance-id", None),
        (8, V1, "requests", "dynamic/instance-identity/document", None),
        (12, V1, "urllib", "meta-data/mac", None),
        (13, V2, "requests", "api/token", None),
        (15, V2, "requests", "meta-data/ami-id", None),
    ]


def test_gzipped_mime_multipart_user_data() -> None:
    message = MIMEMultipart()
    message.attach(MIMEText((FIXTURES / "classic-v1.sh").read_text(), "x-shellscript"))
    message.attach(MIMEText((FIXTURES / "user-data.yaml").read_text(), "cloud-config"))
    raw = gzip.compress(message.as_bytes())
    findings = scan_bytes("ud.gz", raw)
    assert [(f.file, f.line, f.kind) for f in findings if f.kind == V1][:2] == [
        ("ud.gz[part 1: text/x-shellscript]", 4, V1),
        ("ud.gz[part 1: text/x-shellscript]", 5, V1),
    ]
    assert [(f.file, f.line) for f in findings if f.file.endswith("text/cloud-config]")] == [
        ("ud.gz[part 2: text/cloud-config]", 3), ("ud.gz[part 2: text/cloud-config]", 9),
        ("ud.gz[part 2: text/cloud-config]", 12), ("ud.gz[part 2: text/cloud-config]", 13),
    ]


def test_encoded_write_files_content() -> None:
    script = "#!/bin/sh\nID=$(curl -s http://169.254.169.254/latest/meta-data/instance-id)\n"
    encoded = base64.b64encode(gzip.compress(script.encode())).decode()
    config = "#cloud-config\n" + yaml.safe_dump(
        {"write_files": [{"path": "/opt/id.sh", "encoding": "gz+b64", "content": encoded}]})
    findings = scan_bytes("ud.yaml", config.encode())
    assert [(f.file, f.line, f.kind, f.path) for f in findings] == [
        ("ud.yaml: write_files[0] (/opt/id.sh)", 2, V1, "meta-data/instance-id")]


def test_cli_exit_status_and_json(cli: Callable) -> None:
    flagged = cli("scan", str(FIXTURES / "classic-v1.sh"))
    assert flagged.returncode == 1
    assert flagged.stdout.decode().splitlines()[0].split() == [
        f"{FIXTURES}/classic-v1.sh:4", "IMDSv1", "curl", "meta-data/instance-id", "cc-imds", "get",
        "meta-data/instance-id"]
    clean = cli("scan", str(FIXTURES / "v2.sh"), "--json")
    assert clean.returncode == 0
    assert [f["kind"] for f in json.loads(clean.stdout)] == [V2, V2, V2]
    missing = cli("scan", "/nonexistent-file")
    assert missing.stderr == b"cc-imds: /nonexistent-file: cannot read: No such file or directory\n"


def suggestion(cli: Callable, fixture: str, tmp_path: Path) -> Path:
    result = cli("scan", str(FIXTURES / fixture), "--suggest")
    text = result.stdout.decode()
    block = text[text.index("#cloud-config"):]
    path = tmp_path / f"{fixture}.yaml"
    path.write_text(block)
    return path


@pytest.mark.parametrize("fixture", ["classic-v1.sh", "obfuscated.sh", "user-data.yaml", "fetch_metadata.py"])
def test_suggestions_validate(cli: Callable, fixture: str, tmp_path: Path) -> None:
    path = suggestion(cli, fixture, tmp_path)
    result = cli("validate", str(path))
    assert result.returncode == 0, result.stderr


def variables_of(script: Path, names: List[str]) -> Dict[str, str]:
    code = f". {script}\n" + "".join(f'printf "%s\\0" "${n}"\n' for n in names)
    out = subprocess.run(["bash", "-c", code], capture_output=True, check=True).stdout.decode()
    return dict(zip(names, out.split("\0")[:-1]))


@pytest.mark.parametrize(("fixture", "names"), [
    ("classic-v1.sh", ["INSTANCE_ID", "AZ", "REGION", "NAME", "PRIVATE_IP", "ROLE"]),
    ("obfuscated.sh", ["INSTANCE_TYPE", "HOSTNAME_VALUE", "MAC"]),
])
def test_suggestion_reproduces_what_the_script_got_from_imdsv1(
    cli: Callable, make_emulator: Callable[..., Emulator], tmp_path: Path, fixture: str, names: List[str]
) -> None:
    emulator = make_emulator(mode="optional")  # IMDSv1 works, as on the instances these came from
    host = emulator.url.split("//", 1)[1]
    original = tmp_path / fixture
    original.write_text((FIXTURES / fixture).read_text().replace("169.254.169.254", host).replace("echo ", ": "))
    expected = variables_of(original, names)
    assert expected["INSTANCE_ID" if "INSTANCE_ID" in names else "MAC"]  # the script really got values

    root = tmp_path / "root"
    applied = cli("apply", str(suggestion(cli, fixture, tmp_path)), "--endpoint", emulator.url, "--root", str(root),
                  "--no-conf-dir")
    assert applied.returncode == 0, applied.stderr
    rendered = root / "etc/cc-imds" / f"{Path(fixture).stem}.sh"
    assert variables_of(rendered, names) == expected
