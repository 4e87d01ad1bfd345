"""Rendering: exact, redacting, bounded, and refusing what a format, the sandbox or a
process environment cannot allow."""

from __future__ import annotations

import json
import os
import re
import resource
import subprocess
import sys
import time
from typing import Any, Dict, List, Optional, Tuple

import pytest

from cc_imds.deadline import Deadline
from cc_imds.declaration.build import SourceDocument, build_declaration
from cc_imds.errors import RenderError
from cc_imds.formats.env import ENV_FILE_MAX, ENV_STRING_MAX
from cc_imds.imds.tree import MetadataTree
from cc_imds.outputs import template_child
from cc_imds.outputs.render import REDACTED, Output, render, variable_name
from cc_imds.values import TreeSource, resolve
from tests.conftest import DEADLINE_SLACK, PACKAGE, cli_env


def outputs(declaration_doc: Dict[str, Any], leaves: Dict[str, bytes], redact: bool = False,
            deadline: Optional[Deadline] = None, **kwargs: Any) -> List[Output]:
    declaration = build_declaration([SourceDocument("ud", "imds", declaration_doc)])
    values = resolve(declaration, TreeSource(MetadataTree(leaves)))
    return render(declaration, values, redact=redact, deadline=deadline, **kwargs)


def run(declaration_doc: Dict[str, Any], leaves: Dict[str, bytes], redact: bool = False,
        deadline: Optional[Deadline] = None) -> Dict[str, bytes]:
    return {o.path: o.content for o in outputs(declaration_doc, leaves, redact, deadline)}


def template(content: str, leaves: Optional[Dict[str, bytes]] = None, deadline: float = 20.0) -> bytes:
    doc = {"values": {"iid": "meta-data/instance-id"}, "files": [{"path": "/f", "content": content}]}
    return run(doc, leaves or {"meta-data/instance-id": b"i-1"}, deadline=Deadline(deadline))["/f"]


TAGS = {
    "meta-data/tags/instance/Name": b"web",
    "meta-data/tags/instance/aws:cloudformation:stack-name": b"stack",
    "meta-data/tags/instance/Owner": b"$(reboot)",
}


def test_expand_names_variables_from_tag_keys() -> None:
    out = run(
        {"values": {"tags": "meta-data/tags/instance/"},
         "env": [{"path": "/e", "format": "shell", "expand": {"tags": "TAG_"}}]},
        TAGS,
    )
    assert out["/e"].decode().splitlines()[1:] == [
        "export TAG_Name='web'",
        "export TAG_Owner='$(reboot)'",
        "export TAG_aws_cloudformation_stack_name='stack'",
    ]
    assert variable_name("T_", "a.b-c:d@e") == "T_a_b_c_d_e"


def test_expansion_collisions_are_errors_naming_both() -> None:
    leaves = {"meta-data/tags/instance/a-b": b"1", "meta-data/tags/instance/a_b": b"2", "meta-data/instance-id": b"i"}
    with pytest.raises(RenderError) as caught:
        run(
            {"values": {"tags": "meta-data/tags/instance/", "iid": "meta-data/instance-id"},
             "env": [{"path": "/e", "format": "shell", "vars": {"T_a_b": "iid"}, "expand": {"tags": "T_"}}]},
            leaves,
        )
    assert caught.value.problems == [
        "ud: imds.env[0].expand.tags: entry 'a-b' becomes T_a_b, already set by vars.T_a_b",
        "ud: imds.env[0].expand.tags: entry 'a_b' becomes T_a_b, already set by vars.T_a_b",
    ]


def test_only_the_outputs_asked_for_are_rendered() -> None:
    doc = {"values": {"iid": "meta-data/instance-id", "ud": "user-data"},
           "env": [{"path": "/a", "format": "shell", "vars": {"I": "iid"}}],
           "files": [{"path": "/b", "content": "{{ iid }}"}, {"path": "/c", "content": "{{ ud }}"}]}
    leaves = {"meta-data/instance-id": b"i-1", "user-data": b"\x1f\x8b binary"}  # /c cannot render
    assert {o.path: o.content for o in outputs(doc, leaves, paths={"/a", "/b"})} == {
        "/a": b"# Written by cc-imds from instance metadata. Local changes are overwritten.\nexport I='i-1'\n",
        "/b": b"i-1",
    }
    assert outputs(doc, leaves, paths=()) == []
    with pytest.raises(RenderError, match=r"^ud: imds.files\[1\].content: value 'ud' is binary"):
        outputs(doc, leaves, paths={"/c"})


