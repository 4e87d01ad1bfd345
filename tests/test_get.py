"""`cc-imds get` for scripts: many values in one call, exact shell quoting, URL forms, and
all-or-nothing output. Run as users run it: a separate process against the emulator."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Callable, Dict, List

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cc_imds.errors import ImdsError, ImdsNotFound, ImdsUnreachable
from cc_imds.imds.tree import MetadataTree, load_tree
from cc_imds.testing.emulator import Emulator
from cc_imds.tools.get import (
    JSON,
    LINES,
    RAW,
    SHELL,
    GetError,
    Request,
    UsageError,
    imds_path,
    parse_requests,
    pick,
    render,
)
from tests.conftest import HUNG_AFTER, REPO, examples, require, requires
from tests.test_formats import HOSTILE

SHELLS = ["bash", "dash"]  # both required by `make test`; elsewhere a missing one is skipped, saying so


def shells() -> List[str]:
    for shell in SHELLS:
        require(shutil.which(shell) is not None, f"{shell} is not installed")
    return SHELLS
ID = "i-0a1b2c3d4e5f60789"
SECRET = "demoSecretAccessKey"  # in the bundled tree's IAM credentials


def hostile_tree() -> MetadataTree:
    leaves = load_tree().leaves()
    leaves.update({f"meta-data/tags/instance/t{i:02d}": v.encode() for i, v in enumerate(HOSTILE)})
    return MetadataTree(leaves)


def eval_in(shell: str, script_output: bytes, names: List[str]) -> List[str]:
    """`eval "$(cc-imds get --shell ...)"` as a script does, then each variable NUL-terminated."""
    script = 'eval "$(cat)"\n' + "".join(f'printf "%s\\0" "${n}"\n' for n in names)
    result = subprocess.run([shell, "-c", script], input=script_output, capture_output=True,
                            env={"PATH": "/usr/bin:/bin"}, check=True, timeout=HUNG_AFTER)
    return result.stdout.decode("utf-8").split("\0")[:-1]


# -- many values, one call -------------------------------------------------------------------------
@pytest.mark.parametrize("shell", [pytest.param(s, marks=requires(shutil.which(s) is not None, f"{s} is not installed"))
                                   for s in SHELLS])
def test_shell_output_evals_to_the_exact_values(cli: Callable, make_emulator: Callable[..., Emulator],
                                                shell: str) -> None:
    emulator = make_emulator(hostile_tree())
    names = [f"T{i:02d}" for i in range(len(HOSTILE))]
    args = [f"{n}=meta-data/tags/instance/t{i:02d}" for i, n in enumerate(names)]
    result = cli("get", "--shell", *args, "ID=meta-data/instance-id", "--endpoint", emulator.url)
    assert result.returncode == 0, result.stderr
    assert result.stderr == b""
    assert eval_in(shell, result.stdout, [*names, "ID"]) == [*HOSTILE, ID]
    # One process, one token, each path once.
    assert emulator.count("PUT") == 1
    assert emulator.count("GET") == len(HOSTILE) + 1


def test_shell_lines_are_the_shell_formats_quoting(cli: Callable, emulator: Emulator) -> None:
    result = cli("get", "--shell", "ID=meta-data/instance-id", "REGION=meta-data/placement/region",
                 "--endpoint", emulator.url)
    assert result.stdout == f"ID='{ID}'\nREGION='eu-west-1'\n".encode()


@settings(max_examples=examples(60), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(values=st.lists(st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\0"), max_size=80),
                       min_size=1, max_size=4))
def test_any_text_round_trips_through_eval(values: List[str]) -> None:
    requests = [Request(f"V{i}=x", f"V{i}", f"meta-data/v{i}") for i in range(len(values))]
    output = render(requests, values, SHELL)
    for shell in shells():
        assert eval_in(shell, output, [r.name or "" for r in requests]) == values


def test_json_and_lines(cli: Callable, emulator: Emulator) -> None:
    result = cli("get", "--json", "ID=meta-data/instance-id", "REGION=meta-data/placement/region",
                 "--endpoint", emulator.url)
    assert json.loads(result.stdout) == {"ID": ID, "REGION": "eu-west-1"}
    result = cli("get", "--lines", "meta-data/instance-id", "/latest/meta-data/placement/region",
                 "--endpoint", emulator.url)
    assert result.stdout == f"{ID}\neu-west-1\n".encode()


def test_lines_refuse_a_value_with_a_line_break(cli: Callable, make_emulator: Callable[..., Emulator]) -> None:
    emulator = make_emulator(hostile_tree())
    index = HOSTILE.index("line1\nline2\n")
    result = cli("get", "--lines", "meta-data/instance-id", f"meta-data/tags/instance/t{index:02d}",
                 "--endpoint", emulator.url)
    assert (result.returncode, result.stdout) == (1, b"")
    assert result.stderr.decode() == (
        f"cc-imds: /latest/meta-data/tags/instance/t{index:02d}: contains a line break, so one value per line "
        "would be ambiguous: use --shell or --json\n")


def test_key_and_default_read_like_the_declaration(cli: Callable, emulator: Emulator) -> None:
    result = cli("get", "--shell",
                 "REGION=dynamic/instance-identity/document", "--key", "region",
                 "ENVIRONMENT=meta-data/tags/instance/Missing", "--default=dev",
                 "ACCOUNT=dynamic/instance-identity/document", "--key=accountId", "--default", "unused",
                 "--endpoint", emulator.url)
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"REGION='eu-west-1'\nENVIRONMENT='dev'\nACCOUNT='123456789012'\n"
    # Single-value form: the same options.
    result = cli("get", "meta-data/tags/instance/Missing", "--default", "", "--endpoint", emulator.url)
    assert (result.returncode, result.stdout) == (0, b"")


def test_every_failure_named_at_once_and_nothing_printed(cli: Callable, emulator: Emulator) -> None:
    result = cli("get", "--shell", "ID=meta-data/instance-id", "A=meta-data/nope",
                 "DOC=dynamic/instance-identity/document", "--key", "nokey",
                 "NAME=meta-data/instance-id", "--key", "x", "B=meta-data/tags/instance/nope",
                 "--endpoint", emulator.url)
    assert (result.returncode, result.stdout) == (1, b"")
    assert result.stderr.decode().splitlines() == [
        "cc-imds: A: /latest/meta-data/nope: not found (404)",
        "cc-imds: DOC: /latest/dynamic/instance-identity/document: the JSON document has no key 'nokey'",
        "cc-imds: NAME: /latest/meta-data/instance-id: not a JSON document, so key 'x' cannot be read",
        "cc-imds: B: /latest/meta-data/tags/instance/nope: not found (404)",
    ]


def test_a_set_e_script_stops_at_the_assignment_instead_of_running_with_empty_variables(
        emulator: Emulator, tmp_path: Path) -> None:
    """The documented form (docs/scripts.md): the assignment carries cc-imds's exit status, so `set -e` stops there.
    (`eval "$(...)"` alone cannot stop a script: eval of empty output succeeds; shown below.)"""
    (tmp_path / "cc-imds").write_text(f'#!/bin/sh\nPYTHONPATH={REPO} exec {sys.executable} -m cc_imds "$@"\n')
    (tmp_path / "cc-imds").chmod(0o755)
    get = f"cc-imds get --shell ID=meta-data/instance-id GONE=meta-data/nope --endpoint {emulator.url}"
    two_steps = f'set -e\nvalues=$({get})\neval "$values"\necho "reached with ID=$ID"\n'
    one_line = f'set -e\neval "$({get})"\necho "reached with ID=$ID"\n'
    for shell in shells():
        env = {**os.environ, "PATH": f"{tmp_path}:/usr/bin:/bin"}
        result = subprocess.run([shell, "-c", two_steps], capture_output=True, env=env, timeout=HUNG_AFTER)
        assert (result.returncode, result.stdout) == (1, b"")
        assert result.stderr == b"cc-imds: GONE: /latest/meta-data/nope: not found (404)\n"
        # Why docs/scripts.md insists on two steps: nothing was printed, and eval of nothing succeeds.
        result = subprocess.run([shell, "-c", one_line], capture_output=True, env=env, timeout=HUNG_AFTER)
        assert (result.returncode, result.stdout) == (0, b"reached with ID=\n")


def test_imds_failure_is_exit_3_and_never_uses_the_default(cli: Callable,
                                                           make_emulator: Callable[..., Emulator]) -> None:
    disabled = make_emulator(mode="disabled")
    result = cli("get", "--shell", "ENVIRONMENT=meta-data/tags/instance/Environment", "--default", "dev",
                 "--endpoint", disabled.url)
    assert (result.returncode, result.stdout) == (3, b"")
    assert b"IMDS endpoint disabled, or request forbidden" in result.stderr


@pytest.mark.parametrize("outcome", [ImdsError("/latest/meta-data/x", "unexpected HTTP 500"),
                                     ImdsUnreachable("/latest/meta-data/x", "no usable answer")])
def test_default_is_for_404_only(outcome: ImdsError) -> None:
    request = Request("X=meta-data/x", "X", "meta-data/x")
    request.default = "fallback"
    assert pick(request, ImdsNotFound("/latest/meta-data/x")) == "fallback"
    with pytest.raises(ImdsError):
        pick(request, outcome)


def test_sensitive_values_are_printed_but_never_in_errors(cli: Callable, emulator: Emulator) -> None:
    path = "meta-data/iam/security-credentials/app-server"
    result = cli("get", "--shell", f"CREDS={path}", "--endpoint", emulator.url)
    assert result.returncode == 0 and SECRET.encode() in result.stdout
    result = cli("get", "--lines", path, "--endpoint", emulator.url)  # multi-line JSON: refused
    assert result.returncode == 1 and SECRET.encode() not in result.stdout + result.stderr
    result = cli("get", f"K={path}", "--key", "nokey", "--json", "--endpoint", emulator.url)
    assert result.returncode == 1 and SECRET.encode() not in result.stdout + result.stderr
    result = cli("get", "--shell", f"K={path}", "--key", "SecretAccessKey", "--endpoint", emulator.url)
    secret = json.loads(emulator.tree.lookup(path) or b"")["SecretAccessKey"]
    assert SECRET in secret and result.stdout == f"K='{secret}'\n".encode()


def test_binary_values_only_raw(cli: Callable, make_emulator: Callable[..., Emulator]) -> None:
    emulator = make_emulator(MetadataTree({"user-data": b"\x1f\x8b\x08\x00\xff", "meta-data/instance-id": b"i-1"}))
    result = cli("get", "--shell", "UD=user-data", "ID=meta-data/instance-id", "--endpoint", emulator.url)
    assert (result.returncode, result.stdout) == (1, b"")
    assert result.stderr == (b"cc-imds: UD: /latest/user-data: not UTF-8 text (gzip perhaps): "
                             b"get it alone, as raw bytes\n")
    assert cli("get", "user-data", "--endpoint", emulator.url).stdout == b"\x1f\x8b\x08\x00\xff"


# -- wrong usage: exit 2, nothing on stdout, every problem at once -----------------------------------------
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--shell", "PATH=meta-data/instance-id"],
         "PATH=meta-data/instance-id: PATH is refused: setting it changes how the shell or programs run"),
        (["--shell", "LD_PRELOAD=meta-data/instance-id"],
         "LD_PRELOAD=meta-data/instance-id: LD_PRELOAD is refused: setting it changes how the shell or programs run"),
        (["--shell", "1X=meta-data/instance-id"],
         "1X=meta-data/instance-id: '1X' is not a variable name ([A-Za-z_][A-Za-z0-9_]*)"),
        (["--shell", "meta-data/instance-id"],
         "meta-data/instance-id: --shell needs a variable name: NAME=meta-data/instance-id"),
        (["ID=meta-data/instance-id"], "ID=meta-data/instance-id: NAME=PATH assigns variables: add --shell (for eval) "
                                       "or --json"),
        (["meta-data/instance-id", "meta-data/placement/region"],
         "several values need --shell (NAME=PATH, for eval), --json (NAME=PATH) or --lines (one per line)"),
        (["--key", "region", "X=dynamic/instance-identity/document"],
         "--key 'region': give it after the value it applies to"),
        (["meta-data/instance-id", "--default"], "--default needs a value"),
        (["meta-data/instance-id", "--frobnicate"], "--frobnicate: unknown option"),
        (["--sh", "ID=meta-data/instance-id"], "--sh: unknown option"),
        ([], "give the path of a value, such as meta-data/instance-id, or NAME=PATH with --shell or --json"),
        (["http://example.com/latest/meta-data/instance-id"],
         "http://example.com/latest/meta-data/instance-id: host 'example.com' is not IMDS "
         "(169.254.169.254, [fd00:ec2::254], ENDPOINT)"),
        (["https://169.254.169.254/latest/meta-data/instance-id"],
         "https://169.254.169.254/latest/meta-data/instance-id: IMDS is plain http://"),
        (["http://169.254.169.254:8080/latest/meta-data/instance-id"],
         "http://169.254.169.254:8080/latest/meta-data/instance-id: host '169.254.169.254:8080' is not IMDS "
         "(169.254.169.254, [fd00:ec2::254], ENDPOINT)"),
        (["http://169.254.169.254/latest/meta-data/?x=1"],
         "http://169.254.169.254/latest/meta-data/?x=1: an IMDS path has no query string or fragment"),
        (["meta-data/../user-data"], "meta-data/../user-data: an IMDS path has no empty, . or .. parts"),
        (["/v2/meta-data/instance-id"],
         "/v2/meta-data/instance-id: expected /latest/ (or a dated API version) before the path"),
        (["instance-id"], "instance-id: expected meta-data/..., dynamic/... or user-data"),
    ],
)
def test_wrong_usage_exits_2_with_one_line_per_problem(cli: Callable, emulator: Emulator, args: List[str],
                                                       message: str) -> None:
    result = cli("get", *args, "--endpoint", emulator.url)
    endpoint = emulator.url.split("//")[1]
    assert (result.returncode, result.stdout) == (2, b"")
    assert result.stderr.decode() == f"cc-imds: {message.replace('ENDPOINT', endpoint)}\n"
    assert emulator.requests == []  # refused before asking IMDS anything


def test_every_usage_problem_at_once(cli: Callable, emulator: Emulator) -> None:
    result = cli("get", "--shell", "PATH=meta-data/instance-id", "ID=meta-data/instance-id",
                 "ID=meta-data/placement/region", "X=http://example.com/latest/meta-data/x", "--endpoint", emulator.url)
    assert result.returncode == 2
    assert len(result.stderr.decode().splitlines()) == 3


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "0", "-1", "soon", "1e400"])
@pytest.mark.parametrize("option", ["--timeout", "--deadline"])
def test_timeouts_must_be_positive_finite_seconds(cli: Callable, option: str, value: str) -> None:
    result = cli("get", "meta-data/instance-id", f"{option}={value}", "--endpoint", "http://127.0.0.1:9")
    assert (result.returncode, result.stdout) == (2, b"")
    assert f"argument {option}: ".encode() in result.stderr and b"Traceback" not in result.stderr


# -- URL forms: what old scripts pass to curl ------------------------------------------------------------------
@pytest.mark.parametrize(
    ("given", "requested"),
    [
        ("http://169.254.169.254/latest/meta-data/instance-id", "/latest/meta-data/instance-id"),
        ("http://169.254.169.254:80/latest/meta-data/instance-id", "/latest/meta-data/instance-id"),
        ("HTTP://169.254.169.254/2021-07-15/meta-data/instance-id", "/latest/meta-data/instance-id"),
        ("http://[fd00:ec2::254]/1.0/meta-data/instance-id", "/latest/meta-data/instance-id"),
        ("http://169.254.169.254/latest/meta-data/tags/instance/aws%3Acloudformation%3Astack-name",
         "/latest/meta-data/tags/instance/aws:cloudformation:stack-name"),
        ("/2009-04-04/dynamic/instance-identity/document", "/latest/dynamic/instance-identity/document"),
        ("latest/meta-data/", "/latest/meta-data/"),
        ("meta-data/tags/instance/a=b", "/latest/meta-data/tags/instance/a=b"),
    ],
)
def test_url_forms_request_the_path_under_latest(cli: Callable, make_emulator: Callable[..., Emulator],
                                                 given: str, requested: str) -> None:
    leaves = load_tree().leaves()
    leaves.update({"meta-data/tags/instance/aws:cloudformation:stack-name": b"stack",
                   "meta-data/tags/instance/a=b": b"eq"})
    emulator = make_emulator(MetadataTree(leaves))
    result = cli("get", given, "--endpoint", emulator.url)
    assert result.returncode == 0, result.stderr
    assert [r.path for r in emulator.requests if r.method == "GET"] == [requested]


def test_a_url_may_name_the_configured_endpoint(cli: Callable, emulator: Emulator) -> None:
    result = cli("get", f"{emulator.url}/latest/meta-data/instance-id", "--endpoint", emulator.url)
    assert (result.returncode, result.stdout) == (0, ID.encode())


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("http://169.254.169.254/latest/meta-data/instance-id", "meta-data/instance-id"),
        ("http://169.254.169.254:80/2021-07-15/meta-data/instance-id", "meta-data/instance-id"),
        ("/latest/user-data", "user-data"),
        ("dynamic/instance-identity/document", "dynamic/instance-identity/document"),
        ("meta-data", "meta-data"),
    ],
)
def test_imds_path(given: str, expected: str) -> None:
    assert imds_path(given) == expected


def test_parse_requests_ties_options_to_the_value_before_them() -> None:
    requests = parse_requests(["A=meta-data/a", "--default", "x", "B=dynamic/d", "--key=k", "--default=",
                               "C=meta-data/c"], SHELL)
    assert [(r.name, r.path, r.key, r.default) for r in requests] == [
        ("A", "meta-data/a", None, "x"), ("B", "dynamic/d", "k", ""), ("C", "meta-data/c", None, None)]
    with pytest.raises(UsageError) as caught:
        parse_requests(["A=meta-data/a", "--key", "k", "--key", "j"], JSON)
    assert caught.value.problems == ["A=meta-data/a: --key given twice"]


def test_render_forms() -> None:
    requests = [Request("A=x", "A", "meta-data/a"), Request("B=x", "B", "meta-data/b")]
    assert render(requests, [b"1", "it's"], SHELL) == b"A='1'\nB='it'\\''s'\n"
    assert json.loads(render(requests, [b"1", "\u2603"], JSON)) == {"A": "1", "B": "\u2603"}
    unnamed = [Request("meta-data/a", None, "meta-data/a")]
    assert render(unnamed, [b"\xff\x00"], RAW) == b"\xff\x00"
    assert render(unnamed, [b"\xff\x00"], LINES) == b"\xff\x00\n"
    with pytest.raises(GetError) as caught:
        render(requests, ["a\0b", b"\xff"], SHELL)
    assert caught.value.problems == [
        "A: /latest/meta-data/a: contains a NUL byte, which no shell variable can hold",
        "B: /latest/meta-data/b: not UTF-8 text (gzip perhaps): get it alone, as raw bytes",
    ]
    assert caught.value.exit_code == 1


def test_same_values_as_a_declaration(cli: Callable, emulator: Emulator, tmp_path: Path) -> None:
    """get reads path, key and default exactly as the declaration does: compare with `plan`."""
    specs: Dict[str, dict] = {
        "ID": {"path": "meta-data/instance-id"},
        "REGION": {"path": "dynamic/instance-identity/document", "key": "region"},
        "PENDING": {"path": "dynamic/instance-identity/document", "key": "pendingTime"},
        "ENVIRONMENT": {"path": "meta-data/tags/instance/Missing", "default": "dev"},
        "NAME": {"path": "meta-data/tags/instance/Name", "default": "unused"},
    }
    decl = tmp_path / "decl.json"
    decl.write_text(json.dumps({"values": specs, "env": [
        {"path": "/out.json", "format": "json", "vars": {n: n for n in specs}}]}))
    plan = cli("plan", str(decl), "--no-conf-dir", "--endpoint", emulator.url)
    assert plan.returncode == 0, plan.stderr
    planned = json.loads(plan.stdout.decode().split("\n", 1)[1])
    args: List[str] = []
    for name, spec in specs.items():
        args.append(f"{name}={spec['path']}")
        args += [f"--{option}={spec[option]}" for option in ("key", "default") if option in spec]
    got = cli("get", "--json", *args, "--endpoint", emulator.url)
    assert got.returncode == 0, got.stderr
    assert json.loads(got.stdout) == planned


@pytest.mark.parametrize("shell", [pytest.param(s, marks=requires(shutil.which(s) is not None, f"{s} is not installed"))
                                   for s in SHELLS])
def test_the_documented_script_runs_as_written(emulator: Emulator, tmp_path: Path, shell: str) -> None:
    page = (REPO / "docs/scripts.md").read_text()
    script = next(block for block in re.findall(r"```sh\n(.*?)```", page, flags=re.S)
                  if "values=$(cc-imds get --shell" in block and 'eval "$values"' in block)
    (tmp_path / "cc-imds").write_text(f'#!/bin/sh\nPYTHONPATH={REPO} exec {sys.executable} -m cc_imds "$@"\n')
    (tmp_path / "cc-imds").chmod(0o755)
    result = subprocess.run([shell, "-c", script], capture_output=True, env={
        **os.environ, "PATH": f"{tmp_path}:/usr/bin:/bin", "AWS_EC2_METADATA_SERVICE_ENDPOINT": emulator.url},
        timeout=HUNG_AFTER)
    assert result.returncode == 0, result.stderr
    environment = emulator.tree.lookup("meta-data/tags/instance/Environment") or b"dev"
    assert result.stdout.decode() == f"{ID} in eu-west-1, account 123456789012, {environment.decode()}\n"


def test_unwritable_stdout_is_exit_4_without_a_traceback(emulator: Emulator) -> None:
    command = [sys.executable, "-m", "cc_imds", "get", "--shell", "ID=meta-data/instance-id",
               "--endpoint", emulator.url]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with open("/dev/full", "wb") as full:
        result = subprocess.run(command, stdout=full, stderr=subprocess.PIPE, env=env, timeout=HUNG_AFTER)
    assert result.returncode == 4
    assert result.stderr == b"cc-imds: standard output: cannot write: No space left on device\n"
    closed = subprocess.run(["sh", "-c", '"$@" >&-', "sh", *command], stderr=subprocess.PIPE, env=env,
                            timeout=HUNG_AFTER)
    assert (closed.returncode, closed.stderr) == (4, b"cc-imds: standard output: cannot write: standard output is "
                                                     b"closed\n")


def test_output_larger_than_a_pipe_arrives_whole_before_the_quick_exit(
        cli: Callable, make_emulator: Callable[..., Emulator]) -> None:
    """`get` ends with os._exit (cli.run skips the interpreter's teardown): what it printed must
    all be flushed first, here several times what a pipe holds, written while the reader reads."""
    values = {f"T{i}": chr(ord("a") + i) * 150_000 for i in range(6)}
    emulator = make_emulator(MetadataTree({f"meta-data/tags/instance/{k}": v.encode() for k, v in values.items()}))
    names = [f"{k}=meta-data/tags/instance/{k}" for k in values]
    result = cli("get", "--json", *names, "--endpoint", emulator.url)
    assert (result.returncode, result.stderr) == (0, b"")
    assert json.loads(result.stdout) == values
    for shell in shells():
        result = cli("get", "--shell", *names, "--endpoint", emulator.url)
        assert eval_in(shell, result.stdout, list(values)) == list(values.values())


def test_a_failing_value_is_named_when_alone_too(cli: Callable, make_emulator: Callable[..., Emulator]) -> None:
    emulator = make_emulator(MetadataTree({"meta-data/big": b"x" * (5 << 20)}))
    result = cli("get", "--shell", "BIG=meta-data/big", "--endpoint", emulator.url)
    assert (result.returncode, result.stdout) == (3, b"")
    assert result.stderr.startswith(b"cc-imds: BIG: /latest/meta-data/big: ") and len(result.stderr.splitlines()) == 1


# -- the command line, read without argparse -------------------------------------------------------
# Pieces of `get` command lines: every option, its values (good and bad), value tokens, and what
# argparse treats specially (help, `--`, abbreviations, a negative number, a lone `-`).
ARGUMENT_PIECES = [
    "--shell", "--json", "--lines", "--endpoint", "--endpoint=http://127.0.0.1:1338", "http://127.0.0.1:1338",
    "http://[::1]:80", "auto", "ipv6", "http://x y", "--imdsv1", "--imdsv1=fallback", "fallback", "never", "always",
    "--timeout", "--deadline=5", "1", "0.5", "0", "-1", "nan", "inf", "1e3", " 2 ", "--key", "--key=a", "k",
    "--default", "--default=", "", "-", "--", "-h", "--help", "--sh", "--debug", "--version", "-x", "--shell=yes",
    "meta-data/instance-id", "ID=meta-data/instance-id", "R=/latest/meta-data/placement/region",
    "tags/instance/a=b", "PATH=meta-data/x", "1X=meta-data/x", "user-data",
]


def argparse_reading(argv: List[str]) -> object:
    """What main() makes of a `get` command line through argparse: the fields cmd_get reads,
    or "usage" when argparse refuses it (exit 2) or prints help."""
    import contextlib
    import io

    from cc_imds.cli import build_parser

    with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
        try:
            args, rest = build_parser().parse_known_args(argv)
        except SystemExit:
            return "usage"
    return {"output": args.output, "endpoint": args.endpoint, "imdsv1": args.imdsv1, "timeout": args.timeout,
            "deadline": args.deadline, "values": rest}


@settings(max_examples=examples(1500), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.sampled_from(ARGUMENT_PIECES), max_size=7))
def test_a_command_line_read_by_hand_reads_as_argparse_reads_it(tokens: List[str]) -> None:
    """Either command_line declines (argparse then reads the command line, with its messages),
    or it reads exactly what argparse reads."""
    from cc_imds.tools.get import command_line

    argv = ["get", *tokens]
    found = command_line(argv)
    if found is not None:
        assert found == argparse_reading(argv)


def test_plain_command_lines_are_read_by_hand() -> None:
    """What scripts write does not need argparse (the cold-start cost it avoids)."""
    from cc_imds.tools.get import command_line

    for argv in (["get", "meta-data/instance-id"],
                 ["get", "--shell", "ID=meta-data/instance-id", "ENV=meta-data/tags/instance/Env", "--default", "dev",
                  "--endpoint", "http://127.0.0.1:1338", "--timeout", "1", "--deadline=10"],
                 ["get", "--json", "DOC=dynamic/instance-identity/document", "--key", "region"]):
        assert command_line(argv) == argparse_reading(argv)
