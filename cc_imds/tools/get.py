"""`cc-imds get`: instance metadata for scripts, one value or many in one call.

    values=$(cc-imds get --shell INSTANCE_ID=meta-data/instance-id REGION=meta-data/placement/region)
    eval "$values"

Values are named and sourced with the declaration's vocabulary: a path, optionally a
`--key` into the JSON document there, and a `--default` used only when IMDS answers 404.
Every value is fetched (one token, concurrently) before anything is printed, and no value
is printed unless every value succeeded: on failure stdout stays empty. (`eval` of empty
output succeeds, so a `set -e` script stops at the assignment above, not at `eval "$(...)"`.)
Error messages name values and paths, never a value's content.

Cold start is part of the job (scripts call this where they called curl), so this module
imports only the standard library, and only what a run needs.
"""

from __future__ import annotations

from ..errors import ImdsError, ImdsNotFound, ProblemsError, WriteError

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing is a cost every call would pay
if TYPE_CHECKING:
    import argparse
    from typing import Any, Dict, List, Optional, Sequence, Union

    from ..imds.client import ImdsClient

    Outcome = Union[bytes, ImdsError]

# Output forms. RAW is curl's: one value, its bytes exactly, no newline added.
RAW, SHELL, JSON, LINES = "raw", "shell", "json", "lines"

IMDS_HOSTS = ("169.254.169.254", "fd00:ec2::254")
# Checked by hand, not with `re`: importing it is a large part of a cold start.
_DIGITS = frozenset("0123456789")
_ALNUM = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz") | _DIGITS
# What IMDS serves, as the declaration's schema allows it (tag keys are [0-9a-zA-Z-_+=,.@:]).
_PATH_CHARS = _ALNUM | frozenset("@:+=,._/-")


def _served(path: str) -> bool:
    """meta-data, dynamic (each optionally followed by /...) or user-data."""
    if path == "user-data":
        return True
    top, _, rest = path.partition("/")
    return top in ("meta-data", "dynamic") and all(c in _PATH_CHARS for c in rest)


def _api_version(part: str) -> bool:
    """`latest`, `1.0` or a dated version (YYYY-MM-DD): old scripts name these, and all are
    read from `latest`, as `scan` suggests."""
    if part in ("latest", "1.0"):
        return True
    return len(part) == 10 and part[4] == part[7] == "-" and all(c in _DIGITS for c in part[:4] + part[5:7] + part[8:])


def _variable_name(name: str) -> bool:
    """[A-Za-z_][A-Za-z0-9_]*"""
    return name.isidentifier() and name.isascii()


class UsageError(ProblemsError):
    """The command line cannot be understood. Exit 2, as argparse's own errors."""

    exit_code = 2


class GetError(ProblemsError):
    """One or more values could not be got. Exit 3 if IMDS failed, else 1 (404, missing key, unprintable)."""

    def __init__(self, problems: Sequence[str], exit_code: int) -> None:
        super().__init__(problems)
        self.exit_code = exit_code


class Request:
    """One value asked for: `NAME=PATH` (or a bare PATH), with an optional key and default."""

    __slots__ = ("default", "key", "name", "path", "shown")

    def __init__(self, shown: str, name: Optional[str], path: str) -> None:
        self.shown = shown  # how the user wrote it, for messages
        self.name = name
        self.path = path
        self.key: Optional[str] = None
        self.default: Optional[str] = None

    @property
    def label(self) -> str:
        """How messages refer to this value: its variable name, else its IMDS path."""
        return f"{self.name}: /latest/{self.path}" if self.name else f"/latest/{self.path}"


