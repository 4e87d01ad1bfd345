"""What fleets rely on from `cc-imds watch`: quiet changes (on_change `wait` and `splay`), the
Prometheus metrics file, and a watcher that stays small. The timing tests drive an in-process
watcher with an injected clock and splay draw against the emulator, so no test waits out a
real quiet time."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, Iterator, List

import pytest
from prometheus_client.parser import text_string_to_metric_families

from cc_imds.declaration.build import SourceDocument, build_declaration
from cc_imds.testing.emulator import Emulator
from cc_imds.watch.watcher import WatchOptions
from tests.conftest import REPO, cli_env
from tests.watch_harness import CREDS, TAG, close_in_process, in_process, one_pass, wait_for

START = 1_800_000_000.0


class Clocked:
    """A Watcher in this process, its wall clock and splay draw in the test's hands."""

    def __init__(self, emulator: Emulator, tmp: Path, document: Dict[str, Any], splay_draw: float = 0.5) -> None:
        self.now = START
        self.emulator = emulator
        options = WatchOptions(endpoint=emulator.url, lock_path=str(tmp / "lock"), run_dir=tmp / "run",
                               owns_marker=False, environ={"PATH": "/usr/bin:/bin"}, clock=lambda: self.now,
                               jitter=lambda: 0.0, splay=lambda: splay_draw)
        (tmp / "run").mkdir()
        self.watcher = in_process(options, build_declaration([SourceDocument("test", "", document)]))

    def at(self, seconds: float) -> None:
        """One pass of the loop `seconds` after START, the commands it started run to their end."""
        self.now = START + seconds
        one_pass(self.watcher)

    def due(self, output: str) -> Any:
        return self.watcher.status_document()["outputs"][output]["on_change"].get("due")

    def close(self) -> None:
        close_in_process(self.watcher)


@pytest.fixture
def clocked(emulator: Emulator, tmp_path: Path) -> Iterator[Any]:
    made: List[Clocked] = []

    def make(document: Dict[str, Any], splay_draw: float = 0.5) -> Clocked:
        made.append(Clocked(emulator, tmp_path, document, splay_draw))
        return made[-1]

    yield make
    for watcher in made:
        watcher.close()


def quiet_declaration(out: Path, **on_change: Any) -> Dict[str, Any]:
    return {
        "values": {"environment": {"path": TAG, "refresh": 5}},
        "env": [{"path": f"{out}/app.env", "format": "systemd", "vars": {"APP_ENV": "environment"},
                 "on_change": {"run": ["sh", "-c", f'echo "$CC_IMDS_CHANGE" >> {out}/ran'], **on_change}}],
        "events": [{"event": "spot-interruption", "poll": 5, "run": ["sh", "-c", f"echo notice >> {out}/notice"]}],
    }


def runs(out: Path) -> List[str]:
    return (out / "ran").read_text().split() if (out / "ran").exists() else []


