"""`cc-imds status`: the watcher's status file judged at a given time, and the exit codes a
monitoring check relies on."""

from __future__ import annotations

import copy
import json
import os
import re
import shlex
import subprocess
from pathlib import Path
from typing import Any, Callable, Dict, List, Tuple

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cc_imds.watch import rundir
from cc_imds.watch.status import (
    EXPIRED,
    IMDS_FAILING,
    NOT_RUNNING,
    OK,
    OUTPUT_FAILING,
    RELOAD_REFUSED,
    as_json,
    assess,
    iso,
    render_text,
    status_problem,
)
from tests.conftest import CLI, REPO, cli_env, examples

NOW = 1_800_000_000.0
CREDS = "meta-data/iam/security-credentials/app-server"


def alive(pid: int) -> bool:
    return pid == 4242


HEALTHY: Dict[str, Any] = {
    "format": 1,
    "watcher": {"pid": 4242, "started": iso(NOW - 3600), "updated": iso(NOW - 60), "stopped": None,
                "sources": ["/etc/cc-imds/conf.d/50-app.yaml", "cloud-config"], "reload_problems": []},
    "values": {
        "key": {"path": CREDS, "refresh": "before Expiration", "last_refresh": iso(NOW - 60),
                "next_due": iso(NOW + 5 * 3600), "failures": 0, "last_error": None, "expires": iso(NOW + 6 * 3600)},
        "tags": {"path": "meta-data/tags/instance/", "refresh": "every 300s", "last_refresh": iso(NOW - 60),
                 "next_due": iso(NOW + 240), "failures": 0, "last_error": None, "expires": None},
    },
    "outputs": {
        "/etc/agent/credentials": {"uses": ["key"], "last_change": iso(NOW - 60), "last_action": "updated",
                                   "last_error": None, "expires": iso(NOW + 6 * 3600),
                                   "on_change": {"label": "on_change /etc/agent/credentials",
                                                 "started": iso(NOW - 59), "seconds": 0.2, "exit": 0,
                                                 "error": None}},
    },
    "events": {
        "spot-interruption": {"path": "meta-data/spot/instance-action", "poll": 5, "commands": 1, "failures": 0,
                              "last_error": None, "notices": []},
    },
}


def changed(edit: Callable[[Dict[str, Any]], None]) -> Dict[str, Any]:
    doc = copy.deepcopy(HEALTHY)
    edit(doc)
    return doc


def test_a_healthy_watcher_is_0() -> None:
    health = assess(HEALTHY, True, NOW, alive)
    assert (health.code, health.problems, health.state) == (OK, (), "running")


def test_no_status_and_no_need_is_0_and_says_why() -> None:
    health = assess(None, False, NOW, alive)
    assert (health.code, health.state) == (OK, "not needed")
    assert render_text(None, health, NOW).endswith(
        "healthy: no declaration asks for a refresh or an event, so no watcher runs\n")


def test_needed_but_never_started_is_5() -> None:
    health = assess(None, True, NOW, alive)
    assert health.code == NOT_RUNNING and health.state == "not running"


def test_a_dead_watcher_is_5() -> None:
    health = assess(changed(lambda d: d["watcher"].update(pid=999)), True, NOW, alive)
    assert health.code == NOT_RUNNING
    assert health.problems[0][1] == "the watcher is needed but not running: it stopped (pid 999 is gone)"


def test_a_stopped_watcher_that_is_not_needed_any_more_is_0() -> None:
    doc = changed(lambda d: d["watcher"].update(stopped=iso(NOW - 10)))
    assert assess(doc, False, NOW, alive).code == OK
    assert assess(doc, True, NOW, alive).code == NOT_RUNNING


def test_a_stuck_watcher_is_5() -> None:
    doc = changed(lambda d: d["values"]["tags"].update(next_due=iso(NOW - 600)))
    health = assess(doc, True, NOW, alive)
    assert health.code == NOT_RUNNING
    assert health.problems[0][1].startswith("the watcher seems stuck: value tags was due at ")


def test_imds_failing_is_3() -> None:
    def fail(doc: Dict[str, Any]) -> None:
        doc["values"]["tags"].update(failures=4, last_error="/latest/meta-data/tags/instance/: no usable answer")
    health = assess(changed(fail), True, NOW, alive)
    assert health.code == IMDS_FAILING
    assert health.problems[0][1] == (
        f"value tags (meta-data/tags/instance/): 4 failed poll(s), last good {iso(NOW - 60)}: "
        "/latest/meta-data/tags/instance/: no usable answer")


