"""How far past its deadline does an IMDS client call end, whatever the server does?

    .venv/py313/bin/python bench/deadline_overrun.py [RUNS]   (writes bench/DEADLINE.md)

For each hostile server of the reliability suite (tests/reliability/hostile.py), a client
with a 1 s deadline fetches one value, RUNS times; the overrun is the time the call took
beyond 1 s. The same is measured for `cc-imds get` as a process, whose overrun also holds
its start-up (interpreter and imports), which comes before the deadline's clock starts.
"""

from __future__ import annotations

import compileall
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from cc_imds.errors import ImdsError  # noqa: E402
from cc_imds.imds.client import ClientSettings, ImdsClient  # noqa: E402
from tests.reliability import hostile  # noqa: E402

DEADLINE = 1.0
SERVERS: Dict[str, hostile.Behaviour] = {
    "status line and headers trickled (token PUT)": hostile.trickled_status_and_headers,
    "headers trickled": hostile.token_then(hostile.trickled_headers),
    "chunk-size line trickled": hostile.token_then(hostile.trickled_chunk_size),
    "trailers trickled": hostile.token_then(hostile.trickled_trailers),
    "body trickled": hostile.token_then(hostile.trickled_body),
    "100 Continue forever": hostile.token_then(hostile.endless_continue),
    "silent (nothing ever answered)": hostile.silent,
}


def in_process(url: str) -> float:
    client = ImdsClient(ClientSettings(endpoint=url, timeout=5, deadline=DEADLINE))
    started = time.monotonic()
    try:
        client.fetch("meta-data/instance-id")
    except ImdsError:
        pass
    finally:
        client.close()
    return time.monotonic() - started - DEADLINE


def as_process(url: str) -> float:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    command = [sys.executable, str(REPO / "bin/cc-imds"), "get", "meta-data/instance-id", "--endpoint", url,
               "--timeout", "5", "--deadline", str(DEADLINE)]
    started = time.monotonic()
    subprocess.run(command, capture_output=True, env=env, check=False)
    return time.monotonic() - started - DEADLINE


def measure(runs: int, call: Callable[[str], float]) -> Dict[str, List[float]]:
    results: Dict[str, List[float]] = {name: [] for name in SERVERS}
    for _ in range(runs):  # interleaved, so that load changes hit every server alike
        for name, behaviour in SERVERS.items():
            with hostile.HostileServer(behaviour) as server:
                results[name].append(call(server.url))
    return results


def ms(values: List[float]) -> str:
    return f"{statistics.median(values) * 1000:.0f} / {max(values) * 1000:.0f}"


def main() -> None:
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 10
    load = os.getloadavg()[0]
    compileall.compile_dir(str(REPO / "cc_imds"), quiet=1)  # byte-compiled, as installed
    inside = measure(runs, in_process)
    outside = measure(max(1, runs // 2), as_process)
    lines = [
        "# Deadline overrun",
        "",
        "How long after its deadline an IMDS client call ends, against each hostile server of",
        "`tests/reliability/hostile.py`, with `timeout: 5` and `deadline: 1` (so the deadline, not the attempt",
        "timeout, ends the call). Median / maximum in milliseconds. `cc-imds get` as a process (bin/cc-imds,",
        "byte-compiled) also holds its start-up, before the deadline's clock starts. The client speaks HTTP",
        "itself (cc_imds/imds/transport.py), every receive bounded by what is left of the deadline.",
        "",
        f"Python {platform.python_version()}, {os.cpu_count()} cores, load average {load:.1f} at the start; "
        f"{runs} calls in-process and {max(1, runs // 2)} processes per server (`bench/deadline_overrun.py`).",
        "",
        "| server | in-process call (ms) | `cc-imds get` process (ms) |",
        "|---|---|---|",
    ]
    for name in SERVERS:
        lines.append(f"| {name} | {ms(inside[name])} | {ms(outside[name])} |")
    every_inside = [v for values in inside.values() for v in values]
    every_outside = [v for values in outside.values() for v in values]
    lines += ["", f"All servers: in-process {ms(every_inside)}; as a process {ms(every_outside)}.", ""]
    text = "\n".join(lines)
    (REPO / "bench" / "DEADLINE.md").write_text(text, encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
