"""Schema and semantic validation: every problem, each with its exact location."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from cc_imds.declaration.build import SourceDocument, build_declaration, documents_from_dir, documents_from_file
from cc_imds.declaration.schema import load_schema
from cc_imds.errors import DeclarationError
from tests.conftest import examples


def doc(document: Any, source: str = "user-data") -> SourceDocument:
    return SourceDocument(source, "imds", document)


def problems_of(*docs: SourceDocument) -> List[str]:
    with pytest.raises(DeclarationError) as caught:
        build_declaration(list(docs))
    return caught.value.problems


GOOD: Dict[str, Any] = {
    "values": {
        "instance_id": "meta-data/instance-id",
        "region": {"path": "dynamic/instance-identity/document", "key": "region"},
        "tags": {"path": "meta-data/tags/instance/"},
    },
    "env": [{"path": "/etc/a.env", "format": "shell", "vars": {"IID": "instance_id"}, "expand": {"tags": "TAG_"}}],
    "files": [{"path": "/etc/a.conf", "content": "{{ region }}\n", "permissions": "0640", "owner": "root:root"}],
}


def test_good_declaration_builds() -> None:
    declaration = build_declaration([doc(GOOD)])
    assert set(declaration.values) == {"instance_id", "region", "tags"}
    assert declaration.files[0].uses == frozenset({"region"})
    assert declaration.files[0].permissions == 0o640


def test_every_schema_problem_is_reported_with_its_location() -> None:
    bad = {
        "endpoint": "https://example.com",
        "imdsv1": "sometimes",
        "token_ttl": 0,
        "values": {"ok": "meta-data/instance-id", "bad-name": "meta-data/x", "p": "/latest/meta-data/x"},
        "env": [{"path": "relative.env", "format": "ini", "vars": {"1BAD": "ok"}}],
        "files": [
            {"path": "/etc/x", "content": "x"},
            {"path": "/etc/y", "content": "y", "permissions": 416, "colour": "blue"},
        ],
    }
    assert problems_of(doc(bad)) == [
        "user-data: imds.endpoint: 'https://example.com' must be auto, ipv4, ipv6 or http://host[:port]",
        "user-data: imds.env[0].format: 'ini' is not one of 'shell', 'systemd', 'dotenv', 'json'",
        "user-data: imds.env[0].path: 'relative.env' must be an absolute path",
        "user-data: imds.env[0].vars: invalid name(s) '1BAD': variable names must be letters, digits and _, "
        "not starting with a digit",
        "user-data: imds.files[1]: unknown key(s) 'colour'; allowed: content, on_change, owner, path, permissions",
        "user-data: imds.files[1].permissions: expected string, got int: must be a quoted octal mode such as "
        '"0640" (setuid, setgid and sticky bits are refused; an unquoted 0640 is read by YAML as the number 416)',
        "user-data: imds.imdsv1: 'sometimes' is not one of 'never', 'fallback'",
        "user-data: imds.token_ttl: 0 is less than the minimum of 1",
        "user-data: imds.values: invalid name(s) 'bad-name': value names must be identifiers: letters, digits "
        "and _, not starting with a digit",
        "user-data: imds.values.p: '/latest/meta-data/x' must be an IMDS path such as meta-data/instance-id, "
        "dynamic/instance-identity/document or user-data, without a leading / or latest/",
    ]


def test_unknown_top_level_key_suggests_the_right_one() -> None:
    assert problems_of(doc({"valeus": {}})) == [
        "user-data: imds: unknown key(s) 'valeus' (did you mean 'values'?); allowed: concurrency, credentials, "
        "deadline, endpoint, env, events, files, imdsv1, metrics, timeout, token_ttl, values"
    ]


def test_semantic_problems_are_all_reported() -> None:
    bad = {
        "values": {
            "iid": "meta-data/instance-id",
            "tags": "meta-data/tags/instance/",
            "dotty": "meta-data/../secret",
            "dir_key": {"path": "meta-data/tags/instance/", "key": "x"},
            "creds": "meta-data/iam/security-credentials/role",
        },
        "env": [
            {"path": "/etc/a.env", "format": "shell", "vars": {"A": "iidd", "T": "tags"}, "expand": {"iid": "X_"}},
            {"path": "/etc/a.env", "format": "json", "vars": {"A": "iid"}},
            {"path": "/etc/b.env", "format": "shell"},
        ],
        "files": [
            {"path": "/etc/../etc/passwd", "content": "{{ nope }} {{ iid }"},
            {"path": "/etc/c", "content": "{{ creds }}", "permissions": "0644"},
            {"path": "/etc/d", "content": "{{ undeclared_thing }}"},
        ],
    }
    assert problems_of(doc(bad)) == [
        "user-data: imds.values.dotty: 'meta-data/../secret' must not contain empty, . or .. parts",
        "user-data: imds.values.dir_key: a directory path (meta-data/tags/instance/) takes neither `key` nor `default`",
        "user-data: imds.files[0].content: template syntax error at line 1: unexpected '}'",
        "user-data: imds.env[1].path: /etc/a.env is also written by user-data: imds.env[0]",
        "user-data: imds.files[0].path: '/etc/../etc/passwd' must be a normalised absolute file path "
        "(no //, . or .. parts)",
        "user-data: imds.files[1].permissions: 0644 lets every user read sensitive value(s) creds",
        "user-data: imds.env[0].vars.A: unknown value 'iidd' (did you mean 'iid'?)",
        "user-data: imds.env[0].vars.T: 'tags' is a directory; use `expand` to get one variable per entry",
        "user-data: imds.env[0].expand.iid: 'iid' is not a directory (its path must end with /)",
        "user-data: imds.env[2]: declares no variables (use `vars` and/or `expand`)",
        "user-data: imds.files[2].content: unknown value 'undeclared_thing'",
    ]


def test_credentials_and_user_data_are_always_sensitive() -> None:
    declaration = build_declaration(
        [doc({"values": {"c": "meta-data/iam/security-credentials/r", "u": "user-data", "i": "meta-data/instance-id"}})]
    )
    assert {n: v.sensitive for n, v in declaration.values.items()} == {"c": True, "u": True, "i": False}


# -- merging drop-ins and cloud-config ------------------------------------------------
def dropin(name: str, document: Any) -> SourceDocument:
    return SourceDocument(f"/etc/cc-imds/conf.d/{name}", "", document)


def test_same_value_in_two_sources_is_shared() -> None:
    a = dropin("10-a.yaml", {"values": {"iid": "meta-data/instance-id"}, "deadline": 30})
    b = dropin("20-b.yaml", {"values": {"iid": "meta-data/instance-id"}, "deadline": 20, "timeout": 1})
    cc = doc({"values": {"r": "meta-data/placement/region"}, "deadline": 10}, source="cloud-config")
    declaration = build_declaration([a, b, cc])
    assert set(declaration.values) == {"iid", "r"}
    assert declaration.values["iid"].origin.source.endswith("10-a.yaml")
    assert dict(declaration.settings) == {"deadline": 10, "timeout": 1}  # later sources win


def test_conflicts_between_sources_name_both() -> None:
    a = dropin("10-a.yaml", {
        "values": {"iid": "meta-data/instance-id", "r": "meta-data/placement/region"},
        "env": [{"path": "/etc/app.env", "format": "shell", "vars": {"X": "iid"}}],
    })
    b = dropin("20-b.yaml", {
        "values": {"iid": {"path": "meta-data/instance-id", "sensitive": True}},
        "env": [{"path": "/etc/app.env", "format": "shell", "vars": {"X": "r"}},
                {"path": "/etc/other.env", "format": "shell", "vars": {"X": "r"}}],
    })
    assert problems_of(a, b) == [
        "/etc/cc-imds/conf.d/20-b.yaml: values.iid: conflicts with the value of the same name at "
        "/etc/cc-imds/conf.d/10-a.yaml: values.iid",
        "/etc/cc-imds/conf.d/20-b.yaml: env[0].path: /etc/app.env is also written by "
        "/etc/cc-imds/conf.d/10-a.yaml: env[0]",
        "/etc/cc-imds/conf.d/20-b.yaml: env[0].vars.X: X means 'iid' at /etc/cc-imds/conf.d/10-a.yaml: env[0].vars.X, "
        "here 'r'",
        "/etc/cc-imds/conf.d/20-b.yaml: env[1].vars.X: X means 'iid' at /etc/cc-imds/conf.d/10-a.yaml: env[0].vars.X, "
        "here 'r'",
    ]


def test_dropin_directory_reads_yaml_in_lexical_order(tmp_path: Path) -> None:
    (tmp_path / "20-b.yaml").write_text("values: {b: meta-data/b}\n")
    (tmp_path / "10-a.yaml").write_text("values: {a: meta-data/a}\n")
    (tmp_path / "ignored.yml.rpmsave").write_text("garbage: [")
    (tmp_path / ".hidden.yaml").write_text("garbage: [")
    (tmp_path / "30-empty.yaml").write_text("")
    assert [Path(d.source).name for d in documents_from_dir(tmp_path)] == ["10-a.yaml", "20-b.yaml"]
    assert documents_from_dir(tmp_path / "missing") == []


def test_yaml_errors_name_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("#cloud-config\nimds:\n  values: {a: [\n")
    with pytest.raises(DeclarationError, match=r"broken.yaml: invalid YAML: line 4, column 1"):
        documents_from_file(path)


def test_cloud_config_without_imds_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "ud.yaml"
    path.write_text("#cloud-config\nruncmd: [true]\n")
    with pytest.raises(DeclarationError, match=r"ud.yaml: cloud-config without an `imds:` key"):
        documents_from_file(path)


# -- bounds -------------------------------------------------------------------------------
MINIMAL: Dict[str, Any] = {
    "values": {"iid": "meta-data/instance-id"},
    "env": [{"path": "/etc/a.env", "format": "shell", "vars": {"A": "iid"}}],
}


@pytest.mark.parametrize("key", ["token_ttl", "timeout", "deadline", "concurrency"])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf"), -1, 0, 1e9])
def test_numeric_settings_must_be_finite_and_in_range(key: str, value: float) -> None:
    rule = load_schema()["properties"][key]
    problems = problems_of(doc({**MINIMAL, key: value}))
    assert problems and all(p.startswith(f"user-data: imds.{key}: ") for p in problems), problems
    if value != value and rule["type"] == "number":  # NaN passes every JSON Schema comparison
        assert problems == [f"user-data: imds.{key}: nan is not a finite number from {rule['minimum']} to "
                            f"{rule['maximum']}"]


def test_integral_floats_become_integers() -> None:
    declaration = build_declaration([doc({**MINIMAL, "concurrency": 4.0, "token_ttl": 60.0, "timeout": 1.5})])
    assert dict(declaration.settings) == {"concurrency": 4, "token_ttl": 60, "timeout": 1.5}
    assert isinstance(declaration.settings["concurrency"], int)


def numeric_rules(schema: Any, where: str = "#") -> List[Any]:
    found = []
    if isinstance(schema, dict):
        if schema.get("type") in ("number", "integer"):
            found.append((where, schema))
        for key, sub in schema.items():
            found.extend(numeric_rules(sub, f"{where}/{key}"))
    return found


def test_every_number_in_the_schema_has_positive_finite_bounds() -> None:
    rules = numeric_rules(load_schema())
    assert len(rules) >= 4
    for where, rule in rules:
        assert rule.get("minimum", 0) > 0 and isinstance(rule.get("maximum"), (int, float)), where


@pytest.mark.parametrize(("text", "problem"), [
    ("ON: x\n", "mapping key True is a boolean, not a string: quote it (YAML 1.1 reads unquoted yes, no, on, "
                "off, true and false as booleans)"),
    ("NO: x\n", "mapping key False is a boolean"),
    ("1: x\n", "mapping key 1 is an integer, not a string: quote it"),
    ("~: x\n", "mapping key None is null, not a string: quote it"),
    ("2024-01-01: x\n", "mapping key datetime.date(2024, 1, 1) is a date, not a string: quote it"),
])
def test_non_string_keys_are_located(tmp_path: Path, text: str, problem: str) -> None:
    path = tmp_path / "keys.yaml"
    path.write_text("values: {iid: meta-data/instance-id}\nenv:\n  - path: /etc/a\n    format: shell\n"
                    "    vars:\n      A: iid\n" + "".join("      " + line + "\n" for line in text.splitlines()))
    with pytest.raises(DeclarationError) as caught:
        build_declaration(documents_from_file(path))
    [found] = caught.value.problems
    assert found.startswith(f"{path}: env[0].vars: {problem}")


def test_non_string_keys_from_cloud_init_are_located() -> None:
    # cloud-init hands the module an already parsed `imds:` mapping.
    problems = problems_of(doc({"values": {True: "meta-data/x", "ok": "meta-data/y"}, 7: "x"}))
    assert problems == [
        "user-data: imds: mapping key 7 is an integer, not a string: quote it",
        "user-data: imds.values: mapping key True is a boolean, not a string: quote it (YAML 1.1 reads unquoted "
        "yes, no, on, off, true and false as booleans)",
    ]


def test_shared_references_are_bounded_as_expanded() -> None:
    # What an alias bomb in user-data becomes once cloud-init has loaded it: shared lists.
    bomb: Any = ["lol"] * 9
    for _ in range(8):
        bomb = [bomb] * 9
    assert problems_of(doc({**MINIMAL, "files": bomb})) == [
        "user-data: imds: more than 20000 nodes once aliases are expanded"]


def test_cycles_and_deep_documents_are_refused() -> None:
    cycle: List[Any] = []
    cycle.append(cycle)
    assert problems_of(doc({"env": cycle}))[0].startswith("user-data: imds.env[0][0]")
    deep: Any = "x"
    for _ in range(10_000):
        deep = [deep]
    assert problems_of(doc({"files": deep})) == [
        "user-data: imds.files" + "[0]" * 63 + ": nested deeper than 64 levels"]


def test_long_values_are_shortened_in_messages() -> None:
    [problem] = problems_of(doc({**MINIMAL, "imdsv1": ["x" * 1000]}))
    assert problem.startswith("user-data: imds.imdsv1: ['xxxx") and len(problem) < 200


def test_declaration_files_are_bounded(tmp_path: Path) -> None:
    huge = tmp_path / "huge.yaml"
    with open(huge, "wb") as handle:
        handle.truncate(2 * 1024 * 1024)
    with pytest.raises(DeclarationError, match=r"huge.yaml: 2097152 bytes exceeds the 1048576-byte limit"):
        documents_from_file(huge)
    (tmp_path / "conf.d").mkdir()
    (tmp_path / "conf.d/10-bomb.yaml").write_text("values: &a [*a]\n")
    with pytest.raises(DeclarationError, match=r"10-bomb.yaml: line 1, column 13: alias \*a is inside"):
        documents_from_dir(tmp_path / "conf.d")


# -- the schema itself --------------------------------------------------------------------
def walk(schema: Any, where: str = "#") -> List[str]:
    """Every object schema without additionalProperties: false, and every property without a description."""
    found = []
    if isinstance(schema, dict):
        if schema.get("type") == "object" and schema.get("additionalProperties") is not False:
            found.append(f"{where}: additionalProperties is not false")
        for name, sub in schema.get("properties", {}).items():
            if "description" not in sub and "$ref" not in sub:
                found.append(f"{where}.{name}: no description")
        for key, sub in schema.items():
            found.extend(walk(sub, f"{where}/{key}"))
    elif isinstance(schema, list):
        for i, sub in enumerate(schema):
            found.extend(walk(sub, f"{where}[{i}]"))
    return found


def test_schema_is_closed_and_described() -> None:
    assert walk(load_schema()) == []


def test_schema_uses_only_keywords_both_jsonschema_versions_know() -> None:
    text = yaml.safe_dump(load_schema())
    for newer in ("$defs", "dependentRequired", "unevaluatedProperties", "prefixItems", "$dynamicRef"):
        assert newer not in text


# -- generated declarations -----------------------------------------------------------
junk = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=10), inner, max_size=3),
    max_leaves=12,
)
near_valid = st.fixed_dictionaries(
    {},
    optional={
        "values": st.dictionaries(st.sampled_from(["a", "b", "1x", "c-d"]), junk | st.just("meta-data/x"), max_size=3),
        "env": st.lists(
            st.fixed_dictionaries({"path": st.sampled_from(["/e", "e", 3]), "format": st.sampled_from(["shell", "x"])},
                                  optional={"vars": st.dictionaries(st.sampled_from(["A", "1"]), junk, max_size=2)}),
            max_size=2,
        ),
        "files": st.lists(
            st.fixed_dictionaries({"path": junk, "content": st.sampled_from(["{{ a }}", "{% if %}", "x", 1])}),
            max_size=2,
        ),
        "token_ttl": junk,
        "endpoint": junk,
    },
)


@settings(max_examples=examples(300), deadline=None)
@given(st.one_of(junk, near_valid))
def test_generated_declarations_validate_or_fail_with_located_problems(document: Any) -> None:
    try:
        build_declaration([doc(document)])
    except DeclarationError as exc:
        assert exc.problems
        assert all(p.startswith("user-data: imds") for p in exc.problems), exc.problems
