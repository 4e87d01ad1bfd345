"""`cc-imds scan`: exact findings on realistic fixtures, and suggestions that validate and,
applied against the emulator, give the values the old script got from IMDSv1."""

from __future__ import annotations

import base64
import gzip
import json
import os
import subprocess
from email.mime.application import MIMEApplication
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from pathlib import Path
from typing import Any, Callable, Dict, List, Tuple

import pytest
import yaml

from cc_imds.testing.emulator import Emulator
from cc_imds.tools.scan import (
    MAX_DECODED_BYTES,
    MAX_FINDINGS,
    MAX_NESTING,
    ScanError,
    scan_bytes,
    scan_files,
    scan_paths,
)
from tests.conftest import HUNG_AFTER, REPO
from tests.hostile import gzip_bomb

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
        (6, UNKNOWN, "?", "meta-data/", None),  # a URL constant that no access uses: nothing accounts for it
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
    out = subprocess.run(["bash", "-c", code], capture_output=True, check=True, timeout=HUNG_AFTER).stdout.decode()
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


# -- suggestions for any path ----------------------------------------------------------------------
UNNAMED = """#!/bin/sh
curl -s http://169.254.169.254/latest/meta-data/public-keys/0 > /etc/key-name
curl -s http://169.254.169.254/latest/meta-data/public-keys/0/openssh-key >> /etc/ssh/authorized_keys
curl -s http://169.254.169.254/latest/meta-data/network/interfaces/macs/02:4f:1a:9c:33:e1/vpc-id > /etc/vpc
curl -s http://169.254.169.254/latest/meta-data/network/interfaces/macs/0a:00:00:00:00:02/vpc-id > /etc/vpc2
IID=$(curl -s http://169.254.169.254/latest/meta-data/instance-id)
ALSO_IID=$(curl -s http://169.254.169.254/latest/meta-data/instance-id)
IID=$(curl -s http://169.254.169.254/latest/meta-data/ami-id)
curl -s "http://169.254.169.254/latest/meta-data/odd?query" > /dev/null
"""


def test_suggestion_names_every_path_uniquely(cli: Callable, tmp_path: Path) -> None:
    script = tmp_path / "unnamed.sh"
    script.write_text(UNNAMED)
    result = cli("scan", str(script), "--suggest")
    assert result.returncode == 1, result.stderr
    text = result.stdout.decode()
    assert yaml.safe_load(text[text.index("#cloud-config"):])["imds"] == {
        "values": {
            "public_keys_0": "meta-data/public-keys/0",
            "openssh_key": "meta-data/public-keys/0/openssh-key",
            "vpc_id": "meta-data/network/interfaces/macs/02:4f:1a:9c:33:e1/vpc-id",
            "macs_0a_00_00_00_00_02_vpc_id": "meta-data/network/interfaces/macs/0a:00:00:00:00:02/vpc-id",
            "iid": "meta-data/instance-id",
            "ami_id": "meta-data/ami-id",  # `odd?query` is no declarable path: left out, still reported
        },
        "env": [{"path": "/etc/cc-imds/unnamed.sh", "format": "shell", "vars": {
            "PUBLIC_KEYS_0": "public_keys_0", "OPENSSH_KEY": "openssh_key", "VPC_ID": "vpc_id",
            "MACS_0A_00_00_00_00_02_VPC_ID": "macs_0a_00_00_00_00_02_vpc_id", "IID": "iid",
            "ALSO_IID": "iid", "AMI_ID": "ami_id"}}],
    }
    assert "meta-data/odd?query" in text


