"""Every code block in README.md and docs/*.md is run, compared, or visibly marked illustrative.

A block is one of (docs/development.md, "Examples in the docs"):

- a **declaration** (```yaml: cloud-config with `imds:`, a drop-in, or cloud-config whose `write_files`
  holds drop-ins): `cc-imds validate`, then `cc-imds plan --no-conf-dir --metadata` the bundled tree;
- a **shell block** (```sh): run by `sh -e` in a directory of its own, `cc-imds` being the package under
  test, against an emulator on loopback;
- a **Python block** (```python): run by pytest with the plugin loaded;
- a **transcript** (```text whose first line is `$ COMMAND`): each command is run as in a shell block
  and its output (stdout and stderr together) must be what the block shows after it; `cc-imds status`
  reports on a watcher of the page's first cloud-config declaration, started as at boot;
- a **file** (a leading comment line `# NAME`, such as `# boot.sh`): written into the directory of every
  later block of its page, which must use it;
- **illustrative**: a leading comment line `# illustrative: WHY`, WHY not empty.

Nothing here ever reaches a real IMDS: a block to run that names an IMDS address fails, every run has
AWS_EC2_METADATA_SERVICE_ENDPOINT pointing at the emulator, and the ports 1338 and 1339 written in a
block (`cc-imds emulate`'s default, and the docs' control port) are replaced by free loopback ports.
What a comparison leaves out, because it varies from run to run: the emulator's port (shown as 1338),
the block's directory (shown as nothing: `DIR/etc/x` is shown as `/etc/x`), times and durations, pids.

CC_IMDS_REGENERATE_DOCS=1 rewrites each transcript's output with what its commands print now; the
test of each transcript it rewrote fails, so such a run is never green: rerun without it.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple

import pytest
import yaml

from cc_imds.imds.tree import load_tree
from cc_imds.testing.emulator import Emulator
from tests.conftest import PACKAGE, PROCESS_SLACK, REPO, cli_env, wait_for

# RELIABILITY.md is generated from a run and holds no code block; it is checked like the others.
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
TREE = PACKAGE / "data" / "default-tree.json"
DEAD_PROXY = "http://127.0.0.1:9"  # the discard port: nothing listens there
IMDS_ADDRESSES = ("169.254.169.254", "fd00:ec2::254", "instance-data")
# A block's commands start, import and talk to a local emulator: seconds, not minutes.
BLOCK_TIMEOUT = 30 + PROCESS_SLACK
HOW_TO = ("see docs/development.md, \"Examples in the docs\": make it a declaration (#cloud-config with imds:, or "
          "a drop-in), a shell block that runs against the emulator, a transcript (```text starting with "
          "`$ COMMAND`, then its exact output), a file a later block uses (a first comment line `# NAME`), or "
          "mark it with a comment line `# illustrative: WHY` at its top, WHY saying what it needs (a real "
          "instance, dnf, systemd...)")
FILE_COMMENT = re.compile(r"^# (/?[\w./-]+\.\w+)(?:[,:] .*)?$")
ILLUSTRATIVE = re.compile(r"^(?:#|//) illustrative:(.*)$")


@dataclass(frozen=True)
class Block:
    page: Path
    line: int  # of the opening fence, 1-based
    lang: str
    text: str

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(REPO)}:{self.line}"

    def leading_comments(self) -> List[str]:
        lines = self.text.splitlines()
        first_other = next((i for i, line in enumerate(lines) if not line.startswith(("#", "//"))), len(lines))
        return lines[:first_other]

    @property
    def illustrative(self) -> Optional[str]:
        for line in self.leading_comments():
            found = ILLUSTRATIVE.match(line)
            if found:
                return found.group(1).strip()
        return None

    @property
    def file_name(self) -> Optional[str]:
        for line in self.leading_comments():
            found = FILE_COMMENT.match(line)
            if found:
                return found.group(1)
        return None

    @property
    def is_transcript(self) -> bool:
        return self.lang == "text" and self.text.startswith("$ ")


FENCE = re.compile(r"^( *)(```+|~~~+)\s*([\w+-]*)\s*$")


def blocks_of(page: Path) -> List[Block]:
    """Every fenced block, indented ones (in a list item) included, their indentation taken off."""
    found: List[Block] = []
    lines = page.read_text(encoding="utf-8").split("\n")
    index = 0
    while index < len(lines):
        opening = FENCE.match(lines[index])
        if opening:
            indent, fence, start = opening.group(1), opening.group(2), index
            index += 1
            while index < len(lines) and not lines[index].strip().startswith(fence):
                index += 1
            if index == len(lines):
                raise AssertionError(f"{page.relative_to(REPO)}:{start + 1}: a code block never closed")
            body = [line[len(indent):] if line.startswith(indent) else line for line in lines[start + 1:index]]
            found.append(Block(page, start + 1, opening.group(3), "\n".join(body) + "\n"))
        index += 1
    return found


BLOCKS = [block for page in PAGES for block in blocks_of(page)]


def later_blocks(block: Block) -> List[Block]:
    return [other for other in BLOCKS if other.page == block.page and other.line > block.line]


def used_later(block: Block) -> bool:
    name = block.file_name
    return name is not None and any(Path(name).name in other.text for other in later_blocks(block)
                                    if other.illustrative is None)


def shown_invalid(block: Block) -> bool:
    """A declaration file whose errors a later transcript shows (`cc-imds validate broken.yaml`)."""
    name = Path(block.file_name or "").name
    return any(other.is_transcript and re.search(rf"^\$ cc-imds validate .*\b{re.escape(name)}\b", other.text, re.M)
               for other in later_blocks(block))


def declaration_kind(block: Block) -> Optional[str]:
    """"cloud-config", "drop-in", "write_files" for a YAML declaration; None for any other YAML."""
    try:
        document = yaml.safe_load(block.text)
    except yaml.YAMLError:  # `cc-imds validate` says where, for a declaration
        return "cloud-config" if re.search(r"^imds:", block.text, flags=re.M) else None
    if not isinstance(document, dict):
        return None
    if "imds" in document:
        return "cloud-config"
    if {"values", "env", "files", "events"} & set(document):
        return "drop-in"
    if any(str(item.get("path", "")).startswith("/etc/cc-imds/conf.d/") for item in document.get("write_files", [])
           if isinstance(item, dict)):
        return "write_files"
    return None


def kind(block: Block) -> str:
    """What the tests do with the block; a block they cannot place fails, saying what to do."""
    if block.illustrative is not None:
        return "illustrative"
    if used_later(block):
        return "file"
    if block.is_transcript:
        return "transcript"
    if block.lang == "yaml" and declaration_kind(block):
        return "declaration"
    if block.lang == "sh":
        return "shell"
    if block.lang == "python":
        return "python"
    return "unplaced"


# -- where blocks run -----------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Sandbox:
    """A block's own directory, its earlier file blocks in it, `cc-imds` on PATH, an emulator."""

    dir: Path
    emulator: Emulator
    ports: Dict[str, str]

    def env(self) -> Dict[str, str]:
        env = cli_env({
            "PATH": f"{self.dir / '.bin'}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}",
            "HOME": str(self.dir),
            "AWS_EC2_METADATA_SERVICE_ENDPOINT": self.emulator.url,
            "CC_IMDS_CONF_DIR": str(self.dir / ".conf.d"),
            "CC_IMDS_RUN_DIR": str(self.dir / ".run" / "cc-imds"),
            "CC_IMDS_LOCK": str(self.dir / ".lock"),
            "CC_IMDS_CACHE_DIR": str(self.dir / ".validated"),
            "PYTHONUNBUFFERED": "1",  # stdout and stderr interleave as on a terminal
            # Should a block reach past loopback all the same (running a file block that curls IMDS,
            # say), curl, wget and Python's urllib go to a proxy that is not there; cc-imds ignores
            # proxies, and goes to the emulator.
            **{name: DEAD_PROXY for name in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY",
                                             "HTTPS_PROXY", "ALL_PROXY")},
            "no_proxy": "127.0.0.1,localhost,::1", "NO_PROXY": "127.0.0.1,localhost,::1",
        })
        env.pop("AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE", None)
        env.pop("AWS_EC2_METADATA_DISABLED", None)
        return env

    def script(self, text: str) -> str:
        """The block as run: its ports made free ones, /tmp/NAME made the block's own directory."""
        for shown, real in self.ports.items():
            text = re.sub(rf"(?<![\d]){shown}(?![\d])", real, text)
        return re.sub(r"/tmp/(?=[\w.-])", f"{self.dir}/tmp/", text)

    def run(self, text: str, *, from_the_docs: bool = True) -> subprocess.CompletedProcess[str]:
        """Run `text` by `sh -e`; `from_the_docs=False` for the tests' own commands, which name
        real paths and are never rewritten."""
        script = self.dir / ".block.sh"
        script.write_text(PRELUDE + (self.script(text) if from_the_docs else text))
        return subprocess.run(["sh", "-e", str(script)], cwd=self.dir, env=self.env(), stdin=subprocess.DEVNULL,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              timeout=BLOCK_TIMEOUT)

    def shown(self, output: str) -> str:
        """Actual output as the docs show it: the emulator's port as 1338, the directory left out."""
        output = output.replace(f"{self.dir}/tmp/", "/tmp/").replace(str(self.dir) + "/", "/")
        for shown, real in self.ports.items():
            output = re.sub(rf"(?<![\d]){real}(?![\d])", shown, output)
        return re.sub(rf"(?<![\d]){self.emulator.url.rsplit(':', 1)[1]}(?![\d])", "1338", output)


