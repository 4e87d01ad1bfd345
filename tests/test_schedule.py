"""The watcher's schedule, without a clock: which paths, which outputs, and when each is due."""

from __future__ import annotations

import datetime
import math
from typing import Any, Dict

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cc_imds.declaration.build import SourceDocument, build_declaration
from cc_imds.watch.schedule import (
    BACKOFF_CAP,
    CREDENTIAL_LONGEST_WAIT,
    CREDENTIAL_RETRY,
    CREDENTIAL_WINDOW,
    FLOOR,
    Group,
    PollState,
    WatchPlan,
    after_failures,
    credential_due,
    event_due,
    expiration,
    next_due,
    parse_time,
    plan,
)
from cc_imds.watch.status import iso

CREDS = "meta-data/iam/security-credentials/app-server"
NOW = 1_800_000_000.0


def plan_of(document: Dict[str, Any]) -> WatchPlan:
    return plan(build_declaration([SourceDocument("test", "", document)]))


APP: Dict[str, Any] = {
    "values": {
        "iid": "meta-data/instance-id",
        "region": {"path": "dynamic/instance-identity/document", "key": "region"},
        "tags": {"path": "meta-data/tags/instance/", "refresh": 300},
        "key": {"path": CREDS, "key": "AccessKeyId"},
        "secret": {"path": CREDS, "key": "SecretAccessKey"},
        "token": {"path": CREDS, "key": "Token"},
    },
    "env": [
        {"path": "/etc/boot.env", "format": "systemd", "vars": {"IID": "iid", "REGION": "region"}},
        {"path": "/etc/tags.sh", "format": "shell", "vars": {"IID": "iid"}, "expand": {"tags": "TAG_"}},
    ],
    "files": [{"path": "/etc/creds", "content": "{{ key }} {{ secret }} {{ token }}"}],
}


def test_only_outputs_that_use_a_refreshing_value_are_rewritten() -> None:
    watch = plan_of(APP)
    assert watch.outputs == {"/etc/tags.sh", "/etc/creds"}
    assert not watch.idle


def test_values_are_grouped_by_path_so_credentials_never_mix_generations() -> None:
    groups = {g.path: g for g in plan_of(APP).groups}
    assert groups[CREDS] == Group(CREDS, frozenset({"key", "secret", "token"}), None, True)
    assert groups["meta-data/tags/instance/"] == Group("meta-data/tags/instance/", frozenset({"tags"}), 300.0, False)
    # A boot value used by a rewritten output is fetched at start, then kept.
    assert groups["meta-data/instance-id"] == Group("meta-data/instance-id", frozenset({"iid"}), None, False)
    assert not groups["meta-data/instance-id"].refreshing
    # Only used by an output that is never rewritten: not fetched by the watcher at all.
    assert "dynamic/instance-identity/document" not in groups


def test_a_boot_value_sharing_a_refreshing_path_is_fetched_with_it() -> None:
    groups = plan_of({
        "values": {"az": {"path": "dynamic/instance-identity/document", "key": "availabilityZone", "refresh": 60},
                   "account": {"path": "dynamic/instance-identity/document", "key": "accountId"}},
        "files": [{"path": "/etc/x", "content": "{{ az }} {{ account }}"}],
    }).groups
    assert groups == (Group("dynamic/instance-identity/document", frozenset({"az", "account"}), 60.0, False),)


def test_the_shortest_declared_period_of_a_path_wins() -> None:
    groups = plan_of({
        "values": {"a": {"path": "meta-data/public-ipv4", "refresh": 600},
                   "b": {"path": "meta-data/public-ipv4", "refresh": 60, "default": "none"}},
        "files": [{"path": "/etc/x", "content": "{{ a }} {{ b }}"}],
    }).groups
    assert [g.period for g in groups] == [60.0]


def test_boot_values_only_need_no_watcher() -> None:
    watch = plan_of({k: v for k, v in APP.items() if k != "files"} | {"env": APP["env"][:1]})
    assert watch.idle and watch.outputs == frozenset() and watch.groups == ()


def test_a_refreshing_value_no_output_uses_is_not_polled() -> None:
    assert plan_of({"values": {"tags": {"path": "meta-data/tags/instance/", "refresh": 60}}}).idle