def test_suggestion_for_unnamed_paths_applies(
    cli: Callable, make_emulator: Callable[..., Emulator], tmp_path: Path
) -> None:
    tree = make_emulator().tree
    leaves = tree.leaves()
    leaves["meta-data/network/interfaces/macs/0a:00:00:00:00:02/vpc-id"] = b"vpc-second"
    from cc_imds.imds.tree import MetadataTree

    emulator = make_emulator(MetadataTree(leaves))
    script = tmp_path / "unnamed.sh"
    script.write_text("".join(line for line in UNNAMED.splitlines(keepends=True) if "odd?query" not in line))
    text = cli("scan", str(script), "--suggest").stdout.decode()
    declaration = tmp_path / "suggested.yaml"
    declaration.write_text(text[text.index("#cloud-config"):])
    root = tmp_path / "root"
    applied = cli("apply", str(declaration), "--endpoint", emulator.url, "--root", str(root), "--no-conf-dir")
    assert applied.returncode == 0, applied.stderr
    got = variables_of(root / "etc/cc-imds/unnamed.sh", ["PUBLIC_KEYS_0", "VPC_ID", "MACS_0A_00_00_00_00_02_VPC_ID",
                                                         "IID", "ALSO_IID"])
    assert got == {"PUBLIC_KEYS_0": "openssh-key", "VPC_ID": leaves[
        "meta-data/network/interfaces/macs/02:4f:1a:9c:33:e1/vpc-id"].decode(),
        "MACS_0A_00_00_00_00_02_VPC_ID": "vpc-second", "IID": "i-0a1b2c3d4e5f60789", "ALSO_IID": "i-0a1b2c3d4e5f60789"}


# -- hostile input: bounded, and every problem named ---------------------------------------------
V1_SCRIPT = b"#!/bin/sh\nID=$(curl -s http://169.254.169.254/latest/meta-data/instance-id)\n"


def test_gzip_bomb_is_refused_at_the_budget() -> None:
    bomb = gzip_bomb(1024)  # 1 GiB of zeros in about 1 MB
    assert len(bomb) < 1_100_000
    with pytest.raises(ScanError) as caught:
        scan_bytes("ud.gz", bomb)
    assert caught.value.problems == [f"ud.gz: decodes to more than {MAX_DECODED_BYTES} bytes (a decompression bomb?)"]


def test_concatenated_gzip_members_are_all_read() -> None:
    two = gzip.compress(b"#!/bin/sh\n") + gzip.compress(V1_SCRIPT[10:])
    assert [(f.line, f.kind) for f in scan_bytes("ud.gz", two)] == [(2, V1)]


def test_problems_are_named_and_the_rest_is_still_scanned(tmp_path: Path) -> None:
    corrupt = tmp_path / "corrupt.gz"
    packed = gzip.compress(V1_SCRIPT)
    corrupt.write_bytes(packed[:-8] + bytes(b ^ 0xFF for b in packed[-8:-4]) + packed[-4:])  # a wrong CRC
    truncated = tmp_path / "truncated.gz"
    truncated.write_bytes(gzip.compress(V1_SCRIPT)[:20])
    good = tmp_path / "good.sh"
    good.write_bytes(V1_SCRIPT)
    os.mkfifo(tmp_path / "fifo")
    result = scan_files([str(corrupt), str(truncated), str(tmp_path / "fifo"), "/dev/zero", str(good)])
    assert [(f.file, f.line) for found in result.findings.values() for f in found] == [(str(good), 2)]
    assert result.problems == [
        f"{corrupt}: corrupt gzip data (Error -3 while decompressing data: incorrect data check)",
        f"{truncated}: truncated or corrupt gzip data",
        f"{tmp_path}/fifo: cannot read: a FIFO, not a regular file",
        "/dev/zero: cannot read: a character device, not a regular file",
    ]


@pytest.mark.parametrize("write_files", ["5", "[5, x, [a]]", "[{content: 5, encoding: b64}]", "{a: b}",
                                         "[{encoding: gz, content: !!binary aGVsbG8=}]"])
def test_odd_write_files_shapes_are_skipped(write_files: str) -> None:
    text = f"#cloud-config\nwrite_files: {write_files}\nruncmd:\n  - curl http://169.254.169.254/latest/meta-data/mac\n"
    assert [(f.line, f.path) for f in scan_bytes("ud", text.encode())] == [(4, "meta-data/mac")]


