"""The after-boot keys of a declaration: `refresh`, `on_change`, `events`. Parsed into the typed
declaration, and every wrong value refused with its exact location."""

from __future__ import annotations

import math
from typing import Any, Dict, List, Tuple

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cc_imds.declaration.build import (
    EVENT_POLL,
    EVENT_TIMEOUT,
    ON_CHANGE_TIMEOUT,
    Command,
    Declaration,
    MetricsFile,
    Origin,
    Quiet,
    SourceDocument,
    build_declaration,
)
from cc_imds.errors import DeclarationError

CREDS = "meta-data/iam/security-credentials/app-server"


class EitherWording:
    """jsonschema's own messages differ between 3.2 (AL2023) and 4.x: either is right."""

    def __init__(self, prefix: str, endings: Tuple[str, ...]) -> None:
        self.expected = [prefix + ending for ending in endings]

    def __eq__(self, other: object) -> bool:
        return other in self.expected

    def __repr__(self) -> str:
        return " or ".join(map(repr, self.expected))


def build(document: Dict[str, Any], source: str = "user-data") -> Declaration:
    return build_declaration([SourceDocument(source, "imds", document)])


def problems_of(document: Dict[str, Any]) -> List[str]:
    with pytest.raises(DeclarationError) as caught:
        build(document)
    return caught.value.problems


def with_value(spec: Any) -> Dict[str, Any]:
    return {"values": {"v": spec}, "files": [{"path": "/etc/v", "content": "{{ v }}"}]}


def test_refresh_is_once_per_boot_unless_a_period_is_declared() -> None:
    declaration = build({"values": {
        "iid": "meta-data/instance-id",
        "boot": {"path": "meta-data/public-ipv4", "refresh": "boot"},
        "tags": {"path": "meta-data/tags/instance/", "refresh": 300},
        "ip": {"path": "meta-data/local-ipv4", "refresh": 1.5},
    }})
    assert {n: s.refresh for n, s in declaration.values.items()} == {
        "iid": None, "boot": None, "tags": 300.0, "ip": 1.5}


def test_credentials_are_recognised_by_their_path() -> None:
    declaration = build({"values": {
        "key": {"path": CREDS, "key": "SecretAccessKey"},
        "identity": "meta-data/identity-credentials/ec2/security-credentials/ec2-instance",
        "profile": {"path": "meta-data/iam/info", "key": "InstanceProfileArn"},
    }})
    assert {n: s.is_credential for n, s in declaration.values.items()} == {
        "key": True, "identity": True, "profile": False}


def test_credentials_cannot_be_pinned_to_boot() -> None:
    assert problems_of(with_value({"path": CREDS, "key": "Token", "refresh": "boot"})) == [
        "user-data: imds.values.v.refresh: credentials expire, so they are refreshed before their Expiration; "
        "remove `refresh: boot` (or give a period to refresh them more often)"
    ]


@pytest.mark.parametrize(("refresh", "problem"), [
    (0.5, "0.5 is less than the minimum of 1"),
    (0, "0 is less than the minimum of 1"),
    (86401, "86401 is greater than the maximum of 86400"),
    ("5m", "'5m' must be boot or a period in seconds (a number from 1 to 86400)"),
    ("never", "'never' must be boot or a period in seconds (a number from 1 to 86400)"),
    (True, "expected string or number, got a boolean: must be boot or a period in seconds (a number from 1 to 86400)"),
    (float("nan"), "nan must be a finite number of seconds"),
])
def test_a_wrong_refresh_is_refused_with_its_location(refresh: Any, problem: str) -> None:
    assert problems_of(with_value({"path": "meta-data/local-ipv4", "refresh": refresh})) == [
        f"user-data: imds.values.v.refresh: {problem}"
    ]


