"""Instance event notices: split, identified by content, and handed to commands."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from cc_imds.watch.events import MAX_FIELDS, notice_env, notices

SPOT = "meta-data/spot/instance-action"
MAINTENANCE = "meta-data/events/maintenance/scheduled"


def test_a_spot_notice_is_one_notice_with_its_fields() -> None:
    (notice,) = notices("spot-interruption", SPOT, b'{"action": "terminate", "time": "2027-01-15T09:32:00Z"}')
    assert notice.fields == {"action": "terminate", "time": "2027-01-15T09:32:00Z"}
    assert json.loads(notice.text) == {"action": "terminate", "time": "2027-01-15T09:32:00Z"}


def test_the_same_content_is_the_same_notice_however_it_is_formatted() -> None:
    compact = notices("spot-interruption", SPOT, b'{"action":"stop","time":"2027-01-15T09:32:00Z"}')
    pretty = notices("spot-interruption", SPOT, b'{\n  "time": "2027-01-15T09:32:00Z",\n  "action": "stop"\n}\n')
    assert compact[0].id == pretty[0].id


def test_changed_content_is_a_new_notice() -> None:
    first = notices("spot-interruption", SPOT, b'{"action": "stop", "time": "2027-01-15T09:32:00Z"}')[0]
    second = notices("spot-interruption", SPOT, b'{"action": "terminate", "time": "2027-01-15T09:32:00Z"}')[0]
    assert first.id != second.id


def test_each_scheduled_maintenance_entry_is_a_notice() -> None:
    body = json.dumps([
        {"NotBefore": "21 Jan 2027 09:00:43 GMT", "Code": "system-reboot", "EventId": "instance-event-0a",
         "NotAfter": "21 Jan 2027 09:17:23 GMT", "State": "active"},
        {"NotBefore": "22 Jan 2027 09:00:43 GMT", "Code": "instance-stop", "EventId": "instance-event-0b",
         "NotAfter": "22 Jan 2027 09:17:23 GMT", "State": "active"},
    ]).encode()
    found = notices("scheduled-maintenance", MAINTENANCE, body)
    assert [n.fields["Code"] for n in found] == ["system-reboot", "instance-stop"]
    assert len({n.id for n in found}) == 2


def test_no_notice_in_an_empty_answer() -> None:
    assert notices("scheduled-maintenance", MAINTENANCE, b"[]") == []
    assert notices("scheduled-maintenance", MAINTENANCE, b"  \n") == []


def test_text_that_is_not_json_is_still_a_notice() -> None:
    (notice,) = notices("spot-interruption", SPOT, b"2027-01-15T09:32:00Z\n")
    assert notice.text == "2027-01-15T09:32:00Z" and notice.fields == {}


def test_the_command_environment_names_the_event_and_each_field() -> None:
    (notice,) = notices("spot-interruption", SPOT, b'{"action": "hibernate", "time": "2027-01-15T09:32:00Z"}')
    env = notice_env(notice)
    assert env["CC_IMDS_EVENT"] == "spot-interruption"
    assert env["CC_IMDS_IMDS_PATH"] == SPOT
    assert env["CC_IMDS_NOTICE_ID"] == notice.id
    assert env["CC_IMDS_NOTICE_ACTION"] == "hibernate"
    assert env["CC_IMDS_NOTICE_TIME"] == "2027-01-15T09:32:00Z"
    assert json.loads(env["CC_IMDS_NOTICE"]) == {"action": "hibernate", "time": "2027-01-15T09:32:00Z"}


def test_a_field_name_with_a_line_break_is_left_to_the_full_notice() -> None:
    (notice,) = notices("spot-interruption", SPOT, b'{"action\\n": "x", "LD_PRELOAD=/x #": "y"}')
    assert notice.fields == {}


@given(st.dictionaries(st.text(max_size=20), st.one_of(st.text(max_size=50), st.integers(), st.booleans(),
                                                       st.none(), st.lists(st.integers(), max_size=2))))
def test_hostile_fields_never_make_a_bad_or_foreign_variable(document: dict) -> None:
    for notice in notices("rebalance-recommendation", "meta-data/events/recommendations/rebalance",
                          json.dumps(document).encode()):
        for name, value in notice_env(notice).items():
            assert name.startswith("CC_IMDS_") and name.replace("_", "").isalnum() and name.isascii()
            assert "\0" not in value
        env = notice_env(notice)
        assert env["CC_IMDS_NOTICE_ID"] == notice.id and env["CC_IMDS_EVENT"] == "rebalance-recommendation"


def test_a_field_never_replaces_the_notice_s_own_variables() -> None:
    (notice,) = notices("spot-interruption", SPOT, b'{"action": "stop", "id": "forged", "Id": "forged"}')
    env = notice_env(notice)
    assert env["CC_IMDS_NOTICE_ID"] == notice.id
    assert env["CC_IMDS_NOTICE_ACTION"] == "stop"


def test_fields_that_make_one_variable_are_left_to_the_full_notice() -> None:
    (notice,) = notices("spot-interruption", SPOT, b'{"action": "stop", "Action": "terminate", "time": "t"}')
    assert notice.fields == {"time": "t"}
    assert "CC_IMDS_NOTICE_ACTION" not in notice_env(notice)


def test_a_notice_with_thousands_of_fields_gives_a_bounded_environment() -> None:
    document = {f"field{i}": "x" * 4000 for i in range(5000)}
    (notice,) = notices("rebalance-recommendation", "meta-data/events/recommendations/rebalance",
                        json.dumps(document).encode())
    assert len(notice.fields) == MAX_FIELDS
    assert sum(len(k) + len(v) + 2 for k, v in notice_env(notice).items()) < 256 * 1024


def test_the_full_notice_variable_is_bounded_in_bytes_not_characters() -> None:
    """Linux refuses to run a command with an environment string over 128 KiB (E2BIG): a
    notice of 60,000 four-byte characters stays on stdin only, and the command still runs."""
    document = {"action": "terminate", "note": "\U0001f600" * 60_000}
    (notice,) = notices("spot-interruption", SPOT, json.dumps(document, ensure_ascii=False).encode())
    env = notice_env(notice)
    assert "CC_IMDS_NOTICE" not in env and env["CC_IMDS_NOTICE_ACTION"] == "terminate"
    assert all(len(f"{k}={v}".encode()) < 128 * 1024 for k, v in env.items())