# Background jobs a block starts (`cc-imds emulate ... &`) are stopped when it ends (dash lists its jobs
# only to a file: in a command substitution, a subshell has none), and a line
# that starts the emulator in the background waits until it listens, as a reader waits for its
# `listening on` line.
PRELUDE = """\
trap 'jobs -p > .jobs; for job in $(cat .jobs); do kill "$job" 2>/dev/null || true; done; wait' EXIT
"""
EMULATE_IN_BACKGROUND = re.compile(r"^(cc-imds emulate\b.*)&(\s*#.*)?$", re.M)


WATCH_IN_BACKGROUND = re.compile(r"^((?:\w+=\S+ )*cc-imds watch\b.*)&(\s*#.*)?$", re.M)
WAIT = f"""\
import os, socket, sys, time
give_up = time.monotonic() + {BLOCK_TIMEOUT!r}
def ready(what):
    if what.isdigit():
        try:
            socket.create_connection(("127.0.0.1", int(what)), timeout=1).close()
        except OSError:
            return False
        return True
    return os.path.exists(what)
while not all(ready(what) for what in sys.argv[1:]):
    if time.monotonic() > give_up:
        sys.exit("never ready: " + " ".join(sys.argv[1:]))
    time.sleep(0.05)
"""


def wait_for_background(text: str) -> str:
    """A line starting the emulator in the background waits until its ports listen, one starting the
    watcher until its status file is written."""

    def emulator(match: re.Match[str]) -> str:
        ports = re.findall(r"--(?:control-)?port (\d+)", match.group(1))
        assert ports, f"give `cc-imds emulate` its --port, so that the tests can make it a free one: {match.group(0)}"
        return f"{match.group(0)}\ndocs-wait-ready {' '.join(ports)}"

    def watcher(match: re.Match[str]) -> str:
        run_dir = re.search(r"CC_IMDS_RUN_DIR=(\S+)", match.group(1))
        status = f"{run_dir.group(1) if run_dir else '$CC_IMDS_RUN_DIR'}/status.json"
        return f"{match.group(0)}\ndocs-wait-ready {status}"

    return WATCH_IN_BACKGROUND.sub(watcher, EMULATE_IN_BACKGROUND.sub(emulator, text))


