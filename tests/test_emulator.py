"""The emulator is strict: it behaves like IMDS as FACTS §3 describes."""

from __future__ import annotations

import base64
import http.client
import json
import socket
import time
from typing import Dict, Optional, Tuple

import pytest

from cc_imds.imds.tree import load_tree, tree_from_document
from cc_imds.testing.emulator import Emulator
from tests.conftest import needs_ipv6_loopback


def request(
    emulator: Emulator, method: str, path: str, headers: Optional[Dict[str, str]] = None
) -> Tuple[int, Dict[str, str], bytes]:
    host, port = emulator.url[len("http://") :].rsplit(":", 1)
    conn = http.client.HTTPConnection(host.strip("[]"), int(port), timeout=5)
    try:
        conn.request(method, path, headers=headers or {})
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


def token(emulator: Emulator, ttl: str = "60") -> str:
    status, headers, body = request(emulator, "PUT", "/latest/api/token", {"X-aws-ec2-metadata-token-ttl-seconds": ttl})
    assert status == 200
    assert headers["X-aws-ec2-metadata-token-ttl-seconds"] == ttl  # echoed, as SDKs require
    return body.decode()


@pytest.mark.parametrize("ttl", ["", "0", "21601", "abc", "-5"])
def test_token_ttl_must_be_1_to_21600(emulator: Emulator, ttl: str) -> None:
    headers = {"X-aws-ec2-metadata-token-ttl-seconds": ttl} if ttl else {}
    assert request(emulator, "PUT", "/latest/api/token", headers)[0] == 400


def test_put_with_x_forwarded_for_is_forbidden(emulator: Emulator) -> None:
    headers = {"X-aws-ec2-metadata-token-ttl-seconds": "60", "X-Forwarded-For": "10.0.0.1"}
    assert request(emulator, "PUT", "/latest/api/token", headers)[0] == 403


def test_required_mode_needs_a_valid_token(emulator: Emulator) -> None:
    assert request(emulator, "GET", "/latest/meta-data/instance-id")[0] == 401
    assert request(emulator, "GET", "/latest/meta-data/instance-id", {"X-aws-ec2-metadata-token": "forged"})[0] == 401
    auth = {"X-aws-ec2-metadata-token": token(emulator)}
    status, _, body = request(emulator, "GET", "/latest/meta-data/instance-id", auth)
    assert (status, body) == (200, b"i-0a1b2c3d4e5f60789")
    assert [r.token for r in emulator.requests if r.method == "GET"] == ["none", "invalid", "valid"]


def test_optional_mode_serves_without_token_but_rejects_bad_ones(make_emulator) -> None:
    emulator = make_emulator(mode="optional")
    assert request(emulator, "GET", "/latest/meta-data/instance-id")[0] == 200
    assert request(emulator, "GET", "/latest/meta-data/instance-id", {"X-aws-ec2-metadata-token": "x"})[0] == 401


def test_disabled_mode_forbids_everything(make_emulator) -> None:
    emulator = make_emulator(mode="disabled")
    assert request(emulator, "PUT", "/latest/api/token", {"X-aws-ec2-metadata-token-ttl-seconds": "60"})[0] == 403
    assert request(emulator, "GET", "/latest/meta-data/")[0] == 403


def test_revoked_and_expired_tokens_get_401(emulator: Emulator) -> None:
    first = token(emulator)
    emulator.revoke_tokens()
    assert request(emulator, "GET", "/latest/meta-data/", {"X-aws-ec2-metadata-token": first})[0] == 401
    short = token(emulator, ttl="1")
    time.sleep(1.1)
    assert request(emulator, "GET", "/latest/meta-data/", {"X-aws-ec2-metadata-token": short})[0] == 401
    assert emulator.requests[-1].token == "expired"


