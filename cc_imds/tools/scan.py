"""Find IMDS calls in user-data and scripts, classify them, and suggest cc-imds equivalents:
the migration gate of `cc-imds scan`.

This module opens containers (gzip, MIME multipart, cloud-config and its write_files,
base64/gzip content), decides each text's language, and hands it to a reader
(scan_readers: shell, Python 2/3, PowerShell). Every line naming an IMDS address that no
classified access accounts for becomes an `unknown` finding, and a file in a language
the scanner does not read is `unread`: the gate never passes what it could not see.

The files scanned are untrusted (user-data is written by whoever launches the
instance), so every step is bounded: only regular files are read, each up to
MAX_SCAN_BYTES; everything decoded from one file (gzip, base64, MIME parts) shares a
budget of MAX_DECODED_BYTES; containers nest at most MAX_NESTING deep. A file, or a
part of one, that cannot be scanned is reported as a problem, and the rest is still
scanned.
"""

from __future__ import annotations

import base64
import email
import os
import re
import zlib
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Dict, List, Mapping, Optional, Tuple

from ..errors import ProblemsError
from ..untrusted import InputError, check_yaml_shape, default_loader, read_bytes
from .scan_readers import (
    ADDRESS,
    IMDSV1,
    IMDSV2,
    MAX_FINDINGS,
    REFERENCE,
    UNKNOWN,
    UNREAD,
    UNSURE,
    Derived,
    Read,
    Refused,
    read_language,
    resolved,
    sweep,
)

if TYPE_CHECKING:
    import argparse

__all__ = ["IMDSV1", "IMDSV2", "MAX_FINDINGS", "REFERENCE", "UNKNOWN", "UNREAD", "Derived", "Finding", "ScanError",
           "failing", "scan_bytes", "scan_command", "scan_files", "scan_paths", "scan_text", "suggest", "suggest_get"]

MAX_SCAN_BYTES = 8 * 1024 * 1024  # EC2 user-data is at most 16 KiB; scripts are small
MAX_DECODED_BYTES = 16 * 1024 * 1024  # all that one file's gzip, base64 and MIME parts decode to
MAX_NESTING = 8  # gzip in MIME in write_files ...
_GZIP_MAGIC = b"\x1f\x8b"


class ScanError(ProblemsError):
    """Files, or parts of them, that could not be scanned. Exit 1, as for IMDSv1 found:
    what cannot be seen into cannot be vouched for."""

    exit_code = 1


@dataclass(frozen=True)
class Finding:
    file: str
    line: int
    kind: str  # IMDSv1, IMDSv2, unknown, unread (a language not read), reference (not an access)
    tool: str  # curl, wget, requests, urllib, http.client, Invoke-RestMethod, ec2metadata, ...
    path: Optional[str]  # relative to /latest/, None when it cannot be resolved
    variable: Optional[str]  # VAR in VAR=$(curl ...)
    region_from_az: bool = False  # the AZ with its last letter cut off: the region
    key: Optional[str] = None  # the script reads this key of the JSON document (jq -r .region)
    note: str = ""  # why it is unknown, what a helper command does, what a suggestion cannot be sure of
    derived: Tuple[Derived, ...] = ()  # variables the script computes from this value

    @property
    def replacement(self) -> str:
        if self.kind != IMDSV1:
            return self.note
        if self.region_from_az:
            text = "cc-imds get meta-data/placement/region  (cutting the AZ's letter is wrong in Local Zones)"
        elif self.path and resolved(self.path):
            text = f"cc-imds get {self.path}" + (f" --key {self.key}" if self.key else "")
        else:
            text = "cc-imds get PATH"
        return f"{text}  ({self.note})" if self.note else text


def failing(finding: Finding, accept_unknown: bool = False) -> bool:
    """Whether a finding fails the gate: IMDSv1, a language not read, and unknown unless accepted."""
    return finding.kind in (IMDSV1, UNREAD) or (finding.kind == UNKNOWN and not accept_unknown)


