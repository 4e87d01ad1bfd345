"""Run the commands of `on_change` and `events`: an argv list, no shell, a timeout, and the
command's output in our log, line by line.

Commands run in threads of their own, so a slow one never delays a poll: a spot notice
must not wait for an application's reload. Whatever IMDS serves, what runs is bounded:

- at most MAX_RUNNING commands at once (events and on_change together), each in one of
  MAX_RUNNING runner threads (plus one thread feeding its stdin);
- at most MAX_QUEUED runs wait for a free slot; a run asked for beyond that is refused,
  logged and counted (`cc-imds status` shows it). The watcher asks for an event's
  commands only when there is room for all of them (`room`), so a notice is deferred to a
  later poll rather than refused;
- runs under one key (an output's path) never overlap and merge: a change that comes
  while the previous command still runs or waits makes it run once more, with the latest.

A command runs in a new session, its own process group. The watcher owns that group:
a timeout, the watcher stopping, and also the command's own end (a normal exit) end
whatever is still running in it (`sleep 300 &`): SIGTERM, then SIGKILL. A process that
leaves the group (setsid, `systemd-run`) is on its own.
"""

from __future__ import annotations

import os
import select
import shlex
import signal
import subprocess
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Callable, Deque, Dict, List, Mapping, Optional

from ..declaration.build import Command
from ..logs import std_logger
from ..streams import write_all

LOG = std_logger(__name__)

KILL_GRACE = 2.0  # seconds between SIGTERM and SIGKILL for a command's process group
MAX_LOGGED_LINES = 200  # per run; what is beyond is counted, not logged
MAX_LINE = 1000  # characters of one logged line
AFTER_EXIT = 0.5  # keep reading output this long after the command exited (a child may still write)
MAX_RUNNING = 4  # commands at once, events and on_change together
MAX_QUEUED = 16  # runs waiting for a free slot
STARTED, QUEUED, MERGED, REFUSED = "started", "queued", "merged", "refused"
# How a run ended (Result.outcome): the exit-code buckets the metrics file counts. REFUSED
# (never queued) has no Result; the watcher counts it when start() returns it.
EXIT_0, EXIT_NONZERO, TIMEOUT, SIGNAL, NOT_STARTED = "exit_0", "exit_nonzero", "timeout", "signal", "not_started"


@dataclass(frozen=True)
class Result:
    key: str
    label: str  # "on_change /etc/app.conf", "spot-interruption notice 1a2b3c4d5e6f7a8b"
    started: float  # wall clock
    seconds: float
    exit_code: Optional[int]  # None when it could not start, or was killed
    error: Optional[str]  # None on exit 0
    outcome: str = EXIT_0  # EXIT_0, EXIT_NONZERO, TIMEOUT, SIGNAL or NOT_STARTED

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(frozen=True)
class _Request:
    key: str
    label: str
    command: Command
    env: Mapping[str, str]
    stdin: Optional[bytes]


