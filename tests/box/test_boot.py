"""cc-imds on a booting machine: systemd, cloud-init's Ec2 datasource, IMDS on the link-local
addresses (the emulator, inside the VM), user-data from IMDS, and no endpoint set anywhere.

Each test reads one boot's results (see scenarios.py); boots run once per session.
"""

from __future__ import annotations

import calendar
import configparser
import json
import re
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Tuple

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.box.image import RELEASES
from tests.box.runner import ENABLED, BootResult, cloud_init_schema
from tests.box.scenarios import (
    AGENT_CREDENTIALS,
    AGENT_READS,
    AGENT_UNIT,
    APP_CONF,
    CREDENTIALS,
    GET_NAME,
    INSTANCE_ENV,
    IPV6,
    LEFTOVERS,
    LIFECYCLE_MEMORY,
    METRICS,
    MODULE_DROPIN,
    NAME_ENV,
    OUTPUTS,
    PLACEMENT_ENV,
    ROLE_CREDENTIALS,
    ROTATE,
    RUNCMD_ENV,
    SCRAPE,
    STATUS,
    STATUS_JSON,
    STOP_WATCHER,
    TAGS_SH,
    TEAM,
    USER_DATA,
    WAIT_AGENT,
    WAIT_AGENT_RESTARTED,
    WAIT_IN_SERVICE,
    WAIT_WARM,
    WATCH_MARKER,
)

if not ENABLED:
    pytest.skip("boots VMs for minutes: run with CC_IMDS_BOX=1 (make test-box)", allow_module_level=True)

# cloud-init's datasource says who it is, or lets `requests` say it; so does cc-imds.
CLOUD_INIT_AGENTS = ("Cloud-Init/", "python-requests/")
CC_IMDS_AGENT = "cc-imds/"
DEADLINE = 60.0  # cc-imds's default, which the user-data does not change
# cloud-init's WARNINGs, in its log and (23.4+) as recoverable errors in `cloud-init status`.
# These are expected, each for a stated reason; any other fails the tests.
EXPECTED_WARNINGS = (
    # docs/troubleshooting.md: cloud-init 23.4+ cannot know the out-of-tree `imds` key
    # (test_the_only_schema_complaint_is_the_imds_key checks that it is the only cause).
    re.compile(r"^cloud-config failed schema validation!"),
    # The box has no network device at all (qemu -nic none), where an instance always has
    # one: cloud-init's local stage cannot bring up a network to look for IMDS with, so on
    # 25.1.4 the network stage's Ec2 datasource finds it instead.
    re.compile(r"^Did not find a fallback interface on (aws|distro: debian)\.$"),
    re.compile(r"^Getting data from <class 'cloudinit\.sources\.DataSourceEc2\.DataSourceEc2Local'> failed$"),
    # The box has no SSH server.
    re.compile(r"^Ignoring config 'ssh_pwauth: None'\. SSH service 'ssh' is not installed\.$"),
)


# The systemd unit of each cc-imds process the box's emulator saw (imds_box.py tells them
# apart): the boot run (cloud-config.service; cloud-init-main.service from 24.3), the watcher,
# and the after-boot scripts (run by box-collect.service).
BOOT_RUN_UNITS = ("cloud-config.service", "cloud-init-main.service")
WATCHER_UNIT = "cc-imds-watch.service"
SCRIPTS_UNIT = "box-collect.service"


def by_client(boot: BootResult) -> Dict[str, List[Dict[str, Any]]]:
    """The boot's IMDS requests, told apart by their User-Agent (cloud-init or cc-imds) and
    by the unit of cc-imds's process: the boot run, the watcher, or the after-boot scripts.
    Nobody else may call IMDS."""
    clients: Dict[str, List[Dict[str, Any]]] = {"cloud-init": [], "cc-imds": [], "watcher": [], "scripts": []}
    for request in boot.requests:
        if request["ua"].startswith(CLOUD_INIT_AGENTS):
            clients["cloud-init"].append(request)
        elif request["ua"].startswith(CC_IMDS_AGENT) and request["unit"] in BOOT_RUN_UNITS:
            clients["cc-imds"].append(request)
        elif request["ua"].startswith(CC_IMDS_AGENT) and request["unit"] == WATCHER_UNIT:
            clients["watcher"].append(request)
        elif request["ua"].startswith(CC_IMDS_AGENT) and request["unit"] == SCRIPTS_UNIT:
            clients["scripts"].append(request)
        else:
            raise AssertionError(f"an unexpected client called IMDS: {request}")
    return clients


