"""A small, strict HTTP/1.1 client over plain sockets, every byte bounded by one absolute time.

Why not `http.client`: importing it (with the `email` package and `ssl` it loads) costs
several interpreter starts, which every `cc-imds get` in a script would pay; and it bounds
each read, not the request, so a server trickling a byte at a time keeps it open forever.
IMDS needs very little of HTTP: GET and PUT without a body, answers of a few kilobytes.

Each request gets a give-up time (time.monotonic()); before every connect, send and recv
the socket's timeout is set to what is left of it, and once nothing is left the request
fails: connecting, sending, the status line, headers, `1xx` answers, chunk-size lines, the
body and trailers are all covered.

Responses are read strictly and within bounds (see the limits below). A connection closed
or timing out mid-answer is `Transient` (worth retrying); an answer that breaks HTTP's
syntax or a bound is `Fatal`: a broken IMDS will not mend in the next second, and retrying
would only hammer it. No proxy is ever consulted, no redirect followed (a 3xx is just a
status), and no TLS or content coding is spoken: IMDS has none.

Keep-alive connections are pooled per endpoint, at most a few idle ones each. A connection
is reused only when its answer was read completely, nothing more arrived, and neither side
said `Connection: close`; when it is taken again, a zero-timeout poll must find nothing to
read. An idle one the server has closed is replaced without costing a retry.

A server that sends more than it announced (body bytes past Content-Length) is out of step
with its connection: surplus that arrives late would be read as the answer to the next
request. Nothing in an IMDS answer says which request it answers, so this cannot be caught
in every case; what is done instead: the first time surplus shows up (left over after an
answer, or found on an idle connection), that connection is closed and the endpoint is
marked out of step, and from then on every request to it gets a fresh connection, for the
life of this client. At most the one answer read before the surplus showed can be affected,
and it came from that same server. Standard library only.
"""

from __future__ import annotations

# `_socket` is what `socket` wraps. This module needs none of the wrapper (makefile, the
# IntEnum families, selectors), and importing it with its dependencies costs a cold
# `cc-imds get` several milliseconds. Its classes and constants are the same objects:
# `_socket.timeout` is `socket.timeout`.
import _socket as socket
import time
from _thread import allocate_lock

from ..version import __version__

TYPE_CHECKING = False  # typing costs every cold `cc-imds get`; mypy reads this like typing's
if TYPE_CHECKING:
    from typing import Any, Dict, Iterable, Iterator, List, Mapping, Optional, Tuple

USER_AGENT = f"cc-imds/{__version__}"
# An idle keep-alive connection older than this is closed rather than reused: by then the
# server may have dropped it without a word, and a new connection costs one round trip.
IDLE_LIMIT = 20.0

# Bounds on what a response may hold before its body. IMDS sends a handful of short header
# lines; these are far beyond that and far below what could hurt.
MAX_LINE = 8 * 1024  # one status, header, chunk-size or trailer line, line break included
MAX_FIELDS = 100  # header lines in one head (and trailer lines after a chunked body)
MAX_HEAD = 64 * 1024  # one head in all: status line and header lines (and the trailers, apart)
MAX_INTERIM = 16  # `1xx` answers before the final one
_RECV = 64 * 1024

# The grammar (RFC 9112), checked byte by byte rather than with `re`, whose import is a large
# part of a cold `cc-imds get`. A field name is a token; a field value is visible ASCII,
# space, tab and obs-text; a status code is [1-5][0-9][0-9].
_TCHAR = frozenset(b"!#$%&'*+.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz-")
_FIELD_CHAR = frozenset(b"\t" + bytes(range(0x20, 0x7F)) + bytes(range(0x80, 0x100)))
_DIGIT = frozenset(b"0123456789")
_HEXDIG = frozenset(b"0123456789ABCDEFabcdef")
# What a path may hold as it is (RFC 3986 unreserved, plus what IMDS paths hold literally):
# tag keys may hold `:@+=,.`; every other byte is percent-encoded, as urllib.parse.quote would.
_PATH_KEEPS = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789/:@+=,.-_~")


class Transient(Exception):
    """A failure worth retrying: refused, reset, closed early, timed out."""

    def __init__(self, kind: str, message: str) -> None:
        # "connect", "timeout" (not one byte of the response in time), "slow" (part of the
        # response came, not all of it) or "reset". Only "timeout" on a PUT can mean the hop limit.
        self.kind = kind
        super().__init__(message)


class Fatal(Exception):
    """A failure not worth retrying: a malformed or oversized answer, an unsendable request."""