# -- which language a text is in ------------------------------------------------------------------------
_TEMPLATE_SUFFIXES = (".erb", ".j2", ".jinja", ".jinja2", ".tpl", ".tmpl", ".mustache", ".hbs", ".in")
_SHELL_SUFFIXES = (".sh", ".bash", ".ksh", ".zsh", ".dash", ".tf", ".hcl", ".json", ".yaml", ".yml", ".template",
                   ".cfg", ".conf", ".txt", ".userdata", ".user-data", ".env")
_UNREAD_SUFFIXES = {".rb": "Ruby", ".pl": "Perl", ".pm": "Perl", ".js": "JavaScript", ".mjs": "JavaScript",
                    ".ts": "TypeScript", ".go": "Go", ".java": "Java", ".php": "PHP", ".lua": "Lua", ".cs": "C#",
                    ".bat": "Windows batch", ".cmd": "Windows batch", ".rs": "Rust", ".c": "C", ".cpp": "C++",
                    ".groovy": "Groovy", ".kt": "Kotlin", ".scala": "Scala", ".swift": "Swift", ".vbs": "VBScript",
                    ".fish": "fish", ".csh": "csh", ".tcsh": "tcsh", ".r": "R", ".ex": "Elixir", ".exs": "Elixir"}
_SHELLS = re.compile(r"#!\s*\S*?(?:/env\s+(?:-\S+\s+)*)?(?:/?\S*/)?(?:ba|da|k|z|a|mk|busybox\s+)?sh\b")
_MIME_LANGUAGES = {"text/x-shellscript": "shell", "text/cloud-boothook": "shell", "text/part-handler": "python",
                   "text/cloud-config": "cloud-config", "text/x-include-url": "shell", "text/upstart-job": "shell",
                   "text/x-powershell": "powershell"}


def language(where: str, text: str, content_type: str = "") -> str:
    """shell, python, powershell, cloud-config, or `unread:<language>` for one the scanner does not read."""
    head = text.lstrip()[:300]
    first = head.split("\n", 1)[0].strip()
    for prefix, lang in _MIME_LANGUAGES.items():
        if content_type.startswith(prefix) and not (lang == "shell" and first.startswith("#!")):
            return lang
    if first.startswith("#cloud-config"):
        return "cloud-config"
    if first.startswith("#!"):
        if re.search(r"python", first):
            return "python"
        if re.search(r"pwsh|powershell", first, re.I):
            return "powershell"
        if _SHELLS.match(first):
            return "shell"
        interpreter = re.sub(r"^#!\s*(?:\S*/env\s+(?:-\S+\s+)*)?", "", first).split()[0].rsplit("/", 1)[-1]
        return f"unread:{interpreter}"
    if first.startswith(("#cloud-boothook", "#include", "#upstart-job")):
        return "shell"
    if re.match(r"<powershell>", head, re.I) or first.lower() == "#ps1":
        return "powershell"
    if re.match(r"<script>", head, re.I):
        return "unread:Windows batch"
    name = where.lower().rsplit("/", 1)[-1]
    while name.endswith(_TEMPLATE_SUFFIXES):
        name = name.rsplit(".", 1)[0]
    suffix = "." + name.rsplit(".", 1)[-1] if "." in name else ""
    if suffix == ".py":
        return "python"
    if suffix in (".ps1", ".psm1", ".psd1"):
        return "powershell"
    if suffix in _UNREAD_SUFFIXES:
        return f"unread:{_UNREAD_SUFFIXES[suffix]}"
    if suffix not in _SHELL_SUFFIXES:
        if re.search(r"^(?:import [\w.]+|from [\w.]+ import |def \w+\(.*\):\s*$)", text[:4096], re.M):
            return "python"
        if re.search(r"Invoke-(?:RestMethod|WebRequest)|New-Object\s+\S*WebClient|\$env:\w|Write-Host", text[:4096],
                     re.I):
            return "powershell"
    return "shell"


# -- containers ---------------------------------------------------------------------------------
_ENCODINGS_B64 = ("b64", "base64", "gz+b64", "gzip+base64", "gz+base64", "gzip+b64")


def scan_text(name: str, text: str) -> List[Finding]:
    """Findings in one text (a script, Python, PowerShell, or cloud-config with its write_files)."""
    return _FileScan(name).script(name, text, 0).result()


