"""`cc-imds status`: what the watcher last wrote to /run/cc-imds/status.json, judged now.

The watcher rewrites that file atomically when something changes (a value refreshed or
failing, an output written, a command ended); it never answers queries itself. The file
holds names, paths, times and error messages, which never carry a sensitive value or a
token: no secret is in it.

Exit status, the highest that applies, so a monitoring check can call it:
  0 healthy, or no watcher needed;  1 a reloaded declaration was refused (the previous
  one still runs);  3 IMDS failing (last good files kept);  4 an output could not be
  written, or its on_change command failed;  5 the watcher is needed but not running
  (or stuck), or status.json cannot be used;  6 an output holds credentials past their Expiration.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Mapping, Optional, Tuple

from ..errors import OutputStreamError
from ..logs import say, shown
from . import rundir
from .handoff import watcher_needed
from .schedule import parse_time

if TYPE_CHECKING:
    import argparse

FORMAT = 1
OK = 0
RELOAD_REFUSED = 1
IMDS_FAILING = 3
OUTPUT_FAILING = 4
NOT_RUNNING = 5
EXPIRED = 6
STUCK_AFTER = 120.0  # a value this far past its due time means the watcher is not polling


def iso(epoch: Optional[float]) -> Optional[str]:
    """`2026-11-28T15:00:00Z`, or None for no time, or one beyond what a datetime holds."""
    if epoch is None or epoch != epoch or epoch in (float("inf"), float("-inf")):
        return None
    try:
        when = datetime.datetime.fromtimestamp(int(epoch // 1), datetime.timezone.utc)
    except (OverflowError, OSError, ValueError):
        return None
    return when.replace(tzinfo=None).isoformat(timespec="seconds") + "Z"  # four-digit years, as parse_time reads


def _time(text: Any) -> Optional[float]:
    return parse_time(text) if isinstance(text, str) else None


MAX_PID = 1 << 22  # Linux's highest pid_max


def _text(value: Any) -> bool:
    return value is None or isinstance(value, str)


def _texts(value: Any) -> bool:
    return value is None or (isinstance(value, list) and all(isinstance(item, str) for item in value))


def _count(value: Any) -> bool:
    return value is None or (type(value) is int and value >= 0)


def _number(value: Any) -> bool:
    return type(value) in (int, float) and math.isfinite(value)


def _command_record(value: Any) -> bool:
    return value is None or (isinstance(value, dict) and _bad_field(value, _COMMAND) is None)


_COMMAND: Dict[str, Callable[[Any], bool]] = {
    "label": _text, "started": _text, "seconds": lambda v: v is None or _number(v),
    "exit": lambda v: v is None or type(v) is int, "error": _text, "running": lambda v: v is None or type(v) is bool,
    "due": _text}
_WATCHER: Dict[str, Callable[[Any], bool]] = {
    "pid": lambda v: type(v) is int and 0 < v < MAX_PID, "started": _text, "updated": _text, "stopped": _text,
    "sources": _texts, "reload_problems": _texts,
    "commands": lambda v: v is None or (isinstance(v, dict) and all(_count(c) for c in v.values())),
    "metrics": lambda v: v is None or (isinstance(v, dict) and _text(v.get("path")) and _text(v.get("last_error")))}
_VALUE: Dict[str, Callable[[Any], bool]] = {
    "path": _text, "refresh": _text, "last_refresh": _text, "next_due": _text, "failures": _count,
    "last_error": _text, "expires": _text}
_OUTPUT: Dict[str, Callable[[Any], bool]] = {
    "uses": _texts, "last_change": _text, "last_action": _text, "last_error": _text, "expires": _text,
    "on_change": _command_record,
    # credential outputs only:
    "format": _text, "role": _text, "holder": _text, "last_refresh": _text}
_NOTICE: Dict[str, Callable[[Any], bool]] = {
    "id": _text, "seen": _text,
    "fields": lambda v: v is None or (isinstance(v, dict) and all(isinstance(i, str) for i in v.values())),
    "commands": lambda v: v is None or (isinstance(v, list) and all(c is not None and _command_record(c) for c in v))}
_EVENT: Dict[str, Callable[[Any], bool]] = {
    "path": _text, "poll": _number, "commands": _count, "failures": _count, "last_error": _text, "waiting": _count,
    "state": _text, "acted_on": _text, "acted_on_seen": _text,
    "notices": lambda v: v is None or (isinstance(v, list) and all(isinstance(n, dict) and
                                                                   _bad_field(n, _NOTICE) is None for n in v))}


def _bad_field(record: Mapping[str, Any], fields: Mapping[str, Callable[[Any], bool]]) -> Optional[str]:
    return next((name for name, check in fields.items() if not check(record.get(name))), None)


def status_problem(doc: Any) -> Optional[str]:
    """Why `doc` is not what a watcher of this version writes, or None. Checked before it
    is judged or shown: the file may be damaged, or not the watcher's."""
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        return f"not format {FORMAT}"
    watcher = doc.get("watcher")
    if not isinstance(watcher, dict):
        return "watcher: not a mapping"
    bad = _bad_field(watcher, _WATCHER)
    if bad is not None:
        return f"watcher.{bad}: unexpected content"
    for section, fields in (("values", _VALUE), ("outputs", _OUTPUT), ("events", _EVENT)):
        entries = doc.get(section)
        if not isinstance(entries, dict):
            return f"{section}: not a mapping"
        for name, record in entries.items():
            bad = _bad_field(record, fields) if isinstance(record, dict) else "(itself)"
            if bad is not None:
                return f"{section}[{json.dumps(name[:100])}].{bad}: unexpected content"
    return None


