"""Find IMDS calls in user-data and scripts, classify them, and suggest cc-imds equivalents.

Reads shell scripts, Python, cloud-config (runcmd, bootcmd, write_files, including
base64/gzip content), and raw EC2 user-data: gzip and MIME multipart included.
Static analysis, so it reports what it cannot see through (options held in an
unknown variable) as `unknown` rather than guessing.

The files scanned are untrusted (user-data is written by whoever launches the
instance), so every step is bounded: only regular files are read, each up to
MAX_SCAN_BYTES; everything decoded from one file (gzip, base64, MIME parts) shares a
budget of MAX_DECODED_BYTES; containers nest at most MAX_NESTING deep. A file, or a
part of one, that cannot be scanned is reported as a problem, and the rest is still
scanned.
"""

from __future__ import annotations

import ast
import base64
import bisect
import email
import os
import re
import zlib
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, Iterator, List, Mapping, Optional, Tuple

from .errors import ProblemsError
from .inputs import InputError, check_yaml_shape, default_loader, read_bytes

MAX_SCAN_BYTES = 8 * 1024 * 1024  # EC2 user-data is at most 16 KiB; scripts are small
MAX_DECODED_BYTES = 16 * 1024 * 1024  # all that one file's gzip, base64 and MIME parts decode to
MAX_NESTING = 8  # gzip in MIME in write_files ...
MAX_FINDINGS = 10_000  # per file: after that, the rest of the file is not worth reading
MAX_VARIABLE = 4096  # a shell variable's value, once expanded: URLs are short
_WINDOW = 4096  # how far around an IMDS URL its command is looked for
_GZIP_MAGIC = b"\x1f\x8b"

IMDSV1, IMDSV2, UNKNOWN = "IMDSv1", "IMDSv2", "unknown"
_HOST = r"(?:169\.254\.169\.254|\[fd00:ec2::254\])"
_URL = re.compile(r"https?://" + _HOST + r"(?::\d+)?(/[^\s\"'`)|;<>\]]*)?")  # `]` ends a YAML flow list
_TOKEN_HEADER = re.compile(r"x-aws-ec2-metadata-token\s*:", re.I)
_PUT = re.compile(r"(?:-X|--request)\s*=?\s*['\"]?PUT\b|--method\s*=\s*PUT", re.I)
_TOOL = re.compile(r"\b(curl|wget)\b")
_ASSIGN = re.compile(r"^\s*(?:export\s+|local\s+|readonly\s+)?([A-Za-z_]\w*)=(.*)$")
_CAPTURE = re.compile(r"^\s*(?:-\s+)?(?:export\s+|local\s+)?([A-Za-z_]\w*)=[\"']?(?:\$\(|`)")  # `- ` in YAML lists
_VAR = re.compile(r"\$\{([A-Za-z_]\w*)\}|\$([A-Za-z_]\w*)")
_CUT_LAST_CHAR = re.compile(r"sed\s+(?:-e\s+)?['\"]s/(?:\.|\[a-z\])\$//['\"]")
_COMMAND_END = re.compile(r"[)|;`]|&&")


class ScanError(ProblemsError):
    """Files, or parts of them, that could not be scanned. Exit 1, as for IMDSv1 found:
    what cannot be seen into cannot be vouched for."""

    exit_code = 1


class _Refused(Exception):
    """One file or part that cannot be scanned; the message names it."""


@dataclass(frozen=True)
class Finding:
    file: str
    line: int
    kind: str  # IMDSv1, IMDSv2 or unknown
    tool: str  # curl, wget, requests, urllib
    path: Optional[str]  # relative to /latest/, None when it cannot be resolved
    variable: Optional[str]  # VAR in VAR=$(curl ...)
    region_from_az: bool = False  # the AZ with its last letter cut off

    @property
    def replacement(self) -> str:
        if self.kind != IMDSV1:
            return ""
        if self.region_from_az:
            return "cc-imds get meta-data/placement/region  (cutting the AZ's letter is wrong in Local Zones)"
        return f"cc-imds get {self.path}" if self.path else "cc-imds get PATH"


def _latest_path(url_path: Optional[str]) -> Optional[str]:
    if not url_path:
        return None
    parts = url_path.lstrip("/").split("/", 1)
    if len(parts) < 2 or not (parts[0] == "latest" or re.fullmatch(r"\d{4}-\d{2}-\d{2}", parts[0])):
        return None
    return parts[1] or None