def test_events_alone_need_a_watcher_and_share_one_poll_per_path() -> None:
    watch = plan_of({"events": [
        {"event": "spot-interruption", "run": ["a"], "poll": 10},
        {"event": "spot-interruption", "run": ["b"]},
        {"event": "scheduled-maintenance", "run": ["c"], "poll": 60},
    ]})
    assert not watch.idle
    assert [(e.event, e.path, e.poll, len(e.actions)) for e in watch.events] == [
        ("spot-interruption", "meta-data/spot/instance-action", 5.0, 2),
        ("scheduled-maintenance", "meta-data/events/maintenance/scheduled", 60.0, 1),
    ]


# -- when -----------------------------------------------------------------------------------
TAGS = Group("meta-data/tags/instance/", frozenset({"tags"}), 300.0, False)
BOOT = Group("meta-data/instance-id", frozenset({"iid"}), None, False)
CRED = Group(CREDS, frozenset({"key"}), None, True)


def test_everything_is_due_at_once_before_its_first_poll() -> None:
    for group in (TAGS, BOOT, CRED):
        assert next_due(group, PollState(), 0.5) == -math.inf


def test_a_period_is_shortened_by_jitter_never_lengthened() -> None:
    state = PollState().succeeded(NOW, None)
    assert next_due(TAGS, state, 0.0) == NOW + 300
    assert next_due(TAGS, state, 0.999) == pytest.approx(NOW + 300 * 0.9001)


@given(st.floats(min_value=0, max_value=1, exclude_max=True), st.floats(min_value=1, max_value=86400))
def test_a_period_is_kept_within_10_percent_early_and_the_floor(jitter: float, period: float) -> None:
    group = Group("meta-data/public-ipv4", frozenset({"ip"}), period, False)
    delay = next_due(group, PollState().succeeded(NOW, None), jitter) - NOW
    assert max(FLOOR, 0.9 * period) - 1e-6 <= delay <= period + 1e-6


def test_a_boot_value_is_never_due_again_once_fetched() -> None:
    assert next_due(BOOT, PollState().succeeded(NOW, None), 0.3) == math.inf


def test_credentials_wait_until_15_minutes_before_expiration() -> None:
    state = PollState().succeeded(NOW, NOW + 6 * 3600)
    assert next_due(CRED, state, 0.0) == NOW + 6 * 3600 - CREDENTIAL_WINDOW
    assert NOW + 6 * 3600 - CREDENTIAL_WINDOW - 60 <= next_due(CRED, state, 0.99) < NOW + 6 * 3600 - CREDENTIAL_WINDOW


def test_inside_the_window_credentials_are_asked_for_every_minute_until_they_rotate() -> None:
    expires = NOW + 14 * 60
    assert credential_due(NOW, expires, 0.5) == NOW + CREDENTIAL_RETRY
    # ... and more often when less than two minutes are left, down to the floor.
    assert credential_due(NOW, NOW + 90, 0.5) == NOW + 45
    assert credential_due(NOW, NOW + 1.5, 0.5) == NOW + FLOOR


def test_short_lived_credentials_are_asked_for_again_at_half_their_life() -> None:
    assert credential_due(NOW, NOW + 20, 0.0) == NOW + 10


def test_expired_credentials_from_imds_are_not_hammered() -> None:
    assert credential_due(NOW, NOW - 5, 0.0) == NOW + CREDENTIAL_RETRY


@given(st.floats(min_value=-86400, max_value=12 * 3600), st.floats(min_value=0, max_value=1, exclude_max=True))
def test_credentials_are_always_asked_for_again_before_they_expire(lifetime: float, jitter: float) -> None:
    due = credential_due(NOW, NOW + lifetime, jitter)
    assert due > NOW
    if lifetime > 2 * FLOOR:
        assert due < NOW + lifetime
    # Before Expiration, IMDS has had at least 5 minutes to publish new ones by the time we ask again,
    # or we ask every minute until then.
    if lifetime > 2 * CREDENTIAL_WINDOW:
        assert due >= min(NOW + lifetime - CREDENTIAL_WINDOW - 60, NOW + CREDENTIAL_LONGEST_WAIT)


def test_an_expiration_far_away_is_not_taken_on_trust() -> None:
    assert credential_due(NOW, NOW + 10 * 365 * 86400, 0.0) == NOW + CREDENTIAL_LONGEST_WAIT


def test_a_credential_period_applies_when_it_is_sooner() -> None:
    group = Group(CREDS, frozenset({"key"}), 600.0, True)
    assert next_due(group, PollState().succeeded(NOW, NOW + 6 * 3600), 0.0) == NOW + 600


def test_a_credential_document_without_expiration_is_fetched_hourly() -> None:
    assert next_due(CRED, PollState().succeeded(NOW, None), 0.0) == NOW + 3600


