"""Every subcommand, fed bad input, exits with its documented code and never prints a
traceback: generated from a table, run as real processes.

The subcommands are enumerated from `build_parser()`: a new subcommand fails
`test_every_subcommand_has_cases` until it has an entry in COMMANDS. To add one, give it
an `ok` invocation (it must print to standard output and return), the slots where a
file or directory argument goes (`{bad}`), and any `extra` cases. Placeholders: {bad},
{decl} (a valid declaration), {tree} (a metadata tree), {cfg} (a cloud.cfg), {script}
(a script using IMDSv1), {tmp} (a fresh directory), {endpoint} (the emulator's URL).
"""

from __future__ import annotations

import argparse
import os
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple

import pytest

from cc_imds.cli import build_parser
from cc_imds.imds.tree import load_tree
from cc_imds.testing.emulator import Emulator
from tests.conftest import REPO
from tests.hostile import ALIAS_BOMB, cc_imds_limited, gzip_bomb, nested

pytestmark = pytest.mark.slow  # some three hundred processes: the full runs only

DOCUMENTED = {0, 1, 2, 3, 4}  # docs/command-line.md, "Exit status"; 70, an internal error, is never right
TIMEOUT = 120  # seconds for one case: every one takes well under one, even on a loaded machine

DECLARATION = """#cloud-config
imds:
  values: {iid: meta-data/instance-id}
  env: [{path: /etc/cc-imds/iid.env, format: systemd, vars: {IID: iid}}]
"""
SCRIPT = "#!/bin/sh\nIID=$(curl -s http://169.254.169.254/latest/meta-data/instance-id)\n"
CLOUD_CFG = "cloud_config_modules:\n - write_files\n - [runcmd, always]\n"

# -- bad inputs: the content of a file, or how to make the path ------------------------------
COMMON = ("missing", "directory", "fifo", "device", "binary", "not-utf8", "empty", "huge", "unreadable",
          "symlink-loop")
YAML = ("malformed-yaml", "alias-bomb", "deep-yaml", "boolean-keys", "nan-setting")
JSON = ("malformed-json", "deep-json", "json-not-an-object", "aemm-wrong-shape")
GZIP = ("gzip-bomb", "corrupt-gzip")

CONTENT: Dict[str, bytes] = {
    "binary": bytes(range(256)) * 8,
    "not-utf8": b"#cloud-config\nimds:\n  values: {caf\xe9: meta-data/x}\n",
    "empty": b"",
    "malformed-yaml": b"#cloud-config\nimds:\n  values: {a: [\n",
    "alias-bomb": ("#cloud-config\n" + ALIAS_BOMB + "imds: {values: {x: *i}}\n").encode(),
    "deep-yaml": ("#cloud-config\n" + nested(20_000)).encode(),
    "boolean-keys": DECLARATION.replace("{IID: iid}", "{ON: iid}").encode(),
    "nan-setting": DECLARATION.replace("imds:\n", "imds:\n  deadline: .nan\n").encode(),
    "malformed-json": b'{"meta-data/instance-id": ',
    "deep-json": b"[" * 100_000 + b"]" * 100_000,
    "json-not-an-object": b"[1, 2]",
    "aemm-wrong-shape": b'{"metadata": {"paths": {"a": 5}, "values": {"a": "x"}}}',
    "gzip-bomb": gzip_bomb(64),
    "corrupt-gzip": b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03" + b"\xff" * 32,
}


def make_bad(kind: str, tmp: Path, directory: bool) -> str:
    """Create the bad input `kind` under `tmp`; `directory` says the slot wants a directory."""
    path = tmp / f"bad-{kind}"
    if kind == "missing":
        return str(path)
    if kind == "device":
        return "/dev/zero"
    if kind == "directory":
        path.mkdir()
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "symlink-loop":
        path.symlink_to(path.name)
    elif kind == "huge":
        with open(path, "wb") as handle:
            handle.truncate(2 << 30)  # sparse: beyond every limit, and never read
    elif kind == "unreadable":
        if directory:
            path.mkdir()
        else:
            path.write_text(DECLARATION)
        path.chmod(0)
    else:
        path.write_bytes(CONTENT[kind])
    return str(path)


