"""The watcher's faults, end to end: `cc-imds watch` as a real process against the emulator while
IMDS fails, a signal lands mid-write, a reload is invalid, or IMDS hands out what an output
cannot carry. Each ends with the right files or the old ones byte-identical, no temp file, a
status that says so, and no token or secret in the log or the status file."""

from __future__ import annotations

import fcntl
import json
import signal
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Tuple

import pytest

from cc_imds.testing.emulator import Emulator
from tests.reliability.hostile import HostileServer, silent, token_then, trickled_headers
from tests.reliability.test_templates import leaks
from tests.watch_harness import (
    CREDS,
    TAG,
    Watch,
    access_key,
    credentials_declaration,
    digest,
    tag_declaration,
    temp_files,
    wait_for,
)

Record = Callable[..., None]


def test_imds_down_keeps_files_identical_then_recovers(
        watches: Callable[..., Watch], emulator: Emulator, tmp_path: Path, record: Record) -> None:
    out = tmp_path / "out"
    watch = watches(tmp_path, emulator, tag_declaration(out))
    watch.apply()
    started = time.monotonic()
    watch.start()
    wait_for(lambda: watch.status()[1]["status"] and
             watch.status()[1]["status"]["values"]["environment"]["last_refresh"], what="a first refresh")
    good = digest(out)
    emulator.outage()
    # Several failed polls: nothing changes, not even to the value's `default`.
    wait_for(lambda: watch.status()[1]["status"]["values"]["environment"]["failures"] >= 3, timeout=60,
             what="three failed polls")
    assert digest(out) == good and temp_files(out) == []
    code, status = watch.status()
    assert code == 3
    assert any(p["message"].startswith(f"value environment ({TAG}): ") for p in status["problems"])
    assert "cannot refresh environment" in watch.log()
    # Back up, with a new value meanwhile: picked up without a restart.
    emulator.set_value(TAG, "recovered")
    emulator.restore()
    wait_for(lambda: b"APP_ENV='recovered'" in (out / "app.env").read_bytes(), timeout=60, what="recovery")
    wait_for(lambda: watch.status()[0] == 0, what="a healthy status")
    assert f"{TAG}: refreshed again after" in watch.log()
    failed = watch.log().count("cannot refresh environment")
    record("watch-imds-outage", "files byte-identical, status 3, recovered", exit=watch.stop(),
           seconds=round(time.monotonic() - started, 1), PUT=emulator.count("PUT"), GET=emulator.count("GET"),
           retries=failed)


def test_credentials_expiring_while_imds_is_down_make_status_critical(
        watches: Callable[..., Watch], emulator: Emulator, tmp_path: Path, record: Record) -> None:
    out = tmp_path / "out"
    emulator.rotate_credentials(expires_in=6)
    expires = time.time() + 6
    watch = watches(tmp_path, emulator, credentials_declaration(out)).start()
    wait_for(lambda: (out / "credentials").exists(), what="the credentials file")
    emulator.outage()
    time.sleep(max(0.0, expires - time.time()) + 1)
    def expired_and_failing() -> Optional[Tuple[int, Dict[str, Any]]]:
        code, status = watch.status()
        return (code, status) if code == 6 and any(p["exit"] == 3 for p in status["problems"]) else None

    code, status = wait_for(expired_and_failing, what="status exit 6, and IMDS failing")
    assert status["problems"][0]["message"].startswith(f"{out}/credentials holds credentials that expired at ")
    emulator.restore()
    emulator.rotate_credentials(expires_in=3600)
    wait_for(lambda: watch.status()[0] == 0, timeout=90, what="fresh credentials again")
    record("watch-credentials-expire-while-down", "status 6 while expired, 0 once fresh", exit=watch.stop(),
           PUT=emulator.count("PUT"), GET=emulator.count("GET"))


def written_whole(out: Path, prefix: bytes) -> bool:
    parts = list(out.glob("part-*")) if out.exists() else []
    return len(parts) == 30 and not temp_files(out) and all(p.read_bytes().startswith(prefix) for p in parts)


