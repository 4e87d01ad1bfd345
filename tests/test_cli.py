"""The CLI as users run it: a separate process, exit codes, stderr, no tracebacks."""

from __future__ import annotations

import gzip
import json
import re
import signal
import socket
from pathlib import Path
from typing import Callable

import pytest

from cc_imds.cli import main
from cc_imds.imds.tree import MetadataTree
from cc_imds.testing.emulator import Emulator
from cc_imds.tools.get import imds_path
from tests.conftest import EXAMPLES, REPO, SIGINT_STARTS, EmulateProcess

BROKEN = """#cloud-config
imds:
  values:
    instance_id: meta-data/instance-id
    region: {path: dynamic/instance-identity/document, keys: region}
  env:
    - path: etc/instance.env
      format: systemd
      vars: {INSTANCE_ID: instance_idd}
  files:
    - path: /etc/app.conf
      permissions: 0640
      content: "{{ region }}"
"""


def test_validate_accepts_the_examples(cli: Callable) -> None:
    result = cli("validate", *map(str, sorted(EXAMPLES.glob("*.yaml"))))
    assert result.returncode == 0, result.stderr
    assert result.stdout.decode() == f"{len(list(EXAMPLES.glob('*.yaml')))} declaration(s) valid\n"


def test_validate_reports_every_problem_precisely(cli: Callable, tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text(BROKEN)
    result = cli("validate", str(broken))
    assert result.returncode == 1
    assert result.stdout == b""
    assert result.stderr.decode().splitlines() == [
        f"{broken}: imds.env[0].path: 'etc/instance.env' must be an absolute path",
        f"{broken}: imds.files[0].permissions: expected string, got int: must be a quoted octal mode such as "
        '"0640" (setuid, setgid and sticky bits are refused; an unquoted 0640 is read by YAML as the number 416)',
        f"{broken}: imds.values.region: unknown key(s) 'keys' (did you mean 'key'?); allowed: default, key, "
        "path, refresh, sensitive",
    ]


def test_plan_offline_redacts_secrets(cli: Callable) -> None:
    tree = str(REPO / "cc_imds/data/default-tree.json")
    result = cli("plan", str(EXAMPLES / "iam-credentials.yaml"), "--metadata", tree)
    assert result.returncode == 0, result.stderr
    text = result.stdout.decode()
    assert "--- /etc/legacy-agent/credentials  mode 0600" in text and "aws_secret_access_key = <redacted>" in text
    assert "demoSecretAccessKey" not in text and "ASIAEXAMPLE" not in text


def test_apply_with_root_writes_and_is_idempotent(cli: Callable, emulator: Emulator, tmp_path: Path) -> None:
    args = ("apply", str(EXAMPLES / "instance-env.yaml"), "--endpoint", emulator.url, "--root", str(tmp_path))
    first = cli(*args)
    assert first.returncode == 0, first.stderr
    assert first.stdout.decode().splitlines()[0] == f"created   {tmp_path}/etc/cc-imds/instance.sh (0644)"
    assert "INSTANCE_ID='i-0a1b2c3d4e5f60789'" in (tmp_path / "etc/cc-imds/instance.env").read_text()
    second = cli(*args)
    assert all(line.startswith("unchanged") for line in second.stdout.decode().splitlines())


def test_failure_mid_run_leaves_existing_outputs_byte_identical(
    cli: Callable, make_emulator: Callable[..., Emulator], tmp_path: Path
) -> None:
    good = make_emulator()
    args = ["apply", str(EXAMPLES / "instance-env.yaml"), "--root", str(tmp_path)]
    assert cli(*args, "--endpoint", good.url).returncode == 0
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    # Same instance, but the region document is gone: resolving fails after other values arrived.
    leaves = good.tree.leaves()
    del leaves["dynamic/instance-identity/document"]
    leaves["meta-data/instance-id"] = b"i-changed"
    broken = make_emulator(MetadataTree(leaves))
    result = cli(*args, "--endpoint", broken.url)
    assert result.returncode == 3
    assert result.stderr.decode() == (
        f"cc-imds: {EXAMPLES / 'instance-env.yaml'}: imds.values.region: required value missing: "
        "/latest/dynamic/instance-identity/document: not found (404)\n"
    )
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before


def test_unwritable_output_names_the_path(cli: Callable, emulator: Emulator, tmp_path: Path) -> None:
    (tmp_path / "etc").write_text("a file where a directory should be")
    result = cli("apply", str(EXAMPLES / "instance-env.yaml"), "--endpoint", emulator.url, "--root", str(tmp_path))
    assert result.returncode == 4
    expected = f"cc-imds: {tmp_path}/etc/cc-imds/instance.sh: {tmp_path}/etc: is not a directory; nothing was changed\n"
    assert result.stderr.decode() == expected


def test_get_prints_the_value_like_curl(cli: Callable, emulator: Emulator) -> None:
    for path in ("meta-data/instance-id", "/latest/meta-data/instance-id",
                 "http://169.254.169.254/latest/meta-data/instance-id"):
        result = cli("get", path, "--endpoint", emulator.url)
        assert (result.returncode, result.stdout, result.stderr) == (0, b"i-0a1b2c3d4e5f60789", b"")


def test_get_404_exits_1_and_other_failures_exit_3(cli: Callable, make_emulator: Callable[..., Emulator]) -> None:
    emulator = make_emulator()
    result = cli("get", "meta-data/nope", "--endpoint", emulator.url)
    assert (result.returncode, result.stdout) == (1, b"")
    assert result.stderr == b"cc-imds: /latest/meta-data/nope: not found (404)\n"
    disabled = make_emulator(mode="disabled")
    result = cli("get", "meta-data/instance-id", "--endpoint", disabled.url)
    assert result.returncode == 3 and b"IMDS endpoint disabled, or request forbidden" in result.stderr
    assert b"Traceback" not in result.stderr


def test_get_user_data_bytes_intact(cli: Callable, make_emulator: Callable[..., Emulator]) -> None:
    payload = gzip.compress(b"#cloud-config\n{}\n")
    emulator = make_emulator(MetadataTree({"user-data": payload}))
    assert cli("get", "user-data", "--endpoint", emulator.url).stdout == payload


def test_endpoint_from_environment(cli: Callable, emulator: Emulator) -> None:
    result = cli("get", "meta-data/placement/region", env={"AWS_EC2_METADATA_SERVICE_ENDPOINT": emulator.url})
    assert result.stdout == b"eu-west-1"


def test_debug_logs_never_show_tokens_or_secrets(cli: Callable, emulator: Emulator, tmp_path: Path) -> None:
    result = cli("--debug", "apply", str(EXAMPLES / "iam-credentials.yaml"), "--endpoint", emulator.url,
                 "--root", str(tmp_path))
    assert result.returncode == 0
    logs = result.stdout + result.stderr
    assert b"GET /latest/meta-data/iam/security-credentials/app-server -> 200" in logs
    leaks = [t for t in emulator.issued_tokens() if t.encode() in logs]
    assert leaks == [] and b"demoSecretAccessKey" not in logs and b"demoSessionToken" not in logs


def test_demo_writes_real_files(cli: Callable, tmp_path: Path) -> None:
    result = cli("demo", "--root", str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert "export TAG_Name='web-1'" in (tmp_path / "etc/cc-imds/instance.sh").read_text()
    assert json.loads((tmp_path / "etc/cc-imds/iam.json").read_text())["INSTANCE_PROFILE_ARN"].endswith("app-server")
    assert b"demoSecretAccessKey" not in result.stdout
    assert (tmp_path / "etc/legacy-agent/credentials").stat().st_mode & 0o777 == 0o600


def test_usage_errors_exit_2(cli: Callable) -> None:
    result = cli("frobnicate")
    assert result.returncode == 2
    assert result.stderr.decode().splitlines()[-1].startswith("cc-imds: error: argument COMMAND: invalid choice: "
                                                              "'frobnicate'")


def test_missing_file_exits_1_naming_it(cli: Callable) -> None:
    result = cli("validate", "/nonexistent.yaml")
    assert (result.returncode, result.stdout) == (1, b"")
    assert result.stderr.decode() == "/nonexistent.yaml: cannot read: No such file or directory\n"


def test_an_unexpected_exception_is_one_line_without_its_message(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    import cc_imds.cli

    def broken(args: object) -> int:
        raise ValueError("Invalid header value b'AQAEAsecret-token\\r\\n'")

    monkeypatch.setattr(cc_imds.cli, "cmd_validate", broken)
    assert main(["validate", "x.yaml"]) == 70
    [line] = capsys.readouterr().err.splitlines()
    # The innermost frame in cc_imds: here the caller of the patched command.
    assert re.fullmatch(r"cc-imds: internal error: ValueError at cc_imds/cli\.py:\d+ in main; this is a bug, please "
                        r"report it with --debug output", line), line
    assert main(["--debug", "validate", "x.yaml"]) == 70
    err = capsys.readouterr().err
    assert "secret-token" not in err and "Traceback" not in err
    assert err.splitlines()[1].startswith("cc-imds: debug:   at ") and err.splitlines()[-1].endswith(" in broken")


def test_enable_module_refuses_a_config_it_cannot_read_and_writes_nothing(cli: Callable, tmp_path: Path) -> None:
    cloud = tmp_path / "etc/cloud"
    (cloud / "cloud.cfg.d").mkdir(parents=True)
    (cloud / "cloud.cfg").write_text("cloud_config_modules: [runcmd]\n")
    (cloud / "cloud.cfg.d/50-broken.cfg").write_text("cloud_config_modules: [\n")
    result = cli("enable-module", "--root", str(tmp_path))
    assert result.returncode == 1
    assert result.stderr.decode() == (f"cc-imds: {cloud}/cloud.cfg.d/50-broken.cfg: invalid YAML: line 2, column 1: "
                                      "did not find expected node content\n")
    assert sorted(p.name for p in (cloud / "cloud.cfg.d").iterdir()) == ["50-broken.cfg"]
    (cloud / "cloud.cfg.d/50-broken.cfg").write_text("cloud_config_modules: [ntp, runcmd]\n")
    assert cli("enable-module", "--root", str(tmp_path)).returncode == 0
    assert (cloud / "cloud.cfg.d/zz-cc-imds.cfg").read_text().endswith(" - [\"imds\", \"always\"]\n - ntp\n - runcmd\n")


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("http://[fd00:ec2::254]/latest/meta-data/x", "meta-data/x"),
        ("/latest/dynamic/instance-identity/document", "dynamic/instance-identity/document"),
        ("user-data", "user-data"),
    ],
)
def test_get_path_forms(given: str, expected: str) -> None:
    assert imds_path(given) == expected


@pytest.mark.parametrize("start", SIGINT_STARTS, ids=list(SIGINT_STARTS))
@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
@pytest.mark.parametrize("when", ["at-once", "after-requests"])
def test_emulate_serves_until_stopped(cli: Callable, emulate_processes: Callable[..., EmulateProcess], start: str,
                                      stop: int, when: str) -> None:
    """Listening before its banner says so, and stopped cleanly by SIGTERM or SIGINT at any moment
    after it, whether it started with SIGINT at its default or ignored (a shell's background job)."""
    server = emulate_processes("--no-tags", start=start, control=False)
    assert server.banner.startswith("IMDS emulator (required) listening on http://127.0.0.1:")
    url = server.url
    port = int(url.rsplit(":", 1)[1])
    # Connected at once: a connection refused here means the banner came before listen().
    socket.create_connection(("127.0.0.1", port), timeout=10).close()
    if when == "after-requests":
        assert cli("get", "meta-data/instance-id", "--endpoint", url).stdout == b"i-0a1b2c3d4e5f60789"
        assert cli("get", "meta-data/tags/instance/Name", "--endpoint", url).returncode == 1
    assert server.stop(stop) == 0
    with socket.socket() as again:  # the port was released: nothing listens on it (TIME_WAIT aside)
        again.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        again.bind(("127.0.0.1", port))
        again.listen()