def test_an_event_poll_failing_is_3() -> None:
    doc = changed(lambda d: d["events"]["spot-interruption"].update(failures=2, last_error="HTTP 503"))
    assert assess(doc, True, NOW, alive).code == IMDS_FAILING


def test_an_output_that_cannot_be_written_or_a_failed_on_change_is_4() -> None:
    doc = changed(lambda d: d["outputs"]["/etc/agent/credentials"].update(last_error="Operation not permitted"))
    assert assess(doc, True, NOW, alive).code == OUTPUT_FAILING
    doc = changed(lambda d: d["outputs"]["/etc/agent/credentials"]["on_change"].update(exit=1, error="exited 1"))
    health = assess(doc, True, NOW, alive)
    assert health.code == OUTPUT_FAILING
    assert health.problems[0][1] == f"/etc/agent/credentials: on_change failed at {iso(NOW - 59)}: exited 1"


def test_a_failed_event_command_is_4() -> None:
    notice = {"id": "ab", "seen": iso(NOW), "fields": {"action": "stop"},
              "commands": [{"label": "spot-interruption notice ab", "started": iso(NOW), "seconds": 1.0,
                            "exit": None, "error": "timed out after 120s; its process group was killed"}]}
    doc = changed(lambda d: d["events"]["spot-interruption"]["notices"].append(notice))
    assert assess(doc, True, NOW, alive).code == OUTPUT_FAILING


def test_a_refused_reload_is_1() -> None:
    doc = changed(lambda d: d["watcher"].update(reload_problems=["x.yaml: values.a.refresh: 0 is less than 1"]))
    health = assess(doc, True, NOW, alive)
    assert health.code == RELOAD_REFUSED
    assert health.problems[0][1] == ("reload refused, the previous declaration still runs: "
                                     "x.yaml: values.a.refresh: 0 is less than 1")


def test_expired_credentials_in_an_output_are_6_and_outrank_everything() -> None:
    def expire(doc: Dict[str, Any]) -> None:
        doc["outputs"]["/etc/agent/credentials"]["expires"] = iso(NOW - 1)
        doc["values"]["key"].update(failures=9, last_error="no usable answer")
        doc["watcher"]["pid"] = 999
    health = assess(changed(expire), True, NOW, alive)
    assert health.code == EXPIRED
    assert [code for code, _ in health.problems] == [EXPIRED, NOT_RUNNING, IMDS_FAILING]
    assert health.problems[0][1] == f"/etc/agent/credentials holds credentials that expired at {iso(NOW - 1)}"


def test_the_text_names_every_value_output_and_event() -> None:
    text = render_text(HEALTHY, assess(HEALTHY, True, NOW, alive), NOW)
    assert text.splitlines()[0] == f"watcher: running (pid 4242), started {iso(NOW - 3600)} (1h00m ago)"
    assert f"  last refresh {iso(NOW - 60)} (1m00s ago); next {iso(NOW + 5 * 3600)} (in 5h00m); " \
           f"credentials expire {iso(NOW + 6 * 3600)} (in 6h00m)" in text
    assert "output /etc/agent/credentials: uses key" in text
    assert f"  on_change: exit 0 at {iso(NOW - 59)} (59s ago), 0.2s" in text
    assert "event spot-interruption: meta-data/spot/instance-action, polled every 5s\n  no notice" in text
    assert text.endswith("healthy\n")


def test_the_text_shows_command_limits_waiting_notices_and_queued_runs() -> None:
    def edit(doc: Dict[str, Any]) -> None:
        doc["watcher"]["commands"] = {"running": 4, "queued": 16, "merged": 2, "refused": 3, "max_running": 4,
                                      "max_queued": 16}
        spot = doc["events"]["spot-interruption"]
        spot["waiting"] = 7
        spot["notices"] = [{"id": "1a2b", "seen": iso(NOW - 5), "fields": {"action": "terminate"},
                            "commands": [{"label": "spot-interruption notice 1a2b (cloud-config)",
                                          "started": iso(NOW - 5), "running": True, "queued": True}]}]

    doc = changed(edit)
    assert status_problem(doc) is None
    text = render_text(doc, assess(doc, True, NOW, alive), NOW)
    assert "  commands: 4 running, 16 waiting (at most 4 at once, 16 waiting); 2 merged into a later run, " \
           "3 refused\n" in text
    assert "  7 new notice(s) wait for a later poll" in text
    assert f"    spot-interruption notice 1a2b (cloud-config): waiting for a command slot since {iso(NOW - 5)}" in text


