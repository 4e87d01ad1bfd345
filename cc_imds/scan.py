"""Find IMDS calls in user-data and scripts, classify them, and suggest cc-imds equivalents.

Reads shell scripts, Python, cloud-config (runcmd, bootcmd, write_files, including
base64/gzip content), and raw EC2 user-data: gzip and MIME multipart included.
Static analysis, so it reports what it cannot see through (options held in an
unknown variable) as `unknown` rather than guessing.
"""

from __future__ import annotations

import ast
import base64
import email
import gzip
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

IMDSV1, IMDSV2, UNKNOWN = "IMDSv1", "IMDSv2", "unknown"
_HOST = r"(?:169\.254\.169\.254|\[fd00:ec2::254\])"
_URL = re.compile(r"https?://" + _HOST + r"(?::\d+)?(/[^\s\"'`)|;<>]*)?")
_TOKEN_HEADER = re.compile(r"x-aws-ec2-metadata-token\s*:", re.I)
_PUT = re.compile(r"(?:-X|--request)\s*=?\s*['\"]?PUT\b|--method\s*=\s*PUT", re.I)
_TOOL = re.compile(r"\b(curl|wget)\b")
_ASSIGN = re.compile(r"^\s*(?:export\s+|local\s+|readonly\s+)?([A-Za-z_]\w*)=(.*)$")
_CAPTURE = re.compile(r"^\s*(?:-\s+)?(?:export\s+|local\s+)?([A-Za-z_]\w*)=[\"']?(?:\$\(|`)")  # `- ` in YAML lists
_VAR = re.compile(r"\$\{([A-Za-z_]\w*)\}|\$([A-Za-z_]\w*)")
_CUT_LAST_CHAR = re.compile(r"sed\s+(?:-e\s+)?['\"]s/(?:\.|\[a-z\])\$//['\"]")


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
    unresolved: List[str] = []

    def replace(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        if name in known:
            return known[name]
        unresolved.append(name)
        return match.group(0)

    return _VAR.sub(replace, text), unresolved


def scan_shell(name: str, text: str) -> List[Finding]:
    known: Dict[str, str] = {}
    findings = []
    for number, line in _logical_lines(text):
        code = line.split(" #", 1)[0] if not line.lstrip().startswith("#") else ""
        if not code.strip():
            continue
        assignment = _ASSIGN.match(code)
        if assignment and "$(" not in assignment.group(2) and "`" not in assignment.group(2):
            value = assignment.group(2).strip().strip("'\"")
            known[assignment.group(1)] = _expand(value, known)[0]
            continue
        expanded, _ = _expand(code, known)
        capture = _CAPTURE.match(code)
        for match in _URL.finditer(expanded):
            tools = list(_TOOL.finditer(expanded, 0, match.start()))
            if not tools:
                continue
            tool = tools[-1]
            end = re.search(r"[)|;`]|&&", expanded[match.end():])
            command = expanded[tool.start(): match.end() + (end.start() if end else len(expanded))]
            after = expanded[match.end():]
            path = _latest_path(match.group(1))
            options = code[code.find(tool.group(1)):]
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
        tree = ast.parse(text)
    except SyntaxError:
        return scan_shell(name, text)
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
def _decode(content: Any, encoding: str) -> str:
    data = content.encode() if isinstance(content, str) else bytes(content)
    if encoding in ("b64", "base64", "gz+b64", "gzip+base64", "gz+base64", "gzip+b64"):
        data = base64.b64decode(data)
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    return data.decode("utf-8", "replace")


def scan_cloud_config(name: str, text: str) -> List[Finding]:
    """runcmd, bootcmd and plain write_files content are found in the text itself, with their
    line numbers; encoded write_files content is decoded and scanned on its own."""
    import yaml

    findings = scan_shell(name, text)
    try:
        config = yaml.safe_load(text) or {}
    except yaml.YAMLError:
        return findings
    for index, item in enumerate(config.get("write_files") or [] if isinstance(config, dict) else []):
        encoding = str(item.get("encoding", "")).lower() if isinstance(item, dict) else ""
        if encoding and "content" in item:
            inner = f"{name}: write_files[{index}] ({item.get('path', '?')})"
            findings.extend(scan_text(inner, _decode(item["content"], encoding)))
    return findings


def scan_text(name: str, text: str) -> List[Finding]:
    first = text.lstrip()[:200]
    if first.startswith("#cloud-config"):
        return scan_cloud_config(name, text)
    if name.endswith(".py") or re.match(r"#!.*python", first):
        return scan_python(name, text)
    return scan_shell(name, text)


def scan_bytes(name: str, data: bytes) -> List[Finding]:
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    head = data.lstrip()[:512].lower()
    if head.startswith(b"content-type: multipart") or head.startswith(b"mime-version:"):
        message = email.message_from_bytes(data)
        findings = []
        for index, part in enumerate(p for p in message.walk() if not p.is_multipart()):
            payload = part.get_payload(decode=True)
            if isinstance(payload, bytes):
                label = f"{name}[part {index + 1}: {part.get_content_type()}]"
                findings.extend(scan_bytes(label, payload))
        return findings
    return scan_text(name, data.decode("utf-8", "replace"))


def scan_files(paths: List[str]) -> Dict[str, List[Finding]]:
    """Findings per file; directories are walked."""
    found: Dict[str, List[Finding]] = {}
    for raw in paths:
        path = Path(raw)
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for file in files:
            found[str(file)] = scan_bytes(str(file), file.read_bytes())
    return found


def scan_paths(paths: List[str]) -> List[Finding]:
    return [finding for findings in scan_files(paths).values() for finding in findings]


# -- suggestions ------------------------------------------------------------------------------------
def _value_name(finding: Finding) -> str:
    if finding.variable:
        return finding.variable.lower()
    last = (finding.path or "value").rstrip("/").split("/")[-1]
    return re.sub(r"\W", "_", last).lower() or "value"


def suggest(findings: List[Finding], env_path: str) -> Dict[str, Any]:
    """One `imds:` declaration covering every IMDSv1 value the findings read."""
    values: Dict[str, Any] = {}
    env_vars: Dict[str, str] = {}
    for finding in findings:
        if finding.kind != IMDSV1 or not finding.path or "$" in finding.path or "{" in finding.path:
            continue
        name = _value_name(finding)
        spec: Any = finding.path.rstrip("/")  # a listing's text, as the script saw it
        if finding.region_from_az:
            spec = {"path": "dynamic/instance-identity/document", "key": "region"}
        values.setdefault(name, spec)
        env_vars.setdefault(finding.variable or name.upper(), name)
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