# A rehearsal's declaration: outputs in the block's own directory, and one value refreshing.
MY_DECLARATION = """\
values:
  instance_id: meta-data/instance-id
  tags: {{path: meta-data/tags/instance/, refresh: 300}}
env:
  - path: {dir}/tmp/rehearsal-outputs/tags.env
    format: shell
    vars: {{INSTANCE_ID: instance_id}}
    expand: {{tags: TAG_}}
"""


@pytest.fixture
def sandbox(tmp_path: Path) -> Iterator[Sandbox]:
    bin_dir = tmp_path / ".bin"
    bin_dir.mkdir()
    # `cc-imds` is the package under test, without the current directory on sys.path.
    (bin_dir / "cc-imds").write_text(
        f"#!/bin/sh\nexec {sys.executable} -c \"import runpy, sys; del sys.path[0]; "
        f"runpy.run_module('cc_imds', run_name='__main__')\" \"$@\"\n")
    (bin_dir / "cc-imds").chmod(0o755)
    (bin_dir / "docs-wait-ready").write_text(f"#!{sys.executable}\n{WAIT}")
    (bin_dir / "docs-wait-ready").chmod(0o755)
    # Files the docs leave to the reader: their metadata tree and declarations.
    shutil.copy(TREE, tmp_path / "my-metadata.json")
    (tmp_path / "my-user-data.yaml").write_text(next(b.text for b in BLOCKS if b.lang == "yaml"))  # the README's
    (tmp_path / "my-declaration.yaml").write_text(MY_DECLARATION.format(dir=tmp_path))
    (tmp_path / "tmp").mkdir()
    with Emulator(load_tree()) as emulator:
        emulator.rotate_credentials_every(21600)  # as `cc-imds emulate` does: never expired
        yield Sandbox(tmp_path, emulator, {"1338": str(free_port()), "1339": str(free_port())})


