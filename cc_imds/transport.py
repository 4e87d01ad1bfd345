"""HTTP/1.1 requests whose every byte is bounded by one absolute time.

`http.client` applies a socket timeout to each read, so a server that trickles a byte
at a time keeps a request open forever. Here each request gets a give-up time, and the
socket under `http.client` sets its timeout to what is left of it before every connect,
recv and send, and fails once nothing is left: connecting, sending, the status line,
headers, `100 Continue` answers, chunk-size lines, the body and trailers are all covered.

Keep-alive connections are pooled per endpoint, at most a few idle ones each, and an idle
connection the server has closed is replaced without costing a retry. Standard library only.
"""

from __future__ import annotations

import http.client
import ipaddress
import math
import re
import socket
import threading
import time
from urllib.parse import quote, urlsplit

from . import __version__

TYPE_CHECKING = False  # typing costs every cold `cc-imds get`; mypy reads this like typing's
if TYPE_CHECKING:
    from typing import Any, Dict, List, Mapping, Optional, Tuple

    from _typeshed import ReadableBuffer, WriteableBuffer

USER_AGENT = f"cc-imds/{__version__}"
# Characters IMDS uses literally in paths (tag keys may hold `:@+=,.`); anything else is escaped.
_SAFE_PATH_CHARS = "/:@+=,.-_~"
# An idle keep-alive connection older than this is closed rather than reused: by then the
# server may have dropped it without a word, and a new connection costs one round trip.
IDLE_LIMIT = 20.0
_LENGTH = re.compile(r"[0-9]{1,18}")


class Transient(Exception):
    """A failure worth retrying: refused, reset, timed out."""

    def __init__(self, kind: str, message: str) -> None:
        # "connect", "timeout" (not one byte of the response in time), "slow" (part of the
        # response came, not all of it) or "reset". Only "timeout" on a PUT can mean the hop limit.
        self.kind = kind
        super().__init__(message)


class Fatal(Exception):
    """A failure not worth retrying (an oversized body, an unsendable request)."""


