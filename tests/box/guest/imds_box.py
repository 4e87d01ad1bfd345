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
(which tells cloud-init's datasource from cc-imds) and, for cc-imds's requests, the systemd
unit of the process that made it (the boot run, the watcher, a script); outage events go
to imds-events.jsonl.

The emulator's control endpoint (`cc-imds emulate --control-port`, cc_imds.testing.control) listens
on 127.0.0.1:1339 and changes the running tree, as EC2 does when a tag is edited or a spot
notice is issued. Its clients in the box:

  imds_box.py set PATH VALUE       serve VALUE at PATH (VALUE `-` deletes it)
  imds_box.py spot ACTION SECONDS  issue a spot interruption notice; its time goes to
                                   imds-events.jsonl (`spot-notice`)
  imds_box.py rotate               new keys for the role, expiring in six hours, as EC2
                                   rotates them; the new key id and Expiration go to
                                   imds-events.jsonl (`credentials-rotated`)
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from cc_imds.imds.tree import tree_from_document
from cc_imds.testing import emulator as emulator_module
from cc_imds.testing.control import ControlServer
from cc_imds.testing.emulator import Emulator, RecordedRequest

CONFIG = Path("/etc/box/boot.json")
RESULTS = Path("/var/lib/box/results")
RUN = Path("/run/box-imds")  # RuntimeDirectory= of box-imds.service
PORT = 80
CONTROL = ("127.0.0.1", 1339)
NO_FIRST_ATTEMPT_AFTER = 600.0  # seconds: end an outage nobody noticed, so the boot goes on


class JsonLines:
    def __init__(self, path: Path) -> None:
        self._file = path.open("a", encoding="utf-8")
        self._lock = threading.Lock()

    def write(self, **entry: Any) -> None:
        with self._lock:
            self._file.write(json.dumps({"t": time.time(), **entry}) + "\n")
            self._file.flush()


_client = threading.local()  # the connection a handler thread serves


class _Handler(emulator_module._Handler):
    def setup(self) -> None:
        super().setup()
        _client.address = self.client_address
        _client.server = self.request.getsockname()


class LoggedEmulator(Emulator):
    def __init__(self, config_tree: Any, host: str, log: JsonLines) -> None:
        super().__init__(config_tree, host=host, port=PORT)
        self._server.RequestHandlerClass = _Handler
        self._listener = host
        self._log = log

    def _record(self, request: RecordedRequest) -> None:
        super()._record(request)
        agent = request.user_agent or ""
        # Only cc-imds's requests are attributed: cloud-init's crawl is told by its agent,
        # and the lookup is cheap but not free under emulation.
        unit = client_unit(getattr(_client, "address", None), getattr(_client, "server", None)) \
            if agent.startswith("cc-imds/") else ""
        self._log.write(
            listener=self._listener,
            method=request.method,
            path=request.path,
            status=request.status,
            token=request.token,
            ua=agent,
            unit=unit,
        )


def _proc_address(address: Tuple[Any, ...]) -> str:
    """A socket address as /proc/net/tcp{,6} writes it: the address in host byte order, in
    32-bit words, then the port, in upper-case hex."""
    host, port = address[0], address[1]
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    packed = socket.inet_pton(family, host)
    words = (packed[i : i + 4] for i in range(0, len(packed), 4))
    return "".join(int.from_bytes(w, sys.byteorder).to_bytes(4, "big").hex() for w in words).upper() + f":{port:04X}"


def client_pid(address: Optional[Tuple[Any, ...]], server: Optional[Tuple[Any, ...]]) -> Optional[int]:
    """The process that holds the client end of a loopback connection from `address` to
    `server`: the socket's inode from /proc/net, then the process with it open (newest
    first: the client is a recent process). None when it cannot be told.

    Both ends are matched: the client's port alone may also be the local end of an older
    connection to another port, left in TIME_WAIT (inode 0), on a busy machine."""
    if address is None or server is None:
        return None
    local, remote = _proc_address(address), _proc_address(server)
    inode = ""
    for table in ("/proc/net/tcp6", "/proc/net/tcp"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[1] == local and fields[2] == remote and fields[9] != "0":
                inode = fields[9]
    if not inode:
        return None
    link = f"socket:[{inode}]"
    for pid in sorted((int(p) for p in os.listdir("/proc") if p.isdigit()), reverse=True):
        try:
            if any(os.readlink(f"/proc/{pid}/fd/{fd}") == link for fd in os.listdir(f"/proc/{pid}/fd")):
                return pid
        except OSError:  # gone meanwhile, or a kernel thread
            continue
    return None


def client_unit(address: Optional[Tuple[Any, ...]], server: Optional[Tuple[Any, ...]]) -> str:
    """The systemd unit (the cgroup's last part) of the process on the other end; "?" when
    it cannot be told."""
    pid = client_pid(address, server)
    try:
        return "?" if pid is None else Path(f"/proc/{pid}/cgroup").read_text().strip().rsplit("/", 1)[-1]
    except OSError:
        return "?"


class ImdsBox:
    def __init__(self, config: Dict[str, Any], results: Path) -> None:
        self.config = config
        self.requests = JsonLines(results / "imds-requests.jsonl")
        self.events = JsonLines(results / "imds-events.jsonl")
        self.emulators: List[LoggedEmulator] = []
        self._lock = threading.Lock()
        # One tree for every listener, through outages too. The control endpoint changes it
        # through an emulator of its own that never listens: the listeners come and go.
        self.tree = tree_from_document(dict(config["tree"]))
        self.control = ControlServer(Emulator(self.tree, host=CONTROL[0]), host=CONTROL[0], port=CONTROL[1])

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
    signals = {signal.SIGTERM, signal.SIGINT, signal.SIGUSR1}
    signal.pthread_sigmask(signal.SIG_BLOCK, signals)
    for address in config["listen"]:
        add_address(address)
    box = ImdsBox(config, results)
    box.open()
    box.control.start()
    box.events.write(event="listening", listen=config["listen"])
    if config.get("outage"):
        (RUN / "outage-wanted").touch()
    notify("READY=1")
    outage: Optional[threading.Thread] = None
    while True:
        received = signal.sigwait(signals)
        if received == signal.SIGUSR1 and config.get("outage") and outage is None:
            outage = threading.Thread(target=box.outage, args=(float(config["outage"]),), daemon=True)
            outage.start()
        elif received in (signal.SIGTERM, signal.SIGINT):
            box.control.stop()
            box.close()
            return 0


def control(method: str, target: str, body: bytes = b"") -> Any:
    """One call to the control endpoint; its JSON answer, or SystemExit with its error."""
    connection = http.client.HTTPConnection(*CONTROL, timeout=30)
    try:
        connection.request(method, target, body=body)
        response = connection.getresponse()
        answer = json.loads(response.read() or b"null")
    finally:
        connection.close()
    if response.status != 200:
        raise SystemExit(f"imds_box.py: {method} {target}: {response.status} {answer}")
    return answer


def set_value(path: str, value: str) -> int:
    if value == "-":
        control("DELETE", f"/tree/{path}")
    else:
        control("PUT", f"/tree/{path}", value.encode())
    return 0


def spot(action: str, seconds: str) -> int:
    """A spot interruption notice, and when it appeared: the control endpoint answers once
    the emulator serves it."""
    before = time.time()
    notice = control("POST", f"/events/spot-interruption?action={action}&in={seconds}")
    config = json.loads(CONFIG.read_text())
    JsonLines(RESULTS / config["name"] / "imds-events.jsonl").write(
        event="spot-notice", before=before, at=time.time(), notice=notice
    )
    print(json.dumps(notice))
    return 0


def rotate() -> int:
    """New credentials for every role; what each role's document now says (its key id and
    Expiration: never the secret) goes to the events."""
    before = time.time()
    rotated = control("POST", "/credentials/rotate")["rotated"]
    tree = control("GET", "/tree")
    config = json.loads(CONFIG.read_text())
    for path in rotated:
        document = tree[path] if isinstance(tree[path], dict) else json.loads(tree[path])
        JsonLines(RESULTS / config["name"] / "imds-events.jsonl").write(
            event="credentials-rotated", before=before, at=time.time(), path=path,
            access_key_id=document["AccessKeyId"], expiration=document["Expiration"],
        )
    print(json.dumps(rotated))
    return 0


def main(argv: List[str]) -> int:
    if argv[:1] == ["set"] and len(argv) == 3:
        return set_value(argv[1], argv[2])
    if argv[:1] == ["spot"] and len(argv) == 3:
        return spot(argv[1], argv[2])
    if argv == ["rotate"]:
        return rotate()
    if not argv:
        return serve()
    print("usage: imds_box.py [set PATH VALUE | spot ACTION SECONDS | rotate]", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