@dataclass(frozen=True)
class Slot:
    """Where a bad file or directory goes, and the exit code expected for each kind."""

    args: Tuple[str, ...]
    kinds: Tuple[str, ...]
    code: int  # for every kind not in `codes`
    codes: Dict[str, int] = field(default_factory=dict)
    directory: bool = False  # the argument names a directory: `unreadable` is a mode-000 directory


@dataclass(frozen=True)
class Case:
    args: Tuple[str, ...]
    code: int
    says: str = ""  # stderr contains this (placeholders allowed)
    stdout: str = "pipe"  # or "/dev/full"


@dataclass(frozen=True)
class Command:
    ok: Tuple[str, ...]  # a successful invocation that prints to standard output
    slots: Tuple[Slot, ...] = ()
    extra: Tuple[Case, ...] = ()
    required: bool = False  # has required arguments: calling it bare is wrong usage
    prints: bool = True  # `ok` writes to standard output (watch only logs, to standard error)


FULL = "cc-imds: standard output: cannot write: No space left on device\n"
FILE_FAILS = {"directory": 0}  # validate: a directory is a drop-in directory, here an empty one
DIR_OK = {"missing": 0, "directory": 0}  # a missing or empty directory is created, or holds nothing
NUMBERS = ("nan", "inf", "-inf", "-1", "1e400", "abc", "")

COMMANDS: Dict[str, Command] = {
    "validate": Command(
        ok=("validate", "{decl}"), required=True,
        slots=(Slot(("validate", "{bad}"), COMMON + YAML, 1, FILE_FAILS),),
    ),
    "plan": Command(
        ok=("plan", "{decl}", "--no-conf-dir", "--metadata", "{tree}"),
        slots=(
            Slot(("plan", "{bad}", "--no-conf-dir", "--metadata", "{tree}"), COMMON + YAML, 1),
            Slot(("plan", "{decl}", "--no-conf-dir", "--metadata", "{bad}"), COMMON + JSON, 1),
            Slot(("plan", "{decl}", "--conf-dir", "{bad}", "--metadata", "{tree}"), COMMON, 1, DIR_OK,
                 directory=True),
        ),
        extra=tuple(Case(("plan", "{decl}", "--endpoint", e), 2, "argument --endpoint")
                    for e in ("http://[::1", "https://x", "http://h:99999", "ftp://h", "")),
    ),
    "apply": Command(
        ok=("apply", "{decl}", "--no-conf-dir", "--endpoint", "{endpoint}", "--root", "{tmp}/root"),
        slots=(
            Slot(("apply", "{bad}", "--no-conf-dir", "--endpoint", "{endpoint}", "--root", "{tmp}/root"),
                 COMMON + YAML, 1),
            Slot(("apply", "{decl}", "--no-conf-dir", "--endpoint", "{endpoint}", "--root", "{bad}"), COMMON, 4,
                 DIR_OK, directory=True),
        ),
        extra=(Case(("apply", "{decl}", "--no-conf-dir", "--endpoint", "http://h:0x"), 2, "argument --endpoint"),),
    ),
    "get": Command(
        ok=("get", "meta-data/instance-id", "--endpoint", "{endpoint}"), required=True,
        extra=(
            Case(("get", "meta-data/nope", "--endpoint", "{endpoint}"), 1, "not found (404)"),
            *(Case(("get", "meta-data/instance-id", option, n), 2, f"argument {option}")
              for option in ("--timeout", "--deadline") for n in (*NUMBERS, "0")),
            *(Case(("get", "meta-data/instance-id", "--endpoint", e), 2, "argument --endpoint")
              for e in ("http://[::1", "https://x", "http://h:99999", "")),
            Case(("get", "--shell", "1X=meta-data/instance-id", "--endpoint", "{endpoint}"), 2),
        ),
    ),
    "emulate": Command(
        ok=("emulate", "--port", "0"),
        slots=(Slot(("emulate", "--port", "0", "--tree", "{bad}"), COMMON + JSON, 1),),
        extra=(
            *(Case(("emulate", "--port", n), 2, "argument --port") for n in (*NUMBERS, "-1", "65536", "1.5")),
            *(Case(("emulate", "--latency", n, "--port", "0"), 2, "argument --latency") for n in NUMBERS),
            Case(("emulate", "--mode", "sometimes"), 2, "argument --mode"),
            Case(("emulate", "--host", "no-such-host.invalid", "--port", "0"), 1, "cannot listen on"),
        ),
    ),
    "enable-module": Command(
        ok=("enable-module", "--print", "--root", "/", "--cloud-cfg", "{cfg}"),
        slots=(
            Slot(("enable-module", "--print", "--root", "/", "--cloud-cfg", "{bad}"), COMMON + YAML, 1,
                 {"empty": 0, "boolean-keys": 0, "nan-setting": 0}),
            Slot(("enable-module", "--check", "--root", "/", "--cloud-cfg", "{bad}"), COMMON + YAML, 1),
            Slot(("enable-module", "--root", "{bad}"), COMMON, 1, directory=True),
            Slot(("enable-module", "--remove", "--root", "{bad}"), COMMON, 4, DIR_OK, directory=True),
        ),
    ),
    "scan": Command(
        ok=("scan", "{script}"), required=True,
        slots=(Slot(("scan", "{bad}"), COMMON + YAML + GZIP, 1,
                    {"directory": 0, "binary": 0, "not-utf8": 0, "empty": 0, "malformed-yaml": 0,
                     "boolean-keys": 0, "nan-setting": 0}),),
    ),
    "watch": Command(
        # A declaration that needs no watcher: watch says so and ends, as at a boot without one.
        ok=("watch", "{decl}", "--no-conf-dir", "--endpoint", "{endpoint}", "--lock", "{tmp}/lock"), prints=False,
        slots=(
            Slot(("watch", "{bad}", "--no-conf-dir", "--endpoint", "{endpoint}", "--lock", "{tmp}/lock"),
                 COMMON + YAML, 1),
            Slot(("watch", "{decl}", "--conf-dir", "{bad}", "--endpoint", "{endpoint}", "--lock", "{tmp}/lock"),
                 COMMON, 1, DIR_OK, directory=True),
        ),
        extra=tuple(Case(("watch", "{decl}", "--no-conf-dir", "--endpoint", e), 2, "argument --endpoint")
                    for e in ("http://[::1", "https://x", "http://h:99999", "ftp://h", "")),
    ),
    "status": Command(ok=("status",)),
    "demo": Command(
        ok=("demo", "--root", "{tmp}/demo"),
        slots=(Slot(("demo", "--root", "{bad}"), COMMON, 4, {"missing": 0, "directory": 0}, directory=True),),
    ),
}


