"""Hostile templates and values, end to end through `cc-imds`: rendering ends within the
deadline and the memory and size bounds, no message holds a sensitive value, no env file
breaks the processes that source it, and no tag assembles a refused variable name."""

from __future__ import annotations

import json
import logging
import os
import resource
import subprocess
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import cc_imds
from cc_imds.cli import main
from cc_imds.errors import CcImdsError
from cc_imds.formats.env import ENV_STRING_MAX
from cc_imds.imds.tree import MetadataTree, load_tree
from cc_imds.outputs import template_child
from cc_imds.testing.emulator import Emulator
from tests.conftest import CLI, DEADLINE_SLACK, HUNG_AFTER, PROCESS_SLACK, REPO, cli_env, examples
from tests.reliability.conftest import SECRETS, Run, Scenario, declaration
from tests.reliability.test_faults import expect_untouched, figures, with_leaf

Record = Callable[..., None]
MiB = 1024 * 1024
# The test machine's safety net: a cc-imds process that ignored its bounds would be stopped
# here (and fail the test) instead of taking the machine's memory or the suite's time.
SAFETY_MEMORY = 1536 * MiB
SAFETY_SECONDS = 30


def run_measured(scenario: Scenario, *args: str, emulator: Optional[Emulator] = None) -> Tuple[Run, int]:
    """`cc-imds ARGS` in its own process, as Scenario.cli runs it, plus the peak resident
    memory of that process and its template renderer, in MiB."""
    before = (emulator.count("PUT"), emulator.count("GET")) if emulator else (0, 0)
    out, err = scenario.tmp / "stdout", scenario.tmp / "stderr"
    started = time.monotonic()
    with out.open("wb") as stdout, err.open("wb") as stderr:
        process = subprocess.Popen(
            [*CLI, *args], stdout=stdout, stderr=stderr, env=cli_env(),
            preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_AS, (SAFETY_MEMORY, SAFETY_MEMORY)),
        )
        while True:  # os.wait4 reports the peak memory of the process and of what it waited for
            pid, status, usage = os.wait4(process.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() - started > SAFETY_SECONDS:
                process.kill()
                os.wait4(process.pid, 0)
                pytest.fail(f"cc-imds {args[0]} was still running after {SAFETY_SECONDS}s")
            time.sleep(0.02)
    seconds = time.monotonic() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    after = (emulator.count("PUT"), emulator.count("GET")) if emulator else (0, 0)
    run = Run(process.returncode, out.read_text(errors="replace"), err.read_text(errors="replace"), seconds,
              after[0] - before[0], after[1] - before[1])
    assert "Traceback" not in run.stderr, run.stderr
    scenario.runs.append(run)
    return run, usage.ru_maxrss // 1024


def apply_measured(scenario: Scenario, emulator: Emulator, doc: Dict[str, Any]) -> Tuple[Run, int]:
    path = scenario.write_declaration(doc)
    return run_measured(scenario, "--debug", "apply", str(path), "--endpoint", emulator.url, "--no-conf-dir",
                        emulator=emulator)


def with_template(scenario: Scenario, content: str, **settings: Any) -> Dict[str, Any]:
    doc = declaration(scenario.out, **settings)
    doc["files"].append({"path": f"{scenario.out}/hostile.conf", "content": content})
    return doc


# -- bounded rendering --------------------------------------------------------------------------
def test_runaway_template_time(scenario: Scenario, record: Record) -> None:
    good = scenario.good_outputs()
    # Nested loops that write nothing: only the deadline can stop them, never the output limit.
    loops = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}done"
    run, peak = apply_measured(scenario, scenario.emulator(), with_template(scenario, loops, deadline=3))
    expect_untouched(scenario, good, run, 1, "imds.files[1].content: stopped at the 3s deadline (too slow)")
    # The deadline and its documented slack (asserted in-process in tests/test_render.py), plus
    # the process's start-up before the deadline's clock starts.
    assert run.seconds < 3 + DEADLINE_SLACK + PROCESS_SLACK, run.seconds
    record("template-time", "stopped at the deadline, files untouched", peak_MiB=peak, **figures(run))


