"""Auto Scaling lifecycle commands: `events: [{event: lifecycle, states: [...], run: [...]}]`.

A transition is a target-lifecycle-state other than the one last acted on; its commands run
once. What was acted on is remembered per instance in the state directory (CC_IMDS_STATE_DIR,
/var/lib/cc-imds), which outlives the run directory: a reboot is simulated by a new run
directory and the same state directory. The watcher runs in-process on an injected clock."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

import pytest

from cc_imds.declaration.build import SourceDocument, build_declaration
from cc_imds.errors import DeclarationError, ImdsError
from cc_imds.imds.autoscaling import LIFECYCLE_PATH
from cc_imds.testing.emulator import Emulator
from cc_imds.watch import lifecycle
from cc_imds.watch.events import lifecycle_state, notice_env, state_chosen, transition_notice
from cc_imds.watch.status import assess, render_text, status_problem
from cc_imds.watch.watcher import Watcher, WatchOptions
from tests.conftest import needs_root
from tests.watch_harness import close_in_process, in_process, one_pass

INSTANCE_ID = "i-0a1b2c3d4e5f60789"  # the bundled tree's


# -- states, patterns, what a command gets ----------------------------------------------------
def test_a_lifecycle_state_is_text_shaped_like_one() -> None:
    assert lifecycle_state(b"InService") == "InService"
    assert lifecycle_state(b"Warmed:Hibernated\n") == "Warmed:Hibernated"
    assert lifecycle_state(b"Warmed:SomethingNew") == "Warmed:SomethingNew"  # a state AWS adds later
    for body in (b"", b"In Service", b"x" * 65, b"InService\nTerminated", b"$(reboot)", b"\xff"):
        with pytest.raises(ImdsError, match="not a lifecycle state"):
            lifecycle_state(body)


@pytest.mark.parametrize(("states", "state", "chosen"), [
    ((), "InService", True),
    ((), "Warmed:Stopped", True),
    (("InService",), "InService", True),
    (("InService",), "Terminated", False),
    (("Warmed:*",), "Warmed:Running", True),
    (("Warmed:*",), "Warmed:SomethingNew", True),
    (("Warmed:*",), "InService", False),
    (("Warmed:Stopped", "Terminated"), "Warmed:Running", False),
    (("Warmed:Stopped", "Terminated"), "Terminated", True),
])
def test_states_choose_the_transitions_a_command_runs_on(states: Any, state: str, chosen: bool) -> None:
    assert state_chosen(states, state) is chosen


def test_a_transition_gives_its_command_the_old_and_new_state() -> None:
    first = notice_env(transition_notice(None, "InService", INSTANCE_ID, "2026-12-07T06:00:00Z"))
    assert {k: v for k, v in first.items() if k not in ("CC_IMDS_NOTICE", "CC_IMDS_NOTICE_ID")} == {
        "CC_IMDS_EVENT": "lifecycle", "CC_IMDS_IMDS_PATH": LIFECYCLE_PATH, "CC_IMDS_NOTICE_STATE": "InService",
        "CC_IMDS_NOTICE_PREVIOUS": "", "CC_IMDS_NOTICE_INSTANCEID": INSTANCE_ID,
        "CC_IMDS_NOTICE_TIME": "2026-12-07T06:00:00Z"}
    assert json.loads(first["CC_IMDS_NOTICE"]) == {"state": "InService", "previous": None,
                                                   "instanceId": INSTANCE_ID, "time": "2026-12-07T06:00:00Z"}
    later = notice_env(transition_notice("Warmed:Running", "InService", INSTANCE_ID, "2026-12-08T06:00:00Z"))
    assert later["CC_IMDS_NOTICE_PREVIOUS"] == "Warmed:Running"
    assert later["CC_IMDS_NOTICE_ID"] != first["CC_IMDS_NOTICE_ID"]


# -- the declaration ------------------------------------------------------------------------------
def build(events: List[Dict[str, Any]]) -> Any:
    return build_declaration([SourceDocument("user-data", "imds", {"events": events})])


def test_lifecycle_commands_are_declared_in_events() -> None:
    declaration = build([{"event": "lifecycle", "states": ["Terminated", "Warmed:*"], "run": ["drain"]},
                         {"event": "lifecycle", "run": ["log-it"], "poll": 10}])
    first, second = declaration.events
    assert (first.event, first.states, first.poll) == ("lifecycle", ("Terminated", "Warmed:*"), 5.0)
    assert (second.states, second.poll) == ((), 10.0)


@pytest.mark.parametrize(("event", "problem"), [
    ({"event": "lifecycle", "states": ["Terminating"], "run": ["x"]},
     "user-data: imds.events[0].states[0]: 'Terminating' is not one of 'InService'"),
    ({"event": "lifecycle", "states": [], "run": ["x"]}, "user-data: imds.events[0].states: [] "),
    ({"event": "lifecycle", "states": ["InService", "InService"], "run": ["x"]},
     "user-data: imds.events[0].states: "),
    ({"event": "spot-interruption", "states": ["InService"], "run": ["x"]},
     "user-data: imds.events[0].states: only `event: lifecycle` has states (this is `event: spot-interruption`)"),
])
def test_wrong_states_are_refused_with_their_location(event: Dict[str, Any], problem: str) -> None:
    with pytest.raises(DeclarationError) as caught:
        build([event])
    assert str(caught.value).startswith(problem), str(caught.value)


def test_lifecycle_commands_alone_need_a_watcher() -> None:
    """The boot run leaves the marker that starts `cc-imds watch` for them."""
    from cc_imds.watch.schedule import plan

    watch = plan(build([{"event": "lifecycle", "states": ["InService"], "run": ["register"]}]))
    assert not watch.idle
    [event] = watch.events
    assert (event.event, event.path, event.poll) == ("lifecycle", LIFECYCLE_PATH, 5.0)


# -- the watcher, in-process, on an injected clock -------------------------------------------------
class Instance:
    """One instance's watcher across restarts and reboots: a run directory per boot, one
    state directory for the instance's life."""

    def __init__(self, emulator: Emulator, tmp: Path, events: Optional[List[Dict[str, Any]]] = None) -> None:
        self.emulator = emulator
        self.tmp = tmp
        self.log = tmp / "commands.log"
        self.state_dir = tmp / "state"
        self.boot = 0
        self.now = 1_800_000_000.0
        record = f'echo "$CC_IMDS_NOTICE_PREVIOUS>$CC_IMDS_NOTICE_STATE $0 $CC_IMDS_NOTICE_INSTANCEID" >> {self.log}'
        self.events = events if events is not None else [
            {"event": "lifecycle", "states": ["InService"], "run": ["/bin/sh", "-c", record, "register"]},
            {"event": "lifecycle", "states": ["Terminated"], "run": ["/bin/sh", "-c", record, "drain"]},
            {"event": "lifecycle", "states": ["Warmed:*"], "run": ["/bin/sh", "-c", record, "warm"]},
        ]
        self.watcher: Optional[Watcher] = None
        self.reboot()

    def reboot(self) -> None:
        """A new boot: /run is empty again, /var/lib is not."""
        self.boot += 1
        self.restart()

    def restart(self) -> None:
        """The watcher restarted in the same boot (same run directory)."""
        self.stop()
        options = WatchOptions(endpoint=self.emulator.url, lock_path=str(self.tmp / "lock"),
                               run_dir=self.tmp / f"run-{self.boot}", state_dir=self.state_dir, owns_marker=False,
                               environ={}, clock=lambda: self.now, jitter=lambda: 0.0)
        self.watcher = in_process(options, build(self.events))

    def poll(self) -> None:
        assert self.watcher is not None
        one_pass(self.watcher)
        self.now += 5

    def ran(self) -> List[str]:
        return self.log.read_text().splitlines() if self.log.exists() else []

    def status(self) -> Dict[str, Any]:
        assert self.watcher is not None
        document = self.watcher.status_document()
        assert status_problem(json.loads(json.dumps(document))) is None
        return dict(document["events"]["lifecycle"])

    def stop(self) -> None:
        if self.watcher is not None:
            close_in_process(self.watcher)
            self.watcher = None


