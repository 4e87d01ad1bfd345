"""Declaration + values -> the exact bytes of every output. No I/O of its own.

With `redact=True` the same rendering is done with sensitive values replaced by a
placeholder: that is what previews show. Env files are checked against what a process
environment can hold and against the refused variable names (formats/names.py); templates run
in a child process bounded by the deadline, memory and output size (template_child.py).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import partial
from typing import AbstractSet, Any, Collection, Dict, FrozenSet, Iterator, List, Mapping, Optional, Set, Tuple, Union

from ..deadline import RUN_SECONDS, Deadline
from ..declaration.build import CredentialOutput, Declaration, EnvOutput, FileOutput, Origin, OutputSpec
from ..errors import RenderError
from ..formats.env import QUOTERS, FormatProblem, environment_problems, render_env
from ..formats.names import refused
from ..formats.templates import Compiled, TemplateProblem, compile_template, failure_message, plain_size, render_plain
from ..values import Value, Values
from . import template_child

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


@dataclass(frozen=True)
class Exposure:
    """What holds a sensitive value: whole values, and single entries of directory values.

    Marking one value sensitive covers every other value read from the same IMDS document
    (`tags/instance/Password` also reached through the `tags/instance/` directory), so no
    second name shows it in a preview or writes it with a wider default mode."""

    whole: FrozenSet[str]
    entries: Mapping[str, FrozenSet[str]]

    def touches(self, names: Collection[str]) -> bool:
        return any(name in self.whole or name in self.entries for name in names)


def exposure(declaration: Declaration, values: Values) -> Exposure:
    secrets = [spec for spec in declaration.values.values() if spec.name in values.sensitive]
    whole = set(values.sensitive)
    entries: Dict[str, Set[str]] = {}
    for spec in declaration.values.values():
        if spec.name in whole:
            continue
        for secret in secrets:
            if spec.path == secret.path and (spec.key is None or secret.key is None or spec.key == secret.key):
                whole.add(spec.name)  # the same document, or the same key of it
            elif secret.is_directory and spec.path.startswith(secret.path):
                whole.add(spec.name)  # an entry of a sensitive directory
            elif spec.is_directory and secret.path.startswith(spec.path) and "/" not in secret.path[len(spec.path) :]:
                entries.setdefault(spec.name, set()).add(secret.path[len(spec.path) :])
    return Exposure(frozenset(whole), {name: frozenset(found) for name, found in entries.items()})


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


def _show(name: str, value: Union[str, Mapping[str, str]], secret: Exposure, redact: bool) -> Any:
    if not redact:
        return value
    if isinstance(value, Mapping):
        hidden: AbstractSet[str] = value.keys() if name in secret.whole else secret.entries.get(name, frozenset())
        return {key: REDACTED if key in hidden else entry for key, entry in value.items()}
    return REDACTED if name in secret.whole else value


def env_pairs(
    output: EnvOutput, values: Values, secret: Exposure, redact: bool, problems: List[str]
) -> List[Tuple[str, str]]:
    """(variable, value) pairs of an env output; with `redact`, sensitive values are replaced
    once every check has run on the real ones."""
    pairs: List[Tuple[str, str]] = []
    shown: List[str] = []
    claimed: Dict[str, str] = {}
    for variable, name in output.vars:
        try:
            text = _text(name, values.data[name])
        except FormatProblem as exc:
            problems.append(f"{output.origin.child('vars').child(variable)}: {exc}")
            continue
        pairs.append((variable, text))
        shown.append(_show(name, text, secret, redact))
        claimed[variable] = f"vars.{variable}"
    for name, prefix in output.expand:
        where = output.origin.child("expand").child(name)
        mapping = values.data[name]
        assert isinstance(mapping, Mapping)
        display = _show(name, mapping, secret, redact)
        for entry in sorted(mapping):
            variable = variable_name(prefix, entry)
            if variable in claimed:
                problems.append(f"{where}: entry {entry!r} becomes {variable}, already set by {claimed[variable]}")
                continue
            if refused(variable):
                problems.append(f"{where}: entry {entry!r} would set {variable}, which is refused")
                continue
            claimed[variable] = f"expand.{name} entry {entry!r}"
            pairs.append((variable, mapping[entry]))
            shown.append(display[entry])
    for variable, text in pairs:
        try:
            QUOTERS[output.format](text)
        except FormatProblem as exc:
            problems.append(f"{output.origin}: variable {variable} {exc}")
    problems.extend(f"{output.origin}: {problem}" for problem in environment_problems(output.format, pairs))
    return [(variable, text) for (variable, _), text in zip(pairs, shown)]


def _mode(declared: Optional[int], sensitive: bool) -> int:
    if declared is not None:
        return declared
    return SENSITIVE_MODE if sensitive else DEFAULT_MODE


def _render_env(output: EnvOutput, values: Values, secret: Exposure, redact: bool, problems: List[str]) -> bytes:
    pairs = env_pairs(output, values, secret, redact, problems)
    return b"" if problems else render_env(output.format, pairs).encode("utf-8")


def _render_credentials(output: CredentialOutput, values: Values, redact: bool, problems: List[str]) -> bytes:
    """A role's keys in the format AWS clients read (formats/credentials.py). With `redact`,
    the real document is checked first, then the keys are replaced."""
    from ..formats import credentials

    try:
        return credentials.render(output.format, values.data[output.value_name], output.role, output.profile,
                                  redact=redact)
    except credentials.CredentialProblem as exc:
        problems.append(f"{output.origin}: {exc}")
        return b""


@dataclass(frozen=True)
class _Plain:
    """A template of text and `{{ name }}` only, with text values: rendered in this process,
    its size known before it is built."""

    source: str
    context: Mapping[str, Any]
    size: int


def _template_job(
    output: FileOutput, values: Values, secret: Exposure, redact: bool, problems: List[str], compile_in_child: bool
) -> Union[_Plain, template_child.Job, None]:
    where = output.origin.child("content")
    context: Dict[str, Any] = {}
    for name in sorted(output.uses):
        value = values.data[name]
        try:
            shown = value if isinstance(value, Mapping) else _text(name, value)
        except FormatProblem as exc:
            problems.append(f"{where}: {exc}")
            return None
        context[name] = _show(name, shown, secret, redact)
    size = plain_size(output.template, context)
    if size is not None:
        return _Plain(output.template, context, size)
    sensitive = secret.touches(output.uses) and not redact
    if compile_in_child:
        late = _CompiledInChild(output.template)
        return template_child.Job(pieces=partial(late.pieces, context), describe=partial(late.describe, sensitive))
    try:
        compiled = compile_template(output.template)
    except TemplateProblem as exc:
        problems.append(f"{where}: {exc}")
        return None
    return template_child.Job(pieces=partial(_pieces, compiled, context),
                              describe=partial(_describe, compiled, sensitive))


def _render_plain(plain: _Plain, budget: int, deadline: Deadline) -> Union[bytes, template_child.Failed]:
    if plain.size > template_child.OUTPUT_MAX:
        return template_child.Failed(f"stopped: the output passed {template_child.OUTPUT_MAX >> 20} MiB")
    if plain.size > budget:
        total = template_child.TOTAL_MAX >> 20
        return template_child.Failed(f"stopped: the templates' outputs together passed {total} MiB")
    if deadline.expired():
        return template_child.Failed(f"not rendered: the {deadline.seconds:g}s deadline had passed")
    try:
        return render_plain(plain.source, plain.context).encode("utf-8")
    except UnicodeEncodeError:
        return template_child.Failed("the template produced text that is not valid UTF-8 (a lone surrogate)")


def _pieces(compiled: Compiled, context: Mapping[str, Any]) -> Iterator[str]:
    return compiled.generate(context)


def _describe(compiled: Compiled, sensitive: bool, exc: BaseException) -> str:
    return failure_message(exc, compiled.literals, sensitive)


class _CompiledInChild:
    """A template compiled in the renderer child, so that Jinja2 is imported there and never
    in the calling process: for the watcher, which would otherwise keep it resident. The
    declaration's checks compiled it once already; a failure here is reported as any other."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.compiled: Optional[Compiled] = None

    def pieces(self, context: Mapping[str, Any]) -> Iterator[str]:
        self.compiled = compile_template(self.source)
        return self.compiled.generate(context)

    def describe(self, sensitive: bool, exc: BaseException) -> str:
        if isinstance(exc, TemplateProblem):
            return str(exc)
        return failure_message(exc, self.compiled.literals if self.compiled else frozenset(), sensitive)


