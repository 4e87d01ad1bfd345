#!/usr/bin/python3
"""Scrape an exporter as Prometheus does, and print what it served.

  scrape.py URL     GET URL (node_exporter's /metrics) and print the body. The exporter
                    starts with the machine; it is asked again each second, for at most
                    a minute, until it answers.
"""

from __future__ import annotations

import sys
import time
import urllib.request
from typing import List

WAIT_SECONDS = 60.0
# What Prometheus asks for: the text format, never protobuf.
ACCEPT = "text/plain;version=0.0.4"


def main(argv: List[str]) -> int:
    if len(argv) != 1:
        print("usage: scrape.py URL", file=sys.stderr)
        return 2
    give_up = time.monotonic() + WAIT_SECONDS
    while True:
        try:
            request = urllib.request.Request(argv[0], headers={"Accept": ACCEPT})
            with urllib.request.urlopen(request, timeout=30) as response:
                sys.stdout.write(response.read().decode("utf-8"))
            return 0
        except OSError as exc:
            if time.monotonic() > give_up:
                print(f"scrape.py: {argv[0]}: {exc}", file=sys.stderr)
                return 1
            time.sleep(1)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
