"""The cost of `cc-imds watch` while nothing happens, and how fast it acts on a spot notice.

    make bench        (or: python bench/watch.py, from the bench virtualenv; BENCH_WATCH_SECONDS=300)

The watcher runs as systemd would run it, on Python 3.9 with AL2023's library versions,
against the bundled emulator on loopback, with what a typical instance declares: three
refreshing values (instance tags every 5 minutes, the public IPv4 every 5 minutes, role
credentials before their Expiration, which the emulator sets 6 hours ahead) and one event
(spot interruption, at the default poll). Then:

1. Idle, for BENCH_WATCH_SECONDS (at least 300): resident memory sampled every 5 s, CPU time
   and IMDS requests counted after the first 30 s, and extrapolated to an hour.
2. Notice to command: a spot notice appears at a random moment, 10 times; the time from the
   notice appearing in IMDS to the command starting (the command's first act is to write
   the time).
3. Beside it, in the same run: the same watcher with the libraries it used to keep resident
   loaded at its start (PyYAML, jsonschema, Jinja2, hashlib's OpenSSL, tempfile, pickle), as
   it held them before it read its declaration in a child process: resident memory,
   sampled the same way for BASELINE_SECONDS. That is the figure the watcher is compared with.

Writes bench/watch-results.json, then regenerates bench/RESULTS.md (its "Watcher" section).
"""

from __future__ import annotations

import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import IO, Any, Dict, List, Tuple

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from cc_imds.imds.tree import load_tree  # noqa: E402
from cc_imds.testing.emulator import Emulator  # noqa: E402

PY39 = REPO / ".venv/py39/bin/python"
IDLE = max(300.0, float(os.environ.get("BENCH_WATCH_SECONDS", "300")))
WARMUP = 30.0
BASELINE_SECONDS = 60.0
# What the watcher held before it read its declaration in a child (watch/build_child.py):
# the libraries reading and checking a declaration needs, and those its helpers imported.
HELD_BEFORE = ("yaml", "jsonschema", "jinja2", "jinja2.sandbox", "jinja2.meta", "hashlib", "secrets", "tempfile",
               "pickle")
NOTICES = 10
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
CREDS = "meta-data/iam/security-credentials/app-server"


def declaration(out: Path) -> Dict[str, Any]:
    return {
        "values": {
            "tags": {"path": "meta-data/tags/instance/", "refresh": 300},
            "public_ip": {"path": "meta-data/public-ipv4", "refresh": 300},
            "key": {"path": CREDS, "key": "AccessKeyId"},
            "secret": {"path": CREDS, "key": "SecretAccessKey"},
            "token": {"path": CREDS, "key": "Token"},
        },
        "env": [
            {"path": f"{out}/tags.sh", "format": "shell", "expand": {"tags": "TAG_"}},
            {"path": f"{out}/public.env", "format": "systemd", "vars": {"PUBLIC_IP": "public_ip"}},
        ],
        "files": [{"path": f"{out}/credentials",
                   "content": "[default]\naws_access_key_id = {{ key }}\naws_secret_access_key = {{ secret }}\n"
                              "aws_session_token = {{ token }}\n"}],
        "events": [{"event": "spot-interruption", "run": ["sh", "-c", f"date +%s.%N >> {out}/notice-started"]}],
    }


def rss_kib(pid: int) -> Dict[str, int]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            fields[name] = int(value.split()[0])
    return fields


def cpu_seconds(pid: int) -> float:
    stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(stat[11]) + int(stat[12])) / CLOCK_TICKS  # utime + stime


def children(pid: int) -> int:
    return sum(1 for p in Path("/proc").iterdir() if p.name.isdigit() and _parent(p) == pid)


def _parent(proc: Path) -> int:
    try:
        return int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return -1


def requests(emulator: Emulator, since: int) -> Dict[str, int]:
    counts: Dict[str, int] = {}
    for request in emulator.requests[since:]:
        key = f"{request.method} {request.path.split('/latest/', 1)[-1]}"
        counts[key] = counts.get(key, 0) + 1
    return counts


