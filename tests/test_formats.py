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

from cc_imds.formats.env import (
    ENV_FILE_MAX,
    ENV_STRING_MAX,
    FormatProblem,
    environment_problems,
    quote_dotenv,
    quote_shell,
    quote_systemd,
    render_env,
)
from tests.conftest import HUNG_AFTER, examples, require

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
def need(present: bool, what: str) -> None:
    """A reader that is not installed fails `make test` (tests/install-system-deps installs them)."""
    require(present, f"{what} is not installed")

# Any text a tag value or metadata leaf can hold: UTF-8, so no lone surrogates; no NUL.
text_values = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\0"), max_size=200)


def source_in_shell(shell: str, env_file: Path, names: List[str]) -> List[str]:
    """Source the file in a clean shell and print each variable NUL-terminated."""
    need(shutil.which(shell) is not None, shell)
    script = f". {env_file}\n" + "".join(f'printf "%s\\0" "${name}"\n' for name in names)
    result = subprocess.run(
        [shell, "-c", script], capture_output=True, env={"PATH": "/usr/bin:/bin"}, cwd=env_file.parent, check=True,
        timeout=HUNG_AFTER)
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
@settings(max_examples=examples(60), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
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
    result = subprocess.run([str(GENERATOR)], capture_output=True, env=env, check=True, timeout=HUNG_AFTER)
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


@settings(max_examples=examples(40), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
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


# -- what a process environment can hold ------------------------------------------------------
def start_a_program(shell: str, env_file: Path, *args: str) -> subprocess.CompletedProcess:
    """Source the file, then start a program: what every script that sources it does next."""
    return subprocess.run([shell, "-c", f'. {env_file} && exec /bin/true "$@"', shell, *args],
                          capture_output=True, env={"PATH": "/usr/bin:/bin"}, timeout=HUNG_AFTER)


@pytest.mark.parametrize("shell", SHELLS)
def test_the_longest_value_allowed_still_lets_programs_start(tmp_path: Path, shell: str) -> None:
    longest = "v" * (ENV_STRING_MAX - len("BIG=") - 1)  # NAME=value and its NUL: exactly the limit
    assert environment_problems("shell", [("BIG", longest)]) == []
    env_file = tmp_path / "fits.sh"
    env_file.write_text(render_env("shell", [("BIG", longest)]), encoding="utf-8")
    assert start_a_program(shell, env_file).returncode == 0


@pytest.mark.parametrize("shell", SHELLS)
def test_one_byte_more_and_no_program_can_start(tmp_path: Path, shell: str) -> None:
    too_long = "v" * (ENV_STRING_MAX - len("BIG=") - 2) + "é"  # counted in bytes, not characters
    assert environment_problems("shell", [("BIG", too_long)]) == [
        f"variable BIG would be a {ENV_STRING_MAX + 1}-byte environment string (NAME=value); Linux allows at most "
        f"{ENV_STRING_MAX} bytes, beyond which no program can be started with it"
    ]
    env_file = tmp_path / "refused.sh"  # what cc-imds refuses to write: Linux refuses it too
    env_file.write_text(render_env("shell", [("BIG", too_long)]), encoding="utf-8")
    result = start_a_program(shell, env_file)
    assert result.returncode != 0 and b"Argument list too long" in result.stderr


@pytest.mark.parametrize("shell", SHELLS)
def test_a_full_env_file_leaves_room_for_arguments(tmp_path: Path, shell: str) -> None:
    size = ENV_STRING_MAX - 16
    pairs = [(f"V{i:02}", "v" * (size - len("V00=") - 1)) for i in range(ENV_FILE_MAX // size)]
    assert environment_problems("shell", pairs) == []
    env_file = tmp_path / "full.sh"
    env_file.write_text(render_env("shell", pairs), encoding="utf-8")
    arguments = ["a" * 100_000] * 5  # half a megabyte of command line on top
    assert start_a_program(shell, env_file, *arguments).returncode == 0
    doubled = tmp_path / "doubled.sh"  # without the budget: twice as much, and the same command line fails
    doubled.write_text(render_env("shell", pairs + [(f"W{n}", v) for n, v in pairs]), encoding="utf-8")
    assert b"Argument list too long" in start_a_program(shell, doubled, *arguments).stderr


def test_json_is_not_a_process_environment() -> None:
    assert environment_problems("json", [("BIG", "v" * (2 * ENV_FILE_MAX))]) == []
    for fmt in ("systemd", "dotenv"):
        assert environment_problems(fmt, [("BIG", "v" * ENV_STRING_MAX)]) != []
