"""Timed changes for the emulator: what a scenario file, the emulator's command-line flags and
the control endpoint's `after`/`at` options all become.

A scenario is a YAML or JSON document: a list of steps (or `{steps: [...]}`), each with one
time, `after: SECONDS` (from when the emulator starts, or from when the control endpoint got
it) or `at: TIME` (RFC 3339, `2026-12-07T08:00:00Z`), and one change:

    - after: 10
      spot-interruption: {action: terminate, in: 120}
    - at: "2026-12-07T08:00:00Z"
      lifecycle-state: Terminated

Changes (with what each takes):

    spot-interruption: {action: terminate|stop|hibernate, in: SECONDS}   (both optional)
    rebalance-recommendation: {}
    scheduled-maintenance: {code: CODE, in: SECONDS, duration: SECONDS}   (all optional)
    clear-events: {}
    lifecycle-state: STATE, or null for a 404 (in no Auto Scaling group)
    tags: true | false                     instance tags in metadata on or off
    throttle: {rate: N, retry_after: SECONDS}, or null to stop throttling
                                           (retry_after 1 unless given; null: no Retry-After)
    fail: {code: C, count: N, method: M, path: P, retry_after: SECONDS}   (see fail_next)
    drop-token-puts: true | false          the hop-limit symptom
    outage: SECONDS, or null for one until `restore`
    restore: {}
    set: {PATH: VALUE, ...}                serve these values (text, or a JSON document)
    delete: [PATH, ...]                    make these paths 404s
    rotate-credentials: {expires_in: SECONDS}

Every step is checked when the scenario is read, so a mistake is reported at start with its
place (`steps[2].throttle.rate: ...`), never when the step falls due. The control endpoint
checks its calls' options with the same checkers (`CHANGES`, `check_path`, `check_readable`),
giving `where` as "": its messages then name the option alone (`rate: 0 must be ...`).
"""

from __future__ import annotations

import datetime
import functools
import json
import math
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from ..imds.autoscaling import LIFECYCLE_STATES
from ..imds.tree import TreeError, as_leaf
from ..jsontext import parse
from ..untrusted import InputError, load_yaml_file
from .emulator import CREDENTIAL_DIRS, MAINTENANCE, Emulator

MAX_SCENARIO_BYTES = 1024 * 1024
MAX_STEPS = 1000
MAX_SECONDS = 10.0**9  # as the control endpoint's bounds
SPOT_ACTIONS = ("terminate", "stop", "hibernate")


class ScenarioError(ValueError):
    """A scenario that cannot be run, with the place of the first mistake."""


@dataclass(frozen=True)
class Step:
    after: Optional[float]  # seconds from the start, or None with `at`
    at: Optional[float]  # epoch seconds
    change: Callable[[Emulator], Any]
    label: str

    def when(self, start: float) -> float:
        return self.at if self.at is not None else start + (self.after or 0.0)


def schedule(emulator: Emulator, steps: Sequence[Step], start: Optional[float] = None) -> None:
    """Hand every step to the emulator, `after` counted from `start` (default: now). A step
    whose time has passed is made at once."""
    origin = emulator.clock() if start is None else start
    for step in steps:
        emulator.at(step.when(origin), step.label, functools.partial(step.change, emulator))


def load(path: str) -> List[Step]:
    """The steps of a scenario file (YAML or JSON), checked; ScenarioError names the mistake."""
    try:  # bounded as every input is: a regular file, nesting and aliases limited
        document = load_yaml_file(path, MAX_SCENARIO_BYTES)
    except InputError as exc:
        raise ScenarioError(str(exc)) from None
    try:
        return steps_from(document)
    except ScenarioError as exc:
        raise ScenarioError(f"{path}: {exc}") from None


def steps_from(document: Any) -> List[Step]:
    if isinstance(document, dict) and set(document) == {"steps"}:
        document = document["steps"]
    if not isinstance(document, list):
        raise ScenarioError("a scenario is a list of steps, or {steps: [...]}")
    if len(document) > MAX_STEPS:
        raise ScenarioError(f"at most {MAX_STEPS} steps")
    return [step_from(raw, f"steps[{index}]") for index, raw in enumerate(document)]


def step_from(raw: Any, where: str) -> Step:
    if not isinstance(raw, dict):
        raise ScenarioError(f"{where}: a step is a mapping: {{after: SECONDS, CHANGE: ...}}")
    times = [k for k in ("after", "at") if k in raw]
    changes = [k for k in raw if k not in ("after", "at")]
    if len(times) > 1:
        raise ScenarioError(f"{where}: give `after` or `at`, not both")
    if len(changes) != 1 or changes[0] not in CHANGES:
        raise ScenarioError(f"{where}: give exactly one change, one of: {', '.join(CHANGES)}")
    if times == ["at"]:
        after, at = None, _time(raw["at"], f"{where}.at")
    else:
        after, at = _seconds(raw.get("after", 0), f"{where}.after"), None
    name = changes[0]
    return _step(name, raw[name], f"{where}.{name}", after, at)