# -- shell ---------------------------------------------------------------------------------
def _logical_lines(text: str) -> Iterator[Tuple[int, str]]:
    """Lines joined across backslash continuations, with the number of their first line."""
    buffer, start = "", 0
    for number, line in enumerate(text.splitlines(), 1):
        if not buffer:
            start = number
        if line.rstrip().endswith("\\"):
            buffer += line.rstrip()[:-1] + " "
            continue
        yield start, buffer + line
        buffer = ""
    if buffer:
        yield start, buffer


def _expand(text: str, known: Dict[str, str]) -> Tuple[str, List[str]]:
    """Substitute known variables. The result grows by at most MAX_VARIABLE * 16 characters:
    `B=$A$A$A...` and `C=$B$B$B...` would otherwise double and redouble."""
    unresolved: List[str] = []
    room = [MAX_VARIABLE * 16]

    def replace(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        value = known.get(name)
        if value is not None and len(value) <= room[0]:
            room[0] -= len(value)
            return value
        unresolved.append(name)
        return match.group(0)

    return _VAR.sub(replace, text), unresolved


def scan_shell(name: str, text: str) -> List[Finding]:
    """Every curl or wget of an IMDS URL. Each URL's command is looked for within _WINDOW
    characters around it, so a hostile file costs time linear in its size."""
    known: Dict[str, str] = {}
    findings: List[Finding] = []
    for number, line in _logical_lines(text):
        code = line.split(" #", 1)[0] if not line.lstrip().startswith("#") else ""
        if not code.strip():
            continue
        assignment = _ASSIGN.match(code)
        if assignment and "$(" not in assignment.group(2) and "`" not in assignment.group(2):
            value = _expand(assignment.group(2).strip().strip("'\""), known)[0]
            if len(value) <= MAX_VARIABLE:
                known[assignment.group(1)] = value
            else:
                known.pop(assignment.group(1), None)  # too long to be a URL: treated as unknown
            continue
        expanded, _ = _expand(code, known)
        capture = _CAPTURE.match(code)
        tool_starts, tools = [], []
        for tool_match in _TOOL.finditer(expanded):
            tool_starts.append(tool_match.start())
            tools.append(tool_match)
        for match in _URL.finditer(expanded):
            before = bisect.bisect_left(tool_starts, match.start())
            if not before or match.start() - tool_starts[before - 1] > _WINDOW:
                continue
            if len(findings) >= MAX_FINDINGS:
                raise _Refused(f"{name}: more than {MAX_FINDINGS} IMDS accesses; the rest was not scanned")
            tool = tools[before - 1]
            end = _COMMAND_END.search(expanded, match.end(), match.end() + _WINDOW)
            command = expanded[tool.start(): end.start() if end else match.end() + _WINDOW]
            after = expanded[match.end(): match.end() + _WINDOW]
            path = _latest_path(match.group(1))
            start = code.find(tool.group(1))
            options = code[start: start + _WINDOW]
            _, unresolved = _expand(options.split("169.254")[0], known)
            if _TOKEN_HEADER.search(command) or (path == "api/token" and _PUT.search(command)):
                kind = IMDSV2
            elif unresolved:
                kind = UNKNOWN  # options in a variable we cannot see into
            else:
                kind = IMDSV1
            az_cut = bool(path and path.endswith("availability-zone") and _CUT_LAST_CHAR.search(after))
            findings.append(Finding(name, number, kind, tool.group(1), path,
                                    capture.group(1) if capture else None, az_cut))
    return findings


# -- python ------------------------------------------------------------------------------------
def _string_value(node: ast.AST, constants: Dict[str, str]) -> Optional[str]:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.Name):
        return constants.get(node.id)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        left, right = _string_value(node.left, constants), _string_value(node.right, constants)
        return left + right if left is not None and right is not None else None
    if isinstance(node, ast.JoinedStr):
        return "".join(_string_value(v, constants) or "{}" for v in node.values)
    if isinstance(node, ast.FormattedValue):
        return None
    return None


def scan_python(name: str, text: str) -> List[Finding]:
    try:
        return _scan_python_ast(name, ast.parse(text))
    except (SyntaxError, ValueError, RecursionError, MemoryError):  # not Python, NUL bytes, nested too deep
        return scan_shell(name, text)