def cc_imds_requests(boot: BootResult) -> List[Dict[str, Any]]:
    """The boot run's requests."""
    return by_client(boot)["cc-imds"]


def cloud_init_requests(boot: BootResult) -> List[Dict[str, Any]]:
    return by_client(boot)["cloud-init"]


def unexpected(warnings: List[str]) -> List[str]:
    return [message for message in warnings if not any(pattern.search(message) for pattern in EXPECTED_WARNINGS)]


def assert_done_without_errors(boot: BootResult) -> None:
    status = boot.status
    assert status.get("status") == "done", (status, boot.failure_context())
    assert status.get("errors") == [], status
    recoverable = [message for messages in (status.get("recoverable_errors") or {}).values() for message in messages]
    assert unexpected(recoverable) == [], status
    assert unexpected(re.findall(r"\[WARNING\]: (.*)", boot.log)) == []
    assert "Running module imds" in boot.log
    assert not re.search(r"Running module imds .* failed", boot.log), boot.log[-3000:]
    assert not re.search(r"\[(ERROR|CRITICAL)\]", boot.log), [
        line for line in boot.log.splitlines() if "[ERROR]" in line or "[CRITICAL]" in line
    ]


def env_file(text: str) -> Dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line and not line.startswith("#"))


def test_the_only_schema_complaint_is_the_imds_key(release: str) -> None:
    """What the first EXPECTED_WARNINGS entry takes for granted, asked of the same cloud-init
    version on the host: the user-data is valid but for `imds:`, which 23.4+ reject."""
    with tempfile.TemporaryDirectory() as tmp:
        user_data = Path(tmp) / "user-data"
        user_data.write_text(USER_DATA)
        problems = cloud_init_schema(RELEASES[release].cloud_init, user_data)
    version = tuple(int(part) for part in RELEASES[release].cloud_init.split("."))
    if version < (23, 4):
        assert problems == []
    else:
        assert problems == ["imds: Additional properties are not allowed ('imds' was unexpected)"]


# -- first boot ----------------------------------------------------------------------------
@pytest.mark.boots("stop-start/first")
def test_the_ec2_datasource_finds_the_user_data_through_the_emulator(boot: BootResult) -> None:
    status = boot.status
    assert status.get("datasource") in ("ec2", "ec2local"), status
    assert "cloud_name=aws" in boot.log  # from the VM's DMI: the datasource knows it is on EC2
    requests = cloud_init_requests(boot)
    crawled = {r["path"] for r in requests if r["status"] == 200 and r["method"] == "GET"}
    versions = {p.split("/")[1] for p in crawled}
    assert any(re.fullmatch(r"\d{4}-\d{2}-\d{2}", v) for v in versions), sorted(crawled)
    assert any(p.endswith("/user-data") for p in crawled), sorted(crawled)
    assert boot.user_data == USER_DATA


@pytest.mark.boots("stop-start/first")
def test_first_boot_is_done_without_errors(boot: BootResult) -> None:
    assert_done_without_errors(boot)


@pytest.mark.boots("stop-start/first")
def test_imds_runs_first_in_the_config_stage(boot: BootResult) -> None:
    config_stage = boot.log.split("running 'modules:config'", 1)[1].split("running 'modules:final'", 1)[0]
    modules = re.findall(r"Running module (\S+) ", config_stage)
    assert modules[:1] == ["imds"], modules
    assert re.search(r"Running module imds .* with frequency always", config_stage)
    # ... because the RPM's %post (`cc-imds enable-module`) put it there, in a drop-in.
    dropin = yaml.safe_load(boot.outputs[MODULE_DROPIN]["content"])
    assert dropin["cloud_config_modules"][0] == ["imds", "always"]


@pytest.mark.boots("stop-start/first")
def test_first_boot_writes_every_output_with_its_mode(boot: BootResult) -> None:
    outputs = boot.outputs
    for path, mode in OUTPUTS.items():
        assert outputs[path] is not None, f"{path} was not written"
        assert (outputs[path]["mode"], outputs[path]["owner"], outputs[path]["group"]) == (mode, "root", "root"), path
    instance = env_file(outputs[INSTANCE_ENV]["content"])
    assert set(instance) == {"INSTANCE_ID", "AWS_REGION", "TEAM"}
    assert "name = web-1\nregion = eu-west-1\n" == outputs[APP_CONF]["content"]
    assert env_file(outputs[PLACEMENT_ENV]["content"]) == {"AZ": "'eu-west-1b'"}
    assert json.loads(outputs[CREDENTIALS]["content"]) == {"AWS_ACCESS_KEY_ID": "ASIAEXAMPLEACCESSKEY"}