def test_runaway_template_memory(scenario: Scenario, record: Record) -> None:
    good = scenario.good_outputs()
    doubling = "{% set ns = namespace(s='x') %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}"
    doc = with_template(scenario, "{{ '%*d'|format(3000000000, 1) }}")
    doc["files"].append({"path": f"{scenario.out}/doubling.conf", "content": doubling + "{{ ns.s }}"})
    run, peak = apply_measured(scenario, scenario.emulator(), doc)
    limit = f"stopped: it needed more than {template_child.MEMORY_ALLOWANCE // MiB} MiB of memory"
    expect_untouched(scenario, good, run, 1, f"imds.files[1].content: {limit}")
    assert f"imds.files[2].content: {limit}" in run.stderr
    assert peak < 100 + template_child.MEMORY_ALLOWANCE // MiB  # the process itself is about 40-60 MiB
    record("template-memory", "stopped at the memory limit, files untouched", peak_MiB=peak, **figures(run))


def test_runaway_template_output(scenario: Scenario, record: Record) -> None:
    good = scenario.good_outputs()
    flood = "{% for i in range(100000) %}{{ 'y' * 1000 }}{% endfor %}"  # 100 MB
    run, peak = apply_measured(scenario, scenario.emulator(), with_template(scenario, flood))
    expect_untouched(scenario, good, run, 1, f"imds.files[1].content: stopped: the output passed "
                                             f"{template_child.OUTPUT_MAX // MiB} MiB")
    record("template-output-size", "stopped at the size limit, files untouched", peak_MiB=peak, **figures(run))


def test_constant_folding_at_validation(scenario: Scenario, record: Record) -> None:
    # Jinja2 evaluates constant expressions while compiling, and validation compiles.
    good = scenario.good_outputs()
    doc = with_template(scenario, "{{ 10 ** (10 ** 10) }}{{ 'x'|center(3000000000) }}")
    run, peak = run_measured(scenario, "validate", str(scenario.write_declaration(doc)))
    assert (run.code, run.stderr) == (0, ""), run.stderr
    assert run.seconds < PROCESS_SLACK and peak < 100  # evaluating either would take hours and gigabytes
    refused, _ = apply_measured(scenario, scenario.emulator(), doc)
    expect_untouched(scenario, good, refused, 1, "imds.files[1].content: refused by the template sandbox at line 1: "
                                                 "`**` would build a value over the size limit")
    record("template-constant-folding", "validation evaluates nothing; rendering refused, files untouched",
           validate_seconds=round(run.seconds, 2), validate_peak_MiB=peak, **figures(refused))


# -- secrets in template errors ---------------------------------------------------------------------
LEAKY_TEMPLATES = [
    "{{ {}[creds] }}",  # the credentials' JSON as a mapping key
    "{{ tags[creds] }}",
    "{{ tags|attr(secret_key) }}",  # the secret key as an attribute name
    "{{ {}[session_token[5:40]] }}",  # a slice of the token
    "{{ {}[secret_key|reverse|join] }}",
    "{{ ('{' ~ session_token ~ '}').format() }}",  # a Python exception quoting it
    "{{ {}[pw] }}",  # a sensitive default
]


def forms(secret: str) -> List[str]:
    return [secret, repr(secret)[1:-1], ascii(secret)[1:-1], json.dumps(secret)[1:-1],
            json.dumps(secret, ensure_ascii=False)[1:-1]]


def leaks(text: str, secrets: List[str]) -> List[str]:
    pieces = text.replace("<computed>", "<redacted>").split("<redacted>")
    return sorted({secret[:6] + "..." for secret in secrets for form in forms(secret) for piece in pieces
                   if form and form in piece})


def leaky_declaration(out: Path, content: str, pw: str = "correct horse battery") -> Dict[str, Any]:
    doc = declaration(out)
    doc["values"]["creds"] = "meta-data/iam/security-credentials/app-server"
    doc["values"]["pw"] = {"path": "meta-data/tags/instance/Password", "default": pw, "sensitive": True}
    doc["files"].append({"path": f"{out}/leaky.conf", "content": content})
    return doc


