"""Real AWS clients read `credentials:` outputs where IMDS cannot be reached.

Each client runs inside `unshare --net`: a network namespace with only a loopback that is
down, which is what a container at hop limit 1 sees of IMDS (nothing). A connection to the
emulator's port from in there fails; the credentials the client gets came from the files.

- `process`: botocore reads `credential_process = cat FILE` from AWS_CONFIG_FILE. When the
  emulator rotates the role's keys, the watcher rewrites the file before the old keys
  expire, and the same long-running botocore session returns the new keys, with no restart:
  its own refresh runs `cat` again as Expiration nears.
- `credentials-file`: botocore reads AWS_SHARED_CREDENTIALS_FILE once. After the rewrite, the running
  session still holds the old keys; the output's `on_change` ran, and a restarted client
  gets the new ones. That is what `on_change` (a restart) is for.
- The AWS CLI (v1, from PyPI, which has no `configure export-credentials`): `aws configure
  list`, which runs no request, shows where the keys came from and their last four characters.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List

import pytest

from cc_imds.testing.emulator import Emulator
from tests.conftest import needs_root, require, wait_for
from tests.watch_harness import CREDS, Watch

CLIENT = Path(__file__).with_name("aws_client.py")
AWS = Path(sys.executable).with_name("aws")


@pytest.fixture
def clients() -> Iterator[Callable[..., Client]]:
    started: List[Client] = []

    def make(env: Dict[str, str]) -> Client:
        client = Client(env)
        started.append(client)
        return client

    yield make
    for client in started:
        client.close()


class Client:
    """tests/aws_client.py in a network namespace of its own, talked to over a pipe."""

    def __init__(self, env: Dict[str, str]) -> None:
        self.proc = subprocess.Popen(["unshare", "--net", sys.executable, str(CLIENT)], env=env,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def ask(self, command: str) -> Dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(command.encode() + b"\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()  # the client answers every line; it exits only on EOF
        assert line, self.proc.stderr.read().decode() if self.proc.stderr else "no answer"
        answer: Dict[str, Any] = json.loads(line)
        return answer

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=60)


def _prerequisites() -> None:
    needs_root("`unshare --net` makes the clients' network namespace")
    require(shutil.which("unshare") is not None, "unshare (util-linux) is not installed")
    require(importlib.util.find_spec("botocore") is not None,
            "botocore is not installed (the Makefile's test virtualenvs install it)")


def _client_env(tmp: Path, **files: str) -> Dict[str, str]:
    """A clean environment: no AWS variable of this host, and a home of its own (no .aws of this user's)."""
    home = tmp / "home"
    home.mkdir(exist_ok=True)
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(home), "LANG": "C.UTF-8",
           "AWS_CONFIG_FILE": str(tmp / "no-config"), "AWS_SHARED_CREDENTIALS_FILE": str(tmp / "no-credentials")}
    env.update(files)
    return env


def _served(emulator: Emulator) -> Dict[str, str]:
    document: Dict[str, str] = json.loads(emulator.tree.lookup(CREDS) or b"{}")
    return document