@pytest.fixture
def instance(emulator: Emulator, tmp_path: Path) -> Iterator[Instance]:
    made = Instance(emulator, tmp_path)
    yield made
    made.stop()


def test_no_auto_scaling_group_means_no_transition(instance: Instance) -> None:
    instance.poll()
    instance.poll()
    assert instance.ran() == []
    status = instance.status()
    assert (status["state"], status["acted_on"], status["notices"]) == (None, None, [])
    assert not (instance.state_dir / lifecycle.MEMORY).exists()


def test_the_first_state_seen_is_a_transition_and_runs_once(instance: Instance, emulator: Emulator) -> None:
    emulator.set_lifecycle_state("InService")
    for _ in range(3):
        instance.poll()
    assert instance.ran() == [f">InService register {INSTANCE_ID}"]
    status = instance.status()
    assert (status["state"], status["acted_on"]) == ("InService", "InService")
    [transition] = status["notices"]
    assert transition["fields"]["previous"] == "" and transition["fields"]["state"] == "InService"
    assert [c["exit"] for c in transition["commands"]] == [0]


def test_each_transition_runs_the_commands_of_its_new_state(instance: Instance, emulator: Emulator) -> None:
    for state in ("Warmed:Stopped", "Warmed:Running", "InService", "Standby", "InService", "Terminated"):
        emulator.set_lifecycle_state(state)
        instance.poll()
        instance.poll()
    assert instance.ran() == [
        f">Warmed:Stopped warm {INSTANCE_ID}",
        f"Warmed:Stopped>Warmed:Running warm {INSTANCE_ID}",
        f"Warmed:Running>InService register {INSTANCE_ID}",
        # Standby: no command chose it, but it is a transition: InService runs again after it
        f"Standby>InService register {INSTANCE_ID}",
        f"InService>Terminated drain {INSTANCE_ID}",
    ]
    assert [n["fields"]["state"] for n in instance.status()["notices"]] == [
        "Warmed:Running", "InService", "Standby", "InService", "Terminated"]  # the last five


