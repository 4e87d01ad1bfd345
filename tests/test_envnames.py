"""Refused variable names: no prefix and tag key can assemble one, and ordinary names pass.
Apart from tests/test_render.py, which the RPM's %check runs without hypothesis."""

from __future__ import annotations

from typing import Dict

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from cc_imds.declaration.build import SourceDocument, build_declaration
from cc_imds.errors import RenderError
from cc_imds.imds.tree import MetadataTree
from cc_imds.outputs.render import render, variable_name
from cc_imds.values import TreeSource, resolve
from tests.conftest import examples


def expand(prefix: str, tags: Dict[str, bytes]) -> bytes:
    """A shell file expanding these tags with this prefix."""
    doc = {"values": {"tags": "meta-data/tags/instance/"},
           "env": [{"path": "/e", "format": "shell", "expand": {"tags": prefix}}]}
    declaration = build_declaration([SourceDocument("ud", "imds", doc)])
    leaves = {f"meta-data/tags/instance/{key}": value for key, value in tags.items()}
    return render(declaration, resolve(declaration, TreeSource(MetadataTree(leaves))))[0].content


def test_tags_cannot_set_dangerous_variables() -> None:
    with pytest.raises(RenderError, match=r"entry 'PRELOAD' would set LD_PRELOAD, which is refused"):
        expand("LD_", {"PRELOAD": b"/tmp/evil.so"})


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


@settings(max_examples=examples(300), deadline=None)
@given(assemblies())
def test_no_expansion_can_assemble_a_refused_name(assembly: tuple) -> None:
    name, prefix, key = assembly
    assert variable_name(prefix, key) == name
    with pytest.raises(RenderError) as caught:
        expand(prefix, {key: b"x"})
    assert caught.value.problems == [f"ud: imds.env[0].expand.tags: entry {key!r} would set {name}, which is refused"]


@pytest.mark.parametrize("name", ["TAG_Name", "TAG_Options", "APP_PATHS", "JAVA", "GOOD", "LD", "PROXY", "MY_ENV",
                                  "Path", "TAG_aws_cloudformation_stack_name", "AWS", "HTTP_PROXY_HOST",
                                  "TAG_BUILD_OPTIONS", "TAG_JAVA_OPTS", "TAG_CA_BUNDLE", "TAG_LD_PRELOAD"])
def test_ordinary_names_are_allowed(name: str) -> None:
    assert expand(name[:1], {name[1:]: b"x"}).endswith(f"export {name}='x'\n".encode())
