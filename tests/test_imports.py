"""Each command imports what it uses, and nothing else: checked in a fresh interpreter, from
sys.modules after the command ran. `cc-imds get` stands in for curl in scripts, so it runs
on the standard library alone, and only the parts of cc_imds it needs.

(How long imports take is measured in bench/, never asserted here.)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Callable, Dict, List, Set

import pytest

from cc_imds.testing.emulator import Emulator
from tests.conftest import EXAMPLES, HUNG_AFTER, REPO

# Runs a command in-process, then reports what it imported: third-party top-level packages
# (anything outside the standard library) and cc_imds's own modules.
# Which loaded modules are third-party: anything outside the standard library, cc_imds aside.
THIRD_PARTY = r"""
import os, sys, sysconfig
stdlib = {os.path.realpath(sysconfig.get_paths()[k]) for k in ("stdlib", "platstdlib")}
def third_party(name):
    where = getattr(sys.modules[name], "__file__", None)
    if not where or name.split(".")[0] == "cc_imds":
        return False
    where = os.path.realpath(where)
    return "-packages" in where or not any(where.startswith(p + os.sep) for p in stdlib)
"""
PROBE = THIRD_PARTY + r"""
before = set(sys.modules)
from cc_imds.cli import main
try:
    code = main(sys.argv[1:])
except SystemExit as exc:
    code = exc.code
loaded = set(sys.modules) - before
import json
with open(os.environ["PROBE_OUT"], "w") as out:
    json.dump({"code": code, "third_party": sorted({n.split(".")[0] for n in loaded if third_party(n)}),
               "third_party_modules": sorted(n for n in loaded if third_party(n)),
               "cc_imds": sorted(n for n in loaded if n.split(".")[0] == "cc_imds"),
               "stdlib": sorted(n for n in loaded if n.split(".")[0] != "cc_imds" and not third_party(n))}, out)
"""
# What importing these modules brings in a bare interpreter, as third-party top-level packages.
BROUGHT = THIRD_PARTY + r"""
import importlib
before = set(sys.modules)
for name in sys.argv[1:]:
    importlib.import_module(name)
print(" ".join(sorted({n.split(".")[0] for n in set(sys.modules) - before if third_party(n)})))
"""


def brought_by(modules: List[str]) -> Set[str]:
    """The third-party packages these modules load by themselves: jsonschema's optional format
    helpers (rfc3339_validator, idna...) and Jinja2's markupsafe are whatever this host has."""
    done = subprocess.run([sys.executable, "-c", BROUGHT, *modules], capture_output=True, text=True, check=True,
                          env=probe_env(), timeout=HUNG_AFTER)
    return set(done.stdout.split())


GET_MODULES = sorted(["cc_imds", "cc_imds.version", "cc_imds.cli", "cc_imds.deadline", "cc_imds.errors", "cc_imds.logs",
                      "cc_imds.streams", "cc_imds.imds", "cc_imds.imds.client", "cc_imds.imds.retry",
                      "cc_imds.imds.settings", "cc_imds.imds.transport", "cc_imds.tools", "cc_imds.tools.get"])
# Standard-library modules `get` has no use for (each costs milliseconds at start-up). HTTP is
# spoken by cc_imds.imds.transport over `_socket`: http.client (with the email package and ssl it
# loads) costs more than the interpreter's own start, and socket's wrapper is not needed. A plain
# command line is read without argparse (and the gettext and locale it loads); paths, headers and
# variable names are checked without `re`, finite numbers without `math` (a shared library); a
# plain http://A.B.C.D:PORT endpoint without urllib.parse or ipaddress; several values are
# fetched by threads without a thread pool.
NOT_FOR_GET = ["logging", "typing", "dataclasses", "inspect", "tempfile", "pathlib", "concurrent.futures", "json",
               "http", "http.client", "email", "ssl", "urllib.request", "socket", "selectors", "random", "re",
               "argparse", "gettext", "locale", "urllib.parse", "ipaddress", "enum", "shutil", "math"]
# All a single value from an explicit endpoint needs of the standard library, beyond a bare start
# (`__future__` is imported by `from __future__ import annotations` itself; `gc`, built into the
# interpreter, by cli.run, which turns the collector off for `get`).
FOR_ONE_VALUE = ["__future__", "_socket", "gc"]


def probe_env() -> Dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO)}


def imported(tmp_path: Path, *args: str) -> Dict[str, object]:
    out = tmp_path / "probe.json"
    env = {**probe_env(), "PROBE_OUT": str(out), "CC_IMDS_CONF_DIR": "/nonexistent"}
    subprocess.run([sys.executable, "-c", PROBE, *args], env=env, capture_output=True, check=True, timeout=120)
    result: Dict[str, object] = json.loads(out.read_text())
    return result


