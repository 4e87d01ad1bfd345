#!/usr/bin/python3
"""What the watcher's commands did, and waiting for them (the after-boot scenario).

  record.py NAME
      The command an `on_change` or an event runs: appends one line to
      /var/lib/box/results/BOOT/watch-commands.jsonl: NAME, when the watcher started it (the
      process's start, from /proc: what an interpreter's start-up costs under emulation is
      not the watcher's delay), its CC_IMDS_* environment and its stdin.

  record.py wait NAME COUNT PATH POLLS
      Wait until NAME has run COUNT times, then until the watcher has polled IMDS PATH POLLS
      more times after the last run (so that a second run would have shown by then). Prints
      what it saw; exits 1 if that did not happen within a minute.

  record.py wait-lines FILE COUNT
      Wait until FILE has COUNT lines (box-agent.service's starts, say). Prints the last;
      exits 1 if that did not happen within three minutes: the watcher asks IMDS for
      credentials that are close to their Expiration once a minute.

  record.py wait-on-change OUTPUT
      Wait until `cc-imds status --json` shows how OUTPUT's on_change ended (the watcher
      writes its status and metrics then). Prints that record; exits 1 if it did not
      within a minute.
"""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

CONFIG = Path("/etc/box/boot.json")
RESULTS = Path("/var/lib/box/results")
WATCHER_UNIT = "cc-imds-watch.service"
WAIT_SECONDS = 60.0
WAIT_LINES_SECONDS = 180.0


def results() -> Path:
    return RESULTS / json.loads(CONFIG.read_text())["name"]


def started_at() -> float:
    """This process's start (its fork by the watcher), as a wall-clock time."""
    # Field 22 of /proc/PID/stat: the start, in clock ticks since boot (CLOCK_BOOTTIME).
    ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
    since_boot = time.clock_gettime(time.CLOCK_BOOTTIME)
    return time.time() - (since_boot - ticks / os.sysconf("SC_CLK_TCK"))


def record(name: str) -> int:
    entry = {
        "name": name,
        "t": started_at(),
        "env": {k: v for k, v in sorted(os.environ.items()) if k.startswith("CC_IMDS_")},
        "stdin": sys.stdin.read() if not sys.stdin.isatty() else "",
    }
    with (results() / "watch-commands.jsonl").open("a", encoding="utf-8") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        handle.write(json.dumps(entry) + "\n")
    return 0


def lines(path: Path) -> List[Dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def wait(name: str, count: int, imds_path: str, polls: int) -> int:
    give_up = time.monotonic() + WAIT_SECONDS
    runs: List[Dict[str, Any]] = []
    later: List[Dict[str, Any]] = []
    while time.monotonic() < give_up:
        runs = [r for r in lines(results() / "watch-commands.jsonl") if r["name"] == name]
        if len(runs) >= count:
            last = runs[-1]["t"]
            later = [r for r in lines(results() / "imds-requests.jsonl")
                     if r.get("unit") == WATCHER_UNIT and r["path"].endswith("/" + imds_path) and r["t"] > last]
            if len(later) >= polls:
                print(json.dumps({"runs": len(runs), "polls_after": len(later)}))
                return 0
        time.sleep(0.2)
    print(f"record.py: {name} ran {len(runs)} time(s) and the watcher polled {imds_path} {len(later)} time(s) "
          f"after, within {WAIT_SECONDS:.0f} s; wanted {count} and {polls}", file=sys.stderr)
    return 1


def wait_lines(path: Path, count: int) -> int:
    give_up = time.monotonic() + WAIT_LINES_SECONDS
    found: List[str] = []
    while time.monotonic() < give_up:
        found = path.read_text().splitlines() if path.exists() else []
        if len(found) >= count:
            print(found[-1])
            return 0
        time.sleep(0.5)
    print(f"record.py: {path} has {len(found)} line(s) after {WAIT_LINES_SECONDS:.0f} s; wanted {count}",
          file=sys.stderr)
    return 1


def on_change_result(output: str) -> Optional[Dict[str, Any]]:
    """OUTPUT's last on_change as `cc-imds status --json` shows it, once it has ended."""
    shown = subprocess.run(["cc-imds", "status", "--json"], capture_output=True, text=True, timeout=60)
    try:
        outputs = json.loads(shown.stdout)["status"]["outputs"]
    except (ValueError, KeyError, TypeError):
        return None
    record = (outputs.get(output) or {}).get("on_change")
    return record if isinstance(record, dict) and "exit" in record else None


def wait_on_change(output: str) -> int:
    give_up = time.monotonic() + WAIT_SECONDS
    while time.monotonic() < give_up:
        record = on_change_result(output)
        if record is not None:
            print(json.dumps(record))
            return 0
        time.sleep(0.5)
    print(f"record.py: no on_change of {output} ended within {WAIT_SECONDS:.0f} s", file=sys.stderr)
    return 1


def main(argv: List[str]) -> int:
    if argv[:1] == ["wait"] and len(argv) == 5:
        return wait(argv[1], int(argv[2]), argv[3], int(argv[4]))
    if argv[:1] == ["wait-lines"] and len(argv) == 3:
        return wait_lines(Path(argv[1]), int(argv[2]))
    if argv[:1] == ["wait-on-change"] and len(argv) == 2:
        return wait_on_change(argv[1])
    if len(argv) == 1:
        return record(argv[0])
    print("usage: record.py NAME | record.py wait NAME COUNT PATH POLLS | record.py wait-lines FILE COUNT"
          " | record.py wait-on-change OUTPUT", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
