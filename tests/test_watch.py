"""`cc-imds watch` as a real process against the emulator: credentials rotating, tags changing,
IMDS going down, spot notices, signals. Periods are short (declared), never the clock's."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import pytest
import yaml

from cc_imds.emulator import Emulator
from tests.conftest import REPO, run_cli

CREDS = "meta-data/iam/security-credentials/app-server"
TAG = "meta-data/tags/instance/Environment"


def wait_for(condition: Callable[[], Any], timeout: float = 30.0, what: str = "condition") -> Any:
    give_up = time.monotonic() + timeout
    while time.monotonic() < give_up:
        found = condition()
        if found:
            return found
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")


class Watch:
    """One `cc-imds watch` process with its own run directory, lock and log."""

    def __init__(self, tmp: Path, emulator: Emulator, declaration: Dict[str, Any]) -> None:
        self.tmp = tmp
        self.emulator = emulator
        self.run_dir = tmp / "run"
        self.file = tmp / "declaration.yaml"
        self.log_path = tmp / "watch.log"
        tmp.mkdir(parents=True, exist_ok=True)
        self.env = {**os.environ, "PYTHONPATH": str(REPO), "CC_IMDS_RUN_DIR": str(self.run_dir),
                    "CC_IMDS_LOCK": str(tmp / "lock"), "CC_IMDS_CONF_DIR": str(tmp / "no-conf.d")}
        self.declare(declaration)
        self.proc: Optional[subprocess.Popen[bytes]] = None

    def declare(self, declaration: Dict[str, Any]) -> None:
        self.file.write_text(yaml.safe_dump(declaration))

    def cli(self, *args: str) -> subprocess.CompletedProcess:
        return run_cli(*args, env={k: self.env[k] for k in ("CC_IMDS_RUN_DIR", "CC_IMDS_LOCK", "CC_IMDS_CONF_DIR")})

    def apply(self) -> None:
        """What the boot run would have written before the watcher starts."""
        result = self.cli("apply", str(self.file), "--no-conf-dir", "--endpoint", self.emulator.url)
        assert result.returncode == 0, result.stderr

    def start(self, *extra: str) -> Watch:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "cc_imds", "watch", str(self.file), "--no-conf-dir",
                 "--endpoint", self.emulator.url, *extra],
                stdout=log, stderr=subprocess.STDOUT, env=self.env)
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def status(self) -> Tuple[int, Dict[str, Any]]:
        result = self.cli("status", "--json")
        return result.returncode, json.loads(result.stdout)

    def stop(self, sig: int = signal.SIGTERM) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        code = self.proc.wait(timeout=60)
        self.check_no_leaks()
        return code

    def check_no_leaks(self) -> None:
        secrets = [*self.emulator.issued_tokens(), *self.emulator.issued_credentials(),
                   "demoSecretAccessKey/NotARealSecret+0123456789", "demoSessionToken//NotARealToken/ZXhhbXBsZQ=="]
        text = self.log() + "".join(p.read_text() for p in self.run_dir.glob("*.json"))
        assert [s for s in secrets if s in text] == []

    def polls_of(self, path: str) -> int:
        return self.emulator.count("GET", path=f"/latest/{path}")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def watches() -> Any:
    started: List[Watch] = []

    def make(tmp: Path, emulator: Emulator, declaration: Dict[str, Any]) -> Watch:
        watch = Watch(tmp, emulator, declaration)
        started.append(watch)
        return watch

    yield make
    for watch in started:
        watch.kill()


def digest(directory: Path) -> Dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() + f" {p.stat().st_mode:o}"
            for p in sorted(directory.iterdir()) if p.is_file()}


def temp_files(directory: Path) -> List[str]:
    return [p.name for p in directory.iterdir() if ".cc-imds-" in p.name]


# -- credentials ------------------------------------------------------------------------------
def credentials_declaration(out: Path) -> Dict[str, Any]:
    return {
        "deadline": 2,  # each poll's deadline: a failed poll ends sooner
        "values": {
            "key": {"path": CREDS, "key": "AccessKeyId"},
            "secret": {"path": CREDS, "key": "SecretAccessKey"},
            "token": {"path": CREDS, "key": "Token"},
        },
        "files": [{"path": f"{out}/credentials",
                   "content": "[default]\naws_access_key_id = {{ key }}\naws_secret_access_key = {{ secret }}\n"
                              "aws_session_token = {{ token }}\n"}],
    }


def access_key(path: Path) -> Optional[str]:
    if not path.exists():
        return None
    for line in path.read_text().splitlines():
        if line.startswith("aws_access_key_id = "):
            return line.split(" = ", 1)[1]
    return None


def current_key(emulator: Emulator) -> str:
    return str(json.loads(emulator.tree.lookup(CREDS) or b"{}")["AccessKeyId"])


def test_rotated_credentials_reach_the_file_before_the_old_expiration(
        watches: Callable[..., Watch], emulator: Emulator, tmp_path: Path) -> None:
    out = tmp_path / "out"
    emulator.rotate_credentials(expires_in=24)
    old_expiration = time.time() + 24
    first = current_key(emulator)
    watch = watches(tmp_path, emulator, credentials_declaration(out)).start()
    wait_for(lambda: access_key(out / "credentials") == first, what="the first credentials")
    assert (out / "credentials").stat().st_mode & 0o777 == 0o600
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
    assert emulator.count("PUT") == 1  # one token for the watcher's whole life


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
def tag_declaration(out: Path, **extra: Any) -> Dict[str, Any]:
    return {
        "deadline": 2,
        "values": {"iid": "meta-data/instance-id",
                   "environment": {"path": TAG, "default": "dev", "refresh": 1}},
        "env": [{"path": f"{out}/app.env", "format": "systemd", "vars": {"IID": "iid", "APP_ENV": "environment"},
                 "on_change": ["sh", "-c", f"echo \"$CC_IMDS_CHANGE $CC_IMDS_OUTPUT\" >> {out}/../on_change.log"],
                 **extra}],
    }


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


# -- IMDS down ---------------------------------------------------------------------------------
def test_imds_down_keeps_files_identical_then_recovers(
        watches: Callable[..., Watch], emulator: Emulator, tmp_path: Path) -> None:
    out = tmp_path / "out"
    watch = watches(tmp_path, emulator, tag_declaration(out))
    watch.apply()
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
    assert watch.stop() == 0


def test_credentials_expiring_while_imds_is_down_make_status_critical(
        watches: Callable[..., Watch], emulator: Emulator, tmp_path: Path) -> None:
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


# -- signals -----------------------------------------------------------------------------------
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
        watches: Callable[..., Watch], emulator: Emulator, tmp_path: Path) -> None:
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


def test_sighup_reloads_and_an_invalid_declaration_keeps_the_running_one(
        watches: Callable[..., Watch], emulator: Emulator, tmp_path: Path) -> None:
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
    assert watch.stop() == 0


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


def test_an_output_that_cannot_carry_a_new_value_keeps_its_file_and_holds_back_no_other(
        watches: Callable[..., Watch], emulator: Emulator, tmp_path: Path) -> None:
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
    assert watch.stop() == 0


def test_a_flood_of_notices_is_acted_on_a_few_at_a_time_each_once(
        watches: Callable[..., Watch], emulator: Emulator, tmp_path: Path) -> None:
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
    assert watch.stop() == 0
