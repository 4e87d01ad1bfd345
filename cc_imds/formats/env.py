"""Environment file formats and their exact quoting.

Each format either carries a value byte for byte or refuses it: a value is never
silently changed. Values are treated as hostile (tag values are set by whoever may
tag the instance), so the `shell` format only ever produces single-quoted words,
which no shell expands.
"""

from __future__ import annotations

TYPE_CHECKING = False  # not typing's: `cc-imds get --shell` quotes with this module, cold
if TYPE_CHECKING:
    from typing import Callable, Dict, List, Sequence, Tuple

FORMATS = ("shell", "systemd", "dotenv", "json")
HEADER = "# Written by cc-imds from instance metadata. Local changes are overwritten.\n"

# The formats whose variables end up in a process environment: sourced and exported by a
# shell, read by systemd's EnvironmentFile=, loaded by a dotenv loader. Linux refuses to
# start a program (E2BIG, "Argument list too long") when one environment string, NAME=value
# and its terminating NUL, is longer than 32 pages (MAX_ARG_STRLEN: 128 KiB with 4 KiB
# pages, the smallest), or when arguments and environment together pass ARG_MAX (a quarter
# of the stack limit: 2 MiB by default). One file may use half of that, leaving room for the
# rest of the environment and the command line.
PROCESS_ENV_FORMATS = ("shell", "systemd", "dotenv")
ENV_STRING_MAX = 128 * 1024
ENV_FILE_MAX = 1024 * 1024


def refused_variable(name: str) -> bool:
    """True for a name a script's author may not set with `cc-imds get --shell` either: one
    that changes which code a shell, the dynamic loader or a runtime runs. Names a tag
    assembles through `expand` are refused more widely (names.refused)."""
    from .names import changes_what_runs

    return changes_what_runs(name)


class FormatProblem(ValueError):
    """A value the format cannot carry exactly. The message never contains the value."""


def quote_shell(value: str) -> str:
    """A single-quoted POSIX shell word that evaluates to exactly `value`.

    Inside single quotes nothing is special, so `'` is closed, escaped and reopened.
    Works the same in bash, dash and busybox sh.
    """
    if "\0" in value:
        raise FormatProblem("contains a NUL byte, which no shell variable can hold")
    return "'" + value.replace("'", "'\\''") + "'"


def quote_systemd(value: str) -> str:
    """A value for systemd's EnvironmentFile= that systemd reads back exactly.

    Single quotes are literal there; otherwise double quotes, where only
    backslash, double quote, dollar and backtick are escaped. There is no shell-style
    concatenation, so a shell quoting function would be wrong. Line breaks are
    refused: multi-line quoting differs between systemd releases and tools.
    """
    for char, what in (("\0", "a NUL byte"), ("\n", "a newline"), ("\r", "a carriage return")):
        if char in value:
            raise FormatProblem(f"contains {what}, which the systemd format cannot carry; use shell or json")
    if "'" not in value:
        return "'" + value + "'"
    escaped = "".join("\\" + c if c in '\\"$`' else c for c in value)
    return '"' + escaped + '"'


def quote_dotenv(value: str) -> str:
    """A single-quoted dotenv value, read literally by the common dotenv loaders.

    Loaders disagree on escapes inside quotes and on line breaks, so values with
    `'`, a backslash or a line break are refused rather than risked.
    """
    for char, what in (
        ("\0", "a NUL byte"),
        ("\n", "a newline"),
        ("\r", "a carriage return"),
        ("'", "a single quote"),
        ("\\", "a backslash"),
    ):
        if char in value:
            raise FormatProblem(f"contains {what}, which dotenv loaders do not read back alike; use shell or json")
    return "'" + value + "'"


def _lines(quote: Callable[[str], str], prefix: str) -> Callable[[Sequence[Tuple[str, str]]], str]:
    def render(pairs: Sequence[Tuple[str, str]]) -> str:
        return HEADER + "".join(f"{prefix}{name}={quote(value)}\n" for name, value in pairs)

    return render


def _json(pairs: Sequence[Tuple[str, str]]) -> str:
    import json

    return json.dumps(dict(pairs), ensure_ascii=False, indent=2) + "\n"


def _json_value(value: str) -> str:
    import json

    return json.dumps(value, ensure_ascii=False)


RENDERERS: Dict[str, Callable[[Sequence[Tuple[str, str]]], str]] = {
    "shell": _lines(quote_shell, "export "),
    "systemd": _lines(quote_systemd, ""),
    "dotenv": _lines(quote_dotenv, ""),
    "json": _json,
}

QUOTERS: Dict[str, Callable[[str], str]] = {
    "shell": quote_shell,
    "systemd": quote_systemd,
    "dotenv": quote_dotenv,
    "json": _json_value,
}


def environment_problems(fmt: str, pairs: Sequence[Tuple[str, str]]) -> List[str]:
    """Why these variables could not all be in one process environment; empty if they can.
    Sizes are bytes of NAME=value plus its NUL, as the kernel counts them."""
    if fmt not in PROCESS_ENV_FORMATS:
        return []
    problems = []
    total = 0
    for name, value in pairs:
        size = len(name.encode("utf-8")) + 1 + len(value.encode("utf-8", "surrogatepass")) + 1
        total += size
        if size > ENV_STRING_MAX:
            problems.append(
                f"variable {name} would be a {size}-byte environment string (NAME=value); Linux allows at most "
                f"{ENV_STRING_MAX} bytes, beyond which no program can be started with it"
            )
    if total > ENV_FILE_MAX:
        problems.append(
            f"its variables would take {total} bytes of a process environment; at most {ENV_FILE_MAX} are allowed "
            f"per file (by default Linux allows {2 * ENV_FILE_MAX} for environment and arguments together)"
        )
    return problems


def render_env(fmt: str, pairs: Sequence[Tuple[str, str]]) -> str:
    """Render (name, value) pairs. Raises FormatProblem naming the first bad variable;
    callers wanting every problem check each value with `QUOTERS` first."""
    for name, value in pairs:
        try:
            QUOTERS[fmt](value)
        except FormatProblem as exc:
            raise FormatProblem(f"{name}: {exc}") from None
    return RENDERERS[fmt](pairs)
