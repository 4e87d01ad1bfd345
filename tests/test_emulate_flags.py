"""`cc-imds emulate`'s flags for what AEMM offers from its command line: notices and the lifecycle
state at start, after a delay or at a time, a scenario file, throttling, unanswered token PUTs.
A real process; nothing waits for a delay to pass: a notice due in an hour is seen in the
schedule and as a 404, and one due at a past time is served at once."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Callable, List, Tuple

import pytest

from tests.conftest import EmulateProcess
from tests.test_emulator_scenarios import call, raw

LIFECYCLE = "meta-data/autoscaling/target-lifecycle-state"
SPOT = "meta-data/spot/instance-action"


@pytest.fixture
def emulate(emulate_processes: Callable[..., EmulateProcess]) -> Callable[..., Tuple[str, str]]:
    """Start `cc-imds emulate ARGS... --port 0 --control-port 0`; its IMDS and control URLs.
    After the test each is stopped with SIGTERM and must exit 0 (tests.conftest.emulate_processes)."""

    def start(*args: str) -> Tuple[str, str]:
        server = emulate_processes(*args)
        return server.url, server.control

    return start


def get(cli: Callable[..., subprocess.CompletedProcess], url: str, path: str) -> Tuple[int, bytes]:
    result = cli("get", path, "--endpoint", url)
    return result.returncode, result.stdout


def test_notices_and_a_lifecycle_state_at_start(emulate: Callable[..., Tuple[str, str]],
                                               cli: Callable[..., subprocess.CompletedProcess]) -> None:
    url, _ = emulate("--spot-interruption", "stop", "--rebalance-recommendation", "--scheduled-maintenance",
                     "instance-stop", "--lifecycle-state", "Warmed:Running")
    assert json.loads(get(cli, url, SPOT)[1])["action"] == "stop"
    assert set(json.loads(get(cli, url, "meta-data/events/recommendations/rebalance")[1])) == {"noticeTime"}
    [event] = json.loads(get(cli, url, "meta-data/events/maintenance/scheduled")[1])
    assert event["Code"] == "instance-stop"
    assert get(cli, url, LIFECYCLE) == (0, b"Warmed:Running")


def test_a_notice_delay_holds_them_back(emulate: Callable[..., Tuple[str, str]],
                                       cli: Callable[..., subprocess.CompletedProcess]) -> None:
    url, control = emulate("--spot-interruption", "terminate", "--lifecycle-state", "Terminated",
                           "--notice-delay", "3600")
    assert get(cli, url, SPOT)[0] == 1 and get(cli, url, LIFECYCLE)[0] == 1  # 404s until then
    status, schedule = call(control, "GET", "/schedule")
    assert status == 200 and [s["change"] for s in schedule["scheduled"]] == [
        'spot-interruption {"action": "terminate"}', 'lifecycle-state "Terminated"']


def test_a_notice_time_that_has_passed_serves_them_at_once(emulate: Callable[..., Tuple[str, str]],
                                                          cli: Callable[..., subprocess.CompletedProcess]) -> None:
    url, control = emulate("--lifecycle-state", "Terminated", "--notice-time", "2020-01-07T01:03:47Z")
    assert get(cli, url, LIFECYCLE) == (0, b"Terminated")
    assert call(control, "GET", "/schedule")[1] == {"scheduled": []}


def test_a_scenario_file_at_start(emulate: Callable[..., Tuple[str, str]],
                                  cli: Callable[..., subprocess.CompletedProcess], tmp_path: Path) -> None:
    scenario = tmp_path / "scenario.yaml"
    scenario.write_text("- lifecycle-state: InService\n- after: 3600\n  lifecycle-state: Terminated\n"
                        "- tags: false\n")
    url, control = emulate("--scenario", str(scenario))
    assert get(cli, url, LIFECYCLE) == (0, b"InService")
    assert get(cli, url, "meta-data/tags/instance/Name")[0] == 1
    assert [s["change"] for s in call(control, "GET", "/schedule")[1]["scheduled"]] == [
        'lifecycle-state "Terminated"']


def test_throttling_and_dropped_token_puts_from_the_start(emulate: Callable[..., Tuple[str, str]]) -> None:
    url, control = emulate("--throttle-count", "2", "--retry-after", "7")
    ttl = {"X-aws-ec2-metadata-token-ttl-seconds": "60"}

    class At:  # raw() takes an emulator; only its url is read
        def __init__(self, url: str) -> None:
            self.url = url

    assert [raw(At(url), "PUT", "/latest/api/token", ttl) for _ in range(3)] == [  # type: ignore[arg-type]
        (429, "7"), (429, "7"), (200, "")]
    url, control = emulate("--throttle-rate", "1000", "--drop-token-puts")
    assert call(control, "DELETE", "/faults") == (200, {"pending": 0, "throttle": None, "drop_token_puts": False})


@pytest.mark.parametrize(("args", "problem"), [
    (["--notice-delay", "5"], "--notice-delay and --notice-time time the notices given with them"),
    (["--lifecycle-state", "Terminated", "--notice-delay", "5", "--notice-time", "2026-01-01T00:00:00Z"],
     "not both"),
    (["--lifecycle-state", "Terminated", "--notice-time", "soon"], "--notice-time: 'soon' must be a time"),
    (["--lifecycle-state", "Terminating"], "--lifecycle-state"),
    (["--spot-interruption", "reboot"], "--spot-interruption"),
    (["--throttle-rate", "0"], "--throttle-rate"),
    (["--throttle-count", "-1"], "--throttle-count"),
    (["--retry-after", "nan", "--throttle-rate", "5"], "--retry-after"),
    (["--scenario", "/nonexistent/scenario.yaml"], "/nonexistent/scenario.yaml"),
])
def test_wrong_flags_are_refused_before_it_listens(cli: Callable[..., subprocess.CompletedProcess],
                                                   args: List[str], problem: str) -> None:
    result = cli("emulate", "--port", "0", *args)
    assert result.returncode == 2 and problem.encode() in result.stderr, result.stderr
    assert b"Traceback" not in result.stderr and b"listening" not in result.stdout