def spot_temp_file(out: Path, seen: threading.Event) -> None:
    give_up = time.monotonic() + 20
    while time.monotonic() < give_up:
        if temp_files(out):
            seen.set()
            return


def test_sigterm_in_the_middle_of_a_write_leaves_no_partial_file(
        watches: Callable[..., Watch], emulator: Emulator, tmp_path: Path, record: Record) -> None:
    """Thirty large outputs take a while to stage; SIGTERM is sent as soon as a temp file
    appears. The watcher finishes or abandons that write whole, and leaves nothing behind."""
    out = tmp_path / "out"
    big = "{% for i in range(2000) %}{{ environment }}{% endfor %}\n"
    declaration = {
        "values": {"environment": {"path": TAG, "refresh": 1}},
        "files": [{"path": f"{out}/part-{i:02d}", "content": big} for i in range(30)],
    }
    caught = 0
    for attempt in range(8):
        emulator.set_value(TAG, f"{attempt}-" + "a" * 126)
        watch = watches(tmp_path / f"attempt-{attempt}", emulator, declaration)
        watch.start()
        prefix = f"{attempt}-".encode()
        wait_for(lambda: written_whole(out, prefix), timeout=60, what="the first write")  # noqa: B023 - used at once
        seen = threading.Event()
        spotter = threading.Thread(target=spot_temp_file, args=(out, seen))
        spotter.start()
        emulator.set_value(TAG, f"{attempt}b" + "b" * 126)
        seen.wait(20)
        code = watch.stop()
        spotter.join(timeout=60)  # it gives up after 20 s by itself
        assert not spotter.is_alive()
        assert code == 0
        assert temp_files(out) == []
        contents = {p.read_bytes() for p in out.glob("part-*")}
        assert len(contents) == 1, "all or nothing: every output old, or every output new"
        (content,) = contents
        assert content.rstrip(b"\n") in (f"{attempt}-{'a' * 126}".encode() * 2000,
                                         f"{attempt}b{'b' * 126}".encode() * 2000)
        caught += seen.is_set()
        if caught >= 2:
            break
    assert caught >= 1, "never caught the watcher while it staged its files"
    record("watch-sigterm-mid-write", "caught mid-write: no temp file, all or nothing", exit=code,
           caught_mid_write=caught, attempts=attempt + 1)


def test_sighup_reloads_and_an_invalid_declaration_keeps_the_running_one(
        watches: Callable[..., Watch], emulator: Emulator, tmp_path: Path, record: Record) -> None:
    out = tmp_path / "out"
    watch = watches(tmp_path, emulator, tag_declaration(out))
    watch.apply()
    watch.start()
    wait_for(lambda: watch.polls_of(TAG) >= 2, what="polls")
    watch.declare({"values": {"environment": {"path": TAG, "refresh": 0}}, "env": [{"path": "relative"}]})
    assert watch.proc is not None
    watch.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "reload refused" in watch.log(), what="the refusal")
    refused = [line for line in watch.log().splitlines() if "reload refused" in line]
    assert len(refused) >= 3 and any("values.environment.refresh: 0 is less than the minimum of 1" in line
                                     for line in refused)
    code, status = watch.status()
    assert code == 1 and status["problems"][0]["message"].startswith("reload refused, the previous declaration")
    emulator.set_value(TAG, "still-watched")
    wait_for(lambda: b"still-watched" in (out / "app.env").read_bytes(), what="the old declaration at work")
    # A valid one: a new output appears, and the old one stays watched.
    declaration = tag_declaration(out)
    declaration["files"] = [{"path": f"{out}/tag.txt", "content": "{{ environment }}\n"}]
    watch.declare(declaration)
    watch.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: (out / "tag.txt").exists(), what="the new output")
    assert (out / "tag.txt").read_text() == "still-watched\n"
    wait_for(lambda: watch.status()[0] == 0, what="a healthy status after the reload")
    record("watch-invalid-reload", f"refused, {len(refused)} problems logged, old declaration kept",
           exit=watch.stop())


