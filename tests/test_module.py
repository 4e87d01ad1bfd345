"""The cloud-init entry point, under a fake `cloud` object (real cloud-init: tests/e2e)."""

from __future__ import annotations

import inspect
import json
import logging
import subprocess
import sys
import traceback
from pathlib import Path
from typing import Any, Callable, Dict, List

import pytest

import cc_imds
from cc_imds.errors import CcImdsError, DeclarationError, ImdsError, RenderError
from cc_imds.testing.emulator import Emulator
from tests.conftest import HUNG_AFTER, PACKAGE


class FakeCloud:
    """What handle may touch of cloud-init's Cloud object: nothing, today."""

    datasource = None


def declaration(emulator: Emulator, root: Path) -> Dict[str, Any]:
    return {
        "endpoint": emulator.url,
        "values": {"iid": "meta-data/instance-id", "key": {"path": "meta-data/iam/security-credentials/app-server",
                                                            "key": "SecretAccessKey"}},
        "env": [{"path": f"{root}/instance.env", "format": "systemd", "vars": {"INSTANCE_ID": "iid"}}],
        "files": [{"path": f"{root}/creds", "content": "{{ key }}\n"}],
    }


def test_meta_follows_the_module_contract() -> None:
    assert cc_imds.meta["frequency"] == "always"
    assert cc_imds.meta["distros"] == ["all"]
    assert "activate_by_schema_keys" not in cc_imds.meta  # declarations may come from files too
    assert not hasattr(cc_imds, "schema")  # cloud-init raises ValueError on a `schema` attribute
    parameters = inspect.signature(cc_imds.handle).parameters.values()
    assert [p.kind for p in parameters] == [inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD]


