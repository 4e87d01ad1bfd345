"""`cc-imds`: validate, preview and apply declarations, get single values, run the emulator.

Exit status: 0 success; 1 invalid declaration or input file, a value a format cannot
carry, a 404 (`get`), IMDSv1 use found or a file that cannot be scanned (`scan`), or imds
not first in the config stage (`enable-module --check`); 2 wrong usage; 3 IMDS unreachable
or failing; 4 an output, or standard output, could not be written; 70 an internal error
(a bug). Errors go to stderr, one line each, without a traceback.
"""

from __future__ import annotations

import gc
import os
import sys

from .errors import CcImdsError, OutputStreamError
from .logs import say

INTERNAL_ERROR = 70  # sysexits.h EX_SOFTWARE: distinct from every failure a user can act on

# Every command imports what it uses when it runs: `cc-imds get` stands in for curl in
# scripts, so its start-up is the standard library it needs and nothing else (not even
# `typing` or `argparse`: a plain `get` command line is read by get.command_line, and only
# help and wrong usage build argparse's parsers; mypy treats a TYPE_CHECKING of our own
# like typing's).
TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse
    from pathlib import Path
    from typing import IO, Any, Callable, NoReturn, Optional, Sequence, Union


# Each command's body lives with its feature and is imported when that command runs, so
# building the parser (help, wrong usage) or running `get` imports no other command's modules.
def cmd_validate(args: argparse.Namespace) -> int:
    from .tools.declare import validate_command

    return validate_command(args)


def cmd_plan(args: argparse.Namespace) -> int:
    from .tools.declare import plan_command

    return plan_command(args)


def cmd_apply(args: argparse.Namespace) -> int:
    from .tools.declare import apply_command

    return apply_command(args)


def cmd_get(args: argparse.Namespace) -> int:
    from .tools.get import get_command

    return get_command(args)


def cmd_watch(args: argparse.Namespace) -> int:
    from .watch.start import watch_command

    return watch_command(args)


def cmd_status(args: argparse.Namespace) -> int:
    from .watch.status import status_command

    return status_command(args)


def cmd_emulate(args: argparse.Namespace) -> int:
    from .testing.commands import emulate_command

    return emulate_command(args)


def cmd_enable_module(args: argparse.Namespace) -> int:
    from .tools.enable import enable_module_command

    return enable_module_command(args)


def cmd_scan(args: argparse.Namespace) -> int:
    from .tools.scan import scan_command

    return scan_command(args)


# `demo` runs the product (the pipeline) against the emulator (testing/), and only the entry
# point sees both, so it is composed here.
def examples_dir() -> Path:
    """The bundled example declarations: installed in the package, or in a source tree."""
    from pathlib import Path

    package = Path(__file__).resolve().parent
    for candidate in (package / "examples", package.parent / "examples"):
        if candidate.is_dir():
            return candidate
    raise CcImdsError("the bundled examples are not installed")


def cmd_demo(args: argparse.Namespace) -> int:
    """The bundled examples applied, as the boot run would, against the emulator serving the
    bundled tree; each file written, and the requests it took, shown."""
    import tempfile
    from pathlib import Path

    from .declaration.build import documents_from_file
    from .imds.tree import load_tree
    from .pipeline import RunOptions, apply, gather
    from .testing.emulator import Emulator

    root = Path(args.root) if args.root else Path(tempfile.mkdtemp(prefix="cc-imds-demo-"))
    with Emulator(load_tree()) as emulator:
        print(f"IMDS emulator on {emulator.url} (bundled tree); writing under {root}\n")
        for example in sorted(examples_dir().glob("*.yaml")):
            options = RunOptions(endpoint=emulator.url, root=str(root), lock_path=str(root / ".cc-imds.lock"))
            changes = apply(gather(documents=documents_from_file(example)), options)
            print(f"== {example.name}: {emulator.count('PUT')} PUT, {emulator.count('GET')} GET")
            emulator.clear_log()
            for change in changes:
                print(f"--- {change.path} ({change.action}, mode {change.mode:04o})")
                if change.sensitive:
                    print("(holds sensitive values: not shown)")
                else:
                    print(Path(change.path).read_text(encoding="utf-8"), end="")
            print()
    print(f"Files are under {root}")
    return 0


