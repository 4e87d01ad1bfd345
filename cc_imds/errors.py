"""One small exception hierarchy: one type per failure a user can act on.

Every message names the key, IMDS path or file involved, and never contains
a token, a credential or a value marked sensitive.
"""

from __future__ import annotations

TYPE_CHECKING = False  # not typing's, which `cc-imds get` would import for nothing
if TYPE_CHECKING:
    from typing import Any, Callable, Iterable, List


class CcImdsError(Exception):
    """Base class: an expected failure, reported without a traceback."""

    exit_code = 1

    def scrubbed(self, scrub: Callable[[str], str]) -> CcImdsError:
        """A copy of this error, of the same type, with every text passed through `scrub`:
        its message and each text attribute (path, problems). The copy has no traceback and
        no chained exception, which could still hold what was scrubbed."""
        copy = type(self).__new__(type(self))
        copy.args = tuple(scrub(arg) if isinstance(arg, str) else arg for arg in self.args)
        copy.__dict__.update({name: _scrubbed(value, scrub) for name, value in self.__dict__.items()})
        return copy


def _scrubbed(value: Any, scrub: Callable[[str], str]) -> Any:
    if isinstance(value, str):
        return scrub(value)
    if isinstance(value, list):
        return [_scrubbed(item, scrub) for item in value]
    return value


class ProblemsError(CcImdsError):
    """A failure with several problems, all reported at once, one per line."""

    def __init__(self, problems: Iterable[str]) -> None:
        self.problems: List[str] = list(problems)
        super().__init__("\n".join(self.problems))


class DeclarationError(ProblemsError):
    """The declaration is invalid. Carries every problem found, not just the first."""

    exit_code = 1


class ImdsError(CcImdsError):
    """IMDS could not be reached or answered in a way we cannot use."""

    exit_code = 3

    def __init__(self, path: str, message: str) -> None:
        self.path = path
        super().__init__(f"{path}: {message}")


class ImdsNotFound(ImdsError):
    """IMDS answered 404 for the path: the value does not exist on this instance."""

    def __init__(self, path: str, hint: str = "") -> None:
        message = "not found (404)" + (f"; {hint}" if hint else "")
        super().__init__(path, message)


class ImdsUnreachable(ImdsError):
    """No usable answer before the deadline: nothing listening, or only retryable errors."""


class ResolveError(ProblemsError):
    """One or more declared values could not be resolved. Lists all of them."""

    exit_code = 3


class RenderError(ProblemsError):
    """A value cannot be written exactly in the declared format, or a template failed."""

    exit_code = 1


class WriteError(CcImdsError):
    """An output file could not be written. Nothing was replaced."""

    exit_code = 4

    def __init__(self, path: str, message: str) -> None:
        self.path = path
        super().__init__(f"{path}: {message}")


class OutputStreamError(WriteError):
    """Standard output cannot be written: a full disk, a closed pipe. Exit 4, as for any output."""

    def __init__(self, reason: str, broken_pipe: bool = False) -> None:
        super().__init__("standard output", f"cannot write: {reason}")
        self.broken_pipe = broken_pipe  # the reader went away (`| head`)