def test_secret_in_template_error(scenario: Scenario, tree: MetadataTree, record: Record) -> None:
    good = scenario.good_outputs()
    emulator = scenario.emulator()
    credentials = json.loads(tree.lookup("meta-data/iam/security-credentials/app-server") or b"")
    secrets = [*SECRETS, credentials["AccessKeyId"], json.dumps(credentials, indent=2), "correct horse battery"]
    metadata = scenario.tmp / "tree.json"
    metadata.write_text(json.dumps({k: v.decode() for k, v in tree.leaves().items() if k != "user-data"}))
    runs = []
    for content in LEAKY_TEMPLATES:
        path = scenario.write_declaration(leaky_declaration(scenario.out, content))
        runs.append(scenario.apply(emulator, leaky_declaration(scenario.out, content)))
        expect_untouched(scenario, good, runs[-1], 1, "imds.files[1].content: template ")
        runs.append(scenario.cli("plan", str(path), "--metadata", str(metadata), "--no-conf-dir"))
        assert runs[-1].code == 1 and "imds.files[1].content: template " in runs[-1].stderr, runs[-1].stderr
    assert leaks("".join(r.stdout + r.stderr for r in runs), secrets) == []
    record("secret-in-template-error", f"{len(LEAKY_TEMPLATES)} templates through apply and plan: "
           "0 secrets in any message, files untouched", **figures(runs[0]))


SHAPES = ["{{ {}[s] }}", "{{ tags[s] }}", "{{ tags|attr(s) }}", "{{ {}[s ~ s] }}", "{{ {}[s[1:]] }}",
          "{{ ('{' ~ s ~ '}').format() }}", "{{ s.nope }}", "{{ {}[s|upper] }}", "{{ s|int + s }}",
          "{{ {}[creds ~ s] }}", "{% for c in s %}{{ {}[c ~ s] }}{% endfor %}", "{{ range(s) }}",
          "{{ [][s|int] }}", "{{ {}[(s|int, s)] }}"]
# Any text a value can hold: UTF-8, so no lone surrogates; no NUL (a declaration cannot hold one).
# No line break either: the CLI prints one message per line, and a secret spanning two would
# match across unrelated lines.
secret_texts = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\0\n\r"), min_size=1,
                       max_size=40) | st.integers(-(10**12), 10**12).map(str)
_generated = {"runs": 0}
_emulators: Dict[int, Emulator] = {}  # one per test function: hypothesis reuses its fixtures


class FakeCloud:
    datasource = None


