"""Rendering: pure, exact, redacting, and refusing what a format or the sandbox cannot allow."""

from __future__ import annotations

from typing import Any, Dict

import pytest

from cc_imds.config import SourceDocument, build_declaration
from cc_imds.errors import RenderError
from cc_imds.render import REDACTED, render, variable_name
from cc_imds.resolve import TreeSource, resolve
from cc_imds.tree import MetadataTree


def run(declaration_doc: Dict[str, Any], leaves: Dict[str, bytes], redact: bool = False) -> Dict[str, bytes]:
    declaration = build_declaration([SourceDocument("ud", "imds", declaration_doc)])
    values = resolve(declaration, TreeSource(MetadataTree(leaves)))
    return {o.path: o.content for o in render(declaration, values, redact=redact)}


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


def test_tags_cannot_set_dangerous_variables() -> None:
    with pytest.raises(RenderError, match=r"entry 'PRELOAD' would set LD_PRELOAD, which is refused"):
        run(
            {"values": {"tags": "meta-data/tags/instance/"},
             "env": [{"path": "/e", "format": "shell", "expand": {"tags": "LD_"}}]},
            {"meta-data/tags/instance/PRELOAD": b"/tmp/evil.so"},
        )


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
    declaration = build_declaration([SourceDocument("ud", "imds", doc)])
    values = resolve(declaration, TreeSource(MetadataTree(leaves)))
    real = {o.path: o for o in render(declaration, values)}
    shown = {o.path: o for o in render(declaration, values, redact=True)}
    assert (real["/creds"].content, real["/creds"].mode) == (b"s3cr3t i-1\n", 0o600)
    assert (real["/plain"].mode, real["/e.json"].mode) == (0o644, 0o600)
    assert shown["/creds"].content == f"{REDACTED} i-1\n".encode()
    assert b"s3cr3t" not in b"".join(o.content for o in shown.values())


def test_templates_are_strict_and_sandboxed() -> None:
    leaves = {"meta-data/instance-id": b"i-1"}
    with pytest.raises(RenderError, match=r"refused by the template sandbox"):
        run({"values": {"iid": "meta-data/instance-id"},
             "files": [{"path": "/f", "content": "{{ iid.__class__.__mro__[1].__subclasses__() }}"}]}, leaves)
    with pytest.raises(RenderError, match=r"files\[0\].content: template error: .*has no attribute 'missing'"):
        run({"values": {"iid": "meta-data/instance-id"},
             "files": [{"path": "/f", "content": "{{ iid.missing }}"}]}, leaves)


def test_template_filters() -> None:
    out = run(
        {"values": {"owner": "meta-data/tags/instance/Owner"},
         "files": [{"path": "/f", "content": "A={{ owner | shell_quote }}\nB={{ owner | json }}\n"}]},
        {"meta-data/tags/instance/Owner": b"it's <me> & $(you)"},
    )
    assert out["/f"] == b"A='it'\\''s <me> & $(you)'\nB=\"it's <me> & $(you)\"\n"


def test_binary_user_data_cannot_go_into_text() -> None:
    with pytest.raises(RenderError, match=r"value 'ud' is binary"):
        run({"values": {"ud": "user-data"}, "files": [{"path": "/f", "content": "{{ ud }}"}]},
            {"user-data": b"\x1f\x8b\x08\x00\xff"})