def put_files(block: Block, sandbox: Sandbox) -> None:
    for earlier in BLOCKS:
        if earlier.page == block.page and earlier.line < block.line and kind(earlier) == "file":
            name = earlier.file_name or ""
            target = sandbox.dir / name.lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(earlier.text)


# -- the tests ------------------------------------------------------------------------------
def test_every_fence_is_found() -> None:
    """No block escapes the tests by being written in a way blocks_of does not read."""
    for page in PAGES:
        fences = [line for line in page.read_text(encoding="utf-8").splitlines()
                  if line.lstrip().startswith(("```", "~~~"))]
        assert len(fences) == 2 * len(blocks_of(page)), page


def test_the_docs_have_blocks_of_every_kind() -> None:
    kinds = {kind(block) for block in BLOCKS}
    assert {"illustrative", "file", "transcript", "declaration", "shell", "python"} <= kinds


@pytest.mark.parametrize("block", BLOCKS, ids=lambda block: block.where)
def test_every_block_is_run_or_marked(block: Block, sandbox: Sandbox) -> None:
    what = kind(block)
    if what == "unplaced":
        pytest.fail(f"{block.where}: a ```{block.lang} block the docs tests cannot run: {HOW_TO}", pytrace=False)
    if what == "illustrative":
        assert block.illustrative, f"{block.where}: `# illustrative:` without a reason: say what it needs"
        return
    if what == "file" and not (block.lang == "yaml" and declaration_kind(block) and not shown_invalid(block)):
        return  # used, and so checked, by a later block
    text = block.text
    for address in IMDS_ADDRESSES:
        assert address not in text, (f"{block.where}: names the IMDS address {address}; a block the tests run "
                                     f"never does: {HOW_TO}")
    put_files(block, sandbox)
    if what in ("declaration", "file"):  # a file here is a declaration: it validates like any other
        check_declaration(block, sandbox)
    elif what == "shell":
        result = sandbox.run(wait_for_background(text))
        assert result.returncode == 0, f"{block.where}: exit {result.returncode}:\n{result.stdout}"
    elif what == "python":
        check_python(block, sandbox)
    else:
        check_transcript(block, sandbox)


