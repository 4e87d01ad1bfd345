"""The watcher's state as a Prometheus text file, for node_exporter's textfile collector.

Declared as `metrics: {path: /var/lib/node_exporter/textfile_collector/cc_imds.prom}`. The
watcher renders it from a Snapshot whenever its status changes and replaces the file
atomically (files/atomic.py) only when the text differs, so node_exporter never reads half
a file and an idle watcher writes nothing.

What is in it (exposition format 0.0.4; every name starts with cc_imds_, counters end in
_total, times are Unix seconds in ..._timestamp_seconds gauges): see FAMILIES. Labels
hold only names and paths from the declaration (value names, IMDS paths, output paths,
event kinds) and fixed words: never a value, so never a secret. Times to come (when
credentials expire) are written as timestamps, not as seconds left: the file is rewritten
only when something changes, and `..._timestamp_seconds - time()` in a query is always
current.

Counters count from the watcher's start (cc_imds_watcher_start_timestamp_seconds), as a
process's counters do: Prometheus' rate() and increase() handle the reset of a restart.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

PREFIX = "cc_imds_"
COUNTER, GAUGE = "counter", "gauge"

ON_CHANGE, EVENT = "on_change", "event"  # command kinds
RELOAD_ADOPTED, RELOAD_REFUSED = "adopted", "refused"

# name -> (type, help). The order is the file's.
FAMILIES: Dict[str, Tuple[str, str]] = {
    "cc_imds_build_info": (GAUGE, "Always 1; the cc-imds version in a label."),
    "cc_imds_watcher_start_timestamp_seconds": (GAUGE, "When this cc-imds watch process started."),
    "cc_imds_reloads_total": (COUNTER, "Declaration reloads (SIGHUP), by result: adopted or refused."),
    "cc_imds_reload_refused": (GAUGE, "1 while the last reload was refused and the previous declaration still runs."),
    "cc_imds_value_last_success_timestamp_seconds": (GAUGE, "When the value was last fetched from IMDS."),
    "cc_imds_value_poll_failures_total": (COUNTER, "Failed IMDS polls of the value's path; the last good value stays."),
    "cc_imds_value_consecutive_failures": (GAUGE, "Failed IMDS polls of the value's path since its last success."),
    "cc_imds_value_expiration_timestamp_seconds": (GAUGE, "When the credentials the value was read from expire."),
    "cc_imds_output_last_change_timestamp_seconds": (GAUGE, "When the watcher last replaced the output."),
    "cc_imds_output_write_failures_total": (COUNTER, "Times the output could not be rendered or written."),
    "cc_imds_output_expiration_timestamp_seconds": (GAUGE, "When the credentials the output holds expire."),
    "cc_imds_on_change_due_timestamp_seconds": (GAUGE, "When a waiting on_change command runs (wait and splay)."),
    "cc_imds_event_notices_seen_total": (COUNTER, "New instance event notices seen in IMDS."),
    "cc_imds_event_notices_handled_total": (COUNTER, "Instance event notices whose commands were started."),
    "cc_imds_event_poll_failures_total": (COUNTER, "Failed IMDS polls of the event's path."),
    "cc_imds_command_exits_total": (COUNTER, "Commands that ended, by kind (on_change, event), the output path or "
                                             "event they ran for, and outcome (exit_0, exit_nonzero, timeout, "
                                             "signal, not_started, refused)."),
}


@dataclass
class Counters:
    """What the watcher counts from its start; the rest of a Snapshot it already knows."""

    poll_failures: Dict[str, int] = field(default_factory=dict)  # by IMDS path
    write_failures: Dict[str, int] = field(default_factory=dict)  # by output path
    notices_seen: Dict[str, int] = field(default_factory=dict)  # by event
    notices_handled: Dict[str, int] = field(default_factory=dict)
    event_failures: Dict[str, int] = field(default_factory=dict)
    command_exits: Dict[Tuple[str, str, str], int] = field(default_factory=dict)  # (kind, name, outcome)
    reloads: Dict[str, int] = field(default_factory=dict)

    @staticmethod
    def add(counts: Dict[str, int], key: str, by: int = 1) -> None:
        counts[key] = counts.get(key, 0) + by

    def command_ended(self, kind: str, name: str, outcome: str) -> None:
        key = (kind, name, outcome)
        self.command_exits[key] = self.command_exits.get(key, 0) + 1


@dataclass(frozen=True)
class ValueRow:
    name: str
    path: str
    last_success: Optional[float]
    consecutive_failures: int
    expiration: Optional[float]  # credential values only


@dataclass(frozen=True)
class OutputRow:
    path: str
    last_change: Optional[float]
    expiration: Optional[float]
    on_change_due: Optional[float]  # a command waiting out `wait`/`splay`


@dataclass(frozen=True)
class Snapshot:
    version: str
    started: float
    reload_refused: bool
    values: Sequence[ValueRow]
    outputs: Sequence[OutputRow]
    events: Sequence[str]
    counters: Counters


def render(snapshot: Snapshot) -> str:
    """The whole file: every family with its HELP and TYPE, samples in a stable order."""
    counters = snapshot.counters
    samples: Dict[str, List[Tuple[Mapping[str, str], float]]] = {name: [] for name in FAMILIES}
    samples["cc_imds_build_info"].append(({"version": snapshot.version}, 1))
    samples["cc_imds_watcher_start_timestamp_seconds"].append(({}, snapshot.started))
    for result in (RELOAD_ADOPTED, RELOAD_REFUSED):
        samples["cc_imds_reloads_total"].append(({"result": result}, counters.reloads.get(result, 0)))
    samples["cc_imds_reload_refused"].append(({}, int(snapshot.reload_refused)))
    for value in snapshot.values:
        labels = {"value": value.name, "path": value.path}
        if value.last_success is not None:
            samples["cc_imds_value_last_success_timestamp_seconds"].append((labels, value.last_success))
        samples["cc_imds_value_poll_failures_total"].append((labels, counters.poll_failures.get(value.path, 0)))
        samples["cc_imds_value_consecutive_failures"].append((labels, value.consecutive_failures))
        if value.expiration is not None:
            samples["cc_imds_value_expiration_timestamp_seconds"].append((labels, value.expiration))
    for output in snapshot.outputs:
        labels = {"output": output.path}
        if output.last_change is not None:
            samples["cc_imds_output_last_change_timestamp_seconds"].append((labels, output.last_change))
        samples["cc_imds_output_write_failures_total"].append((labels, counters.write_failures.get(output.path, 0)))
        if output.expiration is not None:
            samples["cc_imds_output_expiration_timestamp_seconds"].append((labels, output.expiration))
        if output.on_change_due is not None:
            samples["cc_imds_on_change_due_timestamp_seconds"].append((labels, output.on_change_due))
    for event in snapshot.events:
        labels = {"event": event}
        samples["cc_imds_event_notices_seen_total"].append((labels, counters.notices_seen.get(event, 0)))
        samples["cc_imds_event_notices_handled_total"].append((labels, counters.notices_handled.get(event, 0)))
        samples["cc_imds_event_poll_failures_total"].append((labels, counters.event_failures.get(event, 0)))
    for (kind, name, outcome), count in counters.command_exits.items():
        samples["cc_imds_command_exits_total"].append(({"kind": kind, "name": name, "outcome": outcome}, count))
    lines: List[str] = []
    for name, (kind, text) in FAMILIES.items():
        lines.append(f"# HELP {name} {escape_help(text)}")
        lines.append(f"# TYPE {name} {kind}")
        for shown, number in sorted(samples[name], key=lambda sample: sorted(sample[0].items())):
            lines.append(f"{name}{format_labels(shown)} {format_number(number)}")
    return "\n".join(lines) + "\n"


def escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def escape_label(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def format_labels(labels: Mapping[str, str]) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{key}="{escape_label(value)}"' for key, value in sorted(labels.items())) + "}"


def format_number(number: float) -> str:
    """As Go's ParseFloat reads it: integers without a fraction, times to the millisecond."""
    if isinstance(number, int):
        return str(number)
    if math.isnan(number):
        return "NaN"
    if math.isinf(number):
        return "+Inf" if number > 0 else "-Inf"
    if number.is_integer() and abs(number) < 1e15:
        return str(int(number))
    return repr(round(number, 3))


class MetricsFile:
    """The declared file, replaced only when its text changes. A failure is logged once
    per distinct problem and retried at the watcher's next pass."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.written: Optional[str] = None
        self.problem: Optional[str] = None

    @property
    def behind(self) -> bool:
        """The last write failed: try again even if nothing changed."""
        return self.problem is not None

    def update(self, text: str) -> Optional[str]:
        """Write `text` unless the file already holds it. Returns the problem, or None."""
        if text == self.written:
            return None
        try:
            write_file(self.path, text.encode("utf-8"))
        except OSError as exc:
            self.written, self.problem = None, exc.strerror or str(exc)
            return self.problem
        self.written, self.problem = text, None
        return None


def write_file(path: str, data: bytes) -> None:
    """Replace `path` atomically, readable by node_exporter's user (0644): no secret is in it."""
    from ..files import atomic

    directory = os.open(os.path.dirname(path), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        atomic.replace(directory, os.path.basename(path), data, 0o644, path=os.path.abspath(path))
    finally:
        os.close(directory)