def test_the_text_shows_a_waiting_on_change_and_the_metrics_file() -> None:
    prom = "/var/lib/node_exporter/textfile_collector/cc_imds.prom"

    def edit(doc: Dict[str, Any]) -> None:
        doc["watcher"]["metrics"] = {"path": prom, "last_error": None}
        doc["outputs"]["/etc/agent/credentials"]["on_change"]["due"] = iso(NOW + 90)
        doc["outputs"]["/etc/app.env"] = {"uses": ["tags"], "last_change": iso(NOW - 5), "last_action": "created",
                                          "last_error": None, "expires": None,
                                          "on_change": {"label": "on_change /etc/app.env", "running": False,
                                                        "due": iso(NOW + 25)}}

    doc = changed(edit)
    assert status_problem(doc) is None
    health = assess(doc, True, NOW, alive)
    assert health.code == OK  # a run waiting out its quiet time is no problem
    text = render_text(doc, health, NOW)
    assert f"  metrics: {prom} (written on change)\n" in text
    assert f"  on_change: exit 0 at {iso(NOW - 59)} (59s ago), 0.2s; next run due {iso(NOW + 90)} (in 1m30s) " \
           "(wait, splay)\n" in text
    assert f"  on_change: next run due {iso(NOW + 25)} (in 25s) (wait, splay)\n" in text
    failing = changed(lambda d: d["watcher"].update(metrics={"path": prom, "last_error": "Permission denied"}))
    assert f"  metrics: {prom} (cannot write: Permission denied)\n" in render_text(
        failing, assess(failing, True, NOW, alive), NOW)
    assert status_problem(changed(lambda d: d["watcher"].update(metrics={"path": 3}))) == \
        "watcher.metrics: unexpected content"


def test_the_text_escapes_control_characters_from_outside() -> None:
    doc = changed(lambda d: d["events"]["spot-interruption"].update(
        last_error="/latest/meta-data/spot/instance-action: \x1b]0;owned\x07\r\nforged line"))
    text = render_text(doc, assess(doc, True, NOW, alive), NOW)
    assert "\\x1b]0;owned\\x07\\r\\nforged line" in text
    assert "\x1b" not in text and "\x07" not in text and "\nforged" not in text


# -- the command ------------------------------------------------------------------------------
def test_status_reads_the_run_directory_and_exits_with_the_judgement(cli: Callable[..., Any]) -> None:
    directory = Path(os.environ["CC_IMDS_RUN_DIR"])
    result = cli("status")
    assert (result.returncode, result.stdout.decode().splitlines()[-1]) == (
        0, "healthy: no declaration asks for a refresh or an event, so no watcher runs")
    directory.mkdir(parents=True)
    (directory / rundir.MARKER).write_text("refresh x\n")
    result = cli("status", "--json")
    assert result.returncode == NOT_RUNNING
    assert json.loads(result.stdout)["problems"][0]["exit"] == NOT_RUNNING
    stale = changed(lambda d: d["outputs"]["/etc/agent/credentials"].update(expires="2020-01-01T00:00:00Z"))
    (directory / rundir.STATUS).write_text(json.dumps(stale))
    result = cli("status")
    assert result.returncode == EXPIRED
    assert "problem: /etc/agent/credentials holds credentials that expired at 2020-01-01T00:00:00Z" in (
        result.stdout.decode())


NOT_STATUS = [b"{not json", b"[1, 2]", b"\xff\xfe", b'{"format": 1}',
              b'{"format": 2, "watcher": {"pid": 1}, "values": {}, "outputs": {}, "events": {}}',
              b'{"format": 1, "watcher": {"pid": 1}, "values": [], "outputs": {}, "events": {}}']


@pytest.mark.parametrize("content", NOT_STATUS)
def test_a_broken_status_file_is_a_clear_error(cli: Callable[..., Any], content: bytes) -> None:
    directory = Path(os.environ["CC_IMDS_RUN_DIR"])
    directory.mkdir(parents=True)
    (directory / rundir.STATUS).write_bytes(content)
    result = cli("status")
    assert result.returncode == NOT_RUNNING
    assert result.stderr.decode().startswith(f"cc-imds: {directory / rundir.STATUS}: ")
    assert b"Traceback" not in result.stderr