@pytest.mark.boots("stop-start/first")
def test_runcmd_sees_the_values(boot: BootResult) -> None:
    seen = env_file(boot.outputs[RUNCMD_ENV]["content"])
    assert seen["INSTANCE_ID"] == boot.chain.instance_id
    assert seen["TAG_Name"] == "web-1"
    assert seen["TAG_Team"] == TEAM
    assert seen["TAG_aws_cloudformation_stack_name"] == "web-stack"


@pytest.mark.boots("stop-start/first")
def test_a_consumer_unit_ordered_after_cloud_config_sees_the_values(boot: BootResult) -> None:
    consumer = boot.consumer
    assert consumer["unit"] == {"ActiveState": "active", "Result": "success", "ExecMainStatus": "0"}
    environment = consumer["environment"]
    assert environment["INSTANCE_ID"] == boot.chain.instance_id
    assert environment["AWS_REGION"] == "eu-west-1"
    assert environment["TEAM"] == TEAM


@pytest.mark.boots("stop-start/first")
def test_every_cc_imds_request_carries_a_token(boot: BootResult) -> None:
    requests = cc_imds_requests(boot)
    assert requests, "cc-imds made no request"
    assert [(r["method"], r["path"], r["status"]) for r in requests if r["method"] != "GET"] == [
        ("PUT", "/latest/api/token", 200)
    ]
    assert requests[0]["method"] == "PUT"
    unauthenticated = [r for r in requests if r["method"] == "GET" and (r["token"] != "valid" or r["status"] != 200)]
    assert unauthenticated == []


# -- second boot: a tag edited while stopped; IMDS on IPv6 alone, and slow to come up -------
@pytest.mark.boots("stop-start/second")
def test_second_boot_is_done_without_errors(boot: BootResult) -> None:
    assert_done_without_errors(boot)


@pytest.mark.boots("stop-start/second", "stop-start/first")
def test_second_boot_rerenders_what_the_tag_change_affects(
    boot: BootResult, boots: Callable[[str], BootResult]
) -> None:
    first, second = boots("stop-start/first").outputs, boot.outputs_at_boot
    assert "export TAG_Name='web-2'" in second[TAGS_SH]["content"]
    assert "export TAG_Name='web-1'" in first[TAGS_SH]["content"]
    assert second[APP_CONF]["content"] == "name = web-2\nregion = eu-west-1\n"
    assert env_file(first[NAME_ENV]["content"]) == {"NAME": "'web-1'"}
    for path in (TAGS_SH, APP_CONF):
        assert second[path]["inode"] != first[path]["inode"], f"{path} was not replaced"
        assert second[path]["mode"] == first[path]["mode"] == OUTPUTS[path]


@pytest.mark.boots("stop-start/second", "stop-start/first")
def test_second_boot_leaves_unchanged_files_untouched(boot: BootResult, boots: Callable[[str], BootResult]) -> None:
    """As the boot left them: after it, the watcher rewrites credentials.json with rotated keys."""
    first, second = boots("stop-start/first").outputs, boot.outputs_at_boot
    for path in (INSTANCE_ENV, PLACEMENT_ENV, CREDENTIALS):
        before, after = first[path], second[path]
        assert (after["inode"], after["mtime_ns"]) == (before["inode"], before["mtime_ns"]), path
        assert after["content"] == before["content"]
    # Written: the three the tag feeds, and the agent's credentials in /run (empty at each boot).
    assert re.search(r"imds: 4 file\(s\) written, 3 unchanged", boot.log)
    assert boot.consumer["environment"]["INSTANCE_ID"] == boot.chain.instance_id