def test_undecodable_write_files_content_is_a_problem() -> None:
    text = "#cloud-config\nwrite_files:\n  - {path: /x, encoding: b64, content: 'abc'}\n"
    with pytest.raises(ScanError, match=r"ud: write_files\[0\] \(/x\): invalid base64 content \(Incorrect padding\)"):
        scan_bytes("ud", text.encode())


def test_yaml_beyond_the_bounds_is_a_problem_but_its_text_is_scanned() -> None:
    text = "#cloud-config\nruncmd: [curl http://169.254.169.254/latest/meta-data/mac]\nx: &a [*a]\n"
    result = scan_files_of(text.encode())
    assert [f.path for f in result.findings["ud"]] == ["meta-data/mac"]
    assert result.problems == ["ud: line 3, column 8: alias *a is inside the node it names"]


def scan_files_of(data: bytes) -> Any:
    from cc_imds.tools.scan import _FileScan

    scan = _FileScan("ud").content("ud", data, 0)
    return type("Result", (), {"findings": {"ud": scan.findings}, "problems": scan.problems})


def test_nesting_of_containers_is_bounded() -> None:
    data = V1_SCRIPT
    for _ in range(MAX_NESTING + 2):
        message = MIMEMultipart()
        message.attach(MIMEApplication(gzip.compress(data), "gzip"))
        data = message.as_bytes()
    with pytest.raises(ScanError, match=rf"containers nested deeper than {MAX_NESTING} levels"):
        scan_bytes("ud", data)


def test_heredocs_nested_beyond_the_bound_are_read_as_lines() -> None:
    from cc_imds.tools.scan_readers import MAX_HEREDOC_DEPTH

    # Unbounded, each unterminated heredoc reads the rest of the file again: a RecursionError (exit 70)
    # after minutes and gigabytes. Past the bound the curl is still found, as a line of the shell around it.
    for levels in (MAX_HEREDOC_DEPTH + 1, 20_000):
        script = "cat <<EOF\n" * levels + "curl http://169.254.169.254/latest/meta-data/mac\n"
        assert [(f.line, f.kind, f.path) for f in scan_bytes("v.sh", script.encode())] == [
            (levels + 1, V1, "meta-data/mac")]


def test_variables_cannot_expand_without_bound() -> None:
    lines = ["A=" + "x" * 4000] + [f"{b}={('$' + a) * 16}" for a, b in zip("ABCDEFGHI", "BCDEFGHIJ")]
    script = "\n".join([*lines, "curl $J http://169.254.169.254/latest/meta-data/mac", ""])
    # Unbounded, $J is 16**9 copies of 4000 bytes: a MemoryError.
    assert [f.path for f in scan_bytes("v.sh", script.encode())] == ["meta-data/mac"]


def test_findings_per_file_are_bounded() -> None:
    line = "".join(f"curl http://169.254.169.254/latest/meta-data/m{i}; " for i in range(MAX_FINDINGS + 1))
    with pytest.raises(ScanError, match=rf"v.sh: more than {MAX_FINDINGS} IMDS accesses; the rest was not scanned"):
        scan_bytes("v.sh", line.encode())


def test_python_too_deep_for_the_parser_is_scanned_as_text() -> None:
    # Only the shell scan finds a curl inside os.system: finding it shows the fallback ran.
    source = "import os\nos.system('curl http://169.254.169.254/latest/meta-data/mac')\nx = " + "(" * 5000 + \
        ")" * 5000 + "\n"
    assert [(f.line, f.path) for f in scan_bytes("deep.py", source.encode())] == [(2, "meta-data/mac")]


@pytest.mark.parametrize("target", ["fifo", "/dev/zero"])
def test_cli_never_blocks_on_special_files(cli: Callable, tmp_path: Path, target: str) -> None:
    if target == "fifo":
        os.mkfifo(tmp_path / "fifo")
        target = str(tmp_path / "fifo")
    result = cli("scan", target)  # run_cli's timeout fails the test if this blocks
    assert result.returncode == 1
    assert result.stderr.decode().endswith(", not a regular file\n") and b"Traceback" not in result.stderr