def is_status_document(doc: Any) -> bool:
    """What a watcher of this version writes: checked before it is judged."""
    return status_problem(doc) is None


@dataclass(frozen=True)
class Health:
    code: int
    problems: Tuple[Tuple[int, str], ...]  # (exit code, message), most severe first
    state: str  # running | stopped | not running | not needed


def process_alive(pid: int) -> bool:
    """Is `pid` a running cc-imds? (A recycled pid running something else is not.)"""
    if not 0 < pid < MAX_PID:
        return False  # 0 and -1 would ask about a whole process group, or every process
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return True  # no /proc to ask: trust the signal check
    return b"cc_imds" in cmdline or b"cc-imds" in cmdline


def assess(
    doc: Optional[Mapping[str, Any]],
    needed: bool,
    now: float,
    alive: Callable[[int], bool] = process_alive,
) -> Health:
    """Judge a status document at `now`. `needed`: the boot run asked for a watcher."""
    problems: List[Tuple[int, str]] = []
    if doc is None:
        if needed:
            problems.append((NOT_RUNNING, "the watcher is needed (declarations ask for refreshes or events) "
                                          "but has written no status"))
            return Health(NOT_RUNNING, tuple(problems), "not running")
        return Health(OK, (), "not needed")
    watcher = doc.get("watcher") or {}
    pid = watcher.get("pid")
    stopped = _time(watcher.get("stopped"))
    running = stopped is None and isinstance(pid, int) and alive(pid)
    state = "running" if running else ("stopped" if stopped is not None else "not running")
    if not running and needed:
        when = f" at {watcher.get('stopped')}" if stopped is not None else f" (pid {pid} is gone)"
        problems.append((NOT_RUNNING, f"the watcher is needed but not running: it stopped{when}"))
    for output, info in sorted((doc.get("outputs") or {}).items()):
        expires = _time(info.get("expires"))
        if expires is not None and expires <= now:
            problems.append((EXPIRED, f"{output} holds credentials that expired at {info['expires']}"))
        if info.get("last_error"):
            problems.append((OUTPUT_FAILING, f"{output}: {info['last_error']}"))
        on_change = info.get("on_change") or {}
        if on_change.get("error"):
            problems.append((OUTPUT_FAILING, f"{output}: on_change failed at {on_change.get('started')}: "
                                             f"{on_change['error']}"))
    for name, info in sorted((doc.get("values") or {}).items()):
        if info.get("failures"):
            problems.append((IMDS_FAILING, f"value {name} ({info.get('path')}): {info.get('failures')} failed "
                                           f"poll(s), last good {info.get('last_refresh') or 'never'}: "
                                           f"{info.get('last_error')}"))
        due = _time(info.get("next_due"))
        if running and due is not None and due < now - STUCK_AFTER:
            problems.append((NOT_RUNNING, f"the watcher seems stuck: value {name} was due at {info['next_due']}"))
    for event, info in sorted((doc.get("events") or {}).items()):
        if info.get("last_error"):
            problems.append((IMDS_FAILING, f"event {event} ({info.get('path')}): {info['last_error']}"))
        for notice in info.get("notices") or []:
            for command in notice.get("commands") or []:
                if command.get("error"):
                    problems.append((OUTPUT_FAILING, f"event {event}: {command.get('label')}: {command['error']}"))
    for line in watcher.get("reload_problems") or []:
        problems.append((RELOAD_REFUSED, f"reload refused, the previous declaration still runs: {line}"))
    problems.sort(key=lambda p: -p[0])
    return Health(max((code for code, _ in problems), default=OK), tuple(problems), state)


