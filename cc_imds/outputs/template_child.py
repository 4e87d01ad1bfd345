"""Template rendering in a child process, bounded in time, memory and output size.

A template can loop for hours (nested loops over `range(100000)`), build gigabytes in
one C-level call (`'%*d' | format(10**9, 1)`) or recurse, and nothing inside the process
can interrupt a single C-level call. So templates render in a forked child:

- time: the parent waits at most until the deadline, then kills the child (SIGKILL);
  RLIMIT_CPU ends the child even if the parent dies first;
- memory: the child's address space may grow by at most MEMORY_ALLOWANCE beyond what the
  process already had (RLIMIT_AS), so an allocation past it fails with MemoryError;
- size: the parent reads each output as it is produced, and kills the child as soon as
  one output passes OUTPUT_MAX or all of them TOTAL_MAX.

The fork happens only when there is a template to render, and templates are compiled
before it. The child renders, writes frames to a pipe and leaves with os._exit: it
imports nothing, logs nothing, runs no atexit handler and flushes no inherited buffer,
so forking a process that has other threads (cloud-init, a test runner) is safe. The
one exception is the watcher's (render's `compile_in_child`): it compiles in the child,
which imports Jinja2 there, so that the long-lived watcher never holds it; no other of
its threads imports anything meanwhile, and the deadline bounds the child whatever it does.
"""

from __future__ import annotations

import gc
import math
import os
import resource
import select
import signal
import struct
from dataclasses import dataclass
from typing import Callable, Iterator, List, NoReturn, Optional, Sequence, Tuple, Union

from ..deadline import Deadline
from ..streams import write_all

MiB = 1024 * 1024
MEMORY_ALLOWANCE = 256 * MiB
OUTPUT_MAX = 16 * MiB
TOTAL_MAX = 64 * MiB
_CHUNK = 64 * 1024
_MESSAGE_MAX = 2000

_FRAME = struct.Struct("!BII")  # kind, job index, payload length
_DATA, _DONE, _FAILED, _OUT_OF_MEMORY = 1, 2, 3, 4


@dataclass(frozen=True)
class Job:
    """One template to render: a generator of its text, and how to word a failure."""

    pieces: Callable[[], Iterator[str]]
    describe: Callable[[BaseException], str]


@dataclass(frozen=True)
class Failed:
    """Why a job produced no output. Never holds output text."""

    problem: str


Outcome = Union[bytes, Failed]


def run(jobs: Sequence[Job], deadline: Deadline, total_max: int = TOTAL_MAX) -> List[Outcome]:
    """Each job's UTF-8 bytes, or why it has none, in job order. A job stopped for its size
    or by a crash does not stop the others: they continue in a new child. All outputs
    together may take `total_max` bytes (less than TOTAL_MAX when others took some)."""
    outcomes: List[Optional[Outcome]] = [None] * len(jobs)
    start = 0
    while start < len(jobs):
        start = _run_child(jobs, start, deadline, outcomes, total_max)
    return [outcome if outcome is not None else Failed("not rendered") for outcome in outcomes]


def _run_child(
    jobs: Sequence[Job], start: int, deadline: Deadline, outcomes: List[Optional[Outcome]], total_max: int
) -> int:
    """Render jobs[start:] in one child; return the index the next child starts at."""
    if deadline.expired():
        _fail_rest(outcomes, start, f"not rendered: the {deadline.seconds:g}s deadline had passed")
        return len(jobs)
    memory_limit = _address_space() + MEMORY_ALLOWANCE
    cpu_seconds = math.ceil(deadline.remaining()) + 1
    read_fd, write_fd = os.pipe()
    thaw = _freeze()
    try:
        pid = os.fork()
    except OSError as exc:
        thaw()
        os.close(read_fd)
        os.close(write_fd)
        _fail_rest(outcomes, start, f"cannot start the template renderer: {exc.strerror}")
        return len(jobs)
    if pid == 0:
        os.close(read_fd)
        _child(jobs, start, write_fd, memory_limit, cpu_seconds)
    thaw()
    os.close(write_fd)
    child = _Child(pid)
    try:
        return _collect(child, read_fd, len(jobs), start, deadline, outcomes, total_max)
    finally:
        os.close(read_fd)
        child.kill()


def _fail_rest(outcomes: List[Optional[Outcome]], start: int, problem: str) -> None:
    for index in range(start, len(outcomes)):
        outcomes[index] = Failed(problem)


def _address_space() -> int:
    """This process's mapped address space in bytes (the child starts with the same)."""
    try:
        fd = os.open("/proc/self/statm", os.O_RDONLY)
        try:
            return int(os.read(fd, 256).split()[0]) * os.sysconf("SC_PAGE_SIZE")
        finally:
            os.close(fd)
    except (OSError, ValueError, IndexError):
        return -1  # unknown: no address-space limit; time and size still bound the child


def _freeze() -> Callable[[], None]:
    """Put every existing object out of the collector's reach for the fork: the child's
    collections then neither touch (copy) the parent's pages nor run its finalizers."""
    already = gc.get_freeze_count() > 0
    gc.freeze()
    return (lambda: None) if already else gc.unfreeze


# -- the child ------------------------------------------------------------------------
def _child(jobs: Sequence[Job], start: int, fd: int, memory_limit: int, cpu_seconds: int) -> NoReturn:
    status = 70
    try:
        _confine(memory_limit, cpu_seconds)
        for index in range(start, len(jobs)):
            _render_one(jobs[index], index, fd)
        status = 0
    except BaseException:  # noqa: BLE001, S110 - nothing may escape a forked child; the parent reports it
        pass
    finally:
        os._exit(status)


