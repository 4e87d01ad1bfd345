"""Variable names that an expanded entry (a tag key) may never produce.

With `expand`, a directory entry becomes a variable: prefix + entry name. Tag keys are
chosen by whoever may tag the instance, so a name is refused when setting it would let
that person change which code a process loads or runs, where its traffic goes, which
certificates or credentials it trusts, or how a shell behaves. The whole assembled name is
checked, never the prefix alone: the prefix `G` and the tag `LIBC_TUNABLES` make
GLIBC_TUNABLES. Names a declaration sets itself under `vars:` are its author's choice;
names a script's author gives `cc-imds get --shell` are refused only when they change what
runs (the first four families below).

The families (docs/declaration.md: "Refused variable names"):
- the dynamic loader and glibc: LD_*, GLIBC_TUNABLES, MALLOC_* and every other
  variable glibc drops for setuid programs (GCONV_PATH, LOCPATH, NLSPATH, HOSTALIASES,
  RES_OPTIONS, LOCALDOMAIN, TMPDIR, TZDIR...);
- shells: PATH, IFS, ENV, BASH_ENV, BASH_FUNC_*, SHELLOPTS, BASHOPTS, PS0-PS4,
  PROMPT_COMMAND, and the variables naming files they read or commands they run;
- programs that run a command named by a variable: pagers, editors, askpass helpers,
  LESSOPEN, GIT_*, SYSTEMD_*;
- language runtimes: the families of Java (JAVA_TOOL_OPTIONS, _JAVA_OPTIONS, JDK_JAVA_OPTIONS,
  JAVA_*), Node and npm, Python and pip, Perl, Ruby and gems, .NET, Go, PHP, Lua, Erlang,
  Rust, R and Tcl, and the option variables of common JVM launchers (CATALINA_OPTS,
  MAVEN_OPTS...). Families are name prefixes, so a prefix such as `TAG_` stays free: a
  name like TAG_BUILD_OPTIONS is no runtime's;
- proxies, in any letter case (`http_proxy`, `HTTPS_PROXY`, `no_proxy`...), TLS trust
  and OpenSSL (SSL_CERT_FILE, CURL_CA_BUNDLE, OPENSSL_*, SSLKEYLOGFILE...);
- credentials and configuration of AWS (all of AWS_*), Kerberos, Docker and
  Kubernetes, systemd's socket and notification variables, and cc-imds's own (CC_IMDS_*).
"""

from __future__ import annotations

TYPE_CHECKING = False  # not typing's: `cc-imds get --shell` checks names with this module
if TYPE_CHECKING:
    from typing import FrozenSet, Tuple

# Each family is a list of names; NAME* stands for NAME followed by any [A-Za-z0-9_]*. Matched
# by hand rather than with `re`: compiling these alternations was most of the start-up cost of
# `cc-imds get --shell`.