def test_each_transition_keeps_its_own_commands_results(instance: Instance, emulator: Emulator) -> None:
    """The same transition twice (Standby -> InService) is two transitions, each with its result."""
    for state in ("InService", "Standby", "InService", "Standby", "InService"):
        emulator.set_lifecycle_state(state)
        instance.poll()
    notices = instance.status()["notices"]
    assert [(n["fields"]["previous"], n["fields"]["state"]) for n in notices] == [
        ("", "InService"), ("InService", "Standby"), ("Standby", "InService"), ("InService", "Standby"),
        ("Standby", "InService")]
    labels = [c["label"] for n in notices for c in n["commands"]]
    assert len(labels) == len(set(labels)) == 3 and all(
        c["exit"] == 0 for n in notices for c in n["commands"])


def test_a_transition_counts_as_a_lifecycle_notice_in_the_metrics(instance: Instance, emulator: Emulator) -> None:
    emulator.set_lifecycle_state("InService")
    instance.poll()
    instance.poll()
    assert instance.watcher is not None
    counters = instance.watcher.counters
    assert (counters.notices_seen.get("lifecycle"), counters.notices_handled.get("lifecycle")) == (1, 1)


def test_a_404_between_two_polls_is_no_transition(instance: Instance, emulator: Emulator) -> None:
    emulator.set_lifecycle_state("InService")
    instance.poll()
    emulator.set_lifecycle_state(None)
    instance.poll()
    assert instance.status()["state"] is None
    emulator.set_lifecycle_state("InService")
    instance.poll()
    assert instance.ran() == [f">InService register {INSTANCE_ID}"]


def test_a_restart_in_the_same_boot_runs_nothing_again(instance: Instance, emulator: Emulator) -> None:
    emulator.set_lifecycle_state("InService")
    instance.poll()
    instance.restart()
    instance.poll()
    instance.poll()
    assert instance.ran() == [f">InService register {INSTANCE_ID}"]
    assert instance.status()["acted_on"] == "InService"  # remembered, though this watcher saw no transition


def test_a_reboot_into_the_same_state_runs_nothing_again(instance: Instance, emulator: Emulator) -> None:
    """An InService instance rebooted: Auto Scaling made no transition, and has no lifecycle
    action waiting for a command."""
    emulator.set_lifecycle_state("InService")
    instance.poll()
    instance.reboot()
    instance.poll()
    assert instance.ran() == [f">InService register {INSTANCE_ID}"]


def test_a_warm_pool_instance_started_again_into_service_registers(instance: Instance, emulator: Emulator) -> None:
    """Boot 1 in the warm pool (Warmed:Running), stopped; Auto Scaling moves it to InService
    while it is stopped; boot 2 sees InService: that transition runs, with the state of boot 1
    as the previous one."""
    emulator.set_lifecycle_state("Warmed:Running")
    instance.poll()
    instance.stop()
    emulator.set_lifecycle_state("InService")
    instance.reboot()
    instance.poll()
    instance.poll()
    assert instance.ran() == [f">Warmed:Running warm {INSTANCE_ID}",
                              f"Warmed:Running>InService register {INSTANCE_ID}"]


def test_a_record_of_another_instance_is_not_this_ones(instance: Instance, emulator: Emulator) -> None:
    """An image made from an instance that ran the watcher carries its record: an instance
    launched from it registers at its own first boot."""
    instance.state_dir.mkdir(mode=0o755)
    (instance.state_dir / lifecycle.MEMORY).write_text(json.dumps(
        {"instance_id": "i-0aaaaaaaaaaaaaaaa", "state": "InService", "seen": "2026-12-01T00:00:00Z"}))
    emulator.set_lifecycle_state("InService")
    instance.poll()
    assert instance.ran() == [f">InService register {INSTANCE_ID}"]
    assert json.loads((instance.state_dir / lifecycle.MEMORY).read_text())["instance_id"] == INSTANCE_ID