class Headers:
    """Response header fields, looked up by name in any case. `get` gives the first value
    of a repeated field, as `email.message.Message.get` does."""

    __slots__ = ("_fields",)

    def __init__(self, fields: Iterable[Tuple[str, str]] = ()) -> None:
        self._fields: Dict[str, List[str]] = {}
        for name, value in fields:
            self._fields.setdefault(name.lower(), []).append(value)

    def get(self, name: str, default: Optional[str] = None) -> Optional[str]:
        values = self._fields.get(name.lower())
        return values[0] if values else default

    def get_all(self, name: str) -> List[str]:
        return list(self._fields.get(name.lower(), ()))

    def __getitem__(self, name: str) -> str:
        values = self._fields.get(name.lower())
        if not values:
            raise KeyError(name)
        return values[0]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._fields

    def __iter__(self) -> Iterator[str]:
        return iter(self._fields)

    def __len__(self) -> int:
        return len(self._fields)

    def __repr__(self) -> str:
        return f"Headers({sorted(self._fields)})"  # names only: values may be anything


class Response:
    """One answer: status, headers and the whole body."""

    __slots__ = ("body", "headers", "status")

    def __init__(self, status: int, headers: Headers, body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body


class _Closed(Exception):
    """The peer closed the connection before the answer was complete."""


class _Stale(Exception):
    """A reused keep-alive connection turned out closed before answering."""


class _Connection:
    """A socket with a read buffer that never waits past `give_up_at` (time.monotonic()), in total."""

    __slots__ = ("buffer", "give_up_at", "idle_since", "received", "sock")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = bytearray()
        self.give_up_at = float("inf")
        self.received = 0  # bytes received since the current request was armed
        self.idle_since = time.monotonic()

    def arm(self, give_up_at: float) -> None:
        self.give_up_at = give_up_at
        self.received = 0

    def _left(self) -> float:
        left = self.give_up_at - time.monotonic()
        if left <= 0:
            raise socket.timeout("timed out")
        return left

    def send(self, data: bytes) -> None:
        self.sock.settimeout(self._left())  # since Python 3.5 the timeout bounds the whole sendall
        self.sock.sendall(data)

    def fill(self) -> None:
        """Receive what has arrived (waiting at most until the give-up time); _Closed at end of file."""
        self.sock.settimeout(self._left())
        data = self.sock.recv(_RECV)
        if not data:
            raise _Closed()
        self.received += len(data)
        self.buffer += data

    def line(self, what: str) -> bytes:
        """One line without its line break (CRLF, or a bare LF as RFC 9112 allows a recipient
        to accept), at most MAX_LINE bytes with it."""
        searched = 0
        while True:
            end = self.buffer.find(b"\n", searched)
            if end >= 0:
                break
            if len(self.buffer) >= MAX_LINE:
                raise Fatal(f"malformed response: {what} longer than {MAX_LINE} bytes")
            searched = len(self.buffer)
            self.fill()
        if end >= MAX_LINE:
            raise Fatal(f"malformed response: {what} longer than {MAX_LINE} bytes")
        line = bytes(self.buffer[:end])
        del self.buffer[: end + 1]
        return line[:-1] if line.endswith(b"\r") else line

    def exactly(self, count: int) -> bytes:
        while len(self.buffer) < count:
            self.fill()
        data = bytes(self.buffer[:count])
        del self.buffer[:count]
        return data

    def rest(self, max_body: int) -> bytes:
        """Everything until the peer closes the connection, at most `max_body` bytes."""
        while True:
            if len(self.buffer) > max_body:
                raise Fatal(f"response exceeds the {max_body}-byte limit")
            try:
                self.fill()
            except _Closed:
                data = bytes(self.buffer)
                self.buffer.clear()
                return data

    def idle_state(self) -> str:
        """`idle` (nothing to read, not closed by the peer: safe to send a request on),
        `closed`, or `surplus` (bytes nobody asked for: the server is out of step)."""
        try:
            self.sock.settimeout(0.0)
            peeked = self.sock.recv(1, socket.MSG_PEEK)
        except BlockingIOError:
            return "idle"
        except OSError:
            return "closed"
        return "surplus" if peeked else "closed"

    def close(self) -> None:
        self.sock.close()


def _connect(host: str, port: int, give_up_at: float) -> _Connection:
    problem: Optional[OSError] = None
    for family, kind, proto, _, address in _addresses(host, port, give_up_at):
        sock = socket.socket(family, kind, proto)
        try:
            left = give_up_at - time.monotonic()
            if left <= 0:
                raise socket.timeout("timed out")
            sock.settimeout(left)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.connect(address)
        except socket.timeout:
            sock.close()
            raise
        except OSError as exc:
            sock.close()
            problem = exc
            continue
        return _Connection(sock)
    raise problem or OSError(f"no address for {host}")


def _addresses(host: str, port: int, give_up_at: float) -> List[Tuple[Any, ...]]:
    """getaddrinfo, bounded: an IP literal (the normal case) needs no lookup at all; a
    name is looked up in a helper thread, since getaddrinfo cannot be interrupted."""
    if host.isascii():  # as bytes: a str would be encoded by the `idna` codec, another import
        try:
            return socket.getaddrinfo(host.encode("ascii"), port, 0, socket.SOCK_STREAM, 0, socket.AI_NUMERICHOST)
        except socket.gaierror:
            pass  # not an IP literal
    import threading

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


class _Endpoint:
    """Where a base URL points, and the Host header that names it. Base URLs come checked
    from `settings.candidate_urls`: `http://host[:port]`, an IPv6 host in brackets."""

    __slots__ = ("host", "host_header", "port")

    def __init__(self, base_url: str) -> None:
        authority = base_url.partition("://")[2].partition("/")[0]
        if authority.startswith("["):
            host, _, after = authority[1:].partition("]")
            port = after[1:] if after.startswith(":") else ""
        else:
            host, _, port = authority.partition(":")
        self.host = host
        self.port = int(port) if port else 80
        name = f"[{host}]" if ":" in host else host
        self.host_header = name if self.port == 80 else f"{name}:{self.port}"


def quote_path(path: str) -> str:
    """The path as sent: UTF-8, every byte but the few IMDS paths hold literally percent-encoded."""
    try:
        raw = path.encode("utf-8")
    except UnicodeEncodeError:
        raise Fatal("the request cannot be sent: the path is not valid text") from None
    return "".join(chr(byte) if byte in _PATH_KEEPS else f"%{byte:02X}" for byte in raw)


def request_bytes(method: str, path: str, host_header: str, headers: Mapping[str, str]) -> bytes:
    """The request as sent: what `http.client` sent for the same call, no body. Raises Fatal,
    without repeating the value (it may be a token), for a header that cannot be sent."""
    lines = [f"{method} {quote_path(path)} HTTP/1.1", f"Host: {host_header}",
             "Accept-Encoding: identity"]
    if method == "PUT":
        lines.append("Content-Length: 0")
    for name, value in (("User-Agent", USER_AGENT), *headers.items()):
        if not _is_token(name):
            raise Fatal("the request cannot be sent: invalid header name")
        if "\r" in value or "\n" in value or "\0" in value:
            raise Fatal(f"the request cannot be sent: the {name} header value holds CR, LF or NUL")
        lines.append(f"{name}: {value}")
    try:
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    except UnicodeEncodeError:
        raise Fatal("the request cannot be sent: a header value is not Latin-1 text") from None


class Transport:
    """Bounded requests over pooled keep-alive connections, one pool per base URL."""

    def __init__(self, max_idle: int) -> None:
        self._max_idle = max_idle
        self._idle: Dict[str, List[_Connection]] = {}
        self._endpoints: Dict[str, _Endpoint] = {}
        self._lock = allocate_lock()  # threading's Lock, without importing threading
        self._closed = False
        self.out_of_step: List[str] = []  # base URLs that sent bytes nobody asked for: never reused again

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
        endpoint = self._endpoints.get(base_url)
        if endpoint is None:
            endpoint = self._endpoints.setdefault(base_url, _Endpoint(base_url))
        message = request_bytes(method, path, endpoint.host_header, headers)
        conn = self._take(base_url)
        try:
            response, conn = _exchange(endpoint, conn, message, give_up_at, max_body)
        except _Stale:
            response, conn = _exchange(endpoint, None, message, give_up_at, max_body)
        except _OutOfStep as exc:
            self._mark_out_of_step(base_url)
            if exc.response is None:  # read on a reused connection: perhaps the last answer's surplus
                response, conn = _exchange(endpoint, None, message, give_up_at, max_body)
            else:
                response, conn = exc.response, None
        if conn is not None:
            self._give_back(base_url, conn)
        return response

    def _mark_out_of_step(self, base_url: str) -> None:
        with self._lock:
            if base_url not in self.out_of_step:
                self.out_of_step.append(base_url)
            idle = self._idle.pop(base_url, [])
        for conn in idle:
            conn.close()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle = [conn for conns in self._idle.values() for conn in conns]
            self._idle.clear()
        for conn in idle:
            conn.close()

    def _take(self, base_url: str) -> Optional[_Connection]:
        now = time.monotonic()
        while True:
            with self._lock:
                conns = self._idle.get(base_url)
                conn = conns.pop() if conns else None
            if conn is None:
                return None
            state = conn.idle_state() if now - conn.idle_since < IDLE_LIMIT else "old"
            if state == "idle":
                return conn
            conn.close()
            if state == "surplus":
                self._mark_out_of_step(base_url)
                return None

    def _give_back(self, base_url: str, conn: _Connection) -> None:
        conn.idle_since = time.monotonic()
        with self._lock:
            conns = self._idle.setdefault(base_url, [])
            if not self._closed and len(conns) < self._max_idle and base_url not in self.out_of_step:
                conns.append(conn)
                return
        conn.close()


def _exchange(
    endpoint: _Endpoint, conn: Optional[_Connection], message: bytes, give_up_at: float, max_body: int
) -> Tuple[Response, Optional[_Connection]]:
    """Send `message` and read the answer. Returns it, with the connection when it can be reused
    (else None: closed). Raises Transient, Fatal, or _Stale for a reused connection found closed."""
    reused = conn is not None
    seconds = max(0.0, give_up_at - time.monotonic())
    phase = "connect"
    try:
        if conn is None:
            conn = _connect(endpoint.host, endpoint.port, give_up_at)
        conn.arm(give_up_at)
        phase = "answer"
        conn.send(message)
        status, headers, version = _read_head(conn)
        phase = "body"
        body, reusable = _read_body(conn, status, headers, version, max_body)
    except socket.timeout:
        received = conn.received if conn is not None else 0
        _close(conn)
        if phase == "connect":
            raise Transient("connect", "connection timed out") from None
        if phase == "answer" and not received:
            raise Transient("timeout", f"no answer within {seconds:.3g}s") from None
        part = "body" if phase == "body" else "status line and headers"
        raise Transient("slow", f"response {part} not complete within {seconds:.3g}s") from None
    except _Closed:
        assert conn is not None
        received = conn.received
        conn.close()
        if phase == "answer" and not received:
            if reused:
                raise _Stale() from None
            raise Transient("reset", "connection closed without an answer") from None
        part = "body" if phase == "body" else "headers"
        raise Transient("reset", f"connection closed mid-{part}") from None
    except Fatal:
        _close(conn)
        raise
    except OSError as exc:
        received = conn.received if conn is not None else 0
        _close(conn)
        if phase == "connect":
            raise Transient("connect", f"cannot connect: {exc.strerror or exc}") from None
        if reused and phase == "answer" and not received and isinstance(exc, ConnectionError):
            raise _Stale() from None
        raise Transient("reset", f"connection failed: {type(exc).__name__}") from None
    assert conn is not None
    if conn.buffer:  # bytes nobody asked for: the connection is out of step
        conn.close()
        # On a fresh connection the answer came first, so it stands; on a reused one, what was
        # read may be the previous answer's surplus: it is asked again on a fresh connection.
        raise _OutOfStep(None if reused else Response(status, headers, body))
    if not reusable:
        conn.close()
        return Response(status, headers, body), None
    return Response(status, headers, body), conn


class _OutOfStep(Exception):
    """More came than was asked for: the endpoint's connections are not reused again. The
    answer read, if it can be trusted (a fresh connection's first), or None: ask again."""

    def __init__(self, response: Optional[Response]) -> None:
        super().__init__()
        self.response = response


def _close(conn: Optional[_Connection]) -> None:
    if conn is not None:
        conn.close()


def _read_head(conn: _Connection) -> Tuple[int, Headers, int]:
    """The final answer's status, headers and minor HTTP version, `1xx` answers skipped."""
    for _ in range(MAX_INTERIM + 1):
        line = conn.line("status line")
        parsed = _status_line(line)
        if parsed is None:
            raise Fatal("malformed response: not an HTTP/1.x status line")
        version, status = parsed
        headers = Headers(_read_fields(conn, "header", MAX_HEAD - len(line) - 2))
        if status == 101:
            raise Fatal("malformed response: 101 Switching Protocols, to a request that asked for no upgrade")
        if status >= 200:
            return status, headers, version
    raise Fatal(f"malformed response: more than {MAX_INTERIM} interim (1xx) answers")


def _is_token(name: str) -> bool:
    return bool(name) and name.isascii() and all(c in _TCHAR for c in name.encode("ascii"))


def _status_line(line: bytes) -> Optional[Tuple[int, int]]:
    """(minor version, status) of `HTTP/1.x NNN[ reason]`, or None."""
    if len(line) < 12 or line[:7] != b"HTTP/1." or line[7] not in b"01" or line[8:9] != b" ":
        return None
    if line[9] not in b"12345" or line[10] not in _DIGIT or line[11] not in _DIGIT:
        return None
    reason = line[12:]
    if reason and (reason[:1] != b" " or not all(b in _FIELD_CHAR for b in reason)):
        return None
    return line[7] - 0x30, int(line[9:12])


def _field_line(line: bytes) -> Optional[Tuple[str, str]]:
    """(name, value) of `name: value`, the value without the spaces and tabs around it, or None."""
    name, colon, value = line.partition(b":")
    if not (colon and name and all(b in _TCHAR for b in name) and all(b in _FIELD_CHAR for b in value)):
        return None
    return name.decode("ascii"), value.strip(b" \t").decode("latin-1")


def _chunk_size(line: bytes) -> Optional[bytes]:
    """The hex digits of `HEX[ ][;extensions]`, or None."""
    size, semicolon, extensions = line.partition(b";")
    digits = size.rstrip(b" \t")
    if not digits or not all(b in _HEXDIG for b in digits):
        return None
    if semicolon and not all(b in _FIELD_CHAR for b in extensions):
        return None
    return digits


def _read_fields(conn: _Connection, what: str, budget: int) -> List[Tuple[str, str]]:
    """Header (or trailer) lines up to the empty line: at most MAX_FIELDS, `budget` bytes in all."""
    fields: List[Tuple[str, str]] = []
    while True:
        line = conn.line(f"{what} line")
        budget -= len(line) + 2
        if budget < 0:
            raise Fatal(f"malformed response: {what}s longer than {MAX_HEAD} bytes in all")
        if not line:
            return fields
        if len(fields) == MAX_FIELDS:
            raise Fatal(f"malformed response: more than {MAX_FIELDS} {what} lines")
        if line[:1] in (b" ", b"\t"):
            raise Fatal(f"malformed response: obsolete line folding in a {what}")
        field = _field_line(line)
        if field is None:
            raise Fatal(f"malformed response: invalid {what} line")
        fields.append(field)


def _read_body(conn: _Connection, status: int, headers: Headers, version: int, max_body: int) -> Tuple[bytes, bool]:
    """The body as the headers frame it, and whether the connection may carry another request."""
    lengths = headers.get_all("Content-Length")
    codings = headers.get_all("Transfer-Encoding")
    if lengths and codings:
        raise Fatal("malformed response: both Content-Length and Transfer-Encoding")
    if codings and version == 0:
        raise Fatal("malformed response: Transfer-Encoding in an HTTP/1.0 response")
    if codings and (len(codings) > 1 or codings[0].lower() != "chunked"):
        raise Fatal("malformed response: a Transfer-Encoding other than chunked")
    length: Optional[int] = None
    if lengths:
        # Digits only; repeated, only with the same value (RFC 9110, 8.6). Compared as text
        # without leading zeros: int() of thousands of digits is slow, or refused (3.11+).
        values = {value.lstrip("0") or "0" for value in lengths}
        if not all(value.isascii() and value.isdigit() for value in lengths) or len(values) > 1:
            raise Fatal("malformed response: invalid Content-Length")
        digits = values.pop()
        if len(digits) > 18:
            raise Fatal(f"response exceeds the {max_body}-byte limit")
        length = int(digits)
    tokens = {t.strip().lower() for v in headers.get_all("Connection") for t in v.split(",")}
    persistent = "close" not in tokens and (version == 1 or "keep-alive" in tokens)
    if status in (204, 304):  # no body, whatever the headers say (RFC 9110, 6.4.1)
        return b"", persistent
    if length is not None:
        if length > max_body:
            raise Fatal(f"response of {length} bytes exceeds the {max_body}-byte limit")
        return conn.exactly(length), persistent
    if codings:
        return _read_chunked(conn, max_body), persistent
    return conn.rest(max_body), False  # delimited by the connection's end


def _read_chunked(conn: _Connection, max_body: int) -> bytes:
    chunks: List[bytes] = []
    total = 0
    while True:
        hexdigits = _chunk_size(conn.line("chunk-size line"))
        if hexdigits is None:
            raise Fatal("malformed response: invalid chunk-size line")
        digits = hexdigits.lstrip(b"0")
        size = int(digits, 16) if digits else 0
        if len(digits) > 16 or total + size > max_body:
            raise Fatal(f"response exceeds the {max_body}-byte limit")
        if size == 0:
            break
        chunks.append(conn.exactly(size))
        total += size
        if conn.line("chunk end"):
            raise Fatal("malformed response: chunk data longer than its size")
    _read_fields(conn, "trailer", MAX_HEAD)  # read to the end, bounded, and ignored
    return b"".join(chunks)