def test_an_output_that_cannot_carry_a_new_value_keeps_its_file_and_holds_back_no_other(
        watches: Callable[..., Watch], emulator: Emulator, tmp_path: Path, record: Record) -> None:
    out = tmp_path / "out"
    declaration = tag_declaration(out)
    declaration["env"].append({"path": f"{out}/app.sh", "format": "shell", "vars": {"APP_ENV": "environment"}})
    watch = watches(tmp_path, emulator, declaration)
    watch.apply()
    systemd_before = (out / "app.env").read_bytes()
    watch.start()
    emulator.set_value(TAG, "two\nlines")  # a tag author's choice; systemd's format cannot carry it
    wait_for(lambda: (out / "app.sh").read_bytes().endswith(b"export APP_ENV='two\nlines'\n"), what="app.sh")
    code, status = wait_for(lambda: (lambda s: s if s[0] == 4 else None)(watch.status()), what="status exit 4")
    assert (out / "app.env").read_bytes() == systemd_before
    assert status["problems"][0]["message"].startswith(f"{out}/app.env: ")
    emulator.set_value(TAG, "fixed")
    wait_for(lambda: b"APP_ENV='fixed'" in (out / "app.env").read_bytes(), what="the fixed value")
    wait_for(lambda: watch.status()[0] == 0, what="a healthy status")
    record("watch-unrepresentable-value", "that file kept, status 4, the others written", exit=watch.stop())


def test_a_flood_of_notices_is_acted_on_a_few_at_a_time_each_once(
        watches: Callable[..., Watch], emulator: Emulator, tmp_path: Path, record: Record) -> None:
    for _ in range(25):
        emulator.schedule_maintenance()
    watch = watches(tmp_path, emulator, {"events": [{
        "event": "scheduled-maintenance", "poll": 1,
        "run": ["sh", "-c", f"echo \"$CC_IMDS_NOTICE_EVENTID\" >> {tmp_path}/handled"]}]}).start()
    wait_for(lambda: (tmp_path / "handled").exists() and len((tmp_path / "handled").read_text().split()) == 25,
             what="25 commands")
    polled = watch.polls_of("meta-data/events/maintenance/scheduled")
    wait_for(lambda: watch.polls_of("meta-data/events/maintenance/scheduled") >= polled + 2, what="two more polls")
    handled = (tmp_path / "handled").read_text().split()
    expected = {e["EventId"] for e in json.loads(emulator.tree.lookup("meta-data/events/maintenance/scheduled")
                                                 or b"[]")}
    assert len(handled) == 25 and set(handled) == expected
    assert "scheduled-maintenance: 25 new notices at once; acting on 10 now" in watch.log()
    record("watch-notice-flood", "25 notices: 10 per poll, each command once", exit=watch.stop(),
           GET=emulator.count("GET"))


def test_a_hostile_expiration_neither_stops_the_watcher_nor_its_status(
        watches: Callable[..., Watch], emulator: Emulator, tmp_path: Path, record: Record) -> None:
    """IMDS writes the Expiration; one an offset pushes out of the calendar (past 9999-12-31
    or before year 1 in UTC) is no usable Expiration: the credentials are written, the
    watcher keeps running and `status` answers."""
    shown = []
    for attempt, hostile in enumerate(["9999-12-31T23:59:59-23:59", "0001-01-01T00:00:00+14:00"]):
        out = tmp_path / f"out-{attempt}"
        document = json.loads(emulator.tree.lookup(CREDS) or b"{}")
        document["Expiration"] = hostile
        emulator.set_value(CREDS, json.dumps(document))
        watch = watches(tmp_path / f"attempt-{attempt}", emulator, credentials_declaration(out)).start()
        wait_for(lambda: access_key(out / "credentials") == document["AccessKeyId"],  # noqa: B023 - used at once
                 what="the credentials file")
        code, status = wait_for(lambda: (lambda s: s if s[1]["status"] else None)(watch.status()),  # noqa: B023
                                what="a status")
        assert watch.proc is not None and watch.proc.poll() is None, watch.log()
        assert code == 0, status
        assert status["status"]["values"]["key"]["expires"] is None
        assert "internal error" not in watch.log()
        shown.append(watch.stop())
    record("watch-hostile-expiration", "Expirations out of the calendar: credentials written, watcher running, "
           "status 0", exit=max(shown))


