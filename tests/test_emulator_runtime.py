"""The emulator changes what it serves while it runs: values edited, credentials rotated,
event notices appearing, an outage. Directly, and over the loopback control endpoint."""

from __future__ import annotations

import http.client
import json
import signal
import subprocess
import time
from typing import Any, Callable, Optional, Tuple
from urllib.parse import urlsplit

import pytest

from cc_imds.errors import ImdsError, ImdsNotFound
from cc_imds.imds.client import ClientSettings, ImdsClient
from cc_imds.testing.control import ControlServer
from cc_imds.testing.emulator import Emulator
from cc_imds.watch.schedule import expiration
from tests.conftest import REPO, EmulateProcess

CREDS = "meta-data/iam/security-credentials/app-server"


def fetch(emulator: Emulator, path: str) -> bytes:
    with ImdsClient(ClientSettings(endpoint=emulator.url, deadline=5)) as client:
        return client.fetch(path)


def call(url: str, method: str, target: str, body: Optional[bytes] = None) -> Tuple[int, Any]:
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=10)
    try:
        conn.request(method, target, body=body)
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


def test_values_change_while_serving(emulator: Emulator) -> None:
    assert fetch(emulator, "meta-data/tags/instance/Environment") == b"staging"
    emulator.set_value("meta-data/tags/instance/Environment", "production")
    emulator.set_value("meta-data/tags/instance/Owner", "sre")
    assert fetch(emulator, "meta-data/tags/instance/Environment") == b"production"
    assert b"Owner" in fetch(emulator, "meta-data/tags/instance/").split(b"\n")
    assert emulator.delete_value("meta-data/tags/instance/Owner") == 1
    with pytest.raises(ImdsNotFound):
        fetch(emulator, "meta-data/tags/instance/Owner")
    assert emulator.delete_value("meta-data/tags/instance") == 5
    with pytest.raises(ImdsNotFound):
        fetch(emulator, "meta-data/tags/instance/")


def test_credentials_rotate_with_a_new_expiration(emulator: Emulator) -> None:
    before = json.loads(fetch(emulator, CREDS))
    assert emulator.rotate_credentials(expires_in=3600) == [CREDS]
    after = json.loads(fetch(emulator, CREDS))
    assert after["AccessKeyId"] != before["AccessKeyId"] and after["AccessKeyId"].startswith("ASIA")
    assert after["SecretAccessKey"] != before["SecretAccessKey"] and after["Token"] != before["Token"]
    assert abs(expiration(json.dumps(after)) - (time.time() + 3600)) < 5  # type: ignore[operator]
    assert {after["SecretAccessKey"], after["Token"]} <= set(emulator.issued_credentials())
    assert json.loads(fetch(emulator, "meta-data/iam/info"))["Code"] == "Success"  # no Expiration: untouched


def test_credentials_rotate_by_themselves_before_they_expire(emulator: Emulator) -> None:
    emulator.rotate_credentials(expires_in=2)  # less than a quarter of the lifetime left
    first = json.loads(fetch(emulator, CREDS))
    emulator.rotate_credentials_every(8)
    second = json.loads(fetch(emulator, CREDS))
    assert second["AccessKeyId"] != first["AccessKeyId"]
    assert expiration(json.dumps(second)) > time.time() + 6  # type: ignore[operator]
    assert json.loads(fetch(emulator, CREDS)) == second  # fresh enough: served as is


def test_event_notices_appear_and_go(emulator: Emulator) -> None:
    with pytest.raises(ImdsNotFound):
        fetch(emulator, "meta-data/spot/instance-action")
    notice = emulator.spot_interruption("stop", in_seconds=120)
    assert json.loads(fetch(emulator, "meta-data/spot/instance-action")) == notice
    assert fetch(emulator, "meta-data/spot/termination-time").decode() == notice["time"]
    rebalance = emulator.rebalance_recommendation()
    assert json.loads(fetch(emulator, "meta-data/events/recommendations/rebalance")) == rebalance
    first, second = emulator.schedule_maintenance(), emulator.schedule_maintenance("instance-stop")
    assert json.loads(fetch(emulator, "meta-data/events/maintenance/scheduled")) == [first, second]
    emulator.clear_events()
    for path in ("meta-data/spot/instance-action", "meta-data/events/recommendations/rebalance",
                 "meta-data/events/maintenance/scheduled"):
        with pytest.raises(ImdsNotFound):
            fetch(emulator, path)


