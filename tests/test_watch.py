"""`cc-imds watch` as a real process against the emulator: credentials rotating, tags changing,
spot notices, reloads. Periods are short (declared), never the clock's. Faults (IMDS down,
SIGTERM mid-write, invalid reloads, hostile answers) are in tests/reliability/test_watch_faults.py."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path
from typing import Any, Callable, Dict

import pytest
import yaml

from cc_imds.declaration.build import SourceDocument, build_declaration
from cc_imds.testing.emulator import Emulator
from cc_imds.watch.watcher import Watcher, WatchOptions
from tests.conftest import REPO, SIGINT_STARTS
from tests.watch_harness import (
    TAG,
    Watch,
    access_key,
    credentials_declaration,
    current_key,
    tag_declaration,
    wait_for,
)


# -- credentials ------------------------------------------------------------------------------
def test_rotated_credentials_reach_the_file_before_the_old_expiration(
        watches: Callable[..., Watch], emulator: Emulator, tmp_path: Path) -> None:
    out = tmp_path / "out"
    emulator.rotate_credentials(expires_in=24)
    old_expiration = time.time() + 24
    first = current_key(emulator)
    watch = watches(tmp_path, emulator, credentials_declaration(out)).start()
    wait_for(lambda: access_key(out / "credentials") == first, what="the first credentials")
    assert (out / "credentials").stat().st_mode & 0o777 == 0o600
    # A loaded machine may time out the first token PUT and retry it; once the watcher holds
    # a token, it keeps it for its whole life.
    puts = emulator.count("PUT")
    # IMDS publishes new credentials well before the old ones expire.
    time.sleep(max(0.0, old_expiration - 12 - time.time()))
    emulator.rotate_credentials(expires_in=3600)
    second = current_key(emulator)
    wait_for(lambda: access_key(out / "credentials") == second, timeout=15, what="the rotated credentials")
    assert time.time() < old_expiration
    code, status = watch.status()
    assert code == 0, status
    output = status["status"]["outputs"][f"{out}/credentials"]
    assert output["last_action"] == "updated"
    assert output["expires"] > time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 3000))
    assert watch.stop() == 0
    assert emulator.count("PUT") == puts  # the token it started with, through the rotation


def test_the_shipped_iam_example_keeps_its_credential_file_fresh(
        watches: Callable[..., Watch], emulator: Emulator, tmp_path: Path) -> None:
    example = yaml.safe_load((REPO / "examples/iam-credentials.yaml").read_text())["imds"]
    for output in example["files"] + example["env"]:
        output["path"] = str(tmp_path / "out") + output["path"]
    (credentials,) = example["files"]
    assert credentials["on_change"] == ["systemctl", "try-reload-or-restart", "legacy-agent.service"]
    credentials["on_change"] = ["sh", "-c", f"echo restarted >> {tmp_path}/restarts"]
    path = Path(credentials["path"])
    emulator.rotate_credentials(expires_in=6)
    watch = watches(tmp_path, emulator, example).start()
    wait_for(lambda: access_key(path) == current_key(emulator), what="the credentials")
    emulator.rotate_credentials(expires_in=3600)
    wait_for(lambda: access_key(path) == current_key(emulator), timeout=15, what="the rotated credentials")
    wait_for(lambda: (tmp_path / "restarts").exists() and
             (tmp_path / "restarts").read_text() == "restarted\nrestarted\n", what="two restarts")
    assert watch.stop() == 0


# -- a tag changes -----------------------------------------------------------------------------
def test_a_tag_change_rewrites_the_file_and_runs_on_change_once(
        watches: Callable[..., Watch], emulator: Emulator, tmp_path: Path) -> None:
    out = tmp_path / "out"
    ran = tmp_path / "on_change.log"
    watch = watches(tmp_path, emulator, tag_declaration(out))
    watch.apply()
    before = (out / "app.env").read_bytes()
    watch.start()
    # Polls that find nothing new run nothing, and leave the file alone.
    polled = watch.polls_of(TAG)
    wait_for(lambda: watch.polls_of(TAG) >= polled + 3, what="three polls")
    assert not ran.exists()
    assert (out / "app.env").read_bytes() == before
    emulator.set_value(TAG, "production")
    wait_for(lambda: b"APP_ENV='production'" in (out / "app.env").read_bytes(), what="the new tag")
    wait_for(ran.exists, what="on_change")
    polled = watch.polls_of(TAG)
    wait_for(lambda: watch.polls_of(TAG) >= polled + 3, what="three more polls")
    assert ran.read_text() == f"updated {out}/app.env\n"
    assert "updated " + f"{out}/app.env (mode 0644): environment changed" in watch.log()
    code, status = watch.status()
    assert code == 0 and status["status"]["outputs"][f"{out}/app.env"]["on_change"]["exit"] == 0
    assert watch.stop() == 0


def test_a_pass_that_runs_out_of_time_writes_none_of_its_outputs(
        watches: Callable[..., Watch], emulator: Emulator, tmp_path: Path) -> None:
    """All or none, after boot too: a tag feeds a quick output and one whose template only the
    deadline stops (loops that write nothing). The quick one is rendered first, then the pass's
    deadline passes: neither is written, and the pass is tried again, never half written."""
    out = tmp_path / "out"
    loops = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}{{ environment }}"
    declaration = {
        "deadline": 1,
        "values": {"environment": {"path": TAG, "default": "dev", "refresh": 1}},
        "files": [{"path": f"{out}/quick", "content": "{{ environment }}\n"},
                  {"path": f"{out}/slow", "content": loops}],
    }
    out.mkdir()
    watch = watches(tmp_path, emulator, declaration)
    watch.start()
    wait_for(lambda: watch.log().count("not written either") >= 2, what="two passes that ran out of time")
    assert sorted(p.name for p in out.iterdir()) == []
    code, status = watch.status()
    slow = status["status"]["outputs"][f"{out}/slow"]
    assert "stopped at the 1s deadline (too slow)" in slow["last_error"], slow
    assert watch.stop() == 0
    assert sorted(p.name for p in out.iterdir()) == []


def test_a_failing_on_change_is_shown_and_the_write_stays(
        watches: Callable[..., Watch], emulator: Emulator, tmp_path: Path) -> None:
    out = tmp_path / "out"
    declaration = tag_declaration(out)
    declaration["env"][0]["on_change"] = {"run": ["sh", "-c", "echo cannot reload >&2; exit 7"], "timeout": 30}
    watch = watches(tmp_path, emulator, declaration)
    watch.apply()
    watch.start()
    emulator.set_value(TAG, "production")
    wait_for(lambda: watch.status()[0] == 4, what="status exit 4")
    assert b"APP_ENV='production'" in (out / "app.env").read_bytes()
    code, status = watch.status()
    problems = [p["message"] for p in status["problems"]]
    assert problems == [f"{out}/app.env: on_change failed at "
                        f"{status['status']['outputs'][str(out / 'app.env')]['on_change']['started']}: exited 7"]
    assert "cannot reload" in watch.log()
    assert watch.stop() == 0


# -- instance events ---------------------------------------------------------------------------
def event_declaration(tmp: Path, **extra: Any) -> Dict[str, Any]:
    script = (f"date +%s.%N >> {tmp}/started; "
              f"printf '%s %s %s\\n' \"$CC_IMDS_EVENT\" \"$CC_IMDS_NOTICE_ACTION\" \"$(tr -d '\\n')\" >> {tmp}/notices")
    return {"events": [{"event": "spot-interruption", "run": ["sh", "-c", script], **extra}]}


def test_a_spot_notice_runs_its_command_within_10_seconds(
        watches: Callable[..., Watch], emulator: Emulator, tmp_path: Path) -> None:
    watch = watches(tmp_path, emulator, event_declaration(tmp_path)).start()  # the default poll
    wait_for(lambda: watch.polls_of("meta-data/spot/instance-action") >= 1, what="a first poll")
    announced = time.time()
    emulator.spot_interruption("terminate", in_seconds=120)
    started = float(wait_for(lambda: (tmp_path / "started").exists() and (tmp_path / "started").read_text(),
                             timeout=20, what="the command").split()[0])
    assert started - announced < 10
    notice = json.loads(emulator.tree.lookup("meta-data/spot/instance-action") or b"")
    line = wait_for(lambda: (tmp_path / "notices").exists() and (tmp_path / "notices").read_text(), what="notices")
    assert line.startswith("spot-interruption terminate {") and json.loads(line.split(" ", 2)[2]) == notice
    assert watch.stop() == 0


def test_a_notice_runs_once_across_polls_and_restarts(
        watches: Callable[..., Watch], emulator: Emulator, tmp_path: Path) -> None:
    watch = watches(tmp_path, emulator, event_declaration(tmp_path, poll=1))
    emulator.rebalance_recommendation()  # not watched: never acted on
    emulator.spot_interruption("stop")
    watch.start()
    wait_for(lambda: (tmp_path / "notices").exists(), what="the command")
    polled = watch.polls_of("meta-data/spot/instance-action")
    wait_for(lambda: watch.polls_of("meta-data/spot/instance-action") >= polled + 3, what="three more polls")
    assert watch.stop() == 0
    watch.start()  # the notice is still there: it was handled already
    polled = watch.polls_of("meta-data/spot/instance-action")
    wait_for(lambda: watch.polls_of("meta-data/spot/instance-action") >= polled + 3, what="polls after restart")
    assert len((tmp_path / "notices").read_text().splitlines()) == 1
    emulator.spot_interruption("terminate")  # a changed notice is a new one
    wait_for(lambda: len((tmp_path / "notices").read_text().splitlines()) == 2, what="the second notice")
    assert (tmp_path / "notices").read_text().splitlines()[1].startswith("spot-interruption terminate ")
    code, status = watch.status()
    notices = status["status"]["events"]["spot-interruption"]["notices"]
    assert code == 0 and notices[-1]["fields"]["action"] == "terminate"
    assert watch.stop() == 0


# -- reloads -----------------------------------------------------------------------------------
def test_a_reload_that_leaves_nothing_to_watch_ends_the_watcher(
        watches: Callable[..., Watch], emulator: Emulator, tmp_path: Path) -> None:
    out = tmp_path / "out"
    watch = watches(tmp_path, emulator, tag_declaration(out)).start()
    wait_for(lambda: (out / "app.env").exists(), what="the output")
    watch.declare({"values": {"iid": "meta-data/instance-id"},
                   "env": [{"path": f"{out}/app.env", "format": "systemd", "vars": {"IID": "iid"}}]})
    assert watch.proc is not None
    watch.proc.send_signal(signal.SIGHUP)
    assert watch.proc.wait(timeout=30) == 0
    assert "nothing to watch" in watch.log()


# -- only when needed ---------------------------------------------------------------------------
def test_nothing_to_watch_means_no_watcher(watches: Callable[..., Watch], emulator: Emulator,
                                           tmp_path: Path) -> None:
    out = tmp_path / "out"
    watch = watches(tmp_path, emulator, {
        "values": {"iid": "meta-data/instance-id", "tags": {"path": "meta-data/tags/instance/", "refresh": 60}},
        "env": [{"path": f"{out}/boot.env", "format": "systemd", "vars": {"IID": "iid"}}],
    })
    watch.start()
    assert watch.proc is not None and watch.proc.wait(timeout=30) == 0
    assert "nothing to watch" in watch.log() and not out.exists()
    assert emulator.requests == []
    code, status = watch.status()
    assert (code, status["state"]) == (0, "not needed")




def test_a_reload_that_changes_a_value_fetches_it_at_once(
        watches: Callable[..., Watch], emulator: Emulator, tmp_path: Path) -> None:
    out = tmp_path / "out"

    def declaration(key: str) -> Dict[str, Any]:
        return {"values": {"where": {"path": "dynamic/instance-identity/document", "key": key, "refresh": 3600}},
                "files": [{"path": f"{out}/where", "content": "{{ where }}\n"}]}

    watch = watches(tmp_path, emulator, declaration("region")).start()
    wait_for(lambda: (out / "where").exists() and (out / "where").read_text() == "eu-west-1\n", what="the region")
    watch.declare(declaration("availabilityZone"))  # same name, same path, same period: another value
    assert watch.proc is not None
    watch.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: (out / "where").read_text() == "eu-west-1b\n", what="the zone, long before the hour is up")
    assert watch.stop() == 0


def test_one_token_is_reused_and_renewed_before_it_expires(
        watches: Callable[..., Watch], emulator: Emulator, tmp_path: Path) -> None:
    declaration = tag_declaration(tmp_path / "out")
    declaration["token_ttl"] = 3
    watch = watches(tmp_path, emulator, declaration).start()
    wait_for(lambda: watch.polls_of(TAG) >= 8, what="eight polls")
    assert watch.stop() == 0
    puts = emulator.count("PUT")
    assert 2 <= puts <= 1 + watch.polls_of(TAG) // 2  # renewed as it nears expiry, not per request
    assert [r for r in emulator.requests if r.status == 401] == []  # never used an expired token


def test_a_wall_clock_stepped_back_does_not_hold_polls_back(emulator: Emulator, tmp_path: Path) -> None:
    """Polls are scheduled in wall-clock time (credentials expire at a wall-clock time). A
    clock stepped back an hour (NTP at boot) must not leave a spot notice unpolled for an
    hour: what was due is moved back with the clock."""
    now = [1_800_000_000.0]
    path = "meta-data/spot/instance-action"
    declaration = build_declaration([SourceDocument("test", "", {
        "events": [{"event": "spot-interruption", "poll": 5, "run": ["true"]}]})])
    options = WatchOptions(endpoint=emulator.url, lock_path=str(tmp_path / "lock"), run_dir=tmp_path / "run",
                           owns_marker=False, environ={}, clock=lambda: now[0], jitter=lambda: 0.0)
    watcher = Watcher(lambda: [], options)
    try:
        assert watcher._adopt(declaration)
        watcher._pass()
        assert emulator.count("GET", path=f"/latest/{path}") == 1
        now[0] += 5
        watcher._pass()
        assert emulator.count("GET", path=f"/latest/{path}") == 2
        now[0] -= 3600  # stepped back an hour
        watcher._pass()  # the pass after the step: not polled yet, 5 s after the last poll
        now[0] += 5
        watcher._pass()
        assert emulator.count("GET", path=f"/latest/{path}") == 3
    finally:
        watcher.runner.stop()
        if watcher.client is not None:
            watcher.client.close()


# -- stopping ----------------------------------------------------------------------------------
@pytest.mark.parametrize("start", SIGINT_STARTS, ids=list(SIGINT_STARTS))
@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_sigint_and_sigterm_stop_it_cleanly_however_it_was_started(
        watches: Callable[..., Watch], emulator: Emulator, tmp_path: Path, start: str, stop: int) -> None:
    """A shell's background job starts with SIGINT ignored: the watcher's own handlers stop it anyway."""
    out = tmp_path / "out"
    watch = watches(tmp_path, emulator, tag_declaration(out)).start(sigint=start)
    wait_for(lambda: watch.polls_of(TAG) >= 1 and "watching" in watch.log(), what="a first poll")
    assert watch.stop(stop) == 0
    assert "stopped" in watch.log()
