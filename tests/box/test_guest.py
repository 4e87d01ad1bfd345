"""The guest's helpers that the boot tests rely on, checked on the host without booting:
telling which process (unit) made an IMDS request, when a recorded command started, what
the credentials agent reads and prints, the bounded waits, and the exporter scrape."""

from __future__ import annotations

import http.server
import importlib.util
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import ModuleType
from typing import Any, List

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
            listener = connection.getsockname()
            with connection:
                # Not this process, which holds the other end: the client.
                assert imds_box.client_pid(address, listener) == child.pid
                cgroup = Path(f"/proc/{child.pid}/cgroup").read_text().strip()
                assert imds_box.client_unit(address, listener) == cgroup.rsplit("/", 1)[-1]
        finally:
            child.communicate("", timeout=30)
    # Once nobody holds the connection (it waits out TIME_WAIT, inode 0), nobody is named.
    assert imds_box.client_unit(address, listener) == "?"
    assert imds_box.client_unit(None, None) == "?"


def test_client_pid_matches_both_ends_and_skips_a_closed_connection_on_the_same_port() -> None:
    """The client's port may also be the local end of an older connection to another port,
    in TIME_WAIT (inode 0) on a busy machine: only the connection to this server counts."""
    imds_box = guest_module("imds_box")
    with socket.socket() as old_server, socket.socket() as server:
        old_server.bind(("127.0.0.1", 0))
        old_server.listen()
        server.bind(("127.0.0.1", 0))
        server.listen()
        # An earlier connection from a port, closed by the client first: TIME_WAIT on its side.
        early = socket.socket()
        early.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        early.connect(old_server.getsockname())
        port = early.getsockname()[1]
        accepted, _ = old_server.accept()
        early.close()
        accepted.close()
        # A new connection from the same port, to this server.
        client = socket.socket()
        client.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        client.bind(("127.0.0.1", port))
        with client:
            client.connect(server.getsockname())
            connection, address = server.accept()
            with connection:
                assert address == ("127.0.0.1", port)
                tables = Path("/proc/net/tcp").read_text()
                assert tables.count(imds_box._proc_address(address)) >= 2  # both connections are listed
                assert imds_box.client_pid(address, connection.getsockname()) == os.getpid()


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


def test_agent_reads_the_default_profile_of_the_file_its_environment_names(tmp_path: Path) -> None:
    copy = tmp_path / "credentials" / "aws"
    copy.parent.mkdir()
    copy.write_text("[default]\naws_access_key_id = ASIAKEYID\naws_secret_access_key = s3cret%\n"
                    "aws_session_token = t0ken\n")
    source = tmp_path / "source"
    source.write_text("")
    env = {"PATH": "/usr/bin:/bin", "AWS_SHARED_CREDENTIALS_FILE": str(copy),
           "CREDENTIALS_DIRECTORY": str(copy.parent), "INVOCATION_ID": "0123"}
    done = subprocess.run([sys.executable, str(GUEST / "agent.py"), str(source)], env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    read = json.loads(done.stdout)
    assert {k: v for k, v in read.items() if k != "t"} == {
        "uid": os.getuid(), "invocation": "0123", "credentials_directory": str(copy.parent), "read": str(copy),
        "access_key_id": "ASIAKEYID", "has_secret": True, "has_token": True,
        # Root reads any file: the box runs the agent as a dynamic user, where this is False.
        "source_readable": True,
    }
    assert "s3cret" not in done.stdout and "t0ken" not in done.stdout


def test_wait_lines_waits_for_the_count_and_gives_up_at_its_bound(tmp_path: Path, capsys: Any) -> None:
    record = guest_module("record")
    lines = tmp_path / "starts.jsonl"
    lines.write_text("one\ntwo\n")
    assert record.wait_lines(lines, 2) == 0
    assert capsys.readouterr().out == "two\n"
    record.WAIT_LINES_SECONDS = 0.2
    assert record.wait_lines(lines, 3) == 1
    assert "has 2 line(s)" in capsys.readouterr().err


def test_scrape_prints_what_the_exporter_served_and_asks_for_the_text_format() -> None:
    asked: List[str] = []

    class Exporter(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            asked.append(self.headers.get("Accept", ""))
            body = b"# TYPE up gauge\nup 1\n"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    with http.server.HTTPServer(("127.0.0.1", 0), Exporter) as server:
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            url = f"http://127.0.0.1:{server.server_address[1]}/metrics"
            done = subprocess.run([sys.executable, str(GUEST / "scrape.py"), url],
                                  capture_output=True, text=True, timeout=60)
        finally:
            server.shutdown()
    assert (done.returncode, done.stdout, done.stderr) == (0, "# TYPE up gauge\nup 1\n", "")
    assert asked == ["text/plain;version=0.0.4"]