def check_declaration(block: Block, sandbox: Sandbox) -> None:
    documents: List[Tuple[str, str]] = []
    if declaration_kind(block) == "write_files":
        for item in yaml.safe_load(block.text)["write_files"]:
            if str(item["path"]).startswith("/etc/cc-imds/conf.d/"):
                documents.append((Path(item["path"]).name, item["content"]))
    else:
        documents.append(("example.yaml", block.text))
    for name, content in documents:
        (sandbox.dir / name).write_text(content)
        for command in (f"cc-imds validate {name}",
                        f"cc-imds plan {name} --no-conf-dir --metadata {TREE}"):
            result = sandbox.run(command, from_the_docs=False)
            assert result.returncode == 0, (
                f"{block.where}: a YAML declaration must validate and plan against the bundled tree "
                f"(or be marked `# illustrative: WHY`); `{command}` exited {result.returncode}:\n{result.stdout}")
    run_consumers(block, sandbox, documents)


def run_consumers(block: Block, sandbox: Sandbox, documents: List[Tuple[str, str]]) -> None:
    """The block's `runcmd` entries that read one of its outputs run after the outputs are written
    (`apply --root` into the block's directory, each output's path moved there), under `sh -u`:
    what the consumer reads must be there. Other entries (a `systemctl ...`) need the instance."""
    cloud_config = yaml.safe_load(block.text)
    root = sandbox.dir / "root"
    outputs: List[str] = []
    for _, content in documents:
        document = yaml.safe_load(content)
        declaration = document.get("imds", document)
        outputs += [str(output["path"]) for output in declaration.get("env", []) + declaration.get("files", [])]
    consumers = [entry for entry in cloud_config.get("runcmd", [])
                 if any(path in (entry if isinstance(entry, str) else " ".join(entry)) for path in outputs)]
    if not consumers:
        return
    conf_dir = root / "etc" / "cc-imds" / "conf.d"
    conf_dir.mkdir(parents=True)
    if declaration_kind(block) == "write_files":
        for name, content in documents:
            (conf_dir / name).write_text(content)
        applied = sandbox.run(f"cc-imds apply --root {root} --conf-dir {conf_dir}", from_the_docs=False)
    else:
        applied = sandbox.run(f"cc-imds apply {documents[0][0]} --root {root} --no-conf-dir", from_the_docs=False)
    assert applied.returncode == 0, f"{block.where}: applying it against the emulator failed:\n{applied.stdout}"
    for entry in consumers:
        argv = ["sh", "-c", entry] if isinstance(entry, str) else [str(arg) for arg in entry]
        if argv[0] in ("sh", "bash", "dash") and argv[1] == "-c":
            argv.insert(1, "-u")  # an unset variable is an error: the file did not define it
        for path in outputs:
            argv = [arg.replace(path, f"{root}{path}") for arg in argv]
        result = subprocess.run(argv, cwd=sandbox.dir, env=sandbox.env(), stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=BLOCK_TIMEOUT)
        assert result.returncode == 0, f"{block.where}: runcmd {entry!r} exited {result.returncode}:\n{result.stdout}"


# What the Python examples call: `run_my_script` stands for the reader's own code.
PYTHON_PRELUDE = '''
import subprocess


def run_my_script(endpoint):
    subprocess.run(["cc-imds", "get", "meta-data/instance-id", "--endpoint", endpoint],
                   check=True, capture_output=True, timeout=60)

'''


