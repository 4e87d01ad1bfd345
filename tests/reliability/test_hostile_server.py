"""Hostile servers against the IMDS client: every way of trickling bytes, in-process and
through `cc-imds get` and `apply`. A run ends within its deadline plus the documented
slack (docs/bounds.md), whatever the server does."""

from __future__ import annotations

import time
from typing import Any, Callable, Dict

import pytest

from cc_imds.errors import ImdsError
from cc_imds.imds.client import ClientSettings, ImdsClient
from tests.conftest import DEADLINE_SLACK, needs_ipv6_loopback, run_cli
from tests.reliability.conftest import PROCESS_SLACK, Run, Scenario, declaration, digest
from tests.reliability.hostile import (
    MALFORMED,
    TOKEN,
    Behaviour,
    Connection,
    FullBacklog,
    HostileServer,
    Request,
    churn,
    echo_ttl,
    endless_continue,
    issue_token,
    malformed,
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
# DEADLINE_SLACK (tests/conftest.py): how far past its deadline a client call may end (docs/bounds.md;
# measured by bench/deadline_overrun.py: 9 ms at most on an idle 2-core machine, 46 ms with a
# load average of 13).
# PROCESS_SLACK (conftest): without the absolute deadline these runs lasted as long as the
# server kept trickling (HOLD, 30 s).


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
    assert seconds < DEADLINE + DEADLINE_SLACK
    # docs/bounds.md: at most 2 x (deadline / timeout + 1) attempts for a request that never gets its answer,
    # here the GET (or the PUT and its probes), after at most one token PUT that succeeded.
    assert len(server.requests) <= 1 + 2 * (DEADLINE / timeout + 1)


def test_connect_that_never_completes_is_cut_at_the_deadline() -> None:
    with FullBacklog() as backlog, client(backlog.url, timeout=5, deadline=DEADLINE) as imds:
        seconds = timed_failure(lambda: imds.fetch("meta-data/instance-id"))
    assert seconds < DEADLINE + DEADLINE_SLACK


@needs_ipv6_loopback
def test_auto_race_between_two_trickling_endpoints_is_cut_at_the_deadline() -> None:
    with HostileServer(trickled_status_and_headers) as v4, \
            HostileServer(trickled_status_and_headers, host="::1") as v6:
        imds = ImdsClient(ClientSettings(endpoint="auto", timeout=5, deadline=DEADLINE), candidates=[v4.url, v6.url])
        started = time.monotonic()
        with pytest.raises(ImdsError, match="no IMDS endpoint answered"):
            imds.fetch("meta-data/instance-id")
        assert time.monotonic() - started < DEADLINE + DEADLINE_SLACK
        assert v4.count("PUT") >= 1 and v6.count("PUT") >= 1


def test_fetch_all_is_cut_at_the_deadline() -> None:
    with HostileServer(token_then(trickled_headers)) as server, \
            client(server.url, timeout=5, deadline=DEADLINE, concurrency=4) as imds:
        started = time.monotonic()
        results = imds.fetch_all([f"meta-data/item/{i}" for i in range(10)])
        seconds = time.monotonic() - started
    assert seconds < DEADLINE + DEADLINE_SLACK
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


def test_malformed_answers_are_protocol_errors_not_retried(scenario: Scenario, record: Record) -> None:
    scenario.extra_secrets.append(TOKEN)
    figures: Dict[str, Any] = {}
    for kind in MALFORMED:
        with HostileServer(token_then(malformed(kind))) as server:
            run = scenario.cli("get", "meta-data/instance-id", "--endpoint", server.url, "--deadline", str(DEADLINE))
            gets = server.count("GET")
        assert run.code == 3, run.stderr
        assert run.stderr.startswith("cc-imds: /latest/meta-data/instance-id: malformed response: "), run.stderr
        assert len(run.stderr.splitlines()) == 1 and run.stdout == ""
        assert gets == 1, kind  # a broken IMDS does not mend in a second: no retry

        good = scenario.good_outputs()
        with HostileServer(token_then(malformed(kind))) as server:
            run = scenario.apply(server.url, declaration(scenario.out, deadline=DEADLINE))
            figures = figures or figures_from(run, server)
        assert run.code == 3, run.stderr
        assert "malformed response" in run.stderr
        assert run.retries == 0
        assert digest(scenario.out) == good
    record("malformed-response", "one-line protocol error, not retried, files untouched", **figures)


# -- retry and token discipline, through `cc-imds apply` ----------------------------------------------
def emulator_figures(run: Run) -> Dict[str, Any]:
    return {"exit": run.code, "seconds": round(run.seconds, 2), "PUT": run.puts, "GET": run.gets,
            "retries": run.retries}


@pytest.mark.parametrize(("scenario_id", "retry_after"),
                         [("retry-after-zero", "0"), ("retry-after-past", "Wed, 21 Oct 2015 07:28:00 GMT")])
def test_retry_after_zero_or_past(scenario: Scenario, record: Record, scenario_id: str, retry_after: str) -> None:
    good = scenario.good_outputs()
    emulator = scenario.emulator()
    emulator.fail_next(503, count=100_000, retry_after=retry_after)
    run = scenario.apply(emulator, declaration(scenario.out, deadline=DEADLINE))
    assert run.code == 3, run.stderr
    assert "/latest/api/token: no usable answer within the 2s deadline (HTTP 503)" in run.stderr
    assert run.puts <= 6 and run.gets == 0  # docs/bounds.md: at most 6 attempts in 2 s
    assert run.seconds < DEADLINE + PROCESS_SLACK
    assert digest(scenario.out) == good
    record(scenario_id, "paced by the backoff, error, files untouched", **emulator_figures(run))


def test_ttl_zero_echo(scenario: Scenario, record: Record) -> None:
    good = scenario.good_outputs()
    emulator = scenario.emulator()
    echo_ttl(emulator, "0")
    emulator.latency = 0.02
    run = scenario.apply(emulator, declaration(scenario.out, concurrency=1))
    assert run.code == 0, run.stderr
    assert digest(scenario.out) == good
    assert run.puts == 1
    record("ttl-zero-echo", "one PUT, correct outputs", **emulator_figures(run))


def test_token_churn_under_concurrency(scenario: Scenario, record: Record) -> None:
    good = scenario.good_outputs()
    emulator = scenario.emulator()
    emulator.latency = 0.01  # keep several requests in flight while tokens are revoked
    revocations = churn(emulator, every=2)
    run = scenario.apply(emulator, declaration(scenario.out, concurrency=8))
    assert run.code == 0, run.stderr
    assert digest(scenario.out) == good
    assert run.puts <= 1 + revocations[0]  # never two renewals for one revocation
    record("token-churn-concurrency", "correct outputs", **emulator_figures(run))


def test_token_with_a_line_break(scenario: Scenario, record: Record) -> None:
    good = scenario.good_outputs()
    emulator = scenario.emulator()
    issue_token(emulator, "AQAEAHostile-Token\r\nX-Injected: yes")
    run = scenario.apply(emulator)
    assert run.code == 3, run.stderr
    assert "/latest/api/token: IMDS answered the token request with 35 bytes that are not a usable token" in run.stderr
    assert "Hostile-Token" not in run.stderr + run.stdout and "X-Injected" not in run.stderr
    assert run.gets == 0
    assert digest(scenario.out) == good
    record("crlf-token", "one-line error without the token, files untouched", **emulator_figures(run))


def run_with_env(scenario: Scenario, env: Dict[str, str], *args: str) -> Run:
    started = time.monotonic()
    result = run_cli(*args, env=env)
    run = Run(result.returncode, result.stdout.decode(errors="replace"), result.stderr.decode(errors="replace"),
              time.monotonic() - started, 0, 0)
    assert "Traceback" not in run.stderr, run.stderr
    scenario.runs.append(run)
    return run


def test_metadata_disabled_env(scenario: Scenario, record: Record) -> None:
    good = scenario.good_outputs()
    emulator = scenario.emulator()
    path = scenario.write_declaration(declaration(scenario.out))
    run = run_with_env(scenario, {"AWS_EC2_METADATA_DISABLED": "True"},
                       "apply", str(path), "--endpoint", emulator.url, "--no-conf-dir")
    assert run.code == 3, run.stderr
    assert run.stderr == ("cc-imds: AWS_EC2_METADATA_DISABLED is set to true: instance metadata access is turned off "
                          "in this environment, so no request was sent\n")
    assert emulator.requests == []
    assert digest(scenario.out) == good
    record("metadata-disabled-env", "error, no request, files untouched", **emulator_figures(run))


def test_bad_connection_settings(scenario: Scenario, record: Record) -> None:
    good = scenario.good_outputs()
    emulator = scenario.emulator()
    path = scenario.write_declaration(declaration(scenario.out))
    run = run_with_env(scenario, {"AWS_EC2_METADATA_SERVICE_ENDPOINT": "http://[::1"},
                       "apply", str(path), "--no-conf-dir")
    assert run.code == 1, run.stderr
    assert run.stderr.startswith("cc-imds: AWS_EC2_METADATA_SERVICE_ENDPOINT: endpoint 'http://[::1': expected auto,")
    assert len(run.stderr.splitlines()) == 1
    path = scenario.write_declaration(declaration(scenario.out, timeout=float("nan")))
    run = run_with_env(scenario, {}, "apply", str(path), "--endpoint", emulator.url, "--no-conf-dir")
    assert run.code == 1, run.stderr
    assert "timeout" in run.stderr and "nan" in run.stderr and len(run.stderr.splitlines()) == 1
    assert emulator.requests == []
    assert digest(scenario.out) == good
    record("bad-connection-settings", "one-line error naming the setting, no request", **emulator_figures(run))
