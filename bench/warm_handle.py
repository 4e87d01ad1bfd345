"""Contender A: cc_imds.handle in a warm process, as cloud-init calls it.

Reads a JSON job per line on stdin ({"cfg": ..., "out": ...}), runs handle, , and
answers with the elapsed seconds. Everything a run
imports is imported by a warm-up run first, as it would be after the first boot stage.
"""

from __future__ import annotations

import json
import logging
import sys
import time

import cc_imds


def main() -> None:
    log = logging.getLogger("cloudinit")
    for line in sys.stdin:
        job = json.loads(line)
        started = time.perf_counter()
        cc_imds.handle("imds", job["cfg"], None, log, [])
        print(json.dumps({"seconds": time.perf_counter() - started}), flush=True)


if __name__ == "__main__":
    main()