def check_python(block: Block, sandbox: Sandbox) -> None:
    (sandbox.dir / "test_example.py").write_text(PYTHON_PRELUDE + block.text)
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p",
                             "cc_imds.testing.pytest_plugin", "test_example.py"], cwd=sandbox.dir,
                            env=sandbox.env(), capture_output=True, text=True, timeout=BLOCK_TIMEOUT * 2)
    tests = len(re.findall(r"^def test_", block.text, flags=re.M))
    assert result.returncode == 0 and f"{tests} passed" in result.stdout, f"{block.where}:\n{result.stdout}"


def transcript_steps(text: str) -> List[Tuple[str, str]]:
    steps: List[Tuple[str, str]] = []
    for line in text.splitlines(keepends=True):
        if line.startswith("$ "):
            steps.append((line[2:].rstrip("\n"), ""))
        else:
            command, output = steps[-1]
            steps[-1] = (command, output + line)
    return steps


VARYING = [
    (re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z"), "<time>"),
    (re.compile(r"\b(?=\d)(?:\d+h)?(?:\d+m)?(?:\d+(?:\.\d+)?s)?(?<=[hms])(?!\w)"), "<duration>"),
    (re.compile(r"\(pid \d+\)"), "(pid <pid>)"),
]


def unvarying(text: str) -> str:
    for pattern, shown in VARYING:
        text = pattern.sub(shown, text)
    return text


def check_transcript(block: Block, sandbox: Sandbox) -> None:
    actual = ""
    watcher: Optional[subprocess.Popen[bytes]] = None
    try:
        for command, _ in transcript_steps(block.text):
            assert not command.rstrip().endswith("&"), f"{block.where}: a transcript runs no background job"
            if re.match(r"cc-imds status\b", command) and watcher is None:
                watcher = start_watcher(block, sandbox)
            output = sandbox.shown(sandbox.run(command).stdout)
            actual += f"$ {command}\n{output}"
    finally:
        if watcher is not None:
            watcher.terminate()
            assert watcher.wait(timeout=BLOCK_TIMEOUT) == 0, (sandbox.dir / ".watch.log").read_text()
    compare_transcript(block, actual)


def compare_transcript(block: Block, actual: str) -> None:
    """`actual`, what the transcript's commands printed, must be its text. With
    CC_IMDS_REGENERATE_DOCS=1 a transcript that differs is rewritten, and its test still fails:
    a run that rewrote the docs is never a passing run."""
    if os.environ.get("CC_IMDS_REGENERATE_DOCS") == "1" and actual != block.text:
        regenerate(block, actual)
        pytest.fail(f"{block.where}: rewritten: rerun without CC_IMDS_REGENERATE_DOCS", pytrace=False)
    assert unvarying(actual) == unvarying(block.text), (
        f"{block.where}: the transcript is not what its commands print (CC_IMDS_REGENERATE_DOCS=1 rewrites it)")


def start_watcher(block: Block, sandbox: Sandbox) -> subprocess.Popen[bytes]:
    """What `cc-imds status` reports on: the page's first cloud-config declaration run as at boot
    (`apply`, then the hand-off to the watcher), and `cc-imds watch` started as systemd starts it.
    Its files are written under the block's directory, and its commands are stubs that exit 0."""
    from cc_imds.declaration.build import SourceDocument, build_declaration
    from cc_imds.watch.handoff import hand_off

    source = next((other for other in BLOCKS if other.page == block.page and other.line < block.line
                   and kind(other) == "declaration" and declaration_kind(other) == "cloud-config"), None)
    assert source is not None, f"{block.where}: `cc-imds status` needs a cloud-config declaration above it on its page"
    key = yaml.safe_load(source.text)["imds"]
    for output in key.get("env", []) + key.get("files", []):
        output["path"] = f"{sandbox.dir}{output['path']}"
    commands = [output.get("on_change") for output in key.get("env", []) + key.get("files", [])]
    commands += [event.get("run") for event in key.get("events", [])]
    for command in commands:
        argv = command.get("run") if isinstance(command, dict) else command
        if argv:
            stub = Path(f"{sandbox.dir}{argv[0]}") if argv[0].startswith("/") else sandbox.dir / ".bin" / argv[0]
            stub.parent.mkdir(parents=True, exist_ok=True)
            stub.write_text("#!/bin/sh\nexit 0\n")
            stub.chmod(0o755)
            argv[0] = str(stub)
    (sandbox.dir / ".cloud-config.yaml").write_text(yaml.safe_dump({"imds": key}))
    env = sandbox.env()
    booted = subprocess.run(["cc-imds", "apply", ".cloud-config.yaml", "--no-conf-dir"], cwd=sandbox.dir, env=env,
                            capture_output=True, text=True, timeout=BLOCK_TIMEOUT)
    assert booted.returncode == 0, f"{source.where}: the boot run failed: {booted.stderr}"
    run_dir = Path(env["CC_IMDS_RUN_DIR"])
    hand_off(key, build_declaration([SourceDocument("cloud-config", "imds", key)]), run_dir)
    with open(sandbox.dir / ".watch.log", "wb") as log:
        watcher = subprocess.Popen(["cc-imds", "watch"], cwd=sandbox.dir, env=env, stdin=subprocess.DEVNULL,
                                   stdout=log, stderr=subprocess.STDOUT)
    wait_for(lambda: (run_dir / "status.json").exists() or watcher.poll() is not None,
             timeout=BLOCK_TIMEOUT, what="the watcher's status file")
    return watcher


def regenerate(block: Block, actual: str) -> None:
    text = block.page.read_text(encoding="utf-8")
    lines = text.split("\n")
    start = block.line  # the first line inside the fence, 0-based
    end = start + len(block.text.splitlines())
    lines[start:end] = actual.rstrip("\n").split("\n")
    block.page.write_text("\n".join(lines), encoding="utf-8")


def test_a_regenerated_transcript_is_rewritten_and_its_test_fails(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys.modules[__name__], "REPO", tmp_path)  # a page of its own, not the docs
    page = tmp_path / "page.md"
    page.write_text("Before.\n\n```text\n$ cc-imds version\nold\n```\n\nAfter.\n", encoding="utf-8")
    [block] = blocks_of(page)
    with pytest.raises(AssertionError, match="the transcript is not what its commands print"):
        compare_transcript(block, "$ cc-imds version\nnew\n")
    assert "old" in page.read_text(encoding="utf-8")
    monkeypatch.setenv("CC_IMDS_REGENERATE_DOCS", "1")
    with pytest.raises(pytest.fail.Exception, match="page.md:3: rewritten: rerun without CC_IMDS_REGENERATE_DOCS"):
        compare_transcript(block, "$ cc-imds version\nnew\n")
    assert page.read_text(encoding="utf-8") == "Before.\n\n```text\n$ cc-imds version\nnew\n```\n\nAfter.\n"
    [rewritten] = blocks_of(page)
    compare_transcript(rewritten, "$ cc-imds version\nnew\n")  # nothing to rewrite: it passes


def test_a_block_of_no_known_kind_fails_naming_its_place() -> None:
    page = REPO / "docs" / "new-page.md"
    block = Block(page, 12, "json", '{"a": 1}\n')
    assert kind(block) == "unplaced" and block.where == "docs/new-page.md:12"
    assert kind(Block(page, 12, "yaml", "apiVersion: v1\nkind: Pod\n")) == "unplaced"
    assert kind(Block(page, 12, "yaml", "values:\n  iid: meta-data/instance-id\n")) == "declaration"
    assert Block(page, 12, "sh", "#!/bin/sh\n# illustrative:\nreboot\n").illustrative == ""  # refused: no reason
    assert Block(page, 12, "ini", "# x.service\n# illustrative: read by systemd\n[Unit]\n").illustrative == (
        "read by systemd")