# Names that change which code a process loads or runs.
_RUNS_CODE = """
    LD_* GLIBC_TUNABLES MALLOC_*
    GCONV_PATH GETCONF_DIR HOSTALIASES LOCALDOMAIN LOCPATH NIS_PATH NLSPATH RESOLV_HOST_CONF RES_OPTIONS
    TMPDIR TZDIR
    PATH IFS CDPATH HOME SHELL ENV BASH_ENV BASHOPTS SHELLOPTS POSIXLY_CORRECT GLOBIGNORE EXECIGNORE
    BASH_FUNC_* BASH_XTRACEFD BASH_LOADABLES_PATH BASH_COMPAT
    PS0 PS1 PS2 PS3 PS4 PROMPT_COMMAND HISTFILE INPUTRC MAILPATH FPATH ZDOTDIR TMOUT
    EDITOR VISUAL PAGER MANPAGER BROWSER LESSOPEN LESSCLOSE SUDO_ASKPASS SUDO_EDITOR
    SSH_ASKPASS* GIT_* SYSTEMD_* XDG_*
    JAVA_* _JAVA_* JDK_JAVA_OPTIONS CLASSPATH JVM_OPTS JVMFLAGS SERVER_JVMFLAGS CLIENT_JVMFLAGS
    CATALINA_OPTS MAVEN_OPTS GRADLE_OPTS ANT_OPTS SBT_OPTS ES_JAVA_OPTS LS_JAVA_OPTS KAFKA_OPTS KAFKA_HEAP_OPTS
    HADOOP_OPTS HADOOP_CLIENT_OPTS HBASE_OPTS SPARK_SUBMIT_OPTS SPARK_DAEMON_JAVA_OPTS JENKINS_JAVA_OPTIONS
    NODE_*
    PYTHON* PIP_*
    PERL*
    RUBY* GEM_* BUNDLE_*
    DOTNET_* CORECLR_* COREHOST_*
    GO111MODULE GOARCH GOBIN GOCACHE GODEBUG GOENV GOEXPERIMENT GOFLAGS GOGC GOINSECURE GOMAXPROCS GOMEMLIMIT
    GOMODCACHE GONOPROXY GONOSUMDB GOOS GOPATH GOPRIVATE GOPROXY GOROOT GOSUMDB GOTMPDIR GOTOOLCHAIN
    GOTRACEBACK GOVCS GOWORK CGO_*
    PHPRC PHP_* LUA_* ERL_* CARGO_* RUST* R_LIBS* R_PROFILE*
    R_ENVIRON* TCLLIBPATH
"""
_RUNS_CODE_ANY_CASE = "NPM_CONFIG_* COMPLUS_*"

# Names that change where traffic goes, what is trusted, and with which credentials.
_TRUST = """
    SSL_CERT_FILE SSL_CERT_DIR SSLKEYLOGFILE OPENSSL_* CURL_CA_BUNDLE REQUESTS_CA_BUNDLE HTTPLIB2_CA_CERTS
    WEBSOCKET_CLIENT_CA_BUNDLE GRPC_DEFAULT_SSL_ROOTS_FILE_PATH NIX_SSL_CERT_FILE
    AWS_* KRB5* KUBECONFIG DOCKER_* CC_IMDS_*
    NOTIFY_SOCKET LISTEN_* WATCHDOG_* CREDENTIALS_DIRECTORY
"""
_TRUST_ANY_CASE = "HTTP_PROXY HTTPS_PROXY FTP_PROXY ALL_PROXY NO_PROXY SOCKS_PROXY SOCKS5_PROXY GRPC_PROXY WS_PROXY " \
    "WSS_PROXY RSYNC_PROXY"

_REST = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_")
# The letters that match an ASCII letter in another case without being ASCII themselves (as
# regular expressions' IGNORECASE has it): any case means these too.
_TO_ASCII = str.maketrans({"\u0130": "I", "\u0131": "I", "\u017f": "S", "\u212a": "K"})


class _Family:
    """Whole names, and name prefixes followed by [A-Za-z0-9_]*."""

    def __init__(self, words: str, *, any_case: bool = False) -> None:
        self.names: FrozenSet[str] = frozenset(w for w in words.split() if not w.endswith("*"))
        self.prefixes: Tuple[str, ...] = tuple(w[:-1] for w in words.split() if w.endswith("*"))
        self.any_case = any_case

    def has(self, name: str) -> bool:
        if self.any_case:
            name = name.translate(_TO_ASCII).upper()
        return name in self.names or any(
            name.startswith(prefix) and all(c in _REST for c in name[len(prefix):]) for prefix in self.prefixes)


_CODE = (_Family(_RUNS_CODE), _Family(_RUNS_CODE_ANY_CASE, any_case=True))
_TRUSTED = (_Family(_TRUST), _Family(_TRUST_ANY_CASE, any_case=True))


def changes_what_runs(name: str) -> bool:
    """True for a name that changes which code a process loads or runs (loader, shells,
    commands other programs run, runtimes): refused even where a script's author chose it."""
    return any(family.has(name) for family in _CODE)


def refused(name: str) -> bool:
    """True when an expanded entry may not set `name` (the whole, assembled name): it changes
    what runs, or where traffic goes, what is trusted and with which credentials."""
    return changes_what_runs(name) or any(family.has(name) for family in _TRUSTED)
