"""A long-running AWS SDK client for tests/test_credentials_clients.py: one botocore session,
kept for the process's life, answering commands read line by line from standard input with
one JSON line each. It runs inside a network namespace of its own, where IMDS cannot be
reached: whatever credentials it finds come from the files its environment names
(AWS_CONFIG_FILE with `credential_process`, or AWS_SHARED_CREDENTIALS_FILE).

Commands:
  connect HOST PORT   try a TCP connection (to show that nothing is reachable from here)
  keys                the session's current credentials (botocore refreshes them as it would
                      for any API call: credential_process runs again near Expiration)
"""

from __future__ import annotations

import json
import os
import socket
import sys
from typing import Any, Dict, List

import botocore.session


def main() -> int:
    session = botocore.session.Session()
    credentials = None
    for line in sys.stdin:
        words: List[str] = line.split()
        answer: Dict[str, Any] = {"pid": os.getpid()}
        if words[:1] == ["connect"]:
            try:
                socket.create_connection((words[1], int(words[2])), timeout=2).close()
                answer["connected"] = True
            except OSError as exc:
                answer.update(connected=False, error=exc.strerror or str(exc))
        elif words == ["keys"]:
            if credentials is None:
                credentials = session.get_credentials()  # once: the same object answers every later call
            frozen = credentials.get_frozen_credentials()
            answer.update(access_key=frozen.access_key, secret_key=frozen.secret_key, token=frozen.token,
                          method=credentials.method, object=id(credentials))
        else:
            answer["error"] = f"unknown command {line.strip()!r}"
        print(json.dumps(answer), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
