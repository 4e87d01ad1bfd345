"""The emulator against amazon-ec2-metadata-mock (AEMM): what AEMM offers from its command line
and config file, ours offers through the Emulator API, the control endpoint and scenario
files: notices after a delay or at a time, Auto Scaling lifecycle states, throttling (429 with
Retry-After, as a count or a rate), the hop-limit symptom, tags turned off at run time.

AEMM's own documented scenarios (its README: spot ITN after a delay or at a trigger time,
rebalance recommendation, scheduled events, ASG lifecycle termination) run against ours: the
same paths, the same document shapes, 404 before the time and the document from that time
on. Time is the emulator's injected clock, never a sleep."""

from __future__ import annotations

import http.client
import json
import re
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple
from urllib.parse import urlsplit

import pytest

from cc_imds.errors import ImdsError, ImdsNotFound
from cc_imds.imds.client import ClientSettings, ImdsClient
from cc_imds.imds.tree import load_tree
from cc_imds.testing import scenario
from cc_imds.testing.control import ControlServer
from cc_imds.testing.emulator import Emulator
from cc_imds.untrusted import load_yaml
from cc_imds.watch.schedule import parse_time
from tests.test_emulator_runtime import call

START = 1_800_000_000.0  # 2027-01-15T08:00:00Z
RFC3339 = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z")
# AEMM writes "2 Jan 2006 15:04:05 GMT"
EVENT_TIME = re.compile(r"[1-9][0-9]? [A-Z][a-z]{2} [0-9]{4} [0-9]{2}:[0-9]{2}:[0-9]{2} GMT")
SPOT = "meta-data/spot/instance-action"
TERMINATION_TIME = "meta-data/spot/termination-time"
REBALANCE = "meta-data/events/recommendations/rebalance"
SCHEDULED = "meta-data/events/maintenance/scheduled"
LIFECYCLE = "meta-data/autoscaling/target-lifecycle-state"


class Clock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clocked(make_emulator: Callable[..., Emulator]) -> Tuple[Emulator, Clock]:
    emulator = make_emulator()
    clock = Clock()
    emulator.clock = clock
    return emulator, clock


@pytest.fixture
def control(clocked: Tuple[Emulator, Clock]) -> Iterator[ControlServer]:
    with ControlServer(clocked[0]) as server:
        yield server


def fetch(emulator: Emulator, path: str) -> Optional[bytes]:
    """The body IMDS serves, or None for a 404."""
    with ImdsClient(ClientSettings(endpoint=emulator.url, deadline=5)) as client:
        try:
            return client.fetch(path)
        except ImdsNotFound:
            return None


def document(emulator: Emulator, path: str) -> Any:
    body = fetch(emulator, path)
    return None if body is None else json.loads(body)


def raw(emulator: Emulator, method: str, path: str, headers: Optional[Dict[str, str]] = None) -> Tuple[int, str]:
    """One plain request: its status and Retry-After."""
    parts = urlsplit(emulator.url)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=10)
    try:
        conn.request(method, path, headers=headers or {})
        response = conn.getresponse()
        response.read()
        return response.status, response.getheader("Retry-After") or ""
    finally:
        conn.close()


# -- AEMM's documented scenarios ------------------------------------------------------------
# Each: the AEMM command line its README shows, the steps it becomes here, and what is served
# from the trigger time on. `after` counts from the start, as AEMM's delays count from its own.
def spot_shape(emulator: Emulator, trigger: float, action: str) -> None:
    notice = document(emulator, SPOT)
    assert set(notice) == {"action", "time"} and notice["action"] == action
    assert RFC3339.fullmatch(notice["time"]) and parse_time(notice["time"]) == trigger + 120  # AEMM: + 2 minutes
    assert fetch(emulator, TERMINATION_TIME) == notice["time"].encode()


def rebalance_shape(emulator: Emulator, trigger: float, _: str) -> None:
    notice = document(emulator, REBALANCE)
    assert set(notice) == {"noticeTime"} and parse_time(notice["noticeTime"]) == trigger