@pytest.mark.parametrize("style", ["positional-22.x", "keywords-23.2+"])
def test_handle_writes_outputs(emulator: Emulator, tmp_path: Path, style: str,
                               monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    cfg = {"imds": declaration(emulator, tmp_path)}
    caplog.set_level(logging.DEBUG)
    if style == "positional-22.x":
        cc_imds.handle("imds", cfg, FakeCloud(), logging.getLogger("cloudinit"), [])
    else:
        cc_imds.handle(name="imds", cfg=cfg, cloud=FakeCloud(), args=[])
    assert (tmp_path / "instance.env").read_text().endswith("INSTANCE_ID='i-0a1b2c3d4e5f60789'\n")
    assert (tmp_path / "creds").stat().st_mode & 0o777 == 0o600
    assert "imds: 2 file(s) written, 0 unchanged" in caplog.text
    secrets = ["demoSecretAccessKey", *emulator.issued_tokens()]
    assert not [s for s in secrets if s in caplog.text]


def test_handle_skips_without_a_declaration(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    cc_imds.handle("imds", {"runcmd": ["true"]}, FakeCloud(), logging.getLogger(), [])
    assert "Skipping module imds: no `imds` key" in caplog.text


def test_handle_raises_a_clear_error_and_logs_each_problem(caplog: pytest.LogCaptureFixture) -> None:
    with pytest.raises(DeclarationError):
        cc_imds.handle(name="imds", cfg={"imds": {"values": {"x": "/latest/meta-data/x"}, "tokn_ttl": 5}},
                       cloud=FakeCloud(), args=[])
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert errors == [
        "imds: cloud-config: imds: unknown key(s) 'tokn_ttl' (did you mean 'token_ttl'?); allowed: concurrency, "
        "credentials, deadline, endpoint, env, events, files, imdsv1, metrics, timeout, token_ttl, values",
        "imds: cloud-config: imds.values.x: '/latest/meta-data/x' must be an IMDS path such as "
        "meta-data/instance-id, dynamic/instance-identity/document or user-data, without a leading / or latest/",
    ]


def test_imds_failure_names_the_path_and_writes_nothing(make_emulator: Callable[..., Emulator], tmp_path: Path) -> None:
    emulator = make_emulator(mode="disabled")
    with pytest.raises(ImdsError, match=r"/latest/api/token: IMDS endpoint disabled"):
        cc_imds.handle(name="imds", cfg={"imds": declaration(emulator, tmp_path)}, cloud=FakeCloud(), args=[])
    assert list(tmp_path.iterdir()) == []


def test_dropins_alone_activate_the_module(emulator: Emulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    conf = tmp_path / "conf.d"
    conf.mkdir()
    import yaml

    (conf / "50-app.yaml").write_text(yaml.safe_dump(declaration(emulator, tmp_path / "out")))
    monkeypatch.setenv("CC_IMDS_CONF_DIR", str(conf))
    cc_imds.handle(name="imds", cfg={}, cloud=FakeCloud(), args=[])
    assert (tmp_path / "out/instance.env").exists()


def test_import_uses_only_the_standard_library() -> None:
    code = (
        "import sys; before = set(sys.modules); import cc_imds; "
        "new = {m.split('.')[0] for m in set(sys.modules) - before}; "
        "print(sorted(new & {'yaml', 'jsonschema', 'jinja2', 'markupsafe', 'cloudinit'}))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=PACKAGE.parent,
                            check=True, timeout=HUNG_AFTER)
    assert result.stdout.strip() == "[]"


# -- no sensitive value in what handle logs or raises -------------------------------------------
CREDENTIALS_PATH = "meta-data/iam/security-credentials/app-server"


def forms(secret: str) -> List[str]:
    """How a value shows in a message: as is, repr-escaped, ASCII-escaped, JSON-escaped."""
    return [secret, repr(secret)[1:-1], ascii(secret)[1:-1], json.dumps(secret)[1:-1],
            json.dumps(secret, ensure_ascii=False)[1:-1]]


def leaks(text: str, secrets: List[str], window: int = 0) -> List[str]:
    """Secrets shown in `text` in any form, or (with `window`) any stretch of that many characters."""
    pieces = text.replace("<computed>", "<redacted>").split("<redacted>")
    parts = [secret[i : i + window] for secret in secrets for i in range(len(secret) - window + 1)] if window else []
    return [s[:8] for s in secrets + parts for form in forms(s) for piece in pieces if form and form in piece]


def what_cloud_init_logs(caplog: pytest.LogCaptureFixture, caught: BaseException) -> str:
    """Every record, and the failure as cloud-init logs it: message and traceback."""
    failure = "".join(traceback.format_exception(type(caught), caught, caught.__traceback__))
    return caplog.text + "\n".join(r.getMessage() for r in caplog.records) + failure


@pytest.mark.parametrize("source", [
    "{{ {}[creds] }}",  # the whole credentials JSON as a key
    "{{ tags[creds] }}",
    "{{ tags|attr(key) }}",  # the secret key as an attribute name
    "{{ {}[key[2:30]] }}",  # a slice of it
    "{{ ('{' ~ token ~ '}').format() }}",  # a Python exception quoting it
    "{{ {}[pw] }}",  # a sensitive default
])
def test_handle_never_logs_a_sensitive_value(emulator: Emulator, tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                             source: str) -> None:
    doc = {"endpoint": emulator.url,
           "values": {"creds": CREDENTIALS_PATH, "tags": "meta-data/tags/instance/",
                      "key": {"path": CREDENTIALS_PATH, "key": "SecretAccessKey"},
                      "token": {"path": CREDENTIALS_PATH, "key": "Token"},
                      "pw": {"path": "meta-data/tags/instance/Password", "default": "correct horse",
                             "sensitive": True}},
           "files": [{"path": f"{tmp_path}/out", "content": source}]}
    caplog.set_level(logging.DEBUG)
    with pytest.raises(RenderError) as caught:
        cc_imds.handle(name="imds", cfg={"imds": doc}, cloud=FakeCloud(), args=[])
    credentials = json.loads(emulator.tree.lookup(CREDENTIALS_PATH) or b"")
    secrets = [json.dumps(credentials, indent=2), *credentials.values(), "correct horse", *emulator.issued_tokens()]
    logged = what_cloud_init_logs(caplog, caught.value)
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and errors[0].startswith("imds: cloud-config: imds.files[0].content: template ")
    assert leaks(logged, secrets[:1]) == []
    assert leaks(logged, [s for s in secrets[1:] if s not in ("Success", "AWS-HMAC")], window=12) == []
    assert list(tmp_path.iterdir()) == []


def test_the_scrubbed_error_keeps_its_type_and_exit_code(emulator: Emulator, tmp_path: Path) -> None:
    doc = {"endpoint": emulator.url, "values": {"key": {"path": CREDENTIALS_PATH, "key": "SecretAccessKey"}},
           "files": [{"path": f"{tmp_path}/out", "content": "{{ {}[key] }}"}]}
    with pytest.raises(CcImdsError) as caught:
        cc_imds.handle(name="imds", cfg={"imds": doc}, cloud=FakeCloud(), args=[])
    assert type(caught.value) is RenderError and caught.value.exit_code == 1
    assert caught.value.problems == [
        "cloud-config: imds.files[0].content: template error at line 1: 'dict object' has no attribute <computed>"
    ]
    assert caught.value.__context__ is None and caught.value.__cause__ is None
