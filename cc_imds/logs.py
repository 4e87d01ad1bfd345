"""Loggers that import `logging` only when a message could be shown.

cloud-init has imported and configured `logging` before it runs the module, and
`cc-imds --debug` configures it too: then every message goes through it as usual. A
process that has not imported `logging` has no handler and no level set, so `logging`
would drop its debug and info messages; they are dropped here without importing it,
which a cold `cc-imds get` would otherwise pay for on every call. Warnings and errors
always go through `logging`.

Text from outside (an IMDS notice, a tag, a file name) reaches log lines, error messages
and `cc-imds status`. Where it leaves the process, it is shown with `shown`: control and
other unprintable characters escaped, so a notice's ESC sequence cannot rewrite the
operator's terminal and a line break cannot forge a log line. One filter on every cc_imds
logger (`std_logger`, and the lazy Logger below) does it for log lines; the CLI's error
printer (`say`, below), `status` and the cloud-init module's re-raised error call `shown`
themselves.
It runs after secrets are scrubbed, so it never changes what the scrubber looks for.
"""

from __future__ import annotations

import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    import logging
    from typing import Callable, Optional

DEBUG, INFO, WARNING, ERROR = 10, 20, 30, 40

_first_use: Optional[Callable[[], None]] = None
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def shown(text: str) -> str:
    """`text` as it may be shown on a terminal or in a log: every character that is not
    printable (C0 and C1 controls, DEL, ESC, bidi overrides, zero-width marks) written as
    an escape (\\n, \\x1b, \\u202e)."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else _NAMED.get(c) or (f"\\x{ord(c):02x}" if ord(c) < 0x100 else
                                                               f"\\u{ord(c):04x}" if ord(c) < 0x10000 else
                                                               f"\\U{ord(c):08x}") for c in text)


def say(lines: str) -> None:
    """Errors to stderr, one line each, as `cc-imds: ...`, each shown with `shown`; a stderr
    that cannot be written is given up on."""
    try:
        for line in lines.splitlines():
            print(f"cc-imds: {shown(line)}", file=sys.stderr)
        sys.stderr.flush()
    except (OSError, ValueError, AttributeError):
        pass


def shown_lines(text: str) -> str:
    """`shown` for each line of a message of several lines, its line breaks kept."""
    return "\n".join(shown(line) for line in text.split("\n"))


class _Escaping:
    """A logging filter: the record's message, formatted, through `shown`."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        escaped = shown(message)
        if escaped != message:
            record.msg, record.args = escaped, None
        return True


_ESCAPING = _Escaping()


def std_logger(name: str) -> logging.Logger:
    """`logging.getLogger(name)`, its messages shown with `shown` whatever handler takes them
    (ours, cloud-init's, a test's)."""
    import logging

    logger = logging.getLogger(name)
    if _ESCAPING not in logger.filters:
        logger.addFilter(_ESCAPING)
    return logger


def on_first_use(setup: Optional[Callable[[], None]]) -> None:
    """Run `setup` (configure handlers) just before `logging` is first imported for a message."""
    global _first_use  # one process-wide hook, set by the CLI
    _first_use = setup


class Logger:
    """The subset of `logging.Logger` this package uses, by name."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def log(self, level: int, msg: str, *args: object) -> None:
        global _first_use
        if level < WARNING and "logging" not in sys.modules:
            return
        if level >= WARNING and _first_use is not None:
            setup, _first_use = _first_use, None
            setup()
        std_logger(self.name).log(level, msg, *args)

    def debug(self, msg: str, *args: object) -> None:
        self.log(DEBUG, msg, *args)

    def info(self, msg: str, *args: object) -> None:
        self.log(INFO, msg, *args)

    def warning(self, msg: str, *args: object) -> None:
        self.log(WARNING, msg, *args)

    def error(self, msg: str, *args: object) -> None:
        self.log(ERROR, msg, *args)


def get_logger(name: str) -> Logger:
    return Logger(name)
