"""Rendering: pure, exact, redacting, and refusing what a format or the sandbox cannot allow."""

from __future__ import annotations

import json
from typing import Any, Dict

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from cc_imds.config import SourceDocument, build_declaration
from cc_imds.errors import RenderError
from cc_imds.formats import ENV_FILE_MAX, ENV_STRING_MAX
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


def test_tags_cannot_set_dangerous_variables() -> None:
    with pytest.raises(RenderError, match=r"entry 'PRELOAD' would set LD_PRELOAD, which is refused"):
        run(
            {"values": {"tags": "meta-data/tags/instance/"},
             "env": [{"path": "/e", "format": "shell", "expand": {"tags": "LD_"}}]},
            {"meta-data/tags/instance/PRELOAD": b"/tmp/evil.so"},
        )


# Written out independently of the refused families in envnames.py: each must be refused
# whichever way a prefix and a tag key assemble it.
DANGEROUS = [
    "GLIBC_TUNABLES", "JAVA_TOOL_OPTIONS", "_JAVA_OPTIONS", "JDK_JAVA_OPTIONS", "LD_PRELOAD", "LD_LIBRARY_PATH",
    "LD_AUDIT", "GCONV_PATH", "LOCPATH", "NLSPATH", "HOSTALIASES", "MALLOC_CHECK_", "MALLOC_ARENA_MAX",
    "RES_OPTIONS", "LOCALDOMAIN", "TMPDIR", "BASH_ENV", "ENV", "BASH_FUNC_ls", "SHELLOPTS", "BASHOPTS", "PS4",
    "PROMPT_COMMAND", "PATH", "IFS", "CDPATH", "HOME", "NODE_OPTIONS", "NODE_PATH", "NODE_EXTRA_CA_CERTS",
    "npm_config_script_shell", "PYTHONPATH", "PYTHONSTARTUP", "PYTHONWARNINGS", "PYTHONBREAKPOINT", "PIP_INDEX_URL",
    "PERL5LIB", "PERL5OPT", "PERLLIB", "RUBYOPT", "RUBYLIB", "GEM_HOME", "DOTNET_STARTUP_HOOKS", "CORECLR_PROFILER",
    "COMPlus_EnableDiagnostics", "GODEBUG", "GOFLAGS", "GOTOOLCHAIN", "GOPROXY", "CGO_LDFLAGS", "PHPRC", "LUA_INIT",
    "ERL_AFLAGS", "CATALINA_OPTS", "MAVEN_OPTS", "CLASSPATH", "http_proxy", "HTTP_PROXY", "Https_Proxy", "no_proxy",
    "ALL_PROXY", "SSL_CERT_FILE", "SSL_CERT_DIR", "SSLKEYLOGFILE", "CURL_CA_BUNDLE", "REQUESTS_CA_BUNDLE",
    "OPENSSL_CONF", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
    "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE", "AWS_EC2_METADATA_SERVICE_ENDPOINT", "AWS_EC2_METADATA_DISABLED",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI", "AWS_CA_BUNDLE", "GIT_SSH_COMMAND", "GIT_CONFIG_PARAMETERS", "LESSOPEN",
    "PAGER", "EDITOR", "SYSTEMD_PAGER", "SUDO_ASKPASS", "KUBECONFIG", "DOCKER_HOST", "KRB5_CONFIG", "NOTIFY_SOCKET",
    "LISTEN_FDS", "XDG_CONFIG_HOME", "CC_IMDS_CONF_DIR",
]
# Characters a tag key may hold that an expanded name turns into `_`.
_UNDERSCORE_SPELLINGS = st.sampled_from(list("_-:.@+=,"))


@st.composite
def assemblies(draw: st.DrawFn) -> tuple:
    """A refused name, cut into a valid prefix and a tag key that together spell it."""
    name = draw(st.sampled_from(DANGEROUS))
    cut = draw(st.integers(1, len(name) - 1))
    prefix, rest = name[:cut], name[cut:]  # a valid prefix: the names start with a letter or _
    key = "".join(draw(_UNDERSCORE_SPELLINGS) if c == "_" else c for c in rest)
    assume(key not in (".", ".."))  # not a tag key IMDS can list
    return name, prefix, key


@settings(max_examples=300, deadline=None)
@given(assemblies())
def test_no_expansion_can_assemble_a_refused_name(assembly: tuple) -> None:
    name, prefix, key = assembly
    doc = {"values": {"tags": "meta-data/tags/instance/"},
           "env": [{"path": "/e", "format": "shell", "expand": {"tags": prefix}}]}
    assert variable_name(prefix, key) == name
    with pytest.raises(RenderError) as caught:
        run(doc, {f"meta-data/tags/instance/{key}": b"x"})
    assert caught.value.problems == [f"ud: imds.env[0].expand.tags: entry {key!r} would set {name}, which is refused"]


@pytest.mark.parametrize("name", ["TAG_Name", "TAG_Options", "APP_PATHS", "JAVA", "GOOD", "LD", "PROXY", "MY_ENV",
                                  "Path", "TAG_aws_cloudformation_stack_name", "AWS", "HTTP_PROXY_HOST",
                                  "TAG_BUILD_OPTIONS", "TAG_JAVA_OPTS", "TAG_CA_BUNDLE", "TAG_LD_PRELOAD"])
def test_ordinary_names_are_allowed(name: str) -> None:
    doc = {"values": {"tags": "meta-data/tags/instance/"},
           "env": [{"path": "/e", "format": "shell", "expand": {"tags": name[:1]}}]}
    assert run(doc, {f"meta-data/tags/instance/{name[1:]}": b"x"})["/e"].endswith(f"export {name}='x'\n".encode())
