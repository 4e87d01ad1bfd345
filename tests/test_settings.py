"""Connection settings and endpoints: every bad value is a SettingsError naming it."""

from __future__ import annotations

import math
from typing import Dict

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from cc_imds.errors import CcImdsError
from cc_imds.imds.settings import (
    ENV_ENDPOINT,
    ClientSettings,
    EndpointError,
    SettingsError,
    candidate_urls,
    choose_endpoint,
)
from tests.conftest import examples


# -- settings ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("settings", "message"), [
    ({"timeout": math.nan}, "timeout: must be a number of seconds from 0.05 to 60, not nan"),
    ({"timeout": -1.0}, "timeout: must be a number of seconds from 0.05 to 60, not -1.0"),
    ({"timeout": 0}, "timeout: must be a number of seconds from 0.05 to 60, not 0"),
    ({"timeout": math.inf}, "timeout: must be a number of seconds from 0.05 to 60, not inf"),
    ({"deadline": math.nan}, "deadline: must be a number of seconds from 0.1 to 3600, not nan"),
    ({"deadline": -math.inf}, "deadline: must be a number of seconds from 0.1 to 3600, not -inf"),
    ({"deadline": 2**1024}, f"deadline: must be a number of seconds from 0.1 to 3600, not {2**1024}"),  # no float
    ({"timeout": 60.5}, "timeout: must be a number of seconds from 0.05 to 60, not 60.5"),
    ({"deadline": 1e10}, "deadline: must be a number of seconds from 0.1 to 3600, not 10000000000.0"),
    ({"deadline": 0.05}, "deadline: must be a number of seconds from 0.1 to 3600, not 0.05"),
    ({"timeout": "2"}, "timeout: must be a number of seconds from 0.05 to 60, not '2'"),
    ({"token_ttl": 0}, "token_ttl: must be a whole number from 1 to 21600, not 0"),
    ({"token_ttl": 21601}, "token_ttl: must be a whole number from 1 to 21600, not 21601"),
    ({"token_ttl": True}, "token_ttl: must be a whole number from 1 to 21600, not True"),
    ({"concurrency": 0}, "concurrency: must be a whole number from 1 to 32, not 0"),
    ({"imdsv1": "always"}, "imdsv1: must be never or fallback, not 'always'"),
])
def test_bad_settings_are_a_clear_error(settings: Dict[str, object], message: str) -> None:
    with pytest.raises(SettingsError) as caught:
        ClientSettings(**settings)  # type: ignore[arg-type]
    assert str(caught.value) == message
    assert isinstance(caught.value, CcImdsError) and caught.value.exit_code == 1


def test_every_bad_setting_is_named_at_once() -> None:
    with pytest.raises(SettingsError) as caught:
        ClientSettings(timeout=math.nan, deadline=0)
    assert [p.split(":")[0] for p in caught.value.problems] == ["timeout", "deadline"]


@pytest.mark.parametrize("endpoint", [
    "http://[::1", "http://[::1]:abc", "http://h:99999", "http://h:0", "http://h:-1", "http://user@h",
    "http://u:p@h:80", "http://h/#x", "http://h?x=1", "http://a b", "http://h\n", "http://h\r\nX: y", "http://-h",
    "http://h_1", "http://", "https://h", "http:/h", "", "AUTO",
])
def test_bad_endpoints_are_a_clear_error(endpoint: str) -> None:
    with pytest.raises(EndpointError, match=r"expected auto, ipv4, ipv6 or http://host\[:port\]"):
        ClientSettings(endpoint=endpoint)


def test_a_bad_endpoint_names_where_it_came_from() -> None:
    with pytest.raises(EndpointError, match=r"^AWS_EC2_METADATA_SERVICE_ENDPOINT: endpoint 'http://\[::1': "):
        choose_endpoint(None, "ipv4", {ENV_ENDPOINT: "http://[::1"})
    with pytest.raises(EndpointError, match=r"^--endpoint: endpoint 'http://h:x': "):
        choose_endpoint("http://h:x", None, {})


@given(st.text(max_size=40) | st.text(alphabet="http:/[]:.0123456789abcdef@?#% ", max_size=30).map("http://".__add__))
@hypothesis_settings(max_examples=examples(300), deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_any_endpoint_text_is_accepted_or_a_clear_error(endpoint: str) -> None:
    try:
        urls = candidate_urls(endpoint)
    except EndpointError as exc:
        assert "expected auto, ipv4, ipv6 or http://host[:port]" in str(exc)
    else:
        assert urls and all(url.startswith("http://") for url in urls)
