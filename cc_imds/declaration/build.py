"""Load declarations, validate them (schema, then meaning), merge them into one.

A declaration comes from a *source*: the `imds:` key of cloud-config, or one file
in the drop-in directory. Every problem is reported with its source and location
(`user-data.yaml: imds.files[1].permissions: ...`), all at once.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Dict, FrozenSet, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

from ..errors import DeclarationError
from .dropins import read_dropins
from .schema import load_schema

CONNECTION_KEYS = ("endpoint", "imdsv1", "token_ttl", "timeout", "deadline", "concurrency")
ALWAYS_SENSITIVE_PREFIXES = (
    "meta-data/iam/security-credentials/",
    "meta-data/identity-credentials/",
    "user-data",
)
# Documents under these paths carry an `Expiration`: `cc-imds watch` refreshes them before it.
CREDENTIAL_PREFIXES = ("meta-data/iam/security-credentials/", "meta-data/identity-credentials/")
ON_CHANGE_TIMEOUT = 60.0
WAIT_MAX_TIMES_MIN = 4  # `wait: {min}` alone: at the latest 4 times min after the first change (consul-template's)
EVENT_TIMEOUT = 120.0  # a spot interruption notice comes two minutes ahead
EVENT_POLL = 5.0  # AWS suggests checking for the spot notice every 5 s
# A credential output reads its role's document through a value of its own, named so that no
# declared value can be (value names are identifiers): `iam-role:app-server`, or `iam-role:*`
# for the listing of every role when none is named (the instance's only role is taken).
CREDENTIAL_VALUE_PREFIX = "iam-role:"
ONLY_ROLE = "*"
ROLE_CREDENTIALS_DIR = "meta-data/iam/security-credentials/"
LIFECYCLE_EVENT = "lifecycle"  # the event whose commands run on Auto Scaling lifecycle transitions


# -- the typed declaration ----------------------------------------------------
@dataclass(frozen=True)
class Origin:
    """Where something was declared: a source and a location inside it."""

    source: str
    location: str

    def __str__(self) -> str:
        return f"{self.source}: {self.location}"

    def child(self, suffix: str) -> Origin:
        joiner = "" if suffix.startswith("[") else "."
        return Origin(self.source, f"{self.location}{joiner}{suffix}" if self.location else suffix)


@dataclass(frozen=True)
class ValueSpec:
    name: str
    path: str
    key: Optional[str]
    default: Optional[str]
    sensitive: bool
    origin: Origin
    refresh: Optional[float] = None  # seconds between refreshes after boot; None: once per boot

    @property
    def is_directory(self) -> bool:
        return self.path.endswith("/")

    @property
    def is_credential(self) -> bool:
        """Credentials expire, so they are refreshed after boot whatever `refresh` says."""
        return self.path.startswith(CREDENTIAL_PREFIXES)

    def same_as(self, other: ValueSpec) -> bool:
        return (self.path, self.key, self.default, self.sensitive, self.refresh) == (
            other.path,
            other.key,
            other.default,
            other.sensitive,
            other.refresh,
        )


@dataclass(frozen=True)
class Quiet:
    """When an `on_change` command runs after a change (all zero: at once). `wait_min`:
    once the output has not changed for that long; `wait_max`: at the latest that long
    after the first change not yet acted on; then a random delay of up to `splay`."""

    wait_min: float = 0.0
    wait_max: float = 0.0
    splay: float = 0.0


@dataclass(frozen=True)
class Command:
    """An argv list run without a shell, killed after `timeout` seconds."""

    argv: Tuple[str, ...]
    timeout: float
    quiet: Quiet = field(default_factory=Quiet)  # events' commands never wait


@dataclass(frozen=True)
class EventAction:
    """`events[]`: run `command` once per notice of `event`, polled every `poll` seconds.
    For `lifecycle`, once per transition to a state that `states` names (every state when empty)."""

    event: str
    command: Command
    poll: float
    origin: Origin
    states: Tuple[str, ...] = ()


@dataclass(frozen=True)
class EnvOutput:
    path: str
    format: str
    vars: Tuple[Tuple[str, str], ...]  # (variable, value name)
    expand: Tuple[Tuple[str, str], ...]  # (directory value name, prefix)
    owner: Optional[str]
    permissions: Optional[int]
    origin: Origin
    on_change: Optional[Command] = None

    @property
    def uses(self) -> FrozenSet[str]:
        return frozenset(v for _, v in self.vars) | frozenset(v for v, _ in self.expand)


@dataclass(frozen=True)
class FileOutput:
    path: str
    template: str
    owner: Optional[str]
    permissions: Optional[int]
    origin: Origin
    uses: FrozenSet[str] = field(default_factory=frozenset)
    on_change: Optional[Command] = None


@dataclass(frozen=True)
class CredentialOutput:
    """`credentials[]`: a role's keys in a file an AWS client reads (formats/credentials.py).
    `role` None: the instance's only role. Its value is hidden (see `credential_value`)."""

    path: str
    format: str
    role: Optional[str]
    profile: str
    owner: Optional[str]
    permissions: Optional[int]
    origin: Origin
    on_change: Optional[Command] = None

    @property
    def value_name(self) -> str:
        return CREDENTIAL_VALUE_PREFIX + (self.role or ONLY_ROLE)

    @property
    def uses(self) -> FrozenSet[str]:
        return frozenset({self.value_name})