def _scan_python_ast(name: str, tree: ast.Module) -> List[Finding]:
    constants = {
        target.id: node.value.value
        for node in tree.body if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant)
        and isinstance(node.value.value, str)
        for target in node.targets if isinstance(target, ast.Name)
    }
    findings = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call) or not node.args:
            continue
        func = node.func
        attr = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
        tool = "requests" if attr in ("get", "put", "request", "head") else "urllib" if attr == "urlopen" else ""
        url = _string_value(node.args[-1] if attr == "request" else node.args[0], constants)
        if not tool or not url:
            continue
        match = _URL.search(url)
        if not match:
            continue
        path = _latest_path(match.group(1))
        headers = next((k.value for k in node.keywords if k.arg == "headers"), None)
        if headers is None:
            kind = IMDSV1
        elif isinstance(headers, ast.Dict):
            keys = [_string_value(k, constants) or "" for k in headers.keys if k is not None]
            token = any(k.lower() == "x-aws-ec2-metadata-token" for k in keys)
            ttl = any(k.lower() == "x-aws-ec2-metadata-token-ttl-seconds" for k in keys)
            kind = IMDSV2 if token or (ttl and path == "api/token") else IMDSV1
        else:
            kind = UNKNOWN
        findings.append(Finding(name, node.lineno, kind, tool, path, None))
    return sorted(findings, key=lambda f: f.line)


# -- containers ---------------------------------------------------------------------------------
_ENCODINGS_B64 = ("b64", "base64", "gz+b64", "gzip+base64", "gz+base64", "gzip+b64")


def scan_text(name: str, text: str) -> List[Finding]:
    """Findings in one text (a script, Python, or cloud-config with its encoded write_files)."""
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
            raise _Refused(f"{where}: decodes to more than {MAX_DECODED_BYTES} bytes (a decompression bomb?)")
        self.budget -= size

    def gunzip(self, where: str, data: bytes) -> bytes:
        """Every gzip member, as gzip.decompress would, but never more than the budget."""
        out = []
        while data[:2] == _GZIP_MAGIC:
            inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
            try:
                chunk = inflater.decompress(data, self.budget + 1)
            except zlib.error as exc:
                raise _Refused(f"{where}: corrupt gzip data ({exc})") from None
            self._take(len(chunk), where)
            if not inflater.eof:
                raise _Refused(f"{where}: truncated or corrupt gzip data")
            out.append(chunk)
            data = inflater.unused_data
        return b"".join(out)

    def content(self, where: str, data: bytes, depth: int) -> _FileScan:
        try:
            if depth > MAX_NESTING:
                raise _Refused(f"{where}: containers nested deeper than {MAX_NESTING} levels")
            if data[:2] == _GZIP_MAGIC:
                data = self.gunzip(where, data)
            head = data.lstrip()[:512].lower()
            if head.startswith(b"content-type: multipart") or head.startswith(b"mime-version:"):
                self.multipart(where, data, depth)
            else:
                self.script(where, data.decode("utf-8", "replace"), depth)
        except _Refused as exc:
            self.problems.append(str(exc))
        return self

    def multipart(self, where: str, data: bytes, depth: int) -> None:
        try:
            parts = [p for p in email.message_from_bytes(data).walk() if not p.is_multipart()]
        except RecursionError:
            raise _Refused(f"{where}: MIME parts nested too deeply") from None
        for index, part in enumerate(parts):
            payload = part.get_payload(decode=True)
            if isinstance(payload, bytes):
                self._take(len(payload), where)
                self.content(f"{where}[part {index + 1}: {part.get_content_type()}]", payload, depth + 1)

    def script(self, where: str, text: str, depth: int) -> _FileScan:
        first = text.lstrip()[:200]
        try:
            if first.startswith("#cloud-config"):
                self.cloud_config(where, text, depth)
            elif where.endswith(".py") or re.match(r"#!.*python", first):
                self.findings.extend(scan_python(where, text))
            else:
                self.findings.extend(scan_shell(where, text))
        except _Refused as exc:
            self.problems.append(str(exc))
        return self

    def cloud_config(self, where: str, text: str, depth: int) -> None:
        """runcmd, bootcmd and plain write_files content are found in the text itself, with
        their line numbers; encoded write_files content is decoded and scanned on its own."""
        self.findings.extend(scan_shell(where, text))
        for index, item in enumerate(_write_files(where, text)):
            encoding = str(item.get("encoding", "")).lower()
            content = item.get("content")
            if not encoding or not isinstance(content, (str, bytes)):
                continue
            inner = f"{where}: write_files[{index}] ({item.get('path', '?')})"
            try:
                decoded = self.decode(inner, content, encoding)
            except _Refused as exc:
                self.problems.append(str(exc))
                continue
            self.script(inner, decoded, depth + 1)

    def decode(self, where: str, content: Any, encoding: str) -> str:
        data = content.encode() if isinstance(content, str) else bytes(content)
        if encoding in _ENCODINGS_B64:
            try:
                data = base64.b64decode(data)
            except ValueError as exc:  # binascii.Error
                raise _Refused(f"{where}: invalid base64 content ({exc})") from None
            self._take(len(data), where)
        if data[:2] == _GZIP_MAGIC:
            data = self.gunzip(where, data)
        return data.decode("utf-8", "replace")


