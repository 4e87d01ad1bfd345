"""The watcher's declaration, read and checked in a short-lived child process.

Reading a declaration takes PyYAML, jsonschema and (for templates that are more than
`{{ name }}`) Jinja2: about 9 MiB of libraries that the watcher needs only when it starts
and on SIGHUP. Unloading modules frees little in CPython, so they are never loaded into
the watcher: a forked child loads the documents (drop-ins, the saved `imds:` key or a
FILE), builds the Declaration, sends it back and exits. What the child loaded dies with it.
The Declaration is plain frozen dataclasses of the declaration part, which the watcher has
imported anyway; it travels as marshal data (`_encode`), not pickle: marshal is built in,
pickle would cost the watcher 0.4 MiB for good, and only the declaration's own classes can
come back.

The child is a fork of the watcher, so it reads what the watcher would have read, as the
same user, and its log lines go where the watcher's go. It exits with os._exit: no atexit
handler, no flush of a buffer it inherited. The watcher's signal handlers are undone in
it first, so a SIGTERM sent to the whole unit ends it.

Forking a process with threads is safe here because of what the other threads do: on a
reload, only command runners may be running (IMDS requests end with each pass), and they
hold no lock the child needs but logging's, which logging re-creates in a forked child;
CPython holds its import lock across the fork. Whatever happens, the child is bounded by
BUILD_SECONDS: a child that hangs is killed, and the reload refused.
"""

from __future__ import annotations

import marshal
import os
import select
import signal
import time
from dataclasses import fields, is_dataclass
from typing import Any, Callable, Dict, List, NoReturn, Optional, Sequence

from ..declaration import build
from ..declaration.build import Declaration, SourceDocument, build_declaration
from ..errors import CcImdsError, DeclarationError
from ..streams import write_all

BUILD_SECONDS = 30.0  # reading and checking every document takes well under a second; the loop waits no longer
_CHUNK = 65536

# The classes a Declaration is made of, the dataclasses of declaration/build.py (so a new kind of
# output comes back without a change here): the only classes that can come back from the child.
_CLASSES: Dict[str, Any] = {name: cls for name, cls in vars(build).items()
                            if isinstance(cls, type) and is_dataclass(cls) and cls.__module__ == build.__name__}
_OBJECT = "\0dataclass"  # first item of an encoded dataclass; no tuple of a declaration starts so


def build_in_child(load: Callable[[], Sequence[SourceDocument]], seconds: float = BUILD_SECONDS) -> Declaration:
    """build_declaration(load()), computed in a child. Raises DeclarationError with every
    problem the child found, CcImdsError if the child failed, RuntimeError (with the
    child's traceback) for a bug, as the same call in this process would have raised."""
    read_fd, write_fd = os.pipe()
    try:
        pid = os.fork()
    except OSError as exc:
        os.close(read_fd)
        os.close(write_fd)
        raise CcImdsError(f"cannot start a process to read the declaration: {exc.strerror}") from None
    if pid == 0:
        os.close(read_fd)
        _child(load, write_fd)
    os.close(write_fd)
    data = None
    try:
        data = _read_all(read_fd, time.monotonic() + seconds)
    finally:
        os.close(read_fd)
        _end(pid, kill=data is None)
    if data is None:
        raise CcImdsError(f"reading the declaration took more than {seconds:g}s; it was stopped")
    try:
        kind, payload = marshal.loads(data)  # noqa: S302 - from our own fork, through a pipe only it holds
    except (EOFError, ValueError, TypeError):  # the child died mid-message
        raise CcImdsError("the process reading the declaration ended without an answer") from None
    if kind == "declaration":
        declaration = _decode(payload)
        assert isinstance(declaration, Declaration)
        return declaration
    if kind == "problems":
        raise DeclarationError(payload)
    if kind == "error":
        raise CcImdsError("\n".join(payload))
    raise RuntimeError(f"reading the declaration failed:\n{payload}")


def _encode(thing: Any) -> Any:
    """A Declaration as data marshal can carry: each dataclass as (_OBJECT, class name, fields...)."""
    if is_dataclass(thing) and not isinstance(thing, type):
        if type(thing).__name__ not in _CLASSES:
            raise TypeError(f"{type(thing).__name__} is not part of a declaration")
        return (_OBJECT, type(thing).__name__, *(_encode(getattr(thing, f.name)) for f in fields(thing)))
    if isinstance(thing, tuple):
        return tuple(_encode(item) for item in thing)
    if isinstance(thing, list):
        return [_encode(item) for item in thing]
    if isinstance(thing, dict):
        return {key: _encode(value) for key, value in thing.items()}
    return thing  # str, int, float, bool, None, frozenset of str: marshal carries them as they are


def _decode(data: Any) -> Any:
    if isinstance(data, tuple):
        if data and data[0] == _OBJECT:
            return _CLASSES[data[1]](*(_decode(item) for item in data[2:]))
        return tuple(_decode(item) for item in data)
    if isinstance(data, list):
        return [_decode(item) for item in data]
    if isinstance(data, dict):
        return {key: _decode(value) for key, value in data.items()}
    return data


def _child(load: Callable[[], Sequence[SourceDocument]], fd: int) -> NoReturn:
    status = 70
    try:
        signal.set_wakeup_fd(-1)  # the watcher's wake pipe is the watcher's
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, signal.SIG_DFL)
        reply: Any
        try:
            reply = ("declaration", _encode(build_declaration(load())))
        except DeclarationError as exc:
            reply = ("problems", exc.problems)
        except CcImdsError as exc:
            reply = ("error", str(exc).splitlines())
        except Exception:  # noqa: BLE001 - a bug: the watcher raises it with this traceback
            import traceback

            reply = ("bug", traceback.format_exc())
        write_all(fd, marshal.dumps(reply))
        status = 0
    except BaseException:  # noqa: BLE001, S110 - nothing may escape a forked child; the parent reports it
        pass
    finally:
        os._exit(status)


def _read_all(fd: int, give_up_at: float) -> Optional[bytes]:
    """Everything the child writes until it closes the pipe, or None at `give_up_at`."""
    chunks: List[bytes] = []
    while True:
        remaining = give_up_at - time.monotonic()
        if remaining <= 0:
            return None
        ready, _, _ = select.select([fd], [], [], remaining)
        if not ready:
            continue
        chunk = os.read(fd, _CHUNK)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def _end(pid: int, kill: bool) -> None:
    """Reap the child: it closed the pipe, so it is exiting; or it overran, and is killed."""
    try:
        if kill:
            os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    except (ChildProcessError, ProcessLookupError):  # SIGCHLD ignored: reaped by the kernel
        pass
