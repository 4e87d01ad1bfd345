"""The IMDSv2 client against the emulator, over real loopback sockets."""

from __future__ import annotations

import gzip
import socket
import time
from typing import Callable, Dict

import pytest

from cc_imds.client import (
    ENV_ENDPOINT,
    ENV_ENDPOINT_MODE,
    IPV4_URL,
    IPV6_URL,
    ClientSettings,
    EndpointError,
    ImdsClient,
    candidate_urls,
    choose_endpoint,
)
from cc_imds.emulator import Emulator
from cc_imds.errors import ImdsError, ImdsNotFound, ImdsUnreachable
from cc_imds.tree import MetadataTree
from tests.conftest import needs_ipv6_loopback


def client_for(emulator: Emulator, **settings: object) -> ImdsClient:
    return ImdsClient(ClientSettings(endpoint=emulator.url, **settings))  # type: ignore[arg-type]


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


def test_second_401_is_an_error_naming_the_path(emulator: Emulator, monkeypatch: pytest.MonkeyPatch) -> None:
    client = client_for(emulator)
    client.fetch("meta-data/instance-id")
    # Every token is revoked as soon as it is issued: the renewed one fails too.
    original = emulator._issue_token

    def issue_and_revoke(ttl: int) -> str:
        issued = original(ttl)
        emulator.revoke_tokens()
        return issued

    monkeypatch.setattr(emulator, "_issue_token", issue_and_revoke)
    emulator.revoke_tokens()
    with pytest.raises(ImdsError, match=r"^/latest/meta-data/instance-id: 401 Unauthorized again"):
        client.fetch("meta-data/instance-id")
    assert emulator.count("PUT") == 2  # renewed exactly once


def test_token_is_renewed_before_it_expires(emulator: Emulator) -> None:
    client = client_for(emulator, token_ttl=1)
    client.fetch("meta-data/instance-id")
    time.sleep(1.0)  # within the renewal margin: renewed before use, no 401
    client.fetch("meta-data/instance-id")
    assert emulator.count("PUT") == 2
    assert [r.status for r in emulator.requests if r.method == "GET"] == [200, 200]


def test_ttl_is_sent_as_configured(emulator: Emulator) -> None:
    client_for(emulator, token_ttl=900).fetch("meta-data/instance-id")
    assert emulator.requests[0].method == "PUT" and emulator.requests[0].status == 200


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


def test_retry_after_beyond_the_deadline_fails_at_once(emulator: Emulator) -> None:
    emulator.fail_next(429, count=1, retry_after="120")
    started = time.monotonic()
    with pytest.raises(ImdsError, match=r"/latest/api/token: IMDS asked to retry after 120s; .*HTTP 429"):
        client_for(emulator, deadline=5).fetch("meta-data/instance-id")
    assert time.monotonic() - started < 1


def test_connection_reset_mid_body_is_retried(emulator: Emulator) -> None:
    client = client_for(emulator, deadline=2)
    client.fetch("meta-data/placement/region")
    emulator.reset_mid_body = True
    with pytest.raises(ImdsUnreachable, match=r"/latest/meta-data/instance-id: .*closed mid-body|failed"):
        client.fetch("meta-data/instance-id")
    assert emulator.count("GET", path="/latest/meta-data/instance-id") > 1


def test_slow_body_is_bounded_by_the_attempt_timeout(emulator: Emulator) -> None:
    client = client_for(emulator, timeout=0.3, deadline=1.5)
    client.fetch("meta-data/placement/region")
    emulator.slow_body = 0.05  # 19 bytes take ~1 s, more than one attempt may take
    started = time.monotonic()
    with pytest.raises(ImdsUnreachable, match="/latest/meta-data/instance-id"):
        client.fetch("meta-data/instance-id")
    assert time.monotonic() - started < 1.5 + 0.5


# -- failing fast and clearly ----------------------------------------------------------
def test_disabled_endpoint_fails_fast_with_the_403_message(make_emulator: Callable[..., Emulator]) -> None:
    emulator = make_emulator(mode="disabled")
    started = time.monotonic()
    with pytest.raises(ImdsError, match="IMDS endpoint disabled, or request forbidden") as caught:
        client_for(emulator).fetch("meta-data/instance-id")
    assert caught.value.path == "/latest/api/token"
    assert time.monotonic() - started < 0.5
    assert emulator.count("PUT") == 1


@pytest.mark.slow
def test_dropped_put_names_the_hop_limit_within_the_deadline(emulator: Emulator) -> None:
    emulator.drop_put = True
    started = time.monotonic()
    with pytest.raises(ImdsError, match="HttpPutResponseHopLimit"):
        client_for(emulator, timeout=0.5, deadline=10).fetch("meta-data/instance-id")
    assert time.monotonic() - started < 10


def test_not_found_is_distinct(emulator: Emulator) -> None:
    with pytest.raises(ImdsNotFound, match=r"^/latest/meta-data/nothing-here: not found \(404\)$"):
        client_for(emulator).fetch("meta-data/nothing-here")


def test_never_listening_fails_within_the_deadline() -> None:
    client = ImdsClient(ClientSettings(endpoint=f"http://127.0.0.1:{free_port()}", deadline=1.0))
    started = time.monotonic()
    with pytest.raises(ImdsUnreachable, match=r"/latest/api/token: no usable answer within the 1s deadline"):
        client.fetch("meta-data/instance-id")
    assert time.monotonic() - started < 1.0 + 0.5


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
