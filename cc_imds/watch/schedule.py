"""What `cc-imds watch` polls, and when. Pure: declaration and poll history in, due times out.

Values are polled by IMDS path: values that share a path (a credential document's
AccessKeyId, SecretAccessKey and Token) are fetched in one request and replaced together,
so an output never mixes two generations of credentials. A path is polled when:

- some value read from it declares `refresh: SECONDS`: every period, up to 10% early (jitter);
- it holds credentials: before their `Expiration` (see `credential_due`);
- a poll failed: with exponential backoff, never slower than the declared period.

Times are wall-clock seconds (what `Expiration` is written in), passed in by the caller;
jitter comes in as a number in [0, 1), so every decision here can be tested without a clock.
"""

from __future__ import annotations

import datetime
import math
from dataclasses import dataclass
from typing import Dict, FrozenSet, Mapping, Optional, Set, Tuple, Union

from ..declaration.build import Declaration, EventAction
from ..jsontext import parse
from .events import EVENT_PATHS

FLOOR = 1.0  # never poll a path more often than this
JITTER = 0.1  # periods are shortened by up to 10%, so polls spread out and are never late
CREDENTIAL_WINDOW = 15 * 60.0  # start asking for new credentials this long before Expiration
CREDENTIAL_RETRY = 60.0  # inside that window, ask again at least this often until they rotate
CREDENTIAL_DEFAULT_PERIOD = 3600.0  # a credential document without Expiration (identity-credentials/ec2/info)
CREDENTIAL_LONGEST_WAIT = 6 * 3600.0  # EC2's credentials live about 6 h: a later Expiration is not taken on trust
BACKOFF_BASE = 5.0
BACKOFF_CAP = 300.0

Document = Union[str, bytes, Mapping[str, str]]


@dataclass(frozen=True)
class Group:
    """One IMDS path the watcher fetches, and the values read from it."""

    path: str
    names: FrozenSet[str]
    period: Optional[float]  # the shortest declared `refresh`
    credential: bool  # scheduled from the document's Expiration

    @property
    def refreshing(self) -> bool:
        """False for once-per-boot values that a rewritten output also uses: fetched when
        the watcher starts (or reloads), then kept."""
        return self.period is not None or self.credential


@dataclass(frozen=True)
class EventWatch:
    """One event kind: its IMDS path, how often it is polled, and what runs on a notice."""

    event: str
    path: str
    poll: float
    actions: Tuple[EventAction, ...]


@dataclass(frozen=True)
class WatchPlan:
    groups: Tuple[Group, ...]  # every path the rewritten outputs read, refreshing or not
    outputs: FrozenSet[str]  # the outputs that use a refreshing value: the only ones rewritten
    events: Tuple[EventWatch, ...]

    @property
    def idle(self) -> bool:
        """Nothing to refresh and no event to watch: no watcher is needed."""
        return not any(g.refreshing for g in self.groups) and not self.events

    @property
    def refreshing(self) -> Tuple[Group, ...]:
        return tuple(g for g in self.groups if g.refreshing)


@dataclass(frozen=True)
class PollState:
    """What the watcher knows about one path's polls (wall-clock seconds)."""

    last_attempt: Optional[float] = None
    last_success: Optional[float] = None
    failures: int = 0  # consecutive failed polls
    expiration: Optional[float] = None  # earliest Expiration in the last good document

    def succeeded(self, at: float, expiration: Optional[float]) -> PollState:
        return PollState(at, at, 0, expiration)

    def failed(self, at: float) -> PollState:
        return PollState(at, self.last_success, self.failures + 1, self.expiration)


def plan(declaration: Declaration) -> WatchPlan:
    """Which outputs the watcher rewrites, which paths it fetches, which events it watches.

    An output is rewritten when it uses a refreshing value (a declared `refresh` period,
    or credentials). Values are grouped by path: values of one path are fetched together,
    so a once-per-boot value that shares its path with a refreshing one is refreshed too.
    """
    values = declaration.values
    refreshing = {n for n, s in values.items() if s.refresh is not None or s.is_credential}
    outputs = [o for o in declaration.outputs if o.uses & refreshing]
    by_path: Dict[str, Set[str]] = {}
    for output in outputs:
        for name in output.uses:
            if name in values:
                by_path.setdefault(values[name].path, set()).add(name)
    groups = []
    for path, names in sorted(by_path.items()):
        periods = [p for p in (values[n].refresh for n in names) if p is not None]
        credential = any(values[n].is_credential for n in names)
        groups.append(Group(path, frozenset(names), min(periods) if periods else None, credential))
    events = []
    for event, path in EVENT_PATHS.items():
        actions = tuple(a for a in declaration.events if a.event == event)
        if actions:
            events.append(EventWatch(event, path, min(a.poll for a in actions), actions))
    return WatchPlan(tuple(groups), frozenset(o.path for o in outputs), tuple(events))


