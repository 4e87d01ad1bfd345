#!/usr/bin/python3
"""An agent that reads the instance role's keys once, when it starts (box-agent.service).

It reads them as an AWS SDK does: the [default] profile of the shared credentials file named
by AWS_SHARED_CREDENTIALS_FILE, which the unit points at the copy systemd made with
LoadCredential=. It runs as a dynamic user, so it also shows that it cannot read the file
cc-imds keeps current (root's, 0600). Prints one JSON line per start, which the unit appends
to /run/box-agent.jsonl.

  agent.py SOURCE     SOURCE: the file LoadCredential= copies from
"""

from __future__ import annotations

import configparser
import json
import os
import sys
import time
from typing import List


def can_read(path: str) -> bool:
    try:
        with open(path, "rb"):
            return True
    except PermissionError:
        return False


def main(argv: List[str]) -> int:
    if len(argv) != 1:
        print("usage: agent.py SOURCE", file=sys.stderr)
        return 2
    path = os.environ["AWS_SHARED_CREDENTIALS_FILE"]
    profile = configparser.ConfigParser(interpolation=None)
    with open(path, encoding="utf-8") as handle:
        profile.read_file(handle)
    keys = profile["default"]
    print(json.dumps({
        "t": time.time(),
        "uid": os.getuid(),
        "invocation": os.environ.get("INVOCATION_ID", ""),
        "credentials_directory": os.environ.get("CREDENTIALS_DIRECTORY", ""),
        "read": path,
        "access_key_id": keys["aws_access_key_id"],
        "has_secret": bool(keys.get("aws_secret_access_key")),
        "has_token": bool(keys.get("aws_session_token")),
        "source_readable": can_read(argv[0]),
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
