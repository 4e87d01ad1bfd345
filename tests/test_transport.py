"""The HTTP/1.1 client under the IMDS client: strict response parsing within bounds, and the
request it sends. Responses are read from real sockets (a socket pair, or a one-shot server
on loopback); the client-level behaviour (retries, keep-alive, proxies, redirects) is in
tests/test_client.py and tests/reliability/."""

from __future__ import annotations

import re
import socket
import threading
import time
from typing import List, Optional, Tuple

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cc_imds.imds import transport
from cc_imds.imds.transport import USER_AGENT, Fatal, Headers, Transient, Transport
from tests.conftest import examples, needs_ipv6_loopback

MAX_BODY = 64 * 1024


def parse(raw: bytes, max_body: int = MAX_BODY) -> Tuple[int, Headers, bytes, bool]:
    """Read one response from `raw`, sent whole and then closed, as the client reads it."""
    ours, theirs = socket.socketpair()
    with ours, theirs:
        writer = threading.Thread(target=_send_and_close, args=(theirs, raw))
        writer.start()
        try:
            conn = transport._Connection(ours)
            conn.arm(time.monotonic() + 30)
            status, headers, version = transport._read_head(conn)
            body, reusable = transport._read_body(conn, status, headers, version, max_body)
        finally:
            writer.join(timeout=60)
            assert not writer.is_alive(), "the writer never finished"
        return status, headers, body, reusable


def _send_and_close(sock: socket.socket, raw: bytes) -> None:
    try:
        sock.sendall(raw)
        sock.shutdown(socket.SHUT_WR)
    except OSError:  # the reader gave up early (a bound): nothing more to say
        pass


def chunked(pieces: List[bytes], extensions: bool = False, upper: bool = False) -> bytes:
    out = b""
    for piece in pieces:
        size = b"%X" % len(piece) if upper else b"%x" % len(piece)
        out += size + (b";name=value" if extensions else b"") + b"\r\n" + piece + b"\r\n"
    return out + b"0\r\nX-Trailer: yes\r\n\r\n"


@settings(max_examples=examples(200), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.binary(min_size=1, max_size=300), max_size=20), st.booleans(), st.booleans())
def test_chunked_bodies_come_back_whole(pieces: List[bytes], extensions: bool, upper: bool) -> None:
    raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked(pieces, extensions, upper)
    status, _, body, reusable = parse(raw)
    assert (status, body, reusable) == (200, b"".join(pieces), True)


@settings(max_examples=examples(200), deadline=None)
@given(st.binary(max_size=2000), st.sampled_from([b"\r\n", b"\n"]))
def test_content_length_bodies_come_back_whole(body: bytes, eol: bytes) -> None:
    raw = b"HTTP/1.1 200 OK" + eol + b"Content-Length: %d" % len(body) + eol + eol + body
    assert parse(raw)[2] == body


# Pieces of HTTP, shuffled and repeated, reach far more of the parser than random bytes.
PIECES = st.sampled_from([
    b"HTTP/1.1 200 OK\r\n", b"HTTP/1.0 204 No Content\r\n", b"HTTP/1.1 100 Continue\r\n", b"HTTP/1.1 101 X\r\n",
    b"HTTP/2 200\r\n", b"Content-Length: 5\r\n", b"Content-Length: 3\r\n", b"Content-Length: -1\r\n",
    b"Transfer-Encoding: chunked\r\n", b"Transfer-Encoding: gzip\r\n", b"Connection: close\r\n", b" folded\r\n",
    b"\r\n", b"\n", b"\r", b":", b"5\r\n", b"0\r\n", b"5;x=y\r\n", b"ffffffffffffffffffff\r\n", b"hello",
    b"\x00", b"\xff", b"X" * 9000,
])


@settings(max_examples=examples(300), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(PIECES, st.binary(max_size=40)), max_size=30))
def test_any_bytes_give_an_answer_or_a_protocol_error(pieces: List[bytes]) -> None:
    try:
        status, _, body, _ = parse(b"".join(pieces), max_body=4096)
    except (Fatal, transport._Closed):
        return
    assert 200 <= status <= 599 and len(body) <= 4096


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        (b"HTTP/1.1 200 OK\r\nX-A: 1\r\n folded\r\nContent-Length: 0\r\n\r\n", "obsolete line folding"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", "both"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nabc", "invalid Content-Length"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: +2\r\n\r\nab", "invalid Content-Length"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 2, 2\r\n\r\nab", "invalid Content-Length"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: " + b"9" * 40 + b"\r\n\r\n", "limit"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 70000\r\n\r\n", "limit"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", "other than chunked"),
        (b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", "HTTP/1.0"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "chunk-size"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabc\r\n0\r\n\r\n", "longer than its size"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + b"f" * 20 + b"\r\n", "limit"),
        (b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n", "longer than"),
        (b"HTTP/1.1 200 OK\r\n" + b"X-A: 1\r\n" * 101 + b"\r\n", "more than 100"),
        (b"HTTP/1.1 200 OK\r\nBad Name: 1\r\n\r\n", "invalid header line"),
        (b"HTTP/1.1 200 OK\r\nX-A: \x00\r\n\r\n", "invalid header line"),
        (b"HTTP/2 200\r\n\r\n", "status line"),
        (b"HTTP/1.1 99 Low\r\n\r\n", "status line"),
        (b"ICY 200 OK\r\n\r\n", "status line"),
        (b"HTTP/1.1 101 Switching Protocols\r\n\r\n", "101"),
        (b"HTTP/1.1 100 Continue\r\n\r\n" * 17 + b"HTTP/1.1 200 OK\r\n\r\n", "interim"),
    ],
)
def test_answers_that_break_http_or_a_bound_are_protocol_errors(raw: bytes, problem: str) -> None:
    with pytest.raises(Fatal, match=problem):
        parse(raw)