def test_unrepresentable_values_are_errors_naming_the_variable_not_the_value() -> None:
    with pytest.raises(RenderError) as caught:
        run(
            {"values": {"a": "meta-data/a", "b": "meta-data/b"},
             "env": [{"path": "/e", "format": "systemd", "vars": {"A": "a", "B": "b"}}]},
            {"meta-data/a": b"secret\nline", "meta-data/b": b"fine"},
        )
    assert caught.value.problems == [
        "ud: imds.env[0]: variable A contains a newline, which the systemd format cannot carry; use shell or json"
    ]
    assert "secret" not in str(caught.value)


def test_sensitive_files_default_to_0600_and_previews_redact() -> None:
    doc = {
        "values": {"key": {"path": "meta-data/iam/security-credentials/r", "key": "SecretAccessKey"},
                   "iid": "meta-data/instance-id"},
        "files": [{"path": "/creds", "content": "{{ key }} {{ iid }}\n"}, {"path": "/plain", "content": "{{ iid }}\n"}],
        "env": [{"path": "/e.json", "format": "json", "vars": {"K": "key"}}],
    }
    leaves = {"meta-data/iam/security-credentials/r": b'{"SecretAccessKey": "s3cr3t"}', "meta-data/instance-id": b"i-1"}
    real = {o.path: o for o in outputs(doc, leaves)}
    shown = {o.path: o for o in outputs(doc, leaves, redact=True)}
    assert (real["/creds"].content, real["/creds"].mode) == (b"s3cr3t i-1\n", 0o600)
    assert (real["/plain"].mode, real["/e.json"].mode) == (0o644, 0o600)
    assert shown["/creds"].content == f"{REDACTED} i-1\n".encode()
    assert json.loads(shown["/e.json"].content) == {"K": REDACTED}
    assert b"s3cr3t" not in b"".join(o.content for o in shown.values())


def test_a_sensitive_value_stays_hidden_when_reached_through_another_name() -> None:
    # `tags` is not marked sensitive, but it holds the Password tag, which is.
    doc = {"values": {"tags": "meta-data/tags/instance/",
                      "pw": {"path": "meta-data/tags/instance/Password", "sensitive": True},
                      "same": "meta-data/tags/instance/Password"},
           "env": [{"path": "/tags.sh", "format": "shell", "expand": {"tags": "T_"}}],
           "files": [{"path": "/t", "content": "{{ tags.Name }} {{ tags.Password }} {{ same }}\n"}]}
    leaves = {"meta-data/tags/instance/Name": b"web", "meta-data/tags/instance/Password": b"hunter2hunter2"}
    shown = {o.path: o for o in outputs(doc, leaves, redact=True)}
    assert shown["/tags.sh"].content.decode().splitlines()[1:] == ["export T_Name='web'",
                                                                   f"export T_Password='{REDACTED}'"]
    assert shown["/t"].content == f"web {REDACTED} {REDACTED}\n".encode()
    assert {o.path: o.mode for o in outputs(doc, leaves)} == {"/tags.sh": 0o600, "/t": 0o600}
    doc["env"][0]["permissions"] = "0644"
    with pytest.raises(RenderError) as caught:
        outputs(doc, leaves)
    assert caught.value.problems == [
        "ud: imds.env[0].permissions: 0644 lets every user read a sensitive value it holds"
    ]


def test_templates_are_strict_and_sandboxed() -> None:
    with pytest.raises(RenderError, match=r"files\[0\].content: refused by the template sandbox at line 1: "
                                          r"access to attribute '__class__' of 'str' object is unsafe"):
        template("{{ iid.__class__.__mro__[1].__subclasses__() }}")
    with pytest.raises(RenderError, match=r"files\[0\].content: template error at line 2: "
                                          r"'str object' has no attribute 'missing'$"):
        template("ok\n{{ iid.missing }}")


def test_template_filters() -> None:
    out = run(
        {"values": {"owner": "meta-data/tags/instance/Owner"},
         "files": [{"path": "/f", "content": "A={{ owner | shell_quote }}\nB={{ owner | json }}\n"}]},
        {"meta-data/tags/instance/Owner": b"it's <me> & $(you)"},
    )
    assert out["/f"] == b"A='it'\\''s <me> & $(you)'\nB=\"it's <me> & $(you)\"\n"