@given(st.floats(allow_nan=True, allow_infinity=True))
def test_refresh_accepts_exactly_the_finite_periods_from_1_to_86400(period: float) -> None:
    document = with_value({"path": "meta-data/local-ipv4", "refresh": period})
    if math.isfinite(period) and 1 <= period <= 86400:
        assert build(document).values["v"].refresh == period
    else:
        with pytest.raises(DeclarationError):
            build(document)


def test_a_different_refresh_is_a_different_value_when_merging() -> None:
    first = SourceDocument("/etc/cc-imds/conf.d/10-fleet.yaml", "", {"values": {"tags": "meta-data/tags/instance/"}})
    second = SourceDocument("/etc/cc-imds/conf.d/50-app.yaml", "",
                            {"values": {"tags": {"path": "meta-data/tags/instance/", "refresh": 60}}})
    with pytest.raises(DeclarationError) as caught:
        build_declaration([first, second])
    assert caught.value.problems == [
        "/etc/cc-imds/conf.d/50-app.yaml: values.tags: conflicts with the value of the same name at "
        "/etc/cc-imds/conf.d/10-fleet.yaml: values.tags"
    ]


def test_on_change_takes_an_argv_list_or_run_and_timeout() -> None:
    declaration = build({
        "values": {"iid": "meta-data/instance-id"},
        "env": [{"path": "/etc/a.env", "format": "systemd", "vars": {"IID": "iid"},
                 "on_change": ["systemctl", "try-reload-or-restart", "app.service"]}],
        "files": [{"path": "/etc/a.conf", "content": "{{ iid }}",
                   "on_change": {"run": ["sh", "-c", "kill -HUP $(cat /run/app.pid)"], "timeout": 5}},
                  {"path": "/etc/b.conf", "content": "{{ iid }}"}],
    })
    assert declaration.env[0].on_change == Command(("systemctl", "try-reload-or-restart", "app.service"),
                                                   ON_CHANGE_TIMEOUT)
    assert declaration.files[0].on_change == Command(("sh", "-c", "kill -HUP $(cat /run/app.pid)"), 5.0)
    assert declaration.files[1].on_change is None


def test_wrong_on_change_values_are_refused_with_their_location() -> None:
    assert problems_of({
        "values": {"iid": "meta-data/instance-id"},
        "files": [
            {"path": "/etc/a", "content": "{{ iid }}", "on_change": "systemctl reload app"},
            {"path": "/etc/b", "content": "{{ iid }}", "on_change": []},
            {"path": "/etc/c", "content": "{{ iid }}", "on_change": {"run": ["x"], "timeout": 0, "shell": True}},
            {"path": "/etc/d", "content": "{{ iid }}", "on_change": {"timeout": 5}},
            {"path": "/etc/e", "content": "{{ iid }}", "on_change": ["kill", 1]},
        ],
    }) == [
        "user-data: imds.files[0].on_change: expected object, got a string: must be an argv list such as "
        "[systemctl, try-reload-or-restart, myapp.service], or {run: [...], timeout: seconds}",
        EitherWording("user-data: imds.files[1].on_change: [] ", ("is too short", "should be non-empty")),
        "user-data: imds.files[2].on_change: unknown key(s) 'shell'; allowed: run, splay, timeout, wait",
        "user-data: imds.files[2].on_change.timeout: 0 is less than the minimum of 1",
        "user-data: imds.files[3].on_change: missing required key(s) 'run'",
        "user-data: imds.files[4].on_change[1]: expected string, got int",
    ]


def test_commands_and_periods_the_schema_cannot_judge_are_refused_too() -> None:
    assert problems_of({
        "values": {"iid": "meta-data/instance-id"},
        "env": [{"path": "/etc/a", "format": "json", "vars": {"IID": "iid"}, "on_change": ["a\0b"]}],
        "files": [{"path": "/etc/b", "content": "{{ iid }}", "on_change": {"run": ["x"], "timeout": float("nan")}}],
        "events": [{"event": "spot-interruption", "run": ["x", "\0"], "poll": float("nan")}],
    }) == [
        "user-data: imds.env[0].on_change.run: a command argument contains a NUL byte",
        "user-data: imds.files[0].on_change.timeout: nan must be a finite number of seconds",
        "user-data: imds.events[0].run: a command argument contains a NUL byte",
        "user-data: imds.events[0].poll: nan must be a finite number of seconds",
    ]


