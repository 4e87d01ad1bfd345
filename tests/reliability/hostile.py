"""Hostile HTTP servers on loopback, written on raw sockets so that they can do what no
polite server does: trickle a status line, headers, a chunk-size line or trailers one byte
at a time, or answer `100 Continue` forever. And hostile habits for the emulator: token
churn, odd TTL echoes, unusable tokens.

Each connection runs in a thread. The server reads one request head at a time, records
it, and hands it to a behaviour (a function of the request and the connection). Every
trickle stops after `HOLD` seconds, so a client that does not bound its requests makes a
test fail slowly instead of hanging it.
"""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional

from cc_imds.testing.emulator import TTL_HEADER, Emulator, RecordedRequest, _Handler

HOLD = 30.0  # how long a trickle lasts at most: far beyond every deadline the tests use
TRICKLE = 0.25  # seconds between bytes: well inside any per-read timeout
TOKEN = "hostileServerToken-0123456789abcdefghijklmnopqrstuvwxyz"


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    headers: Dict[str, str]  # names lower-cased


class Connection:
    """One accepted connection, as a behaviour sees it."""

    def __init__(self, sock: socket.socket, stopping: threading.Event) -> None:
        self.sock = sock
        self.stopping = stopping
        self.closed = False

    def send(self, data: bytes) -> None:
        try:
            self.sock.sendall(data)
        except OSError:
            self.closed = True

    def trickle(self, data: bytes, interval: float = TRICKLE) -> None:
        """Send `data` one byte per `interval`, until it is all sent, HOLD passes, the
        client goes away or the server stops."""
        started = time.monotonic()
        for i in range(len(data)):
            if self.closed or self.stopping.is_set() or time.monotonic() - started > HOLD:
                return
            self.send(data[i : i + 1])
            self.stopping.wait(interval)

    def hold(self) -> None:
        """Say nothing, keep the connection open, until HOLD passes or the server stops."""
        self.stopping.wait(HOLD)


Behaviour = Callable[[Request, Connection], None]


def answer(conn: Connection, status: int, body: bytes = b"", headers: Optional[Dict[str, str]] = None) -> None:
    head = f"HTTP/1.1 {status} X\r\nContent-Length: {len(body)}\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    conn.send(head.encode() + b"\r\n" + body)


def token_then(get: Behaviour, token: str = TOKEN) -> Behaviour:
    """Answer the token PUT properly; GETs get the hostile behaviour."""

    def behave(request: Request, conn: Connection) -> None:
        if request.method == "PUT":
            ttl = request.headers.get("x-aws-ec2-metadata-token-ttl-seconds", "")
            answer(conn, 200, token.encode(), {"X-aws-ec2-metadata-token-ttl-seconds": ttl})
        else:
            get(request, conn)

    return behave


# -- the ways of trickling --------------------------------------------------------------------
ENDLESS = 100_000  # more bytes than HOLD lets through


def trickled_status_and_headers(request: Request, conn: Connection) -> None:
    conn.trickle(b"HTTP/1.1 200 OK\r\nX-Padding: " + b"a" * ENDLESS)