def scan_bytes(name: str, data: bytes) -> List[Finding]:
    """Findings in raw user-data or a file's content: gzip and MIME multipart are opened.
    Raises ScanError naming every part that could not be scanned."""
    return _FileScan(name).content(name, data, 0).result()


@dataclass
class _FileScan:
    """The scan of one input file: its findings, its problems, and its decoding budget."""

    name: str
    findings: List[Finding] = field(default_factory=list)
    problems: List[str] = field(default_factory=list)
    budget: int = MAX_DECODED_BYTES

    def result(self) -> List[Finding]:
        if self.problems:
            raise ScanError(self.problems)
        return self.findings

    def _take(self, size: int, where: str) -> None:
        if size > self.budget:
            raise Refused(f"{where}: decodes to more than {MAX_DECODED_BYTES} bytes (a decompression bomb?)")
        self.budget -= size

    def gunzip(self, where: str, data: bytes) -> bytes:
        """Every gzip member, as gzip.decompress would, but never more than the budget."""
        out = []
        while data[:2] == _GZIP_MAGIC:
            inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
            try:
                chunk = inflater.decompress(data, self.budget + 1)
            except zlib.error as exc:
                raise Refused(f"{where}: corrupt gzip data ({exc})") from None
            self._take(len(chunk), where)
            if not inflater.eof:
                raise Refused(f"{where}: truncated or corrupt gzip data")
            out.append(chunk)
            data = inflater.unused_data
        return b"".join(out)

    def content(self, where: str, data: bytes, depth: int, content_type: str = "") -> _FileScan:
        try:
            if depth > MAX_NESTING:
                raise Refused(f"{where}: containers nested deeper than {MAX_NESTING} levels")
            if data[:2] == _GZIP_MAGIC:
                data = self.gunzip(where, data)
            head = data.lstrip()[:512].lower()
            decoded = _base64_user_data(data)
            if head.startswith(b"content-type: multipart") or head.startswith(b"mime-version:"):
                self.multipart(where, data, depth)
            elif decoded is not None:  # user-data as the API takes it (Terraform's user_data_base64)
                self._take(len(decoded), where)
                self.content(f"{where} (base64)", decoded, depth + 1, content_type)
            else:
                self.script(where, data.decode("utf-8", "replace"), depth, content_type)
        except Refused as exc:
            self.problems.append(str(exc))
        return self

    def multipart(self, where: str, data: bytes, depth: int) -> None:
        try:
            parts = [p for p in email.message_from_bytes(data).walk() if not p.is_multipart()]
        except RecursionError:
            raise Refused(f"{where}: MIME parts nested too deeply") from None
        for index, part in enumerate(parts):
            payload = part.get_payload(decode=True)
            if isinstance(payload, bytes):
                self._take(len(payload), where)
                self.content(f"{where}[part {index + 1}: {part.get_content_type()}]", payload, depth + 1,
                             part.get_content_type())

    def script(self, where: str, text: str, depth: int, content_type: str = "") -> _FileScan:
        try:
            lang = language(where, text, content_type)
            if lang == "cloud-config":
                self.cloud_config(where, text, depth)
            elif lang.startswith("unread:"):
                self.unread(where, text, lang[len("unread:"):])
            else:  # cloud-init's `## template: jinja` header is a comment to the shell reader
                self.add(where, text, read_language(lang, _without_tags(text) if lang == "powershell" else text))
        except Refused as exc:
            self.problems.append(f"{where}: {exc}" if not str(exc).startswith(where) else str(exc))
        return self

    def add(self, where: str, text: str, read: Read) -> None:
        """A reader's findings, then an `unknown` for every line naming IMDS that none accounts for."""
        accesses = read.accesses + sweep(text, 1, read)
        if len(self.findings) + len(accesses) > MAX_FINDINGS:
            raise Refused(f"{where}: more than {MAX_FINDINGS} IMDS accesses; the rest was not scanned")
        self.findings.extend(sorted((Finding(where, a.line, a.kind, a.tool, a.path, a.variable, a.region_from_az,
                                             a.key, a.note, a.derived) for a in accesses), key=lambda f: f.line))

    def unread(self, where: str, text: str, what: str) -> None:
        lines = [n for n, line in enumerate(text.splitlines(), 1) if ADDRESS.search(line)]
        if lines:
            self.findings.append(Finding(where, lines[0], UNREAD, what, None, None, note=(
                f"a {what} file naming the IMDS address on line(s) {', '.join(map(str, lines[:10]))}: "
                "the scanner does not read this language")))

    def cloud_config(self, where: str, text: str, depth: int) -> None:
        """runcmd, bootcmd and write_files content in shell are read in the text itself, with
        their line numbers; write_files content in another language is read on its own, and
        encoded content is decoded and scanned as a file of its own."""
        lines = text.splitlines()
        read = Read()
        try:
            entries = _write_files(where, text)
        except Refused as exc:
            self.problems.append(str(exc))
            entries = []
        for index, (item, first) in enumerate(entries):
            encoding = str(item.get("encoding", "")).lower()
            content = item.get("content")
            if not isinstance(content, (str, bytes)):
                continue
            inner = f"{where}: write_files[{index}] ({item.get('path', '?')})"
            if encoding or isinstance(content, bytes):  # !!binary content is bytes already
                try:
                    decoded = self.decode(inner, content, encoding)
                except Refused as exc:
                    self.problems.append(str(exc))
                    continue
                self.script(inner, decoded, depth + 1)
                continue
            lang = language(str(item.get("path", "")), str(content))
            if lang in ("python", "powershell") and first is not None:
                span = range(first, min(first + len(str(content).splitlines()), len(lines)))
                own = read_language(lang, "\n".join(lines[n] for n in span), first + 1)
                read.merge(own)
                read.quiet |= {n + 1 for n in span}
                for n in span:
                    lines[n] = ""
        shell = read_language("shell", "\n".join(lines))
        read.merge(shell)
        self.add(where, text, read)

    def decode(self, where: str, content: Any, encoding: str) -> str:
        data = content.encode() if isinstance(content, str) else bytes(content)
        if encoding in _ENCODINGS_B64:
            try:
                data = base64.b64decode(data)
            except ValueError as exc:  # binascii.Error
                raise Refused(f"{where}: invalid base64 content ({exc})") from None
            self._take(len(data), where)
        if data[:2] == _GZIP_MAGIC:
            data = self.gunzip(where, data)
        return data.decode("utf-8", "replace")


