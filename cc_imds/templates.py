"""The sandboxed Jinja2 environment used for `files:` templates.

Undefined names are errors (StrictUndefined), nothing is HTML-escaped, and the
sandbox refuses access to Python internals (`__class__`, `mro()` and the like).
Jinja2 is imported lazily: this module is only loaded when a declaration has files.
"""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Any, FrozenSet, Mapping

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


def referenced_names(source: str) -> FrozenSet[str]:
    """The top-level names a template reads; raises TemplateProblem on a syntax error."""
    from jinja2 import TemplateSyntaxError, meta

    env = environment()
    try:
        ast = env.parse(source)
    except TemplateSyntaxError as exc:
        raise TemplateProblem(f"template syntax error at line {exc.lineno}: {exc.message}") from None
    return frozenset(meta.find_undeclared_variables(ast))


def render_template(source: str, context: Mapping[str, Any]) -> str:
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
