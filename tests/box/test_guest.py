"""The guest's helpers that the boot tests rely on, checked on the host without booting:
telling which process (unit) made an IMDS request, and when a recorded command started."""

from __future__ import annotations

import importlib.util
import json
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType

import pytest

from tests.conftest import needs_ipv6_loopback

GUEST = Path(__file__).resolve().parent / "guest"
CONNECT_AND_WAIT = """
import socket, sys
family = socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET
client = socket.create_connection((sys.argv[1], int(sys.argv[2])))
sys.stdin.read()  # until the test is done with us
"""


def guest_module(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"box_guest_{name}", GUEST / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("host", ["127.0.0.1", pytest.param("::1", marks=needs_ipv6_loopback)])
def test_client_unit_names_the_process_that_connected_and_its_cgroup(host: str) -> None:
    imds_box = guest_module("imds_box")
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as server:
        server.bind((host, 0))
        server.listen()
        child = subprocess.Popen([sys.executable, "-c", CONNECT_AND_WAIT, host, str(server.getsockname()[1])],
                                 stdin=subprocess.PIPE, text=True)
        try:
            connection, address = server.accept()
            with connection:
                # Not this process, which holds the other end: the client.
                assert imds_box.client_pid(address) == child.pid
                cgroup = Path(f"/proc/{child.pid}/cgroup").read_text().strip()
                assert imds_box.client_unit(address) == cgroup.rsplit("/", 1)[-1]
        finally:
            child.communicate("", timeout=30)
    # Once nobody holds the connection, nobody is named.
    assert imds_box.client_unit(address) == "?"
    assert imds_box.client_unit(None) == "?"


def test_record_takes_the_time_the_command_started_not_when_python_got_going(tmp_path: Path) -> None:
    """The spot delay is measured to the command's start: the interpreter's own start-up
    (seconds under emulation) must not count."""
    script = (GUEST / "record.py").read_text()
    probe = tmp_path / "probe.py"
    probe.write_text(script.replace('if __name__ == "__main__":', "if False:")
                     + "\nimport time, json\ntime.sleep(1.0)\nprint(json.dumps([started_at(), time.time()]))\n")
    before = time.time()
    done = subprocess.run([sys.executable, str(probe)], capture_output=True, text=True, check=True, timeout=60)
    started, now = json.loads(done.stdout)
    tick = 0.02  # /proc's start time has clock-tick resolution
    assert before - tick <= started <= now - 1.0