# -- the command line ----------------------------------------------------------------------------
def imds_path(raw: str, endpoint_hosts: Sequence[str] = ()) -> str:
    """The path under /latest/ that `raw` names, from what old scripts pass to curl:
    `meta-data/...`, `/latest/meta-data/...`, `/2021-07-15/meta-data/...`, or the full URL.

    Raises ValueError with the reason when `raw` is not an IMDS path. A URL must be plain
    HTTP to IMDS (169.254.169.254 or [fd00:ec2::254], port 80) or to `endpoint_hosts`
    (`host:port` of an endpoint set with --endpoint or the environment, such as the emulator).
    """
    path = raw
    if "://" in raw:
        from urllib.parse import unquote, urlsplit

        try:
            parts = urlsplit(raw)
            port = parts.port
        except ValueError as exc:
            raise ValueError(f"not a valid URL ({exc})") from None
        host = (parts.hostname or "").lower()
        if parts.scheme.lower() != "http":
            raise ValueError("IMDS is plain http://")
        if parts.username is not None or parts.password is not None:
            raise ValueError("a URL with a user name or password is not an IMDS URL")
        if parts.query or parts.fragment or raw.endswith(("?", "#")):
            raise ValueError("an IMDS path has no query string or fragment")
        netloc = f"[{host}]" if ":" in host else host
        if not ((host in IMDS_HOSTS and port in (None, 80)) or f"{netloc}:{port or 80}" in endpoint_hosts):
            allowed = ", ".join(("169.254.169.254", "[fd00:ec2::254]", *endpoint_hosts))
            raise ValueError(f"host {parts.netloc!r} is not IMDS ({allowed})")
        path = unquote(parts.path)
    elif raw.startswith("//"):
        raise ValueError("not a path under /latest/ (a URL needs http://)")
    path = path.lstrip("/")
    version, _, rest = path.partition("/")
    if _api_version(version):
        path = rest
    elif raw.startswith("/") or "://" in raw:
        raise ValueError("expected /latest/ (or a dated API version) before the path")
    if not path:
        raise ValueError("no path after the API version")
    if any(part in (".", "..") for part in path.split("/")) or "//" in path:
        raise ValueError("an IMDS path has no empty, . or .. parts")
    if not _served(path):
        raise ValueError("expected meta-data/..., dynamic/... or user-data")
    return path


_FORMS = ("--shell", "--json", "--lines")
_SETTINGS = ("--endpoint", "--imdsv1", "--timeout", "--deadline")


def command_line(argv: Sequence[str]) -> Optional[Dict[str, Any]]:
    """`get`'s arguments as the CLI's argparse parser reads them, when they are plainly right:
    the options (`--shell`, `--json`, `--lines`, `--endpoint`, `--imdsv1`, `--timeout`,
    `--deadline`, as `--opt VALUE` or `--opt=VALUE`) and, in order, the value tokens with the
    `--key`/`--default` after each (checked by parse_requests).

    None for anything else: help, `--`, an unknown option, an option value that is missing,
    starts with `-` or is refused, or two output forms. argparse reads those command lines,
    so help and wrong usage read exactly as for every other command.
    """
    if not argv or argv[0] != "get":
        return None
    found: Dict[str, Any] = {"output": None, "endpoint": None, "imdsv1": "never", "timeout": 2.0, "deadline": 60.0}
    values: List[str] = []
    tokens = argv[1:]
    index = 0
    while index < len(tokens):
        token = tokens[index]
        index += 1
        if not token.startswith("-") or token == "-":
            values.append(token)
            continue
        option, has_value, value = token.partition("=")
        if option in _FORMS and not has_value:
            if found["output"] not in (None, option[2:]):
                return None
            found["output"] = option[2:]
            continue
        if option not in _SETTINGS and option not in ("--key", "--default"):
            return None
        if not has_value:
            if index == len(tokens) or tokens[index].startswith("-"):
                return None
            value = tokens[index]
            index += 1
        if option in ("--key", "--default"):
            values += [token] if has_value else [token, value]
        elif option in ("--timeout", "--deadline"):
            from ..imds.settings import DEADLINE_RANGE, TIMEOUT_RANGE, seconds_in_range

            try:
                seconds = float(value)
            except ValueError:
                return None
            if not seconds_in_range(seconds, TIMEOUT_RANGE if option == "--timeout" else DEADLINE_RANGE):
                return None  # argparse says why, naming the bound
            found[option[2:]] = seconds
        elif option == "--imdsv1":
            if value not in ("never", "fallback"):
                return None
            found["imdsv1"] = value
        else:
            from ..imds.settings import EndpointError, candidate_urls

            try:
                candidate_urls(value)
            except (EndpointError, ValueError):
                return None
            found["endpoint"] = value
    found["values"] = values
    return found


