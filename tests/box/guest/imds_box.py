#!/usr/bin/python3
"""IMDS inside the box: cc-imds's own emulator, on the link-local addresses EC2 uses.

box-imds.service starts it before cloud-init-local.service. It reads /etc/box/boot.json,
which the host writes onto the disk before each boot:

  name     the boot's name; the request log goes to /var/lib/box/results/NAME/
  tree     the metadata tree, user-data included (flat {path: value}, as `cc-imds emulate`)
  listen   the addresses to serve on, port 80; each is added to `lo`
  outage   seconds, or null. When box-imds-outage.service (after cloud-init's network
           stage, before its config stage) signals SIGUSR1, the listeners close, so
           connections are refused as by an IMDS that is not up yet. They reopen this many
           seconds after the first refused connection attempt, whatever the machine's speed.

Every request is appended to imds-requests.jsonl with its time, listener and User-Agent
(which tells cloud-init's datasource from cc-imds); outage events go to imds-events.jsonl.

`imds_box.py set PATH VALUE` (VALUE `-` deletes) changes the running tree, as EC2 does when
a tag is edited or a spot notice is issued: it records the change under /run/box-imds,
sends SIGHUP, and returns once the change is served.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

from cc_imds.emulator import Emulator, RecordedRequest
from cc_imds.tree import tree_from_document

CONFIG = Path("/etc/box/boot.json")
RESULTS = Path("/var/lib/box/results")
RUN = Path("/run/box-imds")  # RuntimeDirectory= of box-imds.service
OVERRIDES = RUN / "overrides.json"
RELOADS = RUN / "reloads"  # how many reloads are done: `set` waits for its own
PORT = 80
NO_FIRST_ATTEMPT_AFTER = 600.0  # seconds: end an outage nobody noticed, so the boot goes on


class JsonLines:
    def __init__(self, path: Path) -> None:
        self._file = path.open("a", encoding="utf-8")
        self._lock = threading.Lock()

    def write(self, **entry: Any) -> None:
        with self._lock:
            self._file.write(json.dumps({"t": time.time(), **entry}) + "\n")
            self._file.flush()


class LoggedEmulator(Emulator):
    def __init__(self, config_tree: Any, host: str, log: JsonLines) -> None:
        super().__init__(config_tree, host=host, port=PORT)
        self._listener = host
        self._log = log

    def _record(self, request: RecordedRequest) -> None:
        super()._record(request)
        self._log.write(
            listener=self._listener,
            method=request.method,
            path=request.path,
            status=request.status,
            token=request.token,
            ua=request.user_agent or "",
        )


class ImdsBox:
    def __init__(self, config: Dict[str, Any], results: Path) -> None:
        self.config = config
        self.requests = JsonLines(results / "imds-requests.jsonl")
        self.events = JsonLines(results / "imds-events.jsonl")
        self.emulators: List[LoggedEmulator] = []
        self._lock = threading.Lock()
        self.tree = self._load_tree()

    def _load_tree(self) -> Any:
        document = dict(self.config["tree"])
        if OVERRIDES.exists():
            document.update(json.loads(OVERRIDES.read_text()))
        return tree_from_document(document)

    def open(self) -> None:
        with self._lock:
            self.emulators = [LoggedEmulator(self.tree, host, self.requests) for host in self.config["listen"]]
            for emulator in self.emulators:
                emulator.start()

    def close(self) -> None:
        with self._lock:
            for emulator in self.emulators:
                emulator.stop()
            self.emulators = []

    def reload(self) -> None:
        with self._lock:
            self.tree = self._load_tree()
            for emulator in self.emulators:
                emulator.tree = self.tree
        self.events.write(event="reload")
        done = int(RELOADS.read_text()) if RELOADS.exists() else 0
        RELOADS.write_text(str(done + 1))

    def outage(self, seconds: float) -> None:
        sniffer = SynSniffer(PORT)  # before closing, so that no attempt goes unseen
        self.close()
        self.events.write(event="outage-start")
        (RUN / "outage").touch()
        first = sniffer.next_syn(time.time() + NO_FIRST_ATTEMPT_AFTER)
        refused = 0
        if first is not None:
            self.events.write(event="first-attempt", at=first)
            refused = 1 + sniffer.count_until(first + seconds)
        reopened = time.time()  # before listening: no request can be older than this
        self.open()
        self.events.write(event="outage-end", at=reopened, refused=refused)
        sniffer.close()


class SynSniffer:
    """Sees connection attempts (TCP SYN) to a port on `lo`, including refused ones."""

    PACKET_HOST = 0  # the received copy of a looped-back frame (the other is outgoing)

    def __init__(self, port: int) -> None:
        self.port = port
        self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
        self.sock.bind(("lo", 0))
        self.sock.settimeout(0.2)

    def _syn(self) -> Optional[float]:
        try:
            frame, address = self.sock.recvfrom(256)
        except socket.timeout:
            return None
        if address[2] != self.PACKET_HOST:
            return None
        ethertype = frame[12:14]
        if ethertype == b"\x08\x00":
            protocol, tcp = frame[23], 14 + (frame[14] & 0x0F) * 4
        elif ethertype == b"\x86\xdd":
            protocol, tcp = frame[20], 14 + 40
        else:
            return None
        if protocol != 6 or len(frame) < tcp + 14:
            return None
        port, flags = int.from_bytes(frame[tcp + 2 : tcp + 4], "big"), frame[tcp + 13]
        syn_only = flags & 0x12 == 0x02
        return time.time() if port == self.port and syn_only else None

    def next_syn(self, give_up_at: float) -> Optional[float]:
        while time.time() < give_up_at:
            seen = self._syn()
            if seen is not None:
                return seen
        return None

    def count_until(self, until: float) -> int:
        count = 0
        while time.time() < until:
            if self._syn() is not None:
                count += 1
        return count

    def close(self) -> None:
        self.sock.close()


def add_address(address: str) -> None:
    if ":" in address:
        command = ["ip", "-6", "addr", "replace", f"{address}/128", "dev", "lo", "nodad"]
    else:
        command = ["ip", "addr", "replace", f"{address}/32", "dev", "lo"]
    subprocess.run(command, check=True)


def notify(message: str) -> None:
    """sd_notify(3), for Type=notify: systemd starts cloud-init-local only once this is sent."""
    address = os.environ.get("NOTIFY_SOCKET", "")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.sendto(message.encode(), address)


def serve() -> int:
    config = json.loads(CONFIG.read_text())
    results = RESULTS / config["name"]
    results.mkdir(parents=True, exist_ok=True)
    # Signals are taken synchronously in the main thread; the server threads never see them.
    signals = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1}
    signal.pthread_sigmask(signal.SIG_BLOCK, signals)
    for address in config["listen"]:
        add_address(address)
    box = ImdsBox(config, results)
    box.open()
    box.events.write(event="listening", listen=config["listen"])
    if config.get("outage"):
        (RUN / "outage-wanted").touch()
    (RUN / "pid").write_text(str(os.getpid()))
    notify("READY=1")
    outage: Optional[threading.Thread] = None
    while True:
        received = signal.sigwait(signals)
        if received == signal.SIGHUP:
            box.reload()
        elif received == signal.SIGUSR1 and config.get("outage") and outage is None:
            outage = threading.Thread(target=box.outage, args=(float(config["outage"]),), daemon=True)
            outage.start()
        elif received in (signal.SIGTERM, signal.SIGINT):
            box.close()
            return 0


def set_value(path: str, value: str) -> int:
    """Change the running tree; return once the server serves the change."""
    overrides = json.loads(OVERRIDES.read_text()) if OVERRIDES.exists() else {}
    overrides[path] = None if value == "-" else value
    OVERRIDES.write_text(json.dumps(overrides))
    before = int(RELOADS.read_text()) if RELOADS.exists() else 0
    os.kill(int((RUN / "pid").read_text()), signal.SIGHUP)
    give_up = time.monotonic() + 60
    while time.monotonic() < give_up:
        if RELOADS.exists() and int(RELOADS.read_text() or 0) > before:
            return 0
        time.sleep(0.1)
    print("imds_box.py: the server did not reload within 60 s", file=sys.stderr)
    return 1


def main(argv: List[str]) -> int:
    if argv[:1] == ["set"] and len(argv) == 3:
        return set_value(argv[1], argv[2])
    if not argv:
        return serve()
    print("usage: imds_box.py [set PATH VALUE]", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
