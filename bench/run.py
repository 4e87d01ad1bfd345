"""cc-imds boot-cost benchmark: wall time against the number of values, side by side.

    make bench        (or: python bench/run.py, from the bench virtualenv)

Boot cost, against the number of values: contenders each producing the same two files from
the same emulator:
  A  cc_imds.handle in a warm process (as cloud-init runs it)       Python 3.9, AL2023 pins
  B  `cc-imds apply` as a cold process                             Python 3.9, AL2023 pins
  C  bash + curl, one token, one curl per value (what users write)
  D  bash + curl, a new token per value (like per-call tools)
  E  adamchainz's ec2-metadata from PyPI, sequential                Python 3.13
Runs are interleaved (A, B, C, D, E, then again), so ratios against C are paired run by run.

Then, on Python 3.9 (AL2023 pins) and 3.13 side by side: `cc-imds get` for scripts against a
bare interpreter and curl; cold `apply` against the peer Python clients (ec2-metadata, botocore);
and what each command imports. cc-imds runs from a byte-compiled copy through its own script
(bin/cc-imds), as pip and the RPM install it.
"""

from __future__ import annotations

import json
import math
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Tuple

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from cc_imds.imds.tree import MetadataTree, load_tree  # noqa: E402
from cc_imds.testing.emulator import Emulator  # noqa: E402

PY39 = REPO / ".venv/bench39/bin/python"
PY39_CLOUDINIT = REPO / ".venv/py39/bin/python"  # the test venv, which has cloud-init's own dependencies
PYTHONS = {"3.9": PY39, "3.13": Path(sys.executable)}  # make bench runs this file with .venv/bench (3.13)
SCRIPT_RUNS = int(os.environ.get("BENCH_SCRIPT_RUNS", "21"))
PEER_RUNS = int(os.environ.get("BENCH_PEER_RUNS", "11"))
SIZES = (5, 25, 100)
LATENCIES = (0.0, 0.001, 0.005)
RUNS = int(os.environ.get("BENCH_RUNS", "7"))
TAGS = 20
CONCURRENCY = 8  # cc-imds's default
CONTENDERS = ("A", "B", "C", "D", "E")  # described in bench/report.py


def bench_tree() -> MetadataTree:
    leaves = {k: v for k, v in load_tree().leaves().items() if not k.startswith("meta-data/tags/")}
    leaves.update({f"meta-data/bench/v{i:03d}": f"value {i:03d}: it's \"quoted\"".encode() for i in range(100)})
    leaves.update({f"meta-data/tags/instance/tag{i:02d}": f"tag value {i}".encode() for i in range(TAGS)})
    return MetadataTree(leaves)


def declaration(count: int, out: Path, endpoint: str) -> Dict[str, Any]:
    values: Dict[str, Any] = {f"v{i:03d}": f"meta-data/bench/v{i:03d}" for i in range(count)}
    values["tags"] = "meta-data/tags/instance/"
    return {
        "endpoint": endpoint,
        "values": values,
        "env": [{"path": f"{out}/bench.sh", "format": "shell", "vars": {f"V{i:03d}": f"v{i:03d}" for i in range(count)},
                 "expand": {"tags": "TAG_"}}],
        "files": [{"path": f"{out}/bench.conf", "content": "first = {{ v000 }}\n"}],
    }


GNU_TIME = "/usr/bin/time"


def with_peak_rss(command: List[str], report: Path) -> List[str]:
    """Run under GNU time, whose child is exec'd from a small process: a process forked from
    this (large) Python would start with our pages counted in its peak RSS."""
    return [GNU_TIME, "-f", "%M", "-o", str(report), *command]