def number(low: float, high: float, *, integer: bool = False) -> Callable[[str], Union[int, float]]:
    """An argparse type: a finite number from `low` to `high` (nan, inf and out-of-range
    values are wrong usage, exit 2)."""

    def parse(text: str) -> Union[int, float]:
        import argparse

        try:
            value: Union[int, float] = int(text) if integer else float(text)
        except ValueError:  # also an integer of more digits than Python converts
            raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if integer else 'a number'}") from None
        if not low <= value <= high:  # false for nan; compared exactly, so a huge integer is no OverflowError
            raise argparse.ArgumentTypeError(f"{text!r} is not a finite number from {low:g} to {high:g}")
        return value

    return parse


def endpoint(text: str) -> str:
    """An argparse type: an endpoint setting that can be used (else wrong usage, exit 2)."""
    import argparse

    from .imds.client import EndpointError, candidate_urls

    try:
        candidate_urls(text)
    except EndpointError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    except ValueError as exc:  # urllib.parse's own complaints, such as "Invalid IPv6 URL"
        raise argparse.ArgumentTypeError(f"endpoint {text!r}: {exc}") from None
    return text


def _lifetime(text: str) -> float:
    """--credential-lifetime: 0 (never) or a finite number of seconds of at least 1."""
    import argparse

    try:
        seconds = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if seconds != 0 and not 1 <= seconds <= 10**9:
        raise argparse.ArgumentTypeError(f"{text!r}: give 0 (never) or 1 to 1e9 seconds")
    return seconds


def _columns() -> int:
    """What shutil.get_terminal_size() says, without importing shutil."""
    try:
        columns = int(os.environ.get("COLUMNS", "0"))
    except ValueError:
        columns = 0
    if columns <= 0:
        try:
            columns = os.get_terminal_size(sys.__stdout__.fileno()).columns  # type: ignore[union-attr]
        except (AttributeError, ValueError, OSError):  # no stdout, or not a terminal
            columns = 80
    return columns - 2  # as argparse does


