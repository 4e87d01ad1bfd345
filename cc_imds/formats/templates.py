"""The sandboxed Jinja2 environment used for `files:` templates.

Undefined names are errors (StrictUndefined), nothing is HTML-escaped, and the
sandbox refuses access to Python internals (`__class__`, `mro()` and the like).
Jinja2 is imported lazily: this module is only loaded when a declaration has files,
and a template that is only text and `{{ name }}` substitutions of text values is
rendered without it, exactly as Jinja2 renders it (a property test compares the two),
in the calling process: its output's size is known before it is built.

Two things Jinja2 would otherwise do in the calling process, unbounded:
- Constant folding. Compiling, and even listing the names a template reads, evaluates
  constant expressions: `{{ 'x' * 10**10 }}` or `{{ ''|center(10**9) }}` would be
  computed while *validating* the declaration. So every operator is intercepted and
  every filter takes the context, which makes both impossible to fold: they run only
  when the template is rendered, in the bounded child process (outputs/template_child.py).
- Error messages quoting values. A template that uses a sensitive value as a key or an
  attribute name fails with that value in the message. `failure_message` keeps only the
  quoted names the template itself spells out.
"""

from __future__ import annotations

import ast
import json
import operator
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Callable, Dict, FrozenSet, Iterator, List, Mapping, Optional, Tuple

from .env import FormatProblem, quote_shell, quote_systemd

# In-process guards, for a clear message before the child's hard limits are reached:
# no operator may build a sequence (string, list) longer than one output may be.
MAX_ITEMS = 16 * 1024 * 1024
MAX_INT_BITS = 1 << 16  # about 20,000 decimal digits; Python refuses to print more than 4,300

_BINOPS: Dict[str, Callable[[Any, Any], Any]] = {
    "+": operator.add,
    "-": operator.sub,
    "*": operator.mul,
    "/": operator.truediv,
    "//": operator.floordiv,
    "%": operator.mod,
    "**": operator.pow,
}
_UNOPS: Dict[str, Callable[[Any], Any]] = {"+": operator.pos, "-": operator.neg}
_SEQUENCES = (str, bytes, list, tuple)


class TemplateProblem(ValueError):
    """A template that cannot be parsed or rendered."""


class TemplateLimit(Exception):
    """An operator refused to build something too big (in-process guard)."""


@dataclass(frozen=True)
class Compiled:
    """A template ready to render, and the names and strings it spells out."""

    template: Any
    literals: FrozenSet[str]

    def generate(self, context: Mapping[str, Any]) -> Iterator[str]:
        return iter(self.template.generate(**context))


def _json_filter(value: Any) -> str:
    # Jinja2's own `tojson` HTML-escapes <, >, & and ', which is wrong in config files.
    return json.dumps(value, ensure_ascii=False)


def _too_big(operator_name: str, left: Any, right: Any) -> bool:
    if operator_name == "*":
        for sequence, count in ((left, right), (right, left)):
            if isinstance(sequence, _SEQUENCES) and isinstance(count, int):
                return len(sequence) * count > MAX_ITEMS
        if isinstance(left, int) and isinstance(right, int):
            return left.bit_length() + right.bit_length() > MAX_INT_BITS
    elif operator_name == "+":
        if isinstance(left, _SEQUENCES) and isinstance(right, _SEQUENCES):
            return len(left) + len(right) > MAX_ITEMS
    elif operator_name == "**" and isinstance(left, int) and isinstance(right, int) and right > 0:
        return abs(left) > 1 and max(left.bit_length() - 1, 1) * right > MAX_INT_BITS
    return False


def _pass_kind(func: Any) -> Optional[str]:
    """What a filter wants first: 'context', 'eval_context', 'environment' or nothing."""
    marker = getattr(func, "jinja_pass_arg", None)  # Jinja2 3.x
    if marker is not None:
        return str(marker.name)
    for kind, attribute in (  # Jinja2 2.11
        ("context", "contextfilter"),
        ("eval_context", "evalcontextfilter"),
        ("environment", "environmentfilter"),
    ):
        if getattr(func, attribute, False) is True:
            return kind
    return None


def _unfoldable(func: Callable[..., Any], pass_context: Callable[[Any], Any]) -> Any:
    """The same filter, taking the context: Jinja2 never evaluates those at compile time."""
    kind = _pass_kind(func)

    def call(context: Any, *args: Any, **kwargs: Any) -> Any:
        if kind == "context":
            return func(context, *args, **kwargs)
        if kind == "eval_context":
            return func(context.eval_ctx, *args, **kwargs)
        if kind == "environment":
            return func(context.environment, *args, **kwargs)
        return func(*args, **kwargs)

    return pass_context(call)