@pytest.mark.boots("stop-start/second")
def test_imds_slow_to_come_up_is_covered_by_the_deadline(boot: BootResult) -> None:
    events = {e["event"]: e for e in boot.events}
    assert {"outage-start", "first-attempt", "outage-end"} <= set(events), boot.events
    outage_end = events["outage-end"]["at"]
    # cc-imds was refused, retried, and was served only once IMDS was up.
    assert events["outage-end"]["refused"] >= 2, events["outage-end"]
    requests = cc_imds_requests(boot)
    assert requests and requests[0]["t"] >= outage_end
    assert [r["method"] for r in requests].count("PUT") == 1
    assert all(r["status"] == 200 for r in requests)
    # The imds module waited out the outage and still ended within its deadline.
    figures = boot.figures()
    outage = boot.chain.boot("second").outage
    assert outage is not None
    assert outage <= figures["imds_module"] < DEADLINE + 5, figures
    assert all(boot.outputs[path] is not None for path in OUTPUTS)


@pytest.mark.boots("stop-start/second")
def test_ipv6_only_auto_finds_imds_within_its_race(boot: BootResult) -> None:
    assert {r["listener"] for r in boot.requests} == {IPV6}
    # `auto` raced IPv4 and IPv6; only IPv6 could answer, and it served the whole run with
    # one token.
    requests = cc_imds_requests(boot)
    assert [r["method"] for r in requests].count("PUT") == 1
    assert all(r["status"] == 200 and (r["method"] == "PUT" or r["token"] == "valid") for r in requests)
    assert all(boot.outputs[path] is not None for path in OUTPUTS)
    assert boot.consumer["environment"]["INSTANCE_ID"] == boot.chain.instance_id


@pytest.mark.boots("stop-start/second")
def test_after_boot_cc_imds_get_reads_a_tag_edited_while_running(boot: BootResult) -> None:
    """`cc-imds get` in a script on the running instance, with no endpoint given, before and
    after the tag is edited through the emulator's control endpoint."""
    ran = [(c["rc"], c["stdout"], c["stderr"]) for c in boot.ran(GET_NAME)]
    assert ran == [(0, "web-2", ""), (0, "web-3", "")]
    requests = by_client(boot)["scripts"]
    assert [(r["method"], r["path"]) for r in requests] == [
        ("PUT", "/latest/api/token"), ("GET", "/latest/meta-data/tags/instance/Name")
    ] * 2
    assert all(r["listener"] == IPV6 and r["status"] == 200 for r in requests)


# -- after boot: cc-imds watch under systemd (both boots start it; the second acts on it) ----
def assert_started_by_the_path_unit(watcher: Dict[str, Any]) -> None:
    """The service has no [Install] section, so only a trigger or an explicit start starts it;
    systemd names the path unit that did in TRIGGER_UNIT and TRIGGER_PATH, except Debian 11's
    systemd 247, which does not set them yet (AL2023's 252 does)."""
    service = watcher["cc-imds-watch.service"]
    assert (service["UnitFileState"], service["TriggeredBy"]) == ("static", "cc-imds-watch.path"), service
    if watcher["systemd"] > 247:
        assert service["trigger"] == {"TRIGGER_UNIT": "cc-imds-watch.path", "TRIGGER_PATH": "/run/cc-imds/watch"}
    else:
        assert service["trigger"] == {}


@pytest.mark.boots("stop-start/first")
def test_the_path_unit_starts_the_watcher_in_the_boot_that_asks_for_it(boot: BootResult) -> None:
    """Installed as the RPM installs it (units, preset, %post), nobody runs systemctl: the boot
    run's marker in /run makes the path unit start the watcher, after the config stage."""
    watcher = boot.watcher["before"]
    path_unit, service = watcher["cc-imds-watch.path"], watcher["cc-imds-watch.service"]
    assert (path_unit["UnitFileState"], path_unit["UnitFilePreset"], path_unit["ActiveState"]) == (
        "enabled", "enabled", "active"), path_unit
    assert (service["ActiveState"], service["SubState"], service["NRestarts"]) == ("active", "running", "0"), service
    assert_started_by_the_path_unit(watcher)
    # Started in this boot (before any after-boot command could have), by the marker the
    # boot run left; the boot run made no request after it started.
    assert service["started"] < boot.after_boot["started"]
    marker = boot.outputs[WATCH_MARKER]
    assert marker is not None and "meta-data/tags/instance/Name" in marker["content"], marker
    assert max(r["t"] for r in cc_imds_requests(boot)) < service["started"]
    # Nothing changed in this boot: polls that find nothing new run nothing (but the
    # lifecycle state seen first, a transition: test_a_warm_pool_launch_...).
    assert by_client(boot)["watcher"], "the watcher made no request"
    assert [r["name"] for r in boot.watch_commands] == ["lifecycle-warm"]


