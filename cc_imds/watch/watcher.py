"""`cc-imds watch`: keep the outputs true while the instance runs.

Not a second pipeline: a loop around the boot run's own, run again for what changed.

    schedule (due paths) -> resolve those values -> render the outputs that use them
        -> write (the same writer, the same lock) -> on_change for outputs that changed
    schedule (due events) -> fetch the notices -> run each new notice's commands once
    schedule (lifecycle) -> fetch the state -> a transition runs its states' commands once

- One IMDS client for the watcher's life: one token, reused, renewed before it expires.
  Every poll has a deadline of its own.
- A failed poll changes nothing: the last good values stay, so a `default` never replaces
  a known value because IMDS failed, and no file is rewritten. The path is polled again
  with backoff, and the watcher recovers by itself.
- Only outputs that use a value that changed are rendered again. An output that cannot be
  rendered or written is retried with backoff, without holding the others back.
- SIGTERM and SIGINT stop it between two steps, never inside a write; commands still
  running are ended. SIGHUP reloads the declarations: an invalid one is refused, every
  problem logged, and the running one kept.
"""

from __future__ import annotations

import math
import os
import queue
import random
import select
import signal
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Set, Tuple, Union

from .. import signals
from ..deadline import Deadline
from ..declaration.build import (
    CredentialOutput,
    Declaration,
    Origin,
    OutputSpec,
    Quiet,
    SourceDocument,
    ValueSpec,
)
from ..errors import CcImdsError, ImdsError, ImdsNotFound, ProblemsError, RenderError, WriteError
from ..files.lock import locked_alone
from ..imds.autoscaling import LIFECYCLE_PATH
from ..imds.client import ImdsClient
from ..logs import std_logger
from ..outputs.render import Output, render
from ..outputs.write import Change, write_outputs
from ..pipeline import RunOptions, client_settings, scrubber_for
from ..values import Value, Values, resolve
from ..version import __version__
from . import lifecycle, metrics, quiet, rundir
from .build_child import build_in_child
from .commands import MERGED, QUEUED, REFUSED, STARTED, Result, Runner
from .events import (
    LIFECYCLE,
    Notice,
    lifecycle_state,
    notice_env,
    notices,
    state_chosen,
    transition_notice,
)
from .holders import holder
from .schedule import (
    EventWatch,
    Group,
    PollState,
    WatchPlan,
    after_failures,
    event_due,
    expiration,
    next_due,
    plan,
)
from .status import FORMAT, iso

LOG = std_logger(__name__)

POLL_DEADLINE = 10.0  # one poll, every request and retry in it, and its write
MAX_SLEEP = 300.0  # wake at least this often, so a wall clock stepped forward is noticed
CLOCK_STEP_BACK = 2.0  # the wall clock going back more than this between passes is a step (NTP)
HANDLED_KEPT = 100  # notice ids remembered per event
NEW_NOTICES_PER_POLL = 10  # more than this in one answer waits for the next polls
NOTICES_CONSIDERED = HANDLED_KEPT // 2  # of one answer: all of them stay remembered, so none runs twice
NOTICES_SHOWN = 5  # recent notices per event in the status file
NOTICES_PER_MINUTE = 60  # per event: acted on in any 60 s; more wait for later polls (IMDS still lists them)
INSTANCE_ID_PATH = "meta-data/instance-id"  # lifecycle memory belongs to one instance
_EXPIRATION = "~expiration "  # hidden value: a credential document, read only for its Expiration
_HIDDEN_ORIGIN = "cc-imds watch:"
_MISSING = object()


@dataclass(frozen=True)
class WatchOptions:
    endpoint: Optional[str] = None  # overrides the declaration (CLI --endpoint)
    lock_path: Optional[str] = None  # the lock apply uses (write.default_lock_path)
    run_dir: Path = field(default_factory=rundir.run_dir)
    state_dir: Path = field(default_factory=lifecycle.state_dir)  # what outlives a reboot (lifecycle)
    owns_marker: bool = True  # reading the boot's declarations: remove the marker when idle
    environ: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))
    clock: Callable[[], float] = time.time  # wall clock: Expiration is wall-clock time
    jitter: Callable[[], float] = random.random
    splay: Callable[[], float] = random.random  # on_change's splay: seeded per process, so instances differ


@dataclass
class _OutputState:
    last_change: Optional[float] = None
    last_action: Optional[str] = None
    last_error: Optional[str] = None
    expires: Optional[float] = None
    on_change: Optional[Dict[str, Any]] = None
    holder: Optional[str] = None  # credential outputs: owner:group and mode of the file as written


@dataclass
class _EventState:
    last_poll: Optional[float] = None
    due: float = -math.inf
    failures: int = 0
    last_error: Optional[str] = None
    recent: List[Dict[str, Any]] = field(default_factory=list)
    listed: int = 0  # notices in the last answer
    acted: List[float] = field(default_factory=list)  # when notices were acted on, the last minute's
    waiting: int = 0  # new notices the last poll left for later (NOTICES_PER_MINUTE, or no room for commands)
    seen: List[str] = field(default_factory=list)  # ids counted as seen (metrics), the latest HANDLED_KEPT
    state: Optional[str] = None  # lifecycle: the state IMDS served at the last good poll (None: 404)