OutputSpec = Union[EnvOutput, FileOutput, CredentialOutput]


@dataclass(frozen=True)
class MetricsFile:
    """`metrics:` where the watcher writes Prometheus metrics."""

    path: str
    origin: Origin


@dataclass(frozen=True)
class Declaration:
    settings: Mapping[str, Any]  # connection settings, merged by precedence
    values: Mapping[str, ValueSpec]
    env: Tuple[EnvOutput, ...]
    files: Tuple[FileOutput, ...]
    sources: Tuple[str, ...]
    events: Tuple[EventAction, ...] = ()
    credentials: Tuple[CredentialOutput, ...] = ()
    metrics: Optional[MetricsFile] = None

    @property
    def outputs(self) -> Tuple[OutputSpec, ...]:
        """Every output, in the order they are rendered and written."""
        return (*self.env, *self.files, *self.credentials)

    def is_sensitive(self, names: Iterable[str]) -> bool:
        return any(self.values[n].sensitive for n in names if n in self.values)


@dataclass(frozen=True)
class SourceDocument:
    """One declaration document before validation."""

    source: str  # "cloud-config", or the file it came from
    root: str  # location prefix: "imds" for cloud-config, "" for a drop-in file
    document: Any
    digest: Optional[str] = None  # names the file's exact text (cc_imds.declaration.cache), when read from one
    validated: bool = False  # passed the schema before, with this exact text (cc_imds.declaration.cache)


# -- loading --------------------------------------------------------------------
def read_text(path: Path) -> str:
    """A declaration file as text: a regular file of at most MAX_DECLARATION_BYTES, in UTF-8."""
    from ..untrusted import InputError
    from ..untrusted import read_text as read_bounded

    try:
        return read_bounded(path)
    except InputError as exc:
        raise DeclarationError([str(exc)]) from None


def read_yaml(path: Path, text: Optional[str] = None) -> Any:
    """Parse a declaration file, bounded in nesting and alias expansion (see cc_imds.untrusted)."""
    from ..untrusted import InputError, load_yaml

    if text is None:
        text = read_text(path)
    try:
        return load_yaml(str(path), text)
    except InputError as exc:
        raise DeclarationError([str(exc)]) from None


def documents_from_file(path: Path) -> List[SourceDocument]:
    """A file given on the command line: cloud-config (with an `imds:` key) or a bare declaration."""

    def parse(text: str) -> List[SourceDocument]:
        data = read_yaml(path, text)
        if isinstance(data, dict) and ("imds" in data or text.startswith("#cloud-config")):
            if "imds" not in data:
                raise DeclarationError([f"{path}: cloud-config without an `imds:` key"])
            return [SourceDocument(str(path), "imds", data["imds"])]
        if data is None:
            raise DeclarationError([f"{path}: empty file"])
        return [SourceDocument(str(path), "", data)]

    return _remembered_or_parsed(path, read_text(path), parse)


