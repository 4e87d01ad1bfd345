"""The sandboxed Jinja2 environment used for `files:` templates.

Undefined names are errors (StrictUndefined), nothing is HTML-escaped, and the
sandbox refuses access to Python internals (`__class__`, `mro()` and the like).
Jinja2 is imported lazily: this module is only loaded when a declaration has files,
and a template that is only text and `{{ name }}` substitutions of text values is
rendered without it, exactly as Jinja2 renders it (a property test compares the two).
"""

from __future__ import annotations

import json
import re
from functools import lru_cache
from typing import Any, FrozenSet, Mapping, Optional

from .formats import FormatProblem, quote_shell, quote_systemd


class TemplateProblem(ValueError):
    """A template that cannot be parsed or rendered."""


def _json_filter(value: Any) -> str:
    # Jinja2's own `tojson` HTML-escapes <, >, & and ', which is wrong in config files.
    return json.dumps(value, ensure_ascii=False)


@lru_cache(maxsize=1)
def environment() -> Any:
    from jinja2 import StrictUndefined
    from jinja2.sandbox import SandboxedEnvironment

    env = SandboxedEnvironment(
        undefined=StrictUndefined,
        autoescape=False,
        keep_trailing_newline=True,
        trim_blocks=True,  # a line holding only a {% tag %} leaves no blank line behind
        lstrip_blocks=True,
    )
    env.filters["shell_quote"] = quote_shell
    env.filters["systemd_quote"] = quote_systemd
    env.filters["json"] = _json_filter
    return env


_SUBSTITUTION = re.compile(r"\{\{ *([A-Za-z_][A-Za-z0-9_]*) *\}\}")
# Names that mean something else to Jinja2: literals, operators, its globals and loop helpers.
_JINJA_NAMES = frozenset(
    "true false none True False None and or not in is if else range dict lipsum cycler joiner namespace "
    "loop self caller varargs kwargs".split()
)


def plain_names(source: str) -> Optional[FrozenSet[str]]:
    """The names of a template made only of text and `{{ name }}`, or None for anything that
    needs Jinja2: blocks, comments, filters, attributes, whitespace control, and carriage
    returns (which Jinja2 turns into newlines)."""
    if "\r" in source:
        return None
    names = _SUBSTITUTION.findall(source)
    rest = _SUBSTITUTION.sub("", source)
    if "{{" in rest or "{%" in rest or "{#" in rest or _JINJA_NAMES.intersection(names):
        return None
    return frozenset(names)


def referenced_names(source: str) -> FrozenSet[str]:
    """The top-level names a template reads; raises TemplateProblem on a syntax error."""
    plain = plain_names(source)
    if plain is not None:
        return plain
    from jinja2 import TemplateSyntaxError, meta

    env = environment()
    try:
        ast = env.parse(source)
    except TemplateSyntaxError as exc:
        raise TemplateProblem(f"template syntax error at line {exc.lineno}: {exc.message}") from None
    return frozenset(meta.find_undeclared_variables(ast))


def render_template(source: str, context: Mapping[str, Any]) -> str:
    plain = plain_names(source)
    if plain is not None and all(isinstance(context.get(name), str) for name in plain):
        return _SUBSTITUTION.sub(lambda match: str(context[match.group(1)]), source)
    from jinja2 import TemplateError
    from jinja2.exceptions import SecurityError

    env = environment()
    try:
        return str(env.from_string(source).render(**context))
    except SecurityError as exc:
        raise TemplateProblem(f"refused by the template sandbox: {exc}") from None
    except FormatProblem as exc:
        raise TemplateProblem(f"a filter refused a value: {exc}") from None
    except TemplateError as exc:
        raise TemplateProblem(f"template error: {exc.message}") from None
    except Exception as exc:  # noqa: BLE001 - a template may raise anything; its message may quote a value
        raise TemplateProblem(f"template raised {type(exc).__name__}") from None