def test_an_outage_answers_nothing_until_restored(emulator: Emulator) -> None:
    emulator.outage()
    with pytest.raises(ImdsError, match="no usable answer within"):
        with ImdsClient(ClientSettings(endpoint=emulator.url, deadline=1, timeout=0.5)) as client:
            client.fetch("meta-data/instance-id")
    assert emulator.requests and all(r.status == 0 for r in emulator.requests)
    emulator.restore()
    assert fetch(emulator, "meta-data/instance-id") == b"i-0a1b2c3d4e5f60789"


def test_a_timed_outage_ends_by_itself(emulator: Emulator) -> None:
    emulator.outage(seconds=0.5)
    time.sleep(0.6)
    assert fetch(emulator, "meta-data/instance-id") == b"i-0a1b2c3d4e5f60789"


# -- the control endpoint -------------------------------------------------------------------
@pytest.fixture
def control(emulator: Emulator) -> ControlServer:
    server = ControlServer(emulator).start()
    yield server
    server.stop()


def test_control_edits_the_tree(emulator: Emulator, control: ControlServer) -> None:
    assert call(control.url, "PUT", "/tree/meta-data/tags/instance/Name", b"web-2") == (
        200, {"set": "meta-data/tags/instance/Name", "bytes": 5})
    assert fetch(emulator, "meta-data/tags/instance/Name") == b"web-2"
    assert call(control.url, "DELETE", "/tree/meta-data/tags/instance/Name")[1]["leaves"] == 1
    status, tree = call(control.url, "GET", "/tree")
    assert status == 200 and "meta-data/tags/instance/Name" not in tree and tree["meta-data/instance-id"]


def test_control_rotates_credentials_and_announces_events(emulator: Emulator, control: ControlServer) -> None:
    status, answer = call(control.url, "POST", "/credentials/rotate?expires_in=900")
    assert (status, answer) == (200, {"rotated": [CREDS]})
    assert abs(expiration(fetch(emulator, CREDS)) - (time.time() + 900)) < 5  # type: ignore[operator]
    status, notice = call(control.url, "POST", "/events/spot-interruption?action=hibernate&in=60")
    assert status == 200 and notice["action"] == "hibernate"
    assert json.loads(fetch(emulator, "meta-data/spot/instance-action")) == notice
    assert call(control.url, "POST", "/events/rebalance-recommendation")[0] == 200
    assert call(control.url, "POST", "/events/scheduled-maintenance?code=instance-retirement")[1]["Code"] == (
        "instance-retirement")
    assert call(control.url, "DELETE", "/events") == (200, {"cleared": True})
    with pytest.raises(ImdsNotFound):
        fetch(emulator, "meta-data/spot/instance-action")


def test_control_starts_and_ends_an_outage(emulator: Emulator, control: ControlServer) -> None:
    assert call(control.url, "POST", "/outage") == (200, {"outage": True})
    with pytest.raises(ImdsError):
        with ImdsClient(ClientSettings(endpoint=emulator.url, deadline=1, timeout=0.5)) as client:
            client.fetch("meta-data/instance-id")
    assert call(control.url, "DELETE", "/outage") == (200, {"outage": False})
    assert fetch(emulator, "meta-data/instance-id")
    counts = call(control.url, "GET", "/requests")[1]
    assert counts["PUT"] >= 2 and counts["GET"] >= 1


def test_control_injects_and_withdraws_answers(emulator: Emulator, control: ControlServer) -> None:
    target = "/faults/status?code=503&count=2&method=GET&path=/latest/meta-data/instance-id&retry_after=1"
    assert call(control.url, "POST", target) == (200, {"pending": 2})
    assert fetch(emulator, "meta-data/ami-id")  # another path: served, nothing taken
    assert fetch(emulator, "meta-data/instance-id") == b"i-0a1b2c3d4e5f60789"  # retried past both 503s
    assert [r.status for r in emulator.requests if r.path.endswith("/instance-id")] == [503, 503, 200]
    assert call(control.url, "POST", "/faults/status?code=500&count=3") == (200, {"pending": 3})
    assert call(control.url, "DELETE", "/faults") == (200, {"pending": 0, "throttle": None, "drop_token_puts": False})
    assert emulator.pending_faults() == 0