class Watcher:
    def __init__(self, load: Callable[[], Sequence[SourceDocument]], options: WatchOptions) -> None:
        self._load = load
        self.options = options
        self.declaration: Optional[Declaration] = None
        self.plan = WatchPlan((), frozenset(), ())
        self.client: Optional[ImdsClient] = None
        self._client_key: Optional[Tuple[Any, ...]] = None
        self.known: Dict[str, Value] = {}
        self.polls: Dict[str, PollState] = {}
        self.dues: Dict[str, float] = {}
        self.errors: Dict[str, str] = {}
        self.pending: Set[str] = set()  # outputs to render and write
        self.write_failures = 0
        self.write_due = -math.inf
        self.outputs: Dict[str, _OutputState] = {}
        self.events: Dict[str, _EventState] = {}
        self.handled: Dict[str, List[str]] = {}
        self.instance_id: Optional[str] = None  # fetched with the first lifecycle poll
        self.lifecycle: Optional[lifecycle.Memory] = None  # the lifecycle state last acted on
        self.started = options.clock()
        self._last_pass: Optional[float] = None
        self.reload_problems: List[str] = []
        self.stopping = False
        self.reload_requested = False
        self.dirty = True
        self._results: queue.SimpleQueue[Result] = queue.SimpleQueue()
        self.bursts: Dict[str, quiet.Burst] = {}  # outputs whose on_change waits (wait, splay)
        self.counters = metrics.Counters()
        self.metrics_file: Optional[metrics.MetricsFile] = None
        self._wake_r = self._wake_w = -1
        self.runner = Runner(self._command_done, options.environ)

    # -- life -----------------------------------------------------------------------------
    def run(self) -> int:
        """Watch until stopped. 0 on a clean stop, or at once when nothing needs watching."""
        directory = rundir.ensure(self.options.run_dir)
        # One watcher per run directory: a second one would run every command twice.
        with locked_alone(str(directory / "watch.lock"), "another cc-imds watch"):
            declaration = build_in_child(self._load)
            if not self._adopt(declaration):
                return 0
            self.handled = _load_handled(directory)
            self._wake_r, self._wake_w = os.pipe()
            for fd in (self._wake_r, self._wake_w):
                os.set_blocking(fd, False)
            stop_or_reload = {signal.SIGHUP: self._request_reload,
                              **{s: self._request_stop for s in signals.STOP_SIGNALS}}
            try:
                with signals.handled(stop_or_reload, self._wake_w):  # a signal wakes the sleeping loop
                    LOG.info("watching %s", _summary(self.plan))
                    while not self.stopping:
                        if self.reload_requested:
                            self.reload_requested = False
                            self._reload()
                            if self.stopping:
                                break
                        self._pass()
                        self._collect_results()
                        self._save_status()
                        self._sleep_until(self._next_wake())
                        self._collect_results()
            finally:
                self.runner.stop()
                self._collect_results()
                self._save_status(stopped=True)
                if self.client is not None:
                    self.client.close()
                os.close(self._wake_r)
                os.close(self._wake_w)
            LOG.info("stopped")
        return 0

    def _adopt(self, declaration: Declaration) -> bool:
        """Take on a (new) declaration; keep what is still true of the old one. False if idle.
        Raises CcImdsError, before anything changed, if its connection settings are unusable."""
        watch = plan(declaration)
        if watch.idle:
            LOG.info("nothing to watch: no output uses a refreshing value (`refresh`, credentials), "
                     "and no event is declared")
            self.stopping = True
            if self.options.owns_marker:
                try:
                    rundir.remove(self.options.run_dir / rundir.MARKER)
                except rundir.RunDirError as exc:
                    LOG.error("%s", exc)
            return False
        settings = client_settings(declaration, RunOptions(endpoint=self.options.endpoint,
                                                           environ=self.options.environ))
        key = tuple(sorted(vars(settings).items()))
        client = ImdsClient(settings) if key != self._client_key else self.client
        old = self.declaration
        self.known = {
            name: value for name, value in self.known.items()
            if old is not None and name in declaration.values and old.values[name].same_as(declaration.values[name])
        }
        # A path keeps its schedule only if it is polled as before and all its values are still known.
        kept = {g.path for g in watch.groups if g in set(self.plan.groups) and g.names <= self.known.keys()}
        self.polls = {p: s for p, s in self.polls.items() if p in kept}
        self.dues = {p: d for p, d in self.dues.items() if p in kept}
        self.errors = {p: e for p, e in self.errors.items() if p in kept}
        self.outputs = {p: self.outputs.get(p, _OutputState()) for p in watch.outputs}
        commanded = {o.path for o in declaration.outputs if o.on_change is not None}
        self.bursts = {p: b for p, b in self.bursts.items() if p in watch.outputs and p in commanded}
        wanted = declaration.metrics.path if declaration.metrics is not None else None
        if wanted is None:
            self.metrics_file = None
        elif self.metrics_file is None or self.metrics_file.path != wanted:
            self.metrics_file = metrics.MetricsFile(wanted)
        self.events = {e.event: self.events.get(e.event, _EventState()) for e in watch.events}
        self.pending = set(watch.outputs)  # rendered once more: unchanged files are left alone
        self.write_due, self.write_failures = -math.inf, 0
        self.declaration, self.plan = declaration, watch
        self._resolving = _with_expirations(declaration, watch)
        if client is not self.client:
            if self.client is not None:
                self.client.close()
            self.client, self._client_key = client, key
        self._poll_seconds = min(float(declaration.settings.get("deadline", POLL_DEADLINE)), POLL_DEADLINE)
        self.dirty = True
        return True

    def _reload(self) -> None:
        LOG.info("reloading the declarations")
        try:
            declaration = build_in_child(self._load)
            adopted = self._adopt(declaration)  # changes nothing if it raises
        except CcImdsError as exc:
            self.reload_problems = str(exc).splitlines()
            for line in self.reload_problems:
                LOG.error("reload refused, the running declaration stays: %s", line)
            self.counters.add(self.counters.reloads, metrics.RELOAD_REFUSED)
            self.dirty = True
            return
        self.reload_problems = []
        self.counters.add(self.counters.reloads, metrics.RELOAD_ADOPTED)
        self.dirty = True
        if adopted:
            LOG.info("reloaded: watching %s", _summary(self.plan))

    # -- one pass ---------------------------------------------------------------------------
    def _pass(self) -> None:
        now = self.options.clock()
        self._follow_clock(now)
        self._start_waiting_commands(now)
        due_events = [e for e in self.plan.events if self.events[e.event].due <= now]
        due_groups = [g for g in self.plan.groups if self.dues.get(g.path, -math.inf) <= now]
        retry_writes = bool(self.pending) and self.write_due <= now
        if not (due_events or due_groups or retry_writes):
            return
        deadline = Deadline(self._poll_seconds)
        asking = self._until_stopped(self._poll_seconds)  # the same end, made together
        if due_events:
            self._poll_events(due_events, asking, now)
        changed: Set[str] = set()
        for group in due_groups:
            if self.stopping:
                return  # a safe point: nothing half done
            changed |= self._refresh(group, asking)
        for output in self._output_specs():
            if output.uses & changed:
                self.pending.add(output.path)
        if self.pending and not self.stopping and (changed or retry_writes):
            self._rewrite(changed, deadline, asking)

    def _follow_clock(self, now: float) -> None:
        """Due times are wall-clock times (credentials expire at one). When the clock is
        stepped back, they move back with it: otherwise a step of an hour would hold every
        poll, a spot notice's too, back for that hour. (Forward, things just fall due.)"""
        last, self._last_pass = self._last_pass, now
        if last is None or now >= last - CLOCK_STEP_BACK:
            return
        step = last - now
        LOG.info("the clock went back %.0fs: polls due are moved back with it", step)
        self.dues = {path: due - step for path, due in self.dues.items()}
        for state in self.events.values():
            state.due -= step
        self.write_due -= step
        self.bursts = {path: quiet.moved(burst, step) for path, burst in self.bursts.items()}

    def _until_stopped(self, seconds: float) -> Deadline:
        """A poll's deadline for asking IMDS and for waiting for apply's lock, passed as soon
        as the watcher is told to stop: a poll under way ends within one attempt's timeout,
        not the poll's whole deadline. Never for rendering or a write under way: what was
        fetched is dropped, a write not started is not started, nothing is left half done."""

        def clock() -> float:
            return math.inf if self.stopping else time.monotonic()

        return Deadline(seconds, clock)

    def _refresh(self, group: Group, deadline: Deadline) -> Set[str]:
        """Fetch one path's values. Returns the names whose value changed."""
        assert self.client is not None
        at = self.options.clock()
        state = self.polls.get(group.path, PollState())
        hidden = _EXPIRATION + group.path
        names = set(group.names) | ({hidden} if group.credential else set())
        try:
            values = resolve(self._resolving, self.client, names=names, deadline=deadline)
        except CcImdsError as exc:
            if self.stopping:
                return set()  # cut short by the stop: not a failure of IMDS
            state = state.failed(at)
            self._set_poll(group, state)
            self.counters.add(self.counters.poll_failures, group.path)
            problems = self._scrubbed(exc.problems if isinstance(exc, ProblemsError) else str(exc).splitlines())
            shown = [p for p in problems if not p.startswith(_HIDDEN_ORIGIN)] or problems
            problem = "; ".join(shown)
            self.errors[group.path] = problem
            LOG.warning("%s: cannot refresh %s (%s); the last good files stay; next try in %ds",
                        group.path, ", ".join(sorted(group.names)), problem, max(0, self.dues[group.path] - at))
            return set()
        if group.path in self.errors:
            LOG.info("%s: refreshed again after %d failed poll(s)", group.path, state.failures)
            del self.errors[group.path]
        expires = expiration(values.data[hidden]) if group.credential else None
        self._set_poll(group, state.succeeded(at, expires))
        changed = {n for n in group.names if self.known.get(n, _MISSING) != values.data[n]}
        for name in group.names:
            self.known[name] = values.data[name]
        return changed

    def _set_poll(self, group: Group, state: PollState) -> None:
        self.polls[group.path] = state
        self.dues[group.path] = next_due(group, state, self.options.jitter())
        self.dirty = True

    def _rewrite(self, changed: Set[str], deadline: Deadline, lock_wait: Deadline) -> None:
        assert self.declaration is not None
        declaration = self.declaration
        ready = [o for o in self._output_specs() if o.path in self.pending and o.uses <= self.known.keys()]
        if not ready:
            return
        values = Values(dict(self.known), frozenset(n for n in self.known if declaration.values[n].sensitive))
        rendered: List[Output] = []
        failed = False
        for output in ready:
            try:
                rendered.extend(render(declaration, values, paths={output.path}, deadline=deadline,
                                       compile_in_child=True))
            except RenderError as exc:
                failed = True
                self._output_failed(output.path, exc.problems)
        if failed and deadline.expired():
            # The pass ran out of time before every output was rendered (a machine too busy, a
            # template too slow): what was rendered is not written without the rest, so outputs
            # never show values of two passes side by side. All stay pending, tried again.
            LOG.warning("%d rendered output(s) not written either: the pass's %gs deadline passed before every "
                        "output was rendered; all are tried again", len(rendered), deadline.seconds)
            rendered = []
        changes = self._write(rendered, lock_wait)
        failed = failed or len(changes) < len(rendered)
        specs = {o.path: o for o in ready}
        for change in changes:
            spec = specs[change.path]
            state = self.outputs[change.path]
            state.last_error = None
            state.expires = self._expiration_of(spec)
            if isinstance(spec, CredentialOutput):
                state.holder = holder(change.real_path or change.path)
            self.pending.discard(change.path)
            if change.action == "unchanged":
                continue
            state.last_change, state.last_action = self.options.clock(), change.action
            because = sorted(spec.uses & changed)
            LOG.info("%s %s (mode %04o)%s", change.action, change.path, change.mode,
                     f": {', '.join(because)} changed" if because else "")
            if spec.on_change is not None:
                self._on_change(spec, change.action)
        self.dirty = True
        if failed:
            self.write_failures += 1
            self.write_due = self.options.clock() + after_failures(self.write_failures)
        else:
            self.write_failures, self.write_due = 0, -math.inf

    def _write(self, outputs: List[Output], lock_wait: Deadline) -> List[Change]:
        """All at once, as apply does; if that fails, one by one, so one output that cannot
        be written (an immutable file) does not keep fresh credentials out of another.
        `lock_wait` passes when the watcher is told to stop: it bounds only the wait for
        apply's lock, never a write under way."""
        if not outputs:
            return []
        try:
            return write_outputs(outputs, "/", self.options.lock_path, deadline=lock_wait)
        except WriteError as exc:
            if self.stopping:
                return []  # gave up waiting for the lock: nothing was changed, nothing failed
            if len(outputs) == 1:
                self._output_failed(outputs[0].path, [str(exc)])
                return []
        changes: List[Change] = []
        for output in outputs:
            try:
                changes.extend(write_outputs([output], "/", self.options.lock_path, deadline=lock_wait))
            except WriteError as exc:
                if self.stopping:
                    break
                self._output_failed(output.path, [str(exc)])
        return changes

    def _on_change(self, spec: OutputSpec, action: str) -> None:
        """The output changed: run its command now, or once its `wait` and `splay` have passed."""
        assert spec.on_change is not None
        timing = spec.on_change.quiet
        now = self.options.clock()
        burst = self.bursts.get(spec.path)
        if burst is None and timing == Quiet():
            self._run_on_change(spec, action)
            return
        self.bursts[spec.path] = burst = quiet.changed(burst, timing, now, action, self.options.splay())
        due = burst.due(timing)
        self.dirty = True
        LOG.info("on_change %s: runs in %.0fs%s", spec.path, due - now,
                 ", or later if it changes again" if timing.wait_min and due < burst.first + timing.wait_max else "")

    def _waiting(self, path: str, record: Optional[Dict[str, Any]]) -> Optional[Dict[str, Any]]:
        """The status record of an output's command: the last run (if any) and, while a newer
        change's run waits out `wait` and `splay`, when that one is due."""
        burst = self.bursts.get(path)
        specs = {o.path: o for o in self._output_specs()}
        on_change = specs[path].on_change if path in specs else None
        if burst is None or on_change is None:
            return record
        shown = dict(record) if record is not None else {"label": f"on_change {path}", "running": False}
        shown["due"] = iso(burst.due(on_change.quiet))
        return shown

    def _start_waiting_commands(self, now: float) -> None:
        specs = {o.path: o for o in self._output_specs()}
        for path, burst in list(self.bursts.items()):
            spec = specs.get(path)
            if spec is None or spec.on_change is None:
                del self.bursts[path]
            elif burst.due(spec.on_change.quiet) <= now:
                del self.bursts[path]
                self._run_on_change(spec, burst.action)

    def _run_on_change(self, spec: OutputSpec, action: str) -> None:
        assert spec.on_change is not None
        label = f"on_change {spec.path}"
        started = self.runner.start(spec.path, label, spec.on_change,
                                    env={"CC_IMDS_OUTPUT": spec.path, "CC_IMDS_CHANGE": action})
        if started == REFUSED:
            self.counters.command_ended(metrics.ON_CHANGE, spec.path, REFUSED)
        self.outputs[spec.path].on_change = _command_record(label, started, self.options.clock())
        self.dirty = True

    def _output_failed(self, path: str, problems: List[str]) -> None:
        self.counters.add(self.counters.write_failures, path)
        problems = self._scrubbed(problems)
        message = "; ".join(problems)
        state = self.outputs[path]
        if state.last_error != message:
            for line in problems:
                LOG.error("%s: not rewritten, the previous file stays: %s", path, line)
        state.last_error = message
        self.pending.add(path)

    def _scrubbed(self, problems: List[str]) -> List[str]:
        """Messages as apply gives them (pipeline.scrubber_for): no sensitive value, sensitive
        default or token in any form, whatever rendering, resolving or writing put there.
        They go to the log and to status.json, which every user can read."""
        assert self.declaration is not None
        tokens = self.client.issued_tokens() if self.client is not None else ()
        return scrubber_for(self.declaration, self.known, tokens).lines(problems)

    def _expiration_of(self, output: OutputSpec) -> Optional[float]:
        times = [self.polls[g.path].expiration for g in self.plan.groups
                 if g.credential and g.names & output.uses and g.path in self.polls]
        found = [t for t in times if t is not None]
        return min(found) if found else None

    def _credential_status(self, spec: CredentialOutput, output: _OutputState) -> Dict[str, Any]:
        """What `status` shows of a credential output: which role, who can read it, and when its
        keys were last fetched. Names, modes and times only."""
        role = spec.role
        listing = self.known.get(spec.value_name)
        if role is None and isinstance(listing, Mapping) and len(listing) == 1:
            role = next(iter(listing))
        fetched = [self.polls[g.path].last_success for g in self.plan.groups
                   if g.names & spec.uses and g.path in self.polls]
        return {"format": spec.format, "role": role, "holder": output.holder,
                "last_refresh": iso(max((t for t in fetched if t is not None), default=None))}

    def _output_specs(self) -> List[OutputSpec]:
        assert self.declaration is not None
        return [o for o in self.declaration.outputs if o.path in self.plan.outputs]

    # -- events ----------------------------------------------------------------------------
    def _poll_events(self, due: List[EventWatch], deadline: Deadline, now: float) -> None:
        assert self.client is not None
        paths = [e.path for e in due]
        if self.instance_id is None and any(e.event == LIFECYCLE for e in due):
            paths.append(INSTANCE_ID_PATH)  # once: which instance the remembered lifecycle state is of
        outcomes: Dict[str, Union[bytes, ImdsError]] = {}
        try:
            outcomes.update(self.client.fetch_all(paths, deadline=deadline))  # one path: no thread
        except ImdsError as exc:
            outcomes = {p: exc for p in paths}
        if self.stopping:
            return  # polled again at the next start: a notice is not marked handled for commands ended at once
        for watch in due:
            state = self.events[watch.event]
            state.last_poll = now
            state.due = event_due(watch, now, self.options.jitter())
            outcome = outcomes.get(watch.path)
            found: List[Notice] = []
            if watch.event == LIFECYCLE:
                outcome = self._lifecycle_outcome(outcome, outcomes.get(INSTANCE_ID_PATH))
            elif isinstance(outcome, bytes):
                try:
                    found = notices(watch.event, watch.path, outcome)
                except ImdsError as exc:  # a document refused unread (nested too deeply): a failed poll
                    outcome = exc
            if isinstance(outcome, ImdsNotFound) or (watch.event == LIFECYCLE and isinstance(outcome, bytes)):
                pass  # no notice, or a lifecycle state: acted on below
            elif isinstance(outcome, bytes):
                if len(found) > NOTICES_CONSIDERED and len(found) != state.listed:
                    LOG.warning("%s: IMDS lists %d notices; acting on the first %d, the others once earlier "
                                "ones are gone", watch.event, len(found), NOTICES_CONSIDERED)
                state.listed = len(found)
                found = found[:NOTICES_CONSIDERED]
            else:
                state.failures += 1
                self.counters.add(self.counters.event_failures, watch.event)
                problem = "; ".join(self._scrubbed(str(outcome).splitlines()))
                if state.last_error is None:
                    LOG.warning("%s: cannot poll %s (%s); polling on every %gs", watch.event, watch.path,
                                problem, watch.poll)
                state.last_error = problem
                self.dirty = True
                continue
            if state.last_error is not None:
                LOG.info("%s: polled again after %d failed poll(s)", watch.event, state.failures)
                state.last_error, state.failures = None, 0
                self.dirty = True
            if watch.event == LIFECYCLE:
                self._lifecycle_poll(watch, state, outcome, now)
                continue
            new = [n for n in found if n.id not in self.handled.get(watch.event, [])]
            unseen = [n.id for n in new if n.id not in state.seen]
            if unseen:
                self.counters.add(self.counters.notices_seen, watch.event, len(unseen))
                state.seen = [*state.seen, *unseen][-HANDLED_KEPT:]
                self.dirty = True
            if len(new) > NEW_NOTICES_PER_POLL:
                LOG.warning("%s: %d new notices at once; acting on %d now, the rest on the next polls",
                            watch.event, len(new), NEW_NOTICES_PER_POLL)
            state.acted = [t for t in state.acted if now - 60.0 < t <= now]
            acted = 0
            for notice in new[:NEW_NOTICES_PER_POLL]:
                if len(state.acted) >= NOTICES_PER_MINUTE:
                    why = f"{NOTICES_PER_MINUTE} notices were acted on in the last minute"
                elif self.runner.room() < len(watch.actions):
                    why = "every command slot is busy and the queue is full"
                else:
                    self._act(watch, notice, now)
                    state.acted.append(now)
                    acted += 1
                    continue
                LOG.warning("%s: %d new notice(s) wait for a later poll: %s", watch.event, len(new) - acted, why)
                break
            if state.waiting != len(new) - acted:
                state.waiting = len(new) - acted
                self.dirty = True

    def _act(self, watch: EventWatch, notice: Notice, now: float) -> None:
        """Run every command for a new notice, once: it is recorded as handled first, so a
        restarted watcher does not run them again."""
        handled = self.handled.setdefault(watch.event, [])
        handled.append(notice.id)
        del handled[:-HANDLED_KEPT]
        try:
            rundir.write_json(self.options.run_dir / rundir.HANDLED, self.handled, 0o644)
        except rundir.RunDirError as exc:
            LOG.error("%s: %s (this notice may be acted on again after a restart)", watch.event, exc)
        LOG.warning("%s: notice %s: %s", watch.event, notice.id, " ".join(notice.text.split()))
        self.counters.add(self.counters.notices_handled, watch.event)
        commands = []
        for index, action in enumerate(watch.actions):
            label = f"{watch.event} notice {notice.id} ({action.origin})"
            started = self.runner.start(f"{watch.event}:{notice.id}:{index}", label, action.command,
                                        env=notice_env(notice), stdin=notice.text.encode("utf-8") + b"\n")
            if started == REFUSED:
                self.counters.command_ended(metrics.EVENT, watch.event, REFUSED)
            commands.append(_command_record(label, started, self.options.clock()))
        state = self.events[watch.event]
        state.recent.append({"id": notice.id, "seen": iso(now), "fields": dict(notice.fields),
                             "commands": commands})
        del state.recent[:-NOTICES_SHOWN]
        self.dirty = True

    # -- Auto Scaling lifecycle -------------------------------------------------------------
    def _lifecycle_outcome(self, outcome: Union[bytes, ImdsError, None],
                           instance: Union[bytes, ImdsError, None]) -> Union[bytes, ImdsError]:
        """The lifecycle poll's answer, with the state checked, and the instance id taken in
        the first time. A poll without the instance id is a failed poll: which instance a
        remembered state belongs to must be known before any transition runs a command."""
        if outcome is None:
            return ImdsError(f"/latest/{LIFECYCLE_PATH}", "no answer")
        if isinstance(outcome, bytes):
            try:
                outcome = lifecycle_state(outcome).encode("ascii")
            except ImdsError as exc:
                return exc
        if self.instance_id is None:
            if isinstance(instance, ImdsError):  # a 404 too: a failed poll here, never "no state"
                return ImdsError(f"/latest/{INSTANCE_ID_PATH}", "needed before a lifecycle transition: "
                                 + str(instance).split(": ", 1)[-1])
            text = (instance or b"").decode("utf-8", "replace").strip()
            if not (0 < len(text) <= 64 and text.isascii() and text.isprintable() and " " not in text):
                return ImdsError(f"/latest/{INSTANCE_ID_PATH}", f"not an instance id: {text[:80]!r}")
            self.instance_id = text
            self.lifecycle = lifecycle.recall(self.options.state_dir, text)
            if self.lifecycle is not None:
                LOG.info("lifecycle: last state acted on: %s, seen %s", self.lifecycle.state, self.lifecycle.seen)
        return outcome

    def _lifecycle_poll(self, watch: EventWatch, state: _EventState, outcome: Union[bytes, ImdsError],
                        now: float) -> None:
        """A state other than the one last acted on is a transition: its commands run once.
        A 404 (not in an Auto Scaling group) is no state, and no transition."""
        assert self.instance_id is not None
        current = outcome.decode("ascii") if isinstance(outcome, bytes) else None
        if current != state.state:
            state.state = current
            self.dirty = True
        last = self.lifecycle.state if self.lifecycle is not None else None
        if current is None or current == last:
            if state.waiting:
                state.waiting, self.dirty = 0, True
            return
        actions = [a for a in watch.actions if state_chosen(a.states, current)]
        if self.runner.room() < len(actions):
            LOG.warning("lifecycle: %s -> %s waits for a later poll: every command slot is busy and the queue "
                        "is full", last or "(none)", current)
            if not state.waiting:
                state.waiting, self.dirty = 1, True
            return
        state.waiting = 0
        seen = iso(now) or ""
        notice = transition_notice(last, current, self.instance_id, seen)
        # Remembered before its commands are asked for: a restart never runs them twice.
        self.lifecycle = lifecycle.Memory(self.instance_id, current, seen)
        try:
            lifecycle.remember(self.options.state_dir, self.lifecycle)
        except rundir.RunDirError as exc:
            LOG.error("lifecycle: %s (this transition may be acted on again after a restart)", exc)
        LOG.warning("lifecycle: %s -> %s: %d command(s)", last or "(none)", current, len(actions))
        # In the metrics file a transition is a notice of event `lifecycle`: seen, and handled.
        self.counters.add(self.counters.notices_seen, LIFECYCLE)
        self.counters.add(self.counters.notices_handled, LIFECYCLE)
        commands = []
        for index, action in enumerate(actions):
            # The transition's id makes the label unique: its result is matched back by label,
            # and the same transition (Standby -> InService) may come again later.
            label = f"lifecycle {last or '(none)'} -> {current}, transition {notice.id} ({action.origin})"
            started = self.runner.start(f"{LIFECYCLE}:{notice.id}:{index}", label, action.command,
                                        env=notice_env(notice), stdin=notice.text.encode("utf-8") + b"\n")
            if started == REFUSED:
                self.counters.command_ended(metrics.EVENT, LIFECYCLE, REFUSED)
            commands.append(_command_record(label, started, self.options.clock()))
        state.recent.append({"id": notice.id, "seen": seen, "fields": dict(notice.fields), "commands": commands})
        del state.recent[:-NOTICES_SHOWN]
        self.dirty = True

    # -- commands' results -----------------------------------------------------------------
    def _command_done(self, result: Result) -> None:
        """From a runner thread: hand over to the loop, and wake it."""
        self._results.put(result)
        self._wake()

    def _collect_results(self) -> None:
        while True:
            try:
                result = self._results.get_nowait()
            except queue.Empty:
                return
            record = {"label": result.label, "started": iso(result.started), "seconds": round(result.seconds, 3),
                      "exit": result.exit_code, "error": result.error}
            if result.key in self.outputs:
                self.counters.command_ended(metrics.ON_CHANGE, result.key, result.outcome)
                self.outputs[result.key].on_change = record
            else:
                self.counters.command_ended(metrics.EVENT, result.key.split(":", 1)[0], result.outcome)
                for state in self.events.values():
                    for notice in state.recent:
                        notice["commands"] = [record if c["label"] == result.label else c
                                              for c in notice["commands"]]
            self.dirty = True

    # -- sleeping and signals --------------------------------------------------------------
    def _next_wake(self) -> float:
        times = [*self.dues.values(), *(s.due for s in self.events.values())]
        if self.pending:
            times.append(self.write_due)
        specs = {o.path: o for o in self._output_specs()} if self.bursts else {}
        for path, burst in self.bursts.items():
            on_change = specs[path].on_change if path in specs else None
            if on_change is not None:
                times.append(burst.due(on_change.quiet))
        return min(times, default=math.inf)

    def _sleep_until(self, when: float) -> None:
        if self.stopping or self.reload_requested:
            return
        timeout = max(0.0, min(when - self.options.clock(), MAX_SLEEP))
        try:
            ready, _, _ = select.select([self._wake_r], [], [], timeout)
        except InterruptedError:
            ready = []
        if ready:
            signals.drain(self._wake_r)

    def _wake(self) -> None:
        try:
            os.write(self._wake_w, b"!")
        except BlockingIOError:
            pass  # the pipe is full: the loop is awake anyway

    def _request_stop(self) -> None:
        self.stopping = True

    def _request_reload(self) -> None:
        self.reload_requested = True

    # -- status --------------------------------------------------------------------------
    def _save_status(self, stopped: bool = False) -> None:
        behind = self.metrics_file is not None and self.metrics_file.behind
        if not (self.dirty or stopped or behind):
            return
        self._save_metrics()
        if not (self.dirty or stopped):
            return
        try:
            rundir.write_json(self.options.run_dir / rundir.STATUS, self.status_document(stopped), 0o644)
            self.dirty = False
        except rundir.RunDirError as exc:
            LOG.error("%s", exc)

    def _save_metrics(self) -> None:
        """The metrics file, when declared: rewritten only if its text changed."""
        if self.metrics_file is None:
            return
        previous = self.metrics_file.problem
        problem = self.metrics_file.update(metrics.render(self.metrics_snapshot()))
        if problem is not None and problem != previous:
            LOG.error("%s: cannot write the metrics: %s", self.metrics_file.path, problem)
        elif problem is None and previous is not None:
            LOG.info("%s: written again", self.metrics_file.path)

    def metrics_snapshot(self) -> metrics.Snapshot:
        """Names, paths, times and counts: never a declared value."""
        values = []
        for group in self.plan.groups:
            state = self.polls.get(group.path, PollState())
            for name in sorted(group.names):
                values.append(metrics.ValueRow(name, group.path, state.last_success, state.failures,
                                               state.expiration if group.credential else None))
        outputs = []
        for spec in self._output_specs():
            output = self.outputs[spec.path]
            burst = self.bursts.get(spec.path)
            due = burst.due(spec.on_change.quiet) if burst is not None and spec.on_change is not None else None
            outputs.append(metrics.OutputRow(spec.path, output.last_change, output.expires, due))
        return metrics.Snapshot(__version__, self.started, bool(self.reload_problems), values, outputs,
                                [e.event for e in self.plan.events], self.counters)

    def status_document(self, stopped: bool = False) -> Dict[str, Any]:
        """Names, paths, times, event notices and messages: never a declared value, so never a secret."""
        now = self.options.clock()
        values: Dict[str, Any] = {}
        for group in self.plan.groups:
            state = self.polls.get(group.path, PollState())
            due = self.dues.get(group.path, -math.inf)
            for name in sorted(group.names):
                values[name] = {
                    "path": group.path,
                    "refresh": _refresh_policy(group),
                    "last_refresh": iso(state.last_success),
                    "next_due": iso(max(due, now)),  # None once a once-per-boot value is fetched
                    "failures": state.failures,
                    "last_error": self.errors.get(group.path),
                    "expires": iso(state.expiration),
                }
        outputs: Dict[str, Any] = {}
        for spec in self._output_specs():
            output = self.outputs[spec.path]
            outputs[spec.path] = {
                "uses": sorted(spec.uses),
                "last_change": iso(output.last_change),
                "last_action": output.last_action,
                "last_error": output.last_error,
                "expires": iso(output.expires),
                "on_change": self._waiting(spec.path, output.on_change),
            }
            if isinstance(spec, CredentialOutput):
                outputs[spec.path].update(self._credential_status(spec, output))
        events = {
            watch.event: {
                "path": watch.path,
                "poll": watch.poll,
                "commands": len(watch.actions),
                "failures": self.events[watch.event].failures,
                "last_error": self.events[watch.event].last_error,
                "notices": self.events[watch.event].recent,
                "waiting": self.events[watch.event].waiting,
            }
            for watch in self.plan.events
        }
        if LIFECYCLE in events:
            # What IMDS serves now, and the state last acted on (perhaps at an earlier boot).
            memory = self.lifecycle
            events[LIFECYCLE].update(state=self.events[LIFECYCLE].state,
                                     acted_on=memory.state if memory else None,
                                     acted_on_seen=memory.seen if memory else None)
        return {
            "format": FORMAT,
            "watcher": {
                "pid": os.getpid(),
                "started": iso(self.started),
                "updated": iso(now),
                "stopped": iso(now) if stopped else None,
                "sources": list(self.declaration.sources) if self.declaration else [],
                "reload_problems": self.reload_problems,
                "commands": self.runner.counts(),
                "metrics": None if self.metrics_file is None else {
                    "path": self.metrics_file.path, "last_error": self.metrics_file.problem},
            },
            "values": values,
            "outputs": outputs,
            "events": events,
        }


