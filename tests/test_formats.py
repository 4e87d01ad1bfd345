"""Env formats: every value round-trips exactly, or is refused. Checked by the real readers:
bash and dash sourcing the shell file, and systemd's own environment file parser."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import List, Tuple

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cc_imds.formats import FormatProblem, quote_dotenv, quote_shell, quote_systemd, render_env

# Values an attacker who may tag the instance could choose.
HOSTILE = [
    "$(touch /tmp/cc-imds-pwned)",
    "`touch /tmp/cc-imds-pwned`",
    "'; touch /tmp/cc-imds-pwned; '",
    '"; touch /tmp/cc-imds-pwned; "',
    "it's",
    "back\\slash\\",
    "\\'",
    "line1\nline2\n",
    "\n",
    "trailing spaces   ",
    "   leading",
    "tab\there",
    "${HOME}",
    "$HOME",
    "!history",
    "*",
    "~",
    "# not a comment",
    "a=b c=d",
    "ümlaut ☃ 日本語 🙂",
    "\x1b[31mred\x1b[0m",
    "",
    "x" * 65536,
    "aws:cloudformation:stack-name",
    "carriage\rreturn",
]
SHELLS = ["bash", "dash"]
GENERATOR = Path("/usr/lib/systemd/user-environment-generators/30-systemd-environment-d-generator")
# `make test` (CI) sets this: a reader that is not installed is then a failure, not a skip
# (tests/install-system-deps installs them).
REQUIRED = os.environ.get("CC_IMDS_REQUIRE_E2E") == "1"


def need(present: bool, what: str) -> None:
    if not present:
        (pytest.fail if REQUIRED else pytest.skip)(f"{what} is not installed")

# Any text a tag value or metadata leaf can hold: UTF-8, so no lone surrogates; no NUL.
text_values = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\0"), max_size=200)


def source_in_shell(shell: str, env_file: Path, names: List[str]) -> List[str]:
    """Source the file in a clean shell and print each variable NUL-terminated."""
    need(shutil.which(shell) is not None, shell)
    script = f". {env_file}\n" + "".join(f'printf "%s\\0" "${name}"\n' for name in names)
    result = subprocess.run(
        [shell, "-c", script], capture_output=True, env={"PATH": "/usr/bin:/bin"}, cwd=env_file.parent, check=True
    )
    return result.stdout.decode("utf-8").split("\0")[:-1]


@pytest.mark.parametrize("shell", SHELLS)
def test_hostile_values_round_trip_in_shells(tmp_path: Path, shell: str) -> None:
    pairs = [(f"V{i}", value) for i, value in enumerate(HOSTILE)]
    env_file = tmp_path / "instance.sh"
    env_file.write_text(render_env("shell", pairs), encoding="utf-8")
    assert source_in_shell(shell, env_file, [n for n, _ in pairs]) == [v for _, v in pairs]
    assert not Path("/tmp/cc-imds-pwned").exists()
    assert sorted(os.listdir(tmp_path)) == ["instance.sh"]  # nothing ran, nothing was created


@pytest.mark.parametrize("shell", SHELLS)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(values=st.lists(text_values, min_size=1, max_size=8))
def test_any_text_round_trips_in_shells(tmp_path: Path, shell: str, values: List[str]) -> None:
    pairs = [(f"V{i}", v) for i, v in enumerate(values)]
    env_file = tmp_path / "generated.sh"
    env_file.write_text(render_env("shell", pairs), encoding="utf-8")
    assert source_in_shell(shell, env_file, [n for n, _ in pairs]) == values


def test_nul_is_refused_everywhere() -> None:
    for quote in (quote_shell, quote_systemd, quote_dotenv):
        with pytest.raises(FormatProblem, match="NUL"):
            quote("a\0b")


@given(text_values)
def test_shell_quoting_is_a_single_quoted_word(value: str) -> None:
    quoted = quote_shell(value)
    # Only single-quoted runs joined by \' : nothing a shell would expand.
    assert quoted.startswith("'") and quoted.endswith("'")
    assert quoted.replace("'\\''", "").count("'") == 2


def systemd_reads(tmp_path: Path, pairs: List[Tuple[str, str]]) -> dict:
    """What systemd's environment file parser makes of a file (environment.d uses the same parser)."""
    need(GENERATOR.exists(), "systemd's environment generator")
    conf = tmp_path / "environment.d"
    conf.mkdir(exist_ok=True)
    (conf / "60-test.conf").write_text(render_env("systemd", pairs), encoding="utf-8")
    env = {"XDG_CONFIG_HOME": str(tmp_path), "PATH": "/usr/bin:/bin"}
    result = subprocess.run([str(GENERATOR)], capture_output=True, env=env, check=True)
    found = {}
    for line in result.stdout.decode().splitlines():
        name, _, value = line.partition("=")
        found[name] = _unquote_generator_output(value)
    return found