@pytest.mark.parametrize(("method", "target", "status", "error"), [
    ("POST", "/credentials/rotate?expires_in=soon", 400, "expires_in='soon': expected a number of seconds"),
    ("POST", "/outage?seconds=-1", 400, "seconds='-1': out of range"),
    ("PUT", "/tree/", 400, "give a path: /tree/meta-data/..."),
    ("POST", "/faults/status", 400, "give code=..."),
    ("POST", "/faults/status?code=503&count=-1", 400, "count='-1': expected a whole number"),
    ("POST", "/faults/status?code=503&method=PATCH", 400, "method 'PATCH' must be GET, PUT, POST or DELETE"),
    ("GET", "/latest/meta-data/instance-id", 404, "no such call: GET /latest/meta-data/instance-id"),
])
def test_control_refuses_what_it_cannot_do(control: ControlServer, method: str, target: str, status: int,
                                           error: str) -> None:
    code, answer = call(control.url, method, target)
    assert (code, answer["error"]) == (status, error)


def test_control_is_not_reachable_through_imds(emulator: Emulator, control: ControlServer) -> None:
    with ImdsClient(ClientSettings(endpoint=emulator.url, deadline=2)) as client:
        for target in ("tree", "credentials/rotate", "events/spot-interruption"):
            with pytest.raises(ImdsNotFound):
                client.fetch(target)
    parts = urlsplit(emulator.url)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=5)
    conn.request("POST", "/credentials/rotate")
    assert conn.getresponse().status in (401, 405)
    conn.close()
    assert emulator.issued_credentials() == []


def test_control_listens_on_loopback_only(emulator: Emulator) -> None:
    with pytest.raises(ValueError, match="loopback only, not '0.0.0.0'"):
        ControlServer(emulator, host="0.0.0.0")
    with pytest.raises(ValueError, match="loopback only"):
        ControlServer(emulator, host="10.1.2.3")


# -- cc-imds emulate ------------------------------------------------------------------------
def test_emulate_offers_the_control_endpoint(cli: Callable[..., subprocess.CompletedProcess],
                                            emulate_processes: Callable[..., EmulateProcess]) -> None:
    server = emulate_processes()  # SIGINT ignored, as `emulate ... &` starts
    url, control = server.url, server.control
    assert control.startswith("http://127.0.0.1:")
    assert call(control, "PUT", "/tree/meta-data/tags/instance/Name", b"rehearsal")[0] == 200
    assert cli("get", "meta-data/tags/instance/Name", "--endpoint", url).stdout == b"rehearsal"
    # Credentials rotate by themselves by default, so the bundled tree's are never expired.
    creds = cli("get", CREDS, "--endpoint", url).stdout
    assert expiration(creds) > time.time() + 3600  # type: ignore[operator]
    assert server.stop(signal.SIGINT) == 0


@pytest.mark.parametrize("value", ["nan", "-5", "0.5", "inf", "soon"])
def test_emulate_refuses_a_wrong_credential_lifetime(cli: Callable[..., subprocess.CompletedProcess],
                                                     value: str) -> None:
    result = cli("emulate", "--port", "0", "--credential-lifetime", value)
    assert result.returncode == 2 and b"--credential-lifetime" in result.stderr
    assert b"Traceback" not in result.stderr


def test_every_call_the_docs_list_exists(control: ControlServer) -> None:
    """The tables in docs/after-boot.md and docs/emulator-control.md (faults, lifecycle, timed
    changes) name every call the control server has, and each of the first is answered (the
    second's: tests/test_emulator_scenarios.py)."""
    import re

    section = (REPO / "docs/after-boot.md").read_text().split("\n## Rehearsing after-boot changes locally\n", 1)[1]
    calls = re.findall(r"^\| `(GET|PUT|POST|DELETE) ([^`?]+)[^`]*` \|", section, flags=re.M)
    more = re.findall(r"^\| `(GET|PUT|POST|DELETE) ([^`?]+)[^`]*` \|",
                      (REPO / "docs/emulator-control.md").read_text(), flags=re.M)
    # The server lists its calls' paths when asked for one it does not have.
    status, answer = call(control.url, "GET", "/no-such-call")
    assert status == 404
    assert sorted({target for _, target in calls + more}) == answer["calls"]
    for method, target in calls:
        target = target.replace("PATH", "meta-data/tags/instance/Name")
        query = "?code=503" if target == "/faults/status" else ""
        status, answer = call(control.url, method, target + query, b"x" if method == "PUT" else None)
        assert status == 200, (method, target, answer)