def lifecycle_runs(boot: BootResult) -> List[Any]:
    return [(r["name"], r["env"]["CC_IMDS_NOTICE_STATE"], r["env"]["CC_IMDS_NOTICE_PREVIOUS"],
             r["env"]["CC_IMDS_NOTICE_INSTANCEID"]) for r in boot.watch_commands if r["name"].startswith("lifecycle")]


@pytest.mark.boots("stop-start/first")
def test_a_warm_pool_launch_runs_the_warmed_lifecycle_command_once(boot: BootResult) -> None:
    """Under the real units: the first state seen is a transition (from none), run once; two
    more polls run nothing; the state acted on is kept in /var/lib, root's alone to write."""
    [waited] = boot.ran(WAIT_WARM)
    assert (waited["rc"], waited["stderr"]) == (0, ""), waited
    assert lifecycle_runs(boot) == [("lifecycle-warm", "Warmed:Running", "", boot.chain.instance_id)]
    memory = boot.outputs[LIFECYCLE_MEMORY]
    assert memory is not None and (memory["mode"], memory["owner"]) == ("0o644", "root"), memory
    assert {k: v for k, v in json.loads(memory["content"]).items() if k != "seen"} == {
        "instance_id": boot.chain.instance_id, "state": "Warmed:Running"}


@pytest.mark.boots("stop-start/second")
def test_started_again_into_service_it_runs_the_in_service_command_once(boot: BootResult) -> None:
    """Moved to InService while stopped: at the next boot (/run empty, /var/lib kept), that
    transition runs once, with the first boot's state as the previous one."""
    [waited] = boot.ran(WAIT_IN_SERVICE)
    assert (waited["rc"], waited["stderr"]) == (0, ""), waited
    assert lifecycle_runs(boot) == [("lifecycle-in-service", "InService", "Warmed:Running", boot.chain.instance_id)]
    [text] = boot.ran(STATUS)
    assert "event lifecycle: meta-data/autoscaling/target-lifecycle-state, polled every 5s" in text["stdout"]
    assert "  state InService; last acted on InService, seen " in text["stdout"]
    assert "  transition Warmed:Running -> InService seen " in text["stdout"]


@pytest.mark.boots("stop-start/second")
def test_a_tag_edited_while_running_reaches_the_file_and_runs_on_change_once(boot: BootResult) -> None:
    assert_started_by_the_path_unit(boot.watcher["before"])
    waited = boot.ran("/usr/local/lib/box/record.py wait on-change 1 meta-data/tags/instance/Name 2")
    assert [(c["rc"], c["stderr"]) for c in waited] == [(0, "")], waited
    assert env_file(boot.outputs[NAME_ENV]["content"]) == {"NAME": "'web-3'"}
    assert boot.outputs[NAME_ENV]["mode"] == OUTPUTS[NAME_ENV]
    runs = [r for r in boot.watch_commands if r["name"] == "on-change"]
    assert [r["env"] for r in runs] == [{"CC_IMDS_OUTPUT": NAME_ENV, "CC_IMDS_CHANGE": "updated"}]
    # Run after the poll that saw web-3, and never again on the two polls after it.
    polls = [r for r in by_client(boot)["watcher"] if r["path"].endswith("/meta-data/tags/instance/Name")]
    assert len([p for p in polls if p["t"] > runs[0]["t"]]) >= 2
    # The watcher's whole life on one token, every request carrying it.
    watcher = by_client(boot)["watcher"]
    assert [r["method"] for r in watcher].count("PUT") == 1
    assert all(r["status"] == 200 or (r["status"] == 404 and r["path"].endswith("/spot/instance-action"))
               for r in watcher), [r for r in watcher if r["status"] != 200]
    assert all(r["token"] == "valid" for r in watcher if r["method"] == "GET")


