"""Commands of `on_change` and `events`: real processes, no shell, a timeout, output in the log."""

from __future__ import annotations

import logging
import sys
import threading
import time
from pathlib import Path
from typing import List

import pytest

from cc_imds.declaration.build import Command
from cc_imds.watch.commands import (
    MAX_LOGGED_LINES,
    MAX_QUEUED,
    MAX_RUNNING,
    MERGED,
    QUEUED,
    REFUSED,
    STARTED,
    Result,
    Runner,
)
from tests.conftest import PROCESS_SLACK, wait_for

PY = sys.executable


class Results:
    def __init__(self) -> None:
        self.items: List[Result] = []
        self.arrived = threading.Condition()

    def __call__(self, result: Result) -> None:
        with self.arrived:
            self.items.append(result)
            self.arrived.notify_all()

    def wait(self, count: int, timeout: float = 60.0) -> List[Result]:
        with self.arrived:
            assert self.arrived.wait_for(lambda: len(self.items) >= count, timeout), self.items
            return list(self.items)


def ended(pid: int, within: float = 10.0) -> bool:
    """The process is gone, or a zombie waiting for init to reap it."""
    give_up = time.monotonic() + within
    while time.monotonic() < give_up:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            return True
        if state == "Z":
            return True
        time.sleep(0.05)
    return False


@pytest.fixture
def results() -> Results:
    return Results()


@pytest.fixture
def runner(results: Results) -> Runner:
    made = Runner(results)
    yield made
    made.stop()