# One attempt's timeout: what a request under way may still take once SIGTERM came. The slack
# is for a loaded machine; without the fix, the stop waited for the poll's 10 s deadline.
ATTEMPT = 1.0
STOP_SLACK = 4.0


@pytest.mark.parametrize("behaviour", [silent, token_then(trickled_headers)], ids=["silent", "trickled-headers"])
def test_sigterm_in_the_middle_of_a_poll_stops_within_an_attempt(
        watches: Callable[..., Watch], emulator: Emulator, tmp_path: Path, record: Record, behaviour: Any) -> None:
    out = tmp_path / "out"
    declaration = {"deadline": 30, "timeout": ATTEMPT, "values": {"environment": {"path": TAG, "refresh": 1}},
                   "files": [{"path": f"{out}/tag.txt", "content": "{{ environment }}\n"}]}
    with HostileServer(behaviour) as server:
        watch = watches(tmp_path, emulator, declaration).start("--endpoint", server.url)
        wait_for(lambda: server.connections >= 1, what="a request under way")
        time.sleep(0.3)
        started = time.monotonic()
        code = watch.stop()
        seconds = time.monotonic() - started
    assert code == 0
    assert seconds < ATTEMPT + STOP_SLACK, watch.log()
    assert "cannot refresh" not in watch.log()  # cut short by the stop, not a failure of IMDS
    assert not out.exists() or temp_files(out) == []
    record("watch-sigterm-mid-poll", "SIGTERM while IMDS never answers, or trickles headers: stopped within one "
           "attempt's timeout, not the poll's deadline", exit=code, seconds=round(seconds, 1))


def test_render_errors_in_the_watcher_are_scrubbed_as_apply_scrubs_them(
        watches: Callable[..., Watch], emulator: Emulator, tmp_path: Path, record: Record) -> None:
    """Template errors quote what a template looked up. The renderer hides what it computed
    from a sensitive value, except text it takes for Jinja's own words ('None', '... object');
    apply's boundary scrubs those too, and the watcher's messages go through the same one."""
    out = tmp_path / "out"
    secrets = ["None", "hunter2 dict object"]
    declaration = {
        "deadline": 2,
        "values": {"environment": {"path": TAG, "refresh": 1},
                   **{f"pw{i}": {"path": f"meta-data/tags/instance/Password{i}", "default": secret, "sensitive": True}
                      for i, secret in enumerate(secrets)}},
        "files": [{"path": f"{out}/pw{i}.conf", "content": f"{{{{ {{}}[pw{i}] }}}}{{{{ environment }}}}\n"}
                  for i in range(len(secrets))],
    }
    watch = watches(tmp_path, emulator, declaration).start()
    wait_for(lambda: watch.log().count("not rewritten") >= 2, what="both render errors")
    code, status = wait_for(lambda: (lambda s: s if s[0] == 4 else None)(watch.status()), what="status exit 4")
    said = watch.log() + json.dumps(status) + watch.cli("status").stdout.decode()
    assert "has no attribute '<redacted>'" in said
    assert leaks(said, secrets) == []
    record("watch-secret-in-error", "sensitive values Jinja's wording lets through: redacted in the log, status.json "
           "and status, as apply redacts them", exit=watch.stop())