def scheduled_shape(emulator: Emulator, trigger: float, code: str) -> None:
    events = document(emulator, SCHEDULED)
    assert isinstance(events, list) and len(events) == 1  # AEMM serves a list of one
    [event] = events
    assert set(event) == {"Code", "Description", "State", "EventId", "NotBefore", "NotAfter", "NotBeforeDeadline"}
    assert (event["Code"], event["State"], event["Description"]) == (code, "active",
                                                                     f"The instance is scheduled for {code}")
    assert re.fullmatch(r"instance-event-[0-9a-f]{17}", event["EventId"])
    assert all(EVENT_TIME.fullmatch(event[k]) for k in ("NotBefore", "NotAfter", "NotBeforeDeadline"))


def lifecycle_shape(emulator: Emulator, _: float, state: str) -> None:
    assert fetch(emulator, LIFECYCLE) == state.encode()


AEMM_SCENARIOS: Dict[str, Tuple[str, List[Dict[str, Any]], str, Callable[[Emulator, float, str], None], str]] = {
    # name: (AEMM's command, our steps (trigger at START + 10), the path, the check, its argument)
    "spot after a delay": (
        "ec2-metadata-mock spot -d 10",
        [{"after": 10, "spot-interruption": {}}], SPOT, spot_shape, "terminate"),
    "spot at a trigger time": (
        "ec2-metadata-mock spot -a stop --mock-trigger-time 2027-01-15T08:00:10Z",
        [{"at": "2027-01-15T08:00:10Z", "spot-interruption": {"action": "stop"}}], SPOT, spot_shape, "stop"),
    "rebalance after a delay": (
        "ec2-metadata-mock spot --rebalance-delay-sec 10",
        [{"after": 10, "rebalance-recommendation": {}}], REBALANCE, rebalance_shape, ""),
    "rebalance at a trigger time": (
        "ec2-metadata-mock spot --rebalance-trigger-time 2027-01-15T08:00:10Z",
        [{"at": "2027-01-15T08:00:10Z", "rebalance-recommendation": {}}], REBALANCE, rebalance_shape, ""),
    "scheduled maintenance after a delay": (
        "ec2-metadata-mock events -o instance-stop -d 10",
        [{"after": 10, "scheduled-maintenance": {"code": "instance-stop"}}], SCHEDULED, scheduled_shape,
        "instance-stop"),
    "ASG lifecycle termination after a delay": (
        "ec2-metadata-mock asglifecycle --asg-termination-delay-sec 10",
        [{"after": 0, "lifecycle-state": "InService"}, {"after": 10, "lifecycle-state": "Terminated"}],
        LIFECYCLE, lifecycle_shape, "Terminated"),
    "ASG lifecycle termination at a trigger time": (
        "ec2-metadata-mock asglifecycle --asg-termination-trigger-time 2027-01-15T08:00:10Z",
        [{"lifecycle-state": "InService"}, {"at": "2027-01-15T08:00:10Z", "lifecycle-state": "Terminated"}],
        LIFECYCLE, lifecycle_shape, "Terminated"),
}


@pytest.mark.parametrize("name", list(AEMM_SCENARIOS))
def test_aemm_documented_scenarios_serve_the_same_paths_and_shapes(
        clocked: Tuple[Emulator, Clock], name: str) -> None:
    emulator, clock = clocked
    _, steps, path, check, argument = AEMM_SCENARIOS[name]
    scenario.schedule(emulator, scenario.steps_from(steps), START)
    clock.now = START + 9
    if path == LIFECYCLE:
        assert fetch(emulator, LIFECYCLE) == b"InService"  # AEMM: InService until the termination
    else:
        assert fetch(emulator, path) is None  # AEMM: 404 - Not Found until the delay has passed
        if path == SPOT:
            assert fetch(emulator, TERMINATION_TIME) is None
    clock.now = START + 10
    check(emulator, START + 10, argument)
    clock.now = START + 3600
    check(emulator, START + 10, argument)  # it stays, as it is at the time it appeared