def _confine(memory_limit: int, cpu_seconds: int) -> None:
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, signal.SIG_DFL)  # no inherited handler (cloud-init's) runs here
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    os.close(devnull)
    _lower(resource.RLIMIT_CORE, 0)
    _lower(resource.RLIMIT_CPU, cpu_seconds)  # soft = hard: SIGKILL, not a catchable SIGXCPU
    if memory_limit > 0:
        _lower(resource.RLIMIT_AS, memory_limit)


def _lower(which: int, value: int) -> None:
    _, hard = resource.getrlimit(which)
    if hard != resource.RLIM_INFINITY:
        value = min(value, hard)
    resource.setrlimit(which, (value, value))


def _render_one(job: Job, index: int, fd: int) -> None:
    problem: Optional[str] = None
    out_of_memory = False
    pending: List[str] = []
    try:
        size = 0
        for piece in job.pieces():
            pending.append(piece)
            size += len(piece)
            if size >= _CHUNK:
                _send(fd, _DATA, index, "".join(pending).encode("utf-8"))
                pending, size = [], 0
        _send(fd, _DATA, index, "".join(pending).encode("utf-8"))
    except MemoryError:
        out_of_memory = True
    except Exception as exc:  # noqa: BLE001 - a template may raise anything; describe() words it safely
        try:
            problem = job.describe(exc)[:_MESSAGE_MAX]
        except MemoryError:
            out_of_memory = True
        except Exception:  # noqa: BLE001
            problem = f"template raised {type(exc).__name__}"
    pending = []  # what the failed template built is released before reporting
    if out_of_memory:
        _send(fd, _OUT_OF_MEMORY, index, b"")
    elif problem is not None:
        _send(fd, _FAILED, index, problem.encode("utf-8", "replace"))
    else:
        _send(fd, _DONE, index, b"")


def _send(fd: int, kind: int, index: int, payload: bytes) -> None:
    if kind == _DATA and not payload:
        return
    view = memoryview(payload)
    offset = 0
    while True:  # DATA in chunks, so the parent never buffers more than one chunk
        part = view[offset : offset + _CHUNK]
        write_all(fd, _FRAME.pack(kind, index, len(part)))
        write_all(fd, part)
        offset += len(part)
        if offset >= len(view):
            return


# -- the parent -----------------------------------------------------------------------
class _Child:
    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.status: Optional[int] = None

    def wait(self) -> int:
        if self.status is None:
            try:
                self.status = os.waitpid(self.pid, 0)[1]
            except ChildProcessError:  # SIGCHLD ignored: reaped by the kernel
                self.status = -1
        return self.status

    def kill(self) -> None:
        if self.status is None:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.wait()


def _collect(
    child: _Child,
    fd: int,
    count: int,
    start: int,
    deadline: Deadline,
    outcomes: List[Optional[Outcome]],
    total_max: int,
) -> int:
    frames = _Frames()
    output = bytearray()
    current = start
    total = sum(len(o) for o in outcomes if isinstance(o, bytes))
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    while True:
        remaining = deadline.remaining()
        if remaining <= 0:
            child.kill()
            if current >= count:  # everything arrived; only the child's exit was late
                return count
            outcomes[current] = Failed(f"stopped at the {deadline.seconds:g}s deadline (too slow)")
            _fail_rest(outcomes, current + 1, f"not rendered: the {deadline.seconds:g}s deadline had passed")
            return count
        if not poller.poll(max(1, math.ceil(remaining * 1000))):
            continue
        data = os.read(fd, 4 * _CHUNK)
        if not data:
            break
        for kind, index, payload in frames.feed(data):
            current = index
            if kind == _DATA:
                output += payload
                if len(output) > OUTPUT_MAX or total + len(output) > total_max:
                    child.kill()
                    outcomes[index] = Failed(_size_problem(len(output) > OUTPUT_MAX))
                    return index + 1
                continue
            if kind == _DONE:
                outcomes[index] = bytes(output)
                total += len(output)
            elif kind == _OUT_OF_MEMORY:
                outcomes[index] = Failed(f"stopped: it needed more than {MEMORY_ALLOWANCE // MiB} MiB of memory")
            else:
                outcomes[index] = Failed(payload.decode("utf-8", "replace"))
            output = bytearray()
            current = index + 1
    if current >= count:
        child.wait()
        return count
    outcomes[current] = Failed(f"stopped: {_death(child.wait())}")
    return current + 1


def _size_problem(one: bool) -> str:
    if one:
        return f"stopped: the output passed {OUTPUT_MAX // MiB} MiB"
    return f"stopped: the templates' outputs together passed {TOTAL_MAX // MiB} MiB"


def _death(status: int) -> str:
    if status >= 0 and os.WIFSIGNALED(status):
        number = os.WTERMSIG(status)
        try:
            name = signal.Signals(number).name
        except ValueError:
            name = f"signal {number}"
        hint = " (out of memory or CPU time)" if number == signal.SIGKILL else ""
        return f"the template renderer was killed by {name}{hint}"
    if status >= 0 and os.WIFEXITED(status):
        return f"the template renderer exited with status {os.WEXITSTATUS(status)}"
    return "the template renderer ended unexpectedly"


class _Frames:
    """Splits the child's byte stream into (kind, index, payload) frames."""

    def __init__(self) -> None:
        self.buffer = bytearray()

    def feed(self, data: bytes) -> Iterator[Tuple[int, int, bytes]]:
        self.buffer += data
        while len(self.buffer) >= _FRAME.size:
            kind, index, length = _FRAME.unpack_from(self.buffer)
            end = _FRAME.size + length
            if len(self.buffer) < end:
                return
            payload = bytes(self.buffer[_FRAME.size : end])
            del self.buffer[:end]
            yield kind, index, payload

