"""`credentials:` outputs: the declaration's rules, the exact bytes of each format, the role
picked, hostile or failed credential documents refused without showing a secret, modes, and
the watcher keeping them fresh. Real AWS clients reading them: tests/test_credentials_clients.py."""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path
from typing import Any, Callable, Dict, List

import pytest
import yaml

from cc_imds.declaration.build import SourceDocument, build_declaration
from cc_imds.errors import DeclarationError, RenderError, ResolveError
from cc_imds.formats import credentials as formats
from cc_imds.pipeline import RunOptions, apply, preview
from cc_imds.testing.emulator import Emulator
from cc_imds.watch.status import EXPIRED, assess
from tests.conftest import wait_for
from tests.watch_harness import CREDS, Watch

ROLES = "meta-data/iam/security-credentials/"
DOCUMENT = {
    "Code": "Success",
    "LastUpdated": "2026-11-28T09:00:00Z",
    "Type": "AWS-HMAC",
    "AccessKeyId": "ASIAEXAMPLEACCESSKEY",
    "SecretAccessKey": "demoSecretAccessKey/NotARealSecret+0123456789",
    "Token": "demoSessionToken//NotARealToken/ZXhhbXBsZQ==",
    "Expiration": "2026-11-28T15:00:00Z",
}
SECRETS = (DOCUMENT["SecretAccessKey"], DOCUMENT["Token"], DOCUMENT["AccessKeyId"])


def declare(*outputs: Dict[str, Any], **extra: Any) -> List[SourceDocument]:
    return [SourceDocument("test.yaml", "", {"credentials": list(outputs), **extra})]


def problems(*outputs: Dict[str, Any]) -> List[str]:
    with pytest.raises(DeclarationError) as caught:
        build_declaration(declare(*outputs))
    return caught.value.problems


# -- the declaration -----------------------------------------------------------------------------
def test_a_credential_output_reads_a_hidden_sensitive_value_of_its_role() -> None:
    declaration = build_declaration(declare({"path": "/run/aws/credentials.json", "format": "process"},
                                            {"path": "/run/aws/credentials", "format": "credentials-file",
                                             "role": "app"}))
    only, named = declaration.credentials
    assert declaration.values[only.value_name].path == ROLES
    assert declaration.values[named.value_name].path == ROLES + "app"
    assert all(declaration.values[o.value_name].sensitive for o in declaration.credentials)
    assert named.profile == "default"
    assert [o.path for o in declaration.outputs] == ["/run/aws/credentials.json", "/run/aws/credentials"]


@pytest.mark.parametrize("output, expected", [
    ({"path": "/a", "format": "ini"}, "credentials[0].format: 'ini' is not one of 'process', 'credentials-file'"),
    ({"path": "/a", "format": "process", "role": "a/b"}, "credentials[0].role: 'a/b' must be an IAM role name"),
    ({"path": "/a", "format": "credentials-file", "profile": "x]\n[y"},
     "credentials[0].profile: 'x]\\n[y' must be 1 to 64"),
    ({"path": "/a", "format": "process", "profile": "p"}, "credentials[0].profile: only the `credentials-file` format"),
    ({"path": "/a", "format": "process", "permissions": "0644"}, "credentials[0].permissions: 0644 lets every user"),
    ({"path": "/a", "format": "process", "permissions": "0640"}, "0640 lets a group read the role's keys, but "
                                                                  "`owner` names no group"),
    ({"path": "/a", "format": "process", "owner": "app", "permissions": "0640"}, "`owner` names no group"),
    ({"path": "relative", "format": "process"}, "credentials[0].path: 'relative' must be an absolute path"),
    ({"path": "/a", "format": "process", "group": "x"}, "unknown key(s) 'group'"),
])
def test_what_a_credential_output_may_not_be(output: Dict[str, Any], expected: str) -> None:
    found = problems(output)
    assert any(expected in p for p in found), found


def test_two_outputs_may_not_write_one_path() -> None:
    found = problems({"path": "/a", "format": "process"}, {"path": "/a", "format": "credentials-file"})
    assert any("/a is also written by test.yaml: credentials[0]" in p for p in found), found


def test_a_group_may_read_when_the_owner_names_it() -> None:
    (output,) = build_declaration(declare({"path": "/a", "format": "credentials-file", "owner": "root:app",
                                           "permissions": "0640"})).credentials
    assert output.permissions == 0o640


# -- the exact bytes -----------------------------------------------------------------------------
def test_the_process_document_is_what_credential_process_prints() -> None:
    body = formats.render("process", json.dumps(DOCUMENT), "app", "default")
    assert body == (
        b'{\n'
        b'  "Version": 1,\n'
        b'  "AccessKeyId": "ASIAEXAMPLEACCESSKEY",\n'
        b'  "SecretAccessKey": "demoSecretAccessKey/NotARealSecret+0123456789",\n'
        b'  "SessionToken": "demoSessionToken//NotARealToken/ZXhhbXBsZQ==",\n'
        b'  "Expiration": "2026-11-28T15:00:00Z"\n'
        b'}\n'
    )


def test_the_shared_file_is_one_profile() -> None:
    body = formats.render("credentials-file", json.dumps(DOCUMENT), "app", "ci-agent")
    assert body == (
        b"[ci-agent]\n"
        b"aws_access_key_id = ASIAEXAMPLEACCESSKEY\n"
        b"aws_secret_access_key = demoSecretAccessKey/NotARealSecret+0123456789\n"
        b"aws_session_token = demoSessionToken//NotARealToken/ZXhhbXBsZQ==\n"
    )


def test_fractions_of_a_second_are_dropped_from_the_expiration() -> None:
    document = dict(DOCUMENT, Expiration="2026-11-28T15:00:00.999Z")
    assert json.loads(formats.render("process", json.dumps(document), "app", "default"))["Expiration"] == \
        "2026-11-28T15:00:00Z"


# -- the role ------------------------------------------------------------------------------------
def test_the_only_role_is_taken_when_none_is_named() -> None:
    body = formats.render("credentials-file", {"app-server": json.dumps(DOCUMENT)}, None, "default")
    assert b"ASIAEXAMPLEACCESSKEY" in body


def test_several_roles_need_a_name() -> None:
    with pytest.raises(formats.CredentialProblem, match=r"lists 2 roles .* \(app, web\): name the one to use"):
        formats.render("process", {"web": json.dumps(DOCUMENT), "app": json.dumps(DOCUMENT)}, None, "default")


def test_no_role_listed_is_said_plainly() -> None:
    with pytest.raises(formats.CredentialProblem, match="lists no role .* no instance profile"):
        formats.render("process", {}, None, "default")


def test_an_instance_without_a_role_fails_apply_saying_so(emulator: Emulator, tmp_path: Path) -> None:
    emulator.delete_value("meta-data/iam/")
    with pytest.raises(ResolveError) as caught:
        apply(declare({"path": "/creds.json", "format": "process"}),
              RunOptions(endpoint=emulator.url, root=str(tmp_path)))
    assert "test.yaml: credentials[0]" in str(caught.value)
    assert "no IAM role" in str(caught.value)
    assert list(tmp_path.iterdir()) == []


def test_a_named_role_the_instance_does_not_have(emulator: Emulator, tmp_path: Path) -> None:
    with pytest.raises(ResolveError, match="no role named other"):
        apply(declare({"path": "/creds.json", "format": "process", "role": "other"}),
              RunOptions(endpoint=emulator.url, root=str(tmp_path)))


# -- untrusted documents -------------------------------------------------------------------------
@pytest.mark.parametrize("change, expected", [
    ({"Code": "AssumeRoleUnauthorizedAccess"}, "has a Code other than Success"),
    ({"Code": None}, "has no Code"),
    ({"AccessKeyId": None}, "has no AccessKeyId string"),
    ({"AccessKeyId": "ASIA\nEXAMPLEACCESSKEY"}, "AccessKeyId is not 16 to 128 letters and digits"),
    ({"SecretAccessKey": DOCUMENT["SecretAccessKey"] + "\n[evil]"}, "SecretAccessKey is not 16 to 256 base64"),
    ({"Token": DOCUMENT["Token"] + '", "Version": 2'}, "Token is not 16 to 16384 base64"),
    ({"Token": 12}, "has no Token string"),
    ({"Expiration": "tomorrow"}, "Expiration is not a UTC time"),
    ({"Expiration": "2026-02-30T10:00:00Z"}, "Expiration is not a valid date"),
    ({"Expiration": "2026-11-28T15:00:00+02:00"}, "Expiration is not a UTC time"),
])
def test_a_bad_document_is_refused_without_showing_a_secret(
        change: Dict[str, Any], expected: str, emulator: Emulator, tmp_path: Path) -> None:
    document = {k: v for k, v in dict(DOCUMENT, **change).items() if v is not None}
    emulator.set_value(CREDS, document)
    with pytest.raises(RenderError) as caught:
        apply(declare({"path": "/creds.json", "format": "process"}),
              RunOptions(endpoint=emulator.url, root=str(tmp_path)))
    message = str(caught.value)
    assert expected in message
    assert "test.yaml: credentials[0]" in message
    assert not [s for s in SECRETS if s in message]
    assert list(tmp_path.iterdir()) == []


def test_a_document_that_is_not_json_is_refused() -> None:
    with pytest.raises(formats.CredentialProblem, match="is not a JSON document"):
        formats.render("process", "not json", "app", "default")


def test_nothing_is_written_when_one_credential_output_fails(emulator: Emulator, tmp_path: Path) -> None:
    emulator.set_value(CREDS, dict(DOCUMENT, Code="Failure"))
    with pytest.raises(RenderError):
        apply(declare({"path": "/creds.json", "format": "process"},
                      values={"iid": "meta-data/instance-id"},
                      env=[{"path": "/app.env", "format": "systemd", "vars": {"IID": "iid"}}]),
              RunOptions(endpoint=emulator.url, root=str(tmp_path)))
    assert list(tmp_path.iterdir()) == []


# -- writing, previews ---------------------------------------------------------------------------
def test_apply_writes_both_formats_with_mode_0600(emulator: Emulator, tmp_path: Path) -> None:
    emulator.rotate_credentials(expires_in=3600)
    served = json.loads(emulator.tree.lookup(CREDS) or b"")
    changes = apply(declare({"path": "/run/aws/credentials.json", "format": "process"},
                            {"path": "/run/aws/credentials", "format": "credentials-file", "role": "app-server"}),
                    RunOptions(endpoint=emulator.url, root=str(tmp_path)))
    assert [(c.action, c.mode, c.sensitive) for c in changes] == [("created", 0o600, True)] * 2
    process = json.loads((tmp_path / "run/aws/credentials.json").read_text())
    assert process == {"Version": 1, "AccessKeyId": served["AccessKeyId"],
                       "SecretAccessKey": served["SecretAccessKey"], "SessionToken": served["Token"],
                       "Expiration": served["Expiration"]}
    shared = (tmp_path / "run/aws/credentials").read_text()
    assert f"aws_session_token = {served['Token']}\n" in shared
    for name in ("credentials.json", "credentials"):
        assert (tmp_path / "run/aws" / name).stat().st_mode & 0o777 == 0o600
    # One request per path: the listing and the role's document, fetched once for both outputs.
    assert emulator.count("GET", path=f"/latest/{CREDS}") == 1


def test_a_named_group_gets_group_read(emulator: Emulator, tmp_path: Path) -> None:
    group = os.getgid()
    apply(declare({"path": "/creds", "format": "credentials-file", "owner": f"{os.getuid()}:{group}",
                   "permissions": "0640"}),
          RunOptions(endpoint=emulator.url, root=str(tmp_path)))
    info = (tmp_path / "creds").stat()
    assert (info.st_mode & 0o777, info.st_gid) == (0o640, group)


def test_plan_shows_no_key(emulator: Emulator, tmp_path: Path) -> None:
    shown = preview(declare({"path": "/creds.json", "format": "process"},
                            {"path": "/creds", "format": "credentials-file"}),
                    RunOptions(endpoint=emulator.url, root=str(tmp_path)))
    text = "".join(o.content.decode() for o in shown)
    assert '"AccessKeyId": "<redacted>"' in text and "aws_session_token = <redacted>" in text
    assert not [s for s in SECRETS if s in text]
    assert list(tmp_path.iterdir()) == []


def test_a_redacted_credentials_repr_holds_no_key() -> None:
    credentials = formats.parse_document("app", json.dumps(DOCUMENT))
    assert not [s for s in SECRETS if s in repr(credentials)]


# -- the watcher and status ----------------------------------------------------------------------
def test_the_watcher_rewrites_both_formats_before_the_old_keys_expire(
        watches: Callable[..., Watch], emulator: Emulator, tmp_path: Path) -> None:
    out = tmp_path / "out"
    emulator.rotate_credentials(expires_in=24)
    old_expiration = time.time() + 24

    def key_in_process_file() -> Any:
        path = out / "credentials.json"
        return json.loads(path.read_text())["AccessKeyId"] if path.exists() else None

    def served() -> str:
        return str(json.loads(emulator.tree.lookup(CREDS) or b"{}")["AccessKeyId"])

    first = served()
    declaration = {"deadline": 2, "credentials": [
        {"path": f"{out}/credentials.json", "format": "process"},
        {"path": f"{out}/credentials", "format": "credentials-file", "role": "app-server",
         "on_change": ["sh", "-c", f"echo restart >> {tmp_path}/restarts"]}]}
    watch = watches(tmp_path, emulator, declaration).start()
    wait_for(lambda: key_in_process_file() == first, what="the first credentials")
    time.sleep(max(0.0, old_expiration - 12 - time.time()))
    emulator.rotate_credentials(expires_in=3600)
    second = served()
    wait_for(lambda: key_in_process_file() == second, timeout=15, what="the rotated credentials")
    wait_for(lambda: f"aws_access_key_id = {second}\n" in (out / "credentials").read_text(), timeout=15,
             what="the rotated shared file")
    assert time.time() < old_expiration
    wait_for(lambda: (tmp_path / "restarts").exists() and (tmp_path / "restarts").read_text() == "restart\n" * 2,
             what="a restart for each write of the shared file")
    code, status = watch.status()
    assert code == 0, status
    record = status["status"]["outputs"][f"{out}/credentials.json"]
    assert record["format"] == "process" and record["role"] == "app-server"
    assert re.match(r"^[^: ]+:[^: ]+ 0600$", record["holder"]), record["holder"]
    assert record["last_refresh"] is not None and record["expires"] is not None
    text = watch.cli("status").stdout.decode()
    assert f"credentials {out}/credentials.json: role app-server, format process, held by " in text
    assert "keys fetched " in text
    assert watch.stop() == 0  # and no secret in its log or status (Watch.check_no_leaks)


def test_a_bad_document_after_boot_keeps_the_last_good_file(
        watches: Callable[..., Watch], emulator: Emulator, tmp_path: Path) -> None:
    out = tmp_path / "out"
    emulator.rotate_credentials(expires_in=8)
    good = json.loads(emulator.tree.lookup(CREDS) or b"")
    watch = watches(tmp_path, emulator, {"deadline": 2, "credentials": [
        {"path": f"{out}/credentials.json", "format": "process"}]}).start()
    wait_for(lambda: (out / "credentials.json").exists(), what="the first credentials")
    written = (out / "credentials.json").read_bytes()
    emulator.set_value(CREDS, dict(good, Code="Failure", AccessKeyId="ASIAOTHERACCESSKEY00"))
    wait_for(lambda: watch.status()[0] == 4, timeout=20, what="the refused document in status")
    code, status = watch.status()
    record = status["status"]["outputs"][f"{out}/credentials.json"]
    assert "has a Code other than Success" in record["last_error"], record
    assert (out / "credentials.json").read_bytes() == written
    assert watch.stop() == 0  # and neither the old nor the refused keys in its log or status


def test_a_credential_output_needs_the_watcher() -> None:
    from cc_imds.watch.schedule import plan

    watch = plan(build_declaration(declare({"path": "/run/aws/credentials.json", "format": "process"})))
    assert not watch.idle
    assert watch.outputs == {"/run/aws/credentials.json"}
    (group,) = watch.groups
    assert (group.path, group.credential) == (ROLES, True)


def test_status_exit_6_when_a_credential_output_expired() -> None:
    now = time.time()
    document = {"format": 1, "watcher": {"pid": os.getpid(), "started": "2026-01-01T00:00:00Z"},
                "values": {}, "events": {},
                "outputs": {"/run/aws/credentials.json": {
                    "uses": ["iam-role:*"], "expires": "2026-01-01T00:00:00Z", "format": "process",
                    "role": "app", "holder": "root:root 0600", "last_refresh": "2025-12-31T18:00:00Z"}}}
    health = assess(document, needed=True, now=now, alive=lambda pid: True)
    assert health.code == EXPIRED
    assert "/run/aws/credentials.json holds credentials that expired" in health.problems[0][1]


def test_the_examples_in_the_docs_page_validate() -> None:
    from tests.conftest import REPO

    page = (REPO / "docs/credentials.md").read_text()
    blocks = [b.split("```", 1)[0] for b in page.split("```yaml\n")[1:]]
    assert len(blocks) >= 3
    for block in blocks:
        data = yaml.safe_load(block)
        document = data["imds"] if "imds" in data else data
        build_declaration([SourceDocument("docs/credentials.md", "", document)])


def test_systemd_accepts_the_docs_page_service(tmp_path: Path) -> None:
    """The LoadCredential= recipe's unit, as the page gives it, is one systemd loads."""
    import shutil
    import subprocess

    from tests.conftest import REPO, require

    require(shutil.which("systemd-analyze") is not None, "systemd-analyze is missing (install systemd)")
    page = (REPO / "docs/credentials.md").read_text()
    (block,) = [b.split("```", 1)[0] for b in page.split("```ini\n")[1:] if "LoadCredential=" in b]
    marker, unit = block.split("\n", 1)  # the docs' mark: a unit, not a command the docs tests run
    assert marker.startswith("# illustrative: ") and unit.startswith("# /etc/systemd/system/myapp.service\n")
    root = tmp_path / "root"
    shutil.copytree("/usr/lib/systemd/system", root / "usr/lib/systemd/system", symlinks=True)
    (root / "etc/systemd/system").mkdir(parents=True)
    (root / "etc/systemd/system/myapp.service").write_text(unit)
    (root / "usr/bin").mkdir(parents=True, exist_ok=True)
    (root / "usr/bin/myapp").write_text("#!/bin/sh\n")
    (root / "usr/bin/myapp").chmod(0o755)
    result = subprocess.run(["systemd-analyze", "verify", f"--root={root}", "--man=no",
                             "/etc/systemd/system/myapp.service"], capture_output=True, text=True, timeout=120)
    assert (result.returncode, result.stdout + result.stderr) == (0, "")