def build_parser() -> argparse.ArgumentParser:
    import argparse

    from .declaration.dropins import DEFAULT_CONF_DIR
    from .imds.settings import DEADLINE_RANGE, TIMEOUT_RANGE
    from .version import __version__

    class _HelpFormatter(argparse.HelpFormatter):
        def __init__(self, prog: str, indent_increment: int = 2, max_help_position: int = 24,
                     width: Optional[int] = None) -> None:
            super().__init__(prog, indent_increment, max_help_position, width or _columns())

    class _Parser(argparse.ArgumentParser):
        """argparse's parser, with a help formatter that finds the terminal's width itself:
        argparse's own imports shutil (and the compression modules shutil imports) for every
        parser it builds. Subcommands' parsers are of this class too."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs.setdefault("formatter_class", _HelpFormatter)
            super().__init__(*args, **kwargs)

    parser = _Parser(prog="cc-imds", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"cc-imds {__version__}")
    parser.add_argument("--debug", action="store_true", help="log every request to stderr (never tokens or values)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    def declaration_args(p: argparse.ArgumentParser, *, optional_file: bool = True) -> None:
        p.add_argument("file", nargs="?" if optional_file else "+", metavar="FILE",
                       help="cloud-config with an `imds:` key, or a bare declaration")
        p.add_argument("--conf-dir", help=f"drop-in directory (default {DEFAULT_CONF_DIR}, under --root)")
        p.add_argument("--no-conf-dir", action="store_true", help="read no drop-in directory")
        p.add_argument("--endpoint", type=endpoint, help="IMDS endpoint: auto, ipv4, ipv6 or http://host:port")

    p = sub.add_parser("validate", help="check declarations; every problem is listed")
    p.add_argument("file", nargs="+", metavar="FILE", help="declaration files, or drop-in directories")
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("plan", help="show what would be written, secrets redacted")
    declaration_args(p)
    p.add_argument("--metadata", metavar="TREE.json", help="resolve from a JSON metadata tree, offline")
    p.add_argument("--root", help="prefix for the drop-in directory")
    p.set_defaults(func=cmd_plan)

    p = sub.add_parser("apply", help="resolve and write, as the cloud-init module does")
    declaration_args(p)
    p.add_argument("--root", help="prefix every output path (AMI builds, tests)")
    p.add_argument("--lock", help="lock file serialising concurrent runs (default /run/cc-imds/lock as root)")
    p.set_defaults(func=cmd_apply)

    p = sub.add_parser(
        "get",
        allow_abbrev=False,  # --sh is not --shell: scripts say what they mean, and eval relies on it
        help="print IMDS values for scripts: one like curl, or many in one call for eval",
        usage="%(prog)s [--shell | --json | --lines] [options] PATH | NAME=PATH [--key KEY] [--default TEXT] ...",
        description="Print instance metadata values. One PATH prints its bytes as they are (like curl). "
        "Several values, fetched together with one token: --shell prints NAME='value' lines for eval, "
        "--json one object, --lines one value per line. Nothing is printed unless every value succeeded.",
        epilog="PATH is meta-data/..., dynamic/... or user-data, or what curl was given: /latest/PATH or "
        "http://169.254.169.254/latest/PATH (a dated version such as /2021-07-15/ is read from /latest/). "
        "After a value: --key KEY takes that top-level key of the JSON document at PATH; --default TEXT "
        "is used when IMDS answers 404 (only then). "
        "Example: eval \"$(cc-imds get --shell ID=meta-data/instance-id ENV=meta-data/tags/instance/Env "
        "--default dev)\"",
    )
    form = p.add_mutually_exclusive_group()
    for flag, text in (("--shell", "NAME='value' lines, quoted for eval in sh, dash and bash"),
                       ("--json", "one JSON object of NAME: value"),
                       ("--lines", "one value per line (refused for a value holding a line break)")):
        form.add_argument(flag, dest="output", action="store_const", const=flag[2:], help=text)
    p.add_argument("--endpoint", type=endpoint, help="IMDS endpoint: auto, ipv4, ipv6 or http://host:port")
    p.add_argument("--imdsv1", choices=("never", "fallback"), default="never")
    p.add_argument("--timeout", type=number(*TIMEOUT_RANGE), default=2.0,
                   help="seconds per attempt, 0.05 to 60 (default 2)")
    p.add_argument("--deadline", type=number(*DEADLINE_RANGE), default=60.0,
                   help="seconds in all, 0.1 to 3600 (default 60)")
    # Values, and the --key/--default after each, are read in order from what argparse leaves
    # (see main): argparse cannot tie an option to the positional before it.
    p.set_defaults(func=cmd_get, takes_values=True)

    p = sub.add_parser("watch", help="keep outputs current after boot: refresh values, act on instance events")
    declaration_args(p)
    p.add_argument("--lock", help="lock file shared with apply (default /run/cc-imds/lock as root)")
    p.set_defaults(func=cmd_watch)

    p = sub.add_parser("status", help="what the watcher does; exit 3-6 when it fails or credentials expired")
    p.add_argument("--json", action="store_true", help="the status and its judgement as JSON")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("emulate", help="run the strict IMDSv2 emulator")
    p.add_argument("--tree", help="JSON metadata tree (flat or AEMM format); default: the bundled one")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=number(0, 65535, integer=True), default=1338, help="0 picks a free port")
    p.add_argument("--mode", choices=("required", "optional", "disabled", "v1-only"), default="required")
    p.add_argument("--no-tags", action="store_true", help="serve tags/instance/ as 404")
    p.add_argument("--latency", type=number(0, 3600), default=0.0, help="seconds added to every response")
    p.add_argument("--control-port", type=number(0, 65535, integer=True), metavar="N",
                   help="serve the control endpoint (change values, rotate credentials, announce events) on N")
    p.add_argument("--credential-lifetime", type=_lifetime, default=21600.0, metavar="SECONDS",
                   help="rotate credentials by themselves, each set living SECONDS (default 21600, as EC2; 0: never)")
    # What amazon-ec2-metadata-mock offers from its command line (docs/emulator-control.md).
    timed = p.add_argument_group("notices and Auto Scaling, at start or later (as amazon-ec2-metadata-mock's)")
    timed.add_argument("--spot-interruption", choices=("terminate", "stop", "hibernate"), metavar="ACTION",
                       help="announce a spot interruption: terminate, stop or hibernate in two minutes")
    timed.add_argument("--rebalance-recommendation", action="store_true", help="announce a rebalance recommendation")
    timed.add_argument("--scheduled-maintenance", metavar="CODE",
                       help="schedule maintenance (system-reboot, instance-stop, ...) in a week")
    timed.add_argument("--lifecycle-state", metavar="STATE",  # checked with the other timed changes
                       help="serve STATE (InService, Terminated, Warmed:Running...) at "
                            "meta-data/autoscaling/target-lifecycle-state")
    timed.add_argument("--notice-delay", type=number(0, 10**9), metavar="SECONDS",
                       help="the notices and lifecycle state above appear SECONDS after the start (404s until then)")
    timed.add_argument("--notice-time", metavar="TIME",
                       help="... or at TIME (RFC 3339, such as 2026-12-07T08:00:00Z)")
    timed.add_argument("--scenario", metavar="FILE",
                       help="timed changes from a YAML or JSON file (docs/emulator-control.md: Scenarios)")
    faults = p.add_argument_group("faults from the start")
    faults.add_argument("--throttle-rate", type=number(1, 10**6, integer=True), metavar="N",
                        help="answer at most N requests a second; the others get 429 with Retry-After")
    faults.add_argument("--throttle-count", type=number(1, 10**9, integer=True), metavar="N",
                        help="answer the first N requests with 429 and Retry-After")
    faults.add_argument("--retry-after", type=number(0, 3600), default=1.0, metavar="SECONDS",
                        help="the Retry-After of throttled answers (default 1)")
    faults.add_argument("--drop-token-puts", action="store_true",
                        help="leave token PUTs unanswered: the symptom of a hop limit too low for a container")
    p.set_defaults(func=cmd_emulate)

    p = sub.add_parser("enable-module", help="add imds to cloud-init's effective module list via a generated drop-in")
    p.add_argument("--root", default="/", help="operate on an image mounted here")
    p.add_argument("--cloud-cfg", help="cloud-init's main config (default /etc/cloud/cloud.cfg)")
    p.add_argument("--dropin", help="the generated drop-in (default /etc/cloud/cloud.cfg.d/zz-cc-imds.cfg)")
    action = p.add_mutually_exclusive_group()
    action.add_argument("--print", action="store_true", help="print the drop-in instead of writing it")
    action.add_argument("--remove", action="store_true", help="remove the drop-in")
    action.add_argument("--check", action="store_true",
                        help="exit 1, saying why, unless imds runs first in the config stage (an image build gate)")
    p.set_defaults(func=cmd_enable_module)

    p = sub.add_parser("scan", help="find IMDS calls in user-data and scripts; exit 1 if any is IMDSv1 or unknown")
    p.add_argument("path", nargs="+", help="scripts, cloud-config, raw user-data (gzip, MIME), or directories")
    p.add_argument("--json", action="store_true", help="findings as JSON")
    p.add_argument("--accept-unknown", action="store_true",
                   help="pass the gate despite `unknown` findings (IMDS named in a way the scanner cannot classify)")
    p.add_argument("--suggest", action="store_true", help="print an imds: declaration covering the IMDSv1 values")
    p.set_defaults(func=cmd_scan)

    p = sub.add_parser("demo", help="apply the bundled examples against the emulator into a temp dir")
    p.add_argument("--root", help="write here instead of a new temp dir")
    p.set_defaults(func=cmd_demo)
    return parser


class _GuardedStream:
    """Standard output whose failed writes become one OutputStreamError, not a traceback,
    and whose every byte is written or reported: what is printed is kept here and written
    with streams.write_all (at each flush, at 64 KiB, and at each line on a terminal), so
    a reader that leaves early, however early, is exit 4, never a silent 0.

    Also wraps `.buffer`, which `get` writes raw bytes to. Where standard output is no
    descriptor (output captured in-process), writes go to the stream as they are."""

    _FLUSH_AT = 64 * 1024
    _fd: Optional[int]  # None: no descriptor
    _pending: bytearray  # shared by the text side and its `.buffer`, so they stay in order
    _tty: bool

    def __init__(self, stream: Optional[Any], text_side: Optional[_GuardedStream] = None) -> None:
        self._stream = stream
        if text_side is not None:
            self._fd, self._pending, self._tty = text_side._fd, text_side._pending, text_side._tty
            return
        self._fd, self._pending, self._tty = None, bytearray(), False
        try:
            if stream is not None:
                stream.flush()  # anything written before main took over
                self._fd = stream.fileno()
                self._tty = stream.isatty()
        except (OSError, ValueError, AttributeError):  # captured in-process: no descriptor
            self._fd = None

    def _call(self, method: str, *args: Any) -> Any:
        if self._stream is None:
            raise OutputStreamError("standard output is closed")
        try:
            return getattr(self._stream, method)(*args)
        except OSError as exc:
            raise OutputStreamError(str(exc.strerror or exc), isinstance(exc, BrokenPipeError)) from None

    def write(self, data: Any) -> Any:
        if self._fd is None:
            return self._call("write", data)
        if isinstance(data, str):
            encoding = getattr(self._stream, "encoding", None) or "utf-8"
            self._pending += data.encode(encoding, getattr(self._stream, "errors", None) or "strict")
        else:
            self._pending += data
        if len(self._pending) >= self._FLUSH_AT or (self._tty and b"\n" in self._pending):
            self.flush()
        return len(data)

    def flush(self) -> None:
        if self._fd is None:
            self._call("flush")
            return
        from .streams import write_all

        pending = bytes(self._pending)
        del self._pending[:]
        try:
            write_all(self._fd, pending)
        except OSError as exc:
            raise OutputStreamError(str(exc.strerror or exc), isinstance(exc, BrokenPipeError)) from None

    @property
    def buffer(self) -> _GuardedStream:
        if self._fd is None:
            return _GuardedStream(getattr(self._stream, "buffer", None))
        return _GuardedStream(getattr(self._stream, "buffer", None), text_side=self)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def _discard_stdout(stream: Optional[IO[str]]) -> None:
    """After a failed write, point the descriptor at /dev/null, so that the interpreter's
    final flush of what is still buffered succeeds instead of printing a traceback."""
    try:
        if stream is not None:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, stream.fileno())
            os.close(devnull)
    except (OSError, ValueError, AttributeError):  # not a real descriptor (tests capturing output)
        pass


def _internal_error(exc: BaseException, debug: bool) -> None:
    """A bug: one line naming the exception's type and where it was raised in cc_imds. The
    exception's message is never shown: it may quote a token or a value. --debug lists
    the call stack (file, line, function), still without the message."""
    import traceback

    frames = traceback.extract_tb(exc.__traceback__)
    package = os.path.dirname(os.path.abspath(__file__))
    ours = [f for f in frames if os.path.abspath(f.filename).startswith(package + os.sep)] or frames
    where = ""
    if ours:
        frame = ours[-1]
        where = f" at {os.path.relpath(frame.filename, os.path.dirname(package))}:{frame.lineno} in {frame.name}"
    say(f"internal error: {type(exc).__name__}{where}; this is a bug, please report it with --debug output")
    if debug:
        say("\n".join(f"debug:   at {f.filename}:{f.lineno} in {f.name}" for f in frames))


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    original = sys.stdout
    sys.stdout = _GuardedStream(original)  # type: ignore[assignment]
    debug = "--debug" in argv  # until the arguments are parsed
    try:
        args = _plain_get(argv)
        if args is None:
            args = _parse(argv)
        debug = args.debug
        if args.debug:
            import logging

            logging.basicConfig(level=logging.DEBUG, format="cc-imds: %(levelname)s: %(message)s", stream=sys.stderr)
        else:
            from .logs import on_first_use

            on_first_use(_warnings_to_stderr)
        code = int(args.func(args))
        sys.stdout.flush()
        return code
    except OutputStreamError as exc:
        _discard_stdout(original)
        say(str(exc))
        return exc.exit_code
    except CcImdsError as exc:
        say(str(exc))
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # noqa: BLE001 - the last line of defence: never a traceback
        _internal_error(exc, debug)
        return INTERNAL_ERROR
    finally:
        sys.stdout = original


def run() -> NoReturn:
    """The installed `cc-imds` command (bin/cc-imds, as pip and the RPM install it) calls this.

    `get` is what scripts call where they called curl, often once per value, so its process
    skips two costs that a run of a few milliseconds gets nothing for: the cyclic garbage
    collector (its passes over the objects every import creates, while a `get` makes few
    cycles and exits at once) and the interpreter's teardown of every module at exit. Its
    output is flushed first, so nothing is lost. Every other command (the watcher runs for
    months) keeps the collector and exits as usual."""
    argv = sys.argv[1:]
    short_lived = argv[:1] == ["get"]
    if short_lived:
        gc.disable()
    code = main(argv)
    if not short_lived:
        sys.exit(code)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError, AttributeError):  # main already reported a failed stdout
            pass
    os._exit(code)


def _plain_get(argv: Sequence[str]) -> Optional[argparse.Namespace]:
    """A `get` command line read without argparse (scripts call `get` where they called curl,
    and argparse with its parsers is most of a cold start), or None when it is not plainly
    right: then argparse reads it, with its help and its messages."""
    from .tools.get import command_line

    found = command_line(argv)
    if found is None:
        return None
    return _Arguments(**found, debug=False, func=cmd_get)  # type: ignore[return-value]


class _Arguments:
    """What argparse's Namespace would hold, for a command line read by hand."""

    def __init__(self, **fields: object) -> None:
        self.__dict__.update(fields)