@pytest.mark.parametrize("damage", ["not json", "[]", '{"instance_id": "i-0a1b2c3d4e5f60789", "state": 1}',
                                    "symlink", "directory"])
def test_a_record_that_cannot_be_used_counts_as_none(instance: Instance, emulator: Emulator, damage: str) -> None:
    """A command may run once more; it is never skipped because of a damaged or planted file."""
    instance.state_dir.mkdir(mode=0o755)
    path = instance.state_dir / lifecycle.MEMORY
    if damage == "symlink":
        target = instance.tmp / "elsewhere.json"
        target.write_text(json.dumps({"instance_id": INSTANCE_ID, "state": "InService", "seen": "x"}))
        path.symlink_to(target)
    elif damage == "directory":
        path.mkdir()
    else:
        path.write_text(damage)
    emulator.set_lifecycle_state("InService")
    instance.poll()
    assert instance.ran() == [f">InService register {INSTANCE_ID}"]


def test_root_does_not_trust_a_record_others_can_write(instance: Instance, emulator: Emulator) -> None:
    needs_root("trust checks apply to root's own files")
    instance.state_dir.mkdir(mode=0o755)
    path = instance.state_dir / lifecycle.MEMORY
    path.write_text(json.dumps({"instance_id": INSTANCE_ID, "state": "InService", "seen": "2026-12-01T00:00:00Z"}))
    path.chmod(0o666)
    emulator.set_lifecycle_state("InService")
    instance.poll()
    assert instance.ran() == [f">InService register {INSTANCE_ID}"]
    assert (path.stat().st_mode & 0o777) == 0o644  # rewritten, by root, for root


def test_a_state_that_is_not_one_is_a_failed_poll(instance: Instance, emulator: Emulator) -> None:
    emulator.set_value(LIFECYCLE_PATH, "In Service; rm -rf /")
    instance.poll()
    status = instance.status()
    assert status["failures"] == 1 and "not a lifecycle state" in status["last_error"]
    assert instance.ran() == []
    emulator.set_lifecycle_state("InService")
    instance.poll()
    assert instance.status()["failures"] == 0 and instance.ran() == [f">InService register {INSTANCE_ID}"]


def test_without_the_instance_id_no_transition_runs(instance: Instance, emulator: Emulator) -> None:
    """Which instance a remembered state belongs to must be known first."""
    emulator.set_lifecycle_state("InService")
    emulator.delete_value("meta-data/instance-id")
    instance.poll()
    assert instance.ran() == [] and instance.status()["failures"] == 1
    emulator.set_value("meta-data/instance-id", INSTANCE_ID)
    instance.poll()
    instance.poll()
    assert instance.ran() == [f">InService register {INSTANCE_ID}"]
    assert instance.emulator.count("GET", path="/latest/meta-data/instance-id") == 2  # then never again


def test_status_shows_the_state_and_the_commands_run(instance: Instance, emulator: Emulator) -> None:
    emulator.set_lifecycle_state("Warmed:Running")
    instance.poll()
    emulator.set_lifecycle_state("InService")
    instance.poll()
    assert instance.watcher is not None
    document = json.loads(json.dumps(instance.watcher.status_document()))
    health = assess(document, True, instance.now, alive=lambda pid: True)
    text = render_text(document, health, instance.now)
    assert "event lifecycle: meta-data/autoscaling/target-lifecycle-state, polled every 5s" in text
    assert "  state InService; last acted on InService, seen " in text
    assert "  transition (none) -> Warmed:Running seen " in text
    assert "  transition Warmed:Running -> InService seen " in text
    assert re.search(r"^    lifecycle Warmed:Running -> InService, transition [0-9a-f]{16} "
                     r"\(user-data: imds\.events\[0\]\): exit 0 at ", text, re.M), text
    assert health.code == 0


def test_a_failing_lifecycle_command_is_shown_and_not_run_again(emulator: Emulator, tmp_path: Path) -> None:
    instance = Instance(emulator, tmp_path, [{"event": "lifecycle", "run": ["/bin/sh", "-c", "exit 3"]}])
    try:
        emulator.set_lifecycle_state("Terminated")
        instance.poll()
        instance.poll()
        assert instance.watcher is not None
        document = json.loads(json.dumps(instance.watcher.status_document()))
        health = assess(document, True, instance.now, alive=lambda pid: True)
        assert health.code == 4 and "exited 3" in health.problems[0][1]
        assert len(instance.status()["notices"]) == 1
    finally:
        instance.stop()
