"""Templates of plain text and `{{ name }}` are rendered without Jinja2: exactly as Jinja2
renders them, which hypothesis checks on generated templates full of near-misses, and with
their size known before they are built. CI's draws are fixed (tests/conftest.py's profile);
`make explore` draws afresh, many more: what it finds is pinned here as an @example."""

from __future__ import annotations

from typing import Dict, List

from hypothesis import example, given
from hypothesis import strategies as st

from cc_imds.formats.templates import environment, plain_names, plain_size, referenced_names, render_plain

NAMES = st.sampled_from(["region", "instance_id", "x", "_y2", "true", "None", "range", "loop", "if", "not"])
PIECES = st.one_of(
    st.text(st.sampled_from(list("ab \n\r\t{}%#-|.()'\"")), max_size=6),
    st.builds(lambda n, left, right: "{{" + left + n + right + "}}", NAMES,
              st.sampled_from(["", " ", "  ", "- ", "\t"]), st.sampled_from(["", " ", " -", "\t"])),
    st.builds(lambda n: "{{ " + n + " | upper }}", NAMES),
    st.builds(lambda n: "{{ " + n + ".a }}", NAMES),
    st.sampled_from(["{% if x %}a{% endif %}", "{# c #}", "{{", "}}", "{%", "{#", "{{ }}", "{{x}}"]),
)


@given(st.lists(PIECES, max_size=8), st.text(max_size=5))
# Found by random draws: an opener at the first brace, which Jinja2's lexer takes, not the regex's.
@example(pieces=["{", "{{x}}"], value="")
@example(pieces=["a{", "{{ x }}", "}"], value="")
@example(pieces=["{{x}}", "}", "{{x}}"], value="")
@example(pieces=["{", "{", "{{x}}"], value="")
def test_plain_templates_render_exactly_as_jinja2_does(pieces: List[str], value: str) -> None:
    source = "".join(pieces)
    names = plain_names(source)
    if names is None:
        return
    from jinja2 import meta

    assert names == meta.find_undeclared_variables(environment().parse(source))
    context: Dict[str, str] = {name: f"{value}<{name}>" for name in names}
    expected = environment().from_string(source).render(**context)
    assert render_plain(source, context) == expected
    assert plain_size(source, context) == len(expected.encode("utf-8", "surrogatepass"))
    assert referenced_names(source) == names


def test_what_is_plain() -> None:
    assert plain_names("region = {{ region }}\nid = {{instance_id}}\n") == {"region", "instance_id"}
    for needs_jinja in ("{{ region | upper }}", "{{ tags.Name }}", "{% if a %}{% endif %}", "{# note #}",
                        "{{- region }}", "a\r\n{{ region }}", "{{ true }}", "{{ region",
                        # Jinja2's lexer starts at the leftmost opener: these are not `{{ name }}` there.
                        "{{{x}}", "a{{{ x }}", "{{{{x}}}}", "{{ x }}{%", "{{ x }}{#",
                        # Braces right after a substitution: Jinja2 agrees today, but they are not the simple form.
                        "{{ x }}}", "{{x}}}}"):
        assert plain_names(needs_jinja) is None, needs_jinja


def test_a_mapping_value_goes_through_jinja2() -> None:
    assert plain_size("{{ tags }}", {"tags": {"Name": "web"}}) is None
    assert plain_size("{{ tags }}", {"tags": "text"}) == 4