def subcommands() -> List[str]:
    parser = build_parser()
    actions = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return sorted(name for action in actions for name in action.choices)


def cases() -> Iterator[object]:
    for name in subcommands():
        command = COMMANDS.get(name)
        if command is None:
            continue  # test_every_subcommand_has_cases reports it
        yield pytest.param(Case((*command.ok, "--no-such-option"), 2, "--no-such-option"), None,
                           id=f"{name}-unknown-flag")
        yield pytest.param(Case((name, "--help"), 4, FULL, "/dev/full"), None, id=f"{name}-help-to-full-device")
        if command.prints:
            yield pytest.param(Case(command.ok, 4, FULL, "/dev/full"), None, id=f"{name}-output-to-full-device")
        if command.required:
            yield pytest.param(Case((name,), 2), None, id=f"{name}-bare")
        for index, slot in enumerate(command.slots):
            for kind in slot.kinds:
                code = slot.codes.get(kind, slot.code)
                yield pytest.param(Case(slot.args, code), (kind, slot.directory), id=f"{name}-{index}-{kind}")
        for index, case in enumerate(command.extra):
            yield pytest.param(case, None, id=f"{name}-extra-{index}-{'_'.join(case.args[1:3])}")


def test_every_subcommand_has_cases() -> None:
    assert sorted(COMMANDS) == subcommands(), "give every subcommand of build_parser() an entry in COMMANDS"


def test_cases_expect_documented_codes() -> None:
    for name, command in COMMANDS.items():
        expected = [s.code for s in command.slots] + [c for s in command.slots for c in s.codes.values()]
        assert set(expected + [c.code for c in command.extra]) <= DOCUMENTED, name


