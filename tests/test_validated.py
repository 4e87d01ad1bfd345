"""Remembered validations (cc_imds.declaration.cache): a hit gives exactly what validating again gives,
any change in the text is validated afresh, what fails is never remembered, and a record that
is not as trusted as the declarations is ignored."""

from __future__ import annotations

import datetime
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any, List

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cc_imds.declaration import cache as validated
from cc_imds.declaration.build import Declaration, build_declaration, documents_from_dir, documents_from_file
from cc_imds.errors import DeclarationError
from cc_imds.testing.emulator import Emulator
from tests.conftest import EXAMPLES, HUNG_AFTER, REPO
from tests.test_imports import imported

VALID = """#cloud-config
imds:
  values:
    instance_id: meta-data/instance-id
    region: {path: dynamic/instance-identity/document, key: region}
  env:
    - path: /etc/app.env
      format: shell
      vars: {INSTANCE_ID: instance_id, AWS_REGION: region}
  files:
    - path: /etc/app.conf
      content: "region = {{ region }}\\n"
"""
# Valid YAML, invalid declaration: a relative output path.
INVALID = VALID.replace("path: /etc/app.env", "path: etc/app.env")
NOBODY = 65534


def cache() -> Path:
    return Path(os.environ[validated.CACHE_ENV])


def build(path: Path) -> Declaration:
    return build_declaration(documents_from_file(path), remember=True)