def main() -> None:
    # Compiled once, as an installed package is: neither watcher pays for compiling modules.
    subprocess.run([str(PY39), "-m", "compileall", "-q", str(REPO / "cc_imds")], check=True)
    work = Path(tempfile.mkdtemp(prefix="cc-imds-bench-watch-"))
    out = work / "out"
    emulator = Emulator(load_tree()).start()
    emulator.rotate_credentials(expires_in=6 * 3600)
    watcher, log = start_watcher(work, emulator, held=())
    try:
        results = measure(watcher, emulator, out)
    finally:
        watcher.send_signal(signal.SIGTERM)
        watcher.wait(timeout=60)
        log.close()
        emulator.stop()
    results["rss_kib_libraries_held"] = baseline(Path(tempfile.mkdtemp(prefix="cc-imds-bench-held-")))
    python = subprocess.run([str(PY39), "-c", "import platform; print(platform.python_version())"],
                            capture_output=True, text=True, check=True).stdout.strip()
    results["machine"] = {"date": time.strftime("%Y-%m-%d"), "load": round(os.getloadavg()[1], 1), "python": python}
    (REPO / "bench/watch-results.json").write_text(json.dumps(results, indent=1) + "\n")
    print(json.dumps(results, indent=1))
    from bench.report import write_report

    write_report(json.loads((REPO / "bench/results.json").read_text()))


def start_watcher(work: Path, emulator: Emulator, held: Tuple[str, ...]) -> Tuple[subprocess.Popen[bytes], IO[bytes]]:
    """`cc-imds watch` on the bench's declaration in `work`; with `held`, those modules are
    imported first, as the watcher used to hold them."""
    out = work / "out"
    (work / "declaration.yaml").write_text(yaml.safe_dump(declaration(out)))
    env = {**os.environ, "PYTHONPATH": str(REPO), "CC_IMDS_RUN_DIR": str(work / "run"),
           "CC_IMDS_LOCK": str(work / "lock"), "CC_IMDS_CONF_DIR": "/nonexistent"}
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # as installed: compiled modules, not compiled at each start
    args = ["watch", str(work / "declaration.yaml"), "--no-conf-dir", "--endpoint", emulator.url]
    preload = "".join(f"import {name}; " for name in held)
    log = open(work / "watch.log", "wb")  # open for the watcher's whole life
    watcher = subprocess.Popen([str(PY39), "-c", f"{preload}import sys; from cc_imds.cli import main; "
                                                 f"sys.exit(main({args!r}))"],
                               stdout=log, stderr=subprocess.STDOUT, env=env)
    return watcher, log


def wait_for_outputs(out: Path) -> float:
    started = time.monotonic()
    while not (out / "credentials").exists():
        if time.monotonic() - started > 60:
            raise SystemExit("the watcher wrote nothing within 60 s")
        time.sleep(0.1)
    return started


def baseline(work: Path) -> Dict[str, Any]:
    """Resident memory of the watcher holding HELD_BEFORE, idle, sampled every 5 s."""
    emulator = Emulator(load_tree()).start()
    emulator.rotate_credentials(expires_in=6 * 3600)
    watcher, log = start_watcher(work, emulator, HELD_BEFORE)
    try:
        started = wait_for_outputs(work / "out")
        time.sleep(max(0.0, WARMUP - (time.monotonic() - started)))
        samples = []
        sampled_from = time.monotonic()
        while time.monotonic() - sampled_from < BASELINE_SECONDS:
            samples.append(rss_kib(watcher.pid)["VmRSS"])
            time.sleep(5)
    finally:
        watcher.send_signal(signal.SIGTERM)
        watcher.wait(timeout=60)
        log.close()
        emulator.stop()
    return {"median": int(statistics.median(samples)), "max": max(samples), "samples": len(samples),
            "held": list(HELD_BEFORE)}


