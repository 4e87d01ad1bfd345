"""`cc-imds scan` against a corpus of scripts written in the styles people use (tests/fixtures/scan/corpus).

Each fixture says what is true of it, next to the code, in comments the scanner ignores:
- `expect: KIND PATH [; KIND PATH ...]` on a line: the accesses on that line (KIND is v1, v2,
  unknown, unread or ref, for an address that is not an access; PATH is `?` when the script
  builds it at run time); `expect-next:` says the same of the next line of code;
- `value: VAR=PATH[#KEY]`: what the script's variable VAR holds (the value at PATH, or KEY of the
  JSON document there); `value: VAR=none`: the suggestion must not set VAR.

Per file: exactly the expected findings, the gate's verdict, and for every suggested variable,
both suggestion forms (`cc-imds get --shell` and the declaration, applied) give what the
emulator serves at the annotated source: what the script itself read.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import pytest
import yaml

from cc_imds.imds.tree import MetadataTree
from cc_imds.testing.emulator import Emulator
from cc_imds.tools.scan import Finding, ScanError, ValueNames, failing, scan_paths, suggest, suggest_get
from tests.conftest import REPO
from tests.test_scan import variables_of
from tests.watch_harness import CREDS

CORPUS = REPO / "tests/fixtures/scan/corpus"
KINDS = {"v1": "IMDSv1", "v2": "IMDSv2", "unknown": "unknown", "unread": "unread", "ref": "reference"}
FILES = sorted(p.name for p in CORPUS.iterdir())
CONTAINERS = {"mime-user-data.txt"}  # findings are numbered within each part: compared without lines


def expected(name: str) -> Tuple[List[Tuple[int, str, str]], Dict[str, str]]:
    accesses: List[Tuple[int, str, str]] = []
    values: Dict[str, str] = {}
    pending: Optional[str] = None
    for number, line in enumerate((CORPUS / name).read_text().splitlines(), 1):
        value = re.search(r"# value: (\w+)=(\S+)", line)
        if value:
            values[value.group(1)] = value.group(2)
            continue
        if pending is not None and line.strip() and not line.lstrip().startswith("#"):
            accesses += [(number, *item) for item in _items(pending)]
            pending = None
        ahead = re.search(r"# expect-next: (.*)$", line)
        if ahead:
            pending = ahead.group(1)
            continue
        here = re.search(r"# expect: (.*)$", line)
        if here:
            accesses += [(number, *item) for item in _items(here.group(1))]
    return accesses, values


def _items(text: str) -> List[Tuple[str, str]]:
    items = []
    for part in text.split(";"):
        kind, path = part.split()
        items.append((KINDS[kind], path))
    return items


def shape(finding: Finding) -> Tuple[int, str, str]:
    path = finding.path or "?"
    return finding.line, finding.kind, "?" if re.search(r"[${}<>%]", path) else path


def findings_of(name: str) -> List[Finding]:
    return scan_paths([str(CORPUS / name)])


def test_the_corpus_is_large_and_says_what_it_expects() -> None:
    assert len(FILES) >= 60
    silent = [n for n in FILES if not expected(n)[0] and "IMDS" not in n and "clean" not in n
              and "comments" not in n]
    assert silent == []


@pytest.mark.parametrize("name", FILES)
def test_findings_and_verdict(name: str) -> None:
    accesses, _ = expected(name)
    found = findings_of(name)
    if name in CONTAINERS:
        assert sorted(shape(f)[1:] for f in found) == sorted(a[1:] for a in accesses)
    else:
        assert sorted(shape(f) for f in found) == sorted(accesses)
    fails = any(kind in ("IMDSv1", "unknown", "unread") for _, kind, _ in accesses)
    assert any(failing(f) for f in found) == fails
    accepted = any(kind in ("IMDSv1", "unread") for _, kind, _ in accesses)
    assert any(failing(f, accept_unknown=True) for f in found) == accepted


def test_gate_exit_status(cli: Callable) -> None:
    """The CLI's exit status is the verdict: an IMDSv2-only script passes, `unknown` fails unless
    accepted, a language not read fails, and only a file without any IMDS address is clean."""
    assert cli("scan", str(CORPUS / "sh-v2-full.sh")).returncode == 0
    assert cli("scan", str(CORPUS / "py-v2-session.py")).returncode == 0
    unknown = cli("scan", str(CORPUS / "py-boto-style-unknown.py"))
    assert unknown.returncode == 1 and b"unknown" in unknown.stdout
    assert cli("scan", "--accept-unknown", str(CORPUS / "py-boto-style-unknown.py")).returncode == 0
    unread = cli("scan", "--accept-unknown", str(CORPUS / "ruby-script.rb"))
    assert unread.returncode == 1 and b"does not read this language" in unread.stdout
    as_json = json.loads(cli("scan", "--json", "--accept-unknown", str(CORPUS / "sh-unknown-host.sh")).stdout)
    assert [(f["kind"], f["fails_gate"]) for f in as_json] == [
        ("IMDSv1", True), ("reference", False), ("unknown", False)]
    clean = cli("scan", str(CORPUS / "sh-clean.sh"))
    assert (clean.returncode, clean.stdout) == (0, b"no IMDS access found\n")
    reference = cli("scan", str(CORPUS / "sh-iptables-only.sh"))
    assert reference.returncode == 0 and b"no IMDS access found" not in reference.stdout


def test_helper_commands_say_which_is_which() -> None:
    ubuntu = findings_of("sh-ec2metadata-ubuntu.sh")[0]
    assert (ubuntu.tool, ubuntu.kind) == ("ec2metadata", "IMDSv1") and "no IMDSv2 support" in ubuntu.note
    amazon = findings_of("sh-ec2-metadata-al.sh")[0]
    assert (amazon.tool, amazon.kind) == ("ec2-metadata", "IMDSv2") and "uses IMDSv2" in amazon.note


SUGGESTING = [n for n in FILES if expected(n)[1]]


def test_every_suggestion_is_checked() -> None:
    """A file whose suggestion exports anything says what each variable holds."""
    for name in FILES:
        suggestion = suggest(findings_of(name), "/etc/x.sh", ValueNames(), (CORPUS / name).read_text())
        exported = set((suggestion.declaration.get("env") or [{}])[0].get("vars", {}))
        annotated = {v for v, source in expected(name)[1].items() if source != "none"}
        assert exported == annotated, name


def source_value(tree: MetadataTree, source: str) -> str:
    path, _, key = source.partition("#")
    body = tree.lookup(path)
    assert body is not None, source
    return str(json.loads(body)[key]) if key else body.decode()


@pytest.mark.parametrize("name", SUGGESTING)
def test_suggestions_read_what_the_script_read(
    cli: Callable, make_emulator: Callable[..., Emulator], tmp_path: Path, name: str
) -> None:
    emulator = make_emulator()  # IMDSv2 only, as on AL2023
    _, values = expected(name)
    wanted = {v: source_value(emulator.tree, s) for v, s in values.items() if s != "none"}
    refused = [v for v, s in values.items() if s == "none"]
    suggestion = suggest(findings_of(name), f"/etc/cc-imds/{Path(name).stem}.sh", ValueNames(),
                         (CORPUS / name).read_text())
    declaration = suggestion.declaration
    if not declaration["values"] and not declaration.get("credentials"):  # nothing it can give exactly: comments
        assert wanted == {} and suggestion.comments
        return

    path = tmp_path / "suggested.yaml"
    path.write_text("#cloud-config\n" + yaml.safe_dump({"imds": declaration}, sort_keys=False))
    root = tmp_path / "root"
    applied = cli("apply", str(path), "--endpoint", emulator.url, "--root", str(root), "--no-conf-dir")
    assert applied.returncode == 0, applied.stderr
    rendered = root / "etc/cc-imds" / f"{Path(name).stem}.sh"
    for output in declaration.get("credentials", []):  # the keys the script copied by hand
        served = json.loads(emulator.tree.lookup(CREDS) or b"")
        assert served["SecretAccessKey"] in (root / output["path"].lstrip("/")).read_text()
    if not rendered.exists():  # only a credentials output: no variable is set
        assert wanted == {} and "env" not in declaration
        return
    assert variables_of(rendered, list(wanted)) == wanted
    assert not_set(rendered.read_text(), refused) == refused

    command = suggest_get(declaration)
    if command is None:
        assert len(wanted) == 1
        return
    (tmp_path / "cc-imds").write_text(f'#!/bin/sh\nPYTHONPATH={REPO} exec {sys.executable} -m cc_imds "$@"\n')
    (tmp_path / "cc-imds").chmod(0o755)
    names = list(wanted)
    script = "set -e\n" + command + '\nprintf "%s\\0" "$values"\n' + "".join(f'printf "%s\\0" "${n}"\n' for n in names)
    env = {**os.environ, "PATH": f"{tmp_path}:/usr/bin:/bin", "AWS_EC2_METADATA_SERVICE_ENDPOINT": emulator.url}
    result = subprocess.run(["bash", "-c", script], capture_output=True, env=env, timeout=60)
    assert result.returncode == 0, result.stderr
    printed, *got = result.stdout.decode().split("\0")[:-1]
    assert dict(zip(names, got)) == wanted
    assert not_set(printed, refused) == refused


def not_set(shell_text: str, names: List[str]) -> List[str]:
    """The names that no line of an env file or of `get --shell` output assigns."""
    return [n for n in names if not re.search(rf"^(?:export )?{n}=", shell_text, re.M)]


def test_renamed_names_are_said_in_both_forms(cli: Callable) -> None:
    out = cli("scan", "--suggest", str(CORPUS / "sh-refused-names.sh")).stdout.decode()
    get_form, declaration_form = out.split("as a cc-imds declaration")
    for form in (get_form, declaration_form):
        for name in ("LD_PRELOAD", "PATH", "PS4"):
            assert f"# {name} is exported as IMDS_{name}: cc-imds never sets {name} from this value" in form
    assert "LD_PRELOAD=" not in get_form.replace("IMDS_LD_PRELOAD=", "")


@pytest.mark.parametrize("name, output", [
    ("sh-credentials-to-file.sh", {"path": "/etc/legacy-agent/credentials", "format": "credentials-file",
                                   "on_change": ["systemctl", "try-restart", "legacy-agent.service"]}),
    ("py-credentials-process.py", {"path": "/run/aws/credentials.json", "format": "process", "role": "app-server"}),
])
def test_a_script_copying_keys_into_a_file_gets_a_credentials_output(
        cli: Callable, name: str, output: Dict[str, Any]) -> None:
    suggestion = suggest(findings_of(name), "/etc/x.sh", ValueNames(), (CORPUS / name).read_text())
    assert suggestion.declaration["credentials"] == [output]
    assert any(f"copies the role's keys into {output['path']} once" in c for c in suggestion.comments)
    printed = cli("scan", "--suggest", str(CORPUS / name)).stdout.decode()
    suggested = yaml.safe_load(printed.split("#cloud-config\n", 1)[1])
    assert suggested["imds"]["credentials"] == [output]


def test_no_credentials_output_without_a_file_written() -> None:
    suggestion = suggest(findings_of("sh-iam-role.sh"), "/etc/x.sh", ValueNames(),
                         (CORPUS / "sh-iam-role.sh").read_text())
    assert "credentials" not in suggestion.declaration


def test_unsure_suggestions_say_so() -> None:
    suggestion = suggest(findings_of("sh-ec2-metadata-al.sh") + findings_of("sh-pipeline-grep.sh"), "/x.sh")
    assert any("extracts `region`" in c for c in suggestion.comments)


def test_unparseable_python_2_is_read_as_python() -> None:
    with pytest.raises(SyntaxError):
        compile((CORPUS / "py2-urllib2.py").read_text(), "py2", "exec")
    assert [f.tool for f in findings_of("py2-urllib2.py")] == ["urllib", "urllib"]


def test_scan_error_still_reported() -> None:
    assert issubclass(ScanError, Exception)


# Fixtures safe to run here (no writes outside the shell, no commands this machine lacks): run against the
# emulator with IMDSv1 allowed, as on the instances they came from, their variables are what `value:` says.
RUNNABLE = ["sh-az-param-trim.sh", "sh-az-trims.sh", "sh-continuations.sh", "sh-dash-functions.sh",
            "sh-document-once.sh", "sh-function-path-arg.sh", "sh-function-url-arg.sh", "sh-mixed.sh",
            "sh-pipeline-grep.sh", "sh-pipeline-jq.sh", "sh-variable-chain.sh"]


@pytest.mark.parametrize("name", RUNNABLE)
def test_the_annotations_are_what_the_script_itself_reads(
    make_emulator: Callable[..., Emulator], tmp_path: Path, name: str
) -> None:
    emulator = make_emulator(mode="optional")
    host = emulator.url.split("//", 1)[1]
    script = tmp_path / name
    text = (CORPUS / name).read_text().replace("169.254.169.254", host)
    script.write_text(re.sub(r"^(\s*)(echo|aws) ", r"\1: ", text, flags=re.M))
    wanted = {v: source_value(emulator.tree, s) for v, s in expected(name)[1].items() if s != "none"}
    assert wanted
    assert variables_of(script, list(wanted)) == wanted