@pytest.mark.parametrize("name", [n for n in AEMM_SCENARIOS if "after a delay" in n])
def test_the_control_endpoint_plays_the_same_scenarios(
        clocked: Tuple[Emulator, Clock], control: ControlServer, name: str) -> None:
    emulator, clock = clocked
    _, steps, path, check, argument = AEMM_SCENARIOS[name]
    targets = {
        SPOT: "/events/spot-interruption?after=10",
        REBALANCE: "/events/rebalance-recommendation?after=10",
        SCHEDULED: "/events/scheduled-maintenance?code=instance-stop&after=10",
        LIFECYCLE: "/autoscaling/target-lifecycle-state?state=Terminated&after=10",
    }
    if path == LIFECYCLE:
        assert call(control.url, "POST", "/autoscaling/target-lifecycle-state?state=InService") == (
            200, {"lifecycle-state": "InService"})
    status, answer = call(control.url, "POST", targets[path])
    assert status == 200 and answer["at"] == "2027-01-15T08:00:10Z", answer
    assert call(control.url, "GET", "/schedule")[1] == {"scheduled": [{"at": "2027-01-15T08:00:10Z",
                                                                      "change": answer["scheduled"]}]}
    clock.now = START + 9
    assert fetch(emulator, path) == (b"InService" if path == LIFECYCLE else None)
    clock.now = START + 10
    check(emulator, START + 10, argument)
    assert call(control.url, "GET", "/schedule")[1] == {"scheduled": []}


def test_a_scenario_posted_to_the_control_endpoint_counts_from_then(
        clocked: Tuple[Emulator, Clock], control: ControlServer) -> None:
    emulator, clock = clocked
    clock.now = START + 100
    body = b"- after: 5\n  lifecycle-state: Warmed:Running\n- after: 5\n  lifecycle-state: InService\n" \
           b"- after: 60\n  lifecycle-state: null\n"
    status, answer = call(control.url, "POST", "/scenario", body)
    assert status == 200 and [s["at"] for s in answer["scheduled"]] == [
        "2027-01-15T08:01:45Z", "2027-01-15T08:01:45Z", "2027-01-15T08:02:40Z"]
    clock.now = START + 105
    assert fetch(emulator, LIFECYCLE) == b"InService"  # due together: made in the order given
    clock.now = START + 160
    assert fetch(emulator, LIFECYCLE) is None
    assert call(control.url, "POST", "/scenario", b"- after: 1\n  lifecycle-state: Terminating\n")[0] == 400
    assert call(control.url, "POST", "/events/rebalance-recommendation?after=5&at=2027-01-15T08:00:00Z")[0] == 400


def test_a_timed_change_that_cannot_be_made_is_shown_and_the_request_answered(
        clocked: Tuple[Emulator, Clock], control: ControlServer) -> None:
    emulator, clock = clocked
    emulator.set_value(SCHEDULED, "not a list")
    assert call(control.url, "POST", "/events/scheduled-maintenance?after=5")[0] == 200
    clock.now = START + 5
    assert fetch(emulator, "meta-data/instance-id") == b"i-0a1b2c3d4e5f60789"
    [failed] = call(control.url, "GET", "/schedule")[1]["failed"]
    assert failed["change"].startswith("scheduled-maintenance") and "holds no list" in failed["error"]