def _conf_dir(args: argparse.Namespace) -> Optional[str]:
    """The drop-in directory the declaration commands' options name: none (--no-conf-dir),
    --conf-dir as given, else $CC_IMDS_CONF_DIR or the default, under --root."""
    if args.no_conf_dir:
        return None
    if args.conf_dir:
        return str(args.conf_dir)
    from .declaration.dropins import CONF_DIR_ENV, DEFAULT_CONF_DIR

    default = os.environ.get(CONF_DIR_ENV, DEFAULT_CONF_DIR)
    root = getattr(args, "root", None) or "/"
    return os.path.join(root, default.lstrip("/"))


def _parse(argv: Sequence[str]) -> argparse.Namespace:
    parser = build_parser()
    try:
        args, rest = parser.parse_known_args(argv)
        if getattr(args, "takes_values", False):
            args.values = rest
        elif rest:
            parser.error(f"unrecognized arguments: {' '.join(rest)}")
        if hasattr(args, "no_conf_dir"):
            # One directory, or None for none, as every declaration command reads it: its default
            # depends on --root, which argparse cannot express.
            args.conf_dir = _conf_dir(args)
    except SystemExit:  # --help, --version or wrong usage: what argparse printed must get out too
        sys.stdout.flush()
        raise
    return args


def _warnings_to_stderr() -> None:
    """Warnings (an IMDSv1 fallback) in the CLI's format; set up only when one is logged."""
    import logging

    logging.basicConfig(level=logging.WARNING, format="cc-imds: %(levelname)s: %(message)s", stream=sys.stderr)