def test_builtin_filters_and_operators_still_work() -> None:
    # Every filter takes the context and every operator is intercepted (no folding at
    # compile time): what templates compute must not change.
    source = ("{{ 'a,b'.split(',')|join('-')|upper }} {{ [3, 1, 2]|sort|map('string')|join }} {{ 7 // 2 }} "
              "{{ 2 ** 10 }} {{ -3 + 1 }} {{ 'ab' * 2 }} {{ '%05d'|format(42) }} {{ 'x'|center(5) }}|"
              "{{ {'b': 1, 'a': 2}|dictsort|first|first }} {{ [1, 2, 3]|select('odd')|list }} {{ 10 / 4 }}")
    assert template(source) == b"A-B 123 3 1024 -2 abab 00042   x  |a [1, 3] 2.5"


def test_binary_user_data_cannot_go_into_text() -> None:
    with pytest.raises(RenderError, match=r"value 'ud' is binary"):
        run({"values": {"ud": "user-data"}, "files": [{"path": "/f", "content": "{{ ud }}"}]},
            {"user-data": b"\x1f\x8b\x08\x00\xff"})


# -- bounded rendering -----------------------------------------------------------------
def test_a_runaway_template_is_stopped_at_the_deadline() -> None:
    started = time.monotonic()
    with pytest.raises(RenderError) as caught:
        # Loops that write nothing: the deadline, not the output limit, has to stop them.
        template("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}done",
                 deadline=1.0)
    assert time.monotonic() - started < 1.0 + DEADLINE_SLACK  # docs/declaration.md: within the slack
    assert caught.value.problems == ["ud: imds.files[0].content: stopped at the 1s deadline (too slow)"]


@pytest.mark.parametrize("source", [
    "{{ '%*d'|format(1000000000, 1) }}",
    "{{ 'x'|center(1000000000) }}",
    "{{ 'a\nb'|indent(1000000000) }}",
    "{{ 'x'.ljust(1000000000) }}",
    "{% set ns = namespace(s='x') %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s|length }}",
])
def test_a_template_cannot_take_more_memory_than_allowed(source: str) -> None:
    with pytest.raises(RenderError) as caught:
        template(source)
    assert caught.value.problems == [
        f"ud: imds.files[0].content: stopped: it needed more than {template_child.MEMORY_ALLOWANCE >> 20} MiB of memory"
    ]


@pytest.mark.parametrize("source", ["{{ 'x' * 10**9 }}", "{{ [0] * 10**9 }}", "{{ 10 ** (10 ** 10) }}",
                                    "{{ (10 ** 1000) * (10 ** 20000) }}"])
def test_operators_refuse_to_build_huge_values(source: str) -> None:
    with pytest.raises(RenderError, match=r"refused by the template sandbox at line 1: `\*\*?` would build a value "
                                          r"over the size limit"):
        template(source)


def test_an_output_cannot_pass_the_size_limit() -> None:
    with pytest.raises(RenderError) as caught:
        template("{% for i in range(20000) %}{{ 'y' * 1000 }}{% endfor %}")
    assert caught.value.problems == [
        f"ud: imds.files[0].content: stopped: the output passed {template_child.OUTPUT_MAX >> 20} MiB"
    ]
    # Just under the limit is fine, and comes back byte for byte.
    assert template("{% for i in range(16) %}{{ 'y' * 1048576 }}{% endfor %}") == b"y" * template_child.OUTPUT_MAX


def test_a_failing_template_does_not_stop_the_others() -> None:
    doc = {"values": {"iid": "meta-data/instance-id"},
           "files": [{"path": "/big", "content": "{% for i in range(20000) %}{{ 'y' * 1000 }}{% endfor %}"},
                     {"path": "/oom", "content": "{{ 'x'|center(1000000000) }}"},
                     {"path": "/rec", "content": "{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}"},
                     {"path": "/sur", "content": "{{ '\\ud800' }}"},
                     {"path": "/ok", "content": "{{ iid }}"}]}
    with pytest.raises(RenderError) as caught:
        run(doc, {"meta-data/instance-id": b"i-1"})
    assert caught.value.problems == [
        "ud: imds.files[0].content: stopped: the output passed 16 MiB",
        "ud: imds.files[1].content: stopped: it needed more than 256 MiB of memory",
        "ud: imds.files[2].content: template recursion too deep at line 1",
        "ud: imds.files[3].content: the template produced text that is not valid UTF-8 (a lone surrogate)",
    ]
    assert run({**doc, "files": doc["files"][4:]}, {"meta-data/instance-id": b"i-1"}) == {"/ok": b"i-1"}