def test_a_whole_tree_replaced_as_a_config_file_reloaded(clocked: Tuple[Emulator, Clock],
                                                         control: ControlServer) -> None:
    emulator, _ = clocked
    aemm = {"metadata": {"paths": {"instance-id": "/latest/meta-data/instance-id"},
                         "values": {"instance-id": "i-0fromaemmconfig"}}}
    assert call(control.url, "PUT", "/tree", json.dumps(aemm).encode()) == (200, {"leaves": 1})
    assert fetch(emulator, "meta-data/instance-id") == b"i-0fromaemmconfig"
    assert fetch(emulator, "meta-data/placement/region") is None
    assert call(control.url, "PUT", "/tree", b'{"meta-data/instance-id": "i-0flat"}') == (200, {"leaves": 1})
    assert fetch(emulator, "meta-data/instance-id") == b"i-0flat"
    for body in (b"[]", b"not json", b"[" * 100 + b"]" * 100, b'{"meta-data/x": true}'):
        status, answer = call(control.url, "PUT", "/tree", body)
        assert status == 400 and answer["error"].startswith("the body must be a metadata tree"), answer
    assert fetch(emulator, "meta-data/instance-id") == b"i-0flat"  # a refused body changes nothing


def test_scheduled_changes_can_be_cancelled(clocked: Tuple[Emulator, Clock], control: ControlServer) -> None:
    emulator, clock = clocked
    assert call(control.url, "POST", "/events/spot-interruption?after=30")[0] == 200
    assert call(control.url, "DELETE", "/schedule") == (200, {"cancelled": 1})
    clock.now = START + 60
    assert fetch(emulator, SPOT) is None


# -- faults and run-time switches through the control endpoint -------------------------------------
def test_throttling_at_a_rate_answers_429_with_retry_after(
        clocked: Tuple[Emulator, Clock], control: ControlServer) -> None:
    emulator, clock = clocked
    assert call(control.url, "POST", "/faults/throttle?rate=2&retry_after=3") == (
        200, {"throttle": 2, "retry_after": "3"})
    statuses = [raw(emulator, "GET", "/latest/meta-data/instance-id") for _ in range(4)]
    assert statuses[2:] == [(429, "3"), (429, "3")] and [s for s, _ in statuses[:2]] == [401, 401]  # no token
    clock.now += 1.0  # the window of one second has passed
    assert raw(emulator, "PUT", "/latest/api/token", {"X-aws-ec2-metadata-token-ttl-seconds": "60"})[0] == 200
    assert call(control.url, "DELETE", "/faults/throttle") == (200, {"throttle": None})
    assert fetch(emulator, "meta-data/instance-id") == b"i-0a1b2c3d4e5f60789"


def test_throttling_retry_after_is_1_unless_given_or_none_everywhere(
        clocked: Tuple[Emulator, Clock], control: ControlServer) -> None:
    """The control endpoint and a scenario agree: Retry-After 1 by default; an empty
    `retry_after=` or a null `retry_after` sends none."""
    emulator, clock = clocked
    ttl = {"X-aws-ec2-metadata-token-ttl-seconds": "60"}
    for target, retry_after in (("/faults/throttle?rate=1", "1"), ("/faults/throttle?rate=1&retry_after=", None),
                                ("/faults/throttle?rate=1&retry_after=2.5", "2.5")):
        clock.now += 1.0
        assert call(control.url, "POST", target) == (200, {"throttle": 1, "retry_after": retry_after})
        assert [raw(emulator, "PUT", "/latest/api/token", ttl) for _ in range(2)] == [
            (200, ""), (429, retry_after or "")]
    for options, retry_after in (("{rate: 1}", "1"), ("{rate: 1, retry_after: null}", ""),
                                 ("{rate: 1, retry_after: 7}", "7")):
        clock.now += 1.0
        scenario.schedule(emulator, scenario.steps_from(load_yaml("scenario", f"- throttle: {options}\n")))
        assert [raw(emulator, "PUT", "/latest/api/token", ttl) for _ in range(2)] == [(200, ""), (429, retry_after)]
    assert call(control.url, "DELETE", "/faults/throttle") == (200, {"throttle": None})
    assert call(control.url, "POST", "/faults/status?code=429&retry_after=") == (200, {"pending": 1})
    assert raw(emulator, "GET", "/latest/meta-data/instance-id") == (429, "")