def _write_files(where: str, text: str) -> List[Tuple[Mapping[str, Any], Optional[int]]]:
    """cloud-config's write_files entries, whatever shape the document has, each with the
    0-based line where its plain content starts. A document that is not YAML runs nothing
    under cloud-init, so it is nothing to scan here; one beyond the YAML bounds could, so it
    is refused."""
    import yaml

    try:
        check_yaml_shape(where, text)
        config = yaml.load(text, Loader=default_loader())  # noqa: S506 - a safe loader
        node = yaml.compose(text, Loader=default_loader())
    except InputError as exc:
        raise Refused(str(exc)) from None
    except yaml.YAMLError:
        return []
    files = config.get("write_files") if isinstance(config, dict) else None
    if not isinstance(files, list):
        return []
    starts: List[Optional[int]] = []
    items = _mapping_item(node, "write_files")
    for entry in items.value if isinstance(items, yaml.SequenceNode) else []:
        content = _mapping_item(entry, "content")
        if isinstance(content, yaml.ScalarNode):
            starts.append(content.start_mark.line + (1 if content.style in ("|", ">") else 0))
        else:
            starts.append(None)
    starts += [None] * (len(files) - len(starts))
    return [(item, start) for item, start in zip(files, starts) if isinstance(item, dict)]


_BASE64_TEXT = re.compile(rb"[A-Za-z0-9+/=\s]{16,}")


def _base64_user_data(data: bytes) -> Optional[bytes]:
    """The decoded bytes when the whole file is base64 of gzip, a script, cloud-config or MIME."""
    if not _BASE64_TEXT.fullmatch(data.strip()):
        return None
    try:
        decoded = base64.b64decode(b"".join(data.split()), validate=True)
    except ValueError:  # binascii.Error
        return None
    head = decoded.lstrip()[:32].lower()
    return decoded if decoded[:2] == _GZIP_MAGIC or head.startswith((b"#", b"content-type", b"mime-version",
                                                                      b"<powershell>")) else None


