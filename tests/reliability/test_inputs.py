"""Hostile and broken input files, end to end through the CLI: each is refused at once with
one line naming the file, within bounded time and memory, and never writes anything."""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List

import pytest
import yaml

from cc_imds.testing.emulator import Emulator
from tests.conftest import REPO
from tests.hostile import ALIAS_BOMB, cc_imds_limited, gzip_bomb, nested
from tests.reliability.conftest import Scenario, declaration, digest

Record = Callable[..., None]
TIMEOUT = 120  # far beyond any bounded run; one that blocks or expands without end fails here


@dataclass
class Limited:
    code: int
    stdout: str
    stderr: str
    seconds: float
    peak_mib: int

    def figures(self) -> Dict[str, Any]:
        return {"exit": self.code, "seconds": round(self.seconds, 2), "peak MiB": self.peak_mib}


def run_limited(*args: str, stdout: str = "") -> Limited:
    """`cc-imds ARGS` in a process limited in memory and to TIMEOUT, with its peak RSS."""
    # As users run it: standard output block-buffered, so a failed write shows at the last flush.
    env = {**{k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}, "PYTHONPATH": str(REPO)}
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err, \
            tempfile.NamedTemporaryFile() as peak, open(stdout or os.devnull, "wb") as sink:
        started = time.monotonic()
        try:
            process = subprocess.run(cc_imds_limited(*args, peak_file=peak.name), stdout=sink if stdout else out,
                                     stderr=err, stdin=subprocess.DEVNULL, env=env, timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"cc-imds {' '.join(args)} was killed after {TIMEOUT}s") from None
        seconds = time.monotonic() - started
        out.seek(0)
        err.seek(0)
        run = Limited(process.returncode, out.read().decode(errors="replace"), err.read().decode(errors="replace"),
                      seconds, int(peak.read() or 0) // 1024)
    assert "Traceback" not in run.stderr and "internal error" not in run.stderr, run.stderr
    return run


def cloud_config(doc: Dict[str, Any]) -> str:
    return "#cloud-config\n" + yaml.safe_dump({"imds": doc})


@pytest.fixture
def conf_d(tmp_path: Path) -> Path:
    path = tmp_path / "conf.d"
    path.mkdir()
    return path


def apply_with(scenario: Scenario, emulator: Emulator, conf_d: Path) -> Limited:
    decl = scenario.write_declaration(declaration(scenario.out))
    return run_limited("apply", str(decl), "--endpoint", emulator.url, "--conf-dir", str(conf_d))


# -- declarations ---------------------------------------------------------------------------------
def test_yaml_alias_bomb(scenario: Scenario, record: Record, conf_d: Path) -> None:
    good = scenario.good_outputs()
    (conf_d / "50-bomb.yaml").write_text(ALIAS_BOMB.replace("i: &i", "values: &i"))
    run = apply_with(scenario, scenario.emulator(), conf_d)
    assert run.code == 1
    assert run.stderr == f"cc-imds: {conf_d}/50-bomb.yaml: line 5, column 12: more than 20000 nodes once aliases " \
                         "are expanded\n"
    assert digest(scenario.out) == good
    record("yaml-alias-bomb", "refused at once, files untouched", **run.figures())


def test_yaml_deep_nesting(scenario: Scenario, record: Record, conf_d: Path) -> None:
    good = scenario.good_outputs()
    (conf_d / "50-deep.yaml").write_text(nested(20_000).replace("x:", "values:"))
    run = apply_with(scenario, scenario.emulator(), conf_d)
    assert (run.code, run.stderr) == (1, f"cc-imds: {conf_d}/50-deep.yaml: line 1, column 72: nested deeper than "
                                         "64 levels\n")
    assert digest(scenario.out) == good
    record("yaml-deep-nesting", "refused naming the limit, files untouched", **run.figures())


def test_yaml_boolean_keys(scenario: Scenario, record: Record) -> None:
    text = cloud_config(declaration(scenario.out)).replace("INSTANCE_ID:", "ON:").replace("AWS_REGION:", "NO:")
    decl = scenario.tmp / "bool.yaml"
    decl.write_text(text)
    run = run_limited("validate", str(decl))
    hint = "not a string: quote it (YAML 1.1 reads unquoted yes, no, on, off, true and false as booleans)"
    assert run.code == 1
    assert run.stderr.splitlines() == [f"{decl}: imds.env[0].vars: mapping key True is a boolean, {hint}",
                                       f"{decl}: imds.env[1].vars: mapping key False is a boolean, {hint}"]
    record("yaml-boolean-keys", "each key located, asked to be quoted", **run.figures())


@pytest.mark.parametrize(("key", "value"), [("deadline", ".nan"), ("timeout", ".inf"), ("concurrency", "-1"),
                                            ("token_ttl", "0"), ("timeout", "-.nan")])
def test_non_finite_settings(scenario: Scenario, record: Record, conf_d: Path, key: str, value: str) -> None:
    good = scenario.good_outputs()
    (conf_d / "50-settings.yaml").write_text(f"{key}: {value}\n")
    run = apply_with(scenario, scenario.emulator(), conf_d)
    assert run.code == 1 and run.stderr.startswith(f"cc-imds: {conf_d}/50-settings.yaml: {key}: "), run.stderr
    assert len(run.stderr.splitlines()) <= 2
    assert digest(scenario.out) == good
    if value == ".nan":
        assert run.stderr == f"cc-imds: {conf_d}/50-settings.yaml: deadline: nan is not a finite number from 0.1 " \
                             "to 3600\n"
        record("non-finite-settings", "each refused naming the key, files untouched", **run.figures())


def test_oversized_declaration(scenario: Scenario, record: Record) -> None:
    huge = scenario.tmp / "huge.yaml"
    with open(huge, "wb") as handle:
        handle.truncate(1 << 30)
    good = scenario.good_outputs()
    runs = [run_limited("validate", str(huge)),
            run_limited("apply", str(huge), "--endpoint", scenario.emulator().url, "--no-conf-dir")]
    assert [(r.code, r.stderr) for r in runs] == [
        (1, f"{huge}: 1073741824 bytes exceeds the 1048576-byte limit\n"),
        (1, f"cc-imds: {huge}: 1073741824 bytes exceeds the 1048576-byte limit\n")]
    assert digest(scenario.out) == good
    record("oversized-declaration", "refused by size, files untouched", **runs[-1].figures())


def test_special_files(scenario: Scenario, record: Record, conf_d: Path) -> None:
    fifo = scenario.tmp / "fifo.yaml"
    os.mkfifo(fifo)
    os.mkfifo(conf_d / "50-fifo.yaml")
    decl = scenario.write_declaration(declaration(scenario.out))
    runs: List[Limited] = []
    for special in (str(fifo), "/dev/zero"):
        kind = "a FIFO" if special == str(fifo) else "a character device"
        for args in (("validate", special), ("plan", str(decl), "--no-conf-dir", "--metadata", special),
                     ("scan", special), ("enable-module", "--print", "--cloud-cfg", special),
                     ("emulate", "--port", "0", "--tree", special)):
            run = run_limited(*args)
            assert (run.code, run.stderr.splitlines()) == (1, [
                f"{'' if args[0] == 'validate' else 'cc-imds: '}{special}: cannot read: {kind}, not a regular file"])
            runs.append(run)
    run = run_limited("plan", str(decl), "--conf-dir", str(conf_d), "--metadata",
                      str(REPO / "cc_imds/data/default-tree.json"))
    assert (run.code, run.stderr) == (1, f"cc-imds: {conf_d}/50-fifo.yaml: refused: not a regular file\n")
    runs.append(run)
    slowest = max(runs, key=lambda r: r.seconds)
    record("special-files", f"{len(runs)} runs refused at once, none blocked", **slowest.figures())


# -- scan ---------------------------------------------------------------------------------------
def test_scan_gzip_bomb(tmp_path: Path, record: Record) -> None:
    bomb = tmp_path / "user-data.gz"
    bomb.write_bytes(gzip_bomb(1024))
    run = run_limited("scan", str(bomb))
    assert (run.code, run.stderr) == (1, f"cc-imds: {bomb}: decodes to more than 16777216 bytes (a decompression "
                                         "bomb?)\n")
    assert run.peak_mib < 200
    record("scan-gzip-bomb", "refused at the budget", **run.figures(), **{"input bytes": bomb.stat().st_size})


# -- corrupt input --------------------------------------------------------------------------------
def test_corrupt_inputs(tmp_path: Path, record: Record) -> None:
    corrupt = tmp_path / "corrupt.gz"
    corrupt.write_bytes(b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03" + b"\xff" * 32)
    odd = tmp_path / "odd.yaml"
    odd.write_text("#cloud-config\nwrite_files: 5\nruncmd: [curl http://169.254.169.254/latest/meta-data/mac]\n")
    scan = run_limited("scan", str(corrupt), str(odd))
    assert scan.code == 1
    assert scan.stderr == f"cc-imds: {corrupt}: corrupt gzip data (Error -3 while decompressing data: invalid block " \
                          "type)\n"
    assert scan.stdout.split()[:4] == [f"{odd}:3", "IMDSv1", "curl", "meta-data/mac"]
    runs = [scan]

    decl = tmp_path / "decl.yaml"
    decl.write_text(cloud_config({"values": {"iid": "meta-data/instance-id"},
                                  "env": [{"path": "/etc/iid.env", "format": "shell", "vars": {"IID": "iid"}}]}))
    trees = {'{"metadata": {"paths": 5}}': "metadata.paths: expected a JSON object, got int",
             '{"metadata": {"paths": {"u": "/latest/user-data"}}, "userdata": {"paths": {"u": "/latest/user-data"}, '
             '"values": {"u": "abc"}}}': "userdata.values.u: invalid base64: Incorrect padding",
             "[" * 100_000: "refused: a JSON document nested deeper than 64 levels"}
    for index, (text, message) in enumerate(trees.items()):
        tree = tmp_path / f"tree-{index}.json"
        tree.write_text(text)
        run = run_limited("plan", str(decl), "--no-conf-dir", "--metadata", str(tree))
        assert (run.code, run.stderr) == (1, f"cc-imds: {tree}: {message}\n")
        runs.append(run)

    root = tmp_path / "image"
    (root / "etc/cloud").mkdir(parents=True)
    configs = {b"cloud_config_modules: [\n": "invalid YAML: line 2, column 1: did not find expected node content",
               b"cloud_config_modules: [caf\xe9]\n": "not UTF-8 text (byte 26)",
               b"cloud_config_modules: runcmd\n": "cloud_config_modules: expected a list, got str"}
    for content, message in {**configs, None: "cannot read: No such file or directory"}.items():
        cfg = root / "etc/cloud/cloud.cfg"
        if content is None:
            cfg.unlink()
        else:
            cfg.write_bytes(content)
        run = run_limited("enable-module", "--root", str(root))
        assert (run.code, run.stderr) == (1, f"cc-imds: {cfg}: {message}\n")
        assert {p.name for p in root.rglob("*")} == {"cloud", "etc"} | ({"cloud.cfg"} if content else set())
        runs.append(run)
    slowest = max(runs, key=lambda r: r.seconds)
    record("corrupt-inputs", f"{len(runs)} inputs: one line each, exit 1, nothing written", **slowest.figures())


def test_stdout_full(tmp_path: Path, record: Record) -> None:
    decl = tmp_path / "decl.yaml"
    decl.write_text(cloud_config({"values": {"iid": "meta-data/instance-id"},
                                  "env": [{"path": "/etc/iid.env", "format": "shell", "vars": {"IID": "iid"}}]}))
    script = tmp_path / "boot.sh"
    script.write_text("curl http://169.254.169.254/latest/meta-data/instance-id\n" * 2000)  # beyond any buffer
    cfg = tmp_path / "cloud.cfg"
    cfg.write_text("cloud_config_modules: [runcmd]\n")
    tree = str(REPO / "cc_imds/data/default-tree.json")
    commands = [("validate", str(decl)), ("plan", str(decl), "--no-conf-dir", "--metadata", tree),
                ("scan", str(script)), ("scan", "--json", str(script)),
                ("enable-module", "--print", "--cloud-cfg", str(cfg)), ("--help",), ("--version",),
                ("emulate", "--port", "0"), ("demo", "--root", str(tmp_path / "demo"))]
    runs = []
    for args in commands:
        run = run_limited(*args, stdout="/dev/full")
        assert (run.code, run.stderr) == (4, "cc-imds: standard output: cannot write: No space left on device\n"), \
            args
        runs.append(run)
    slowest = max(runs, key=lambda r: r.seconds)
    record("stdout-full", f"{len(runs)} commands: exit 4, one line", **slowest.figures())