def test_the_docs_document_every_exit_code() -> None:
    section = (REPO / "docs/after-boot.md").read_text().split("\n## `cc-imds status`\n", 1)[1].split("\n## ", 1)[0]
    documented = {int(code) for code in re.findall(r"^\| `(\d)` \|", section, flags=re.M)}
    assert documented == {OK, RELOAD_REFUSED, IMDS_FAILING, OUTPUT_FAILING, NOT_RUNNING, EXPIRED}


def test_status_into_a_closed_pipe_ends_quietly_with_the_health_code(tmp_path: Path) -> None:
    directory = Path(os.environ["CC_IMDS_RUN_DIR"])
    directory.mkdir(parents=True)
    big = changed(lambda d: d["outputs"].update({f"/etc/out-{i:04d}": d["outputs"]["/etc/agent/credentials"]
                                                 for i in range(2000)}))
    (directory / rundir.STATUS).write_text(json.dumps(big))
    health = subprocess.run([*CLI, "status"], capture_output=True, env=cli_env(), timeout=60).returncode
    # The reader is gone before cc-imds has started, as `head` or `grep -q` may be: status is
    # a report, so its exit stays the health code, and nothing is said (docs/command-line.md, "Exit status").
    result = subprocess.run(f"set -o pipefail; {shlex.join(CLI)} status | true", shell=True,
                            executable="/bin/bash", env=cli_env(), capture_output=True, timeout=60)
    assert (result.returncode, result.stderr) == (health, b"")


def test_status_into_a_full_device_is_a_clear_error(cli: Callable[..., Any]) -> None:
    with open("/dev/full", "wb") as full:
        result = subprocess.run([*CLI, "status"], stdout=full, stderr=subprocess.PIPE, env=cli_env(), timeout=60)
    assert result.returncode == 4
    assert result.stderr == b"cc-imds: standard output: cannot write: No space left on device\n"


# -- a damaged or foreign status file --------------------------------------------------------
WITH_NOTICE = changed(lambda d: d["events"]["spot-interruption"]["notices"].append(
    {"id": "1a2b", "seen": iso(NOW - 30), "fields": {"action": "terminate"},
     "commands": [{"label": "spot-interruption notice 1a2b", "started": iso(NOW - 30), "seconds": 1.5, "exit": 1,
                   "error": "exited 1"}, {"label": "second", "started": iso(NOW - 30), "running": True}]}))
json_values = st.recursive(st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=5),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                                        max_size=3), max_leaves=6)


def places(doc: Any, at: Tuple[Any, ...] = ()) -> List[Tuple[Any, ...]]:
    """Every place in a document: each key of a mapping, each item of a list."""
    found = [at]
    items = doc.items() if isinstance(doc, dict) else enumerate(doc) if isinstance(doc, list) else []
    for key, item in items:
        found.extend(places(item, (*at, key)))
    return found


PLACES = places(WITH_NOTICE)


@settings(max_examples=examples(300))
@given(place=st.sampled_from(PLACES[1:]), value=json_values)
def test_any_damage_is_refused_or_shown_never_a_crash(place: Tuple[Any, ...], value: Any) -> None:
    doc = copy.deepcopy(WITH_NOTICE)
    parent = doc
    for key in place[:-1]:
        parent = parent[key]
    parent[place[-1]] = value
    if status_problem(doc) is None:
        health = assess(doc, True, NOW, alive)
        render_text(doc, health, NOW)
        json.dumps(as_json(doc, health))


@pytest.mark.parametrize("text", ["[" * 100_000 + "]" * 100_000, json.dumps(changed(
    lambda d: d["watcher"].update(pid=10**30))), json.dumps(changed(lambda d: d["events"]["spot-interruption"].update(
        poll="5s")))], ids=["nested-100000-deep", "pid-beyond-pid-max", "poll-not-a-number"])
def test_a_damaged_status_file_is_a_one_line_error(cli: Callable[..., Any], text: str) -> None:
    directory = Path(os.environ["CC_IMDS_RUN_DIR"])
    directory.mkdir(parents=True)
    (directory / rundir.STATUS).write_text(text)
    for extra in ([], ["--json"]):
        result = subprocess.run([*CLI, "status", *extra], capture_output=True, text=True, env=cli_env(), timeout=60)
        assert result.returncode == NOT_RUNNING
        assert re.fullmatch(rf"cc-imds: {re.escape(str(directory / rundir.STATUS))}: "
                            r"(refused: a JSON document nested deeper than 64 levels|"
                            r"not a status document of this version \(.*: unexpected content\))\n", result.stderr)