class Response:
    """One answer: status, headers and the whole body."""

    __slots__ = ("body", "headers", "status")

    def __init__(self, status: int, headers: http.client.HTTPMessage, body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body


class _BoundedSocket(socket.socket):
    """A socket that never waits past `give_up_at` (time.monotonic()), in total."""

    __slots__ = ("give_up_at", "received")

    def __init__(self, family: int, type: int, proto: int, fileno: Optional[int] = None) -> None:  # noqa: A002
        super().__init__(family, type, proto, fileno)
        self.give_up_at = math.inf
        self.received = 0

    def _arm(self) -> None:
        left = self.give_up_at - time.monotonic()
        if left <= 0:
            raise socket.timeout("timed out")
        super().settimeout(left)

    def connect(self, address: Any) -> None:
        self._arm()
        super().connect(address)

    def recv_into(self, buffer: WriteableBuffer, nbytes: int = 0, flags: int = 0) -> int:
        self._arm()
        count = super().recv_into(buffer, nbytes, flags)
        self.received += count
        return count

    def recv(self, bufsize: int, flags: int = 0) -> bytes:
        self._arm()
        data = super().recv(bufsize, flags)
        self.received += len(data)
        return data

    def send(self, data: ReadableBuffer, flags: int = 0) -> int:
        self._arm()
        return super().send(data, flags)

    def sendall(self, data: ReadableBuffer, flags: int = 0) -> None:
        self._arm()  # since Python 3.5 the timeout bounds the whole sendall
        super().sendall(data, flags)

    def is_idle_and_open(self) -> bool:
        """Nothing to read and not closed by the peer: safe to send a request on."""
        try:
            super().settimeout(0.0)
            socket.socket.recv(self, 1, socket.MSG_PEEK)
        except BlockingIOError:
            return True
        except OSError:
            return False
        return False  # end of file, or bytes nobody asked for: either way unusable


class _Connection(http.client.HTTPConnection):
    """An HTTPConnection over a _BoundedSocket; `arm` sets the give-up time of the next request."""

    def __init__(self, host: str, port: int) -> None:
        super().__init__(host, port)
        self.give_up_at = math.inf
        self.idle_since = time.monotonic()

    @property
    def bounded(self) -> Optional[_BoundedSocket]:
        return self.sock if isinstance(self.sock, _BoundedSocket) else None

    def arm(self, give_up_at: float) -> None:
        self.give_up_at = give_up_at
        if self.bounded is not None:
            self.bounded.give_up_at = give_up_at
            self.bounded.received = 0

    def received(self) -> int:
        return self.bounded.received if self.bounded is not None else 0

    def connect(self) -> None:
        problem: Optional[OSError] = None
        for family, kind, proto, _, address in _addresses(self.host, self.port, self.give_up_at):
            sock = _BoundedSocket(family, kind, proto)
            sock.give_up_at = self.give_up_at
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                sock.connect(address)
            except OSError as exc:
                sock.close()
                problem = exc
                continue
            self.sock = sock
            return
        raise problem or OSError(f"no address for {self.host}")


def _addresses(host: str, port: int, give_up_at: float) -> List[Tuple[Any, ...]]:
    """getaddrinfo, bounded: an IP literal (the normal case) needs no lookup at all; a
    name is looked up in a helper thread, since getaddrinfo cannot be interrupted."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        return socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM, 0, socket.AI_NUMERICHOST)
    found: Dict[str, Any] = {}
    done = threading.Event()

    def lookup() -> None:
        try:
            found["addresses"] = socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM)
        except OSError as exc:
            found["error"] = exc
        done.set()

    threading.Thread(target=lookup, name="imds-resolve", daemon=True).start()
    if not done.wait(max(0.0, give_up_at - time.monotonic())):
        raise socket.timeout(f"looking up {host} timed out")
    if "error" in found:
        raise found["error"]
    return list(found["addresses"])


class _Stale(Exception):
    """A reused keep-alive connection turned out closed before answering."""


class Transport:
    """Bounded requests over pooled keep-alive connections, one pool per base URL."""

    def __init__(self, max_idle: int) -> None:
        self._max_idle = max_idle
        self._idle: Dict[str, List[_Connection]] = {}
        self._lock = threading.Lock()
        self._closed = False

    def request(
        self,
        base_url: str,
        method: str,
        path: str,
        headers: Mapping[str, str],
        *,
        give_up_at: float,
        max_body: int,
    ) -> Response:
        """One attempt, ending by `give_up_at` (time.monotonic()) whatever the server does."""
        all_headers = {"User-Agent": USER_AGENT, **headers}
        conn, reused = self._take(base_url)
        try:
            response = _exchange(conn, reused, method, path, all_headers, give_up_at, max_body)
        except _Stale:
            conn.close()
            conn = _new_connection(base_url)
            response = _exchange(conn, False, method, path, all_headers, give_up_at, max_body)
        self._give_back(base_url, conn)
        return response

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle = [conn for conns in self._idle.values() for conn in conns]
            self._idle.clear()
        for conn in idle:
            conn.close()

    def _take(self, base_url: str) -> Tuple[_Connection, bool]:
        now = time.monotonic()
        while True:
            with self._lock:
                conns = self._idle.get(base_url)
                conn = conns.pop() if conns else None
            if conn is None:
                return _new_connection(base_url), False
            sock = conn.bounded
            if sock is not None and now - conn.idle_since < IDLE_LIMIT and sock.is_idle_and_open():
                return conn, True
            conn.close()

    def _give_back(self, base_url: str, conn: _Connection) -> None:
        if conn.sock is not None:
            conn.idle_since = time.monotonic()
            with self._lock:
                conns = self._idle.setdefault(base_url, [])
                if not self._closed and len(conns) < self._max_idle:
                    conns.append(conn)
                    return
        conn.close()


def _new_connection(base_url: str) -> _Connection:
    parts = urlsplit(base_url)
    return _Connection(parts.hostname or "", parts.port or 80)


def _exchange(
    conn: _Connection,
    reused: bool,
    method: str,
    path: str,
    headers: Mapping[str, str],
    give_up_at: float,
    max_body: int,
) -> Response:
    seconds = max(0.0, give_up_at - time.monotonic())
    conn.arm(give_up_at)
    phase = "connect"
    try:
        if conn.sock is None:
            conn.connect()
        phase = "answer"
        try:
            conn.request(method, quote(path, safe=_SAFE_PATH_CHARS), headers=dict(headers))
        except (http.client.InvalidURL, ValueError):
            # ValueError: a header value http.client refuses. Its message quotes the
            # value, which may be a token, so it is not repeated.
            raise Fatal("the request cannot be sent: invalid path or header value") from None
        response = conn.getresponse()
        phase = "body"
        try:
            body = _read_body(response, max_body)
        except BaseException:
            response.close()
            raise
        return Response(response.status, response.msg, body)
    except socket.timeout:
        received = conn.received()
        conn.close()
        if phase == "connect":
            raise Transient("connect", "connection timed out") from None
        if phase == "answer" and not received:
            raise Transient("timeout", f"no answer within {seconds:.3g}s") from None
        part = "body" if phase == "body" else "status line and headers"
        raise Transient("slow", f"response {part} not complete within {seconds:.3g}s") from None
    except Fatal:
        conn.close()
        raise
    except OSError as exc:
        received = conn.received()
        conn.close()
        if phase == "connect":
            raise Transient("connect", f"cannot connect: {exc.strerror or exc}") from None
        if reused and phase == "answer" and not received and isinstance(exc, ConnectionError):
            raise _Stale() from None  # RemoteDisconnected is a ConnectionResetError too
        raise Transient("reset", f"connection failed: {type(exc).__name__}") from None
    except (http.client.HTTPException, ValueError) as exc:
        conn.close()
        raise Transient("reset", f"invalid response: {type(exc).__name__}") from None


def _read_body(response: http.client.HTTPResponse, max_body: int) -> bytes:
    header = (response.getheader("Content-Length") or "").strip()
    declared = int(header) if _LENGTH.fullmatch(header) else None
    if declared is not None and declared > max_body:
        raise Fatal(f"response of {declared} bytes exceeds the {max_body}-byte limit")
    chunks: List[bytes] = []
    total = 0
    while True:
        chunk = response.read1(65536)
        if not chunk:
            break
        total += len(chunk)
        if total > max_body:
            raise Fatal(f"response exceeds the {max_body}-byte limit")
        chunks.append(chunk)
    if declared is not None and total != declared:
        raise Transient("reset", "connection closed mid-body")
    response.read()  # marks the response complete, so the connection can be reused
    return b"".join(chunks)