def trickled_headers(request: Request, conn: Connection) -> None:
    conn.send(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n")
    conn.trickle(b"X-Padding: " + b"a" * ENDLESS)


def trickled_chunk_size(request: Request, conn: Connection) -> None:
    conn.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
    conn.trickle(b"0" * ENDLESS)  # leading zeros: a valid, endless chunk-size line


def trickled_trailers(request: Request, conn: Connection) -> None:
    conn.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n")
    conn.trickle(b"X-Trailer: " + b"a" * ENDLESS)


def trickled_body(request: Request, conn: Connection) -> None:
    conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n")
    conn.trickle(b"b" * 100_000)


def endless_continue(request: Request, conn: Connection) -> None:
    started = time.monotonic()
    while not conn.closed and not conn.stopping.is_set() and time.monotonic() - started < HOLD:
        conn.send(b"HTTP/1.1 100 Continue\r\n\r\n")
        conn.stopping.wait(TRICKLE)


# Answers that break HTTP/1.1's framing: read one way by a lenient client and another by a
# proxy or cache, they are how responses are smuggled. A strict client refuses them.
MALFORMED = {
    "length-and-chunked": b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
                          b"5\r\nhello\r\n0\r\n\r\n",
    "two-lengths": b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
    "folded-header": b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Folded: a\r\n b\r\n\r\nhello",
    "bad-chunk-size": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n+5\r\nhello\r\n0\r\n\r\n",
}


def malformed(kind: str) -> Behaviour:
    def behave(request: Request, conn: Connection) -> None:
        conn.send(MALFORMED[kind])

    return behave


def silent(request: Request, conn: Connection) -> None:
    conn.hold()


class HostileServer:
    """A loopback server answering every request with `behaviour`. Use as a context manager."""

    def __init__(self, behaviour: Behaviour, host: str = "127.0.0.1") -> None:
        self.behaviour = behaviour
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._listener = socket.socket(family, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind((host, 0))
        self._listener.listen(64)
        self._listener.settimeout(0.05)  # accept() wakes up to see the server stopping
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._requests: List[Request] = []
        self._connections = 0
        self._threads: List[threading.Thread] = []

    @property
    def url(self) -> str:
        host, port = self._listener.getsockname()[:2]
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    @property
    def requests(self) -> List[Request]:
        with self._lock:
            return list(self._requests)

    def count(self, method: str) -> int:
        return sum(1 for r in self.requests if r.method == method)

    @property
    def connections(self) -> int:
        with self._lock:
            return self._connections

    def __enter__(self) -> HostileServer:
        thread = threading.Thread(target=self._accept, name="hostile-accept", daemon=True)
        thread.start()
        self._threads.append(thread)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stopping.set()
        for thread in self._threads:
            thread.join(timeout=5)
        self._listener.close()

    def _accept(self) -> None:
        while not self._stopping.is_set():
            try:
                sock, _ = self._listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            with self._lock:
                self._connections += 1
            thread = threading.Thread(target=self._serve, args=(sock,), name="hostile-conn", daemon=True)
            thread.start()
            self._threads.append(thread)

    def _serve(self, sock: socket.socket) -> None:
        conn = Connection(sock, self._stopping)
        buffer = b""
        try:
            sock.settimeout(0.1)
            while not conn.closed and not self._stopping.is_set():
                while b"\r\n\r\n" not in buffer:
                    try:
                        data = sock.recv(65536)
                    except socket.timeout:
                        if self._stopping.is_set():
                            return
                        continue
                    if not data:
                        return
                    buffer += data
                head, buffer = buffer.split(b"\r\n\r\n", 1)
                request = _parse(head)
                with self._lock:
                    self._requests.append(request)
                self.behaviour(request, conn)
        except OSError:
            pass
        finally:
            sock.close()


def _parse(head: bytes) -> Request:
    lines = head.decode("latin-1").split("\r\n")
    method, path, _ = [*lines[0].split(" "), "", ""][:3]
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return Request(method, path, headers)


class FullBacklog:
    """A listening socket whose accept queue is full: the kernel drops new SYNs, so a
    connect() hangs, as it does when a route black-holes packets."""

    def __init__(self) -> None:
        self._listener = socket.socket()
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(0)  # room for one connection, which the filler takes
        self._filler = socket.socket()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._listener.getsockname()[1]}"

    def __enter__(self) -> FullBacklog:
        self._filler.settimeout(5)
        self._filler.connect(self._listener.getsockname())
        return self

    def __exit__(self, *exc: object) -> None:
        self._filler.close()
        self._listener.close()


# -- hostile habits for the emulator -----------------------------------------------------------
def churn(emulator: Emulator, every: int) -> List[int]:
    """Revoke every token after each `every` GETs, counted as they arrive (answered or
    refused). Returns a one-item list that counts the revocations."""
    lock = threading.Lock()
    gets, revocations = [0], [0]
    original = emulator._record

    def record(request: RecordedRequest) -> None:
        original(request)
        if request.method == "GET":
            with lock:
                gets[0] += 1
                if gets[0] % every == 0:
                    revocations[0] += 1
                    emulator.revoke_tokens()

    emulator._record = record  # type: ignore[method-assign]
    return revocations


def echo_ttl(emulator: Emulator, echo: str) -> None:
    """Answer the token PUT with `echo` as the TTL echo, whatever was asked."""

    class Echoing(_Handler):
        def send_header(self, keyword: str, value: str) -> None:
            super().send_header(keyword, echo if keyword == TTL_HEADER else value)

    emulator._server.RequestHandlerClass = Echoing


def issue_token(emulator: Emulator, token: str) -> None:
    """Hand out `token` (say, one with a line break in it) instead of a real one."""
    original = emulator._issue_token

    def issue(ttl: int) -> str:
        original(ttl)
        with emulator._lock:
            emulator._issued.append(token)  # so that output is searched for it too
        return token

    emulator._issue_token = issue  # type: ignore[method-assign]
