"""Loggers that import `logging` only when a message could be shown.

cloud-init has imported and configured `logging` before it runs the module, and
`cc-imds --debug` configures it too: then every message goes through it as usual. A
process that has not imported `logging` has no handler and no level set, so `logging`
would drop its debug and info messages; they are dropped here without importing it,
which a cold `cc-imds get` would otherwise pay for on every call. Warnings and errors
always go through `logging`.
"""

from __future__ import annotations

import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Callable, Optional

DEBUG, INFO, WARNING, ERROR = 10, 20, 30, 40

_first_use: Optional[Callable[[], None]] = None


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
        import logging

        logging.getLogger(self.name).log(level, msg, *args)

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