class Runner:
    """Starts commands in the background and reports each end to `on_done` (from its thread)."""

    def __init__(self, on_done: Callable[[Result], None], environ: Optional[Mapping[str, str]] = None) -> None:
        self._on_done = on_done
        self._environ = dict(os.environ if environ is None else environ)
        self._lock = threading.Lock()
        self._running: Dict[str, Optional[subprocess.Popen[bytes]]] = {}
        self._pending: Dict[str, _Request] = {}  # the next run of a key that is running
        self._queue: Deque[_Request] = deque()  # runs waiting for a free slot, oldest first
        self._threads: List[threading.Thread] = []
        self.merged = 0  # runs folded into a later one of the same key
        self.refused = 0  # runs not done: every slot busy and the queue full
        self._stopping = False
        self._stop_grace = KILL_GRACE

    def start(
        self,
        key: str,
        label: str,
        command: Command,
        env: Optional[Mapping[str, str]] = None,
        stdin: Optional[bytes] = None,
    ) -> str:
        """Run `command` now, or once a slot is free. Returns STARTED, QUEUED, MERGED (into a
        run of the same key that waits: the latest request wins) or REFUSED (logged)."""
        request = _Request(key, label, command, dict(env or {}), stdin)
        with self._lock:
            if self._stopping:
                return REFUSED
            if key in self._running:
                merged = key in self._pending
                self._pending[key] = request  # the latest change wins; one more run after this one
                self.merged += merged
                LOG.info("%s: still running; it runs again when it ends", label)
                return MERGED if merged else QUEUED
            for index, waiting in enumerate(self._queue):
                if waiting.key == key:
                    self._queue[index] = request
                    self.merged += 1
                    return MERGED
            if len(self._running) >= MAX_RUNNING:
                if len(self._queue) >= MAX_QUEUED:
                    self.refused += 1
                    LOG.error("%s: not run: %d commands are running and %d waiting, the most cc-imds watch allows",
                              label, len(self._running), len(self._queue))
                    return REFUSED
                self._queue.append(request)
                LOG.info("%s: waits for one of the %d commands running to end", label, len(self._running))
                return QUEUED
            self._running[key] = None
            thread = threading.Thread(target=self._run, args=(request,), name="command runner", daemon=True)
            self._threads = [t for t in self._threads if t.is_alive()]
            self._threads.append(thread)
        thread.start()
        return STARTED

    def busy(self) -> int:
        with self._lock:
            return len(self._running)

    def room(self) -> int:
        """How many more runs would be started or queued, not refused."""
        with self._lock:
            return MAX_RUNNING + MAX_QUEUED - len(self._running) - len(self._queue)

    def counts(self) -> Dict[str, int]:
        """For the status file: what runs, waits, was merged or refused, and the limits."""
        with self._lock:
            return {"running": len(self._running), "queued": len(self._queue), "merged": self.merged,
                    "refused": self.refused, "max_running": MAX_RUNNING, "max_queued": MAX_QUEUED}

    def stop(self, grace: float = KILL_GRACE) -> None:
        """Start nothing more; end running commands (SIGTERM to each process group, SIGKILL
        after `grace`), and wait for their threads."""
        with self._lock:
            self._stopping = True
            self._stop_grace = grace
            self._pending.clear()
            self._queue.clear()
            procs = [p for p in self._running.values() if p is not None]
            threads = list(self._threads)
        _end_groups(procs, grace)
        for thread in threads:
            thread.join(grace + AFTER_EXIT + 1.0)

    # -- one run --------------------------------------------------------------------------
    def _run(self, request: _Request) -> None:
        while True:
            result = self._execute(request)
            try:
                self._on_done(result)
            except Exception:  # a reporting bug must not kill the runner thread
                LOG.exception("reporting the result of %s failed", request.label)
            with self._lock:
                following = self._pending.pop(request.key, None)
                if following is None or self._stopping:
                    del self._running[request.key]
                    if self._stopping or not self._queue:
                        return
                    following = self._queue.popleft()  # this thread's slot goes to the oldest waiting run
                self._running[following.key] = None
            request = following

    def _execute(self, request: _Request) -> Result:
        command = request.command
        started, clock = time.time(), time.monotonic()
        LOG.info("%s: running %s", request.label, shlex.join(command.argv))
        env = dict(self._environ)
        env.update(request.env)
        try:
            proc = subprocess.Popen(  # noqa: S603 - an argv list from a root-owned declaration, no shell
                list(command.argv),
                stdin=subprocess.PIPE if request.stdin is not None else subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                env=env,
                cwd="/",
                close_fds=True,
                start_new_session=True,
            )
        except OSError as exc:
            problem = f"cannot run {command.argv[0]}: {exc.strerror or exc}"
            LOG.error("%s: %s", request.label, problem)
            return Result(request.key, request.label, started, 0.0, None, problem, NOT_STARTED)
        with self._lock:
            self._running[request.key] = proc
            stopping, grace = self._stopping, self._stop_grace
        if stopping:  # stop() ran while this command was starting, so it could not end it
            _end_groups([proc], grace)
        if request.stdin is not None:
            threading.Thread(target=_feed, args=(proc, request.stdin), name=f"stdin {request.key}",
                             daemon=True).start()
        timed_out = _pump(proc, request.label, clock + command.timeout)
        seconds = time.monotonic() - clock
        if not timed_out and _group_alive(proc.pid):  # `sleep 300 &`: the watcher owns what its command leaves
            LOG.info("%s: ending what it left running in its process group", request.label)
            _end_groups([proc], KILL_GRACE)
        code: Optional[int] = proc.returncode
        error: Optional[str]
        outcome = EXIT_0
        if timed_out:
            error = f"timed out after {command.timeout:g}s; its process group was killed"
            code, outcome = None, TIMEOUT
        elif code:
            error = f"killed by signal {-code}" if code < 0 else f"exited {code}"
            outcome = SIGNAL if code < 0 else EXIT_NONZERO
            code = code if code > 0 else None
        else:
            error = None
        if error:
            LOG.error("%s: failed: %s (%.1fs)", request.label, error, seconds)
        else:
            LOG.info("%s: done in %.1fs", request.label, seconds)
        return Result(request.key, request.label, started, seconds, code, error, outcome)