@pytest.mark.boots("stop-start/second")
def test_a_spot_notice_runs_its_command_once_within_ten_seconds(boot: BootResult) -> None:
    issued = [e for e in boot.events if e["event"] == "spot-notice"]
    assert len(issued) == 1, boot.events
    runs = [r for r in boot.watch_commands if r["name"] == "spot-interruption"]
    assert len(runs) == 1, runs
    notice = json.loads(runs[0]["stdin"])
    assert notice == issued[0]["notice"]
    env = runs[0]["env"]
    assert (env["CC_IMDS_EVENT"], env["CC_IMDS_NOTICE_ACTION"], env["CC_IMDS_NOTICE_TIME"]) == (
        "spot-interruption", "terminate", notice["time"])
    # From the moment the notice was asked for (it appears a little later) to the command's start.
    delay = boot.figures()["spot_notice_to_command"]
    assert 0 < delay < 10, delay
    waited = boot.ran("/usr/local/lib/box/record.py wait spot-interruption 1 meta-data/spot/instance-action 2")
    assert [c["rc"] for c in waited] == [0], waited


@pytest.mark.boots("stop-start/second")
def test_cc_imds_status_is_healthy_and_shows_the_values(boot: BootResult) -> None:
    [text] = boot.ran(STATUS)
    assert (text["rc"], text["stderr"]) == (0, ""), text
    assert re.search(r"^watcher: running \(pid \d+\)", text["stdout"], re.M), text["stdout"]
    assert "value name: meta-data/tags/instance/Name (refresh every 3s)" in text["stdout"]
    assert f"output {NAME_ENV}: uses name" in text["stdout"]
    assert "event spot-interruption: meta-data/spot/instance-action, polled every 5s" in text["stdout"]
    assert text["stdout"].rstrip().endswith("healthy")
    [ran] = boot.ran(STATUS_JSON)
    assert ran["rc"] == 0, ran
    status = json.loads(ran["stdout"])
    assert (status["exit"], status["problems"]) == (0, [])
    assert status["status"]["values"]["name"]["failures"] == 0
    assert status["status"]["outputs"][NAME_ENV]["last_action"] == "updated"
    assert status["status"]["outputs"][NAME_ENV]["on_change"]["exit"] == 0
    [notice] = status["status"]["events"]["spot-interruption"]["notices"]
    assert [c["exit"] for c in notice["commands"]] == [0], notice
    # Values are named, never shown.
    assert "web-3" not in ran["stdout"] and "web-3" not in text["stdout"]


@pytest.mark.boots("stop-start/second")
def test_systemctl_stop_leaves_no_temp_files(boot: BootResult) -> None:
    [stop] = boot.ran(STOP_WATCHER)
    assert stop["rc"] == 0, stop
    after = boot.watcher["after"]["cc-imds-watch.service"]
    assert (after["ActiveState"], after["Result"]) == ("inactive", "success"), after
    [leftovers] = boot.ran(LEFTOVERS)
    assert (leftovers["rc"], leftovers["stdout"]) == (0, ""), leftovers


# -- the role's credentials handed to a service (LoadCredential=, on_change) ----------------
def shared_file(text: str) -> Dict[str, str]:
    """A shared credentials file's [default] profile, read as an SDK reads it."""
    parser = configparser.ConfigParser(interpolation=None)
    parser.read_string(text)
    return dict(parser["default"])


def agent_reads(boot: BootResult) -> List[Dict[str, Any]]:
    """Each start of box-agent.service: what guest/agent.py read, and as whom."""
    found = boot.outputs[AGENT_READS]
    assert found is not None, f"{AGENT_UNIT} never ran"
    return [json.loads(line) for line in found["content"].splitlines()]


def served_role(boot: BootResult) -> Dict[str, str]:
    """The role's credentials IMDS served as the boot started."""
    return dict(boot.config["tree"][ROLE_CREDENTIALS])


def rotation(boot: BootResult) -> Dict[str, Any]:
    """The one rotation of the role's keys in this boot (imds_box.py rotate)."""
    [rotated] = [e for e in boot.events if e["event"] == "credentials-rotated" and e["path"] == ROLE_CREDENTIALS]
    return dict(rotated)


def epoch(iso: str) -> float:
    return float(calendar.timegm(time.strptime(iso, "%Y-%m-%dT%H:%M:%SZ")))


def assert_read_through_load_credential(read: Dict[str, Any]) -> None:
    """As docs/credentials.md's recipe promises: the service reads systemd's copy, as a user of
    its own (DynamicUser=: 61184 to 65519), and cannot read the file cc-imds keeps."""
    assert 61184 <= read["uid"] <= 65519, read
    assert (read["credentials_directory"], read["read"]) == (
        f"/run/credentials/{AGENT_UNIT}", f"/run/credentials/{AGENT_UNIT}/aws"), read
    assert (read["has_secret"], read["has_token"], read["source_readable"]) == (True, True, False), read