@settings(max_examples=examples(40), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(shape=st.sampled_from(SHAPES), secret=secret_texts, via=st.sampled_from(["plan", "apply", "handle"]))
def test_secret_in_generated_templates(make_emulator: Callable[..., Emulator], tmp_path: Path,
                                       capsys: pytest.CaptureFixture, caplog: pytest.LogCaptureFixture,
                                       record: Record, shape: str, secret: str, via: str) -> None:
    """A generated sensitive value (a default for a path IMDS does not have), used by a
    generated template: no form of it in anything plan, apply or handle say."""
    emulator = _emulators.setdefault(id(make_emulator), make_emulator())
    out = tmp_path / "out"
    doc = {"endpoint": emulator.url,
           "values": {"s": {"path": "meta-data/tags/instance/Nope", "default": secret, "sensitive": True},
                      "creds": "meta-data/iam/security-credentials/app-server", "tags": "meta-data/tags/instance/"},
           "files": [{"path": f"{out}/f", "content": shape}]}
    caplog.clear()
    caplog.set_level(logging.ERROR)
    # What came through the boundary, without the framing added after it (the "cc-imds: " and
    # "imds: " prefixes, plan's "--- path  mode ..." headers): a secret such as "imds" would
    # otherwise be found there.
    said = ""
    if via == "handle":
        try:
            cc_imds.handle(name="imds", cfg={"imds": doc}, cloud=FakeCloud(), args=[])
        except CcImdsError as exc:
            said = str(exc)
        said += "\n".join(r.getMessage()[len("imds: "):] for r in caplog.records)
    else:
        path = tmp_path / "decl.json"
        path.write_text(json.dumps({"imds": doc}))  # JSON is YAML, and carries any text
        main([via, str(path), "--no-conf-dir"] + (["--root", str(tmp_path / "root")] if via == "apply" else []))
        captured = capsys.readouterr()
        errors = [line[len("cc-imds: "):] for line in captured.err.splitlines()]
        shown = [line for line in captured.out.splitlines() if via == "plan" and not line.startswith("--- ")
                 and line != "(no newline at end of file)"]
        said = "\n".join(errors + shown)
    credentials = json.loads(emulator.tree.lookup("meta-data/iam/security-credentials/app-server") or b"")
    secrets = [secret, credentials["SecretAccessKey"], credentials["Token"], *emulator.issued_tokens()]
    assert leaks(said, secrets) == []
    _generated["runs"] += 1
    record("secret-in-generated-templates", "generated values and templates through plan, apply and handle: "
           "0 secrets in any message", generated=_generated["runs"])


# -- env files and names ----------------------------------------------------------------------
def test_oversize_env_value(scenario: Scenario, record: Record) -> None:
    good = scenario.good_outputs()
    emulator = scenario.emulator(with_leaf("meta-data/tags/instance/Big", b"b" * 200_000))
    run = scenario.apply(emulator)
    expect_untouched(scenario, good, run, 1, f"imds.env[0]: variable TAG_Big would be a 200009-byte environment "
                                             f"string (NAME=value); Linux allows at most {ENV_STRING_MAX} bytes")
    sourced = subprocess.run(["sh", "-c", f". {scenario.out}/instance.sh && exec /bin/true"], capture_output=True,
                             timeout=HUNG_AFTER)
    assert sourced.returncode == 0  # the files in place still let programs start
    record("env-string-too-long", "refused naming the variable and the limit, files untouched", **figures(run))


def test_assembled_refused_names(scenario: Scenario, record: Record) -> None:
    good = scenario.good_outputs()
    leaves = load_tree().leaves()
    leaves.update({"meta-data/tags/instance/LIBC_TUNABLES": b"glibc.malloc.check=3",
                   "meta-data/tags/instance/AVA-TOOL-OPTIONS": b"-javaagent:/tmp/evil.jar",
                   "meta-data/tags/instance/ttp.proxy": b"http://attacker:3128"})
    emulator = scenario.emulator(MetadataTree(leaves))
    out = scenario.out
    doc = declaration(out)
    doc["env"] += [{"path": f"{out}/{prefix}.sh", "format": "shell", "expand": {"tags": prefix}}
                   for prefix in ("G", "J", "h")]
    run = scenario.apply(emulator, doc)
    expect_untouched(scenario, good, run, 1, "imds.env[2].expand.tags: entry 'LIBC_TUNABLES' would set GLIBC_TUNABLES")
    java = "imds.env[3].expand.tags: entry 'AVA-TOOL-OPTIONS' would set JAVA_TOOL_OPTIONS, which is refused"
    assert java in run.stderr
    assert "imds.env[4].expand.tags: entry 'ttp.proxy' would set http_proxy, which is refused" in run.stderr
    record("assembled-refused-name", "GLIBC_TUNABLES, JAVA_TOOL_OPTIONS, http_proxy refused, files untouched",
           **figures(run))


def test_the_bounds_are_documented() -> None:
    page = (REPO / "docs/declaration.md").read_text(encoding="utf-8")
    for figure in (f"{template_child.MEMORY_ALLOWANCE // MiB} MiB", f"{template_child.OUTPUT_MAX // MiB} MiB",
                   f"{template_child.TOTAL_MAX // MiB} MiB", "128 KiB", "1 MiB", "GLIBC_TUNABLES"):
        assert figure in page, figure