def _mapping_item(node: Any, key: str) -> Any:
    import yaml

    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            if isinstance(k, yaml.ScalarNode) and k.value == key:
                return v
    return None


def _without_tags(text: str) -> str:
    """EC2 Windows user-data: <powershell>...</powershell> around the script (same lines)."""
    return re.sub(r"</?(?:powershell|persist|runAsLocalSystem)>", "", text, flags=re.I)


@dataclass
class ScanResult:
    findings: Dict[str, List[Finding]]  # per file, in the order given (directories walked)
    problems: List[str]  # files, or parts of them, that could not be scanned
    texts: Dict[str, str] = field(default_factory=dict)  # each file's text, when asked for (--suggest)


def _files_under(path: str) -> List[str]:
    """A directory's regular files (symlinks to files included), sorted; links to
    directories are not followed, so a loop cannot trap the walk."""
    found: List[str] = []
    for directory, subdirs, names in os.walk(path):
        subdirs.sort()
        found.extend(os.path.join(directory, n) for n in names if os.path.isfile(os.path.join(directory, n)))
    return sorted(found)


def scan_files(paths: List[str], keep_text: bool = False) -> ScanResult:
    """Findings per file; directories are walked. Each file named on the command line
    must be readable; every problem is reported, and the rest is still scanned. With
    `keep_text`, each file's text is kept too: what the suggestions read is what was scanned."""
    result = ScanResult({}, [])
    for raw in paths:
        for name in _files_under(raw) if os.path.isdir(raw) else [raw]:
            try:
                data = read_bytes(name, MAX_SCAN_BYTES)
            except InputError as exc:
                result.problems.append(str(exc))
                continue
            scan = _FileScan(name).content(name, data, 0)
            result.findings[name] = scan.findings
            if keep_text:
                result.texts[name] = data.decode("utf-8", "replace")
            result.problems.extend(scan.problems)
    return result


def scan_paths(paths: List[str]) -> List[Finding]:
    result = scan_files(paths)
    if result.problems:
        raise ScanError(result.problems)
    return [finding for findings in result.findings.values() for finding in findings]


# -- suggestions ------------------------------------------------------------------------------------
_NOT_ALNUM = re.compile(r"[^A-Za-z0-9]+")
_NAME = re.compile(r"^[a-z_][a-z0-9_]*$")


def _words(text: str) -> str:
    return _NOT_ALNUM.sub("_", text).strip("_").lower()


class ValueNames:
    """Names for the values of a declaration: valid identifiers, readable, and one per
    source, however odd the path (`meta-data/public-keys/0` is `public_keys_0`).

    A name comes from the hint (the script's variable) if it has one and it is free; else
    from the shortest tail of the path that makes a valid, free name
    (`.../macs/0e:49:.../vpc-id` is `vpc_id`, then `macs_0e_49_..._vpc_id` for a second
    MAC); else that with a number added. The same source always gets the same name.
    """

    def __init__(self) -> None:
        self._by_source: Dict[Tuple[str, Optional[str]], str] = {}
        self._taken: Dict[str, Tuple[str, Optional[str]]] = {}

    def name(self, path: str, key: Optional[str] = None, hint: Optional[str] = None) -> str:
        source = (path, key)
        if source in self._by_source:
            return self._by_source[source]
        parts = [p for p in path.strip("/").split("/") if p] or ["value"]
        candidates = [_words(hint)] if hint else []
        candidates += [_words(key)] if key else []
        candidates += ["_".join(w for w in map(_words, parts[i:]) if w) for i in range(len(parts) - 1, -1, -1)]
        valid = [c for c in candidates if _NAME.match(c)] or ["value"]
        chosen = next((c for c in valid if c not in self._taken), None)
        if chosen is None:
            number = 2
            while f"{valid[0]}_{number}" in self._taken:
                number += 1
            chosen = f"{valid[0]}_{number}"
        self._by_source[source] = chosen
        self._taken[chosen] = source
        return chosen


