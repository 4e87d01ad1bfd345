"""Hostile servers against the IMDS client: every way of trickling bytes, in-process and
through `cc-imds get` and `apply`. A run ends within its deadline plus the documented
slack (README, "Time and request bounds"), whatever the server does."""

from __future__ import annotations

import time
from typing import Any, Callable, Dict

import pytest

from cc_imds.client import ClientSettings, ImdsClient
from cc_imds.errors import ImdsError
from tests.reliability.conftest import Run, Scenario, declaration, digest
from tests.reliability.hostile import (
    TOKEN,
    Behaviour,
    Connection,
    FullBacklog,
    HostileServer,
    Request,
    endless_continue,
    silent,
    token_then,
    trickled_body,
    trickled_chunk_size,
    trickled_headers,
    trickled_status_and_headers,
    trickled_trailers,
)

Record = Callable[..., None]

DEADLINE = 2.0
# The documented slack: how far past its deadline a client call may end (README).
SLACK = 0.5
# A process also starts up and imports before the deadline's clock starts: up to a few
# seconds on a loaded 2-core machine. Without the absolute deadline these runs took 15 s.
PROCESS_SLACK = 3.0


def hop_limit_probe_trickled(request: Request, conn: Connection) -> None:
    """The token PUT gets no answer (the hop-limit symptom), and the plain GET the
    client sends to tell a low hop limit from a dead endpoint trickles its headers."""
    if request.method == "PUT":
        silent(request, conn)
    else:
        trickled_headers(request, conn)


# scenario id -> what the server does
TRICKLES: Dict[str, Behaviour] = {
    "slow-token-put": trickled_status_and_headers,
    "trickled-headers": token_then(trickled_headers),
    "trickled-chunk-size": token_then(trickled_chunk_size),
    "trickled-trailers": token_then(trickled_trailers),
    "endless-100-continue": token_then(endless_continue),
    "trickled-hop-limit-probe": hop_limit_probe_trickled,
}
# Bounded before the deadline became absolute too; kept so that they stay bounded.
GUARDS: Dict[str, Behaviour] = {"trickled-body": token_then(trickled_body)}


def client(url: str, **settings: Any) -> ImdsClient:
    return ImdsClient(ClientSettings(endpoint=url, **settings))


def timed_failure(call: Callable[[], object]) -> float:
    started = time.monotonic()
    with pytest.raises(ImdsError, match=r"no usable answer within the 2s deadline"):
        call()
    return time.monotonic() - started


# -- in-process --------------------------------------------------------------------------------
@pytest.mark.parametrize("behaviour", [*TRICKLES.values(), *GUARDS.values()], ids=[*TRICKLES, *GUARDS])
@pytest.mark.parametrize("timeout", [5.0, 0.7], ids=["attempt-longer-than-deadline", "attempts-retried"])
def test_trickling_server_is_cut_at_the_deadline(behaviour: Behaviour, timeout: float) -> None:
    with HostileServer(behaviour) as server, client(server.url, timeout=timeout, deadline=DEADLINE) as imds:
        seconds = timed_failure(lambda: imds.fetch("meta-data/instance-id"))
    assert seconds < DEADLINE + SLACK


def test_connect_that_never_completes_is_cut_at_the_deadline() -> None:
    with FullBacklog() as backlog, client(backlog.url, timeout=5, deadline=DEADLINE) as imds:
        seconds = timed_failure(lambda: imds.fetch("meta-data/instance-id"))
    assert seconds < DEADLINE + SLACK


def test_auto_race_between_two_trickling_endpoints_is_cut_at_the_deadline() -> None:
    with HostileServer(trickled_status_and_headers) as v4, \
            HostileServer(trickled_status_and_headers, host="::1") as v6:
        imds = ImdsClient(ClientSettings(endpoint="auto", timeout=5, deadline=DEADLINE), candidates=[v4.url, v6.url])
        started = time.monotonic()
        with pytest.raises(ImdsError, match="no IMDS endpoint answered"):
            imds.fetch("meta-data/instance-id")
        assert time.monotonic() - started < DEADLINE + SLACK
        assert v4.count("PUT") >= 1 and v6.count("PUT") >= 1


def test_fetch_all_is_cut_at_the_deadline() -> None:
    with HostileServer(token_then(trickled_headers)) as server, \
            client(server.url, timeout=5, deadline=DEADLINE, concurrency=4) as imds:
        started = time.monotonic()
        results = imds.fetch_all([f"meta-data/item/{i}" for i in range(10)])
        seconds = time.monotonic() - started
    assert seconds < DEADLINE + SLACK
    assert all(isinstance(outcome, ImdsError) for outcome in results.values())


# -- through the command line --------------------------------------------------------------------
def figures_from(run: Run, server: HostileServer) -> Dict[str, Any]:
    return {"exit": run.code, "seconds": round(run.seconds, 2), "PUT": server.count("PUT"),
            "GET": server.count("GET"), "retries": run.retries}


@pytest.mark.parametrize("scenario_id", list(TRICKLES))
def test_trickling_server_through_get_and_apply(scenario: Scenario, record: Record, scenario_id: str) -> None:
    scenario.extra_secrets.append(TOKEN)
    with HostileServer(TRICKLES[scenario_id]) as server:
        run = scenario.cli("--debug", "get", "meta-data/instance-id", "--endpoint", server.url,
                           "--timeout", "1", "--deadline", str(DEADLINE))
    assert run.code == 3, run.stderr
    assert "no usable answer within the 2s deadline" in run.stderr
    assert run.seconds < DEADLINE + PROCESS_SLACK

    good = scenario.good_outputs()
    with HostileServer(TRICKLES[scenario_id]) as server:
        run = scenario.apply(server.url, declaration(scenario.out, timeout=1, deadline=DEADLINE))
        figures = figures_from(run, server)
    assert run.code == 3, run.stderr
    assert "no usable answer within the 2s deadline" in run.stderr
    assert run.seconds < DEADLINE + PROCESS_SLACK
    assert digest(scenario.out) == good
    record(scenario_id, "error within the deadline, files untouched", **figures)
