"""The IMDSv2 client against the emulator, over real loopback sockets."""

from __future__ import annotations

import gzip
import logging
import os
import socket
import time
from typing import Callable, Dict, List

import pytest

import cc_imds
from cc_imds.deadline import Deadline
from cc_imds.errors import ImdsError, ImdsNotFound, ImdsUnreachable
from cc_imds.imds.client import (
    ENV_ENDPOINT,
    ENV_ENDPOINT_MODE,
    IPV4_URL,
    IPV6_URL,
    MAX_FRESH_REFUSALS,
    ClientSettings,
    EndpointError,
    ImdsClient,
    MetadataDisabled,
    candidate_urls,
    choose_endpoint,
)
from cc_imds.imds.tree import MetadataTree
from cc_imds.testing.emulator import Emulator
from tests.conftest import DEADLINE_SLACK, needs_ipv6_loopback
from tests.reliability.hostile import (
    TOKEN,
    Connection,
    HostileServer,
    Request,
    answer,
    churn,
    echo_ttl,
    issue_token,
)


class Pauses:
    """The client's clock with its sleeps recorded (still taken): "at once" means no pause was
    chosen, whatever the machine's speed."""

    monotonic = staticmethod(time.monotonic)

    def __init__(self) -> None:
        self.taken: List[float] = []

    def sleep(self, seconds: float) -> None:
        self.taken.append(seconds)
        time.sleep(seconds)


@pytest.fixture
def pauses(monkeypatch: pytest.MonkeyPatch) -> Pauses:
    recorder = Pauses()
    monkeypatch.setattr(cc_imds.imds.client, "time", recorder)
    return recorder


def client_for(emulator: Emulator, **settings: object) -> ImdsClient:
    return client_for_url(emulator.url, **settings)


def client_for_url(url: str, **settings: object) -> ImdsClient:
    return ImdsClient(ClientSettings(endpoint=url, **settings))  # type: ignore[arg-type]


def fifty_paths_tree() -> MetadataTree:
    return MetadataTree({f"meta-data/item/{i:02d}": f"value-{i}".encode() for i in range(50)})


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- token lifecycle -------------------------------------------------------------
def test_one_put_for_a_run_of_fifty_values(make_emulator: Callable[..., Emulator]) -> None:
    emulator = make_emulator(fifty_paths_tree())
    with client_for(emulator) as client:
        results = client.fetch_all([f"meta-data/item/{i:02d}" for i in range(50)] * 2)
    assert results == {f"meta-data/item/{i:02d}": f"value-{i}".encode() for i in range(50)}
    assert emulator.count("PUT") == 1
    assert emulator.count("GET") == 50  # each distinct path once, though asked twice
    assert all(r.token == "valid" for r in emulator.requests if r.method == "GET")


def test_revoked_token_costs_exactly_one_extra_put(make_emulator: Callable[..., Emulator]) -> None:
    emulator = make_emulator(fifty_paths_tree())
    with client_for(emulator) as client:
        client.fetch("meta-data/item/00")
        emulator.revoke_tokens()
        results = client.fetch_all([f"meta-data/item/{i:02d}" for i in range(50)])
    assert all(results[f"meta-data/item/{i:02d}"] == f"value-{i}".encode() for i in range(50))
    assert emulator.count("PUT") == 2