def test_plain_templates_need_no_child_and_are_bounded_before_they_are_built(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_child(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a plain template started the renderer")

    monkeypatch.setattr(template_child, "run", no_child)
    doc = {"values": {"big": "meta-data/tags/instance/Big", "iid": "meta-data/instance-id"},
           "files": [{"path": "/ok", "content": "id = {{ iid }}\nsize = {{iid}}\n"},
                     {"path": "/one", "content": "{{ big }}" * 5},
                     {"path": f"/many{0}", "content": "{{ big }}" * 3}]}
    doc["files"] += [{"path": f"/many{i}", "content": "{{ big }}" * 3} for i in range(1, 6)]
    leaves = {"meta-data/tags/instance/Big": b"b" * (4 * 1024 * 1024), "meta-data/instance-id": b"i-1"}
    with pytest.raises(RenderError) as caught:
        run(doc, leaves)
    assert caught.value.problems == [
        "ud: imds.files[1].content: stopped: the output passed 16 MiB",
        "ud: imds.files[7].content: stopped: the templates' outputs together passed 64 MiB",
    ]
    assert run({**doc, "files": doc["files"][:1]}, leaves) == {"/ok": b"id = i-1\nsize = i-1\n"}


def test_after_a_passed_deadline_nothing_is_rendered() -> None:
    doc = {"values": {"iid": "meta-data/instance-id"},
           "files": [{"path": "/a", "content": "{{ iid }}"}, {"path": "/b", "content": "{{ iid }}"}]}
    deadline = Deadline(0.001)
    time.sleep(0.01)
    with pytest.raises(RenderError) as caught:
        run(doc, {"meta-data/instance-id": b"i-1"}, deadline=deadline)
    assert caught.value.problems == [
        "ud: imds.files[0].content: not rendered: the 0.001s deadline had passed",
        "ud: imds.files[1].content: not rendered: the 0.001s deadline had passed",
    ]


def validate_in_a_child(source: str) -> Tuple[int, int]:
    """Validate a declaration with this template in a fresh process: its exit status and
    peak memory in MiB. Capped, so that a validation that evaluates the template fails the
    test instead of taking the machine's memory or time."""
    code = ("import sys; from cc_imds.declaration.build import SourceDocument, build_declaration; "
            "build_declaration([SourceDocument('ud', 'imds', {'values': {}, 'files': [{'path': '/f', 'content': "
            "sys.argv[1]}]})])")
    limit = 3 * 1024 * 1024 * 1024
    child = subprocess.Popen([sys.executable, "-c", code, source], env=cli_env(), cwd=PACKAGE.parent,
                             preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_AS, (limit, limit)))
    started = time.monotonic()
    while True:
        pid, status, usage = os.wait4(child.pid, os.WNOHANG)
        if pid:
            child.returncode = os.waitstatus_to_exitcode(status)
            return child.returncode, usage.ru_maxrss // 1024
        if time.monotonic() - started > 30:
            child.kill()
            child.wait(timeout=30)
            pytest.fail("validation was still running after 30 s")
        time.sleep(0.02)


@pytest.mark.parametrize("source", ["{{ 'x' * 10**9 }}", "{{ 'x'|center(1000000000) }}", "{{ 10 ** (10 ** 10) }}",
                                    "{% set a = 'ab' * 400000000 %}", "{{ ('a' ~ 'b')|indent(1000000000) }}"])
def test_validating_a_template_evaluates_nothing(source: str) -> None:
    # Jinja2 folds constant expressions while compiling, and listing a template's names
    # compiles it: these took a gigabyte or never ended inside `validate`.
    # Evaluating any of them needs 800 MiB or more; validating needs about 30. The bound sits
    # between, away from both: one loaded run peaked at 161 MiB without evaluating anything.
    status, peak = validate_in_a_child(source)
    assert status == 0 and peak < 500, (status, peak)


# -- sensitive values in template errors ---------------------------------------------------
CREDENTIALS = json.dumps({"Code": "Success", "AccessKeyId": "ASIAEXAMPLEEXAMPLE",
                          "SecretAccessKey": "wJalrXUtnFEMI/K7MDENG+bPxRfiCY", "Token": "IQoJb3JpZ2luX2VjE//\n=="},
                         indent=2).encode()


@pytest.mark.parametrize("source", [
    "{{ {}[creds] }}", "{{ tags[creds] }}", "{{ tags|attr(creds) }}", "{{ creds|attr(creds) }}",
    "{{ {}[creds[20:60]] }}", "{{ {}[creds|reverse|join] }}", "{{ {}[creds|upper] }}", "{{ tags[key] }}",
    "{{ {}[key ~ 'x'] }}", "{{ ('{' ~ key ~ '}').format() }}", "{{ ('{' ~ creds[40:80] ~ '}').format() }}",
])
def test_template_errors_hold_nothing_computed_from_a_sensitive_value(source: str) -> None:
    doc = {"values": {"creds": "meta-data/iam/security-credentials/app", "tags": "meta-data/tags/instance/",
                      "key": {"path": "meta-data/iam/security-credentials/app", "key": "SecretAccessKey"}},
           "files": [{"path": "/f", "content": source}]}
    with pytest.raises(RenderError) as caught:
        run(doc, {"meta-data/iam/security-credentials/app": CREDENTIALS, **TAGS})
    message = str(caught.value)
    assert re.fullmatch(r"ud: imds.files\[0\].content: (template error|template raised \w+) at line 1(: .*)?",
                        message), message
    for chunk in re.findall(r"[A-Za-z0-9+/]{6,}", CREDENTIALS.decode()):
        assert chunk not in message and chunk[::-1] not in message and chunk.upper() not in message


def test_numbers_computed_from_a_sensitive_value_are_not_shown() -> None:
    doc = {"values": {"pin": {"path": "meta-data/tags/instance/Pin", "sensitive": True}},
           "files": [{"path": "/a", "content": "{{ [][(pin|int) + 1] }}"},
                     {"path": "/b", "content": "{{ pin }}{{ [1][3] }}"},
                     {"path": "/c", "content": "{{ {}[(pin|int, 7)] }}"}]}
    with pytest.raises(RenderError) as caught:
        run(doc, {"meta-data/tags/instance/Pin": b"123456"})
    assert caught.value.problems == [
        "ud: imds.files[0].content: template error at line 1: list object has no element <computed>",
        "ud: imds.files[1].content: template error at line 1: list object has no element 3",
        "ud: imds.files[2].content: template error at line 1: dict object has no element <computed>",
    ]


def test_names_the_template_spells_out_are_still_shown() -> None:
    doc = {"values": {"creds": "meta-data/iam/security-credentials/app", "tags": "meta-data/tags/instance/"},
           "files": [{"path": "/f", "content": "{{ creds }}{{ tags.Nmae }}"}]}
    with pytest.raises(RenderError, match=r"template error at line 1: 'dict object' has no attribute 'Nmae'$"):
        run(doc, {"meta-data/iam/security-credentials/app": CREDENTIALS, **TAGS})


# -- env files in a process environment, refused names ---------------------------------------
def test_a_value_too_long_for_a_process_environment_is_refused() -> None:
    leaves = {"meta-data/tags/instance/Big": b"v" * 200_000, "meta-data/tags/instance/Ok": b"v" * 1000}
    doc = {"values": {"tags": "meta-data/tags/instance/"},
           "env": [{"path": f"/e.{fmt}", "format": fmt, "expand": {"tags": "T_"}}
                   for fmt in ("shell", "systemd", "dotenv")]}
    with pytest.raises(RenderError) as caught:
        run(doc, leaves)
    assert caught.value.problems == [
        f"ud: imds.env[{i}]: variable T_Big would be a 200007-byte environment string (NAME=value); Linux allows at "
        f"most {ENV_STRING_MAX} bytes, beyond which no program can be started with it"
        for i in range(3)
    ]
    json_only = {"values": {"tags": "meta-data/tags/instance/"},
                 "env": [{"path": "/e.json", "format": "json", "expand": {"tags": "T_"}}]}
    assert json.loads(run(json_only, leaves)["/e.json"])["T_Big"] == "v" * 200_000


def test_an_env_file_may_take_half_of_arg_max() -> None:
    count = ENV_FILE_MAX // 100_000 + 1
    leaves = {f"meta-data/tags/instance/V{i:02}": b"v" * (100_000 - len("T_V00=") - 1) for i in range(count)}
    doc = {"values": {"tags": "meta-data/tags/instance/"},
           "env": [{"path": "/e", "format": "shell", "expand": {"tags": "T_"}}]}
    with pytest.raises(RenderError) as caught:
        run(doc, leaves)
    assert caught.value.problems == [
        f"ud: imds.env[0]: its variables would take {count * 100_000} bytes of a process environment; at most "
        f"{ENV_FILE_MAX} are allowed per file (by default Linux allows {2 * ENV_FILE_MAX} for environment and "
        f"arguments together)"
    ]
    del leaves["meta-data/tags/instance/V00"]
    assert run(doc, leaves)["/e"].count(b"\nexport T_V") == count - 1