def test_listings_leaves_and_404(emulator: Emulator) -> None:
    auth = {"X-aws-ec2-metadata-token": token(emulator)}
    status, _, body = request(emulator, "GET", "/latest/meta-data/", auth)
    entries = body.decode().split("\n")
    assert "instance-id" in entries and "placement/" in entries and "tags/" in entries
    # a trailing slash on a leaf is tolerated (botocore relies on it)
    assert request(emulator, "GET", "/latest/meta-data/instance-id/", auth)[2] == b"i-0a1b2c3d4e5f60789"
    status, headers, body = request(emulator, "GET", "/latest/meta-data/no-such-thing", auth)
    assert status == 404 and b"<title>404 - Not Found</title>" in body
    # JSON leaves are text/plain, like every answer
    status, headers, body = request(emulator, "GET", "/latest/dynamic/instance-identity/document", auth)
    assert headers["Content-Type"] == "text/plain" and json.loads(body)["region"] == "eu-west-1"
    # dated API versions are served too (cloud-init's datasource uses them)
    assert request(emulator, "GET", "/2021-03-23/meta-data/instance-id", auth)[0] == 200


def test_tags_can_be_disabled(make_emulator) -> None:
    emulator = make_emulator(load_tree(tags_enabled=False))
    auth = {"X-aws-ec2-metadata-token": token(emulator)}
    assert request(emulator, "GET", "/latest/meta-data/tags/instance/", auth)[0] == 404
    assert request(emulator, "GET", "/latest/meta-data/tags/instance/Name", auth)[0] == 404
    assert "tags/" not in request(emulator, "GET", "/latest/meta-data/", auth)[2].decode().split("\n")


def test_v1_only_mode_refuses_the_token_request(make_emulator) -> None:
    emulator = make_emulator(mode="v1-only")
    assert request(emulator, "PUT", "/latest/api/token", {"X-aws-ec2-metadata-token-ttl-seconds": "60"})[0] == 404
    assert request(emulator, "GET", "/latest/meta-data/instance-id")[0] == 200


@needs_ipv6_loopback
def test_serves_on_ipv6_loopback(make_emulator) -> None:
    emulator = make_emulator(host="::1")
    assert emulator.url.startswith("http://[::1]:")
    assert len(token(emulator)) > 20


def test_connections_arriving_together_wait_in_the_queue_instead_of_being_dropped() -> None:
    """A full listen queue drops a connection's SYN and the client retries a second later.
    Nothing accepts here, so every connection must fit in the queue (socketserver's default of
    5 fits six, and the seventh connect times out)."""
    emulator = Emulator(load_tree())
    emulator._server.server_activate()  # listening, not serving
    host, port = emulator._server.server_address[:2]
    connections = []
    try:
        for _ in range(32):
            connections.append(socket.create_connection((host, port), timeout=0.5))
    finally:
        for connection in connections:
            connection.close()
        emulator.stop()
    assert len(connections) == 32


def test_aemm_fixture_format_loads() -> None:
    document = {
        "metadata": {
            "paths": {"iid": "/latest/meta-data/instance-id", "spot": "/latest/meta-data/spot/instance-action"},
            "values": {"iid": "i-1", "spot": None},
        },
        "dynamic": {"paths": {"doc": "/latest/dynamic/instance-identity/document"}, "values": {"doc": {"region": "r"}}},
        "userdata": {"paths": {"ud": "/latest/user-data"}, "values": {"ud": "aGVsbG8="}},
    }
    tree = tree_from_document(document)
    assert tree.lookup("meta-data/instance-id") == b"i-1"
    assert tree.lookup("meta-data/spot/instance-action") is None  # null -> 404
    assert json.loads(tree.lookup("dynamic/instance-identity/document") or b"") == {"region": "r"}
    assert tree.lookup("user-data") == b"hello"


def test_flat_tree_binary_values() -> None:
    gzipped = "H4sIAAAAAAAAA8tIzcnJBwCGphA2BQAAAA=="
    tree = tree_from_document({"user-data": {"$base64": gzipped}})
    assert tree.lookup("user-data") == base64.b64decode(gzipped)