def _feed(proc: subprocess.Popen[bytes], data: bytes) -> None:
    """Write the notice to stdin, then close it, in a thread of its own: a command that
    does not read it blocks only this thread, until it exits or is killed."""
    assert proc.stdin is not None
    try:
        write_all(proc.stdin.fileno(), data)  # unbuffered: every byte, or the command left (EPIPE)
    except OSError:
        pass  # it exited without reading: its business
    finally:
        try:
            proc.stdin.close()
        except OSError:
            pass


class _OutputLog:
    """A command's output, logged line by line, bounded."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.logged = 0
        self.dropped = 0
        self.partial = b""

    def feed(self, chunk: bytes) -> None:
        lines = (self.partial + chunk).split(b"\n")
        self.partial = lines.pop()
        if len(self.partial) > MAX_LINE * 4:
            lines.append(self.partial)
            self.partial = b""
        for line in lines:
            self._emit(line)

    def finish(self) -> None:
        if self.partial:
            self._emit(self.partial)
        if self.dropped:
            LOG.info("%s: (%d more line(s) of output not logged)", self.label, self.dropped)

    def _emit(self, line: bytes) -> None:
        if self.logged >= MAX_LOGGED_LINES:
            self.dropped += 1
            return
        text = line.decode("utf-8", "replace").rstrip("\r")
        LOG.info("%s: %s", self.label, text[:MAX_LINE] + ("..." if len(text) > MAX_LINE else ""))
        self.logged += 1


def _read_some(fd: int, wait: float, output: _OutputLog) -> Optional[bool]:
    """Read what is there within `wait` seconds: True if something came, False at end of
    output, None if nothing came."""
    ready, _, _ = select.select([fd], [], [], max(0.0, wait))
    if not ready:
        return None
    chunk = os.read(fd, 65536)
    if not chunk:
        return False
    output.feed(chunk)
    return True


def _pump(proc: subprocess.Popen[bytes], label: str, give_up_at: float) -> bool:
    """Log the command's output until it exits; at `give_up_at`, kill its process group.
    Returns True if it timed out."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    output = _OutputLog(label)
    timed_out = False
    output_open = True
    while output_open and proc.poll() is None:
        remaining = give_up_at - time.monotonic()
        if remaining <= 0:
            break
        output_open = _read_some(fd, min(remaining, 1.0), output) is not False
    try:
        proc.wait(max(0.0, give_up_at - time.monotonic()))
    except subprocess.TimeoutExpired:
        timed_out = True
        _terminate(proc)
    # What is still in the pipe; a child left running may hold it open, so not for long.
    drain_until = time.monotonic() + AFTER_EXIT
    while output_open and time.monotonic() < drain_until:
        output_open = _read_some(fd, drain_until - time.monotonic(), output) is True
    proc.stdout.close()
    output.finish()
    return timed_out


def _terminate(proc: subprocess.Popen[bytes]) -> None:
    _end_groups([proc], KILL_GRACE)
    proc.wait()


def _end_groups(procs: List[subprocess.Popen[bytes]], grace: float) -> None:
    """SIGTERM to each command's process group; SIGKILL, after `grace`, to each group that
    still has a live process. The group, not its leader: a child that ignores SIGTERM
    outlives a leader that obeys it, and would run on with no timeout left."""
    for proc in procs:
        _signal_group(proc, signal.SIGTERM)
    give_up = time.monotonic() + grace
    alive = list(procs)
    while alive and time.monotonic() < give_up:
        time.sleep(0.05)
        alive = [proc for proc in alive if _group_alive(proc.pid)]
    for proc in alive:
        _signal_group(proc, signal.SIGKILL)


def _group_alive(pgid: int) -> bool:
    """Does process group `pgid` have a process that is not a zombie? (Its leader may be
    one: exited, not yet reaped.) Without /proc, assume it does."""
    try:
        entries = os.listdir("/proc")
    except OSError:
        return True
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as handle:
                fields = handle.read().rsplit(b")", 1)[1].split()
        except (OSError, IndexError):
            continue  # ended meanwhile
        if len(fields) > 2 and fields[2] == str(pgid).encode() and fields[0] not in (b"Z", b"X"):
            return True
    return False


def _signal_group(proc: subprocess.Popen[bytes], sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass
