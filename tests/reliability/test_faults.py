"""Faults and hostile input, end to end through `cc-imds apply`: each scenario ends in
exactly the right outputs, or in a clear error with existing files untouched."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import socket
import subprocess
import threading
from pathlib import Path
from typing import Any, Callable, Dict, List

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cc_imds.cli import main
from cc_imds.imds.tree import MetadataTree, load_tree
from tests.conftest import DEADLINE_SLACK, HUNG_AFTER, examples, needs_root
from tests.reliability.conftest import PROCESS_SLACK, Run, Scenario, declaration, digest

Record = Callable[..., None]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def figures(run: Run) -> Dict[str, Any]:
    return {"exit": run.code, "seconds": round(run.seconds, 2), "PUT": run.puts, "GET": run.gets,
            "retries": run.retries}


def expect_untouched(scenario: Scenario, good: Dict[str, str], run: Run, code: int, message: str) -> None:
    assert run.code == code, run.stderr
    assert message in run.stderr, run.stderr
    assert digest(scenario.out) == good  # byte-identical, same modes
    assert not list(scenario.out.rglob(".*cc-imds-*")), "a temp file was left behind"


def expect_correct(scenario: Scenario, good: Dict[str, str], run: Run) -> None:
    assert run.code == 0, run.stderr
    assert digest(scenario.out) == good


# -- waiting ------------------------------------------------------------------------------
@pytest.mark.slow
def test_late_start(scenario: Scenario, record: Record) -> None:
    good = scenario.good_outputs()
    shutil.rmtree(scenario.out)
    late = scenario.emulator(delay=5.0)
    run = scenario.apply(late, declaration(scenario.out, deadline=60))
    expect_correct(scenario, good, run)
    assert run.seconds >= 5.0 and run.retries >= 3
    record("late-start", "correct outputs", **figures(run))


def test_never_answers(scenario: Scenario, record: Record) -> None:
    good = scenario.good_outputs()
    run = scenario.apply(f"http://127.0.0.1:{free_port()}", declaration(scenario.out, deadline=2))
    expect_untouched(scenario, good, run, 3, "no usable answer within the 2s deadline (cannot connect")
    assert run.seconds < 2 + PROCESS_SLACK  # the deadline, plus interpreter start-up
    record("never-answers", "error, files untouched", **figures(run))


def test_black_hole(scenario: Scenario, record: Record) -> None:
    good = scenario.good_outputs()
    hole = socket.socket()
    hole.bind(("127.0.0.1", 0))
    hole.listen(64)  # connections complete in the backlog; nothing ever answers
    try:
        run = scenario.apply(f"http://127.0.0.1:{hole.getsockname()[1]}", declaration(scenario.out, deadline=2))
    finally:
        hole.close()
    expect_untouched(scenario, good, run, 3, "/latest/api/token: no usable answer within the 2s deadline")
    assert run.seconds < 2 + PROCESS_SLACK
    record("black-hole", "error, files untouched", **figures(run))


@pytest.mark.parametrize(("scenario_id", "status", "retry_after"),
                         [("burst-429", 429, None), ("burst-503-retry-after", 503, "1")])
def test_bursts(scenario: Scenario, record: Record, scenario_id: str, status: int, retry_after: Any) -> None:
    good = scenario.good_outputs()
    emulator = scenario.emulator()
    emulator.fail_next(status, count=4, retry_after=retry_after)
    run = scenario.apply(emulator)
    expect_correct(scenario, good, run)
    assert run.retries == 4
    if retry_after:
        assert run.seconds >= 4 * 1.0
    record(scenario_id, "correct outputs", **figures(run))


def test_revoked_mid_run(scenario: Scenario, record: Record) -> None:
    good = scenario.good_outputs()
    emulator = scenario.emulator()
    emulator.latency = 0.02  # keep requests in flight while the revocation lands
    emulator.revoke_after(3)
    run = scenario.apply(emulator, declaration(scenario.out, concurrency=2))
    expect_correct(scenario, good, run)
    assert run.puts == 2
    record("revoked-mid-run", "correct outputs", **figures(run))


def test_token_ttl_shorter_than_the_run(scenario: Scenario, record: Record) -> None:
    good = scenario.good_outputs()
    emulator = scenario.emulator()
    emulator.latency = 0.15  # nine GETs one after another: 1.5 s, past the 1 s TTL
    run = scenario.apply(emulator, declaration(scenario.out, token_ttl=1, concurrency=1))
    expect_correct(scenario, good, run)
    assert run.seconds > 1 and run.puts >= 2
    assert not [r for r in emulator.requests if r.status == 401]  # renewed before expiry, never after
    record("short-ttl", "correct outputs", **figures(run))


# -- failing fast --------------------------------------------------------------------------
def test_hop_limit(scenario: Scenario, record: Record) -> None:
    good = scenario.good_outputs()
    emulator = scenario.emulator()
    emulator.drop_put = True
    run = scenario.apply(emulator, declaration(scenario.out, timeout=0.5, deadline=20))
    expect_untouched(scenario, good, run, 3, "HttpPutResponseHopLimit")
    # One token request's timeout and one plain GET, not the 20 s deadline; plus start-up.
    assert run.seconds < 2 * 0.5 + DEADLINE_SLACK + PROCESS_SLACK
    record("hop-limit", "error naming the hop limit, files untouched", **figures(run))


def test_disabled(scenario: Scenario, record: Record) -> None:
    good = scenario.good_outputs()
    run = scenario.apply(scenario.emulator(mode="disabled"))
    expect_untouched(scenario, good, run, 3, "IMDS endpoint disabled, or request forbidden")
    assert run.puts == 1 and run.gets == 0
    record("disabled", "error at once, files untouched", **figures(run))


def test_v1_only(scenario: Scenario, record: Record) -> None:
    good = scenario.good_outputs()
    v1 = scenario.emulator(mode="v1-only")
    run = scenario.apply(v1)
    expect_untouched(scenario, good, run, 3, "Set `imdsv1: fallback` in the declaration to allow IMDSv1")
    assert run.gets == 0
    record("v1-only-default", "error, files untouched", **figures(run))
    shutil.rmtree(scenario.out)
    run = scenario.apply(v1, declaration(scenario.out, imdsv1="fallback"))
    expect_correct(scenario, good, run)
    assert {r.token for r in v1.requests if r.method == "GET"} == {"none"}
    assert "using IMDSv1 as `imdsv1: fallback` allows" in run.stderr
    record("v1-only-fallback", "correct outputs", **figures(run))


def test_missing_values_all_named(scenario: Scenario, record: Record) -> None:
    good = scenario.good_outputs()
    doc = declaration(scenario.out)
    doc["values"].update({"owner": "meta-data/tags/instance/Owner", "ipv6": "meta-data/ipv6"})
    doc["files"].append({"path": f"{scenario.out}/extra", "content": "{{ owner }} {{ ipv6 }}\n"})
    run = scenario.apply(scenario.emulator(), doc)
    expect_untouched(scenario, good, run, 3, "imds.values.owner: required value missing")
    assert "imds.values.ipv6: required value missing: /latest/meta-data/ipv6: not found (404)" in run.stderr
    record("missing-values", "one error naming both, files untouched", **figures(run))


def test_tags_disabled(scenario: Scenario, record: Record) -> None:
    good = scenario.good_outputs()
    run = scenario.apply(scenario.emulator(load_tree(tags_enabled=False)))
    expect_untouched(scenario, good, run, 3, "instance tags in metadata may be disabled (InstanceMetadataTags")
    record("tags-disabled", "error with the hint, files untouched", **figures(run))


# -- bodies ----------------------------------------------------------------------------------
def test_slow_body(scenario: Scenario, record: Record) -> None:
    good = scenario.good_outputs()
    emulator = scenario.emulator()
    emulator.slow_body = 0.05
    run = scenario.apply(emulator, declaration(scenario.out, timeout=0.3, deadline=2))
    expect_untouched(scenario, good, run, 3, "no usable answer within the 2s deadline")
    assert run.seconds < 2 + PROCESS_SLACK
    record("slow-body", "error within the deadline, files untouched", **figures(run))


def test_reset_mid_body(scenario: Scenario, record: Record) -> None:
    good = scenario.good_outputs()
    emulator = scenario.emulator()
    emulator.truncate_next(2)
    run = scenario.apply(emulator)
    expect_correct(scenario, good, run)
    assert run.retries == 2
    record("reset-mid-body", "correct outputs", **figures(run))


def with_leaf(path: str, body: bytes) -> MetadataTree:
    leaves = load_tree().leaves()
    leaves[path] = body
    return MetadataTree(leaves)


def test_oversized_body(scenario: Scenario, record: Record) -> None:
    good = scenario.good_outputs()
    emulator = scenario.emulator(with_leaf("meta-data/tags/instance/Huge", b"x" * (5 * 1024 * 1024)))
    run = scenario.apply(emulator)
    expect_untouched(scenario, good, run, 3, "/latest/meta-data/tags/instance/Huge: response of 5242880 bytes "
                                             "exceeds the 4194304-byte limit")
    record("oversized-body", "error naming the limit, files untouched", **figures(run))


def test_invalid_utf8(scenario: Scenario, record: Record) -> None:
    good = scenario.good_outputs()
    run = scenario.apply(scenario.emulator(with_leaf("meta-data/instance-id", b"i-\xff\xfe")))
    expect_untouched(scenario, good, run, 3, "/latest/meta-data/instance-id: not valid UTF-8 text (byte 2)")
    record("invalid-utf8", "error naming the path, files untouched", **figures(run))


def test_gzip_user_data(scenario: Scenario, record: Record) -> None:
    payload = gzip.compress(b"#cloud-config\nimds: {}\n" * 50)
    emulator = scenario.emulator(with_leaf("user-data", payload))
    run = scenario.cli("get", "user-data", "--endpoint", emulator.url, emulator=emulator)
    assert run.code == 0
    fetched = run_bytes("get", "user-data", "--endpoint", emulator.url)
    assert fetched == payload
    good = scenario.good_outputs()
    doc = declaration(scenario.out)
    doc["values"]["user_data"] = "user-data"
    doc["files"].append({"path": f"{scenario.out}/ud", "content": "{{ user_data }}"})
    failed = scenario.apply(emulator, doc)
    expect_untouched(scenario, good, failed, 1, "value 'user_data' is binary (not UTF-8 text, gzip perhaps)")
    record("gzip-user-data", "bytes intact; text rendering refused", **figures(failed))


def run_bytes(*args: str) -> bytes:
    from tests.conftest import run_cli

    return bytes(run_cli(*args).stdout)


# -- writing -----------------------------------------------------------------------------------
def test_concurrent_applies(scenario: Scenario, record: Record) -> None:
    good = scenario.good_outputs()
    shutil.rmtree(scenario.out)
    emulator = scenario.emulator()
    emulator.latency = 0.01
    runs: List[Run] = []
    threads = [threading.Thread(target=lambda: runs.append(scenario.apply(emulator))) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
        assert not thread.is_alive(), "an apply never ended"
    assert [r.code for r in runs] == [0, 0]
    assert digest(scenario.out) == good
    assert not list(scenario.out.rglob(".*cc-imds-*"))
    record("concurrent-applies", "both succeed, outputs consistent", exit=0,
           seconds=round(max(r.seconds for r in runs), 2), PUT=emulator.count("PUT"), GET=emulator.count("GET"),
           retries=sum(r.retries for r in runs))


def test_disk_full(scenario: Scenario, record: Record) -> None:
    needs_root("mounting a small tmpfs (tests/test_write.py simulates ENOSPC without it)")
    small = scenario.tmp / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "cc-imds-test", str(small)], check=True,
                   timeout=HUNG_AFTER)
    try:
        scenario.out = small / "out"
        good = scenario.good_outputs()
        doc = declaration(scenario.out)
        doc["values"]["big"] = "meta-data/tags/instance/Big"
        doc["files"].append({"path": f"{scenario.out}/big.conf", "content": "{{ big }}"})
        run = scenario.apply(scenario.emulator(with_leaf("meta-data/tags/instance/Big", b"b" * 100_000)), doc)
        expect_untouched(scenario, good, run, 4, "No space left on device; nothing was changed")
        assert sorted(p.name for p in scenario.out.iterdir()) == ["credentials", "instance.env", "instance.sh"]
        record("disk-full", "error, old files intact, no temp files", **figures(run))
    finally:
        subprocess.run(["umount", str(small)], check=True, timeout=HUNG_AFTER)


def test_symlinked_parent(scenario: Scenario, record: Record) -> None:
    needs_root("an attacker-owned symlink needs lchown")
    elsewhere = scenario.tmp / "elsewhere"
    elsewhere.mkdir()
    scenario.out.parent.mkdir(exist_ok=True)
    scenario.out.symlink_to(elsewhere)
    os.lchown(scenario.out, 65534, 65534)
    run = scenario.apply(scenario.emulator())
    assert run.code == 4 and f"{scenario.out}: refusing to follow a symlink owned by uid 65534" in run.stderr
    assert list(elsewhere.iterdir()) == []
    record("symlinked-parent", "refused, nothing written", **figures(run))


def test_planted_symlinks(scenario: Scenario, record: Record) -> None:
    good = scenario.good_outputs()
    victim = scenario.tmp / "victim"
    victim.write_text("precious")
    (scenario.out / "instance.sh").unlink()
    (scenario.out / "instance.sh").symlink_to(victim)
    (scenario.out / ".instance.env.cc-imds-000000000000").symlink_to(victim)
    run = scenario.apply(scenario.emulator())
    assert run.code == 0
    assert victim.read_text() == "precious"
    (scenario.out / ".instance.env.cc-imds-000000000000").unlink()
    assert digest(scenario.out) == good and not (scenario.out / "instance.sh").is_symlink()
    record("planted-symlinks", "replaced, never followed", **figures(run))


# -- hostile input ------------------------------------------------------------------------------
HOSTILE_TAGS = {
    "Cmd": "$(touch /tmp/cc-imds-pwned)",
    "Tick": "`touch /tmp/cc-imds-pwned`",
    "Quote": "it's \"quoted\" \\ back\\slash",
    "Lines": "line1\nline2\n",
    "Unicode": "ümlaut ☃ 日本語",
    "aws:cloudformation:stack-name": "web-stack",
    "Long": "L" * 10000,
    "Glob": "* ? [a-z] ~ ! # ;",
}


def test_hostile_values(scenario: Scenario, record: Record) -> None:
    leaves = load_tree().leaves()
    leaves = {k: v for k, v in leaves.items() if not k.startswith("meta-data/tags/")}
    leaves.update({f"meta-data/tags/instance/{k}": v.encode() for k, v in HOSTILE_TAGS.items()})
    emulator = scenario.emulator(MetadataTree(leaves))
    out = scenario.out
    doc = {"values": {"tags": "meta-data/tags/instance/"},
           "env": [{"path": f"{out}/tags.sh", "format": "shell", "expand": {"tags": "T_"}},
                   {"path": f"{out}/tags.json", "format": "json", "expand": {"tags": "T_"}}]}
    run = scenario.apply(emulator, doc)
    assert run.code == 0, run.stderr
    expected = {f"T_{k.replace(':', '_').replace('-', '_')}": v for k, v in HOSTILE_TAGS.items()}
    assert json.loads((out / "tags.json").read_text()) == expected
    for shell in ("bash", "dash"):
        script = f". {out}/tags.sh\n" + "".join(f'printf "%s\\0" "${name}"\n' for name in expected)
        result = subprocess.run([shell, "-c", script], capture_output=True, check=True, env={"PATH": "/usr/bin:/bin"},
                                timeout=HUNG_AFTER)
        assert result.stdout.decode().split("\0")[:-1] == list(expected.values())
    assert not Path("/tmp/cc-imds-pwned").exists()
    before = digest(out)
    refusals = {"systemd": "imds.env[0]: variable T_Lines contains a newline, which the systemd format cannot carry",
                "dotenv": "imds.env[0]: variable T_Lines contains a newline, which dotenv loaders do not read back"}
    for fmt, message in refusals.items():
        bad = {"values": {"tags": "meta-data/tags/instance/"},
               "env": [{"path": f"{out}/tags.{fmt}", "format": fmt, "expand": {"tags": "T_"}}]}
        refused = scenario.apply(emulator, bad)
        assert refused.code == 1
        assert message in refused.stderr
        assert digest(out) == before
    record("hostile-values", "exact in shell and json; refused by systemd and dotenv", **figures(run))


declarations = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8) | st.just("meta-data/instance-id"),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
        st.sampled_from(["values", "env", "files", "path", "format", "vars", "content", "x", "endpoint"]), inner,
        max_size=4),
    max_leaves=10,
)


_generated = {"documents": 0, "invalid": 0}


@settings(max_examples=examples(80), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(document=declarations)
def test_generated_declarations(tmp_path: Path, capsys: pytest.CaptureFixture, record: Record, document: Any) -> None:
    decl = tmp_path / "generated.yaml"
    decl.write_text("#cloud-config\n" + yaml.safe_dump({"imds": document}))
    root = tmp_path / "root"
    code = main(["apply", str(decl), "--root", str(root), "--no-conf-dir", "--endpoint", "http://127.0.0.1:9"])
    err = capsys.readouterr().err
    if code == 1:
        assert err and all(line.startswith(f"cc-imds: {decl}: imds") for line in err.splitlines()), err
        assert not root.exists() or list(root.rglob("*")) == []
    else:  # valid: with nothing to fetch it succeeds; else IMDS is not there. Nothing written either way.
        assert code in (0, 3), err
        assert not root.exists() or [p for p in root.rglob("*") if p.is_file()] == []
    _generated["documents"] += 1
    _generated["invalid"] += code == 1
    record("generated-declarations", "located errors, no traceback, nothing written",
           documents=_generated["documents"], invalid=_generated["invalid"])


def test_sandbox_escape(scenario: Scenario, record: Record) -> None:
    good = scenario.good_outputs()
    doc = declaration(scenario.out)
    doc["files"].append({"path": f"{scenario.out}/evil",
                         "content": "{{ instance_id.__class__.__mro__[1].__subclasses__() }}"})
    run = scenario.apply(scenario.emulator(), doc)
    expect_untouched(scenario, good, run, 1, "imds.files[1].content: refused by the template sandbox")
    record("sandbox-escape", "refused, files untouched", **figures(run))
