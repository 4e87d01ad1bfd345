"""The watcher's Prometheus text file (watch/metrics.py), read back with the Prometheus
project's own parser (prometheus_client, a test dependency only)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Dict, List, Tuple

import pytest
from prometheus_client.parser import text_string_to_metric_families

from cc_imds.files import atomic
from cc_imds.watch.metrics import FAMILIES, Counters, OutputRow, Snapshot, ValueRow, render, write_file

NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
LABEL = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
CREDS = "meta-data/iam/security-credentials/app-server"


def snapshot(**changes: object) -> Snapshot:
    counters = Counters()
    counters.add(counters.poll_failures, CREDS, 3)
    counters.add(counters.notices_seen, "spot-interruption", 2)
    counters.add(counters.notices_handled, "spot-interruption")
    counters.command_ended("on_change", "/etc/app.conf", "exit_nonzero")
    counters.command_ended("event", "spot-interruption", "exit_0")
    counters.add(counters.reloads, "refused")
    fields: Dict[str, object] = {
        "version": "1.2.3", "started": 1_800_000_000.0, "reload_refused": True,
        "values": [ValueRow("token", CREDS, 1_800_000_100.5, 1, 1_800_021_600.0),
                   ValueRow("name", "meta-data/tags/instance/Name", None, 0, None)],
        "outputs": [OutputRow("/etc/app.conf", 1_800_000_101.0, None, 1_800_000_130.0),
                    OutputRow("/etc/app/credentials", None, 1_800_021_600.0, None)],
        "events": ["spot-interruption"], "counters": counters}
    fields.update(changes)
    return Snapshot(**fields)  # type: ignore[arg-type]


def parsed(text: str) -> Dict[str, Tuple[str, str, List[Tuple[str, Dict[str, str], float]]]]:
    return {f.name: (f.type, f.documentation, [(s.name, s.labels, s.value) for s in f.samples])
            for f in text_string_to_metric_families(text)}


def test_every_family_has_help_a_type_and_conventional_names() -> None:
    families = parsed(render(snapshot()))
    assert len(families) == len(FAMILIES)
    for name, (kind, help_text) in FAMILIES.items():
        assert name.startswith("cc_imds_") and NAME.fullmatch(name)
        if kind == "counter":
            assert name.endswith("_total")
            family = families[name[: -len("_total")]]  # the parser names a counter's family without _total
        else:
            assert not name.endswith("_total")
            family = families[name]
        assert family[0] == kind and family[1] == help_text
        assert "_timestamp_seconds" in name or "time" not in name  # times are Unix seconds, so named
        for sample_name, labels, _ in family[2]:
            assert sample_name == name
            assert all(LABEL.fullmatch(label) and not label.startswith("__") for label in labels)


def test_the_samples_say_what_the_watcher_knows() -> None:
    families = parsed(render(snapshot()))
    assert families["cc_imds_build_info"][2] == [("cc_imds_build_info", {"version": "1.2.3"}, 1.0)]
    assert families["cc_imds_watcher_start_timestamp_seconds"][2] == [
        ("cc_imds_watcher_start_timestamp_seconds", {}, 1_800_000_000.0)]
    assert families["cc_imds_reloads"][2] == [("cc_imds_reloads_total", {"result": "adopted"}, 0.0),
                                              ("cc_imds_reloads_total", {"result": "refused"}, 1.0)]
    assert families["cc_imds_reload_refused"][2] == [("cc_imds_reload_refused", {}, 1.0)]
    token = {"value": "token", "path": CREDS}
    name = {"value": "name", "path": "meta-data/tags/instance/Name"}
    assert families["cc_imds_value_last_success_timestamp_seconds"][2] == [
        ("cc_imds_value_last_success_timestamp_seconds", token, 1_800_000_100.5)]  # never fetched: no sample
    assert families["cc_imds_value_poll_failures"][2] == [("cc_imds_value_poll_failures_total", token, 3.0),
                                                          ("cc_imds_value_poll_failures_total", name, 0.0)]
    assert families["cc_imds_value_consecutive_failures"][2] == [
        ("cc_imds_value_consecutive_failures", token, 1.0), ("cc_imds_value_consecutive_failures", name, 0.0)]
    assert families["cc_imds_value_expiration_timestamp_seconds"][2] == [
        ("cc_imds_value_expiration_timestamp_seconds", token, 1_800_021_600.0)]
    assert families["cc_imds_output_expiration_timestamp_seconds"][2] == [
        ("cc_imds_output_expiration_timestamp_seconds", {"output": "/etc/app/credentials"}, 1_800_021_600.0)]
    assert families["cc_imds_output_last_change_timestamp_seconds"][2] == [
        ("cc_imds_output_last_change_timestamp_seconds", {"output": "/etc/app.conf"}, 1_800_000_101.0)]
    assert families["cc_imds_on_change_due_timestamp_seconds"][2] == [
        ("cc_imds_on_change_due_timestamp_seconds", {"output": "/etc/app.conf"}, 1_800_000_130.0)]
    spot = {"event": "spot-interruption"}
    assert families["cc_imds_event_notices_seen"][2] == [("cc_imds_event_notices_seen_total", spot, 2.0)]
    assert families["cc_imds_event_notices_handled"][2] == [("cc_imds_event_notices_handled_total", spot, 1.0)]
    assert families["cc_imds_event_poll_failures"][2] == [("cc_imds_event_poll_failures_total", spot, 0.0)]
    assert families["cc_imds_command_exits"][2] == [
        ("cc_imds_command_exits_total", {"kind": "event", "name": "spot-interruption", "outcome": "exit_0"}, 1.0),
        ("cc_imds_command_exits_total", {"kind": "on_change", "name": "/etc/app.conf", "outcome": "exit_nonzero"},
         1.0)]


@pytest.mark.parametrize("path", ['/etc/a "quoted" name', "/etc/back\\slash", "/etc/new\nline", "/etc/ünï {}=,"])
def test_label_values_are_escaped_as_the_format_requires(path: str) -> None:
    text = render(snapshot(outputs=[OutputRow(path, 1.0, None, None)]))
    families = parsed(text)
    assert families["cc_imds_output_last_change_timestamp_seconds"][2] == [
        ("cc_imds_output_last_change_timestamp_seconds", {"output": path}, 1.0)]
    assert text.endswith("\n") and "\n\n" not in text  # one sample per line, nothing split by a label


def test_the_same_state_gives_the_same_text() -> None:
    assert render(snapshot()) == render(snapshot())


def test_the_metrics_file_gets_its_label_like_every_file_written(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """SELinux: the metrics file goes through the one atomic replace, with its path, so the
    policy's context for that path is set before the rename (files/atomic.py)."""
    seen: List[str] = []
    monkeypatch.setattr(atomic, "_label", lambda fd, path, root, labels: seen.append(path))
    target = tmp_path / "cc_imds.prom"
    write_file(str(target), b"cc_imds_reload_refused 0\n")
    assert seen == [str(target)]
    assert target.read_bytes() == b"cc_imds_reload_refused 0\n"