def documents_from_dir(conf_dir: Path) -> List[SourceDocument]:
    """Every `*.yaml` in the drop-in directory, in lexical order, if trusted (see `trust`).
    A missing directory is empty."""
    docs = []
    for path, text in read_dropins(conf_dir):

        def parse(text: str, path: Path = path) -> List[SourceDocument]:
            data = read_yaml(path, text)
            # An empty drop-in is allowed, as an empty systemd drop-in is.
            return [SourceDocument(str(path), "", data)] if data is not None else []

        docs.extend(_remembered_or_parsed(path, text, parse))
    return docs


def _remembered_or_parsed(
    path: Path, text: str, parse: Callable[[str], List[SourceDocument]]
) -> List[SourceDocument]:
    """The file's documents: as remembered from an earlier validation of this exact text
    (no YAML, no schema: see cc_imds.declaration.cache), or freshly parsed."""
    from . import cache

    digest = cache.key(text)
    known = cache.recall(digest)
    if known is not None:
        return [SourceDocument(str(path), root, document, digest, validated=True) for root, document in known]
    return [replace(doc, digest=digest) for doc in parse(text)]


# -- shape ----------------------------------------------------------------------
def shape_problems(doc: SourceDocument) -> List[str]:
    """What must hold before a document is worth validating: bounded size and depth (the
    document may come from cloud-init, already parsed, aliases and all), and string keys
    (YAML 1.1 reads an unquoted `ON:` or `NO:` key as a boolean)."""
    from ..untrusted import MAX_YAML_DEPTH, MAX_YAML_NODES

    root = Origin(doc.source, doc.root)
    problems: List[str] = []
    nodes = 0
    pending: List[Tuple[Any, Origin, int]] = [(doc.document, root, 0)]
    while pending:
        value, where, depth = pending.pop()
        nodes += 1 + (len(value) if isinstance(value, dict) else 0)  # a mapping's keys are nodes too
        if nodes > MAX_YAML_NODES:
            return [f"{root}: more than {MAX_YAML_NODES} nodes once aliases are expanded"]
        if isinstance(value, (dict, list)) and depth >= MAX_YAML_DEPTH:
            return [f"{where}: nested deeper than {MAX_YAML_DEPTH} levels"]
        if isinstance(value, dict):
            children = []
            for key, child in value.items():
                if isinstance(key, str):
                    children.append((child, where.child(key), depth + 1))
                else:
                    problems.append(f"{where}: mapping key {_short(key)} is {_key_kind(key)}")
            pending.extend(reversed(children))
        elif isinstance(value, list):
            pending.extend((child, where.child(f"[{i}]"), depth + 1) for i, child in reversed(list(enumerate(value))))
    return problems


def _key_kind(key: Any) -> str:
    kinds = {bool: "a boolean", int: "an integer", float: "a number", type(None): "null"}
    kind = kinds.get(type(key), f"a {type(key).__name__}")  # a date, a datetime
    hint = " (YAML 1.1 reads unquoted yes, no, on, off, true and false as booleans)" if isinstance(key, bool) else ""
    return f"{kind}, not a string: quote it{hint}"


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _location(origin: Origin, path: Sequence[Any]) -> str:
    where = origin
    for part in path:
        where = where.child(f"[{part}]" if isinstance(part, int) else str(part))
    return str(where)