@pytest.mark.parametrize("example", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_a_hit_gives_the_same_declaration(example: Path, tmp_path: Path) -> None:
    copy = tmp_path / example.name
    copy.write_bytes(example.read_bytes())
    first = build(copy)
    docs = documents_from_file(copy)
    assert [d.validated for d in docs] == [True]
    assert build_declaration(docs) == first
    assert len(list(cache().iterdir())) == 1


def test_apply_remembers_and_validate_plan_only_read(tmp_path: Path, emulator: Emulator) -> None:
    decl = tmp_path / "decl.yaml"
    decl.write_text(VALID.replace("/etc/app", str(tmp_path / "out")))
    for command in (["validate", str(decl)], ["plan", str(decl), "--no-conf-dir", "--endpoint", emulator.url]):
        found = imported(tmp_path, *command)
        assert found["code"] == 0 and {"yaml", "jsonschema"} <= set(found["third_party"])  # type: ignore[call-overload]
        assert list(cache().iterdir()) == []  # a check leaves no trace
    applied = imported(tmp_path, "apply", str(decl), "--no-conf-dir", "--endpoint", emulator.url)
    assert applied["code"] == 0 and "jsonschema" in applied["third_party"]  # type: ignore[operator]
    assert len(list(cache().iterdir())) == 1
    for command in (["validate", str(decl)], ["apply", str(decl), "--no-conf-dir", "--endpoint", emulator.url]):
        again = imported(tmp_path, *command)
        assert (again["code"], again["third_party"]) == (0, []), command


def test_invalid_text_is_never_remembered(tmp_path: Path) -> None:
    decl = tmp_path / "decl.yaml"
    decl.write_text(INVALID)
    for _ in range(2):
        with pytest.raises(DeclarationError, match=r"imds.env\[0\].path: 'etc/app.env' must be an absolute path"):
            build(decl)
    assert list(cache().iterdir()) == []


def test_any_change_is_validated_afresh(tmp_path: Path) -> None:
    decl = tmp_path / "decl.yaml"
    decl.write_text(VALID)
    build(decl)
    decl.write_text(INVALID)
    with pytest.raises(DeclarationError, match="must be an absolute path"):
        build(decl)
    decl.write_text(VALID + " ")  # one byte more: a different text, parsed and checked again
    assert [d.validated for d in documents_from_file(decl)] == [False]


def test_checks_across_files_run_on_every_hit(tmp_path: Path) -> None:
    conf_d = tmp_path / "conf.d"
    conf_d.mkdir()
    for name, variable in (("10-a.yaml", "region"), ("20-b.yaml", "instance_id")):
        (conf_d / name).write_text(f"values:\n  region: meta-data/placement/region\n  instance_id: "
                                   f"meta-data/instance-id\nenv:\n  - {{path: /etc/{name}.env, format: shell, "
                                   f"vars: {{X: {variable}}}}}\n")
        build(conf_d / name)  # each is valid alone, and remembered
    docs = documents_from_dir(conf_d)
    assert [d.validated for d in docs] == [True, True]
    with pytest.raises(DeclarationError, match="X means 'region' at"):
        build_declaration(docs, remember=True)


def plant(text: str, documents: List[Any], *, owner: int = 0, mode: int = 0o600) -> Path:
    """An entry saying `documents` are what validating `text` gave."""
    entry = cache() / validated.key(text)
    entry.write_text(json.dumps([["imds", d] for d in documents]))
    os.chown(entry, owner, -1)
    entry.chmod(mode)
    return entry


def test_a_trusted_entry_is_believed(tmp_path: Path) -> None:
    """The control for the next test: what the cache holds is used, so trust is what guards it."""
    decl = tmp_path / "decl.yaml"
    decl.write_text(INVALID)
    plant(INVALID, [{"values": {"id": "meta-data/instance-id"}}])
    assert list(build(decl).values) == ["id"]


@pytest.mark.parametrize("how", ["other owner", "group-writable", "world-writable", "symlink", "directory mode",
                                 "not JSON", "wrong shape"])
def test_an_untrusted_entry_is_ignored(tmp_path: Path, how: str) -> None:
    decl = tmp_path / "decl.yaml"
    decl.write_text(INVALID)
    forged = [{"values": {"id": "meta-data/instance-id"}}]
    if how == "other owner":
        plant(INVALID, forged, owner=NOBODY)
    elif how == "group-writable":
        plant(INVALID, forged, mode=0o620)
    elif how == "world-writable":
        plant(INVALID, forged, mode=0o602)
    elif how == "symlink":
        target = plant(INVALID, forged)
        moved = tmp_path / "elsewhere"
        target.rename(moved)
        target.symlink_to(moved)
    elif how == "directory mode":
        plant(INVALID, forged)
        cache().chmod(0o777)
    elif how == "not JSON":
        plant(INVALID, forged).write_text("{")
    else:
        plant(INVALID, forged).write_text(json.dumps({"imds": forged}))
    with pytest.raises(DeclarationError, match="must be an absolute path"):
        build(decl)


def test_without_a_trusted_place_nothing_is_remembered(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """As root the record lives in RUN_DIR, which must be root's alone."""
    from cc_imds.files import lock

    assert validated.RUN_DIR == lock.RUN_DIR
    monkeypatch.delenv(validated.CACHE_ENV)
    run_dir = tmp_path / "run-cc-imds"
    run_dir.mkdir()
    os.chown(run_dir, NOBODY, -1)
    monkeypatch.setattr(validated, "RUN_DIR", str(run_dir))
    decl = tmp_path / "decl.yaml"
    decl.write_text(VALID)
    build(decl)
    assert list(run_dir.iterdir()) == []
    os.chown(run_dir, 0, -1)
    build(decl)
    assert [p.name for p in run_dir.iterdir()] == ["validated"]
    assert (run_dir / "validated").stat().st_mode & 0o777 == 0o700
    assert [d.validated for d in documents_from_file(decl)] == [True]


def test_a_user_without_a_configured_place_remembers_nothing(tmp_path: Path) -> None:
    """Not root, no CC_IMDS_CACHE_DIR: no record at all (the system's python3, as nobody)."""
    code = ("import os, sys; sys.path.insert(0, sys.argv[1]); from cc_imds.declaration import cache as validated; "
            "os.environ.pop(validated.CACHE_ENV, None); print(validated._directory(create=True))")
    # A copy of the package that nobody can read: the checkout may lie under a directory only
    # root can enter (a fresh clone inside pytest's own temp dir does).
    readable = Path(tempfile.mkdtemp(prefix="cc-imds-package-"))
    try:
        readable.chmod(0o755)
        shutil.copytree(REPO / "cc_imds", readable / "cc_imds", ignore=shutil.ignore_patterns("__pycache__"))
        result = subprocess.run(["/usr/bin/python3", "-c", code, str(readable)], env={"PATH": "/usr/bin:/bin"},
                                user=NOBODY, group=NOBODY, extra_groups=[], cwd="/", capture_output=True,
                                timeout=HUNG_AFTER)
    finally:
        shutil.rmtree(readable)
    assert (result.returncode, result.stdout) == (0, b"None\n"), result.stderr


leaves = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=5), st.binary(max_size=3),
                   st.dates(), st.just(datetime.datetime(2026, 1, 1)))
structures = st.recursive(leaves, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.tuples(inner), st.frozensets(st.integers(), max_size=2),
    st.dictionaries(st.one_of(st.text(max_size=3), st.integers(), st.booleans()), inner, max_size=3)), max_leaves=8)


def same(a: Any, b: Any) -> bool:
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return bool(a == b)


@settings(deadline=None)  # timing is not the point; the machine may be loaded
@given(structures)
def test_only_what_json_gives_back_exactly_is_remembered(value: Any) -> None:
    if validated._exact_in_json(value):
        assert same(json.loads(json.dumps(value)), value)