@lru_cache(maxsize=1)
def environment() -> Any:
    import jinja2
    from jinja2.sandbox import SandboxedEnvironment

    pass_context = getattr(jinja2, "pass_context", None) or getattr(jinja2, "contextfilter")  # noqa: B009 - 2.11

    class Environment(SandboxedEnvironment):  # type: ignore[misc]
        intercepted_binops = frozenset(_BINOPS)
        intercepted_unops = frozenset(_UNOPS)

        def call_binop(self, context: Any, operator_name: str, left: Any, right: Any) -> Any:
            if _too_big(operator_name, left, right):
                raise TemplateLimit(f"`{operator_name}` would build a value over the size limit")
            return _BINOPS[operator_name](left, right)

        def call_unop(self, context: Any, operator_name: str, arg: Any) -> Any:
            return _UNOPS[operator_name](arg)

    env = Environment(
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        keep_trailing_newline=True,
        trim_blocks=True,  # a line holding only a {% tag %} leaves no blank line behind
        lstrip_blocks=True,
        cache_size=0,  # templates come from strings; no loader cache (and its lock) to share with a child
    )
    env.filters["shell_quote"] = quote_shell
    env.filters["systemd_quote"] = quote_systemd
    env.filters["json"] = _json_filter
    env.filters = {name: _unfoldable(func, pass_context) for name, func in env.filters.items()}
    return env


def _parse(source: str) -> Any:
    from jinja2 import TemplateSyntaxError

    try:
        return environment().parse(source)
    except TemplateSyntaxError as exc:
        raise TemplateProblem(f"template syntax error at line {exc.lineno}: {exc.message}") from None
    except RecursionError:
        raise TemplateProblem("template nested too deeply") from None
    except (MemoryError, ValueError, OverflowError) as exc:  # an integer literal of 5,000 digits, say
        raise TemplateProblem(f"template cannot be parsed: {type(exc).__name__}") from None


_SUBSTITUTION = re.compile(r"\{\{ *([A-Za-z_][A-Za-z0-9_]*) *\}\}")
# Where Jinja2's lexer leaves text: the leftmost `{{`, `{%` or `{#`.
_OPENER = re.compile(r"\{[{%#]")
# Names that mean something else to Jinja2: literals, operators, its globals and loop helpers.
_JINJA_NAMES = frozenset(
    "true false none True False None and or not in is if else range dict lipsum cycler joiner namespace "
    "loop self caller varargs kwargs".split()
)


def _plain_parts(source: str) -> Optional[Tuple[List[str], List[str]]]:
    """A plain template split as Jinja2's lexer splits it: texts[0] names[0] texts[1] ...
    texts[-1]; None for anything that needs Jinja2.

    Conservative: every place the lexer would leave text (the leftmost `{{`, `{%` or `{#`) must
    start exactly `{{ name }}`, so `{{{x}}` (an opener at the first brace) is not plain; nor is
    a `}` right after a substitution, nor a carriage return (which Jinja2 turns into a newline)."""
    if "\r" in source:
        return None
    texts: List[str] = []
    names: List[str] = []
    position = 0
    while True:
        opener = _OPENER.search(source, position)
        if opener is None:
            break
        substitution = _SUBSTITUTION.match(source, opener.start())
        if substitution is None or source.startswith("}", substitution.end()):
            return None
        texts.append(source[position:opener.start()])
        names.append(substitution.group(1))
        position = substitution.end()
    texts.append(source[position:])
    if _JINJA_NAMES.intersection(names):
        return None
    return texts, names


def plain_names(source: str) -> Optional[FrozenSet[str]]:
    """The names of a template made only of text and `{{ name }}`, or None for anything that
    needs Jinja2: blocks, comments, filters, attributes, whitespace control, carriage returns,
    and braces next to a substitution that Jinja2 would read otherwise (see _plain_parts)."""
    parts = _plain_parts(source)
    return None if parts is None else frozenset(parts[1])


def plain_size(source: str, context: Mapping[str, Any]) -> Optional[int]:
    """The UTF-8 size of a plain template's output with these values, computed without
    building it; None when it needs Jinja2 (not plain, or a value is not text)."""
    parts = _plain_parts(source)
    if parts is None:
        return None
    texts, names = parts
    if not all(isinstance(context.get(name), str) for name in names):
        return None
    sizes = {name: len(context[name].encode("utf-8", "surrogatepass")) for name in set(names)}
    return sum(len(text.encode("utf-8", "surrogatepass")) for text in texts) + sum(sizes[name] for name in names)


def render_plain(source: str, context: Mapping[str, Any]) -> str:
    """A plain template (plain_size is not None) rendered as Jinja2 renders it."""
    parts = _plain_parts(source)
    if parts is None:
        raise ValueError("not a plain template")
    texts, names = parts
    return "".join(text + str(context[name]) for text, name in zip(texts, names)) + texts[-1]


def referenced_names(source: str) -> FrozenSet[str]:
    """The top-level names a template reads; raises TemplateProblem if it cannot be compiled."""
    plain = plain_names(source)
    if plain is not None:
        return plain
    from jinja2 import TemplateSyntaxError, meta

    try:
        return frozenset(meta.find_undeclared_variables(_parse(source)))
    except TemplateSyntaxError as exc:  # found while compiling: an unknown filter or test, say
        raise TemplateProblem(f"template error at line {exc.lineno}: {exc.message}") from None
    except RecursionError:
        raise TemplateProblem("template nested too deeply") from None