def _describe(error: Any) -> Tuple[List[Any], str]:
    """Turn one jsonschema error into (location, message), worded for people."""
    path = list(error.absolute_path)
    hint = error.schema.get("x-error") if isinstance(error.schema, dict) else None
    kind = error.validator
    if kind == "additionalProperties" and isinstance(error.instance, dict):
        allowed = set(error.schema.get("properties", {}))
        patterns = error.schema.get("patternProperties", {})
        extra = [k for k in error.instance if k not in allowed and not any(re.search(p, k) for p in patterns)]
        if patterns and not allowed:
            return path, f"invalid name(s) {', '.join(map(repr, extra))}: {hint or 'not allowed'}"
        suggestions = []
        for key in extra:
            import difflib  # only for messages: a valid declaration never needs it

            close = difflib.get_close_matches(key, sorted(allowed), n=1)
            suggestions.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        return path, f"unknown key(s) {', '.join(suggestions)}; allowed: {', '.join(sorted(allowed))}"
    if kind == "required":
        missing = [k for k in error.validator_value if k not in error.instance]
        return path, f"missing required key(s) {', '.join(map(repr, missing))}"
    if kind == "enum":
        return path, f"{_short(error.instance)} is not one of {', '.join(map(repr, error.validator_value))}"
    if kind == "type":
        expected = error.validator_value
        wanted = expected if isinstance(expected, str) else " or ".join(expected)
        message = f"expected {wanted}, got {_type_name(error.instance)}"
        return path, f"{message}: {hint}" if hint else message
    if kind == "pattern":
        return path, f"{_short(error.instance)} {hint or 'does not match ' + repr(error.validator_value)}"
    if kind in ("minimum", "maximum"):
        return path, f"{_short(error.instance)} is {'less' if kind == 'minimum' else 'greater'} than the {kind} of " \
                     f"{error.validator_value}"
    message = str(error.message)
    return path, message if len(message) <= 200 else f"{_short(error.instance)} fails `{kind}`"


def _type_name(value: Any) -> str:
    return {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), type(value).__name__
    )


def schema_problems(doc: SourceDocument, schema: Optional[Mapping[str, Any]] = None) -> List[str]:
    """Every schema violation in one document, with locations, in document order."""
    from jsonschema import Draft7Validator

    origin = Origin(doc.source, doc.root)
    if not isinstance(doc.document, dict):
        return [f"{origin}: expected a mapping, got {_type_name(doc.document)}"]
    shape = shape_problems(doc)
    if shape:
        return shape  # the validator would recurse without bound, or fail on a non-string key
    validator = Draft7Validator(schema or load_schema())
    found = []
    for error in validator.iter_errors(doc.document):
        path, message = _describe(error)
        found.append((tuple(str(p) for p in path), _location(origin, path), message))
    found.sort(key=lambda item: item[0])
    return [f"{where}: {message}" for _, where, message in found]


# -- meaning --------------------------------------------------------------------
def _mode(text: Optional[str]) -> Optional[int]:
    return int(text, 8) if text is not None else None


def _check_output_path(path: str, where: Origin, problems: List[str]) -> None:
    parts = path.split("/")[1:]
    if path.endswith("/") or any(p in ("", ".", "..") for p in parts) or "\0" in path:
        problems.append(f"{where}: {path!r} must be a normalised absolute file path (no //, . or .. parts)")


def _values_from(doc: SourceDocument, problems: List[str]) -> List[ValueSpec]:
    origin = Origin(doc.source, doc.root).child("values")
    specs = []
    for name, raw in (doc.document.get("values") or {}).items():
        where = origin.child(name)
        spec = {"path": raw} if isinstance(raw, str) else dict(raw)
        path = spec["path"]
        if any(part in (".", "..") for part in path.split("/")) or "//" in path:
            problems.append(f"{where}: {path!r} must not contain empty, . or .. parts")
        directory = path.endswith("/")
        if directory and ("key" in spec or "default" in spec):
            problems.append(f"{where}: a directory path ({path}) takes neither `key` nor `default`")
        sensitive = bool(spec.get("sensitive", False)) or path.startswith(ALWAYS_SENSITIVE_PREFIXES)
        refresh = _refresh(spec.get("refresh"), path, where.child("refresh"), problems)
        specs.append(ValueSpec(name, path, spec.get("key"), spec.get("default"), sensitive, where, refresh))
    return specs


