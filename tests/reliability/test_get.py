"""`cc-imds get` in scripts: all values or none, one token, and URLs read as curl's were."""

from __future__ import annotations

from typing import Callable

from tests.reliability.conftest import Scenario
from tests.reliability.test_faults import figures

Record = Callable[..., None]


def test_get_all_or_nothing(scenario: Scenario, record: Record) -> None:
    emulator = scenario.emulator()
    run = scenario.cli("get", "--shell", "ID=meta-data/instance-id", "GONE=meta-data/nope",
                       "KEY=meta-data/iam/security-credentials/app-server", "--key", "Nope",
                       "TAG=meta-data/tags/instance/Nope", "--endpoint", emulator.url, emulator=emulator)
    assert (run.code, run.stdout) == (1, "")  # no value, nothing for eval
    assert run.stderr.splitlines() == [
        "cc-imds: GONE: /latest/meta-data/nope: not found (404)",
        "cc-imds: KEY: /latest/meta-data/iam/security-credentials/app-server: the JSON document has no key 'Nope'",
        "cc-imds: TAG: /latest/meta-data/tags/instance/Nope: not found (404)",
    ]
    record("get-all-or-nothing", "every failure named, no value printed", **figures(run))


def test_get_one_token_for_many_values(scenario: Scenario, record: Record) -> None:
    emulator = scenario.emulator()
    paths = ["meta-data/instance-id", "meta-data/placement/region", "meta-data/placement/availability-zone",
             "meta-data/instance-type", "meta-data/local-ipv4", "meta-data/tags/instance/Name"]
    run = scenario.cli("get", "--json", *(f"V{i}={p}" for i, p in enumerate(paths)), "--endpoint", emulator.url,
                       emulator=emulator)
    assert run.code == 0, run.stderr
    assert (run.puts, run.gets) == (1, len(paths))
    record("get-one-token", "all values, 1 PUT, one GET each", **figures(run))


def test_get_url_forms(scenario: Scenario, record: Record) -> None:
    emulator = scenario.emulator()
    for url in ("http://169.254.169.254/2021-07-15/meta-data/instance-id",
                "http://169.254.169.254:80/latest/meta-data/instance-id",
                "http://[fd00:ec2::254]/latest/meta-data/instance-id"):
        run = scenario.cli("get", url, "--endpoint", emulator.url, emulator=emulator)
        assert (run.code, run.stdout, run.gets) == (0, "i-0a1b2c3d4e5f60789", 1)
    assert {r.path for r in emulator.requests if r.method == "GET"} == {"/latest/meta-data/instance-id"}
    for url in ("http://169.254.169.254.evil.example/latest/meta-data/instance-id",
                "http://10.0.0.1/latest/meta-data/instance-id", "https://169.254.169.254/latest/meta-data/instance-id",
                "http://169.254.169.254:8080/latest/meta-data/instance-id"):
        refused = scenario.cli("get", url, "--endpoint", emulator.url, emulator=emulator)
        assert (refused.code, refused.stdout, refused.puts, refused.gets) == (2, "", 0, 0), refused.stderr
    record("get-url-forms", "dated, :80 and IPv6 URLs read from /latest/; other hosts exit 2, nothing asked",
           **figures(refused))