# -- helpers -----------------------------------------------------------------------------------
def _with_expirations(declaration: Declaration, watch: WatchPlan) -> Declaration:
    """The declaration plus, for each credential path, a hidden value holding the whole
    document: its Expiration schedules the next refresh. Fetched in the same request as the
    visible values of that path (resolve fetches each path once)."""
    extra: Dict[str, ValueSpec] = {}
    for group in watch.groups:
        if group.credential:
            name = _EXPIRATION + group.path
            extra[name] = ValueSpec(name, group.path, None, None, True, Origin(_HIDDEN_ORIGIN[:-1], group.path))
    return replace(declaration, values={**declaration.values, **extra})


def _command_record(label: str, started: str, now: float) -> Dict[str, Any]:
    """A command just asked for, as the status file shows it until its result comes."""
    record: Dict[str, Any] = {"label": label, "started": iso(now), "running": started in (STARTED, QUEUED, MERGED)}
    if started == REFUSED:
        record.update(error="not run: every command slot was busy and the queue full", exit=None)
    elif started != STARTED:
        record["queued"] = True
    return record


def _refresh_policy(group: Group) -> str:
    if group.credential:
        return "before Expiration" + (f", and every {group.period:g}s" if group.period is not None else "")
    if group.period is not None:
        return f"every {group.period:g}s"
    return "once, when the watcher starts"


def _summary(watch: WatchPlan) -> str:
    parts = [f"{g.path} ({_refresh_policy(g)})" for g in watch.refreshing]
    parts += [f"{e.event} (every {e.poll:g}s)" for e in watch.events]
    outputs = f"; rewriting {', '.join(sorted(watch.outputs))}" if watch.outputs else ""
    return ", ".join(parts) + outputs


def _load_handled(directory: Path) -> Dict[str, List[str]]:
    try:
        document = rundir.read_json(directory / rundir.HANDLED)
    except rundir.RunDirError as exc:
        LOG.error("%s; notices may be acted on again", exc)
        return {}
    if not isinstance(document, dict):
        return {}
    return {str(k): [str(i) for i in v] for k, v in document.items() if isinstance(v, list)}
