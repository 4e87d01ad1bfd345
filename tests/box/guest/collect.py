#!/usr/bin/python3
"""Gather what the host checks, then power the box off (box-collect.service).

It runs once cloud-init's final stage and the consumer unit are done. First it runs the
boot's `after_boot` commands (scenarios that act on the running system), then it writes
into /var/lib/box/results/NAME/, which the host reads from the disk once the VM is off:

  after-boot.json   when the commands started, and each one's exit status and output
  status.json       `cloud-init status --long --format json`, and its exit status
  outputs.json      for each path the scenario inspects: inode, mtime, mode, owner, content
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
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        return {"command": command, "rc": None, "stdout": str(exc.stdout or ""), "stderr": "timed out"}
    return {"command": command, "rc": done.returncode, "stdout": done.stdout, "stderr": done.stderr}


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


def collect(config: Dict[str, Any], out: Path) -> None:
    started = time.time()
    after_boot = [run(["/bin/sh", "-c", command], AFTER_BOOT_TIMEOUT) for command in config.get("after_boot", [])]
    (out / "after-boot.json").write_text(json.dumps({"started": started, "commands": after_boot}, indent=1))

    status = run(["cloud-init", "status", "--long", "--format", "json"])
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
