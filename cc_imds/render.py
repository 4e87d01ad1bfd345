"""Declaration + values -> the exact bytes of every output. Pure: no I/O.

With `redact=True` the same rendering is done with sensitive values replaced by a
placeholder: that is what previews show.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import AbstractSet, Any, Dict, List, Mapping, Optional, Tuple

from .config import Declaration, EnvOutput, FileOutput, Origin
from .errors import RenderError
from .formats import QUOTERS, FormatProblem, refused_variable, render_env
from .resolve import Value, Values
from .templates import TemplateProblem, render_template

REDACTED = "<redacted>"
DEFAULT_MODE = 0o644
SENSITIVE_MODE = 0o600

_NOT_IDENTIFIER = re.compile(r"[^A-Za-z0-9_]")


@dataclass(frozen=True)
class Output:
    path: str
    content: bytes
    mode: int
    owner: Optional[str]
    sensitive: bool
    origin: Origin


def variable_name(prefix: str, entry: str) -> str:
    """`TAG_` + `aws:cloudformation:stack-name` -> `TAG_aws_cloudformation_stack_name`."""
    return prefix + _NOT_IDENTIFIER.sub("_", entry)


def _text(name: str, value: Value) -> str:
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            raise FormatProblem(f"value {name!r} is binary (not UTF-8 text, gzip perhaps)") from None
    if isinstance(value, str):
        return value
    raise FormatProblem(f"value {name!r} is a directory")


def _show(value: Value, sensitive: bool, redact: bool) -> Any:
    if not (redact and sensitive):
        return value
    if isinstance(value, Mapping):
        return {k: REDACTED for k in value}
    return REDACTED


def env_pairs(output: EnvOutput, values: Values, redact: bool, problems: List[str]) -> List[Tuple[str, str]]:
    pairs: List[Tuple[str, str]] = []
    claimed: Dict[str, str] = {}
    for variable, name in output.vars:
        try:
            text = _text(name, values.data[name])
        except FormatProblem as exc:
            problems.append(f"{output.origin.child('vars').child(variable)}: {exc}")
            continue
        pairs.append((variable, _show(text, name in values.sensitive, redact)))
        claimed[variable] = f"vars.{variable}"
    for name, prefix in output.expand:
        where = output.origin.child("expand").child(name)
        mapping = values.data[name]
        assert isinstance(mapping, Mapping)
        for entry in sorted(mapping):
            variable = variable_name(prefix, entry)
            if variable in claimed:
                problems.append(f"{where}: entry {entry!r} becomes {variable}, already set by {claimed[variable]}")
                continue
            if refused_variable(variable):
                problems.append(f"{where}: entry {entry!r} would set {variable}, which is refused")
                continue
            claimed[variable] = f"expand.{name} entry {entry!r}"
            pairs.append((variable, _show(mapping[entry], name in values.sensitive, redact)))
    for variable, text in pairs:
        try:
            QUOTERS[output.format](text)
        except FormatProblem as exc:
            problems.append(f"{output.origin}: variable {variable} {exc}")
    return pairs


def _mode(declared: Optional[int], sensitive: bool) -> int:
    if declared is not None:
        return declared
    return SENSITIVE_MODE if sensitive else DEFAULT_MODE


def _render_env(output: EnvOutput, values: Values, redact: bool, problems: List[str]) -> Optional[str]:
    before = len(problems)
    pairs = env_pairs(output, values, redact, problems)
    return render_env(output.format, pairs) if len(problems) == before else None


def _render_file(output: FileOutput, values: Values, redact: bool, problems: List[str]) -> Optional[str]:
    context: Dict[str, Any] = {}
    for name in sorted(output.uses):
        value = values.data[name]
        try:
            shown = value if isinstance(value, Mapping) else _text(name, value)
        except FormatProblem as exc:
            problems.append(f"{output.origin.child('content')}: {exc}")
            return None
        context[name] = _show(shown, name in values.sensitive, redact)
    try:
        return render_template(output.template, context)
    except TemplateProblem as exc:
        problems.append(f"{output.origin.child('content')}: {exc}")
        return None


def render(
    declaration: Declaration,
    values: Values,
    *,
    redact: bool = False,
    paths: Optional[AbstractSet[str]] = None,
    deadline: Any = None,
) -> List[Output]:
    """Every output's bytes, or a RenderError listing every problem."""
    problems: List[str] = []
    outputs: List[Output] = []
    for output in list(declaration.env) + list(declaration.files):
        if paths is not None and output.path not in paths:
            continue
        sensitive = any(name in values.sensitive for name in output.uses)
        if isinstance(output, EnvOutput):
            text = _render_env(output, values, redact, problems)
        else:
            text = _render_file(output, values, redact, problems)
        if text is not None:
            mode = _mode(output.permissions, sensitive)
            outputs.append(Output(output.path, text.encode("utf-8"), mode, output.owner, sensitive, output.origin))
    if problems:
        raise RenderError(problems)
    return outputs