def test_without_wait_or_splay_on_change_runs_in_the_pass_that_wrote(clocked: Any, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    watcher = clocked(quiet_declaration(out))
    watcher.at(0)
    wait_for(lambda: runs(out) == ["created"], what="on_change at once")


def test_on_change_waits_for_quiet_then_splay_and_events_do_not_wait(
        clocked: Any, emulator: Emulator, tmp_path: Path) -> None:
    """wait {min 10, max 30}, splay 20 drawn at 0.5: 10 s. A tag that keeps changing every
    5 s runs the command once, 30 s after the first change plus the splay; a spot notice
    meanwhile runs its command in the pass that sees it."""
    out = tmp_path / "out"
    out.mkdir()
    watcher = clocked(quiet_declaration(out, wait={"min": 10, "max": 30}, splay=20))
    watcher.at(0)  # created: runs at 0 + 10 (quiet) + 10 (splay)
    assert (out / "app.env").exists()
    status = watcher.watcher.status_document()["outputs"][f"{out}/app.env"]["on_change"]
    assert status["due"] == "2027-01-15T08:00:20Z" and status["running"] is False
    watcher.at(19.9)
    assert runs(out) == [] and watcher.watcher._next_wake() <= START + 20
    watcher.at(20)
    wait_for(lambda: runs(out) == ["created"], what="the first run")
    for step in range(8):  # a change every 5 s, from 25 s to 60 s
        emulator.set_value(TAG, f"stage-{step}")
        if step == 2:
            emulator.spot_interruption()
        watcher.at(25 + 5 * step)
        assert f"stage-{step}".encode() in (out / "app.env").read_bytes()  # the file is never held back
        if step == 2:
            wait_for(lambda: (out / "notice").exists(), what="the spot command, not delayed")
    watcher.at(64.9)  # first change at 25: at the latest 25 + 30, then the splay of 10
    assert runs(out) == ["created"]
    watcher.at(65)
    wait_for(lambda: runs(out) == ["created", "updated"], what="one run for eight changes")
    assert "due" not in watcher.watcher.status_document()["outputs"][f"{out}/app.env"]["on_change"]
    watcher.at(200)
    assert runs(out) == ["created", "updated"]


def test_splay_draws_come_from_the_injected_source(clocked: Any, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    watcher = clocked(quiet_declaration(out, splay=100), splay_draw=0.25)
    watcher.at(0)
    assert watcher.due(f"{out}/app.env") == "2027-01-15T08:00:25Z"
    watcher.at(24)
    assert runs(out) == []
    watcher.at(25)
    wait_for(lambda: runs(out) == ["created"], what="the run after its splay")


def test_a_clock_stepped_back_does_not_hold_a_waiting_command(clocked: Any, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    watcher = clocked(quiet_declaration(out, wait={"min": 10}))
    watcher.at(3600)  # due at 3610
    watcher.at(5)  # the clock stepped back an hour: still due 10 s after the change
    assert watcher.due(f"{out}/app.env") == "2027-01-15T08:00:15Z"
    watcher.at(15)
    wait_for(lambda: runs(out) == ["created"], what="the run")


# -- metrics -----------------------------------------------------------------------------------
def families(path: Path) -> Dict[str, Any]:
    return {f.name: f for f in text_string_to_metric_families(path.read_text())}


def samples(found: Dict[str, Any], family: str) -> Dict[str, float]:
    return {json.dumps(s.labels, sort_keys=True): s.value for s in found[family].samples}


def test_the_metrics_file_follows_what_the_watcher_does(clocked: Any, emulator: Emulator, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    prom = tmp_path / "textfile" / "cc_imds.prom"
    prom.parent.mkdir()
    document = quiet_declaration(out)
    document["values"]["environment"]["refresh"] = 60
    document["values"]["key"] = {"path": CREDS, "key": "AccessKeyId"}
    document["files"] = [{"path": f"{out}/credentials", "content": "{{ key }}\n",
                          "on_change": ["sh", "-c", "exit 3"]}]
    document["credentials"] = [{"path": f"{out}/app-server.json", "format": "process", "role": "app-server"}]
    document["metrics"] = {"path": str(prom)}
    emulator.rotate_credentials(expires_in=6 * 3600)
    watcher = clocked(document)
    watcher.at(0)
    wait_for(lambda: watcher.watcher.runner.busy() == 0 and runs(out) == ["created"], what="both commands")
    watcher.at(0.5)
    watcher.watcher._save_status()
    found = families(prom)
    assert prom.stat().st_mode & 0o777 == 0o644
    assert samples(found, "cc_imds_watcher_start_timestamp_seconds") == {"{}": START}
    assert samples(found, "cc_imds_value_last_success_timestamp_seconds") == {
        json.dumps({"path": TAG, "value": "environment"}, sort_keys=True): START,
        json.dumps({"path": CREDS, "value": "iam-role:app-server"}, sort_keys=True): START,  # the output's value
        json.dumps({"path": CREDS, "value": "key"}, sort_keys=True): START}
    expires = samples(found, "cc_imds_value_expiration_timestamp_seconds")
    assert list(expires) == [json.dumps({"path": CREDS, "value": name}, sort_keys=True)
                             for name in ("iam-role:app-server", "key")]  # the credential output's own value
    expiration = next(iter(expires.values()))
    assert samples(found, "cc_imds_output_expiration_timestamp_seconds") == {
        json.dumps({"output": f"{out}/app-server.json"}): expiration,  # a credential output
        json.dumps({"output": f"{out}/credentials"}): expiration}  # a template that uses a credential value
    assert samples(found, "cc_imds_command_exits") == {
        json.dumps({"kind": "on_change", "name": f"{out}/app.env", "outcome": "exit_0"}, sort_keys=True): 1,
        json.dumps({"kind": "on_change", "name": f"{out}/credentials", "outcome": "exit_nonzero"},
                   sort_keys=True): 1}
    written = prom.stat().st_mtime_ns
    for seconds in (5, 10):  # event polls that find no notice change nothing: the file is left alone
        watcher.at(seconds)
        watcher.watcher._save_status()
    assert prom.stat().st_mtime_ns == written
    emulator.outage()
    watcher.at(60)  # the tag's period: its poll fails, and the spot poll
    watcher.watcher._save_status()
    emulator.restore()
    emulator.spot_interruption()
    watcher.at(65)  # polled again after 5 s of backoff; the spot poll sees the notice
    wait_for(lambda: (out / "notice").exists(), what="the spot command")
    wait_for(lambda: watcher.watcher.runner.busy() == 0, what="the command's end")
    watcher.at(65.5)
    watcher.watcher._save_status()
    found = families(prom)
    tag = json.dumps({"path": TAG, "value": "environment"}, sort_keys=True)
    assert samples(found, "cc_imds_value_poll_failures")[tag] == 1
    assert samples(found, "cc_imds_value_consecutive_failures")[tag] == 0
    spot = json.dumps({"event": "spot-interruption"})
    assert samples(found, "cc_imds_event_poll_failures")[spot] == 1
    assert samples(found, "cc_imds_event_notices_seen")[spot] == 1
    assert samples(found, "cc_imds_event_notices_handled")[spot] == 1
    assert samples(found, "cc_imds_command_exits")[json.dumps(
        {"kind": "event", "name": "spot-interruption", "outcome": "exit_0"}, sort_keys=True)] == 1
    text = prom.read_text()
    for secret in emulator.issued_credentials() + emulator.issued_tokens():
        assert secret not in text
    assert watcher.watcher.status_document()["watcher"]["metrics"] == {"path": str(prom), "last_error": None}


def test_a_metrics_file_that_cannot_be_written_is_retried_and_shown(
        clocked: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    out = tmp_path / "out"
    out.mkdir()
    prom = tmp_path / "not-yet" / "cc_imds.prom"
    document = quiet_declaration(out)
    document["metrics"] = {"path": str(prom)}
    watcher = clocked(document)
    watcher.at(0)
    watcher.watcher._save_status()
    shown = watcher.watcher.status_document()["watcher"]["metrics"]
    assert shown == {"path": str(prom), "last_error": "No such file or directory"}
    assert sum("cannot write the metrics" in r.getMessage() for r in caplog.records) == 1
    prom.parent.mkdir()
    watcher.at(1)  # nothing changed, but the file is behind: written at the next pass
    watcher.watcher._save_status()
    assert "cc_imds_build_info" in prom.read_text()
    assert watcher.watcher.status_document()["watcher"]["metrics"]["last_error"] is None


# -- a lighter watcher ---------------------------------------------------------------------------
HELD = ("yaml", "jsonschema", "jinja2", "_hashlib", "tempfile", "pickle")


def test_the_idle_watcher_holds_no_library_only_start_or_reload_needs(emulator: Emulator, tmp_path: Path) -> None:
    """The promise behind its small size (bench/watch.py measures it): the declaration is read in
    a child, and templates are compiled where they are rendered, so the watcher never imports
    PyYAML, jsonschema or Jinja2, nor OpenSSL (hashlib) or tempfile, idle or after a SIGHUP."""
    out = tmp_path / "out"
    declaration = tmp_path / "declaration.yaml"
    declaration.write_text(json.dumps({
        "values": {"environment": {"path": TAG, "refresh": 1}, "key": {"path": CREDS, "key": "AccessKeyId"}},
        "env": [{"path": f"{out}/app.env", "format": "shell", "vars": {"APP_ENV": "environment"}}],
        "files": [{"path": f"{out}/app.conf", "content": "{% if environment %}{{ environment | upper }}{% endif %}\n"},
                  {"path": f"{out}/credentials", "content": "{{ key }}\n"}],
        "events": [{"event": "spot-interruption", "run": ["true"]}],
        "metrics": {"path": str(tmp_path / "cc_imds.prom")},
    }))
    # The probe waits, bounded, for what the test then checks: the first render, then the
    # adopted reload in the metrics file; it dumps the modules only after the reload.
    probe = f"""
import json, os, signal, sys, threading, time
give_up = time.monotonic() + 90  # within the run's timeout below
def wait(condition, what):
    while not condition():
        if time.monotonic() > give_up:
            print(json.dumps("timed out waiting for " + what), flush=True)
            return False
        time.sleep(0.05)
    return True
def reloaded():
    try:
        with open({str(tmp_path / 'cc_imds.prom')!r}) as metrics:
            return 'cc_imds_reloads_total{{result="adopted"}} 1' in metrics.read().splitlines()
    except FileNotFoundError:
        return False
def probe():
    if wait(lambda: os.path.exists({str(out / 'app.conf')!r}), "the first render"):
        os.kill(os.getpid(), signal.SIGHUP)
        if wait(reloaded, "the adopted reload in the metrics file"):
            print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {list(HELD)!r})), flush=True)
    os.kill(os.getpid(), signal.SIGTERM)
threading.Thread(target=probe, daemon=True).start()
from cc_imds.cli import main
sys.exit(main(["watch", {str(declaration)!r}, "--no-conf-dir", "--endpoint", {emulator.url!r}]))
"""
    env = cli_env({"CC_IMDS_RUN_DIR": str(tmp_path / "run"), "CC_IMDS_LOCK": str(tmp_path / "lock"),
                   "PYTHONPATH": str(REPO)})
    done = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[-1]) == []
    assert (out / "app.conf").read_text().strip().isupper()  # rendered by Jinja2, in the renderer child
    assert "reloaded" in done.stderr
    found = families(tmp_path / "cc_imds.prom")  # the real process wrote it, through the one atomic replace
    assert samples(found, "cc_imds_reloads") == {'{"result": "adopted"}': 1, '{"result": "refused"}': 0}