def test_records_injected_statuses_and_retry_after(emulator: Emulator) -> None:
    emulator.fail_next(429, count=2, retry_after="1")
    first = request(emulator, "PUT", "/latest/api/token", {"X-aws-ec2-metadata-token-ttl-seconds": "60"})
    assert first[0] == 429 and first[1]["Retry-After"] == "1"
    assert request(emulator, "GET", "/latest/meta-data/")[0] == 429
    assert request(emulator, "GET", "/latest/meta-data/")[0] == 401
    assert [r.status for r in emulator.requests] == [429, 429, 401]


TOKEN_TTL = {"X-aws-ec2-metadata-token-ttl-seconds": "60"}


def test_a_fault_for_gets_lets_the_token_put_through(emulator: Emulator) -> None:
    emulator.fail_next(503, count=2, method="GET")
    assert request(emulator, "PUT", "/latest/api/token", TOKEN_TTL)[0] == 200
    assert [request(emulator, "GET", "/latest/meta-data/")[0] for _ in range(3)] == [503, 503, 401]
    assert emulator.pending_faults() == 0


def test_a_fault_for_one_path_leaves_every_other_path_alone(emulator: Emulator) -> None:
    emulator.fail_next(500, path="/latest/meta-data/instance-id")
    assert request(emulator, "GET", "/latest/meta-data/ami-id")[0] == 401
    assert emulator.pending_faults() == 1
    assert request(emulator, "GET", "/latest/meta-data/instance-id")[0] == 500
    assert request(emulator, "GET", "/latest/meta-data/instance-id")[0] == 401


def test_a_path_ending_in_a_slash_covers_everything_under_it(emulator: Emulator) -> None:
    emulator.fail_next(404, count=2, path="/latest/meta-data/tags/")
    assert request(emulator, "GET", "/latest/meta-data/tags/instance/Name")[0] == 404
    assert request(emulator, "GET", "/latest/meta-data/instance-id")[0] == 401
    assert request(emulator, "GET", "/latest/meta-data/tags/instance/")[0] == 404
    assert emulator.pending_faults() == 0


def test_a_request_takes_the_oldest_fault_that_matches_it(emulator: Emulator) -> None:
    emulator.fail_next(429, method="GET", retry_after="2")
    emulator.fail_next(503)  # any method
    assert request(emulator, "PUT", "/latest/api/token", TOKEN_TTL)[0] == 503  # the GET fault waits
    status, headers, _ = request(emulator, "GET", "/latest/meta-data/")
    assert (status, headers["Retry-After"]) == (429, "2")
    assert emulator.pending_faults() == 0


def test_cleared_faults_are_never_given(emulator: Emulator) -> None:
    emulator.fail_next(503, count=5)
    emulator.clear_faults()
    assert request(emulator, "PUT", "/latest/api/token", TOKEN_TTL)[0] == 200


@pytest.mark.parametrize(("kwargs", "error"), [
    ({"status": 99}, "status 99 is not an HTTP status (100 to 599)"),
    ({"status": 503, "count": 0}, "count 0 must be at least 1"),
    ({"status": 503, "method": "get"}, "method 'get' must be GET, PUT, POST or DELETE"),
    ({"status": 503, "path": "latest/meta-data/"}, "path 'latest/meta-data/' must start with /"),
])
def test_a_fault_that_could_never_match_is_refused(emulator: Emulator, kwargs: dict, error: str) -> None:
    with pytest.raises(ValueError, match=error.replace("(", r"\(").replace(")", r"\)")):
        emulator.fail_next(**kwargs)
    assert emulator.pending_faults() == 0


def test_records_the_ttl_and_user_agent_as_sent(emulator: Emulator) -> None:
    ttl = {"X-aws-ec2-metadata-token-ttl-seconds": "123", "User-Agent": "probe/1"}
    request(emulator, "PUT", "/latest/api/token", ttl)
    request(emulator, "PUT", "/latest/api/token", {"X-aws-ec2-metadata-token-ttl-seconds": "0"})
    request(emulator, "GET", "/latest/meta-data/")
    assert [(r.method, r.status, r.ttl) for r in emulator.requests] == [
        ("PUT", 200, "123"), ("PUT", 400, "0"), ("GET", 401, None)
    ]
    assert [r.user_agent for r in emulator.requests] == ["probe/1", None, None]  # http.client sends none