def _declarable(path: str) -> bool:
    """Whether a path found in a script can be a declared value (else it stays a finding,
    with its `cc-imds get` replacement, and is left out of the suggestion)."""
    from ..declaration.schema import load_schema

    pattern = load_schema()["definitions"]["imds_path"]["pattern"]
    parts = path.rstrip("/").split("/")
    return resolved(path) and bool(re.match(pattern, path)) and not any(p in ("", ".", "..") for p in parts)


@dataclass
class Suggestion:
    """A declaration covering a file's IMDSv1 values, and what its reader should know: names
    that were changed, values the scanner could not be sure of."""

    declaration: Dict[str, Any]
    comments: List[str]


def _exported_name(wanted: str, path: str, taken: Mapping[str, str], comments: List[str]) -> str:
    """The script's variable name, or IMDS_ + the name, said in a comment, where cc-imds refuses to
    set it as `validate` and `get --shell` would: a tag's value is its author's, so it gets the rule
    `expand` applies to names a tag spells (names.refused: loader, shells, runtimes, proxies, TLS,
    credentials); any other value gets the rule for names a script's author chose (what runs)."""
    from ..formats.names import changes_what_runs, refused

    tagged = path.startswith(("meta-data/tags/", "tags/"))
    rule = refused if tagged else changes_what_runs
    if not rule(wanted):
        return wanted
    renamed, number = f"IMDS_{wanted}", 2
    while rule(renamed) or renamed in taken:
        renamed, number = f"IMDS_{wanted}_{number}", number + 1
    why = ("a tag's author would choose what runs, where traffic goes or what is trusted" if tagged
           else "it changes what runs")
    comments.append(f"{wanted} is exported as {renamed}: cc-imds never sets {wanted} from this value ({why}; "
                    f"docs/declaration.md: Refused variable names). Set it from ${renamed} yourself only if the "
                    "script really needs it.")
    return renamed


def suggest(
    findings: List[Finding], env_path: str, names: Optional[ValueNames] = None, text: Optional[str] = None
) -> Suggestion:
    """One `imds:` declaration covering every IMDSv1 value the findings read: each value
    named by ValueNames, each exported under the script's variable when it had one (renamed
    when cc-imds refuses that name), with the script's own reading of it: a `key` for a jq
    selector, placement/region for an AZ with its letter cut off. With the script's `text`,
    a file it copies a role's keys into becomes a `credentials:` output (scan_credentials)."""
    names = names or ValueNames()
    values: Dict[str, Any] = {}
    env_vars: Dict[str, str] = {}
    comments: List[str] = []
    for finding in findings:
        if finding.kind != IMDSV1 or not finding.path:
            continue
        fetched = "meta-data/placement/region" if finding.region_from_az else finding.path
        reads = [(finding.variable, fetched, finding.key, finding.note)]
        reads += [(d.variable, d.path, d.key, d.note) for d in finding.derived]
        for variable, raw_path, key, note in reads:
            path = raw_path.rstrip("/")  # a listing's text, as the script saw it
            if not _declarable(path):
                if variable:
                    comments.append(f"{variable}: the script reads {raw_path or 'a path'} that cannot be declared "
                                    "(a part known only when it runs, or characters a path cannot hold); left out")
                continue
            if note.startswith(UNSURE):
                comments.append(f"{variable or path}: {note}: left out; read it with `cc-imds get {path}` and "
                                "transform it as the script does")
                continue
            spec: Any = {"path": path, "key": key} if key else path
            name = names.name(path, key, variable)
            values.setdefault(name, spec)
            if note and finding.kind == IMDSV1 and note not in comments:
                comments.append(f"{variable or name}: {note}")
            if variable:
                variable = _exported_name(variable, path, env_vars, comments)
                if env_vars.setdefault(variable, name) == name:
                    continue  # exported under the script's own variable (another may share the value)
            if name in env_vars.values():
                continue  # already exported
            wanted = _exported_name(name.upper(), path, env_vars, comments)
            variable, number = wanted, 2  # the script's variable already means another value
            while variable in env_vars:
                variable, number = f"{wanted}_{number}", number + 1
            env_vars[variable] = name
    from .scan_credentials import credential_outputs, drop_role_documents

    credentials, notes = credential_outputs(findings, text)
    if credentials:  # the keys go into the credentials output, not into an environment file too
        comments.extend(drop_role_documents(values, env_vars))
    declaration: Dict[str, Any] = {"values": values}
    if env_vars:
        declaration["env"] = [{"path": env_path, "format": "shell", "vars": env_vars}]
    if credentials:
        declaration["credentials"] = credentials
    comments.extend(notes)
    return Suggestion(declaration, comments)