@pytest.mark.parametrize(("target", "error"), [
    ("/faults/throttle?rate=5&retry_after=soon", "retry_after='soon': expected a number of seconds"),
    ("/faults/throttle?rate=5&retry_after=-1", "retry_after='-1': out of range"),
    ("/faults/throttle?rate=0", "rate: 0 must be a whole number, 1 to 1000000"),
    ("/faults/status?code=429&retry_after=later", "retry_after='later': expected a number of seconds"),
    ("/faults/status?code=99", "code: 99 must be a whole number, 100 to 599"),
    ("/faults/status?code=503&path=latest/", "path 'latest/' must start with /, as a request's does (/latest/...)"),
])
def test_throttle_and_fault_options_are_checked_as_a_scenario_checks_them(
        clocked: Tuple[Emulator, Clock], control: ControlServer, target: str, error: str) -> None:
    emulator, _ = clocked
    assert call(control.url, "POST", target) == (400, {"error": error})
    assert emulator.pending_faults() == 0 and raw(emulator, "GET", "/latest/meta-data/instance-id") == (401, "")


def test_the_client_rides_out_a_rate_limit(clocked: Tuple[Emulator, Clock]) -> None:
    """Retry-After is honoured: a throttled get succeeds once the window passes (the clock is
    moved on by the 429s themselves, one second each)."""
    emulator, clock = clocked
    emulator.throttle(1, "0")
    real_fail = emulator._throttled

    def throttled() -> Optional[str]:
        answer = real_fail()
        if answer is not None:
            clock.now += 1.0
        return answer

    emulator._throttled = throttled  # type: ignore[method-assign]
    assert fetch(emulator, "meta-data/instance-id") == b"i-0a1b2c3d4e5f60789"
    assert [r.status for r in emulator.requests].count(429) >= 1


def test_a_count_of_429s_through_the_control_endpoint(clocked: Tuple[Emulator, Clock],
                                                      control: ControlServer) -> None:
    emulator, _ = clocked
    assert call(control.url, "POST", "/faults/status?code=429&count=2&retry_after=1&method=GET")[0] == 200
    assert [raw(emulator, "GET", "/latest/meta-data/instance-id") for _ in range(3)] == [
        (429, "1"), (429, "1"), (401, "")]


def test_the_hop_limit_symptom_through_the_control_endpoint(clocked: Tuple[Emulator, Clock],
                                                            control: ControlServer) -> None:
    emulator, _ = clocked
    assert call(control.url, "POST", "/faults/drop-token-puts") == (200, {"drop_token_puts": True})
    with ImdsClient(ClientSettings(endpoint=emulator.url, deadline=1, timeout=0.3)) as client:
        with pytest.raises(ImdsError, match="hop limit"):
            client.fetch("meta-data/instance-id")
    assert emulator.count("PUT") >= 1 and all(r.status == 0 for r in emulator.requests if r.method == "PUT")
    assert call(control.url, "DELETE", "/faults") == (200, {"pending": 0, "throttle": None, "drop_token_puts": False})
    assert fetch(emulator, "meta-data/instance-id") == b"i-0a1b2c3d4e5f60789"


def test_tags_turned_off_and_on_at_run_time(clocked: Tuple[Emulator, Clock], control: ControlServer) -> None:
    emulator, _ = clocked
    assert fetch(emulator, "meta-data/tags/instance/Name") is not None
    assert call(control.url, "POST", "/tags?enabled=false") == (200, {"tags": False})
    assert fetch(emulator, "meta-data/tags/instance/Name") is None
    assert fetch(emulator, "meta-data/tags/instance/") is None
    assert call(control.url, "POST", "/tags?enabled=true") == (200, {"tags": True})
    assert fetch(emulator, "meta-data/tags/instance/Name") is not None
    assert call(control.url, "POST", "/tags?enabled=maybe")[0] == 400


