"""The watcher's faults, end to end: `cc-imds watch` as a real process against the emulator while
IMDS fails, a signal lands mid-write, a reload is invalid, or IMDS hands out what an output
cannot carry. Each ends with the right files or the old ones byte-identical, no temp file, a
status that says so, and no token or secret in the log or the status file."""

from __future__ import annotations

import json
import signal
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Tuple

from cc_imds.emulator import Emulator
from tests.watch_harness import (
    TAG,
    Watch,
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
        spotter.join()
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
    record("watch-sigterm-mid-write", f"caught mid-write {caught} time(s) in {attempt + 1}: no temp file, "
           "all or nothing", exit=code)


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