def test_argv_is_passed_as_is_without_a_shell(runner: Runner, results: Results,
                                              caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    runner.start("k", "on_change /etc/x", Command(("printf", "%s\\n", "a; echo pwned $HOME `id`"), 30))
    (result,) = results.wait(1)
    assert result.ok and result.exit_code == 0 and result.label == "on_change /etc/x"
    assert "on_change /etc/x: a; echo pwned $HOME `id`" in caplog.messages
    assert "pwned /" not in caplog.text


def test_a_failure_is_reported_and_logged(runner: Runner, results: Results, caplog: pytest.LogCaptureFixture) -> None:
    runner.start("k", "on_change /etc/x", Command((PY, "-c", "import sys; print('boom'); sys.exit(3)"), 30))
    (result,) = results.wait(1)
    assert (result.exit_code, result.error) == (3, "exited 3")
    assert any(r.levelno == logging.ERROR and "on_change /etc/x: failed: exited 3" in r.getMessage()
               for r in caplog.records)


def test_a_missing_program_is_a_clear_error(runner: Runner, results: Results) -> None:
    runner.start("k", "spot-interruption", Command(("/nonexistent/drain",), 30))
    (result,) = results.wait(1)
    assert result.exit_code is None
    assert result.error == "cannot run /nonexistent/drain: No such file or directory"


def test_a_timeout_kills_the_whole_process_group(runner: Runner, results: Results, tmp_path: Path) -> None:
    pid_file = tmp_path / "child.pid"
    script = f"sleep 300 & echo $! > {pid_file}; wait"
    runner.start("k", "on_change /etc/x", Command(("sh", "-c", script), 1))
    (result,) = results.wait(1)
    assert result.exit_code is None
    assert result.error == "timed out after 1s; its process group was killed"
    assert ended(int(pid_file.read_text()))


# The leader exits on SIGTERM; a child that ignores it (ignored signals stay ignored across
# exec) is still in the group, and holds the output pipe.
STUBBORN_CHILD = "(trap '' TERM; exec sleep 300) & echo $! > {pid_file}; wait"


def test_a_timeout_kills_a_child_that_ignores_sigterm(runner: Runner, results: Results, tmp_path: Path) -> None:
    pid_file = tmp_path / "child.pid"
    # The timeout must outlast starting the shell and its child on a loaded machine, or the
    # group would be killed before the stubborn child exists.
    timeout = PROCESS_SLACK
    runner.start("k", "on_change /etc/x", Command(("sh", "-c", STUBBORN_CHILD.format(pid_file=pid_file)), timeout))
    (result,) = results.wait(1, timeout=timeout + 60)
    assert result.error == f"timed out after {timeout:g}s; its process group was killed"
    assert ended(int(pid_file.read_text()))


def test_stop_kills_a_child_that_ignores_sigterm(results: Results, tmp_path: Path) -> None:
    pid_file = tmp_path / "child.pid"
    runner = Runner(results)
    runner.start("k", "label", Command(("sh", "-c", STUBBORN_CHILD.format(pid_file=pid_file)), 600))
    wait_for(lambda: pid_file.exists() and pid_file.read_text().strip(), what="the stubborn child")
    runner.stop(grace=1)
    results.wait(1)
    assert ended(int(pid_file.read_text()))


def test_output_is_logged_line_by_line_and_bounded(runner: Runner, results: Results,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    code = f"print('\\n'.join(f'line {{i}}' for i in range({MAX_LOGGED_LINES + 50})))"
    runner.start("k", "label", Command((PY, "-c", code), 30))
    results.wait(1)
    lines = [m for m in caplog.messages if m.startswith("label: line ")]
    assert lines == [f"label: line {i}" for i in range(MAX_LOGGED_LINES)]
    assert "label: (50 more line(s) of output not logged)" in caplog.messages


def test_the_environment_and_stdin_reach_the_command(runner: Runner, results: Results, tmp_path: Path) -> None:
    out = tmp_path / "seen"
    code = f"import os, sys; open({str(out)!r}, 'w').write(os.environ['CC_IMDS_EVENT'] + '|' + sys.stdin.read())"
    runner.start("k", "label", Command((PY, "-c", code), 30), env={"CC_IMDS_EVENT": "spot-interruption"},
                 stdin=b'{"action": "stop"}')
    results.wait(1)
    assert out.read_text() == 'spot-interruption|{"action": "stop"}'


def test_a_large_notice_reaches_stdin_whole(runner: Runner, results: Results, tmp_path: Path) -> None:
    data = b"".join(b"%07d\n" % i for i in range(200_000))  # 1.6 MB, far beyond a pipe's buffer
    out = tmp_path / "stdin"
    code = f"import sys, time; time.sleep(0.5); open({str(out)!r}, 'wb').write(sys.stdin.buffer.read())"
    runner.start("k", "label", Command((PY, "-c", code), 60), stdin=data)
    (result,) = results.wait(1)
    assert result.ok and out.read_bytes() == data


def test_a_command_that_ignores_stdin_is_fine(runner: Runner, results: Results) -> None:
    runner.start("k", "label", Command(("true",), 30), stdin=b"x" * 300_000)
    (result,) = results.wait(1)
    assert result.ok


def test_changes_during_a_run_coalesce_into_one_more_run(runner: Runner, results: Results, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    count = tmp_path / "count"
    code = (f"import os, time\nwhile not os.path.exists({str(gate)!r}): time.sleep(0.02)\n"
            f"open({str(count)!r}, 'a').write('x')")
    command = Command((PY, "-c", code), 60)
    runner.start("/etc/x", "on_change /etc/x", command)
    assert runner.busy() == 1  # start() marks it running before it returns
    for _ in range(3):
        runner.start("/etc/x", "on_change /etc/x", command)  # while the first one still waits
    gate.touch()
    results.wait(2)
    # Idle: a third run, had one been queued, would have kept the key busy until it ended.
    wait_for(lambda: runner.busy() == 0, what="the runner to be idle")
    assert len(results.items) == 2 and count.read_text() == "xx"


def test_different_keys_run_side_by_side(runner: Runner, results: Results, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    code = f"import os, time\nwhile not os.path.exists({str(gate)!r}): time.sleep(0.02)"
    for key in ("a", "b"):
        runner.start(key, key, Command((PY, "-c", code), 60))
    assert runner.busy() == 2
    gate.touch()
    assert {r.key for r in results.wait(2)} == {"a", "b"}


def test_stop_ends_running_commands_and_starts_no_more(results: Results, tmp_path: Path) -> None:
    runner = Runner(results)
    runner.start("k", "label", Command(("sleep", "300"), 600))
    assert runner.busy() == 1
    runner.stop(grace=2)  # bounded by the test run's own timeout; `sleep` takes SIGTERM at once
    (result,) = results.wait(1)
    assert result.error == "killed by signal 15"
    runner.start("k2", "label", Command(("true",), 5))
    assert runner.busy() == 0  # start() would have marked it running before returning
    assert len(results.items) == 1


def test_at_most_max_running_at_once_and_max_queued_waiting(results: Results, tmp_path: Path) -> None:
    """Slots are taken when `start` returns, so the limits hold without waiting for a process."""
    runner = Runner(results)
    gate = tmp_path / "gate"
    code = f"import os, time\nwhile not os.path.exists({str(gate)!r}): time.sleep(0.02)\nprint(os.getpid())"
    command = Command((PY, "-c", code), 60)
    try:
        answers = [runner.start(f"k{i}", f"run {i}", command) for i in range(MAX_RUNNING + MAX_QUEUED + 3)]
        assert answers == [STARTED] * MAX_RUNNING + [QUEUED] * MAX_QUEUED + [REFUSED] * 3
        assert runner.room() == 0
        assert runner.start(f"k{MAX_RUNNING}", "the first waiting, again", command) == MERGED
        assert runner.counts() == {"running": MAX_RUNNING, "queued": MAX_QUEUED, "merged": 1, "refused": 3,
                                   "max_running": MAX_RUNNING, "max_queued": MAX_QUEUED}
        gate.touch()
        done = results.wait(MAX_RUNNING + MAX_QUEUED)
        assert sorted(r.key for r in done) == sorted(f"k{i}" for i in range(MAX_RUNNING + MAX_QUEUED))
        assert all(r.ok for r in done)
        assert runner.room() == MAX_RUNNING + MAX_QUEUED
    finally:
        runner.stop(grace=0.5)


def test_what_a_command_leaves_in_its_group_is_ended_when_it_exits(runner: Runner, results: Results,
                                                                   tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    runner.start("k", "label", Command(("sh", "-c", f"sleep 300 & echo $! > {pid_file}"), 60))
    (result,) = results.wait(1)
    assert result.ok
    assert ended(int(pid_file.read_text()))