def test_headers_of_the_limit_are_read_whole() -> None:
    # 100 fields of a few bytes under MAX_LINE each: every bound at its edge, nothing refused.
    line = b"X-A: " + b"a" * 600 + b"\r\n"
    raw = b"HTTP/1.1 200 OK\r\n" + line * 100 + b"Content-Length: 0\r\n\r\n"
    with pytest.raises(Fatal, match="more than 100"):  # Content-Length is the 101st field
        parse(raw)
    status, headers, body, _ = parse(b"HTTP/1.1 200 OK\r\n" + line * 99 + b"Content-Length: 0\r\n\r\n")
    assert (status, len(headers.get_all("x-a")), body) == (200, 99, b"")


def test_interim_answers_are_skipped() -> None:
    raw = (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: x\r\n\r\n"
           b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    status, headers, body, reusable = parse(raw)
    assert (status, body, reusable, "link" in headers) == (200, b"ok", True, False)


def test_a_body_read_to_the_end_of_the_connection_is_bounded_and_not_reused() -> None:
    assert parse(b"HTTP/1.1 200 OK\r\n\r\nuntil the end")[2:] == (b"until the end", False)
    with pytest.raises(Fatal, match="limit"):
        parse(b"HTTP/1.1 200 OK\r\n\r\n" + b"x" * 5000, max_body=4096)


def test_connection_close_and_http_1_0_are_not_reused() -> None:
    assert parse(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n")[3] is False
    assert parse(b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n")[3] is False
    assert parse(b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n")[3] is True


def test_no_body_for_204_and_304_whatever_the_headers_say() -> None:
    assert parse(b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n")[2] == b""


def test_header_lookup_ignores_case_and_gives_the_first_value() -> None:
    headers = parse(b"HTTP/1.1 200 OK\r\nRetry-After:  5 \r\nretry-after: 9\r\nContent-Length: 0\r\n\r\n")[1]
    assert (headers.get("RETRY-AFTER"), headers.get_all("Retry-After")) == ("5", ["5", "9"])
    assert headers.get("X", "none") == "none"


class OneShotServer:
    """Accepts one connection on loopback, records the request head, answers with `answer`."""

    def __init__(self, answer: bytes, host: str = "127.0.0.1") -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.bind((host, 0))
        self.sock.listen(1)
        self.port = self.sock.getsockname()[1]
        self.answer = answer
        self.request: Optional[bytes] = None
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        conn, _ = self.sock.accept()
        with conn:
            data = b""
            while b"\r\n\r\n" not in data:
                more = conn.recv(4096)
                if not more:
                    return
                data += more
            self.request = data
            conn.sendall(self.answer)

    def close(self) -> None:
        self.thread.join(30)
        self.sock.close()


OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


def exchange(base_url: str, server: OneShotServer, method: str = "GET", path: str = "/latest/meta-data/x",
             headers: Optional[dict] = None) -> bytes:
    with_transport = Transport(max_idle=1)
    try:
        response = with_transport.request(base_url, method, path, headers or {}, give_up_at=time.monotonic() + 30,
                                          max_body=MAX_BODY)
    finally:
        with_transport.close()
        server.close()
    assert response.body == b"ok"
    assert server.request is not None
    return server.request


def test_the_request_names_the_host_with_its_port_and_cc_imds() -> None:
    server = OneShotServer(OK)
    request = exchange(f"http://127.0.0.1:{server.port}", server, "PUT", "/latest/api/token",
                       {"X-aws-ec2-metadata-token-ttl-seconds": "21600"})
    lines = request.decode("latin-1").split("\r\n")
    assert lines[0] == "PUT /latest/api/token HTTP/1.1"
    assert f"Host: 127.0.0.1:{server.port}" in lines
    assert f"User-Agent: {USER_AGENT}" in lines
    assert "Content-Length: 0" in lines
    assert "X-aws-ec2-metadata-token-ttl-seconds: 21600" in lines


@needs_ipv6_loopback
def test_an_ipv6_literal_is_bracketed_in_the_host_header() -> None:
    server = OneShotServer(OK, host="::1")
    request = exchange(f"http://[::1]:{server.port}", server)
    assert f"\r\nHost: [::1]:{server.port}\r\n".encode() in request


def test_a_path_is_percent_encoded_except_what_imds_paths_hold() -> None:
    assert transport.quote_path("/latest/meta-data/tags/instance/a:b@c+d=e,f.g-h_i~j") == \
        "/latest/meta-data/tags/instance/a:b@c+d=e,f.g-h_i~j"
    assert transport.quote_path("/x y/é?#%") == "/x%20y/%C3%A9%3F%23%25"


@pytest.mark.parametrize("value", ["a\r\nX-Injected: 1", "a\nb", "a\x00b"])
def test_a_header_value_that_would_split_the_request_is_never_sent(value: str) -> None:
    with pytest.raises(Fatal) as caught:
        transport.request_bytes("GET", "/", "h", {"X-aws-ec2-metadata-token": value})
    assert value not in str(caught.value)


def test_a_connection_closed_before_any_answer_is_transient() -> None:
    server = OneShotServer(b"")
    with pytest.raises(Transient) as caught:
        exchange(f"http://127.0.0.1:{server.port}", server)
    assert caught.value.kind == "reset"


def test_a_malformed_answer_is_not_retried() -> None:
    server = OneShotServer(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok")
    with pytest.raises(Fatal, match="Content-Length"):
        exchange(f"http://127.0.0.1:{server.port}", server)


# -- the grammar, checked by hand: the same as RFC 9112's, written as regular expressions ----------
STATUS_LINE = re.compile(rb"HTTP/1\.([01]) ([1-5][0-9][0-9])(?: [\t\x20-\x7e\x80-\xff]*)?")
FIELD_LINE = re.compile(rb"([!#$%&'*+.^_`|~0-9A-Za-z-]+):[ \t]*([\t\x20-\x7e\x80-\xff]*?)[ \t]*")
CHUNK_LINE = re.compile(rb"([0-9A-Fa-f]+)[ \t]*(?:;[\t\x20-\x7e\x80-\xff]*)?")
HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
# Lines built from the grammar's pieces and near misses, and arbitrary bytes.
PIECES = [b"HTTP/1.", b"HTTP/2", b"0", b"1", b"2", b"5", b"6", b"9", b"a", b"F", b"g", b" ", b"\t", b":", b";", b"=",
          b"OK", b"Content-Length", b"\x7f", b"\x80", b"\xff", b"\x00", b"\r", b"\n", b"\x1f", b"(", b"-"]
DIGITS = st.binary(min_size=0, max_size=4).map(lambda b: bytes(c for c in b if c < 0x80)).map(
    lambda b: bytes(b"0123456789aFg"[c % 13] for c in b))
VERSIONS = [b"HTTP/1.1 ", b"HTTP/1.0 ", b"HTTP/1.2 ", b"HTTP/1.1\t", b"HTTP/2.0 ", b"HTTP/1.1"]
NEAR_STATUS = st.tuples(st.sampled_from(VERSIONS),
                        st.one_of(st.integers(0, 1000).map(b"%d".__mod__), st.integers(0, 99).map(b"%03d".__mod__),
                                  DIGITS),
                        st.sampled_from([b"", b" ", b" OK", b"OK", b" \x80\xff", b" \x7f", b"\t"])).map(b"".join)
NEAR_FIELD = st.tuples(st.sampled_from([b"", b"Name", b"Na me", b"X-\x80"]), st.sampled_from([b":", b"", b";"]),
                       st.lists(st.sampled_from([b" ", b"\t", b"v", b"\x80", b"\x7f", b"\x00", b":"]), max_size=5)
                       .map(b"".join)).map(b"".join)
NEAR_CHUNK = st.tuples(DIGITS, st.sampled_from([b"", b" ", b"\t ", b" x"]),
                       st.sampled_from([b"", b";", b";a=b", b"; \x80", b";\x7f", b";;"])).map(b"".join)
LINES = st.one_of(NEAR_STATUS, NEAR_FIELD, NEAR_CHUNK, st.lists(st.sampled_from(PIECES), max_size=8).map(b"".join),
                  st.binary(max_size=16))


@settings(max_examples=examples(3000), deadline=None)
@given(LINES)
def test_status_lines_read_as_the_grammar_says(line: bytes) -> None:
    match = STATUS_LINE.fullmatch(line)
    assert transport._status_line(line) == (None if match is None else (int(match[1]), int(match[2])))


@settings(max_examples=examples(3000), deadline=None)
@given(LINES)
def test_field_lines_read_as_the_grammar_says(line: bytes) -> None:
    match = FIELD_LINE.fullmatch(line)
    expected = None if match is None else (match[1].decode("ascii"), match[2].decode("latin-1"))
    assert transport._field_line(line) == expected


@settings(max_examples=examples(3000), deadline=None)
@given(LINES)
def test_chunk_size_lines_read_as_the_grammar_says(line: bytes) -> None:
    match = CHUNK_LINE.fullmatch(line)
    assert transport._chunk_size(line) == (None if match is None else match[1])


@settings(max_examples=examples(3000), deadline=None)
@given(st.one_of(st.lists(st.sampled_from(["X-aws", "-", ":", " ", "é", "\x00", "(", "~", "9"]), max_size=5)
                 .map("".join), st.text(max_size=8)))
def test_header_names_sent_are_tokens(name: str) -> None:
    assert transport._is_token(name) == bool(HEADER_NAME.fullmatch(name))