def _default_deadline(declaration: Declaration) -> Deadline:
    return Deadline(float(declaration.settings.get("deadline", RUN_SECONDS)))


def render(
    declaration: Declaration,
    values: Values,
    *,
    redact: bool = False,
    paths: Optional[Collection[str]] = None,
    deadline: Optional[Deadline] = None,
    compile_in_child: bool = False,
) -> List[Output]:
    """Every output's bytes (only those whose path is in `paths`, when given), or a
    RenderError listing every problem. Templates are bounded by `deadline`, by default
    the declaration's deadline counted from now. With `compile_in_child`, templates that
    need Jinja2 are also compiled in the renderer child, so this process never imports it
    (the watcher: a process with no other thread importing meanwhile)."""
    chosen: List[OutputSpec] = [o for o in declaration.outputs if paths is None or o.path in paths]
    secret = exposure(declaration, values)
    problems: List[List[str]] = [[] for _ in chosen]
    contents: Dict[int, bytes] = {}
    plains: List[Tuple[int, _Plain]] = []
    jobs: List[Tuple[int, template_child.Job]] = []
    for index, output in enumerate(chosen):
        if isinstance(output, EnvOutput):
            contents[index] = _render_env(output, values, secret, redact, problems[index])
            continue
        if isinstance(output, CredentialOutput):
            contents[index] = _render_credentials(output, values, redact, problems[index])
            continue
        prepared = _template_job(output, values, secret, redact, problems[index], compile_in_child)
        if isinstance(prepared, _Plain):
            plains.append((index, prepared))
        elif prepared is not None:
            jobs.append((index, prepared))
    if plains or jobs:
        deadline = deadline or _default_deadline(declaration)
        outcomes: List[Tuple[int, template_child.Outcome]] = []
        budget = template_child.TOTAL_MAX
        for index, plain in plains:  # no Jinja2 and no child process: the size is known up front
            outcome = _render_plain(plain, budget, deadline)
            budget -= len(outcome) if isinstance(outcome, bytes) else 0
            outcomes.append((index, outcome))
        if jobs:
            run = template_child.run([job for _, job in jobs], deadline, total_max=budget)
            outcomes.extend((index, outcome) for (index, _), outcome in zip(jobs, run))
        for index, outcome in outcomes:
            if isinstance(outcome, template_child.Failed):
                problems[index].append(f"{chosen[index].origin.child('content')}: {outcome.problem}")
            else:
                contents[index] = outcome
    for index, output in enumerate(chosen):  # directly sensitive values were checked with the declaration
        if output.permissions is not None and output.permissions & 0o007 and secret.touches(output.uses):
            problems[index].append(f"{output.origin.child('permissions')}: {output.permissions:04o} lets every user "
                                   f"read a sensitive value it holds")
    flat = [problem for found in problems for problem in found]
    if flat:
        raise RenderError(flat)
    outputs = []
    for index, output in enumerate(chosen):
        sensitive = secret.touches(output.uses)
        outputs.append(
            Output(output.path, contents[index], _mode(output.permissions, sensitive), output.owner, sensitive,
                   output.origin)
        )
    return outputs