def parse_requests(tokens: Sequence[str], output: str, endpoint_hosts: Sequence[str] = ()) -> List[Request]:
    """`NAME=PATH` or `PATH` tokens, each optionally followed by `--key KEY` and `--default TEXT`,
    in the order given. Raises UsageError listing every problem."""
    requests: List[Request] = []
    problems: List[str] = []
    names: Dict[str, str] = {}
    index = 0
    while index < len(tokens):
        token = tokens[index]
        index += 1
        option, has_value, value = token.partition("=")
        if option in ("--key", "--default"):
            if not has_value:
                if index == len(tokens):
                    problems.append(f"{option} needs a value")
                    break
                value = tokens[index]
                index += 1
            if not requests:
                problems.append(f"{option} {value!r}: give it after the value it applies to")
                continue
            request = requests[-1]
            attribute = option[2:]
            if getattr(request, attribute) is not None:
                problems.append(f"{request.shown}: {option} given twice")
            elif option == "--key" and not value:
                problems.append(f"{request.shown}: --key needs a key name")
            else:
                setattr(request, attribute, value)
            continue
        if token.startswith("-") and token != "-":
            problems.append(f"{token}: unknown option")
            continue
        name: Optional[str] = None
        source = token
        before, equals, after = token.partition("=")
        if equals and "/" not in before:  # paths hold `/` before any `=` (tags/instance/a=b)
            name, source = before, after
            if not _variable_name(name):
                problems.append(f"{token}: {name!r} is not a variable name ([A-Za-z_][A-Za-z0-9_]*)")
                continue
            from ..formats.env import refused_variable

            if refused_variable(name):
                problems.append(f"{token}: {name} is refused: setting it changes how the shell or programs run")
                continue
            if name in names:
                problems.append(f"{token}: {name} is already set by {names[name]}")
                continue
            names[name] = token
        try:
            path = imds_path(source, endpoint_hosts)
        except ValueError as exc:
            problems.append(f"{source}: {exc}")
            continue
        requests.append(Request(token, name, path))
    if not problems:
        problems = _form_problems(requests, output)
    if problems:
        raise UsageError(problems)
    return requests


def _form_problems(requests: Sequence[Request], output: str) -> List[str]:
    if not requests:
        return ["give the path of a value, such as meta-data/instance-id, or NAME=PATH with --shell or --json"]
    if output in (SHELL, JSON):
        return [f"{r.shown}: --{output} needs a variable name: NAME={r.shown}" for r in requests if not r.name]
    named = [r.shown for r in requests if r.name]
    if named:
        fix = "add --shell (for eval) or --json" if output == RAW else "give the paths alone"
        return [f"{', '.join(named)}: NAME=PATH names variables, which --{output} does not print; {fix}"
                if output == LINES else f"{', '.join(named)}: NAME=PATH assigns variables: {fix}"]
    if output == RAW and len(requests) > 1:
        return ["several values need --shell (NAME=PATH, for eval), --json (NAME=PATH) or --lines (one per line)"]
    return []


# -- fetching --------------------------------------------------------------------------------------
def fetch(client: ImdsClient, requests: Sequence[Request]) -> Dict[str, Outcome]:
    """Each distinct path once. Several go through the client's concurrent fetch; a single one
    does not, so a one-value call never starts (or imports) a thread pool."""
    paths = list(dict.fromkeys(r.path for r in requests))
    if len(paths) > 1:
        return dict(client.fetch_all(paths))
    try:
        return {paths[0]: client.fetch(paths[0])}
    except ImdsError as exc:
        if exc.path != "/latest/" + paths[0]:
            raise  # the token, not this value: as fetch_all raises it
        return {paths[0]: exc}


def pick(request: Request, outcome: Outcome) -> Union[bytes, str]:
    """The value a request stands for, with the declaration's rules: `default` only on a 404;
    `key` reads a top-level key of a JSON document (a string as it is, anything else as JSON).
    Raises LookupError (absent: 404 or no such key), ValueError (unusable) or ImdsError."""
    if isinstance(outcome, ImdsNotFound):
        if request.default is not None:
            return request.default
        raise LookupError(str(outcome))
    if isinstance(outcome, ImdsError):
        raise outcome
    if request.key is None:
        return outcome
    import json

    from ..jsontext import JsonRefused, parse

    try:
        document = parse(outcome)
    except JsonRefused as exc:  # IMDS served what no IMDS document is: its failure (exit 3)
        raise ImdsError(f"/latest/{request.path}", f"refused: {exc}") from None
    except ValueError:  # UnicodeDecodeError is one
        problem = f"not a JSON document, so key {request.key!r} cannot be read"
        raise ValueError(f"/latest/{request.path}: {problem}") from None
    if not isinstance(document, dict) or request.key not in document:
        raise LookupError(f"/latest/{request.path}: the JSON document has no key {request.key!r}")
    found = document[request.key]
    return found if isinstance(found, str) else json.dumps(found)


