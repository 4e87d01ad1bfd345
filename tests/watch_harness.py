"""A `cc-imds watch` process for tests: its own run directory, lock and log, against an
emulator, with the helpers the after-boot tests share (tests/test_watch.py, and the watcher's
scenarios in tests/reliability); and a watcher in the test's own process, driven pass by pass
on an injected clock (tests/test_watch_fleet.py, tests/test_lifecycle.py)."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import yaml

from cc_imds.declaration.build import Declaration
from cc_imds.testing.emulator import Emulator
from cc_imds.watch.watcher import Watcher, WatchOptions
from tests.conftest import CLI, SIGINT_STARTS, cli_env, run_cli, sigint_at
from tests.conftest import wait_for as wait_for  # the watcher tests import it from here

CREDS = "meta-data/iam/security-credentials/app-server"
TAG = "meta-data/tags/instance/Environment"


class Watch:
    """One `cc-imds watch` process with its own run directory, lock and log."""

    def __init__(self, tmp: Path, emulator: Emulator, declaration: Dict[str, Any]) -> None:
        self.tmp = tmp
        self.emulator = emulator
        self.run_dir = tmp / "run"
        self.state_dir = tmp / "state"  # survives a simulated reboot, which empties run_dir
        self.file = tmp / "declaration.yaml"
        self.log_path = tmp / "watch.log"
        tmp.mkdir(parents=True, exist_ok=True)
        self.env = cli_env({"CC_IMDS_RUN_DIR": str(self.run_dir), "CC_IMDS_LOCK": str(tmp / "lock"),
                            "CC_IMDS_CONF_DIR": str(tmp / "no-conf.d"), "CC_IMDS_STATE_DIR": str(self.state_dir)})
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

    def start(self, *extra: str, endpoint_option: bool = True, sigint: str = "sigint-ignored") -> Watch:
        """`endpoint_option=False`: the declaration's own `endpoint` is used, as under systemd.
        `sigint`: how SIGINT starts (tests.conftest.SIGINT_STARTS), never inherited from pytest;
        no standard input, as under systemd or a background job."""
        endpoint = ["--endpoint", self.emulator.url] if endpoint_option else []
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [*CLI, "watch", str(self.file), "--no-conf-dir", *endpoint, *extra],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=self.env,
                preexec_fn=sigint_at(SIGINT_STARTS[sigint]))
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
            self.proc.wait(timeout=60)


# -- a watcher in this process, one pass at a time ---------------------------------------------
def in_process(options: WatchOptions, declaration: Declaration) -> Watcher:
    """A Watcher a test drives with one_pass() instead of run(): the wake pipe run() makes
    (commands' ends wake the loop), then `declaration` adopted."""
    watcher = Watcher(lambda: [], options)
    watcher._wake_r, watcher._wake_w = os.pipe()
    for fd in (watcher._wake_r, watcher._wake_w):
        os.set_blocking(fd, False)
    assert watcher._adopt(declaration)
    return watcher


def one_pass(watcher: Watcher) -> None:
    """One pass of the loop, then the ends of the commands it started: waits (bounded) until
    no command runs, so what a test checks next shows every run the pass started, and only those."""
    watcher._pass()
    wait_for(lambda: watcher.runner.busy() == 0, what="the pass's commands to end")
    watcher._collect_results()


def close_in_process(watcher: Watcher) -> None:
    watcher.runner.stop()
    if watcher.client is not None:
        watcher.client.close()
    os.close(watcher._wake_r)
    os.close(watcher._wake_w)


def digest(directory: Path) -> Dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() + f" {p.stat().st_mode:o}"
            for p in sorted(directory.iterdir()) if p.is_file()}


def temp_files(directory: Path) -> List[str]:
    return [p.name for p in directory.iterdir() if ".cc-imds-" in p.name]


# -- declarations and readers the tests share --------------------------------------------
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


def tag_declaration(out: Path, **extra: Any) -> Dict[str, Any]:
    log = out.parent / "on_change.log"
    return {
        "deadline": 2,
        "values": {"iid": "meta-data/instance-id",
                   "environment": {"path": TAG, "default": "dev", "refresh": 1}},
        "env": [{"path": f"{out}/app.env", "format": "systemd", "vars": {"IID": "iid", "APP_ENV": "environment"},
                 "on_change": ["sh", "-c", f"echo \"$CC_IMDS_CHANGE $CC_IMDS_OUTPUT\" >> {log}"],
                 **extra}],
    }