def test_events_read_like_the_other_lists() -> None:
    declaration = build({"events": [
        {"event": "spot-interruption", "run": ["/usr/local/sbin/drain"]},
        {"event": "rebalance-recommendation", "run": ["systemctl", "start", "checkpoint.service"],
         "timeout": 600, "poll": 30},
    ]})
    first, second = declaration.events
    assert (first.event, first.command, first.poll) == (
        "spot-interruption", Command(("/usr/local/sbin/drain",), EVENT_TIMEOUT), EVENT_POLL)
    assert (second.event, second.command, second.poll) == (
        "rebalance-recommendation", Command(("systemctl", "start", "checkpoint.service"), 600.0), 30.0)
    assert str(second.origin) == "user-data: imds.events[1]"


def test_wrong_events_are_refused_with_their_location() -> None:
    assert problems_of({"events": [
        {"event": "spot", "run": ["x"]},
        {"event": "spot-interruption"},
        {"event": "spot-interruption", "run": [""], "poll": 0.5},
    ]}) == [
        "user-data: imds.events[0].event: 'spot' is not one of 'spot-interruption', 'rebalance-recommendation', "
        "'scheduled-maintenance', 'lifecycle'",
        "user-data: imds.events[1]: missing required key(s) 'run'",
        "user-data: imds.events[2].poll: 0.5 is less than the minimum of 1",
        EitherWording("user-data: imds.events[2].run[0]: '' ", ("is too short", "should be non-empty")),
    ]


# -- quiet changes: on_change wait and splay -------------------------------------------------
def on_change_with(**extra: Any) -> Dict[str, Any]:
    return {"values": {"name": {"path": "meta-data/tags/instance/Name", "refresh": 60}},
            "files": [{"path": "/etc/app.conf", "content": "{{ name }}",
                       "on_change": {"run": ["systemctl", "reload", "app"], **extra}}]}


@pytest.mark.parametrize(("extra", "quiet"), [
    ({}, Quiet()),  # run at once, as before
    ({"wait": {"min": 10}}, Quiet(10.0, 40.0, 0.0)),  # max defaults to 4 times min
    ({"wait": {"min": 10, "max": 10}}, Quiet(10.0, 10.0, 0.0)),
    ({"wait": {"min": 5, "max": 120}, "splay": 30}, Quiet(5.0, 120.0, 30.0)),
    ({"splay": 3600}, Quiet(0.0, 0.0, 3600.0)),
])
def test_wait_and_splay_are_parsed(extra: Dict[str, Any], quiet: Quiet) -> None:
    on_change = build(on_change_with(**extra)).files[0].on_change
    assert on_change is not None
    assert on_change == Command(("systemctl", "reload", "app"), ON_CHANGE_TIMEOUT, quiet)


def test_an_argv_on_change_and_event_commands_never_wait() -> None:
    declaration = build({"values": {"name": {"path": "meta-data/tags/instance/Name", "refresh": 60}},
                         "files": [{"path": "/etc/a", "content": "{{ name }}", "on_change": ["true"]}],
                         "events": [{"event": "spot-interruption", "run": ["true"]}]})
    assert declaration.files[0].on_change is not None and declaration.files[0].on_change.quiet == Quiet()
    assert declaration.events[0].command.quiet == Quiet()