def next_due(group: Group, state: PollState, jitter: float) -> float:
    """When `group` is due next. `jitter` in [0, 1) picks how early within the allowed spread."""
    if state.last_attempt is None:
        return -math.inf  # never polled: now
    if state.failures:
        return state.last_attempt + backoff(group, state)
    assert state.last_success is not None
    due = math.inf  # a once-per-boot group, once fetched, is never due again
    if group.period is not None:
        due = state.last_success + max(FLOOR, group.period * (1 - JITTER * jitter))
    if group.credential:
        if state.expiration is not None:
            due = min(due, credential_due(state.last_success, state.expiration, jitter))
        else:
            period = group.period if group.period is not None else CREDENTIAL_DEFAULT_PERIOD
            due = min(due, state.last_success + period * (1 - JITTER * jitter))
    return due


def credential_due(fetched: float, expiration: float, jitter: float) -> float:
    """Credentials fetched at `fetched` expire at `expiration`. IMDS publishes new ones at
    least five minutes before the old ones expire, so: sleep until CREDENTIAL_WINDOW before
    Expiration, then ask every minute (or at half the time left, when that is sooner) until
    new ones appear. Short-lived credentials are asked for again at half their life."""
    remaining = expiration - fetched
    if remaining <= 0:
        return fetched + CREDENTIAL_RETRY  # IMDS handed out expired credentials: don't hammer it
    if remaining > 2 * CREDENTIAL_WINDOW:
        due = expiration - CREDENTIAL_WINDOW - min(60.0, JITTER * (remaining - CREDENTIAL_WINDOW)) * jitter
        return min(due, fetched + CREDENTIAL_LONGEST_WAIT)
    return fetched + min(CREDENTIAL_RETRY, max(FLOOR, remaining / 2))


def after_failures(failures: int, cap: float = BACKOFF_CAP) -> float:
    """The watcher's one backoff, for polls and for writes: seconds after the latest of
    `failures` consecutive failures, 5, 10, 20 ... up to `cap` (5 minutes).

    Not the IMDS client's retry backoff (imds/retry.py), which spaces attempts of one
    request within one poll's deadline (0.1 to 2 s, jittered); this spaces whole polls
    and writes across minutes, and periods carry the jitter (JITTER)."""
    return min(cap, BACKOFF_BASE * 2.0 ** min(failures - 1, 16))


def backoff(group: Group, state: PollState) -> float:
    """A path's poll backoff (after_failures), never more than the declared period, nor than
    a minute for credentials that are close to their Expiration."""
    cap = BACKOFF_CAP
    if group.period is not None:
        cap = min(cap, group.period)
    if group.credential and state.expiration is not None and state.last_attempt is not None:
        if state.expiration - state.last_attempt < 2 * CREDENTIAL_WINDOW:
            cap = min(cap, CREDENTIAL_RETRY)
    return max(FLOOR, after_failures(state.failures, cap))


def event_due(watch: EventWatch, last_poll: Optional[float], jitter: float) -> float:
    """Events are polled at their period whatever happened: a notice must not wait on a backoff."""
    if last_poll is None:
        return -math.inf
    return last_poll + max(FLOOR, watch.poll * (1 - JITTER * jitter))


# -- Expiration ----------------------------------------------------------------------------
def parse_time(text: str) -> Optional[float]:
    """An ISO 8601 UTC time as IMDS writes it (`2026-11-28T15:00:00Z`) -> epoch seconds;
    None when it is not one, or names no moment of the years 1 to 9999 once in UTC (an
    offset can push 9999-12-31 past it), which status could not show."""
    try:
        when = datetime.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
        if when.tzinfo is None:
            when = when.replace(tzinfo=datetime.timezone.utc)
        return when.astimezone(datetime.timezone.utc).timestamp()
    except (ValueError, OverflowError):
        return None


def expiration(document: Document) -> Optional[float]:
    """The earliest `Expiration` in a credential document, or in each entry of a directory of them."""
    if isinstance(document, Mapping):
        found = [expiration(entry) for entry in document.values()]
        times = [t for t in found if t is not None]
        return min(times) if times else None
    try:
        parsed = parse(document)
    except ValueError:  # not JSON, or refused (JsonRefused): no Expiration to go by
        return None
    if isinstance(parsed, dict) and isinstance(parsed.get("Expiration"), str):
        return parse_time(parsed["Expiration"])
    return None