def _write_files(where: str, text: str) -> List[Mapping[str, Any]]:
    """cloud-config's write_files entries, whatever shape the document has. A document
    that is not YAML runs nothing under cloud-init, so it is nothing to scan here; one
    beyond the YAML bounds could, so it is refused."""
    import yaml

    try:
        check_yaml_shape(where, text)
        config = yaml.load(text, Loader=default_loader())  # noqa: S506 - a safe loader
    except InputError as exc:
        raise _Refused(str(exc)) from None
    except yaml.YAMLError:
        return []
    files = config.get("write_files") if isinstance(config, dict) else None
    return [item for item in files if isinstance(item, dict)] if isinstance(files, list) else []


@dataclass
class ScanResult:
    findings: Dict[str, List[Finding]]  # per file, in the order given (directories walked)
    problems: List[str]  # files, or parts of them, that could not be scanned


def _files_under(path: str) -> List[str]:
    """A directory's regular files (symlinks to files included), sorted; links to
    directories are not followed, so a loop cannot trap the walk."""
    found: List[str] = []
    for directory, subdirs, names in os.walk(path):
        subdirs.sort()
        found.extend(os.path.join(directory, n) for n in names if os.path.isfile(os.path.join(directory, n)))
    return sorted(found)


def scan_files(paths: List[str]) -> ScanResult:
    """Findings per file; directories are walked. Each file named on the command line
    must be readable; every problem is reported, and the rest is still scanned."""
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
    from .config import load_schema

    pattern = load_schema()["definitions"]["imds_path"]["pattern"]
    parts = path.rstrip("/").split("/")
    return bool(re.match(pattern, path)) and not any(p in ("", ".", "..") for p in parts)


def suggest(findings: List[Finding], env_path: str, names: Optional[ValueNames] = None) -> Dict[str, Any]:
    """One `imds:` declaration covering every IMDSv1 value the findings read: each value
    named by ValueNames, each exported under the script's variable when it had one."""
    names = names or ValueNames()
    values: Dict[str, Any] = {}
    env_vars: Dict[str, str] = {}
    for finding in findings:
        if finding.kind != IMDSV1 or not finding.path:
            continue
        path = finding.path.rstrip("/")  # a listing's text, as the script saw it
        spec: Any = path
        key = None
        if finding.region_from_az:
            path, key = "dynamic/instance-identity/document", "region"
            spec = {"path": path, "key": key}
        if not _declarable(path):
            continue
        name = names.name(path, key, finding.variable)
        values.setdefault(name, spec)
        if finding.variable and env_vars.setdefault(finding.variable, name) == name:
            continue  # exported under the script's own variable (another may share the value)
        if name in env_vars.values():
            continue  # already exported
        variable, number = name.upper(), 2  # the script's variable already means another value
        while variable in env_vars:
            variable, number = f"{name.upper()}_{number}", number + 1
        env_vars[variable] = name
    declaration: Dict[str, Any] = {"values": values}
    if env_vars:
        declaration["env"] = [{"path": env_path, "format": "shell", "vars": env_vars}]
    return declaration


def suggest_get(declaration: Dict[str, Any]) -> Optional[str]:
    """The suggested declaration's variables as one `cc-imds get --shell` call, for a script
    that reads several values: one process and one token instead of a curl per value."""
    import shlex

    from .formats import refused_variable

    env = declaration.get("env") or [{}]
    variables = {var: name for var, name in env[0].get("vars", {}).items() if not refused_variable(var)}
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


def as_dicts(findings: List[Finding]) -> List[Dict[str, Any]]:
    return [{**asdict(f), "replacement": f.replacement} for f in findings]