def test_a_reload_whose_endpoint_is_unusable_keeps_the_running_declaration(
        watches: Callable[..., Watch], emulator: Emulator, tmp_path: Path, record: Record) -> None:
    """The schema accepts `http://host:port`; that the port is out of range is found when
    the client is made. That is a refused reload like any other: the watcher keeps running
    the declaration it has, instead of exiting (and failing the same way on each restart)."""
    out = tmp_path / "out"
    declaration = tag_declaration(out)
    declaration["endpoint"] = emulator.url
    watch = watches(tmp_path, emulator, declaration)
    watch.apply()
    watch.start(endpoint_option=False)
    wait_for(lambda: watch.polls_of(TAG) >= 2, what="polls")
    watch.declare({**declaration, "endpoint": "http://127.0.0.1:99999/"})
    assert watch.proc is not None
    watch.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "reload refused" in watch.log(), what="the refusal")
    assert "Port out of range" in watch.log()
    code, status = watch.status()
    assert code == 1 and watch.proc.poll() is None
    emulator.set_value(TAG, "still-watched")
    wait_for(lambda: b"still-watched" in (out / "app.env").read_bytes(), what="the old declaration at work")
    record("watch-reload-unusable-endpoint", "refused, the running declaration kept, status exits 1",
           exit=watch.stop())


def test_more_notices_than_are_remembered_never_run_a_command_twice(
        watches: Callable[..., Watch], emulator: Emulator, tmp_path: Path, record: Record) -> None:
    """The watcher remembers the last 100 notices acted on per event. An answer listing more
    would push the first ones out, and they would be acted on again, poll after poll. At
    most 50 notices of one answer are considered; the rest wait until earlier ones go."""
    path = "meta-data/events/maintenance/scheduled"
    for _ in range(120):
        emulator.schedule_maintenance()
    handled = tmp_path / "handled"
    watch = watches(tmp_path, emulator, {"events": [{
        "event": "scheduled-maintenance", "poll": 1,
        "run": ["sh", "-c", f"echo \"$CC_IMDS_NOTICE_EVENTID\" >> {handled}"]}]}).start()
    wait_for(lambda: handled.exists() and len(handled.read_text().split()) >= 50, timeout=60, what="50 commands")
    # Enough polls for the first notices to have been pushed out of memory without the bound.
    polled = watch.polls_of(path)
    wait_for(lambda: watch.polls_of(path) >= polled + 12, timeout=90, what="twelve more polls")
    code = watch.stop()  # ends the commands under way: nothing runs after this
    ran = handled.read_text().split()
    assert len(ran) == len(set(ran)) == 50
    assert "scheduled-maintenance: IMDS lists 120 notices; acting on the first 50" in watch.log()
    record("watch-notice-overflow", "120 notices listed at once: the first 50 acted on, each once, over 12 more polls",
           exit=code, GET=emulator.count("GET"))


def test_sigterm_while_waiting_for_apply_s_lock_stops_at_once(
        watches: Callable[..., Watch], emulator: Emulator, tmp_path: Path, record: Record) -> None:
    out = tmp_path / "out"
    declaration = {**tag_declaration(out), "deadline": 30}
    watch = watches(tmp_path, emulator, declaration)
    watch.apply()
    before = (out / "app.env").read_bytes()
    watch.start()
    wait_for(lambda: watch.status()[1]["status"] and
             watch.status()[1]["status"]["outputs"][f"{out}/app.env"]["last_error"] is None and
             watch.status()[1]["status"]["values"]["environment"]["last_refresh"], what="a first pass")
    with open(tmp_path / "lock", "rb") as held:  # apply's lock, as a long apply would hold it
        fcntl.flock(held, fcntl.LOCK_EX)
        emulator.set_value(TAG, "waiting-for-the-lock")
        polled = watch.polls_of(TAG)
        # The poll that finds the change is the last until the lock is free: the watcher waits for it.
        wait_for(lambda: watch.polls_of(TAG) > polled, what="a poll that found the change")
        time.sleep(0.5)
        started = time.monotonic()
        code = watch.stop()
        seconds = time.monotonic() - started
    assert code == 0 and seconds < ATTEMPT + STOP_SLACK, watch.log()
    assert (out / "app.env").read_bytes() == before and temp_files(out) == []
    assert "not rewritten" not in watch.log()
    record("watch-sigterm-waiting-for-lock", "SIGTERM while apply holds the lock: stopped at once, file untouched",
           exit=code, seconds=round(seconds, 1))
