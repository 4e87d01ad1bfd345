"""Variable names that an expanded entry (a tag key) may never produce.

With `expand`, a directory entry becomes a variable: prefix + entry name. Tag keys are
chosen by whoever may tag the instance, so a name is refused when setting it would let
that person change which code a process loads or runs, where its traffic goes, which
certificates or credentials it trusts, or how a shell behaves. The whole assembled name is
checked, never the prefix alone: the prefix `G` and the tag `LIBC_TUNABLES` make
GLIBC_TUNABLES. Names a declaration sets itself under `vars:` are its author's choice;
names a script's author gives `cc-imds get --shell` are refused only when they change what
runs (the first four families below).

The families (README: "Refused variable names"):
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

import re

TYPE_CHECKING = False  # not typing's: `cc-imds get --shell` checks names with this module
if TYPE_CHECKING:
    from typing import Pattern, Tuple

_REST = "[A-Za-z0-9_]*"

# Names that change which code a process loads or runs.
_RUNS_CODE = (
    # dynamic loader, glibc
    rf"LD_{_REST}",
    "GLIBC_TUNABLES",
    rf"MALLOC_{_REST}",
    "GCONV_PATH|GETCONF_DIR|HOSTALIASES|LOCALDOMAIN|LOCPATH|NIS_PATH|NLSPATH|RESOLV_HOST_CONF|RES_OPTIONS",
    "TMPDIR|TZDIR",
    # shells
    "PATH|IFS|CDPATH|HOME|SHELL|ENV|BASH_ENV|BASHOPTS|SHELLOPTS|POSIXLY_CORRECT|GLOBIGNORE|EXECIGNORE",
    rf"BASH_FUNC_{_REST}|BASH_XTRACEFD|BASH_LOADABLES_PATH|BASH_COMPAT",
    "PS[0-4]|PROMPT_COMMAND|HISTFILE|INPUTRC|MAILPATH|FPATH|ZDOTDIR|TMOUT",
    # commands other programs run
    "EDITOR|VISUAL|PAGER|MANPAGER|BROWSER|LESSOPEN|LESSCLOSE|SUDO_ASKPASS|SUDO_EDITOR",
    rf"SSH_ASKPASS{_REST}|GIT_{_REST}|SYSTEMD_{_REST}|XDG_{_REST}",
    # runtimes and their launchers
    rf"_?JAVA_{_REST}|JDK_JAVA_OPTIONS|CLASSPATH|JVM_OPTS|JVMFLAGS|SERVER_JVMFLAGS|CLIENT_JVMFLAGS",
    "CATALINA_OPTS|MAVEN_OPTS|GRADLE_OPTS|ANT_OPTS|SBT_OPTS|ES_JAVA_OPTS|LS_JAVA_OPTS|KAFKA_OPTS|KAFKA_HEAP_OPTS",
    "HADOOP_OPTS|HADOOP_CLIENT_OPTS|HBASE_OPTS|SPARK_SUBMIT_OPTS|SPARK_DAEMON_JAVA_OPTS|JENKINS_JAVA_OPTIONS",
    rf"NODE_{_REST}",
    rf"PYTHON{_REST}|PIP_{_REST}",
    rf"PERL{_REST}",
    rf"RUBY{_REST}|GEM_{_REST}|BUNDLE_{_REST}",
    rf"DOTNET_{_REST}|CORECLR_{_REST}|COREHOST_{_REST}",
    "GO111MODULE|GOARCH|GOBIN|GOCACHE|GODEBUG|GOENV|GOEXPERIMENT|GOFLAGS|GOGC|GOINSECURE|GOMAXPROCS|GOMEMLIMIT",
    "GOMODCACHE|GONOPROXY|GONOSUMDB|GOOS|GOPATH|GOPRIVATE|GOPROXY|GOROOT|GOSUMDB|GOTMPDIR|GOTOOLCHAIN",
    rf"GOTRACEBACK|GOVCS|GOWORK|CGO_{_REST}",
    rf"PHPRC|PHP_{_REST}|LUA_{_REST}|ERL_{_REST}|CARGO_{_REST}|RUST{_REST}|R_LIBS{_REST}|R_PROFILE{_REST}",
    rf"R_ENVIRON{_REST}|TCLLIBPATH",
)
_RUNS_CODE_ANY_CASE = (rf"NPM_CONFIG_{_REST}", rf"COMPLUS_{_REST}")

# Names that change where traffic goes, what is trusted, and with which credentials.
_TRUST = (
    rf"SSL_CERT_FILE|SSL_CERT_DIR|SSLKEYLOGFILE|OPENSSL_{_REST}|CURL_CA_BUNDLE|REQUESTS_CA_BUNDLE|HTTPLIB2_CA_CERTS",
    "WEBSOCKET_CLIENT_CA_BUNDLE|GRPC_DEFAULT_SSL_ROOTS_FILE_PATH|NIX_SSL_CERT_FILE",
    rf"AWS_{_REST}|KRB5{_REST}|KUBECONFIG|DOCKER_{_REST}|CC_IMDS_{_REST}",
    rf"NOTIFY_SOCKET|LISTEN_{_REST}|WATCHDOG_{_REST}|CREDENTIALS_DIRECTORY",
)
_TRUST_ANY_CASE = ("(?:HTTP|HTTPS|FTP|ALL|NO|SOCKS|SOCKS5|GRPC|WS|WSS|RSYNC)_PROXY",)


def _families(families: Tuple[str, ...], flags: int = 0) -> Pattern[str]:
    return re.compile("|".join(f"(?:{family})" for family in families), flags)


_CODE = _families(_RUNS_CODE)
_CODE_ANY_CASE = _families(_RUNS_CODE_ANY_CASE, re.IGNORECASE)
_TRUSTED = _families(_TRUST)
_TRUSTED_ANY_CASE = _families(_TRUST_ANY_CASE, re.IGNORECASE)


def changes_what_runs(name: str) -> bool:
    """True for a name that changes which code a process loads or runs (loader, shells,
    commands other programs run, runtimes): refused even where a script's author chose it."""
    return bool(_CODE.fullmatch(name) or _CODE_ANY_CASE.fullmatch(name))


def refused(name: str) -> bool:
    """True when an expanded entry may not set `name` (the whole, assembled name): it changes
    what runs, or where traffic goes, what is trusted and with which credentials."""
    return changes_what_runs(name) or bool(_TRUSTED.fullmatch(name) or _TRUSTED_ANY_CASE.fullmatch(name))