def _setting(doc: SourceDocument, key: str, schema: Mapping[str, Any], problems: List[str]) -> Any:
    """A connection setting, with its numeric bounds checked again here: a JSON Schema
    `minimum` lets NaN through (every comparison with NaN is false), and NaN as a
    deadline would mean no deadline at all. Integral floats (`8.0`) become ints."""
    value = doc.document[key]
    rule = schema["properties"][key]
    if rule.get("type") not in ("number", "integer"):
        return value
    low, high = rule["minimum"], rule["maximum"]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not low <= value <= high:
        problems.append(f"{Origin(doc.source, doc.root).child(key)}: {_short(value)} is not a finite number "
                        f"from {low} to {high}")
        return value
    return int(value) if rule["type"] == "integer" else value


def _refresh(raw: Any, path: str, where: Origin, problems: List[str]) -> Optional[float]:
    """Absent or `boot` -> None (once per boot); a period -> seconds. The schema checked type and range."""
    if raw is None:
        return None
    if raw == "boot":
        if path.startswith(CREDENTIAL_PREFIXES):
            problems.append(
                f"{where}: credentials expire, so they are refreshed before their Expiration; "
                "remove `refresh: boot` (or give a period to refresh them more often)"
            )
        return None
    if not math.isfinite(raw):
        problems.append(f"{where}: {raw!r} must be a finite number of seconds")
        return None
    return float(raw)


def _seconds(raw: Any, default: float, where: Origin, problems: List[str]) -> float:
    if raw is None:
        return default
    if not math.isfinite(raw):
        problems.append(f"{where}: {raw!r} must be a finite number of seconds")
        return default
    return float(raw)


def _command(raw: Mapping[str, Any], default_timeout: float, where: Origin, problems: List[str]) -> Command:
    """`run` (argv) and `timeout`, at `where`: an `on_change` object or an `events[]` entry."""
    argv = tuple(raw["run"])
    if any("\0" in arg for arg in argv):
        problems.append(f"{where.child('run')}: a command argument contains a NUL byte")
    return Command(argv, _seconds(raw.get("timeout"), default_timeout, where.child("timeout"), problems))


def _on_change(raw: Any, where: Origin, problems: List[str]) -> Optional[Command]:
    """`on_change`: an argv list, or {run: argv, timeout: seconds, wait: {min, max}, splay: seconds}."""
    if raw is None:
        return None
    if isinstance(raw, list):
        return _command({"run": raw}, ON_CHANGE_TIMEOUT, where, problems)
    return replace(_command(raw, ON_CHANGE_TIMEOUT, where, problems), quiet=_quiet(raw, where, problems))


def _quiet(raw: Mapping[str, Any], where: Origin, problems: List[str]) -> Quiet:
    """`wait` and `splay` of an `on_change` object; the schema checked types and ranges."""
    wait = raw.get("wait") or {}
    low = _seconds(wait.get("min"), 0.0, where.child("wait").child("min"), problems)
    high = _seconds(wait.get("max"), low * WAIT_MAX_TIMES_MIN, where.child("wait").child("max"), problems)
    if high < low:
        problems.append(f"{where.child('wait').child('max')}: {high:g} is less than wait.min ({low:g}): the "
                        "longest a command may wait cannot be shorter than the quiet time it waits for")
        high = low
    return Quiet(low, high, _seconds(raw.get("splay"), 0.0, where.child("splay"), problems))


def _events_from(doc: SourceDocument, problems: List[str]) -> List[EventAction]:
    origin = Origin(doc.source, doc.root).child("events")
    actions = []
    for index, raw in enumerate(doc.document.get("events") or []):
        where = origin.child(f"[{index}]")
        command = _command(raw, EVENT_TIMEOUT, where, problems)
        poll = _seconds(raw.get("poll"), EVENT_POLL, where.child("poll"), problems)
        states = tuple(raw.get("states") or ())
        if "states" in raw and raw["event"] != LIFECYCLE_EVENT:
            problems.append(f"{where.child('states')}: only `event: {LIFECYCLE_EVENT}` has states "
                            f"(this is `event: {raw['event']}`)")
        actions.append(EventAction(raw["event"], command, poll, where, states))
    return actions