def refuse_every_token(emulator: Emulator, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every token is revoked as soon as it is issued, and those issued so far too."""
    original = emulator._issue_token

    def issue_and_revoke(ttl: int) -> str:
        issued = original(ttl)
        emulator.revoke_tokens()
        return issued

    monkeypatch.setattr(emulator, "_issue_token", issue_and_revoke)
    emulator.revoke_tokens()


def test_a_server_refusing_every_token_is_an_error_at_once(emulator: Emulator, monkeypatch: pytest.MonkeyPatch,
                                                           pauses: Pauses) -> None:
    refuse_every_token(emulator, monkeypatch)
    with pytest.raises(ImdsError, match=r"^/latest/meta-data/instance-id: 401 Unauthorized again after renewing"):
        client_for(emulator).fetch("meta-data/instance-id")
    assert sum(pauses.taken) < 2  # paced renewals, not the 60 s deadline
    # The first token, then renewals until MAX_FRESH_REFUSALS renewed tokens in a row were refused.
    assert emulator.count("PUT") == 1 + MAX_FRESH_REFUSALS
    assert emulator.count("GET") == 1 + MAX_FRESH_REFUSALS


def test_tokens_refused_after_a_success_are_renewed_while_the_deadline_allows(
    emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = client_for(emulator, deadline=60)
    client.fetch("meta-data/instance-id")
    refuse_every_token(emulator, monkeypatch)  # churn at its worst: no token survives to be used
    started = time.monotonic()
    with pytest.raises(ImdsUnreachable, match=r"^/latest/meta-data/instance-id: 401 Unauthorized again after "
                                              r"renewing the token; no usable answer within the 2s deadline"):
        client.fetch("meta-data/instance-id", deadline=Deadline(2))
    assert time.monotonic() - started < 2 + DEADLINE_SLACK
    # Renewals are paced like retries: at most 6 in 2 s (docs/bounds.md), plus the first, unpaced.
    assert 1 + 2 <= emulator.count("PUT") <= 1 + 1 + 6


@pytest.mark.parametrize("concurrency", [1, 8])
@pytest.mark.parametrize("every", [1, 3])
def test_token_churn_is_survived_at_any_concurrency(
    make_emulator: Callable[..., Emulator], monkeypatch: pytest.MonkeyPatch, concurrency: int, every: int
) -> None:
    emulator = make_emulator(fifty_paths_tree())
    revocations = churn(emulator, every)
    with client_for(emulator, concurrency=concurrency, deadline=30) as client:
        results = client.fetch_all([f"meta-data/item/{i:02d}" for i in range(50)])
    assert results == {f"meta-data/item/{i:02d}": f"value-{i}".encode() for i in range(50)}
    # A renewal needs the newest token refused, so a revocation since it was issued: never
    # two renewals for one revocation, however many requests were refused at once.
    assert emulator.count("PUT") <= 1 + revocations[0]


def test_token_is_renewed_before_it_expires(emulator: Emulator) -> None:
    client = client_for(emulator, token_ttl=1)
    client.fetch("meta-data/instance-id")
    time.sleep(1.0)  # within the renewal margin: renewed before use, no 401
    client.fetch("meta-data/instance-id")
    assert emulator.count("PUT") == 2
    assert [r.status for r in emulator.requests if r.method == "GET"] == [200, 200]


def test_ttl_is_sent_as_configured(emulator: Emulator) -> None:
    client_for(emulator, token_ttl=900).fetch("meta-data/instance-id")
    assert [(r.method, r.ttl, r.status) for r in emulator.requests] == [("PUT", "900", 200), ("GET", None, 200)]


# -- endpoints ---------------------------------------------------------------------
def test_endpoint_precedence() -> None:
    env: Dict[str, str] = {ENV_ENDPOINT: "http://127.0.0.1:9", ENV_ENDPOINT_MODE: "IPv6"}
    assert choose_endpoint("http://127.0.0.1:1", "ipv4", env) == ("http://127.0.0.1:1", "--endpoint")
    assert choose_endpoint(None, "ipv4", env) == ("http://127.0.0.1:9", ENV_ENDPOINT)
    assert choose_endpoint(None, "ipv4", {ENV_ENDPOINT_MODE: "IPv6"}) == ("ipv6", ENV_ENDPOINT_MODE)
    assert choose_endpoint(None, "ipv4", {}) == ("ipv4", "declaration")
    assert choose_endpoint(None, None, {}) == ("auto", "default")
    with pytest.raises(EndpointError, match="IPv4 or IPv6"):
        choose_endpoint(None, None, {ENV_ENDPOINT_MODE: "ipv5"})


def test_named_endpoints() -> None:
    assert candidate_urls("ipv4") == [IPV4_URL]
    assert candidate_urls("ipv6") == [IPV6_URL]
    assert candidate_urls("auto") == [IPV4_URL, IPV6_URL]
    assert candidate_urls("http://[::1]:8080/") == ["http://[::1]:8080"]
    for bad in ("https://169.254.169.254", "http://host/latest", "ftp://x", "http://h:99999"):
        with pytest.raises(EndpointError):
            candidate_urls(bad)


def test_auto_takes_the_endpoint_that_answers(emulator: Emulator) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    client = ImdsClient(ClientSettings(endpoint="auto", deadline=10), candidates=[dead, emulator.url])
    assert client.fetch("meta-data/instance-id") == b"i-0a1b2c3d4e5f60789"
    assert emulator.count("PUT") == 1


def test_auto_with_nothing_answering_names_every_endpoint() -> None:
    dead = [f"http://127.0.0.1:{free_port()}", f"http://[::1]:{free_port()}"]
    client = ImdsClient(ClientSettings(endpoint="auto", deadline=0.6), candidates=dead)
    with pytest.raises(ImdsUnreachable) as caught:
        client.fetch("meta-data/instance-id")
    assert all(url in str(caught.value) for url in dead)


@needs_ipv6_loopback
def test_emulator_on_ipv6_loopback(make_emulator: Callable[..., Emulator]) -> None:
    emulator = make_emulator(host="::1")
    assert client_for(emulator).fetch("meta-data/placement/region") == b"eu-west-1"


def test_dead_http_proxy_changes_nothing(emulator: Emulator, monkeypatch: pytest.MonkeyPatch) -> None:
    dead_proxy = f"http://127.0.0.1:{free_port()}"
    for name in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.setenv(name, dead_proxy)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    assert client_for(emulator, deadline=5).fetch("meta-data/instance-id") == b"i-0a1b2c3d4e5f60789"


def test_redirects_are_not_followed(emulator: Emulator) -> None:
    client = client_for(emulator)
    client.fetch("meta-data/instance-id")
    emulator.fail_next(301)
    with pytest.raises(ImdsError, match="redirect.*never followed"):
        client.fetch("meta-data/instance-id")


# -- waiting and retrying ----------------------------------------------------------
def test_startup_delay_within_the_deadline_succeeds(make_emulator: Callable[..., Emulator]) -> None:
    emulator = make_emulator(delay=1.5)
    started = time.monotonic()
    assert client_for(emulator, deadline=10).fetch("meta-data/instance-id") == b"i-0a1b2c3d4e5f60789"
    assert time.monotonic() - started >= 1.5
    assert emulator.count("PUT") == 1


@pytest.mark.parametrize("status", [429, 500, 503])
def test_throttling_and_server_errors_are_retried(emulator: Emulator, status: int) -> None:
    emulator.fail_next(status, count=3)
    assert client_for(emulator).fetch("meta-data/instance-id") == b"i-0a1b2c3d4e5f60789"
    assert [r.status for r in emulator.requests] == [status] * 3 + [200, 200]


def test_retry_after_is_honoured(emulator: Emulator) -> None:
    emulator.fail_next(503, count=1, retry_after="1")
    started = time.monotonic()
    client_for(emulator).fetch("meta-data/instance-id")
    assert time.monotonic() - started >= 1.0


def test_retry_after_beyond_the_deadline_fails_at_once(emulator: Emulator, pauses: Pauses) -> None:
    emulator.fail_next(429, count=1, retry_after="120")
    with pytest.raises(ImdsError, match=r"/latest/api/token: IMDS asked to retry after 120s; .*HTTP 429"):
        client_for(emulator, deadline=5).fetch("meta-data/instance-id")
    assert pauses.taken == []  # no wait for a retry the deadline cannot hold
    assert emulator.count("PUT") == 1


def test_connection_reset_mid_body_is_retried(emulator: Emulator) -> None:
    client = client_for(emulator, deadline=2)
    client.fetch("meta-data/placement/region")
    emulator.reset_mid_body = True
    message = (r"^/latest/meta-data/instance-id: no usable answer within the 2s deadline "
               r"\((connection closed mid-body|connection failed: ConnectionResetError)\)$")
    with pytest.raises(ImdsUnreachable, match=message):
        client.fetch("meta-data/instance-id")
    assert emulator.count("GET", path="/latest/meta-data/instance-id") > 1


def test_slow_body_is_bounded_by_the_attempt_timeout(emulator: Emulator) -> None:
    client = client_for(emulator, timeout=0.3, deadline=1.5)
    client.fetch("meta-data/placement/region")
    emulator.slow_body = 0.05  # 19 bytes take ~1 s, more than one attempt may take
    started = time.monotonic()
    with pytest.raises(ImdsUnreachable, match="/latest/meta-data/instance-id"):
        client.fetch("meta-data/instance-id")
    assert time.monotonic() - started < 1.5 + DEADLINE_SLACK


# -- failing fast and clearly ----------------------------------------------------------
def test_disabled_endpoint_fails_fast_with_the_403_message(make_emulator: Callable[..., Emulator],
                                                           pauses: Pauses) -> None:
    emulator = make_emulator(mode="disabled")
    with pytest.raises(ImdsError, match="IMDS endpoint disabled, or request forbidden") as caught:
        client_for(emulator).fetch("meta-data/instance-id")
    assert caught.value.path == "/latest/api/token"
    assert pauses.taken == []  # not retried
    assert emulator.count("PUT") == 1


@pytest.mark.slow
def test_dropped_put_names_the_hop_limit_within_the_deadline(emulator: Emulator) -> None:
    emulator.drop_put = True
    started = time.monotonic()
    with pytest.raises(ImdsError, match="HttpPutResponseHopLimit"):
        client_for(emulator, timeout=0.5, deadline=10).fetch("meta-data/instance-id")
    assert time.monotonic() - started < 10 + DEADLINE_SLACK


def test_not_found_is_distinct(emulator: Emulator) -> None:
    with pytest.raises(ImdsNotFound, match=r"^/latest/meta-data/nothing-here: not found \(404\)$"):
        client_for(emulator).fetch("meta-data/nothing-here")


def test_never_listening_fails_within_the_deadline() -> None:
    client = ImdsClient(ClientSettings(endpoint=f"http://127.0.0.1:{free_port()}", deadline=1.0))
    started = time.monotonic()
    with pytest.raises(ImdsUnreachable, match=r"/latest/api/token: no usable answer within the 1s deadline"):
        client.fetch("meta-data/instance-id")
    assert time.monotonic() - started < 1.0 + DEADLINE_SLACK


# -- IMDSv1 ----------------------------------------------------------------------------
def test_v1_only_server_is_an_error_by_default(make_emulator: Callable[..., Emulator]) -> None:
    emulator = make_emulator(mode="v1-only")
    with pytest.raises(ImdsError, match="imdsv1: fallback"):
        client_for(emulator).fetch("meta-data/instance-id")
    assert emulator.count("GET") == 0  # never silently falls back


def test_v1_fallback_when_allowed(make_emulator: Callable[..., Emulator]) -> None:
    emulator = make_emulator(mode="v1-only")
    assert client_for(emulator, imdsv1="fallback").fetch("meta-data/instance-id") == b"i-0a1b2c3d4e5f60789"
    assert [r.token for r in emulator.requests if r.method == "GET"] == ["none"]


# -- limits ----------------------------------------------------------------------------------
def test_oversized_body_is_refused(make_emulator: Callable[..., Emulator]) -> None:
    emulator = make_emulator(MetadataTree({"meta-data/big": b"x" * 5000}))
    with pytest.raises(ImdsError, match=r"/latest/meta-data/big: response of 5000 bytes exceeds"):
        client_for(emulator, max_body=4096).fetch("meta-data/big")


def test_gzip_user_data_comes_back_intact(make_emulator: Callable[..., Emulator]) -> None:
    payload = gzip.compress(b"#!/bin/sh\necho hello\n" * 20)
    emulator = make_emulator(MetadataTree({"user-data": payload}))
    assert client_for(emulator).fetch("user-data") == payload


def test_concurrent_fetches_share_keepalive_connections(make_emulator: Callable[..., Emulator]) -> None:
    emulator = make_emulator(fifty_paths_tree())
    original = emulator._server.process_request
    count = {"n": 0}

    def counting(request: socket.socket, address: object) -> None:
        count["n"] += 1
        original(request, address)

    emulator._server.process_request = counting  # type: ignore[method-assign]
    with client_for(emulator, concurrency=4) as client:
        client.fetch_all([f"meta-data/item/{i:02d}" for i in range(50)])
    assert emulator.count("GET") == 50
    assert count["n"] <= 5  # one connection for the PUT, and at most one per worker


def test_slow_token_body_is_not_mistaken_for_the_hop_limit(emulator: Emulator) -> None:
    emulator.slow_body = 0.05  # the PUT's headers arrive; its body trickles
    with pytest.raises(ImdsUnreachable) as caught:
        client_for(emulator, timeout=0.3, deadline=1.5).fetch("meta-data/instance-id")
    assert "HttpPutResponseHopLimit" not in str(caught.value)
    assert "response body" in str(caught.value)


# -- one client, many operations (the long-running watcher) ------------------------------------
def test_the_token_is_reused_across_operations_with_their_own_deadlines(emulator: Emulator) -> None:
    with client_for(emulator) as client:
        for _ in range(5):
            assert client.fetch("meta-data/instance-id", deadline=Deadline(5)) == b"i-0a1b2c3d4e5f60789"
        client.fetch_all(["meta-data/placement/region", "meta-data/instance-type"], deadline=Deadline(5))
    assert emulator.count("PUT") == 1


def test_the_run_deadline_is_made_at_construction_and_an_operation_may_bring_its_own(emulator: Emulator) -> None:
    client = client_for(emulator, deadline=0.3)
    time.sleep(0.4)
    with pytest.raises(ImdsUnreachable, match=r"no usable answer within the 0.3s deadline"):
        client.fetch("meta-data/instance-id")
    assert client.fetch("meta-data/instance-id", deadline=Deadline(5)) == b"i-0a1b2c3d4e5f60789"
    assert emulator.requests == emulator.requests[:2] and emulator.count("PUT") == 1


def test_an_operation_deadline_bounds_that_operation() -> None:
    hole = socket.socket()
    hole.bind(("127.0.0.1", 0))
    hole.listen(64)  # connections complete in the backlog; nothing ever answers
    try:
        client = ImdsClient(ClientSettings(endpoint=f"http://127.0.0.1:{hole.getsockname()[1]}", deadline=600))
        started = time.monotonic()
        with pytest.raises(ImdsUnreachable, match=r"^/latest/api/token: no usable answer within the 1s deadline"):
            client.fetch("meta-data/instance-id", deadline=Deadline(1))
        assert time.monotonic() - started < 1 + DEADLINE_SLACK
    finally:
        hole.close()


def open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_many_operations_keep_a_bounded_number_of_connections(make_emulator: Callable[..., Emulator]) -> None:
    emulator = make_emulator(fifty_paths_tree())
    original = emulator._server.process_request
    accepted = [0]

    def counting(request: socket.socket, address: object) -> None:
        accepted[0] += 1
        original(request, address)

    emulator._server.process_request = counting  # type: ignore[method-assign]
    paths = [f"meta-data/item/{i:02d}" for i in range(12)]
    # A long attempt timeout: on a loaded machine a 2 s attempt can time out, and a timed-out
    # connection is rightly replaced; this test is about reuse, not faults.
    with client_for(emulator, concurrency=4, timeout=30) as client:
        client.fetch_all(paths, deadline=Deadline(60))
        after_first = open_descriptors()
        for _ in range(40):  # each operation runs its own worker threads
            assert len(client.fetch_all(paths, deadline=Deadline(60))) == 12
        # On a loaded machine the first operation may run on fewer threads than later ones, so
        # the pool can still grow to its 4 connections after it: both ends of each are in this
        # process (the emulator serves from threads). A leak per operation would be 40 or more.
        assert open_descriptors() <= after_first + 2 * 4
    assert accepted[0] <= 4 + 1  # the pool's connections, reused: never one per operation or thread
    assert emulator.count("PUT") == 1


def close_after_answering(request: Request, conn: Connection) -> None:
    """Answers, then closes the connection without saying so (no `Connection: close`)."""
    if request.method == "PUT":
        answer(conn, 200, TOKEN.encode(), {"X-aws-ec2-metadata-token-ttl-seconds": "21600"})
    else:
        answer(conn, 200, b"value")
    conn.closed = True


def test_a_keepalive_connection_the_server_closed_is_replaced_without_a_retry(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="cc_imds")
    with HostileServer(close_after_answering) as server, client_for_url(server.url) as client:
        for _ in range(4):
            assert client.fetch("meta-data/instance-id", deadline=Deadline(5)) == b"value"
            time.sleep(0.05)
        assert server.connections == 5
    assert not [r for r in caplog.records if "retry" in r.getMessage()]


# -- conventions -------------------------------------------------------------------------------
def test_every_request_names_cc_imds_and_its_version(emulator: Emulator) -> None:
    with client_for(emulator) as client:
        client.fetch_all(["meta-data/instance-id", "meta-data/placement/region"])
    assert len(emulator.requests) == 3
    assert {r.user_agent for r in emulator.requests} == {f"cc-imds/{cc_imds.__version__}"}


@pytest.mark.parametrize("value", ["true", "TRUE", "True", " true\n"])
def test_metadata_disabled_in_the_environment_sends_nothing(
    emulator: Emulator, monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", value)
    message = r"^AWS_EC2_METADATA_DISABLED is set to true: instance metadata access is turned off"
    with client_for(emulator) as client:
        with pytest.raises(MetadataDisabled, match=message):
            client.fetch("meta-data/instance-id")
        with pytest.raises(MetadataDisabled, match=message):
            client.fetch_all(["meta-data/instance-id"])
    assert MetadataDisabled.exit_code == 3
    assert emulator.requests == []


@pytest.mark.parametrize("value", ["false", "", "0", "1", "yes"])
def test_only_true_disables_metadata(emulator: Emulator, monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", value)
    assert client_for(emulator).fetch("meta-data/instance-id") == b"i-0a1b2c3d4e5f60789"


def test_an_endpoint_by_host_name(make_emulator: Callable[..., Emulator]) -> None:
    emulator = make_emulator()
    port = emulator.url.rsplit(":", 1)[1]
    assert client_for_url(f"http://localhost:{port}").fetch("meta-data/instance-id") == b"i-0a1b2c3d4e5f60789"


# -- retry discipline ---------------------------------------------------------------------------------
@pytest.mark.parametrize("retry_after", ["0", "Wed, 21 Oct 2015 07:28:00 GMT", "-1", "soon", "\u00b2"])
def test_a_retry_after_of_zero_or_in_the_past_never_hurries_the_client(emulator: Emulator, retry_after: str) -> None:
    emulator.fail_next(503, count=100_000, retry_after=retry_after)
    with pytest.raises(ImdsUnreachable, match=r"^/latest/api/token: no usable answer within the 2s deadline"):
        client_for(emulator, deadline=2).fetch("meta-data/instance-id")
    assert emulator.count("PUT") <= 6  # docs/bounds.md: at most 6 attempts in 2 s


@pytest.mark.parametrize("echo", ["0", "99999", "abc", "\u00b2", ""])
def test_a_nonsense_ttl_echo_keeps_the_ttl_asked_for(make_emulator: Callable[..., Emulator], echo: str) -> None:
    emulator = make_emulator(fifty_paths_tree())
    echo_ttl(emulator, echo)
    with client_for(emulator, concurrency=1) as client:
        assert len(client.fetch_all([f"meta-data/item/{i:02d}" for i in range(10)])) == 10
    assert (emulator.count("PUT"), emulator.count("GET")) == (1, 10)


def test_a_shorter_ttl_echo_is_honoured(make_emulator: Callable[..., Emulator]) -> None:
    emulator = make_emulator()
    echo_ttl(emulator, "1")
    with client_for(emulator) as client:
        client.fetch("meta-data/instance-id")
        time.sleep(1.0)  # past the granted 1 s, well within the 21600 s asked for
        client.fetch("meta-data/instance-id")
    assert emulator.count("PUT") == 2 and not [r for r in emulator.requests if r.status == 401]


# -- tokens that are not header values ----------------------------------------------------------------
BAD_TOKENS = {
    "crlf": "evilToken123\r\nX-Injected: yes", "lf": "evilToken123\nsecond-line", "space": "evil token",
    "non-ascii": "évilToken", "huge": "e" * 5000, "nul": "evilToken\x00123", "tab": "evil\ttoken",
}


@pytest.mark.parametrize("token", list(BAD_TOKENS.values()), ids=list(BAD_TOKENS))
def test_a_token_that_is_not_a_header_value_is_refused_without_repeating_it(emulator: Emulator, token: str) -> None:
    issue_token(emulator, token)
    with pytest.raises(ImdsError) as caught:
        client_for(emulator).fetch("meta-data/instance-id")
    message = str(caught.value)
    assert message.startswith("/latest/api/token: IMDS answered the token request with ")
    assert "not a usable token" in message
    assert "evil" not in message and "eeeee" not in message
    assert emulator.count("GET") == 0


# -- listings that name more paths ------------------------------------------------------------
def test_listings_expand_into_more_fetches_each_path_once(make_emulator: Callable[..., Emulator]) -> None:
    """fetch_all with `expand`: a listing's entries are fetched as it arrives, each once, by at
    most `concurrency` requests at a time."""
    tree = MetadataTree({**{f"meta-data/dir/{i:02d}/leaf": f"leaf-{i}".encode() for i in range(20)},
                         "meta-data/other": b"other"})
    emulator = make_emulator(tree)

    def expand(path: str, body: bytes) -> List[str]:
        if not path.endswith("/"):
            return []
        return [path + line for line in body.decode().splitlines()] + ["meta-data/other"]

    with client_for(emulator, concurrency=3) as client:
        results = client.fetch_all(["meta-data/dir/", "meta-data/other"], expand)
    assert results["meta-data/other"] == b"other"
    assert all(results[f"meta-data/dir/{i:02d}/leaf"] == f"leaf-{i}".encode() for i in range(20))
    assert len(results) == 1 + 20 + 20 + 1  # the listing, each entry's listing and leaf, and other
    assert emulator.count("GET") == len(results)


def test_a_failure_while_expanding_reaches_the_caller(make_emulator: Callable[..., Emulator]) -> None:
    emulator = make_emulator(fifty_paths_tree())

    def expand(path: str, body: bytes) -> List[str]:
        raise ValueError(f"cannot read the listing of {path}")

    with client_for(emulator) as client, pytest.raises(ValueError, match="cannot read the listing"):
        client.fetch_all([f"meta-data/item/{i:02d}" for i in range(10)], expand)
