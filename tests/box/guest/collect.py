#!/usr/bin/python3
"""Gather what the host checks, then power the box off (box-collect.service).

It runs once cloud-init's final stage and the consumer unit are done. First it runs the
boot's `after_boot` commands (scenarios that act on the running system), then it writes
into /var/lib/box/results/NAME/, which the host reads from the disk once the VM is off:

  after-boot.json   when the commands started, and each one's exit status and output
  watcher.json      cc-imds-watch.path and .service as systemd sees them, and the
                    watcher's TRIGGER_* environment: before and after the commands
  status.json       `cloud-init status --long --format json`, and its exit status; before
                    22.3, which has no --format, `cloud-init status --long` and the
                    /run/cloud-init/status.json it reads (`status_v1`)
  outputs.json      for each path the scenario inspects: inode, mtime, mode, owner, content
  outputs-at-boot.json   the same, before the after-boot commands (what the boot left)
  consumer.json     the consumer unit's state and the environment it ran with
  user-data.txt     the user-data cloud-init's datasource found
  journal.txt       this boot's journal
  done              written last: the collection completed
"""

from __future__ import annotations

import grp
import json
import os
import pwd
import shutil
import subprocess
import time
import traceback
from pathlib import Path
from typing import Any, Dict, List, Optional

CONFIG = Path("/etc/box/boot.json")
RESULTS = Path("/var/lib/box/results")
CONSUMER_ENV = Path("/run/box-consumer.env")
AFTER_BOOT_TIMEOUT = 300


def run(command: List[str], timeout: float = 300) -> Dict[str, Any]:
    started = time.monotonic()
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        return {"command": command, "rc": None, "stdout": str(exc.stdout or ""), "stderr": "timed out",
                "seconds": time.monotonic() - started}
    return {"command": command, "rc": done.returncode, "stdout": done.stdout, "stderr": done.stderr,
            "seconds": time.monotonic() - started}


def describe(path: str) -> Optional[Dict[str, Any]]:
    try:
        info = os.lstat(path)
        content = Path(path).read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return None
    return {
        "inode": info.st_ino,
        "mtime_ns": info.st_mtime_ns,
        "mode": oct(info.st_mode & 0o7777),
        "owner": pwd.getpwuid(info.st_uid).pw_name,
        "group": grp.getgrgid(info.st_gid).gr_name,
        "content": content,
    }


def environment(path: Path) -> Dict[str, str]:
    if not path.exists():
        return {}
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)
    return dict(pairs)


WATCH_PROPERTIES = {
    "cc-imds-watch.path": "ActiveState,UnitFileState,UnitFilePreset,Triggers",
    "cc-imds-watch.service": (
        "ActiveState,SubState,Result,MainPID,NRestarts,TriggeredBy,UnitFileState,ExecMainStartTimestampMonotonic"
    ),
}


def watcher() -> Dict[str, Any]:
    """The watcher's units, their start as a wall-clock time, and how the service was started
    (systemd gives a unit that a path unit starts TRIGGER_UNIT and TRIGGER_PATH, from after
    Debian 11's 247 on), and systemd's version."""
    state: Dict[str, Any] = {"systemd": int(run(["systemctl", "--version"])["stdout"].split()[1])}
    for unit, properties in WATCH_PROPERTIES.items():
        shown = run(["systemctl", "show", unit, f"--property={properties}"])
        state[unit] = dict(line.split("=", 1) for line in shown["stdout"].splitlines() if "=" in line)
    service = state["cc-imds-watch.service"]
    started = int(service.get("ExecMainStartTimestampMonotonic") or 0)
    service["started"] = time.time() - (time.monotonic() - started / 1e6) if started else None
    trigger: Dict[str, str] = {}
    if service.get("MainPID", "0") != "0":
        try:
            environ = Path(f"/proc/{service['MainPID']}/environ").read_bytes().split(b"\0")
        except OSError:
            environ = []
        pairs = (entry.decode(errors="replace").split("=", 1) for entry in environ if b"=" in entry)
        trigger = {k: v for k, v in pairs if k.startswith("TRIGGER_")}
    service["trigger"] = trigger
    return state


def collect(config: Dict[str, Any], out: Path) -> None:
    before = watcher()
    at_boot = {path: describe(path) for path in config.get("inspect", [])}
    (out / "outputs-at-boot.json").write_text(json.dumps(at_boot, indent=1))
    started = time.time()
    after_boot = [run(["/bin/sh", "-c", command], AFTER_BOOT_TIMEOUT) for command in config.get("after_boot", [])]
    (out / "after-boot.json").write_text(json.dumps({"started": started, "commands": after_boot}, indent=1))
    (out / "watcher.json").write_text(json.dumps({"before": before, "after": watcher()}, indent=1))

    status = run(["cloud-init", "status", "--long", "--format", "json"])
    if status["rc"] == 2 and "--format" in status["stderr"]:
        status = run(["cloud-init", "status", "--long"])
        status["status_v1"] = json.loads(Path("/run/cloud-init/status.json").read_text())["v1"]
    (out / "status.json").write_text(json.dumps(status, indent=1))

    outputs = {path: describe(path) for path in config.get("inspect", [])}
    (out / "outputs.json").write_text(json.dumps(outputs, indent=1))

    unit = run(["systemctl", "show", "box-consumer.service", "--property=ActiveState,Result,ExecMainStatus"])
    consumer = {"unit": dict(line.split("=", 1) for line in unit["stdout"].splitlines() if "=" in line),
                "environment": environment(CONSUMER_ENV)}
    (out / "consumer.json").write_text(json.dumps(consumer, indent=1))

    user_data = Path("/var/lib/cloud/instance/user-data.txt")
    if user_data.exists():
        shutil.copyfile(user_data, out / "user-data.txt")
    journal = run(["journalctl", "--boot", "--no-pager", "--output=short-monotonic"])
    (out / "journal.txt").write_text(journal["stdout"])


def main() -> None:
    config = json.loads(CONFIG.read_text())
    out = RESULTS / config["name"]
    out.mkdir(parents=True, exist_ok=True)
    try:
        collect(config, out)
    except Exception:
        (out / "collect-error.txt").write_text(traceback.format_exc())
        raise
    finally:
        (out / "done").touch()
        os.sync()
        subprocess.run(["systemctl", "poweroff", "--no-block"], check=False)


if __name__ == "__main__":
    main()