# -- output ------------------------------------------------------------------------------------------
def _text(value: Union[bytes, str]) -> str:
    if isinstance(value, str):
        return value
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError("not UTF-8 text (gzip perhaps): get it alone, as raw bytes") from None


def render(requests: Sequence[Request], values: Sequence[Union[bytes, str]], output: str) -> bytes:
    """Everything to print, or a ValueError per value that this form cannot carry exactly
    (raised as one GetError by `get`). Shell quoting is the `shell` env format's."""
    problems: List[str] = []
    chunks: List[bytes] = []
    pairs = []
    for request, value in zip(requests, values):
        try:
            if output == RAW:
                chunks.append(value if isinstance(value, bytes) else value.encode("utf-8"))
            elif output == LINES:
                data = value if isinstance(value, bytes) else value.encode("utf-8")
                if b"\n" in data:
                    raise ValueError("contains a line break, so one value per line would be ambiguous: "
                                     "use --shell or --json")
                chunks.append(data + b"\n")
            elif output == SHELL:
                from ..formats.env import FormatProblem, quote_shell

                try:
                    chunks.append(f"{request.name}={quote_shell(_text(value))}\n".encode())
                except FormatProblem as exc:
                    raise ValueError(str(exc)) from None
            else:
                pairs.append((str(request.name), _text(value)))
        except ValueError as exc:
            problems.append(f"{request.label}: {exc}")
    if problems:
        raise GetError(problems, 1)
    if output == JSON:
        from ..formats.env import RENDERERS

        return RENDERERS["json"](pairs).encode("utf-8")
    return b"".join(chunks)


def get(client: ImdsClient, requests: Sequence[Request], output: str) -> bytes:
    """Fetch every request and render them, or raise one GetError naming every failure."""
    outcomes = fetch(client, requests)
    values: List[Union[bytes, str]] = []
    problems: List[str] = []
    imds_failed = False
    for request in requests:
        try:
            values.append(pick(request, outcomes[request.path]))
        except ImdsError as exc:
            problems.append(f"{request.name}: {exc}" if request.name else str(exc))
            imds_failed = True
        except (LookupError, ValueError) as exc:
            problems.append(f"{request.name}: {exc}" if request.name else str(exc))
    if problems:
        raise GetError(problems, 3 if imds_failed else 1)
    return render(requests, values, output)


def write_stdout(data: bytes) -> None:
    """All of it, or an error: a script must not run on with half its values."""
    import os
    import sys

    try:
        if sys.stdout is None:  # started with stdout closed
            raise OSError("standard output is closed")
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
    except OSError as exc:
        try:  # what is still buffered goes nowhere, rather than into a second error at exit
            os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
        except OSError:
            pass
        raise WriteError("standard output", f"cannot write: {exc.strerror or exc}") from None


def get_command(args: argparse.Namespace) -> int:
    """`cc-imds get`: the values asked for on standard output, all of them or none."""
    import os

    from ..imds.client import ClientSettings, ImdsClient, choose_endpoint

    endpoint, _ = choose_endpoint(args.endpoint, None, os.environ)
    requests = parse_requests(args.values, args.output or RAW, _endpoint_hosts(endpoint))
    settings = ClientSettings(endpoint=endpoint, imdsv1=args.imdsv1, timeout=args.timeout, deadline=args.deadline)
    with ImdsClient(settings) as client:
        data = get(client, requests, args.output or RAW)
    write_stdout(data)
    return 0


def _endpoint_hosts(endpoint: str) -> List[str]:
    """`host:port` of an explicit endpoint (the emulator, say): URLs given to `get` may name it."""
    from ..imds.client import candidate_urls

    if endpoint in ("auto", "ipv4", "ipv6"):
        return []
    # Validated there, with a clear message, and written back as http://HOST[:PORT], an IPv6
    # HOST in brackets.
    netloc = candidate_urls(endpoint)[0][len("http://"):]
    return [netloc if ":" in netloc.rpartition("]")[2] else f"{netloc}:80"]