def test_botocore_follows_rotations_through_credential_process_and_the_shared_file_needs_a_restart(
        watches: Callable[..., Watch], clients: Callable[..., Client], emulator: Emulator, tmp_path: Path) -> None:
    _prerequisites()
    out = tmp_path / "out"
    restarts = tmp_path / "restarts"
    emulator.rotate_credentials(expires_in=30)  # botocore refreshes within 15 min of Expiration: always, here
    old_expiration = time.time() + 30
    first = _served(emulator)
    declaration = {"deadline": 2, "credentials": [
        {"path": f"{out}/credentials.json", "format": "process"},
        {"path": f"{out}/credentials", "format": "credentials-file", "profile": "default",
         "on_change": ["sh", "-c", f"echo \"$CC_IMDS_CHANGE\" >> {restarts}"]}]}
    watch = watches(tmp_path, emulator, declaration).start()
    wait_for(lambda: (out / "credentials").exists() and (out / "credentials.json").exists(), what="both files")

    config = tmp_path / "config"
    config.write_text(f"[default]\ncredential_process = cat {out}/credentials.json\n")
    process = clients(_client_env(tmp_path, AWS_CONFIG_FILE=str(config)))
    shared = clients(_client_env(tmp_path, AWS_SHARED_CREDENTIALS_FILE=str(out / "credentials")))
    port = emulator.url.rsplit(":", 1)[1]
    for client in (process, shared):
        probe = client.ask(f"connect 127.0.0.1 {port}")
        assert probe["connected"] is False, probe  # IMDS (the emulator) is out of reach in there

    before = process.ask("keys")
    assert (before["access_key"], before["secret_key"], before["token"], before["method"]) == \
        (first["AccessKeyId"], first["SecretAccessKey"], first["Token"], "custom-process")
    shared_before = shared.ask("keys")
    assert (shared_before["access_key"], shared_before["method"]) == (first["AccessKeyId"], "shared-credentials-file")

    emulator.rotate_credentials(expires_in=3600)
    second = _served(emulator)
    assert second["AccessKeyId"] != first["AccessKeyId"]
    wait_for(lambda: json.loads((out / "credentials.json").read_text())["AccessKeyId"] == second["AccessKeyId"],
             timeout=25, what="the watcher's rewrite of the process file")
    wait_for(lambda: f"aws_access_key_id = {second['AccessKeyId']}\n" in (out / "credentials").read_text(),
             timeout=25, what="the watcher's rewrite of the shared file")
    assert time.time() < old_expiration  # rewritten while the old keys were still valid

    after = process.ask("keys")  # the same process, the same credentials object: botocore refreshed it
    assert (after["pid"], after["object"]) == (before["pid"], before["object"])
    assert (after["access_key"], after["secret_key"], after["token"]) == \
        (second["AccessKeyId"], second["SecretAccessKey"], second["Token"])

    stale = shared.ask("keys")  # read once, at start: the running client never sees the new keys
    assert (stale["pid"], stale["access_key"]) == (shared_before["pid"], first["AccessKeyId"])
    wait_for(lambda: restarts.exists() and restarts.read_text() == "created\nupdated\n",
             what="on_change after each write of the shared file")
    shared.close()
    restarted = clients(_client_env(tmp_path, AWS_SHARED_CREDENTIALS_FILE=str(out / "credentials")))
    fresh = restarted.ask("keys")
    assert fresh["pid"] != shared_before["pid"] and fresh["access_key"] == second["AccessKeyId"]

    code, status = watch.status()
    assert code == 0, status
    assert watch.stop() == 0


def test_the_aws_cli_reads_both_files_without_imds(emulator: Emulator, tmp_path: Path) -> None:
    _prerequisites()
    require(AWS.is_file(), f"the AWS CLI is not installed beside {sys.executable}")
    from cc_imds.declaration.build import SourceDocument
    from cc_imds.pipeline import RunOptions, apply

    emulator.rotate_credentials(expires_in=3600)
    key = _served(emulator)["AccessKeyId"]
    apply([SourceDocument("test.yaml", "", {"credentials": [
        {"path": "/aws/credentials.json", "format": "process"},
        {"path": "/aws/credentials", "format": "credentials-file"}]})],
          RunOptions(endpoint=emulator.url, root=str(tmp_path)))
    config = tmp_path / "config"
    config.write_text(f"[default]\ncredential_process = cat {tmp_path}/aws/credentials.json\n")
    for files, source in (({"AWS_CONFIG_FILE": str(config)}, "custom-process"),
                          ({"AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "aws/credentials")},
                           "shared-credentials-file")):
        listed = subprocess.run(["unshare", "--net", str(AWS), "configure", "list"],
                                env=_client_env(tmp_path, **files), capture_output=True, timeout=120)
        assert listed.returncode == 0, listed.stderr.decode()
        (access_key,) = [line.split() for line in listed.stdout.decode().splitlines()
                         if line.split()[:1] == ["access_key"]]
        assert access_key[1:] == ["****************" + key[-4:], source], listed.stdout.decode()