def test_lifecycle_state_set_and_cleared(clocked: Tuple[Emulator, Clock], control: ControlServer) -> None:
    emulator, _ = clocked
    assert fetch(emulator, LIFECYCLE) is None  # in no Auto Scaling group
    for state in ("Warmed:Stopped", "Warmed:Running", "Warmed:Hibernated", "Warmed:Terminated", "InService",
                  "Standby", "Detached", "Terminated"):
        assert call(control.url, "POST", f"/autoscaling/target-lifecycle-state?state={state}") == (
            200, {"lifecycle-state": state})
        assert fetch(emulator, LIFECYCLE) == state.encode()
    assert call(control.url, "DELETE", "/autoscaling/target-lifecycle-state") == (200, {"lifecycle-state": None})
    assert fetch(emulator, LIFECYCLE) is None
    assert call(control.url, "POST", "/autoscaling/target-lifecycle-state")[0] == 400
    with pytest.raises(ValueError, match="not a lifecycle state"):
        emulator.set_lifecycle_state("Pending")


# -- scenario files ---------------------------------------------------------------------------
def test_a_scenario_file_runs_every_kind_of_change(tmp_path: Path, make_emulator: Callable[..., Emulator]) -> None:
    emulator = make_emulator(load_tree())
    clock = Clock()
    emulator.clock = clock
    path = tmp_path / "scenario.yaml"
    path.write_text("""\
steps:
  - lifecycle-state: Warmed:Running
  - after: 10
    set: {meta-data/tags/instance/Environment: production}
  - after: 20
    lifecycle-state: InService
  - after: 30
    tags: false
  - after: 40
    throttle: {rate: 1000, retry_after: 2}
  - after: 50
    throttle: null
  - after: 60
    delete: [meta-data/placement/availability-zone]
  - after: 70
    rotate-credentials: {expires_in: 900}
  - at: 2027-01-15T08:01:20Z
    clear-events: {}
""")
    scenario.schedule(emulator, scenario.load(str(path)), START)
    assert fetch(emulator, LIFECYCLE) == b"Warmed:Running"
    clock.now = START + 20
    assert fetch(emulator, "meta-data/tags/instance/Environment") == b"production"
    assert fetch(emulator, LIFECYCLE) == b"InService"
    clock.now = START + 30
    assert fetch(emulator, "meta-data/tags/instance/Environment") is None
    clock.now = START + 80
    assert fetch(emulator, "meta-data/placement/availability-zone") is None
    creds = document(emulator, "meta-data/iam/security-credentials/app-server")
    assert parse_time(creds["Expiration"]) == pytest.approx(START + 70 + 900, abs=2)
    assert emulator.scheduled() == []