def _suggest(name: str, known: Iterable[str]) -> str:
    import difflib  # only for messages: a valid declaration never needs it

    close = difflib.get_close_matches(name, sorted(known), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _env_from(doc: SourceDocument, index: int, raw: Mapping[str, Any], problems: List[str]) -> EnvOutput:
    where = Origin(doc.source, doc.root).child("env").child(f"[{index}]")
    return EnvOutput(
        path=raw["path"],
        format=raw["format"],
        vars=tuple((raw.get("vars") or {}).items()),
        expand=tuple((raw.get("expand") or {}).items()),
        owner=raw.get("owner"),
        permissions=_mode(raw.get("permissions")),
        origin=where,
        on_change=_on_change(raw.get("on_change"), where.child("on_change"), problems),
    )


def _file_from(doc: SourceDocument, index: int, raw: Mapping[str, Any], problems: List[str]) -> FileOutput:
    from ..formats.templates import TemplateProblem, referenced_names

    where = Origin(doc.source, doc.root).child("files").child(f"[{index}]")
    try:
        uses = referenced_names(raw["content"])
    except TemplateProblem as exc:
        problems.append(f"{where.child('content')}: {exc}")
        uses = frozenset()
    on_change = _on_change(raw.get("on_change"), where.child("on_change"), problems)
    return FileOutput(
        raw["path"], raw["content"], raw.get("owner"), _mode(raw.get("permissions")), where, uses, on_change
    )


def _credential_from(
    doc: SourceDocument, index: int, raw: Mapping[str, Any], problems: List[str]
) -> CredentialOutput:
    where = Origin(doc.source, doc.root).child("credentials").child(f"[{index}]")
    if "profile" in raw and raw["format"] != "credentials-file":
        problems.append(f"{where.child('profile')}: only the `credentials-file` format has profiles")
    output = CredentialOutput(
        path=raw["path"],
        format=raw["format"],
        role=raw.get("role"),
        profile=raw.get("profile", "default"),
        owner=raw.get("owner"),
        permissions=_mode(raw.get("permissions")),
        origin=where,
        on_change=_on_change(raw.get("on_change"), where.child("on_change"), problems),
    )
    if output.permissions is not None and output.permissions & 0o070 and ":" not in (output.owner or ""):
        problems.append(f"{where.child('permissions')}: {output.permissions:04o} lets a group read the role's "
                        "keys, but `owner` names no group (write owner: user:group)")
    return output


def credential_value(output: CredentialOutput) -> ValueSpec:
    """The hidden value a credential output reads: its role's document, or every role's."""
    path = ROLE_CREDENTIALS_DIR + (output.role or "")
    return ValueSpec(output.value_name, path, None, None, True, output.origin)


def build_declaration(docs: Sequence[SourceDocument], *, remember: bool = False) -> Declaration:
    """Validate every document, merge them, and check what they mean together.

    Merge rules: values with the same name must have the same spec (then they are
    shared); no two outputs may write one path; a variable name must mean the same
    value in every env output. Connection settings: later sources win, so with
    drop-ins in lexical order followed by cloud-config, cloud-config wins.

    With `remember`, files whose text passed are recorded (cc_imds.declaration.cache), so that
    their unchanged text skips YAML and the schema next time. Only runs that act (apply,
    the module) record; validate and plan only read the record, and leave no trace.
    """
    problems: List[str] = []
    schema = load_schema()  # plain JSON: the settings' bounds are checked on every run
    unchecked = [doc for doc in docs if not doc.validated]
    for doc in unchecked:  # jsonschema is imported only when some document needs it
        problems.extend(schema_problems(doc, schema))
    if problems:
        raise DeclarationError(problems)

    settings: Dict[str, Any] = {}
    values: Dict[str, ValueSpec] = {}
    env: List[EnvOutput] = []
    files: List[FileOutput] = []
    events: List[EventAction] = []
    credentials: List[CredentialOutput] = []
    metrics: Optional[MetricsFile] = None
    for doc in docs:
        for key in CONNECTION_KEYS:
            if key in doc.document:
                settings[key] = _setting(doc, key, schema, problems)
        if doc.document.get("metrics") is not None:  # later sources win, as for connection settings
            metrics = MetricsFile(doc.document["metrics"]["path"],
                                  Origin(doc.source, doc.root).child("metrics").child("path"))
        for spec in _values_from(doc, problems):
            earlier = values.get(spec.name)
            if earlier is None:
                values[spec.name] = spec
            elif not earlier.same_as(spec):
                problems.append(f"{spec.origin}: conflicts with the value of the same name at {earlier.origin}")
        env.extend(_env_from(doc, i, raw, problems) for i, raw in enumerate(doc.document.get("env") or []))
        files.extend(_file_from(doc, i, raw, problems) for i, raw in enumerate(doc.document.get("files") or []))
        events.extend(_events_from(doc, problems))
        for i, raw in enumerate(doc.document.get("credentials") or []):
            credential = _credential_from(doc, i, raw, problems)
            credentials.append(credential)
            values.setdefault(credential.value_name, credential_value(credential))

    _check_outputs(values, env, files, problems, credentials, metrics)
    if problems:
        raise DeclarationError(problems)
    if remember:
        _remember(unchecked)
    return Declaration(settings, values, tuple(env), tuple(files), tuple(d.source for d in docs), tuple(events),
                       tuple(credentials), metrics)


def _remember(checked: Sequence[SourceDocument]) -> None:
    """Record each file whose documents all passed, so its unchanged text skips YAML and the schema."""
    from . import cache

    by_file: Dict[str, List[SourceDocument]] = {}
    for doc in checked:
        if doc.digest is not None:
            by_file.setdefault(doc.digest, []).append(doc)
    for digest, file_docs in by_file.items():
        cache.remember(digest, [(doc.root, doc.document) for doc in file_docs])


def _check_outputs(
    values: Mapping[str, ValueSpec],
    env: Sequence[EnvOutput],
    files: Sequence[FileOutput],
    problems: List[str],
    credentials: Sequence[CredentialOutput] = (),
    metrics: Optional[MetricsFile] = None,
) -> None:
    claimed: Dict[str, Origin] = {}
    variables: Dict[str, Tuple[str, Origin]] = {}
    every: List[OutputSpec] = [*env, *files, *credentials]
    for output in every:
        where = output.origin
        _check_output_path(output.path, where.child("path"), problems)
        if output.path in claimed:
            problems.append(f"{where.child('path')}: {output.path} is also written by {claimed[output.path]}")
        claimed.setdefault(output.path, where)
        if output.permissions is not None and any(values[n].sensitive for n in output.uses if n in values):
            if output.permissions & 0o007:
                problems.append(
                    f"{where.child('permissions')}: {output.permissions:04o} lets every user read sensitive "
                    f"value(s) {', '.join(sorted(n for n in output.uses if n in values and values[n].sensitive))}"
                )
    if metrics is not None:  # a file of its own, which no output may also write
        _check_output_path(metrics.path, metrics.origin, problems)
        writer = claimed.get(metrics.path)
        if writer is not None:
            problems.append(f"{metrics.origin}: {metrics.path} is also written by {writer.child('path')}")
    for output in env:
        where = output.origin
        if not output.vars and not output.expand:
            problems.append(f"{where}: declares no variables (use `vars` and/or `expand`)")
        for variable, name in output.vars:
            spot = where.child("vars").child(variable)
            if name not in values:
                problems.append(f"{spot}: unknown value {name!r}{_suggest(name, values)}")
                continue
            if values[name].is_directory:
                problems.append(f"{spot}: {name!r} is a directory; use `expand` to get one variable per entry")
            earlier = variables.get(variable)
            if earlier is not None and earlier[0] != name:
                problems.append(f"{spot}: {variable} means {earlier[0]!r} at {earlier[1]}, here {name!r}")
            variables.setdefault(variable, (name, spot))
        for name, _prefix in output.expand:
            spot = where.child("expand").child(name)
            if name not in values:
                problems.append(f"{spot}: unknown value {name!r}{_suggest(name, values)}")
            elif not values[name].is_directory:
                problems.append(f"{spot}: {name!r} is not a directory (its path must end with /)")
    for output in files:
        for name in sorted(output.uses - set(values)):
            problems.append(f"{output.origin.child('content')}: unknown value {name!r}{_suggest(name, values)}")