# -- text ------------------------------------------------------------------------------------
def _ago(text: Any, now: float) -> str:
    when = _time(text)
    if when is None:
        return "never" if text is None else str(text)
    delta = when - now
    span = _span(abs(delta))
    return f"{text} ({'in ' + span if delta > 0 else span + ' ago'})"


def _span(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    if seconds < 86400:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 86400}d{seconds % 86400 // 3600:02d}h"


def _command(result: Mapping[str, Any], now: float) -> str:
    due = f"next run due {_ago(result['due'], now)} (wait, splay)" if result.get("due") else None
    if result.get("running"):
        if result.get("queued"):
            shown = f"waiting for a command slot since {_ago(result.get('started'), now)}"
        else:
            shown = f"running since {_ago(result.get('started'), now)}"
    elif result.get("started") is None and due:
        return due  # changed, not run yet
    else:
        outcome = f"failed: {result['error']}" if result.get("error") else "exit 0"
        shown = f"{outcome} at {_ago(result.get('started'), now)}, {result.get('seconds') or 0:.1f}s"
    return f"{shown}; {due}" if due else shown


def _credential_lines(output: str, info: Mapping[str, Any], now: float) -> List[str]:
    """A credential output: its role and format, who can read it, when its keys were fetched."""
    role = info.get("role") or "not known yet"
    return [f"credentials {output}: role {role}, format {info.get('format')}, "
            f"held by {info.get('holder') or 'unknown (not written yet)'}",
            f"  keys fetched {_ago(info.get('last_refresh'), now)}"]


def render_text(doc: Optional[Mapping[str, Any]], health: Health, now: float) -> str:
    lines: List[str] = []
    if doc is None:
        lines.append(f"watcher: {health.state}")
    else:
        watcher = doc.get("watcher") or {}
        since = _ago(watcher.get("started"), now)
        lines.append(f"watcher: {health.state} (pid {watcher.get('pid')}), started {since}")
        if watcher.get("stopped"):
            lines.append(f"  stopped {_ago(watcher.get('stopped'), now)}")
        lines.append(f"  declarations: {', '.join(watcher.get('sources') or []) or '(none)'}")
        metrics = watcher.get("metrics")
        if metrics:
            written = f"cannot write: {metrics['last_error']}" if metrics.get("last_error") else "written on change"
            lines.append(f"  metrics: {metrics.get('path')} ({written})")
        commands = watcher.get("commands")
        if commands:
            lines.append(f"  commands: {commands.get('running', 0)} running, {commands.get('queued', 0)} waiting "
                         f"(at most {commands.get('max_running')} at once, {commands.get('max_queued')} waiting); "
                         f"{commands.get('merged', 0)} merged into a later run, {commands.get('refused', 0)} refused")
        for name, info in sorted((doc.get("values") or {}).items()):
            lines.append(f"value {name}: {info.get('path')} (refresh {info.get('refresh')})")
            detail = f"  last refresh {_ago(info.get('last_refresh'), now)}"
            if info.get("next_due"):
                detail += f"; next {_ago(info.get('next_due'), now)}"
            if info.get("expires"):
                detail += f"; credentials expire {_ago(info.get('expires'), now)}"
            lines.append(detail)
            if info.get("last_error"):
                lines.append(f"  last error ({info.get('failures')} failed poll(s)): {info['last_error']}")
        for output, info in sorted((doc.get("outputs") or {}).items()):
            if info.get("format"):
                lines.extend(_credential_lines(output, info, now))
            else:
                lines.append(f"output {output}: uses {', '.join(info.get('uses') or [])}")
            change = _ago(info.get("last_change"), now)
            detail = f"  last change {change}" + (f" ({info['last_action']})" if info.get("last_action") else "")
            if info.get("expires"):
                detail += f"; holds credentials until {_ago(info.get('expires'), now)}"
            lines.append(detail)
            if info.get("on_change"):
                lines.append(f"  on_change: {_command(info['on_change'], now)}")
            if info.get("last_error"):
                lines.append(f"  last error: {info['last_error']}")
        for event, info in sorted((doc.get("events") or {}).items()):
            lines.append(f"event {event}: {info.get('path')}, polled every {info.get('poll'):g}s")
            notices = info.get("notices") or []
            lifecycle = "acted_on" in info or "state" in info
            if lifecycle:
                lines.append(f"  state {info.get('state') or 'none (not in an Auto Scaling group)'}; last acted on "
                             + (f"{info['acted_on']}, seen {_ago(info.get('acted_on_seen'), now)}"
                                if info.get("acted_on") else "none"))
            if not notices:
                lines.append("  no transition in this watcher's life" if lifecycle else "  no notice")
            if info.get("waiting"):
                lines.append(f"  {info['waiting']} new notice(s) wait for a later poll (a limit per minute, or no "
                             "free command slot)")
            for notice in notices:
                fields = notice.get("fields") or {}
                if lifecycle:
                    lines.append(f"  transition {fields.get('previous') or '(none)'} -> {fields.get('state')} "
                                 f"seen {_ago(notice.get('seen'), now)}")
                else:
                    lines.append(f"  notice {notice.get('id')} seen {_ago(notice.get('seen'), now)}: "
                                 f"{json.dumps(fields, sort_keys=True)}")
                for command in notice.get("commands") or []:
                    lines.append(f"    {command.get('label')}: {_command(command, now)}")
            if info.get("last_error"):
                lines.append(f"  last error: {info['last_error']}")
    if health.problems:
        lines.extend(f"problem: {message}" for _, message in health.problems)
    else:
        lines.append("healthy" if doc is not None else
                     "healthy: no declaration asks for a refresh or an event, so no watcher runs")
    return "".join(shown(line) + "\n" for line in lines)  # what IMDS or a command put in, escaped


def as_json(doc: Optional[Mapping[str, Any]], health: Health) -> Dict[str, Any]:
    return {
        "exit": health.code,
        "state": health.state,
        "problems": [{"exit": code, "message": message} for code, message in health.problems],
        "status": doc,
    }


def status_command(args: argparse.Namespace) -> int:
    """What the watcher last wrote, judged now, as text or --json; the exit status says how healthy it is."""
    directory = rundir.run_dir()
    try:
        document = rundir.read_json(directory / rundir.STATUS)
    except rundir.RunDirError as exc:
        say(str(exc))
        return NOT_RUNNING
    problem = status_problem(document) if document is not None else None
    if problem is not None:
        say(f"{directory / rundir.STATUS}: not a status document of this version ({problem})")
        return NOT_RUNNING
    now = time.time()
    health = assess(document, watcher_needed(directory), now)
    text = json.dumps(as_json(document, health), indent=2, sort_keys=True) + "\n" if args.json else (
        render_text(document, health, now))
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except OutputStreamError as exc:  # main() guards sys.stdout; any other failure is exit 4 there
        if not exc.broken_pipe:
            raise
        # `cc-imds status | head`: the reader has what it wanted; nothing left to flush at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return health.code