def timed(command: List[str], env: Dict[str, str], report: Path) -> Tuple[float, int]:
    """Wall seconds and peak RSS (KiB) of one child process and its descendants."""
    started = time.perf_counter()
    result = subprocess.run(with_peak_rss(command, report), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        raise RuntimeError(f"{command[:3]} failed: {result.stderr.decode()}")
    return elapsed, int(report.read_text().split()[-1])


def main() -> None:
    from bench import cold

    work = Path(tempfile.mkdtemp(prefix="cc-imds-bench-"))
    site, tools = cold.install(work, PYTHONS)
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(site), "CC_IMDS_CONF_DIR": "/nonexistent",
           "PYTHONDONTWRITEBYTECODE": "1", "CC_IMDS_LOCK": str(work / "lock"),
           "CC_IMDS_CACHE_DIR": str(work / "validated")}
    results: Dict[str, Any] = {"runs": RUNS, "cells": []}
    emulator = Emulator(bench_tree()).start()
    try:
        results["scripts"] = cold.scripts(emulator.url, PYTHONS, tools, env, SCRIPT_RUNS)
        print("scripts: done", file=sys.stderr)
        emulator.latency = 0.001
        results["peers"] = cold.peers(emulator.url, PYTHONS, tools, env, work, PEER_RUNS, declaration)
        print("peers: done", file=sys.stderr)
        emulator.latency = 0.0
        results["command_imports"] = cold.import_costs(emulator.url, PYTHONS, tools, env, work, 5, declaration)
        print("imports per command: done", file=sys.stderr)
        for latency in LATENCIES:
            emulator.latency = latency
            for count in SIZES:
                results["cells"].append(run_cell(emulator, count, latency, work, env, tools["3.9"]))
                print(f"latency {latency * 1000:.0f} ms, {count} values: done", file=sys.stderr)
    finally:
        emulator.stop()
        shutil.rmtree(work, ignore_errors=True)
    results["imports"] = import_costs()
    results["machine"] = machine()
    (REPO / "bench/results.json").write_text(json.dumps(results, indent=1))
    from bench.report import write_report

    write_report(results)