@pytest.mark.boots("stop-start/first")
def test_a_service_reads_the_role_credentials_through_load_credential(boot: BootResult) -> None:
    role = served_role(boot)
    written = boot.outputs[AGENT_CREDENTIALS]
    assert written is not None
    assert (written["mode"], written["owner"], written["group"]) == ("0o600", "root", "root"), written
    assert shared_file(written["content"]) == {
        "aws_access_key_id": role["AccessKeyId"],
        "aws_secret_access_key": role["SecretAccessKey"],
        "aws_session_token": role["Token"],
    }
    [read] = agent_reads(boot)
    assert_read_through_load_credential(read)
    assert read["access_key_id"] == role["AccessKeyId"]


@pytest.mark.boots("stop-start/second")
def test_rotated_credentials_reach_the_service_through_its_restart(boot: BootResult) -> None:
    """IMDS rotates the role's keys while the instance runs: the watcher, which asks every
    minute for keys this close to their Expiration, rewrites the file and runs its on_change
    (`systemctl try-restart`); the service starts again and reads the new keys. Once: the
    agent started twice in the boot, and the watcher counts one on_change (the metrics test).
    (That a poll finding the same keys restarts nothing is the Name tag's test, on the same
    code path.)"""
    rotated_keys = rotation(boot)
    for command in (ROTATE, WAIT_AGENT, WAIT_AGENT_RESTARTED):
        [ran] = boot.ran(command)
        assert (ran["rc"], ran["stderr"]) == (0, ""), ran
    served = served_role(boot)
    at_boot, after = agent_reads(boot)
    for read in (at_boot, after):
        assert_read_through_load_credential(read)
    assert at_boot["access_key_id"] == served["AccessKeyId"] != rotated_keys["access_key_id"]
    assert after["access_key_id"] == rotated_keys["access_key_id"]
    assert after["invocation"] != at_boot["invocation"] and after["t"] > rotated_keys["before"]
    written = boot.outputs[AGENT_CREDENTIALS]
    assert written is not None
    assert (written["mode"], written["owner"], written["group"]) == ("0o600", "root", "root"), written
    assert shared_file(written["content"])["aws_access_key_id"] == rotated_keys["access_key_id"]
    # Replaced (a new inode: the rename), before the keys it replaced expired.
    assert written["inode"] != boot.outputs_at_boot[AGENT_CREDENTIALS]["inode"]
    assert written["mtime_ns"] / 1e9 < epoch(served["Expiration"])
    [ran] = boot.ran(STATUS_JSON)
    status = json.loads(ran["stdout"])["status"]["outputs"][AGENT_CREDENTIALS]
    assert (status["role"], status["format"], status["holder"]) == (
        "app-server", "credentials-file", "root:root 0600"), status
    assert (status["last_action"], status["on_change"]["exit"]) == ("updated", 0), status
    assert status["expires"] == rotated_keys["expiration"]
    [text] = boot.ran(STATUS)
    assert (f"credentials {AGENT_CREDENTIALS}: role app-server, format credentials-file, held by root:root 0600"
            in text["stdout"]), text["stdout"]


def secrets_of(boot: BootResult) -> Dict[str, str]:
    """Every secret key and session token the boot's IMDS handed out, by name: the served ones,
    and the rotated ones, as the agent's file holds them at the end."""
    served = served_role(boot)
    rotated = shared_file(boot.outputs[AGENT_CREDENTIALS]["content"])  # type: ignore[index]
    return {"the served SecretAccessKey": served["SecretAccessKey"], "the served Token": served["Token"],
            "the rotated SecretAccessKey": rotated["aws_secret_access_key"],
            "the rotated Token": rotated["aws_session_token"]}


@pytest.mark.boots("stop-start/second")
def test_no_secret_reaches_a_log_status_or_metrics(boot: BootResult) -> None:
    secrets = secrets_of(boot)
    [status], [status_json], [scrape] = boot.ran(STATUS), boot.ran(STATUS_JSON), boot.ran(SCRAPE)
    metrics = boot.outputs[METRICS]
    assert metrics is not None
    for where, text in (("the journal", boot.journal), ("cloud-init's log", boot.log),
                        ("the serial console", (boot.dir / "serial.log").read_text(errors="replace")),
                        ("cc-imds status", status["stdout"] + status["stderr"]),
                        ("cc-imds status --json", status_json["stdout"]), ("the metrics file", metrics["content"]),
                        ("node_exporter", scrape["stdout"])):
        assert text, where
        shown = [name for name, secret in secrets.items() if secret in text]
        assert shown == [], f"{where} shows {', '.join(shown)}"