def _literals(tree: Any) -> FrozenSet[str]:
    """Everything the template spells out: names, attributes, string constants, and numbers
    (as Python writes them: `3`, `1.5`)."""
    from jinja2 import nodes

    found = set()
    for node in tree.find_all(nodes.Node):
        for field in node.fields:
            value = getattr(node, field, None)
            if isinstance(value, str):
                found.add(value)
            elif isinstance(value, (int, float)) and not isinstance(value, bool):
                found.add(repr(value))
    return frozenset(found)


@lru_cache(maxsize=64)
def compile_template(source: str) -> Compiled:
    """Compile once per source. Safe to call in the parent: nothing is evaluated."""
    tree = _parse(source)
    _jinja_errors()  # resolved here, so the renderer child never imports
    try:
        template = environment().from_string(tree)
    except RecursionError:
        raise TemplateProblem("template nested too deeply") from None
    except Exception as exc:  # noqa: BLE001 - the compiler may refuse a template in many ways
        raise TemplateProblem(f"template cannot be compiled: {type(exc).__name__}") from None
    return Compiled(template, _literals(tree))


# -- failures -------------------------------------------------------------------------
_QUOTED = re.compile(r"""'(?:[^'\\\n]|\\.)*'|"(?:[^"\\\n]|\\.)*\"""")
# Jinja2 writes a missing item's key as its repr, unquoted when it is not a string: `has no element 123457`.
_ELEMENT = re.compile(r"(?<= has no element )(.+)$")
_NUMBER = re.compile(r"(?<![\w.'\"<])-?\d+(?:\.\d+)?(?:e[+-]?\d+)?(?![\w.'\">])")
_TYPE_WORDS = frozenset({"None", "Ellipsis"})
COMPUTED = "<computed>"


def _public(message: str, literals: FrozenSet[str]) -> str:
    """`message` with everything the template does not spell out replaced by COMPUTED.

    Jinja2 quotes the names and keys it could not find, whatever the template computed them
    from (a sensitive value, a slice of it, its reverse, its length...). What the template
    spells out is public (the declaration holds it), as are type descriptions such as 'dict
    object'.
    """

    def quoted(match: re.Match[str]) -> str:
        try:
            inner = ast.literal_eval(match.group(0))
        except (ValueError, SyntaxError):
            return COMPUTED
        followed_by = message[match.end() : match.end() + 7]
        if inner in literals or inner in _TYPE_WORDS or inner.endswith(" object") or followed_by == " object":
            return match.group(0)
        return COMPUTED

    def element(match: re.Match[str]) -> str:
        shown = match.group(0)
        if _QUOTED.fullmatch(shown) or shown in literals:
            return shown
        return COMPUTED

    def number(match: re.Match[str]) -> str:
        return match.group(0) if match.group(0) in literals else COMPUTED

    message = _ELEMENT.sub(element, message)
    return _NUMBER.sub(number, _QUOTED.sub(quoted, message))


def _template_line(exc: BaseException) -> str:
    line = None
    tb = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == "<template>":
            line = tb.tb_lineno
        tb = tb.tb_next
    return f" at line {line}" if line is not None else ""


@lru_cache(maxsize=1)
def _jinja_errors() -> Tuple[Any, Any]:
    from jinja2 import TemplateError
    from jinja2.exceptions import SecurityError

    return TemplateError, SecurityError


def failure_message(exc: BaseException, literals: FrozenSet[str], sensitive: bool) -> str:
    """One line saying why rendering failed. With a sensitive value in the context, the
    message holds nothing the template computed: only names it spells out, and the type
    of a Python exception, not its text. Runs in the renderer child: imports nothing."""
    TemplateError, SecurityError = _jinja_errors()  # noqa: N806 - classes
    where = _template_line(exc)

    def text(message: str) -> str:
        message = " ".join(message.split())  # one line
        return _public(message, literals) if sensitive else message

    if isinstance(exc, TemplateLimit):
        return f"refused by the template sandbox{where}: {exc}"
    if isinstance(exc, SecurityError):
        return f"refused by the template sandbox{where}: {text(str(exc))}"
    if isinstance(exc, FormatProblem):
        return f"a filter refused a value{where}: {exc}"
    if isinstance(exc, TemplateError):
        return f"template error{where}: {text(exc.message or type(exc).__name__)}"
    if isinstance(exc, RecursionError):
        return f"template recursion too deep{where}"
    if isinstance(exc, UnicodeEncodeError):
        return f"the template produced text that is not valid UTF-8 (a lone surrogate){where}"
    if sensitive or not str(exc):
        return f"template raised {type(exc).__name__}{where}"
    return f"template raised {type(exc).__name__}{where}: {text(str(exc))}"