def run_cell(emulator: Emulator, count: int, latency: float, work: Path, env: Dict[str, str],
             cc_imds: Path) -> Dict[str, Any]:
    times: Dict[str, List[float]] = {c: [] for c in CONTENDERS}
    rss: Dict[str, int] = {c: 0 for c in CONTENDERS}
    requests: Dict[str, Tuple[int, int]] = {}
    outputs: Dict[str, Tuple[bytes, bytes]] = {}
    worker_rss = work / "worker-rss"
    worker = subprocess.Popen(with_peak_rss([str(PY39), str(REPO / "bench/warm_handle.py")], worker_rss), env=env,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert worker.stdin and worker.stdout

    def warm(out: Path) -> float:
        job = {"cfg": {"imds": declaration(count, out, emulator.url)}, "out": str(out)}
        worker.stdin.write(json.dumps(job) + "\n")  # type: ignore[union-attr]
        worker.stdin.flush()  # type: ignore[union-attr]
        return float(json.loads(worker.stdout.readline())["seconds"])  # type: ignore[union-attr]

    warm(work / "warmup")
    for run in range(RUNS):
        for contender in CONTENDERS:
            out = work / f"{contender}-{count}-{latency}-{run}"
            rss_file = work / "rss"
            emulator.clear_log()
            if contender == "A":
                seconds = warm(out)
            elif contender == "B":
                decl = work / f"decl-{count}.yaml"
                decl.write_text(json.dumps({"imds": declaration(count, out, emulator.url)}))
                seconds, peak = timed([str(cc_imds), "apply", str(decl), "--no-conf-dir"], env, rss_file)
                rss[contender] = max(rss[contender], peak)
            elif contender in ("C", "D"):
                flag = ["--token-per-value"] if contender == "D" else []
                seconds, peak = timed(["bash", str(REPO / "bench/imds-curl.sh"), *flag, emulator.url, str(count),
                                       str(out)], env, rss_file)
                rss[contender] = max(rss[contender], peak)
            else:
                seconds, peak = timed([sys.executable, str(REPO / "bench/contender_e.py"), emulator.url, str(count),
                                       str(out)], env, rss_file)
                rss[contender] = max(rss[contender], peak)
            times[contender].append(seconds)
            requests[contender] = (emulator.count("PUT"), emulator.count("GET"))
            outputs[contender] = ((out / "bench.sh").read_bytes(), (out / "bench.conf").read_bytes())
            shutil.rmtree(out)
    worker.stdin.close()
    worker.wait()
    rss["A"] = int(worker_rss.read_text().split()[-1])
    different = [c for c in CONTENDERS if outputs[c] != outputs["A"]]
    if different:
        raise SystemExit(f"contenders {different} wrote different files than A at {count} values")
    distinct = count + 1 + TAGS  # values, the tag listing, each tag
    floor = (1 + math.ceil(distinct / CONCURRENCY)) * latency
    return {"count": count, "latency_ms": latency * 1000, "times": times, "rss_kb": rss, "requests": requests,
            "distinct_paths": distinct, "floor_s": floor}


def import_costs() -> Dict[str, Any]:
    """Import cost of cc_imds on Python 3.9 with AL2023's pins: alone, and in a process that
    already imported what cloud-init's module runner imports (each of cloud-init's versions)."""
    probe = (
        "import sys, time, importlib\n"
        "preload = sys.argv[1:]\n"
        "for name in preload: importlib.import_module(name)\n"
        "before = set(sys.modules)\n"
        "t = time.perf_counter(); import cc_imds; top = time.perf_counter() - t\n"
        "t = time.perf_counter()\n"
        "import cc_imds.pipeline, cc_imds.declaration.build, cc_imds.formats.templates, jsonschema, jinja2.sandbox\n"
        "deferred = time.perf_counter() - t\n"
        "def third_party(m):\n"
        "    where = getattr(sys.modules[m], '__file__', None) or ''\n"
        "    return ('site-packages' in where or 'dist-packages' in where) and not m.startswith('cc_imds')\n"
        "new = sorted({'.'.join(m.split('.')[:2]) for m in set(sys.modules) - before if third_party(m)})\n"
        "print(top, deferred, ','.join(new))\n"
    )
    cases = {"alone": ("", [])}
    for version in ("22.2.2", "22.4.2", "25.1.4"):
        site = REPO / ".cache/cloud-init" / version / "usr/lib/python3/dist-packages"
        if site.exists():
            cases[f"after cloud-init {version}"] = (str(site), ["cloudinit.cmd.main", "cloudinit.config.modules"])
    found: Dict[str, Any] = {}
    for label, (site, preload) in cases.items():
        samples = []
        for _ in range(RUNS):
            env = {"PYTHONPATH": os.pathsep.join(p for p in (str(REPO), site) if p), "PATH": "/usr/bin:/bin",
                   "PYTHONDONTWRITEBYTECODE": "0"}
            out = subprocess.run([str(PY39_CLOUDINIT), "-c", probe, *preload], env=env, capture_output=True, text=True,
                                 check=True).stdout.split()
            samples.append((float(out[0]), float(out[1]), out[2] if len(out) > 2 else ""))
        found[label] = {
            "import_ms": statistics.median(s[0] for s in samples) * 1000,
            "deferred_ms": statistics.median(s[1] for s in samples) * 1000,
            "new_third_party": samples[-1][2],
        }
    return found


def machine() -> Dict[str, str]:
    cpu = ""
    try:
        cpu = re.search(r"model name\s*:\s*(.*)", Path("/proc/cpuinfo").read_text()).group(1)  # type: ignore[union-attr]
    except (OSError, AttributeError):
        pass
    curl = " ".join(subprocess.run(["curl", "--version"], capture_output=True, text=True).stdout.split()[:2])
    return {"cpu": cpu, "cores": str(os.cpu_count()), "os": platform.platform(), "python_e": platform.python_version(),
            "curl": curl, "date": time.strftime("%Y-%m-%d")}


def cold_only() -> None:
    """Refresh the cold-start sections (scripts, peers, imports per command) of results.json."""
    from bench import cold

    saved = json.loads((REPO / "bench/results.json").read_text())
    work = Path(tempfile.mkdtemp(prefix="cc-imds-bench-"))
    site, tools = cold.install(work, PYTHONS)
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(site), "CC_IMDS_CONF_DIR": "/nonexistent",
           "PYTHONDONTWRITEBYTECODE": "1", "CC_IMDS_LOCK": str(work / "lock"),
           "CC_IMDS_CACHE_DIR": str(work / "validated")}
    emulator = Emulator(bench_tree()).start()
    try:
        saved["scripts"] = cold.scripts(emulator.url, PYTHONS, tools, env, SCRIPT_RUNS)
        emulator.latency = 0.001
        saved["peers"] = cold.peers(emulator.url, PYTHONS, tools, env, work, PEER_RUNS, declaration)
        emulator.latency = 0.0
        saved["command_imports"] = cold.import_costs(emulator.url, PYTHONS, tools, env, work, 5, declaration)
    finally:
        emulator.stop()
        shutil.rmtree(work, ignore_errors=True)
    (REPO / "bench/results.json").write_text(json.dumps(saved, indent=1))
    from bench.report import write_report

    write_report(saved)


if __name__ == "__main__":
    if sys.argv[1:] == ["--cold-only"]:
        cold_only()
    elif sys.argv[1:] == ["--imports-only"]:  # refresh the import figures in results.json
        saved = json.loads((REPO / "bench/results.json").read_text())
        saved["imports"] = import_costs()
        (REPO / "bench/results.json").write_text(json.dumps(saved, indent=1))
        from bench.report import write_report

        write_report(saved)
    else:
        main()