def measure(watcher: subprocess.Popen[bytes], emulator: Emulator, out: Path) -> Dict[str, Any]:
    started = wait_for_outputs(out)
    time.sleep(max(0.0, WARMUP - (time.monotonic() - started)))
    pid = watcher.pid
    idle_from, cpu_from, seen_from = time.monotonic(), cpu_seconds(pid), len(emulator.requests)
    samples: List[int] = []
    most_children = 0
    while time.monotonic() - idle_from < IDLE:
        samples.append(rss_kib(pid)["VmRSS"])
        most_children = max(most_children, children(pid))
        time.sleep(5)
    idle = time.monotonic() - idle_from
    cpu = cpu_seconds(pid) - cpu_from
    counted = requests(emulator, seen_from)
    per_hour = 3600 / idle
    peak = rss_kib(pid)["VmHWM"]

    latencies = []
    for index in range(NOTICES):
        time.sleep(random.uniform(0, 5))  # the notice lands anywhere within a poll period
        before = (out / "notice-started").read_text().count("\n") if (out / "notice-started").exists() else 0
        emulator.spot_interruption("terminate" if index % 2 else "stop", in_seconds=120 + index)
        appeared = time.time()
        while not (out / "notice-started").exists() or (out / "notice-started").read_text().count("\n") == before:
            if time.time() - appeared > 30:
                raise SystemExit("no command within 30 s of a spot notice")
            time.sleep(0.01)
        started_at = float((out / "notice-started").read_text().splitlines()[-1])
        latencies.append(started_at - appeared)
        emulator.clear_events()
    return {
        "idle_seconds": round(idle, 1),
        "rss_kib": {"median": int(statistics.median(samples)), "max": max(samples), "peak_hwm": peak,
                    "samples": len(samples)},
        "cpu_seconds_per_hour": round(cpu * per_hour, 3),
        "requests_per_hour": {k: round(v * per_hour) for k, v in sorted(counted.items())},
        "requests_per_hour_total": round(sum(counted.values()) * per_hour),
        "children_while_idle": most_children,
        "notice_to_command_seconds": [round(x, 3) for x in latencies],
    }


def held_line(results: Dict[str, Any]) -> str:
    """Today's watcher beside the watcher as it was, from the same run."""
    held = results.get("rss_kib_libraries_held")
    if held is None:
        return ""
    return (f" In the same run, the same watcher holding what it used to keep resident after reading its "
            f"declaration ({', '.join(held['held'])}) took {held['median'] / 1024:.1f} MiB (median of "
            f"{held['samples']} samples): keeping them out of it (the declaration read in a child process, "
            f"templates compiled in the renderer's) saves {(held['median'] - results['rss_kib']['median']) / 1024:.1f} "
            "MiB.")


def report_lines(results: Dict[str, Any]) -> List[str]:
    """The "Watcher" section of bench/RESULTS.md."""
    rss = results["rss_kib"]
    latency = results["notice_to_command_seconds"]
    verdict = "Met." if max(latency) < 10 else "Missed."
    per_hour = results["requests_per_hour"]
    spot = per_hour.get("GET meta-data/spot/instance-action", 0)
    puts = per_hour.get("PUT api/token", 0)
    lines = [
        "## Watcher: `cc-imds watch` after boot",
        "",
        f"Measured {results['machine']['date']} with `bench/watch.py`, the watcher on Python "
        f"{results['machine']['python']} (AL2023 pins) against the emulator on loopback, on 2 cores shared with "
        f"other work (load average {results['machine'].get('load', 'not recorded')} over the last 5 minutes). "
        "It declares three refreshing values (instance tags and the public IPv4 every 5 minutes, role "
        "credentials before their Expiration, 6 hours ahead) and one event (spot interruption, default poll 5 s).",
        "",
        f"- **Idle memory** over {results['idle_seconds']:.0f} s: resident {rss['median'] / 1024:.1f} MiB "
        f"(median of {rss['samples']} samples, max {rss['max'] / 1024:.1f} MiB, peak {rss['peak_hwm'] / 1024:.1f} "
        f"MiB); {results['children_while_idle']} child processes while idle.{held_line(results)}",
        f"- **CPU time**: {results['cpu_seconds_per_hour']:.2f} s per hour of idle (user + system).",
        f"- **IMDS requests**: {results['requests_per_hour_total']} per hour, {spot} of them the spot notice poll "
        f"(the price of a command within 10 s); {puts} token requests (one token serves the watcher's life).",
        f"- **Notice to command** (the budget is 10 s at the default poll): median "
        f"{statistics.median(latency):.2f} s, max {max(latency):.2f} s over {len(latency)} notices. {verdict}",
        "",
        "| request | per hour |",
        "|---|---|",
        *[f"| `{name}` | {count} |" for name, count in results["requests_per_hour"].items()],
        "",
    ]
    return lines


if __name__ == "__main__":
    main()