def _step(name: str, options: Any, where: str, after: Optional[float] = 0.0, at: Optional[float] = None) -> Step:
    """The change `name` with `options`, checked (a mistake named at `where`), at its time."""
    return Step(after, at, CHANGES[name](options, where), describe(name, options))


def describe(name: str, options: Any) -> str:
    """`spot-interruption {"action": "stop", "in": 120}`, `lifecycle-state "Terminated"`, `rebalance-recommendation`."""
    if options in ({}, True) or (options is None and name not in ("lifecycle-state", "throttle", "outage")):
        return name
    return f"{name} {json.dumps(options, sort_keys=True, default=str)}"


# -- the changes: each checks its options and returns what makes it ---------------------------
Change = Callable[[Emulator], Any]


def _key(where: str, key: str) -> str:
    """The place of option `key` in the options at `where` ("" when the caller names them)."""
    return f"{where}.{key}" if where else key


def _problem(where: str, text: str) -> ScenarioError:
    return ScenarioError(f"{where}: {text}" if where else text)


def _options(raw: Any, where: str, allowed: Sequence[str]) -> Mapping[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise _problem(where, f"expected a mapping of {', '.join(allowed) or 'nothing'}")
    unknown = sorted(set(map(str, raw)) - set(allowed))
    if unknown:
        raise _problem(where, f"unknown option(s) {', '.join(unknown)}; allowed: {', '.join(allowed)}")
    return raw


def _seconds(raw: Any, where: str) -> float:
    if isinstance(raw, bool) or not isinstance(raw, (int, float)) or not math.isfinite(raw) or \
            not 0 <= raw < MAX_SECONDS:
        raise ScenarioError(f"{where}: {raw!r} must be a number of seconds, 0 to {MAX_SECONDS:g}")
    return float(raw)


def _whole(raw: Any, where: str, low: int, high: int) -> int:
    if isinstance(raw, bool) or not isinstance(raw, int) or not low <= raw <= high:
        raise ScenarioError(f"{where}: {raw!r} must be a whole number, {low} to {high}")
    return int(raw)


def parse_time(text: str) -> Optional[float]:
    """An RFC 3339 time (`2026-12-07T08:00:00Z`, or with an offset) -> epoch seconds, or None."""
    try:
        when = datetime.datetime.fromisoformat(text.strip().replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        return None
    if when.tzinfo is None:
        return None  # a time without its zone names no moment
    try:
        return when.timestamp()
    except (OverflowError, ValueError):
        return None


def _time(raw: Any, where: str) -> float:
    if isinstance(raw, datetime.datetime):  # YAML reads an unquoted 2026-12-07T08:00:00Z as one
        raw = raw.replace(tzinfo=raw.tzinfo or datetime.timezone.utc).isoformat()
    when = parse_time(raw) if isinstance(raw, str) else None
    if when is None:
        raise ScenarioError(f"{where}: {raw!r} must be a time in RFC 3339, such as 2026-12-07T08:00:00Z")
    return when


def _spot(raw: Any, where: str) -> Change:
    options = _options(raw, where, ("action", "in"))
    action = options.get("action", "terminate")
    if action not in SPOT_ACTIONS:
        raise ScenarioError(f"{where}.action: {action!r} must be one of {', '.join(SPOT_ACTIONS)}")
    notice_in = _seconds(options.get("in", 120.0), f"{where}.in")
    return lambda emu: emu.spot_interruption(action, notice_in)


def _rebalance(raw: Any, where: str) -> Change:
    _options(raw, where, ())
    return lambda emu: emu.rebalance_recommendation()


def _maintenance(raw: Any, where: str) -> Change:
    options = _options(raw, where, ("code", "in", "duration"))
    code = options.get("code", "system-reboot")
    if not isinstance(code, str) or not code:
        raise ScenarioError(f"{where}.code: expected an event code such as system-reboot")
    starts_in = _seconds(options.get("in", 7 * 86400.0), f"{where}.in")
    duration = _seconds(options.get("duration", 7200.0), f"{where}.duration")
    return lambda emu: emu.schedule_maintenance(code, starts_in, duration)


def _clear_events(raw: Any, where: str) -> Change:
    _options(raw, where, ())
    return lambda emu: emu.clear_events()


def _lifecycle(raw: Any, where: str) -> Change:
    if raw is not None and raw not in LIFECYCLE_STATES:
        raise ScenarioError(f"{where}: {raw!r} must be null (no Auto Scaling group) or one of "
                            f"{', '.join(LIFECYCLE_STATES)}")
    return lambda emu: emu.set_lifecycle_state(raw)


def _flag(raw: Any, where: str) -> bool:
    if not isinstance(raw, bool):
        raise ScenarioError(f"{where}: expected true or false")
    return raw


def _tags(raw: Any, where: str) -> Change:
    enabled = _flag(raw, where)
    return lambda emu: emu.set_tags_enabled(enabled)


def _throttle(raw: Any, where: str) -> Change:
    """The change returns what it set, as the control endpoint answers: {"throttle": N, "retry_after": S}."""
    if raw is None:
        def stop(emu: Emulator) -> Dict[str, Any]:
            emu.throttle(None)
            return {"throttle": None}

        return stop
    options = _options(raw, where, ("rate", "retry_after"))
    if "rate" not in options:
        raise _problem(where, "give rate: requests per second")
    rate = _whole(options["rate"], _key(where, "rate"), 1, 10**6)
    retry_after = _retry_after(options, where, default=1.0)

    def start(emu: Emulator) -> Dict[str, Any]:
        emu.throttle(rate, retry_after)
        return {"throttle": rate, "retry_after": retry_after}

    return start


def _retry_after(options: Mapping[str, Any], where: str, default: Optional[float] = None) -> Optional[str]:
    """The Retry-After header's text: `retry_after` (or `default` when not given) in seconds;
    None (no header) for an explicit null."""
    seconds = options.get("retry_after", default)
    return None if seconds is None else f"{_seconds(seconds, _key(where, 'retry_after')):g}"


def _fail(raw: Any, where: str) -> Change:
    options = _options(raw, where, ("code", "count", "method", "path", "retry_after"))
    if "code" not in options:
        raise _problem(where, "give code: an HTTP status, such as 429")
    code = _whole(options["code"], _key(where, "code"), 100, 599)
    count = _whole(options.get("count", 1), _key(where, "count"), 1, 10**9)
    method = options.get("method")
    if method not in (None, "GET", "PUT", "POST", "DELETE"):
        raise _problem(where, f"method {method!r} must be GET, PUT, POST or DELETE")
    path = options.get("path")
    if path is not None and not (isinstance(path, str) and path.startswith("/")):
        raise _problem(where, f"path {path!r} must start with /, as a request's does (/latest/...)")
    retry_after = _retry_after(options, where)
    return lambda emu: emu.fail_next(code, count, retry_after, method=method, path=path)


def _drop_puts(raw: Any, where: str) -> Change:
    drop = _flag(raw, where)
    return lambda emu: emu.drop_token_puts(drop)


def _outage(raw: Any, where: str) -> Change:
    seconds = None if raw is None else _seconds(raw, where)
    return lambda emu: emu.outage(seconds)


def _restore(raw: Any, where: str) -> Change:
    _options(raw, where, ())
    return lambda emu: emu.restore()


def check_path(path: Any, where: str) -> str:
    """A path IMDS could serve (`/` at either end aside, as the tree takes it): under meta-data/,
    dynamic/ or user-data, printable ASCII, no empty, `.` or `..` part. Anything else would sit
    in the tree where no request reaches it. Returns it without those `/`."""
    leaf = path.strip("/") if isinstance(path, str) else ""
    parts = leaf.split("/")
    if parts[0] not in ("meta-data", "dynamic", "user-data") or any(p in ("", ".", "..") for p in parts) or \
            not all(0x21 <= ord(c) <= 0x7E for c in leaf) or len(leaf) > 1024:
        shown = path[:100] if isinstance(path, str) else path
        raise _problem(where, f"{shown!r} is not a path IMDS serves (meta-data/..., dynamic/... or user-data; "
                              "printable ASCII, no empty, . or .. part, at most 1024 characters)")
    return leaf


def check_readable(path: str, body: bytes, where: str) -> None:
    """Any bytes can be served, except where the emulator reads them itself (credentials it
    rotates, the maintenance list it adds to): there they must be a JSON document it can read,
    within the bounds every outside document has, or the next rotation would fail."""
    expected = dict if path.startswith(CREDENTIAL_DIRS) else list if path == MAINTENANCE else None
    if expected is None:
        return
    kind = "object" if expected is dict else "list"
    try:
        document = parse(body)
    except ValueError as exc:
        raise _problem(where, f"the emulator reads this path itself, so its value must be a JSON {kind}: {exc}") \
            from None
    if not isinstance(document, expected):
        raise _problem(where, f"the emulator reads this path itself, so its value must be a JSON {kind}")


def _set(raw: Any, where: str) -> Change:
    if not isinstance(raw, dict) or not raw:
        raise _problem(where, "expected a mapping of paths to values")
    values: Dict[str, bytes] = {}
    for path, value in raw.items():
        place = f"{where}.{path}"
        if not isinstance(value, (str, dict, list)):
            raise ScenarioError(f"{place}: a value is text or a JSON document")
        leaf = check_path(path, place)
        try:
            body = as_leaf(value, place)  # now, so a bad {$base64: ...} is reported at load
        except TreeError as exc:
            raise ScenarioError(str(exc)) from None
        check_readable(leaf, body, place)
        values[leaf] = body

    def change(emu: Emulator) -> None:
        for path, value in values.items():
            emu.set_value(path, value)

    return change


def _delete(raw: Any, where: str) -> Change:
    if not isinstance(raw, list) or not raw:
        raise ScenarioError(f"{where}: expected a list of paths")
    paths = [check_path(p, f"{where}[{i}]") for i, p in enumerate(raw)]

    def change(emu: Emulator) -> None:
        for path in paths:
            emu.delete_value(path)

    return change


def _rotate(raw: Any, where: str) -> Change:
    options = _options(raw, where, ("expires_in",))
    expires_in = _seconds(options.get("expires_in", 21600.0), f"{where}.expires_in")
    return lambda emu: emu.rotate_credentials(expires_in)


CHANGES: Dict[str, Callable[[Any, str], Change]] = {
    "spot-interruption": _spot,
    "rebalance-recommendation": _rebalance,
    "scheduled-maintenance": _maintenance,
    "clear-events": _clear_events,
    "lifecycle-state": _lifecycle,
    "tags": _tags,
    "throttle": _throttle,
    "fail": _fail,
    "drop-token-puts": _drop_puts,
    "outage": _outage,
    "restore": _restore,
    "set": _set,
    "delete": _delete,
    "rotate-credentials": _rotate,
}


def steps_from_flags(*, spot_interruption: Optional[str] = None, rebalance_recommendation: bool = False,
                     scheduled_maintenance: Optional[str] = None, lifecycle_state: Optional[str] = None,
                     delay: Optional[float] = None, at: Optional[str] = None) -> List[Step]:
    """`cc-imds emulate`'s notice flags as steps: each notice (and the lifecycle state) appears
    `delay` seconds after the start, or at `at` (RFC 3339), or at once; before, its path is a
    404, as amazon-ec2-metadata-mock's --mock-delay-sec and --mock-trigger-time make it."""
    if delay is not None and at is not None:
        raise ScenarioError("give --notice-delay or --notice-time, not both")
    wanted: List[Tuple[str, Any]] = []
    if spot_interruption is not None:
        wanted.append(("spot-interruption", {"action": spot_interruption}))
    if rebalance_recommendation:
        wanted.append(("rebalance-recommendation", {}))
    if scheduled_maintenance is not None:
        wanted.append(("scheduled-maintenance", {"code": scheduled_maintenance}))
    if lifecycle_state is not None:
        wanted.append(("lifecycle-state", lifecycle_state))
    if not wanted and (delay is not None or at is not None):
        raise ScenarioError("--notice-delay and --notice-time time the notices given with them "
                            "(--spot-interruption, --rebalance-recommendation, --scheduled-maintenance, "
                            "--lifecycle-state): give one")
    if at is not None:
        after, when = None, _time(at, "--notice-time")
    else:
        after, when = _seconds(delay or 0, "--notice-delay"), None
    return [_step(name, options, f"--{name}", after, when) for name, options in wanted]


def steps_from_arguments(args: Any) -> List[Step]:
    """Everything `cc-imds emulate` is told to change, as steps from its start: the scenario
    file's (`--scenario`), then the notices, the lifecycle state and the faults of its flags
    (made after the scenario's own steps of the same time, so a flag has the last word)."""
    steps = load(args.scenario) if args.scenario else []
    steps += steps_from_flags(spot_interruption=args.spot_interruption,
                              rebalance_recommendation=args.rebalance_recommendation,
                              scheduled_maintenance=args.scheduled_maintenance,
                              lifecycle_state=args.lifecycle_state, delay=args.notice_delay, at=args.notice_time)
    retry_after = args.retry_after
    if args.throttle_rate is not None:
        steps.append(_step("throttle", {"rate": args.throttle_rate, "retry_after": retry_after}, "--throttle-rate"))
    if args.throttle_count is not None:
        steps.append(_step("fail", {"code": 429, "count": args.throttle_count, "retry_after": retry_after},
                           "--throttle-count"))
    if args.drop_token_puts:
        steps.append(_step("drop-token-puts", True, "--drop-token-puts"))
    return steps