@dataclass
class Workspace:
    tmp: Path
    endpoint: str

    def fill(self, args: Tuple[str, ...], bad: Optional[str]) -> List[str]:
        files = {"decl": DECLARATION, "tree": (REPO / "cc_imds/data/default-tree.json").read_text(),
                 "cfg": CLOUD_CFG, "script": SCRIPT}
        values = {"tmp": str(self.tmp), "bad": bad or "", "endpoint": self.endpoint}
        for name, text in files.items():
            path = self.tmp / f"good-{name}"
            path.write_text(text)
            values[name] = str(path)
        return [a.format(**values) for a in args]


def run(args: List[str], stdout: str, run_dir: Path) -> subprocess.CompletedProcess:
    # As users run it: standard output block-buffered, so a failed write shows at the last flush.
    # Each case has its own run-time directory: watchers running at once would share its lock.
    env = {**{k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}, "PYTHONPATH": str(REPO),
           "CC_IMDS_RUN_DIR": str(run_dir)}
    # As root, only dropping these capabilities makes a mode-000 file unreadable.
    prefix = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--"] if os.geteuid() == 0 else []
    command = [*prefix, *cc_imds_limited(*args)]
    with open(os.devnull if stdout == "pipe" else stdout, "wb") as sink:
        try:
            return subprocess.run(
                command, stdout=subprocess.PIPE if stdout == "pipe" else sink, stderr=subprocess.PIPE,
                stdin=subprocess.DEVNULL, env=env, timeout=TIMEOUT,
            )
        except subprocess.TimeoutExpired:  # blocked on a FIFO, or expanding without end: this case fails
            return subprocess.CompletedProcess(command, -1, b"", f"killed after {TIMEOUT}s".encode())


Outcome = Tuple[List[str], Optional[str], subprocess.CompletedProcess]


@pytest.fixture(scope="module")
def outcomes(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dict[str, Outcome]]:
    """Run every selected case at once, a few processes at a time: each is a fresh
    interpreter, mostly waiting on imports, and there are two hundred of them."""
    selected = {item.callspec.id: item.callspec.params for item in request.session.items
                if item.originalname == "test_bad_input" and hasattr(item, "callspec")}
    emulator = Emulator(load_tree()).start()
    made: List[Path] = []

    def one(case_id: str) -> Outcome:
        case: Case = selected[case_id]["case"]
        bad: Optional[Tuple[str, bool]] = selected[case_id]["bad"]
        workspace = Workspace(tmp_path_factory.mktemp("case"), emulator.url)
        made.append(workspace.tmp)
        bad_path = make_bad(bad[0], workspace.tmp, bad[1]) if bad else None
        args = workspace.fill(case.args, bad_path)
        return args, bad_path, run(args, case.stdout, workspace.tmp / "run")

    try:
        with ThreadPoolExecutor(max_workers=2 * (os.cpu_count() or 2)) as pool:
            yield dict(zip(selected, pool.map(one, selected)))
    finally:
        emulator.stop()
        for tmp in made:  # let pytest clean up what was made unreadable
            for path in tmp.rglob("*"):
                if not path.is_symlink():
                    path.chmod(0o700)


@pytest.mark.parametrize(("case", "bad"), list(cases()))
def test_bad_input(outcomes: Dict[str, Outcome], request: pytest.FixtureRequest, case: Case,
                   bad: Optional[Tuple[str, bool]]) -> None:
    args, bad_path, result = outcomes[request.node.callspec.id]
    stderr = result.stderr.decode(errors="replace")
    assert "Traceback" not in stderr and "internal error" not in stderr, stderr
    assert result.returncode == case.code, f"cc-imds {' '.join(args)}: exit {result.returncode}\n{stderr}"
    if case.says:
        assert case.says in stderr, stderr
    if bad_path and case.code in (1, 3, 4):
        assert bad_path in stderr, stderr  # the error names the file
    if case.code == 2:  # argparse's usage and error, or get's own one line per problem
        assert stderr.startswith(("usage: cc-imds", "cc-imds: ")), stderr