@pytest.mark.parametrize(("text", "problem"), [
    ("{}", "a scenario is a list of steps"),
    ("- after: 1\n", "steps[0]: give exactly one change"),
    ("- after: 1\n  tags: false\n  outage: 5\n", "steps[0]: give exactly one change"),
    ("- after: 1\n  at: 2027-01-01T00:00:00Z\n  tags: false\n", "steps[0]: give `after` or `at`, not both"),
    ("- after: -1\n  tags: false\n", "steps[0].after: -1 must be a number of seconds"),
    ("- after: .nan\n  tags: false\n", "steps[0].after: nan must be a number of seconds"),
    ("- at: tomorrow\n  tags: false\n", "steps[0].at: 'tomorrow' must be a time in RFC 3339"),
    ("- tags: off-ish\n", "steps[0].tags: expected true or false"),
    ("- lifecycle-state: Terminating\n", "steps[0].lifecycle-state: 'Terminating' must be null"),
    ("- spot-interruption: {action: reboot}\n", "steps[0].spot-interruption.action: 'reboot' must be one of"),
    ("- spot-interruption: {when: 5}\n", "steps[0].spot-interruption: unknown option(s) when"),
    ("- throttle: {rate: 0}\n", "steps[0].throttle.rate: 0 must be a whole number, 1 to"),
    ("- fail: {code: 99}\n", "steps[0].fail.code: 99 must be a whole number, 100 to 599"),
    ("- set: {/etc/passwd: x}\n", "steps[0].set./etc/passwd: '/etc/passwd' is not a path IMDS serves"),
    ("- set: {meta-data/../x: y}\n", "steps[0].set.meta-data/../x: 'meta-data/../x' is not a path IMDS serves"),
    ("- delete: [meta-data/./x]\n", "steps[0].delete[0]: 'meta-data/./x' is not a path IMDS serves"),
    ("- set: {meta-data/iam/security-credentials/app: not json}\n",
     "steps[0].set.meta-data/iam/security-credentials/app: the emulator reads this path itself, so its value "
     "must be a JSON object"),
    ("- set: {meta-data/events/maintenance/scheduled: {a: 1}}\n",
     "steps[0].set.meta-data/events/maintenance/scheduled: the emulator reads this path itself, so its value "
     "must be a JSON list"),
    ("- after: 60\n  set: {user-data: {$base64: '!!'}}\n", "steps[0].set.user-data: invalid $base64 value"),
    ("- throttle: {rate: 5, retry_after: -1}\n", "steps[0].throttle.retry_after: -1 must be a number of seconds"),
    ("- fail: {code: 503, method: PATCH}\n", "steps[0].fail: method 'PATCH' must be GET, PUT, POST or DELETE"),
    ("- a: &a [*a]\n", "alias *a is inside the node it names"),
])
def test_a_wrong_scenario_is_refused_at_start_with_its_place(tmp_path: Path, text: str, problem: str) -> None:
    path = tmp_path / "scenario.yaml"
    path.write_text(text)
    with pytest.raises(scenario.ScenarioError) as caught:
        scenario.load(str(path))
    assert str(caught.value).startswith(f"{path}: ") and problem in str(caught.value), str(caught.value)


def test_a_scenario_file_is_read_as_every_outside_input_is(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    import os

    os.mkfifo(fifo)
    with pytest.raises(scenario.ScenarioError, match="not a regular file|FIFO"):
        scenario.load(str(fifo))


# -- docs/emulator-control.md ----------------------------------------------------------------------
PAGE = Path(__file__).resolve().parent.parent / "docs" / "emulator-control.md"


def test_every_scenario_on_the_page_is_one() -> None:
    import yaml

    blocks = re.findall(r"```yaml\n(.*?)```", PAGE.read_text(), flags=re.S)
    assert len(blocks) == 2
    for block in blocks:
        assert scenario.steps_from(yaml.safe_load(block))


def test_every_call_the_page_lists_exists_and_every_call_is_documented(
        clocked: Tuple[Emulator, Clock], control: ControlServer) -> None:
    page = PAGE.read_text()
    everywhere = "".join(p.read_text() for p in [PAGE.parent.parent / "README.md", *PAGE.parent.glob("*.md")])
    documented = set(re.findall(r"^\| `(GET|PUT|POST|DELETE) (/[^`?\s]*)[^`]*` \|", everywhere, flags=re.M))
    options = {"/autoscaling/target-lifecycle-state": "?state=InService", "/tags": "?enabled=false",
               "/faults/throttle": "?rate=5", "/faults/status": "?code=429"}
    bodies = {"/scenario": b"- tags: true\n", "/tree": b'{"meta-data/instance-id": "i-0"}'}
    for method, target in re.findall(r"^\| `(GET|PUT|POST|DELETE) (/[^`?\s]*)[^`]*` \|", page, flags=re.M):
        body = bodies.get(target)
        status, answer = call(control.url, method, target + (options.get(target, "") if method == "POST" else ""),
                              body)
        assert status == 200, (method, target, answer)
    _, refusal = call(control.url, "GET", "/no-such-call")
    every = set(refusal["calls"])
    assert every - {p.replace("/tree/meta-data/tags/instance/Name", "/tree/PATH") for _, p in documented} == set()