# -- metrics where operators look: node_exporter's textfile collector -------------------------
Samples = Dict[Tuple[str, Tuple[Tuple[str, str], ...]], float]  # (name, labels) -> value


def samples(text: str, prefix: str) -> Samples:
    """Every sample whose name starts with `prefix`, parsed by Prometheus's own text parser."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples
            if s.name.startswith(prefix)}


def sample(found: Samples, name: str, **labels: str) -> float:
    return found[(name, tuple(sorted(labels.items())))]


@pytest.mark.boots("stop-start/second")
def test_node_exporter_serves_what_the_watcher_did(boot: BootResult) -> None:
    """The user-data declares the metrics file in the directory Debian's node_exporter reads.
    The watcher writes it under its real unit; a scrape of node_exporter, as Prometheus does,
    returns what the watcher did in this boot: the lifecycle transition, the tag's on_change,
    the spot notice, the rotated credentials."""
    written = boot.outputs[METRICS]
    assert written is not None, f"{METRICS} was not written"
    assert (written["mode"], written["owner"], written["group"]) == ("0o644", "root", "root"), written
    [scrape] = boot.ran(SCRAPE)
    assert scrape["rc"] == 0, scrape
    served = samples(scrape["stdout"], "cc_imds_")
    textfile = samples(scrape["stdout"], "node_textfile_")
    assert sample(textfile, "node_textfile_scrape_error") == 0, textfile
    # The file it read: Debian 11's node_exporter 1.1.2 names it, 12's 1.5.0 and 13's 1.9.0 give its path.
    [version] = [dict(labels)["version"] for (name, labels) in samples(scrape["stdout"], "node_exporter_build_info")]
    major_minor = tuple(int(part) for part in re.findall(r"\d+", version)[:2])
    read = {dict(labels)["file"] for (name, labels) in textfile if name == "node_textfile_mtime_seconds"}
    assert read == ({Path(METRICS).name} if major_minor < (1, 5) else {METRICS}), (version, textfile)
    # What the scrape served is what the file held when the watcher stopped, but for the
    # times of the polls since (the Name tag is polled every 3 s).
    held = samples(written["content"], "cc_imds_")
    assert served.keys() == held.keys()
    polled = "cc_imds_value_last_success_timestamp_seconds"
    assert {k: v for k, v in served.items() if k[0] != polled} == {k: v for k, v in held.items() if k[0] != polled}

    started = boot.watcher["before"]["cc-imds-watch.service"]["started"]
    assert started - 1 <= sample(served, "cc_imds_watcher_start_timestamp_seconds") <= boot.after_boot["started"]
    for event in ("spot-interruption", "lifecycle"):
        assert sample(served, "cc_imds_event_notices_seen_total", event=event) == 1, event
        assert sample(served, "cc_imds_event_notices_handled_total", event=event) == 1, event
    exits = {labels: value for (name, labels), value in served.items() if name == "cc_imds_command_exits_total"}
    assert exits == {
        (("kind", "event"), ("name", "lifecycle"), ("outcome", "exit_0")): 1,
        (("kind", "event"), ("name", "spot-interruption"), ("outcome", "exit_0")): 1,
        (("kind", "on_change"), ("name", AGENT_CREDENTIALS), ("outcome", "exit_0")): 1,
        (("kind", "on_change"), ("name", NAME_ENV), ("outcome", "exit_0")): 1,
    }, exits
    rotated_keys = rotation(boot)
    for output in (AGENT_CREDENTIALS, CREDENTIALS):
        assert sample(served, "cc_imds_output_expiration_timestamp_seconds", output=output) == epoch(
            rotated_keys["expiration"]), output
    failures = {k: v for k, v in served.items() if "failures" in k[0] and v != 0}
    assert failures == {}
    # Labels name values, paths and events: never a value.
    labels = {value for (_, pairs) in served for (_, value) in pairs}
    assert not labels & {"web-2", "web-3", TEAM, rotated_keys["access_key_id"], served_role(boot)["AccessKeyId"]}