def test_get_runs_on_the_standard_library_and_the_client_alone(emulator: Emulator, tmp_path: Path) -> None:
    found = imported(tmp_path, "get", "meta-data/instance-id", "--endpoint", emulator.url)
    assert found["code"] == 0
    assert found["third_party"] == []
    assert found["cc_imds"] == GET_MODULES
    assert [m for m in NOT_FOR_GET if m in found["stdlib"]] == []  # type: ignore[operator]
    assert found["stdlib"] == FOR_ONE_VALUE


def test_get_many_values_adds_only_the_shell_quoting(emulator: Emulator, tmp_path: Path) -> None:
    found = imported(tmp_path, "get", "--shell", "A=meta-data/instance-id", "B=meta-data/placement/region",
                     "--endpoint", emulator.url)
    assert found["code"] == 0
    assert found["third_party"] == []
    names_and_quoting = ["cc_imds.formats", "cc_imds.formats.env", "cc_imds.formats.names"]
    assert found["cc_imds"] == sorted([*GET_MODULES, *names_and_quoting])
    # Values are fetched by threads started with _thread, without importing threading.
    assert [m for m in [*NOT_FOR_GET, "threading"] if m in found["stdlib"]] == []  # type: ignore[operator]


def test_get_json_adds_only_json(emulator: Emulator, tmp_path: Path) -> None:
    found = imported(tmp_path, "get", "--json", "A=meta-data/instance-id", "--endpoint", emulator.url)
    assert found["code"] == 0
    brought = subprocess.run([sys.executable, "-c", "import sys; before = set(sys.modules); import json; "
                              "print(' '.join(set(sys.modules) - before))"], capture_output=True, text=True, check=True,
                              timeout=HUNG_AFTER)
    json_and_its_own = set(brought.stdout.split())  # json's decoder uses `re`
    assert [m for m in NOT_FOR_GET if m in found["stdlib"] and m not in json_and_its_own] == []  # type: ignore[operator]


def test_get_failures_import_nothing_more(tmp_path: Path) -> None:
    found = imported(tmp_path, "get", "--shell", "PATH=meta-data/x", "--timeout", "1")
    assert (found["code"], found["third_party"]) == (2, [])
    found = imported(tmp_path, "get", "meta-data/x", "--timeout", "nan")
    assert (found["code"], found["third_party"]) == (2, [])


@pytest.mark.parametrize(
    ("args", "allowed"),
    [
        # Without templates, nothing needs Jinja2.
        (["validate", "DECL"], {"yaml", "jsonschema"}),
        (["plan", "DECL", "--no-conf-dir", "--metadata", str(REPO / "cc_imds/data/default-tree.json")],
         {"yaml", "jsonschema"}),
        # A template that is only text and {{ name }} does not need it either; a filter does.
        (["validate", str(EXAMPLES / "iam-credentials.yaml")], {"yaml", "jsonschema"}),
        (["validate", "TEMPLATE"], {"yaml", "jsonschema", "jinja2"}),
        (["scan", "SCRIPT"], set()),
        (["scan", "SCRIPT", "--suggest"], {"yaml", "jsonschema"}),
    ],
)
def test_each_command_imports_what_it_uses(tmp_path: Path, args: List[str], allowed: set) -> None:
    decl = tmp_path / "decl.yaml"
    decl.write_text("values:\n  id: meta-data/instance-id\nenv:\n  - {path: /x.env, format: shell, vars: {ID: id}}\n")
    script = tmp_path / "boot.sh"
    script.write_text("ID=$(curl -s http://169.254.169.254/latest/meta-data/instance-id)\n")
    template = tmp_path / "template.yaml"
    template.write_text("values:\n  id: meta-data/instance-id\n"
                        "files:\n  - {path: /x.sh, content: '{{ id | shell_quote }}'}\n")
    args = [{"DECL": str(decl), "SCRIPT": str(script), "TEMPLATE": str(template)}.get(a, a) for a in args]
    found = imported(tmp_path, *args)
    assert found["code"] in (0, 1)
    # What the allowed packages' own modules load by themselves comes with them; anything else
    # was imported for cc_imds.
    of_allowed = [m for m in found["third_party_modules"] if m.split(".")[0] in allowed]  # type: ignore[attr-defined]
    helpers = brought_by(of_allowed) - allowed
    packages = set(found["third_party"]) - helpers  # type: ignore[call-overload]
    assert packages == allowed


@pytest.mark.parametrize("command", ["validate", "plan", "apply", "get", "emulate", "scan", "enable-module", "demo"])
def test_help_of_every_command_needs_no_third_party_module(tmp_path: Path, command: str) -> None:
    found = imported(tmp_path, command, "--help")
    assert (found["code"], found["third_party"]) == (0, [])


def test_the_probe_sees_third_party_modules(tmp_path: Path, cli: Callable) -> None:
    """The check above cannot pass by seeing nothing: a command that needs yaml shows it."""
    decl = tmp_path / "decl.yaml"
    decl.write_text("values:\n  id: meta-data/instance-id\nenv:\n  - {path: /x.env, format: shell, vars: {ID: id}}\n")
    assert "yaml" in imported(tmp_path, "validate", str(decl))["third_party"]  # type: ignore[operator]