@pytest.mark.parametrize(("extra", "problem"), [
    ({"wait": {"min": 10, "max": 5}}, "imds.files[0].on_change.wait.max: 5 is less than wait.min (10): the longest "
                                      "a command may wait cannot be shorter than the quiet time it waits for"),
    ({"wait": {"min": 0}}, "imds.files[0].on_change.wait.min: 0 is less than the minimum of 1"),
    ({"wait": {"min": 3601}}, "imds.files[0].on_change.wait.min: 3601 is greater than the maximum of 3600"),
    ({"wait": {"min": 1, "max": 86401}}, "imds.files[0].on_change.wait.max: 86401 is greater than the maximum of "
                                         "86400"),
    ({"wait": {"max": 5}}, "imds.files[0].on_change.wait: missing required key(s) 'min'"),
    ({"wait": {"min": 1, "quiet": 2}}, "imds.files[0].on_change.wait: unknown key(s) 'quiet'; allowed: max, min"),
    ({"wait": 5}, "imds.files[0].on_change.wait: expected object, got int: must be {min: seconds} or "
                  "{min: seconds, max: seconds}"),
    ({"wait": {"min": math.nan}}, "imds.files[0].on_change.wait.min: nan must be a finite number of seconds"),
    ({"splay": 0.5}, "imds.files[0].on_change.splay: 0.5 is less than the minimum of 1"),
    ({"splay": 3601}, "imds.files[0].on_change.splay: 3601 is greater than the maximum of 3600"),
    ({"splay": math.inf}, "imds.files[0].on_change.splay: inf is greater than the maximum of 3600"),
    ({"splay": "30s"}, "imds.files[0].on_change.splay: expected number, got a string"),
])
def test_wrong_wait_and_splay_are_refused_with_their_location(extra: Dict[str, Any], problem: str) -> None:
    assert problems_of(on_change_with(**extra)) == [f"user-data: {problem}"]


# -- metrics -----------------------------------------------------------------------------------
METRICS = "/var/lib/node_exporter/textfile_collector/cc_imds.prom"


def test_the_metrics_file_is_declared_once_and_the_last_source_wins() -> None:
    assert build({"values": {}}).metrics is None
    drop_in = SourceDocument("/etc/cc-imds/conf.d/10-metrics.yaml", "", {"metrics": {"path": "/srv/a.prom"}})
    cloud_config = SourceDocument("user-data", "imds", {"metrics": {"path": METRICS}})
    declaration = build_declaration([drop_in, cloud_config])
    assert declaration.metrics == MetricsFile(METRICS, Origin("user-data", "imds.metrics.path"))


@pytest.mark.parametrize(("metrics", "problem"), [
    ({"path": "/var/lib/node_exporter/textfile_collector/cc_imds.txt"},
     "imds.metrics.path: '/var/lib/node_exporter/textfile_collector/cc_imds.txt' must be an absolute path ending "
     "in .prom (node_exporter's textfile collector reads only those)"),
    ({"path": "cc_imds.prom"}, "imds.metrics.path: 'cc_imds.prom' must be an absolute path ending in .prom "
                               "(node_exporter's textfile collector reads only those)"),
    ({"path": "/var/lib/../x.prom"}, "imds.metrics.path: '/var/lib/../x.prom' must be a normalised absolute file path "
                                     "(no //, . or .. parts)"),
    ({}, "imds.metrics: missing required key(s) 'path'"),
    ({"path": METRICS, "labels": {}}, "imds.metrics: unknown key(s) 'labels'; allowed: path"),
    ("/x.prom", "imds.metrics: expected object, got a string"),
])
def test_a_wrong_metrics_file_is_refused_with_its_location(metrics: Any, problem: str) -> None:
    assert problems_of({"metrics": metrics}) == [f"user-data: {problem}"]


def test_the_metrics_file_is_not_an_output_too() -> None:
    assert problems_of({"values": {"iid": "meta-data/instance-id"}, "metrics": {"path": "/etc/iid.prom"},
                        "files": [{"path": "/etc/iid.prom", "content": "{{ iid }}"}]}) == [
        "user-data: imds.metrics.path: /etc/iid.prom is also written by user-data: imds.files[0].path"]
