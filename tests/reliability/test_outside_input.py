"""Outside input at the edges: documents nested thousands deep, numbers past every range,
readers that leave early, control characters in what IMDS serves, a poisoned emulator,
a server out of step on a kept-alive connection, and command floods. Each class is run
with several of its members, not one example."""

from __future__ import annotations

import http.client
import json
import os
import re
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple
from urllib.parse import urlsplit

import pytest

from cc_imds.imds.client import ClientSettings, ImdsClient
from cc_imds.testing.control import ControlServer
from cc_imds.testing.emulator import Emulator
from tests.conftest import CLI, cli_env, run_cli
from tests.reliability.conftest import Scenario, declaration, digest
from tests.reliability.hostile import TOKEN, Connection, HostileServer, Request, answer
from tests.watch_harness import CREDS, TAG, Watch, wait_for

Record = Callable[..., None]
SPOT = "meta-data/spot/instance-action"
REBALANCE = "meta-data/events/recommendations/rebalance"
MAINTENANCE = "meta-data/events/maintenance/scheduled"
DEEP = 5000

# Members of the class: nested arrays, objects, both mixed, deep inside a shallow document,
# and brackets inside a string (not deep: must parse).
DEEP_DOCUMENTS = {
    "arrays": "[" * DEEP + "]" * DEEP,
    "objects": '{"a":' * DEEP + "1" + "}" * DEEP,
    "mixed": '[{"a":' * (DEEP // 2) + "1" + "}]" * (DEEP // 2),
    "under-a-key": '{"AccessKeyId": "x", "Expiration": "2030-01-01T00:00:00Z", "Deep": ' + "[" * DEEP + "]" * DEEP
                   + "}",
    "unclosed": "[" * DEEP,
}
NOT_DEEP = '{"region": "' + "[" * DEEP + '"}'


# -- 1. deeply nested JSON ---------------------------------------------------------------------
def test_deep_documents_through_get_plan_and_apply(scenario: Scenario, record: Record) -> None:
    good = scenario.good_outputs()
    emulator = scenario.emulator()
    path = "dynamic/instance-identity/document"
    for name, text in DEEP_DOCUMENTS.items():
        emulator.set_value(path, text.encode())
        run = scenario.cli("get", path, "--key", "region", "--endpoint", emulator.url)
        assert run.code == 3, (name, run.stderr)
        assert run.stderr == f"cc-imds: /latest/{path}: refused: a JSON document nested deeper than 64 levels\n", name
        assert run.stdout == ""
        apply = scenario.apply(emulator)
        assert apply.code == 3, (name, apply.stderr)
        assert f"/latest/{path}: refused: a JSON document nested deeper than 64 levels" in apply.stderr
        decl = scenario.write_declaration(declaration(scenario.out))
        plan = scenario.cli("plan", str(decl), "--endpoint", emulator.url, "--no-conf-dir")
        assert plan.code == 3, (name, plan.stderr)
        assert digest(scenario.out) == good
    emulator.set_value(path, NOT_DEEP.encode())  # brackets inside a string are text, not depth
    run = scenario.cli("get", path, "--key", "region", "--endpoint", emulator.url)
    assert (run.code, run.stdout) == (0, "[" * DEEP)
    record("deep-json-imds", f"{len(DEEP_DOCUMENTS)} shapes: exit 3 naming the path and the 64-level limit, files "
           "untouched", exit=3)


def test_deep_documents_in_files(scenario: Scenario, tmp_path: Path, record: Record) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir(mode=0o755)
    env = {"CC_IMDS_RUN_DIR": str(run_dir)}
    for name, text in DEEP_DOCUMENTS.items():
        tree = tmp_path / f"{name}.json"
        tree.write_text(text)
        decl = scenario.write_declaration(declaration(scenario.out))
        run = scenario.cli("plan", str(decl), "--metadata", str(tree), "--no-conf-dir")
        assert run.code == 1, (name, run.stderr)
        assert run.stderr == f"cc-imds: {tree}: refused: a JSON document nested deeper than 64 levels\n"
        (run_dir / "status.json").write_text(text)
        result = run_cli("status", env=env)
        assert result.returncode == 5 and b"Traceback" not in result.stderr  # status: cannot tell, exit 5
        assert result.stderr.decode() == (f"cc-imds: {run_dir / 'status.json'}: refused: a JSON document nested "
                                          "deeper than 64 levels\n"), name
    record("deep-json-files", "metadata tree: exit 1 naming the file; status file: one line naming it", exit=1)


def _notice_watch(tmp_path: Path, emulator: Emulator, watches: Callable[..., Watch], **extra: Any) -> Watch:
    out = tmp_path / "out"
    return watches(tmp_path, emulator, {
        "deadline": 2,
        "values": {"environment": {"path": TAG, "refresh": 1},
                   "region": {"path": "dynamic/instance-identity/document", "key": "region", "refresh": 1}},
        "files": [{"path": f"{out}/env.txt", "content": "{{ environment }}\n"},
                  {"path": f"{out}/region.txt", "content": "{{ region }}\n"}],
        "events": [{"event": event, "poll": 1, "run": ["sh", "-c", f"echo {event} >> {tmp_path}/ran"]}
                   for event in ("spot-interruption", "rebalance-recommendation", "scheduled-maintenance")],
        **extra})


def test_deep_documents_never_stop_the_watcher(
        watches: Callable[..., Watch], emulator: Emulator, tmp_path: Path, record: Record) -> None:
    """At start-up (a `key:` value on a deep document) and on every poll (deep spot and
    maintenance notices): logged, shown in status, the other values and events served."""
    emulator.set_value("dynamic/instance-identity/document", DEEP_DOCUMENTS["objects"].encode())
    emulator.set_value(SPOT, DEEP_DOCUMENTS["arrays"].encode())
    emulator.set_value(MAINTENANCE, DEEP_DOCUMENTS["mixed"].encode())
    watch = _notice_watch(tmp_path, emulator, watches).start()
    out = tmp_path / "out"
    wait_for(lambda: (out / "env.txt").exists(), what="the value that is fine, written")
    emulator.rebalance_recommendation()
    wait_for(lambda: (tmp_path / "ran").exists() and "rebalance-recommendation" in (tmp_path / "ran").read_text(),
             what="the rebalance command")
    emulator.set_value(TAG, "changed")
    wait_for(lambda: (out / "env.txt").read_text() == "changed\n", what="the tag refreshed")

    def failing() -> Optional[Dict[str, Any]]:
        code, status = watch.status()
        events = (status["status"] or {}).get("events", {})
        ok = code == 3 and events.get("spot-interruption", {}).get("last_error") and \
            events.get("scheduled-maintenance", {}).get("last_error")
        return status if ok else None

    status = wait_for(failing, what="status exit 3 naming the refused documents")
    assert "nested deeper than 64 levels" in status["status"]["events"]["spot-interruption"]["last_error"]
    assert "nested deeper than 64 levels" in status["status"]["values"]["region"]["last_error"]
    assert not (out / "region.txt").exists()
    assert "spot-interruption" not in (tmp_path / "ran").read_text()
    assert watch.proc is not None and watch.proc.poll() is None, watch.log()
    assert "Traceback" not in watch.log() and "internal error" not in watch.log()
    # Mended: served again, without a restart.
    emulator.set_value("dynamic/instance-identity/document", b'{"region": "eu-west-1"}')
    emulator.spot_interruption()
    wait_for(lambda: (out / "region.txt").exists() and "spot-interruption" in (tmp_path / "ran").read_text(),
             what="recovery")
    record("deep-json-watch", "start-up value and notices refused, logged, status 3; other values and events served; "
           "recovered", exit=watch.stop())


# -- 2. command floods -------------------------------------------------------------------------
def _processes_with(marker: str) -> List[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as handle:
                    if marker.encode() in handle.read():
                        found.append(int(entry))
            except OSError:
                pass
    return found


def _threads(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


def test_a_flood_of_notices_runs_a_bounded_number_of_commands(
        watches: Callable[..., Watch], emulator: Emulator, tmp_path: Path, record: Record) -> None:
    marker = f"flood-{os.getpid()}-{time.monotonic_ns()}"
    watch = watches(tmp_path, emulator, {
        "events": [{"event": "scheduled-maintenance", "poll": 1, "timeout": 60,
                    "run": ["sh", "-c", f"sleep 40; : {marker}"]},
                   {"event": "rebalance-recommendation", "poll": 1, "timeout": 60,
                    "run": ["sh", "-c", f"sleep 40; : {marker}"]}]}).start()
    assert watch.proc is not None
    most_commands = most_threads = 0
    deadline = time.monotonic() + 12
    while time.monotonic() < deadline:  # ten new notices a second, of two events
        for _ in range(8):
            emulator.schedule_maintenance()
        emulator.set_value(REBALANCE, {"noticeTime": f"{time.time():.6f}"})
        most_commands = max(most_commands, len(_processes_with(marker)))
        most_threads = max(most_threads, _threads(watch.proc.pid))
        time.sleep(0.5)
    code, status = watch.status()
    commands = status["status"]["watcher"]["commands"]
    assert most_commands <= 4, most_commands
    # The main thread, a runner and a stdin feeder per slot, and the client's fetch threads (concurrency 8).
    assert most_threads <= 1 + 2 * 4 + 8, most_threads
    assert commands["running"] <= 4 and commands["queued"] <= 16
    assert status["status"]["events"]["scheduled-maintenance"]["waiting"] > 0
    assert "wait for a later poll" in watch.log()
    text = watch.cli("status").stdout.decode()
    assert re.search(r"commands: \d running, \d+ waiting \(at most 4 at once, 16 waiting\)", text), text
    stopped = watch.stop()
    wait_for(lambda: not _processes_with(marker), timeout=30, what="the commands ended with the watcher")
    record("watch-command-flood", "at most 4 commands and 17 threads; the rest waiting or deferred, in status",
           exit=stopped, **{"peak commands": most_commands, "peak threads": most_threads})


LEFTOVERS = {  # what a command leaves running; each records the pid it left
    "background": "sleep 300 & echo $! >> {pids}",
    "orphaned-subshell": "(sleep 300 & echo $! >> {pids}); exit 0",
    "ignores-sigterm": "sh -c 'trap \"\" TERM; sleep 300' & echo $! >> {pids}",
}


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            return handle.read().rsplit(b")", 1)[1].split()[0] not in (b"Z", b"X")
    except (OSError, IndexError):
        return False


def test_what_a_command_leaves_running_is_ended(
        watches: Callable[..., Watch], emulator: Emulator, tmp_path: Path, record: Record) -> None:
    out = tmp_path / "out"
    pids = tmp_path / "pids"
    watch = watches(tmp_path, emulator, {
        "deadline": 2, "values": {"environment": {"path": TAG, "refresh": 1}},
        "files": [{"path": f"{out}/{name}.txt", "content": "{{ environment }}\n",
                   "on_change": ["sh", "-c", script.format(pids=pids)]} for name, script in LEFTOVERS.items()],
    }).start()
    for value in ("one", "two", "three"):
        emulator.set_value(TAG, value)
        wait_for(lambda: pids.exists() and len(pids.read_text().split()) >= 3 * ("one", "two", "three").index(
            value) + 3, what=f"the on_change runs for {value}")  # noqa: B023 - used at once
    left = [int(pid) for pid in pids.read_text().split()]
    wait_for(lambda: not [pid for pid in left if _alive(pid)], timeout=30, what="what the commands left, ended")
    assert "ending what it left running in its process group" in watch.log()
    assert watch.proc is not None and watch.proc.poll() is None
    record("watch-command-leftovers", f"{len(left)} processes left by on_change in {len(LEFTOVERS)} shapes "
           "(background, orphaned, ignoring SIGTERM): ended when the command exits", exit=watch.stop())


# -- 4. numbers beyond their range -------------------------------------------------------------
EDGES = ["0", "-1", "1e10", "1e20", "1e300", "99999999999", "inf", "-inf", "nan", "9" * 400, "0x10", ""]


def _takes(parse: Callable[[str], Any], text: str) -> bool:
    import argparse

    try:
        parse(text)
    except (argparse.ArgumentTypeError, ValueError, TypeError):
        return False
    return True


def numeric_options() -> List[Tuple[str, str]]:
    """Every option of every command whose value argparse reads as a number: found by
    asking each option's type what it makes of `nan` (refused) and of 1 or 0 (taken)."""
    import argparse

    from cc_imds.cli import build_parser

    found = []
    parser = build_parser()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for command, sub in action.choices.items():
                for option in sub._actions:
                    if option.type is None or not option.option_strings:
                        continue
                    if not _takes(option.type, "nan") and (_takes(option.type, "1") or _takes(option.type, "0")):
                        found.append((command, option.option_strings[-1]))
    return found


def _accepts(command: str, option: str, text: str) -> bool:
    import argparse

    from cc_imds.cli import build_parser

    for action in build_parser()._actions:
        if isinstance(action, argparse._SubParsersAction):
            for candidate in action.choices[command]._actions:
                if option in candidate.option_strings:
                    try:
                        candidate.type(text)  # type: ignore[misc]
                    except (argparse.ArgumentTypeError, ValueError, TypeError):
                        return False
                    return True
    raise AssertionError(f"{command} {option}: no such option")


def test_every_numeric_option_refuses_what_is_out_of_range(record: Record) -> None:
    options = numeric_options()
    assert ("get", "--deadline") in options and ("get", "--timeout") in options and ("emulate", "--port") in options
    checked = 0
    for command, option in options:
        base = [command, "meta-data/instance-id", "--endpoint", "http://127.0.0.1:9"] if command == "get" else \
            [command]
        for edge in EDGES:
            if _accepts(command, option, edge):
                continue  # in range for this option (0 is a port that picks a free one)
            forms = [[option, edge], [f"{option}={edge}"]] if edge else [[f"{option}="]]
            for form in forms:
                result = run_cli(*base, *form)
                stderr = result.stderr.decode()
                assert result.returncode == 2, (command, form, stderr)
                assert "Traceback" not in stderr and "internal error" not in stderr
                assert re.search(rf"argument {re.escape(option)}: .*(from|to) ", stderr) or \
                    "expected one argument" in stderr or "is not" in stderr, (command, form, stderr)
                checked += 1
    record("numbers-at-the-edge", f"{len(options)} numeric options x {len(EDGES)} edge values, both spellings: "
           "exit 2 naming the bound", exit=2, runs=checked)


SCHEMA_NUMBERS = {
    "token_ttl": lambda v: {"token_ttl": v},
    "timeout": lambda v: {"timeout": v},
    "deadline": lambda v: {"deadline": v},
    "concurrency": lambda v: {"concurrency": v},
    "refresh": lambda v: {"values": {"id": {"path": TAG, "refresh": v}}},
    "poll": lambda v: {"events": [{"event": "spot-interruption", "poll": v, "run": ["true"]}]},
    "event timeout": lambda v: {"events": [{"event": "spot-interruption", "run": ["true"], "timeout": v}]},
    "on_change timeout": lambda v: {"env": [{"path": "/tmp/x.env", "format": "shell", "vars": {"ID": "id"},
                                             "on_change": {"run": ["true"], "timeout": v}}]},
}


def test_every_numeric_key_refuses_what_is_out_of_range(scenario: Scenario, record: Record) -> None:
    checked = 0
    for key, make in SCHEMA_NUMBERS.items():
        for edge in [0, -1, 1e10, 1e300, 10**30, float("inf"), float("nan")]:
            doc = {"values": {"id": "meta-data/instance-id"},
                   "env": [{"path": f"{scenario.out}/x.env", "format": "shell", "vars": {"ID": "id"}}]}
            extra = make(edge)
            for name, value in extra.items():
                doc[name] = {**doc[name], **value} if isinstance(value, dict) else value
            path = scenario.write_declaration(doc)
            run = scenario.cli("validate", str(path))
            assert run.code == 1, (key, edge, run.stderr)
            named = key.split()[-1]
            assert named in run.stderr, (key, edge, run.stderr)
            checked += 1
    record("numbers-in-declarations", f"{len(SCHEMA_NUMBERS)} numeric keys x 7 edge values: exit 1 naming the key",
           exit=1, runs=checked)


# -- 5. short writes ------------------------------------------------------------------------------
def _piped(args: List[str], keep: int) -> Tuple[int, bytes]:
    """Run cc-imds into a reader that takes `keep` bytes and leaves."""
    import subprocess

    proc = subprocess.Popen([*CLI, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=cli_env())
    assert proc.stdout is not None
    if keep:
        proc.stdout.read(keep)
    proc.stdout.close()
    _, stderr = proc.communicate(timeout=60)
    return proc.returncode, stderr


def test_a_reader_that_leaves_early_is_exit_4(scenario: Scenario, record: Record) -> None:
    emulator = scenario.emulator()
    emulator.set_value("meta-data/big", b"x" * 3_000_000)
    emulator.set_value("meta-data/tags/instance/Big", "y" * 100_000)
    # What the reader leaves is more than a pipe holds (64 KiB), so some write must fail.
    forms = {("get", "meta-data/big"): (0, 10, 65536, 1_000_000), ("get", "--lines", "meta-data/big"): (0, 10, 65536),
             ("get", "--shell", "B=meta-data/tags/instance/Big"): (0, 10),
             ("get", "--json", "B=meta-data/tags/instance/Big"): (0, 10)}
    for form, keeps in forms.items():
        for keep in keeps:
            code, stderr = _piped([*form, "--endpoint", emulator.url], keep)
            assert code == 4, (form, keep, stderr)
            assert stderr.decode() == "cc-imds: standard output: cannot write: Broken pipe\n", (form, keep)
    record("early-reader-exit", "3 MB through get (4 forms) into readers leaving after 0 B to 1 MB: exit 4 each",
           exit=4)


# -- 6. control characters -------------------------------------------------------------------------
RAW_CONTROLS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f\x80-\x9f\u202a-\u202e\u2066-\u2069]")


def test_control_characters_from_imds_never_reach_the_log_raw(
        watches: Callable[..., Watch], emulator: Emulator, tmp_path: Path, record: Record) -> None:
    emulator.set_value(SPOT, "\x1b]0;owned\x07\x1b[2J\x1b[31mterminate now\x9b\r\nFAKE: log line\u202e".encode())
    emulator.set_value(REBALANCE, json.dumps({"noticeTime": "\x1b[5mblink\x07", "note\x1b": "x"}).encode())
    emulator.set_value("dynamic/instance-identity/document", b"not json \x1b[31m")
    watch = _notice_watch(tmp_path, emulator, watches).start()
    wait_for(lambda: (tmp_path / "ran").exists() and "rebalance" in (tmp_path / "ran").read_text()
             and "spot-interruption" in (tmp_path / "ran").read_text(), what="both commands")
    wait_for(lambda: watch.status()[0] == 3, what="status 3 for the document that is not JSON")
    log = watch.log()
    assert "\\x1b]0;owned\\x07" in log, log
    assert RAW_CONTROLS.findall(log) == []
    assert "\nFAKE: log line" not in log
    result = watch.cli("status")
    assert RAW_CONTROLS.findall(result.stdout.decode()) == [] and "rebalance-recommendation" in result.stdout.decode()
    record("control-chars-in-logs", "ESC, BEL, CSI, CR/LF and bidi overrides from notices: escaped in the log and "
           "in status", exit=watch.stop())


# -- 7. the emulator's control endpoint ---------------------------------------------------------------
def _call(url: str, method: str, target: str, body: Optional[bytes] = None,
          headers: Optional[Dict[str, str]] = None) -> Tuple[int, Any]:
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=10)
    try:
        conn.request(method, target, body=body, headers=headers or {})
        response = conn.getresponse()
        data = response.read()
        return response.status, json.loads(data) if data.startswith(b"{") else data
    finally:
        conn.close()


def test_one_bad_control_call_changes_nothing(emulator: Emulator, capfd: pytest.CaptureFixture,
                                               record: Record) -> None:
    control = ControlServer(emulator).start()
    try:
        before = dict(emulator.tree.leaves())
        deep = DEEP_DOCUMENTS["arrays"].encode()
        bad = [
            ("PUT", f"/tree/{CREDS}", deep, None),
            ("PUT", f"/tree/{CREDS}", b"not json", None),
            ("PUT", f"/tree/{CREDS}", b'["a list"]', None),
            ("PUT", f"/tree/{MAINTENANCE}", DEEP_DOCUMENTS["objects"].encode(), None),
            ("PUT", f"/tree/{MAINTENANCE}", b'{"not": "a list"}', None),
            ("POST", "/credentials/rotate", deep, None),
            ("POST", "/events/scheduled-maintenance", deep, None),
            ("POST", "/events/spot-interruption?in=1e400", None, None),
            ("POST", "/outage?seconds=nan", None, None),
            ("PUT", "/tree/meta-data/a//b", b"x", None),
            ("PUT", "/tree/../../etc/passwd", b"x", None),
            ("PUT", "/tree/meta-data/x%0a%1b", b"x", None),
            ("DELETE", "/tree/%00", None, None),
        ]
        for method, target, body, headers in bad:
            status, answer_ = _call(control.url, method, target, body, headers)
            assert status == 400, (method, target, status, answer_)
            assert answer_["error"], (method, target)
            assert dict(emulator.tree.leaves()) == before, (method, target)
        status, _ = _call(control.url, "PUT", "/tree/meta-data/x", b"x", {"Content-Length": "9" * 50})
        assert status in (400, 413)
        # Poisoned through the API instead: IMDS and the control calls keep working.
        emulator.set_value(CREDS, deep)
        emulator.set_value(MAINTENANCE, deep)
        emulator.rotate_credentials_every(60)
        with ImdsClient(ClientSettings(endpoint=emulator.url, deadline=5)) as client:
            assert client.fetch("meta-data/instance-id") == b"i-0a1b2c3d4e5f60789"
            assert client.fetch(CREDS) == deep
        assert _call(control.url, "POST", "/credentials/rotate")[0] == 200
        status, answer_ = _call(control.url, "POST", "/events/scheduled-maintenance")
        assert status == 400 and "holds no list of events" in answer_["error"]
    finally:
        control.stop()
    captured = capfd.readouterr()
    assert "Traceback" not in captured.err and "Exception" not in captured.err
    record("emulator-control-poisoning", f"{len(bad) + 1} bad control calls: 400 each, tree unchanged; deep documents "
           "set directly: IMDS keeps serving", exit=0)


# -- 8. keep-alive out of step -------------------------------------------------------------------------
class Surplus:
    """A server whose first GET answer carries more body than its Content-Length: the
    surplus (a whole fake answer) comes at once, or after a pause. Every other GET is
    answered with its own path."""

    FAKE = b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nevil"

    def __init__(self, late: bool) -> None:
        self.late = late
        self.sent = threading.Event()
        self.first = True

    def __call__(self, request: Request, conn: Connection) -> None:
        if request.method == "PUT":
            answer(conn, 200, TOKEN.encode(), {"X-aws-ec2-metadata-token-ttl-seconds": "21600"})
            return
        body = request.path.encode()
        if not self.first:
            answer(conn, 200, body)
            return
        self.first = False
        head = f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        if self.late:
            conn.send(head + body)
            conn.stopping.wait(0.05)
            conn.send(self.FAKE)
        else:
            conn.send(head + body + self.FAKE)
        self.sent.set()


@pytest.mark.parametrize("late", [False, True], ids=["at-once", "late"])
def test_a_server_out_of_step_never_answers_for_another_request(late: bool, record: Record) -> None:
    behaviour = Surplus(late)
    paths = [f"meta-data/tags/instance/k{i}" for i in range(6)]
    with HostileServer(behaviour) as server:
        with ImdsClient(ClientSettings(endpoint=server.url, deadline=10, concurrency=1)) as client:
            got = []
            for path in paths:
                got.append(client.fetch(path))
                assert behaviour.sent.wait(10)  # the surplus is out before the next request
            assert got == [f"/latest/{p}".encode() for p in paths]
            connections = server.connections
    assert connections >= len(paths)  # out of step: no connection reused after the surplus
    record(f"keepalive-surplus-{'late' if late else 'at-once'}",
           "surplus past Content-Length: never read as another answer; fresh connections from then on",
           exit=0, connections=connections)