def test_failures_back_off_exponentially_up_to_the_cap() -> None:
    group = Group("meta-data/public-ipv4", frozenset({"ip"}), 3600.0, False)
    state = PollState().succeeded(NOW - 10, None)
    delays = []
    for _ in range(10):
        state = state.failed(NOW)
        delays.append(next_due(group, state, 0.5) - NOW)
    assert delays == [5, 10, 20, 40, 80, 160, BACKOFF_CAP, BACKOFF_CAP, BACKOFF_CAP, BACKOFF_CAP]
    assert state.last_success == NOW - 10 and state.failures == 10


def test_writes_back_off_as_polls_do() -> None:
    """The watcher retries a failed write after_failures later: the polls' own sequence."""
    assert [after_failures(n) for n in range(1, 11)] == [5, 10, 20, 40, 80, 160, BACKOFF_CAP, BACKOFF_CAP,
                                                          BACKOFF_CAP, BACKOFF_CAP]
    assert after_failures(10_000) == BACKOFF_CAP  # the exponent stops growing: no overflow


def test_backoff_is_never_slower_than_the_declared_period() -> None:
    group = Group("meta-data/public-ipv4", frozenset({"ip"}), 2.0, False)
    state = PollState().failed(NOW).failed(NOW).failed(NOW)
    assert next_due(group, state, 0.5) == NOW + 2.0


def test_backoff_for_credentials_near_expiration_is_at_most_a_minute() -> None:
    state = PollState().succeeded(NOW - 60, NOW + 10 * 60)
    for _ in range(8):
        state = state.failed(NOW)
    assert next_due(CRED, state, 0.5) == NOW + CREDENTIAL_RETRY
    far = PollState().succeeded(NOW - 60, NOW + 5 * 3600)
    for _ in range(8):
        far = far.failed(NOW)
    assert next_due(CRED, far, 0.5) == NOW + BACKOFF_CAP


def test_a_success_after_failures_resets_the_backoff() -> None:
    state = PollState().failed(NOW).failed(NOW).succeeded(NOW + 1, None)
    assert state.failures == 0 and next_due(TAGS, state, 0.0) == NOW + 1 + 300


def test_events_are_polled_at_their_period_whatever_happened() -> None:
    from cc_imds.watch.schedule import EventWatch

    watch = EventWatch("spot-interruption", "meta-data/spot/instance-action", 5.0, ())
    assert event_due(watch, None, 0.0) == -math.inf
    assert event_due(watch, NOW, 0.0) == NOW + 5
    assert event_due(watch, NOW, 0.99) == pytest.approx(NOW + 5 * 0.901)


# -- Expiration -----------------------------------------------------------------------------
def test_expiration_is_read_from_the_document_as_imds_writes_it() -> None:
    document = '{"Code": "Success", "Expiration": "2027-01-15T09:30:00Z", "Token": "x"}'
    assert expiration(document) == parse_time("2027-01-15T09:30:00+00:00") == 1800005400.0


def test_a_directory_of_credentials_expires_with_its_earliest_entry() -> None:
    assert expiration({"a": '{"Expiration": "2027-01-15T09:30:00Z"}', "b": '{"Expiration": "2027-01-15T08:00:00Z"}',
                       "c": "not json"}) == parse_time("2027-01-15T08:00:00Z")


@pytest.mark.parametrize("document", ['{"Code": "Success"}', "not json", '["a"]', '{"Expiration": 5}',
                                      '{"Expiration": "tomorrow"}', b'{"Expiration": "nope"}', {}])
def test_no_usable_expiration_is_none(document: Any) -> None:
    assert expiration(document) is None


def test_fractional_seconds_and_offsets_are_understood() -> None:
    assert parse_time("2027-01-15T09:30:00.500Z") == 1800005400.5
    assert parse_time("2027-01-15T10:30:00+01:00") == 1800005400.0


@pytest.mark.parametrize("text", ["9999-12-31T23:59:59-23:59", "0001-01-01T00:00:00+14:00"])
def test_a_time_an_offset_pushes_out_of_the_calendar_is_none(text: str) -> None:
    assert parse_time(text) is None


@given(st.datetimes(timezones=st.timezones() | st.just(datetime.timezone.utc)))
def test_every_time_read_can_be_shown_and_read_back(when: datetime.datetime) -> None:
    """What IMDS writes as Expiration ends up in status.json through iso(): whatever the
    offset, it is either refused here or shown and read back as the same second."""
    epoch = parse_time(when.isoformat())
    if epoch is not None:
        shown = iso(epoch)
        assert shown is not None and parse_time(shown) == math.floor(epoch)