def test_shell_function_calls_are_bounded() -> None:
    from cc_imds.tools.scan_readers import MAX_CALL_LINES

    body = "".join(f"  echo {i}\n" for i in range(1000))
    script = "f() {\n" + body + "  curl -s http://169.254.169.254/latest/meta-data/$1\n}\n" + "f mac\n" * 200
    with pytest.raises(ScanError, match=rf"v.sh: more than {MAX_CALL_LINES} lines read for shell function calls"):
        scan_bytes("v.sh", script.encode())


def test_functions_beyond_the_bound_are_read_where_they_stand() -> None:
    from cc_imds.tools.scan_readers import MAX_FUNCTIONS

    script = "".join(f"f{i}() {{ true; }}\n" for i in range(MAX_FUNCTIONS))
    script += "g() {\n  curl -s http://169.254.169.254/latest/meta-data/mac\n}\ng\n"
    assert [(f.line, f.kind, f.path) for f in scan_bytes("v.sh", script.encode())] == [
        (MAX_FUNCTIONS + 2, V1, "meta-data/mac")]


@pytest.mark.parametrize("wrap", [lambda b: base64.b64encode(gzip.compress(b)), base64.encodebytes])
def test_base64_user_data_is_opened(wrap: Callable[[bytes], bytes]) -> None:
    assert [(f.file, f.line, f.kind) for f in scan_bytes("ud.b64", wrap(V1_SCRIPT))] == [("ud.b64 (base64)", 2, V1)]


def test_base64_that_is_not_user_data_is_text() -> None:
    assert scan_bytes("key.txt", base64.b64encode(b"\x00\x01 just bytes, no script here")) == []


def test_cloudformation_json_reads_each_script_line_of_a_string() -> None:
    script = ('#!/bin/bash\nID=$(curl -s http://169.254.169.254/latest/meta-data/instance-id)\n'
              'TOKEN=$(curl -s -X PUT http://169.254.169.254/latest/api/token '
              '-H "X-aws-ec2-metadata-token-ttl-seconds: 60")\nT=$(curl -s -H "X-aws-ec2-metadata-token: $TOKEN" http://169.254.169.254/latest/meta-data/ami-id)\n')
    minified = json.dumps({"Resources": {"Web": {"Properties": {"UserData": {"Fn::Base64": script}}}}})
    joined = json.dumps({"Fn::Join": ["", [line + "\n" for line in script.splitlines()]]}, indent=2)
    expected = [(V1, "meta-data/instance-id", "ID"), (V2, "api/token", "TOKEN"), (V2, "meta-data/ami-id", "T")]
    for template in (minified, joined):
        found = scan_bytes("web.json", template.encode())
        assert [(f.kind, f.path, f.variable) for f in found] == expected
    # After "{", "Fn::Join": [, "", [ and the shebang's line:
    assert [f.line for f in scan_bytes("web.json", joined.encode())] == [6, 7, 8]


def test_binary_write_files_content_is_scanned() -> None:
    encoded = base64.b64encode(V1_SCRIPT).decode()
    config = f"#cloud-config\nwrite_files:\n- path: /opt/id.sh\n  content: !!binary |\n    {encoded}\n"
    assert [(f.file, f.line, f.kind) for f in scan_bytes("ud.yaml", config.encode())] == [
        ("ud.yaml: write_files[0] (/opt/id.sh)", 2, V1)]


def test_text_from_the_scanned_file_is_shown_escaped(cli: Callable, tmp_path: Path) -> None:
    script = tmp_path / "ansi.sh"
    script.write_bytes(b"X=$(curl -s http://169.254.169.254/latest/meta-data/a\x1b[2Jb | tr a\x07 b)\n")
    result = cli("scan", "--suggest", str(script))
    assert result.returncode == 1
    assert b"\x1b" not in result.stdout and b"\x07" not in result.stdout
    assert b"meta-data/a\\x1b[2Jb" in result.stdout