def suggest_get(declaration: Dict[str, Any]) -> Optional[str]:
    """The suggested declaration's variables as one `cc-imds get --shell` call, for a script
    that reads several values: one process and one token instead of a curl per value. Its
    names are the declaration's, already checked by suggest()."""
    import shlex

    env = declaration.get("env") or [{}]
    variables = env[0].get("vars", {})
    if len(variables) < 2:
        return None
    args = []
    for variable, name in variables.items():
        spec = declaration["values"][name]
        path, key = (spec, None) if isinstance(spec, str) else (spec["path"], spec.get("key"))
        args.append(" ".join(shlex.quote(a) for a in [f"{variable}={path}", *(["--key", key] if key else [])]))
    # Two steps: the assignment carries cc-imds's exit status (set -e stops there); eval of
    # empty output would succeed.
    return 'values=$(cc-imds get --shell \\\n' + " \\\n".join(f"    {a}" for a in args) + ')\neval "$values"'


def as_dicts(findings: List[Finding], accept_unknown: bool = False) -> List[Dict[str, Any]]:
    return [{**asdict(f), "replacement": f.replacement if f.kind == IMDSV1 else "",
             "fails_gate": failing(f, accept_unknown)} for f in findings]


def scan_command(args: argparse.Namespace) -> int:
    """Every IMDS call found in the files (or under the directories) given, as a table or
    --json, with --suggest the declaration and `get` call replacing the IMDSv1 ones; exit 1
    if the gate fails or a file cannot be scanned."""
    import json

    from ..logs import say, shown

    result = scan_files(args.path, keep_text=args.suggest)
    findings = [finding for found in result.findings.values() for finding in found]
    if args.json:
        print(json.dumps(as_dicts(findings, args.accept_unknown), indent=2))
    elif findings:
        # The scanned files are untrusted: what they contain is shown with control characters escaped.
        rows = [(shown(f"{f.file}:{f.line}"), f.kind, shown(f.tool), shown(f.path or "?"), shown(f.replacement))
                for f in findings]
        widths = [max(len(r[i]) for r in rows) for i in range(4)]
        for row in rows:
            print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + row[4])
    elif not result.problems:
        print("no IMDS access found")
    if args.suggest:
        import re

        import yaml

        from ..declaration.build import SourceDocument, build_declaration

        for name, found in result.findings.items():
            stem = re.sub(r"[^A-Za-z0-9._-]", "_", os.path.splitext(os.path.basename(name))[0]).lstrip(".") or "imds"
            suggestion = suggest(found, f"/etc/cc-imds/{stem}.sh", ValueNames(), result.texts.get(name))
            declaration = suggestion.declaration
            notes = "".join(f"# {shown(comment)}\n" for comment in suggestion.comments)
            if not declaration["values"] and not declaration.get("credentials"):
                if notes:
                    print(f"\n# {shown(name)}: no IMDSv1 value that can be suggested exactly\n" + notes, end="")
                continue
            build_declaration([SourceDocument(name, "imds", declaration)])  # never suggest an invalid one
            command = suggest_get(declaration)
            if command:
                print(f"\n# {shown(name)}: the IMDSv1 values above in one call, one token, in the script itself")
                print(notes + command)
            print(f"\n# {shown(name)}: the IMDSv1 values above, as a cc-imds declaration")
            print(notes + "#cloud-config\n" + yaml.safe_dump({"imds": declaration}, sort_keys=False), end="")
    say("\n".join(result.problems))
    return 1 if result.problems or any(failing(f, args.accept_unknown) for f in findings) else 0