def _unquote_generator_output(value: str) -> str:
    """The generator prints values needing it in double quotes, C-escaped (\\t, \\", \\$ ...)."""
    if len(value) >= 2 and value[0] == value[-1] == '"':
        escapes = {"t": "\t", "n": "\n", "r": "\r"}
        out, chars = [], iter(value[1:-1])
        for char in chars:
            if char == "\\":
                char = next(chars)
                char = escapes.get(char, char)
            out.append(char)
        return "".join(out)
    return value


# The generator expands $VAR (EnvironmentFile= does not), so $ is checked separately; and it
# drops empty assignments, which EnvironmentFile= keeps, so the empty string is left out here.
systemd_values = st.text(
    st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="$"), min_size=1, max_size=80
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(values=st.lists(systemd_values, min_size=1, max_size=6))
def test_systemd_format_read_back_by_systemd(tmp_path: Path, values: List[str]) -> None:
    pairs = [(f"CC_IMDS_V{i}", v) for i, v in enumerate(values)]
    found = systemd_reads(tmp_path, pairs)
    assert [found.get(n) for n, _ in pairs] == values


def test_systemd_hostile_values_without_dollar(tmp_path: Path) -> None:
    values = [v for v in HOSTILE if v and "$" not in v and "\n" not in v and "\r" not in v and "\x1b" not in v]
    pairs = [(f"CC_IMDS_H{i}", v) for i, v in enumerate(values) if len(v) < 4096]
    found = systemd_reads(tmp_path, pairs)
    assert {n: found.get(n) for n, _ in pairs} == dict(pairs)


def test_systemd_dollar_is_kept_literally() -> None:
    # EnvironmentFile= does not expand; in single quotes nothing is unescaped.
    assert quote_systemd("$HOME") == "'$HOME'"
    assert quote_systemd("it's $HOME") == '"it\'s \\$HOME"'


@pytest.mark.parametrize("value", ["a\nb", "a\rb"])
def test_systemd_refuses_line_breaks(value: str) -> None:
    with pytest.raises(FormatProblem, match="systemd format cannot carry"):
        render_env("systemd", [("X", value)])


@pytest.mark.parametrize("value", ["it's", "back\\slash", "a\nb"])
def test_dotenv_refuses_what_loaders_disagree_on(value: str) -> None:
    with pytest.raises(FormatProblem, match=r"^BAD: contains"):
        render_env("dotenv", [("BAD", value)])


def test_dotenv_plain_values() -> None:
    assert render_env("dotenv", [("A", "x y $Z #c")]).endswith("A='x y $Z #c'\n")


@given(st.lists(st.tuples(st.from_regex(r"[A-Z_][A-Z0-9_]{0,8}", fullmatch=True), st.text()), max_size=10))
def test_json_round_trips_everything(pairs: List[Tuple[str, str]]) -> None:
    pairs = [(n, v) for n, v in pairs if not any(0xD800 <= ord(c) <= 0xDFFF for c in v)]
    assert json.loads(render_env("json", pairs)) == dict(pairs)
