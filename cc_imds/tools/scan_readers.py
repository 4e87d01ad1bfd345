"""The language readers of `cc-imds scan`: shell, Python (2 and 3) and PowerShell.

Each reader turns one text into findings: an access it could classify (IMDSv1, IMDSv2, or
`unknown` when what decides it is hidden), and the lines whose IMDS address it attributed to
one. `sweep` then turns every other line that names an IMDS address into an `unknown`
finding, so an access the readers do not understand is never reported as clean.

Static reading, bounded: variables are followed up to MAX_VARIABLE characters, loops and
arrays give at most MAX_VARIANTS variants of a line, function calls nest MAX_CALL_DEPTH deep.
"""

from __future__ import annotations

import io
import re
import shlex
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterator, List, Optional, Set, Tuple

IMDSV1, IMDSV2, UNKNOWN, UNREAD, REFERENCE = "IMDSv1", "IMDSv2", "unknown", "unread", "reference"

MAX_FINDINGS = 10_000  # per file: after that, the rest of the file is not worth reading
MAX_VARIABLE = 4096  # a variable's value, once expanded: URLs are short
MAX_VARIANTS = 32  # a line expanded over loop and array values
MAX_CALL_DEPTH = 3  # shell functions calling shell functions
MAX_FUNCTIONS = 256  # shell functions followed into; the bodies of others are read where they stand
MAX_CALL_LINES = 100_000  # lines read again for function calls, per file
MAX_HEREDOC_DEPTH = 4  # shell heredocs inside shell heredocs read as code; deeper ones only for addresses
_WINDOW = 4096  # how far around an IMDS URL its command is looked for

# The addresses: IPv4 (also as one hex or decimal number), IPv6, and the old `instance-data` name.
_HOSTS = r"169\.254\.169\.254|\[fd00:ec2::254\]|0xa9fea9fe|2852039166|instance-data(?:\.ec2\.internal)?"
ADDRESS = re.compile(r"(?<![\w.-])(?:169\.254\.169\.254|fd00:ec2::254|0xa9fea9fe|2852039166|0251\.0376\.0251\.0376"
                     r"|instance-data(?:\.ec2\.internal)?(?!\.json))(?![\w-])", re.I)
URL = re.compile(r"(?<![\w.:/-])(?:https?://)?(?:" + _HOSTS + r")(?![\w.-])(?::\d+)?"
                 r"(?P<path>/[^\s\"'`)|;<>\]\\,]*)?", re.I)
TOKEN_HEADER = re.compile(r"x-aws-ec2-metadata-token(?![\w-])", re.I)
TTL_HEADER = re.compile(r"x-aws-ec2-metadata-token-ttl-seconds", re.I)
_SHELL_PUT = re.compile(r"(?<![\w-])-[A-Za-z]*X[\s,'\"]*PUT\b|--request[\s=,'\"]+PUT\b|--method[\s=,'\"]+PUT\b", re.I)


UNSURE = "the script transforms the value with"  # a note saying the suggestion cannot give what the script read


class Refused(Exception):
    """One file or part that cannot be scanned; the message names it."""


@dataclass(frozen=True)
class Derived:
    """A variable the script computes from a fetched value (REGION=${AZ%?})."""

    variable: str
    path: str
    key: Optional[str] = None
    note: str = ""


@dataclass(frozen=True)
class Access:
    """One finding as a reader sees it; the file name is added by the caller."""

    line: int
    kind: str
    tool: str
    path: Optional[str]
    variable: Optional[str] = None
    key: Optional[str] = None
    region_from_az: bool = False
    note: str = ""
    derived: Tuple[Derived, ...] = ()


@dataclass
class Read:
    """What a reader found: the accesses, and the lines whose address they account for."""

    accesses: List[Access] = field(default_factory=list)
    covered: Set[int] = field(default_factory=set)
    quiet: Set[int] = field(default_factory=set)  # lines that are comments or documentation

    def add(self, access: Access) -> None:
        if len(self.accesses) >= MAX_FINDINGS:
            raise Refused(f"more than {MAX_FINDINGS} IMDS accesses; the rest was not scanned")
        self.accesses.append(access)

    def merge(self, other: Read) -> None:
        for access in other.accesses:
            self.add(access)
        self.covered |= other.covered
        self.quiet |= other.quiet


def latest_path(url_path: Optional[str]) -> Optional[str]:
    """`/latest/meta-data/x` (or a dated version) as `meta-data/x`; None for anything else."""
    if not url_path:
        return None
    parts = url_path.lstrip("/").split("/", 1)
    if len(parts) < 2 or not (parts[0] == "latest" or re.fullmatch(r"\d{4}-\d{2}-\d{2}", parts[0])):
        return None
    return parts[1] or None


def url_path(text: str, url: re.Match[str]) -> Optional[str]:
    """The URL's path under /latest/, marked unresolved (`{?}`) when a template placeholder
    (`<%= %>`, `{{ }}`) or a command substitution continues it."""
    path = latest_path(url.group("path"))
    if path is not None and re.match(r"<%|\{\{", text[url.end(): url.end() + 2]):
        path += "{?}"
    return path


def resolved(path: Optional[str]) -> bool:
    """A path with no part left unknown (`$p`, `{p}`, a template placeholder)."""
    return bool(path) and not re.search(r"[${}<>%]", path or "")


def sweep(text: str, first_line: int, read: Read, comment: str = "#") -> List[Access]:
    """`unknown` for every line naming an IMDS address that no access accounts for."""
    found = []
    for number, line in enumerate(text.splitlines(), first_line):
        if number in read.covered or number in read.quiet:
            continue
        code = _without_comment(line, comment)
        match = ADDRESS.search(code)
        if match and re.match(r"/\d{1,3}(?![\w/.-])", code[match.end():]):  # 169.254.169.254/32: a network rule
            found.append(Access(number, REFERENCE, "CIDR", None,
                                note="the IMDS address as a network range (a firewall or policy rule): not an access"))
        elif match:
            url = URL.search(code)
            found.append(Access(number, UNKNOWN, "?", latest_path(url.group("path")) if url else None, note=(
                f"names the IMDS address {match.group(0)} in a way the scanner cannot classify; "
                "read it and fix it, or pass --accept-unknown")))
    return found


def _without_comment(line: str, comment: str) -> str:
    stripped = line.lstrip()
    if stripped.startswith(comment) and not stripped.startswith("#!"):
        return ""
    return re.split(r"(?:^|\s)" + re.escape(comment), line, maxsplit=1)[0] if comment in line else line


# -- what a command does with the value it fetched --------------------------------------------------
_DOCUMENT_KEYS = ("accountId", "architecture", "availabilityZone", "billingProducts", "imageId", "instanceId",
                  "instanceType", "kernelId", "pendingTime", "privateIp", "ramdiskId", "region", "version",
                  "marketplaceProductCodes", "devpayProductCodes", "InstanceProfileArn", "InstanceProfileId",
                  "AccessKeyId", "SecretAccessKey", "Token", "Expiration", "LastUpdated", "Code", "Type")
_JSON_PATHS = re.compile(r"(instance-identity/document|iam/info|iam/security-credentials/[^/]+|spot/instance-action"
                         r"|events/maintenance/\w+|rebalance-recommendation)$")
# Every way scripts drop an AZ's last letter to get its region.
_TRIM_LAST = re.compile(
    r"s/\.\$//|s/\[a-z\]\$//|s/\[\[:alpha:\]\]\$//|s/\[a-z\]\*\$//|\\\(\.\*\\\)\[a-z\]|\(\.\*\)\[a-z\]"
    r"|rev\b.*cut\s+-c\s*['\"]?2-.*\brev\b|substr\(\s*\$0\s*,\s*(?:0|1)\s*,\s*length\(\s*\$?0?\s*\)\s*-\s*1\s*\)"
    r"|head\s+-c\s*-1\b|%\?|%\[a-z\]|%\[\[:alpha:\]\]|::-1\}|:0:-1\}|:0:\$\{#\w+\}-1|\[\s*0?\s*:\s*-1\s*\]"
    r"|rstrip\(\s*(?:string\.(?:ascii_)?(?:lowercase|letters)|['\"]abcdefghijklmnopqrstuvwxyz['\"])"
    r"|\[a-z\]\$['\"]\s*,\s*['\"]['\"]|chop\b|-replace\s+['\"](?:\.|\[a-z\])\$['\"]"
    r"|\.Substring\(\s*0\s*,[^)]*Length\s*-\s*1\s*\)|\.TrimEnd\(")
_HARMLESS = re.compile(r"^\s*(?:tr\s+-d\s+\S+|xargs(?:\s+echo)?|cat|tee\s+(?:-a\s+)?[^\s|;&]+"
                       r"|head\s+-(?:n\s*)?1|tail\s+-(?:n\s*)?1"
                       r"|sed\s+-e\s+['\"]?\$a\\?['\"]?|echo)\s*$")
_JQ = re.compile(r"\bjq\s+(?:--?[a-zA-Z-]+\s+)*['\"]?\.(?:\[\s*['\"](\w+)['\"]\s*\]|(\w+))['\"]?(?:\s+--?[a-zA-Z-]+)*"
                 r"(?:\s*<<<\s*\S+)?\s*$")


def transform(path: Optional[str], stages: List[str]) -> Tuple[Optional[str], Optional[str], bool, str]:
    """What the script reads, given what its pipeline does to the fetched value:
    (path, key, region_from_az, note). The note says when the suggestion cannot be sure."""
    listing = bool(path and path.endswith("/"))  # head -1 or tr -d / of a listing changes what it reads
    stages = [s.strip() for s in stages if s.strip() and not (_HARMLESS.match(s) and not listing)]
    if not stages or not path:
        return path, None, False, ""
    text = " | ".join(stages)[:512]  # a pipeline is short; the patterns below stay cheap
    if path.endswith("placement/availability-zone") and _TRIM_LAST.search(text):
        return "meta-data/placement/region", None, True, ""
    if _JSON_PATHS.search(path):
        jq = _JQ.search(stages[-1]) if len(stages) == 1 else None
        if jq:
            return path, jq.group(1) or jq.group(2), False, ""
        keys = {k for k in _DOCUMENT_KEYS if re.search(r"(?<![\w])" + k + r"(?![\w])", text)}
        if len(keys) == 1:
            key = keys.pop()
            return path, key, False, f"the script extracts `{key}` with `{_short(text)}`: check it reads that key"
    return path, None, False, f"{UNSURE} `{_short(text)}`"


def _short(text: str) -> str:
    return text if len(text) <= 60 else text[:57] + "..."


def is_az_trim(text: str) -> bool:
    return bool(_TRIM_LAST.search(text))


# -- shell -----------------------------------------------------------------------------------------
_TOOL = re.compile(r"(?<![\w.$-])(curl|wget)(?:\.exe)?(?![\w-])")
_SEPARATOR = re.compile(r"\|\|?|;|&&")
_ASSIGN = re.compile(r"^\s*(?:-\s+)?(?:(?:export|local|readonly|declare|typeset)\s+(?:-\w+\s+)*)?"
                     r"([A-Za-z_]\w*)=(.*)$")
_VAR = re.compile(r"\$\{(?P<b>[A-Za-z_]\w*|[0-9@*])(?P<index>\[[^\]]*\])?(?P<op>:?-[^}]*)?\}"
                  r"|\$(?P<n>[A-Za-z_]\w*|[0-9@*])")
_FUNCTION = re.compile(r"^\s*(?:function\s+([A-Za-z_][\w:.-]*)\s*(?:\(\s*\))?|([A-Za-z_][\w:.-]*)\s*\(\s*\))\s*\{?")
_FOR = re.compile(r"^\s*for\s+([A-Za-z_]\w*)\s+in\s+(.*?)\s*(?:;\s*do\b|$)(.*)$")
_HEREDOC = re.compile(r"(?<!<)<<(-?)\s*(['\"]?)([A-Za-z_][\w-]*)\2")
_PYTHON_CMD = re.compile(r"(?<![\w/-])(?:/\S*/)?python[\d.]*(?![\w-])")
_PWSH_CMD = re.compile(r"(?<![\w-])(?:pwsh|powershell)(?:\.exe)?(?![\w-])", re.I)
_PYTHON_C = re.compile(r"(?<![\w/-])(?:/\S*/)?python[\d.]*\s+-c\s+(['\"])(.*?)(?<!\\)\1")
# Options whose value is never a header: a variable there hides nothing that decides the kind.
_VALUE_OPTIONS = {"-m", "--max-time", "--connect-timeout", "--retry", "--retry-delay", "--retry-max-time", "-o",
                  "--output", "-w", "--write-out", "-O", "--output-document", "-T", "--timeout", "-t", "--tries",
                  "--wait", "-y", "-Y", "--speed-time", "--speed-limit", "--limit-rate", "-e", "--referer",
                  "--interface", "--local-port", "-A", "--user-agent"}
_ECHO = re.compile(r"^\s*(?:-\s+)?(?:echo|printf|logger|log\w*|info|warn\w*|error|die|msg|note)\b")
_NOT_ACCESS = re.compile(
    r"(?<![\w-])(?:iptables|ip6tables|nft|firewall-cmd|ufw|route|ip\s+(?:-\d\s+)?route|ip\s+rule)(?![\w-])"
    r"|(?<![\w-])(?:ping6?|arping|traceroute|tracepath|mtr)(?![\w-])"
    r"|(?<![\w-])no_proxy\W{0,4}[=:,]|--noproxy\b|NoProxy|NOPROXY|metadata_urls"
    r"|ec2_metadata_service_endpoint|AWS_EC2_METADATA_SERVICE_ENDPOINT", re.I)
# The helper commands, where a command starts (not `echo "use ec2metadata"`, not `which ec2metadata`).
_HELPER = re.compile(r"(?:^|[;|&(`{]\s*|\b(?:then|do|else|sudo|exec|command|timeout\s+\S+)\s+)\s*(?:-\s+)?"
                     r"(?:/[\w./-]{0,200}/)?(ec2metadata|ec2-metadata)(?![\w.-])((?:[ \t]+--?[\w-]+)*)")
_EC2METADATA_PATHS = {
    "--ami-id": "meta-data/ami-id", "--ami-launch-index": "meta-data/ami-launch-index",
    "--ami-manifest-path": "meta-data/ami-manifest-path",
    "--availability-zone": "meta-data/placement/availability-zone",
    "--instance-id": "meta-data/instance-id", "--instance-type": "meta-data/instance-type",
    "--local-hostname": "meta-data/local-hostname", "--local-ipv4": "meta-data/local-ipv4",
    "--kernel-id": "meta-data/kernel-id", "--mac": "meta-data/mac", "--public-hostname": "meta-data/public-hostname",
    "--public-ipv4": "meta-data/public-ipv4", "--ramdisk-id": "meta-data/ramdisk-id",
    "--reservation-id": "meta-data/reservation-id", "--security-groups": "meta-data/security-groups",
    "--user-data": "user-data",
}
_UBUNTU_HELPER = ("Ubuntu's ec2metadata (cloud-utils) has no IMDSv2 support: it fails on an IMDSv2-only instance "
                  "such as AL2023's default")
_AL_HELPER = "Amazon Linux's ec2-metadata (amazon-ec2-utils) uses IMDSv2"


@dataclass
class _Env:
    values: Dict[str, str] = field(default_factory=dict)
    lists: Dict[str, List[str]] = field(default_factory=dict)
    lines: Dict[str, Set[int]] = field(default_factory=dict)  # where a value naming an address was set
    functions: Dict[str, List[Tuple[int, str]]] = field(default_factory=dict)
    called: Set[str] = field(default_factory=set)
    fetched: Dict[str, int] = field(default_factory=dict)  # variable -> index of the access it captured
    loops: Set[str] = field(default_factory=set)  # loop variables: a line using one is read once per value
    from_args: Set[str] = field(default_factory=set)  # variables set from a function's arguments
    args: Optional[List[str]] = None  # a function's positional parameters

    def copy_for_call(self, args: List[str]) -> _Env:
        return _Env(dict(self.values), dict(self.lists), dict(self.lines), self.functions, self.called,
                    dict(self.fetched), set(self.loops), set(), args)

    def set(self, name: str, value: str, span: Set[int], used: Set[str]) -> None:
        if len(value) > MAX_VARIABLE:
            self.values.pop(name, None)  # too long to be a URL: treated as unknown
            return
        self.values[name] = value
        self.lists.pop(name, None)
        lines = set(span) if ADDRESS.search(value) else set()
        for other in used:
            lines |= self.lines.get(other, set())
        self.lines[name] = lines


def _runs_command(value: str) -> bool:
    """`VAR=value cmd args` (or `ExecStart=/usr/bin/curl ...` in a unit a heredoc writes):
    an unquoted space after the value means a command follows."""
    if value[:1] == "(":
        return False
    return bool(re.search(r"\s\S", _without_quoted(value).strip() if value[:1] not in "'\"" else
                          _without_quoted(value)))


def _strip_comment(line: str) -> str:
    if line.lstrip().startswith("#"):
        return ""
    return re.split(r"(?<=\s)#", line, maxsplit=1)[0]


def expand(text: str, env: _Env) -> Tuple[List[str], Set[str], List[str]]:
    """The text with known variables substituted: one variant per value of a loop variable or
    array element used in it. Returns the variants, the names used, and the names left as they
    were. Each variant grows by at most MAX_VARIABLE * 16 characters: `B=$A$A$A...` and
    `C=$B$B$B...` would otherwise double and redouble."""
    names = {m.group("b") or m.group("n") for m in _VAR.finditer(text)}
    looped = sorted(n for n in names if n in env.loops and len(env.lists.get(n, ())) > 1)
    choices: List[Dict[str, str]] = [{}]
    for name in looped:
        choices = [{**c, name: v} for c in choices for v in env.lists[name]][:MAX_VARIANTS]
    used: Set[str] = set()
    unresolved: List[str] = []
    variants = []
    for choice in choices:
        room = [MAX_VARIABLE * 16]

        def replace(match: re.Match[str], choice: Dict[str, str] = choice, room: List[int] = room) -> str:
            name = match.group("b") or match.group("n")
            index = match.group("index") or ""
            value: Optional[str]
            if name.isdigit() or name in "@*":
                args = env.args
                if args is None:
                    value = None
                elif name in "@*":
                    value = " ".join(args)
                else:
                    value = args[int(name) - 1] if 0 < int(name) <= len(args) else ""
            elif name in choice:
                value = choice[name]
            elif name in env.loops and env.lists.get(name):
                value = env.lists[name][0]
            elif name in env.lists and index in ("[@]", "[*]", "") and name not in env.loops:
                value = " ".join(env.lists[name]) if index else env.lists[name][0] if env.lists[name] else ""
            elif name in env.lists and index == "[0]":
                value = env.lists[name][0] if env.lists[name] else ""
            else:
                value = env.values.get(name)
            if value is None and match.group("op"):
                value = match.group("op").lstrip(":")[1:]
            if value is not None and len(value) <= room[0]:
                room[0] -= len(value)
                used.add(name)
                return value
            unresolved.append(name)
            return match.group(0)

        variants.append(_VAR.sub(replace, text))
    return variants, used, unresolved


def _shell_units(text: str, first_line: int, spans: Dict[int, int], depth: int = 0
                 ) -> Tuple[List[Tuple[int, str]], List[Tuple[str, int, str]]]:
    """Logical lines (continuations joined, array assignments joined, comments removed) with the
    number of their first line, and the code embedded in heredocs for another language. Past
    MAX_HEREDOC_DEPTH a heredoc is not opened (each level would read the rest of the file again):
    its body is read as lines of the shell around it."""
    physical = text.splitlines()
    units: List[Tuple[int, str]] = []
    embedded: List[Tuple[str, int, str]] = []
    index = 0
    if text.lstrip()[:1] in ("{", "["):  # JSON (CloudFormation): script lines are strings ending in \n
        for number, line in enumerate(physical, first_line):
            for part in line.replace('\\"', '"').split("\\n"):
                units.append((number, _strip_comment(part.strip().lstrip('",[ '))))
            spans[number] = number
        return units, embedded
    while index < len(physical):
        start = index
        line = _strip_comment(physical[index])
        while line.rstrip().endswith("\\") and index + 1 < len(physical):
            index += 1
            line = line.rstrip()[:-1] + " " + _strip_comment(physical[index]).lstrip()
        assign = _ASSIGN.match(line)
        if assign and assign.group(2).startswith("(") and line.count("(") > line.count(")"):
            while line.count("(") > line.count(")") and index + 1 < len(physical):
                index += 1
                line += " " + _strip_comment(physical[index]).strip()
        units.append((first_line + start, line))
        spans[first_line + start] = first_line + index
        index += 1
        heredoc = _HEREDOC.search(line) if depth < MAX_HEREDOC_DEPTH else None
        if heredoc:
            body_start = index
            delimiter = heredoc.group(3)
            while index < len(physical):
                candidate = physical[index].lstrip("\t") if heredoc.group(1) else physical[index]
                if candidate.strip() == delimiter:
                    break
                index += 1
            body = physical[body_start:index]
            index += 1  # the delimiter line
            language = _heredoc_language(line[:heredoc.start()], body)
            if language == "shell":
                inner_units, inner_embedded = _shell_units("\n".join(body), first_line + body_start, spans,
                                                           depth + 1)
                units.extend(inner_units)
                embedded.extend(inner_embedded)
            else:
                embedded.append((language, first_line + body_start, "\n".join(body)))
    return units, embedded


def _heredoc_language(command: str, body: List[str]) -> str:
    first = next((b.strip() for b in body if b.strip()), "")
    if _PYTHON_CMD.search(command) or re.search(r">\s*\S+\.py\b|tee\s+(?:-a\s+)?\S+\.py\b", command) \
            or re.match(r"#!.*python", first):
        return "python"
    if _PWSH_CMD.search(command) or re.search(r">\s*\S+\.ps1\b", command) or re.match(r"#!.*pwsh", first):
        return "powershell"
    return "shell"


def _capture(text: str, position: int) -> Tuple[Optional[str], int]:
    """The variable a command at `position` is captured into (`VAR=$(cmd ...)` with cmd first in
    the substitution, not nested in another command), and where its substitution ends."""
    stack: List[Tuple[str, int]] = []
    low = max(0, position - 1024)  # a command is short: a hostile line costs linear time
    skip_to = -1
    for token in re.finditer(r"\$\(\(|\$\(|[`()']", text[low:position]):
        at, char = low + token.start(), token.group(0)
        if at < skip_to:
            continue
        if char == "'" and not (stack and stack[-1][0] == "`"):
            close = text.find("'", at + 1, position)
            if close == -1:
                break
            skip_to = close + 1
        elif char == "$((":
            stack.append(("(", at))
            stack.append(("(", at))
        elif char == "$(":
            stack.append(("$(", at))
        elif char == "`":
            if stack and stack[-1][0] == "`":
                stack.pop()
            else:
                stack.append(("`", at))
        elif char == "(":
            stack.append(("(", at))
        elif char == ")" and stack:
            stack.pop()
    if not stack or stack[-1][0] == "(":
        return None, -1
    opener, at = stack[-1]
    if not _PREFIX_COMMANDS.fullmatch(text[at + len(opener):position]):
        return None, -1
    assign = _CAPTURED.search(text[max(0, at - 256):at] if at > 256 else text[:at])
    end = _closing(text, at + len(opener), opener)
    return (assign.group(1) if assign else None), end


# `VAR=` where a command starts (not `--filters "Values=$(curl ...)"` inside another command).
_CAPTURED = re.compile(r"(?:^|[;&|({]|\b(?:then|do|else)\s)\s*(?:-\s+)?[\"']?"
                       r"(?:(?:export|local|readonly|declare|typeset)(?:\s+-\w+)*\s+)?([A-Za-z_]\w*)=[\"']?$")
# Commands that run the next one: `$(sudo curl ...)` captures curl's output.
_PREFIX_COMMANDS = re.compile(r"\s*(?:(?:sudo(?:\s+-\S+)*|command|exec|nice|nohup|timeout(?:\s+-\S+)*\s+\S+"
                              r"|(?:/usr/bin/)?env(?:\s+\w+=\S*)*|\w+=\S*)\s+)*(?:/[\w.-]+)*/?")  # /usr/bin/curl


def _closing(text: str, start: int, opener: str) -> int:
    if opener == "`":
        end = text.find("`", start, start + _WINDOW)
        return end if end != -1 else min(len(text), start + _WINDOW)
    depth, i, stop = 1, start, min(len(text), start + _WINDOW)
    while i < stop:
        if text.startswith("$(", i):
            depth += 1
            i += 2
            continue
        if text[i] == "(":
            depth += 1
        elif text[i] == ")":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    return stop


def _words(text: str) -> List[str]:
    try:
        return shlex.split(text)
    except ValueError:
        return text.split()


class ShellReader:
    """One shell text: its variables, functions, loops, and every command naming IMDS."""

    def __init__(self, text: str, first_line: int = 1) -> None:
        self.text = text
        self.first_line = first_line
        self.read = Read()
        self.spans: Dict[int, int] = {}  # a logical line's first physical line -> its last
        self.call_lines = 0
        self.seen: Set[Access] = set()

    def run(self) -> Read:
        units, embedded = _shell_units(self.text, self.first_line, self.spans)
        env = _Env()
        self._lines(units, env, depth=0, call=None)
        for name, body in env.functions.items():
            if name not in env.called:  # never called here: read the body as it is
                self._lines(body, _Env(dict(env.values), dict(env.lists), dict(env.lines), env.functions,
                                       env.called, loops=set(env.loops)), 0, None)
        for language, start, code in embedded:
            self.read.merge(read_language(language, code, start))
        return self.read

    def _lines(self, units: List[Tuple[int, str]], env: _Env, depth: int,
               call: Optional[Tuple[int, Optional[str]]]) -> List[Access]:
        """Read logical lines; inside a function call, findings are reported at the call's line."""
        produced: List[Access] = []
        index = 0
        while index < len(units):
            number, code = units[index]
            index += 1
            if not code.strip():
                continue
            function = _FUNCTION.match(code)
            if function and not code.lstrip().startswith(("if ", "while ", "for ")):
                name = function.group(1) or function.group(2)
                body, index = _function_body(units, index - 1, function.end())
                if len(env.functions) < MAX_FUNCTIONS or name in env.functions:
                    env.functions[name] = body
                else:
                    produced.extend(self._lines(body, env, depth, call))  # not followed: read as it stands
                continue
            loop = _FOR.match(code)
            if loop:
                name, words = loop.group(1), loop.group(2)
                env.values.pop(name, None)
                env.lists.pop(name, None)
                env.loops.discard(name)
                array = re.fullmatch(r"\"?\$\{(\w+)\[[@*]\]\}\"?", words.strip())
                if "$(" in words or "`" in words:  # values from a command: read it as one
                    produced.extend(self._line(number, words, env, depth, call))
                    used = set()
                elif array and array.group(1) in env.lists:
                    env.lists[name] = list(env.lists[array.group(1)])
                    used = {array.group(1)}
                else:
                    variants, used, _ = expand(words, env)
                    env.lists[name] = [w for v in variants for w in _words(v)][:MAX_VARIANTS]
                if name in env.lists:
                    env.loops.add(name)
                env.lines[name] = set().union(*(env.lines.get(u, set()) for u in used)) if used else set()
                if ADDRESS.search(words):
                    env.lines[name].add(number)
                if not loop.group(3).strip():
                    continue
                code = loop.group(3)
            produced.extend(self._line(number, code, env, depth, call))
        return produced

    def _line(self, number: int, code: str, env: _Env, depth: int,
              call: Optional[Tuple[int, Optional[str]]]) -> List[Access]:
        names = set(re.findall(r"\$\{?([A-Za-z_]\w*|[0-9@*])", code))
        from_args = any(n.isdigit() or n in "@*" or n in env.from_args for n in names)
        # Inside a function: reported where the function is called when the call's arguments make
        # the URL, else on the function's own line.
        at = call[0] if call and from_args else number
        assign = _ASSIGN.match(code)
        span = set(range(number, self.spans.get(number, number) + 1))
        if assign and "$(" not in assign.group(2) and "`" not in assign.group(2) \
                and not _runs_command(assign.group(2)):
            value = assign.group(2).strip()
            self._derive(assign.group(1), value, env)
            name = assign.group(1)
            env.loops.discard(name)
            if from_args:
                env.from_args.add(name)
            if value.startswith("(") and value.endswith(")"):
                variants, used, _ = expand(value[1:-1], env)
                env.lists[name] = _words(variants[0])
                env.values.pop(name, None)
                lines = set(span) if ADDRESS.search(value) else set()
                env.lines[name] = lines.union(*(env.lines.get(u, set()) for u in used))
            else:
                variants, used, _ = expand(value.strip("'\"") if value[:1] != "'" else value[1:-1], env)
                env.set(name, variants[0], span, used)
                proxy = _NOT_ACCESS.search(code)
                if proxy and not call and ADDRESS.search(variants[0]):
                    self.read.covered |= span
                    self.read.add(Access(number, REFERENCE, proxy.group(0).strip(" =")[:20], None,
                                         note="the IMDS address in a proxy or endpoint setting: not an access"))
            return []
        if assign:
            self._derive(assign.group(1), assign.group(2), env)
        produced: List[Access] = []
        variants, used, unresolved = expand(code, env)
        reference_lines = set(span)
        for name in used:
            reference_lines |= env.lines.get(name, set())
        called = self._calls(number, code, env, depth, call)
        produced.extend(called)
        for variant in variants:
            for access in self._commands(at, variant, env, unresolved, call):
                produced.append(access)
        if produced:
            self.read.covered |= reference_lines
        elif not call and any(ADDRESS.search(v) for v in variants):
            rule = _NOT_ACCESS.search(code)
            if rule or (_ECHO.match(code) and not re.search(r"[|>]", code.replace(">&2", ""))):
                self.read.covered |= reference_lines
                what = "a firewall rule, a ping, or a proxy or endpoint setting" if rule else "text the script prints"
                word = (rule.group(0) if rule else _ECHO.match(code).group(0)).strip(" -=")  # type: ignore[union-attr]
                self.read.add(Access(at, REFERENCE, word, None, note=f"the IMDS address in {what}: not an access"))
        for access in produced:
            if access.variable == "":
                access = _replace(access, variable=None)
            if not call and access not in self.seen:  # a function called twice the same way: one access
                self.seen.add(access)
                if access.variable:
                    env.fetched[access.variable] = len(self.read.accesses)  # for REGION=${AZ%?} later
                self.read.add(access)
        return produced

    def _derive(self, variable: str, value: str, env: _Env) -> None:
        """VAR computed from a variable that captured a fetched value: the access gains it."""
        inner = value.strip().strip("\"'")
        if inner.startswith("$(") or inner.startswith("`"):
            inner = inner[2:] if inner.startswith("$(") else inner[1:]
            # Only a transform of the value: echo/printf it into a pipeline, or feed it with <<<.
            if not re.match(r"\s*(?:echo|printf)\b[^|]*\|", inner) and "<<<" not in inner:
                return
        elif not re.match(r"\$\{?[A-Za-z_]\w*(?:\}|[%#:/^,][^}]*\})?$", inner):
            return
        for name in set(re.findall(r"\$\{?([A-Za-z_]\w*)", value)) & set(env.fetched):
            index = env.fetched[name]
            if index >= len(self.read.accesses):
                continue
            source = self.read.accesses[index]
            rest = value.split("|", 1)[1] if "|" in value else ""
            shape = re.sub(r"^[\"']|[\"']$", "", value.strip())
            if shape in (f"${name}", f"${{{name}}}"):
                derived = Derived(variable, source.path or "", source.key)
            elif source.path and source.path.endswith("placement/availability-zone") and is_az_trim(value):
                derived = Derived(variable, "meta-data/placement/region")
            else:
                path, key, _, note = transform(source.path, [rest] if rest else [value])
                derived = Derived(variable, path or "", key, note)
            self.read.accesses[index] = _replace(source, derived=(*source.derived, derived))
            return

    def _calls(self, number: int, code: str, env: _Env, depth: int,
               call: Optional[Tuple[int, Optional[str]]]) -> List[Access]:
        produced: List[Access] = []
        if depth >= MAX_CALL_DEPTH:
            return produced
        if not env.functions or not any(name in code for name in env.functions):
            return produced
        for name, body in env.functions.items():
            if name not in code:
                continue
            pattern = r"(?:^|(?<=[\s;&|(`]))" + re.escape(name) + r"(?=\s|$|[;)|&`])"
            for match in re.finditer(pattern, code):
                self.call_lines += len(body)
                if self.call_lines > MAX_CALL_LINES:
                    raise Refused(f"more than {MAX_CALL_LINES} lines read for shell function calls; "
                                  "the rest was not scanned")
                end = re.compile(r"[;|&)`]").search(code, match.end())
                arg_text = code[match.end(): end.start() if end else len(code)]
                variants, used, _ = expand(arg_text, env)
                capture, _ = _capture(code, match.start())
                for variant in variants:
                    args = _words(variant)
                    env.called.add(name)
                    inner = env.copy_for_call(args)
                    results = self._lines(body, inner, depth + 1, (number, capture))
                    for access in results:  # "" marks a variable decided by an inner call: none
                        produced.append(_replace(access, variable=(capture or "") if access.variable is None
                                                 else access.variable))
                    if results:
                        self.read.covered |= {n for first, _ in body
                                              for n in range(first, self.spans.get(first, first) + 1)}
                        self.read.covered |= set(range(number, self.spans.get(number, number) + 1))
                        for used_name in used:
                            self.read.covered |= env.lines.get(used_name, set())
        return produced

    def _commands(self, at: int, text: str, env: _Env, unresolved: List[str],
                  call: Optional[Tuple[int, Optional[str]]]) -> Iterator[Access]:
        tools = list(_TOOL.finditer(text))
        starts = [t.start() for t in tools]
        for match in URL.finditer(text):
            tool = _tool_before(text, tools, starts, match.start())
            if tool is None:
                python = _PYTHON_C.search(text)
                if python and python.start() < match.start() < python.end():
                    inner = PythonReader(python.group(2).replace('\\"', '"'), at).run()
                    for access in inner.accesses:
                        yield _replace(access, line=at)
                continue
            yield self._classify(at, text, tool, match, env, call)
        for helper in _HELPER.finditer(text):
            yield self._helper(at, text, helper, env, call)

    def _classify(self, at: int, text: str, tool: re.Match[str], url: re.Match[str], env: _Env,
                  call: Optional[Tuple[int, Optional[str]]]) -> Access:
        end = _SEPARATOR.search(text, url.end(), url.end() + _WINDOW)
        command = text[tool.start(): end.start() if end else url.end() + _WINDOW]
        path = url_path(text, url)
        note = ""
        if TOKEN_HEADER.search(command) or (path == "api/token" and (
                _SHELL_PUT.search(command) or TTL_HEADER.search(command))):
            kind = IMDSV2
        else:
            opaque = _opaque_words(command, url.group(0))
            if opaque:
                kind = UNKNOWN
                note = f"{tool.group(1)}'s options include {opaque}, which the scanner cannot see into"
            else:
                kind = IMDSV1
        variable, close = _capture(text, tool.start())
        stages: List[str] = []
        if close != -1:
            stages = _pipeline(text[url.end(): close])
        elif end and text[end.start()] == "|" and not text.startswith("||", end.start()):
            stages = _pipeline(text[end.start(): end.start() + _WINDOW])
        _, key, region, change = transform(path, stages)
        if kind != IMDSV1:
            key, region, change = None, False, ""
        access = Access(at, kind, tool.group(1), path, variable, key, region,
                        "; ".join(n for n in (note, change) if n))
        return access

    def _helper(self, at: int, text: str, helper: re.Match[str], env: _Env,
                call: Optional[Tuple[int, Optional[str]]]) -> Access:
        options = helper.group(2).split()
        if helper.group(1) == "ec2-metadata":
            return Access(at, IMDSV2, "ec2-metadata", None, note=_AL_HELPER)
        paths = [_EC2METADATA_PATHS.get(o) for o in options]
        path = paths[0] if len(paths) == 1 else None
        variable, close = _capture(text, helper.start(1))
        stages = _pipeline(text[helper.end(): close]) if close != -1 else []
        new_path, key, region, change = transform(path, stages)
        return Access(at, IMDSV1, "ec2metadata", path, variable, key, region,
                      "; ".join(n for n in (_UBUNTU_HELPER, change) if n))


def _replace(access: Access, **changes: object) -> Access:
    import dataclasses

    return dataclasses.replace(access, **changes)  # type: ignore[arg-type]


def _function_body(units: List[Tuple[int, str]], index: int, body_at: int) -> Tuple[List[Tuple[int, str]], int]:
    """The logical lines of the function defined at units[index], and the index after it."""
    number, code = units[index]
    rest = code[body_at:]
    seen = code[:body_at].rstrip().endswith("{")
    depth = (1 if seen else 0) + _braces(rest)
    seen = seen or "{" in rest
    body: List[Tuple[int, str]] = [(number, rest)] if rest.strip() else []
    index += 1
    while index < len(units) and not (seen and depth <= 0):
        number, line = units[index]
        depth += _braces(line)
        seen = seen or "{" in line
        body.append((number, line))
        index += 1
    return body, index


def _braces(line: str) -> int:
    line = re.sub(r"\$\{[^}]*\}", "", _without_quoted(line))
    return line.count("{") - line.count("}")


def _tool_before(text: str, tools: List[re.Match[str]], starts: List[int],
                 position: int) -> Optional[re.Match[str]]:
    """The curl or wget whose command holds the URL at `position`: the nearest before it, in
    the same command (no `|`, `;`, `&&` between) and within _WINDOW characters."""
    import bisect

    index = bisect.bisect_right(starts, position)
    if not index:
        return None
    tool = tools[index - 1]
    if position - tool.start() > _WINDOW:
        return None
    if re.search(r"\|\|?|;|&&", _without_quoted(text[tool.end(): position])):
        return None
    return tool


def _without_quoted(text: str) -> str:
    return re.sub(r"'[^']*'|\"[^\"]*\"", "", text)


def _pipeline(text: str) -> List[str]:
    """The stages after the first `|` in a command's text (quotes respected)."""
    stages, current, quote, depth = [], "", "", 0
    for at, char in enumerate(text):
        if quote:
            current += char
            if char == quote:
                quote = ""
            continue
        if char in "'\"":
            quote = char
        elif char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        elif char == "|" and depth <= 0 and text.startswith("||", at):
            break  # `|| echo unknown`: what runs when the fetch fails
        elif char == "|" and depth <= 0 and at and text[at - 1] == "|":
            break
        elif char == "|" and depth <= 0:
            stages.append(current)
            current = ""
            continue
        elif char in ";&" and depth <= 0:
            break
        current += char
    stages.append(current)
    piped = [s for s in stages[1:] if s.strip() and s.strip() != "|"]
    return [s for s in piped if not re.match(r"^\s*\|", s)]


def _opaque_words(command: str, url: str) -> str:
    """Words of a command that are a variable the scanner could not resolve, where the value could
    change the request (a header, options): `$CURL_OPTS`, `"${ARGS[@]}"`, `-H "$HDR"`."""
    words = _words(command.replace(url, " URL ", 1))
    for previous, word in zip(["", *words], words):
        if re.fullmatch(r"\$\{?[A-Za-z_@*0-9]\w*(?:\[[@*]\])?\}?|\$\(.*\)|`.*`", word):
            if previous in _VALUE_OPTIONS:
                continue
            return word
        if re.fullmatch(r"--?[\w-]+=\$\{?\w+\}?", word) and word.split("=")[0] not in _VALUE_OPTIONS:
            return word
    return ""


# -- Python and PowerShell -------------------------------------------------------------------------------
_PY_TOOLS = re.compile(r"requests|urlopen|urllib|Request\(|HTTPConnection|httplib|http\.client|\.get\(|\.put\("
                       r"|\.post\(|\.request\(|\.head\(|\bfetch\w*\(|urlretrieve|pycurl|aiohttp|httpx|session", re.I)
_PY_HEADER_INDIRECT = re.compile(r"headers|Request\(|add_header|\*\*|session|opener|putheader", re.I)
_PS_TOOLS = re.compile(r"Invoke-RestMethod|Invoke-WebRequest|\birm\b|\biwr\b|Download(?:String|File|Data)"
                       r"|WebClient|WebRequest\]::Create|HttpClient|Get(?:String)?Async|\bcurl\b|\bwget\b"
                       r"|Start-BitsTransfer", re.I)


@dataclass
class _Statement:
    start: int
    end: int
    text: str  # flattened: known names substituted, string pieces joined
    indent: int
    used: Set[str]


class PythonReader:
    """Python 2 or 3, read as tokens so that a file Python 3 cannot parse is still read."""

    comment = "#"

    def __init__(self, text: str, first_line: int = 1) -> None:
        self.text = text
        self.first_line = first_line
        self.read = Read()
        self.strings: Dict[str, str] = {}
        self.raws: Dict[str, str] = {}
        self.lines: Dict[str, Set[int]] = {}

    def statements(self) -> Iterator[Tuple[int, int, int, List[Tuple[str, str]]]]:
        """(first line, last line, indent, tokens) per statement; tokens are (kind, text)."""
        import tokenize

        lines = self.text.splitlines(True)
        tokens: List[Tuple[str, str]] = []
        start = end = indent = 0
        fstring: List[object] = []
        try:
            for tok in tokenize.generate_tokens(io.StringIO(self.text).readline):
                kind = tokenize.tok_name[tok.type]
                if kind == "FSTRING_START" or fstring:
                    fstring.append(tok)
                    if kind == "FSTRING_START" and len(fstring) > 1:
                        fstring.append("nested")
                    if kind == "FSTRING_END" and fstring.count("nested") == 0:
                        first = fstring[0]
                        source = _slice(lines, first.start, tok.end)  # type: ignore[attr-defined]
                        if not tokens:
                            start, indent = first.start[0], first.start[1]  # type: ignore[attr-defined]
                        tokens.append(("STRING", source))
                        end = tok.end[0]
                        fstring = []
                    elif kind == "FSTRING_END":
                        fstring.remove("nested")
                    continue
                if kind == "COMMENT":
                    self.read.quiet.add(self.first_line + tok.start[0] - 1) if not lines[
                        tok.start[0] - 1][:tok.start[1]].strip() else None
                    continue
                if kind in ("NEWLINE", "ENDMARKER"):
                    if tokens:
                        yield start, end, indent, tokens
                    tokens = []
                    continue
                if kind in ("NL", "INDENT", "DEDENT"):
                    continue
                if not tokens:
                    start, indent = tok.start[0], tok.start[1]
                tokens.append((kind, tok.string))
                end = tok.end[0]
        except (tokenize.TokenError, IndentationError, SyntaxError):
            if tokens:
                yield start, end, indent, tokens
            yield from self._rest_by_lines(end + 1 if tokens else start)

    def _rest_by_lines(self, from_line: int) -> Iterator[Tuple[int, int, int, List[Tuple[str, str]]]]:
        """After a tokenizer error (an unterminated string, a stray character): line by line."""
        for number, line in enumerate(self.text.splitlines()[max(from_line - 1, 0):], max(from_line, 1)):
            code = _without_comment(line, "#")
            if code.strip():
                pieces = re.findall(r"[rRuUbBfF]{0,2}(?:'[^']*'|\"[^\"]*\")|\w+|\S", code)
                tokens = [("STRING" if re.match(r"[rRuUbBfF]{0,2}['\"]", p) else "NAME" if re.match(r"\w", p)
                           else "OP", p) for p in pieces]
                yield number, number, len(line) - len(line.lstrip()), tokens

    def run(self) -> Read:
        statements: List[_Statement] = []
        for start, end, indent, tokens in self.statements():
            if len(tokens) == 1 and tokens[0][0] == "STRING":  # a docstring
                self.read.quiet |= set(range(self.first_line + start - 1, self.first_line + end))
                continue
            text, used = self.flatten(tokens)
            statement = _Statement(self.first_line + start - 1, self.first_line + end - 1, text, indent, used)
            statements.append(statement)
            self.assign(statement, tokens)
        self.blocks(statements)
        connections: Dict[str, int] = {}
        for index, statement in enumerate(statements):
            self.accesses(statement, statements, index, connections)
        return self.read

    def blocks(self, statements: List[_Statement]) -> None:
        """In one pass: each statement's enclosing function, each function's text, and the text
        of each function by name (for calls to it)."""
        self.enclosing: List[Optional[int]] = []
        texts: Dict[int, List[str]] = {}
        self.functions: Dict[str, str] = {}
        stack: List[Tuple[int, int]] = []  # (indent, index of the def)
        for index, statement in enumerate(statements):
            while stack and stack[-1][0] >= statement.indent:
                stack.pop()
            self.enclosing.append(stack[-1][1] if stack else None)
            for _, owner in stack:
                texts[owner].append(statement.text)
            define = re.match(r"(?:async\s+)?def\s+(\w+)", statement.text)
            if define:
                stack.append((statement.indent, index))
                texts[index] = [statement.text]
        self.scope_texts = {index: "\n".join(lines) for index, lines in texts.items()}
        for index in texts:
            name = re.match(r"(?:async\s+)?def\s+(\w+)", statements[index].text).group(1)  # type: ignore[union-attr]
            self.functions.setdefault(name, "\n".join(texts[index][1:]))
        self.module_text = "\n".join(s.text for s in statements)
        self.token_in_scope: Dict[int, bool] = {}
        self.clients = set(re.findall(
            r"(?<![\w.])((?:self\.)?\w+)\.headers(?:\.update\(|\[)[^\n]*x-aws-ec2-metadata-token(?![\w-])",
            self.module_text, re.I))

    def assign(self, statement: _Statement, tokens: List[Tuple[str, str]]) -> None:
        match = re.match(r"^((?:self\.)?[A-Za-z_]\w*)\s*(?::[^=]+)?=(?!=)\s*(.*)$", statement.text, re.S)
        if not match:
            return
        name, value = match.group(1), match.group(2).strip()
        lines = set(range(statement.start, statement.end + 1)) if ADDRESS.search(value) else set()
        for used in statement.used:
            lines |= self.lines.get(used, set())
        string = re.fullmatch(r'"([^"]*)"', value)
        if string and len(string.group(1)) <= MAX_VARIABLE:
            self.strings[name] = string.group(1)
            self.lines[name] = lines
        elif re.match(r"\{|dict\(", value) and TOKEN_HEADER.search(value) and len(value) <= MAX_VARIABLE:
            self.raws[name] = value  # a headers dict: inlined where it is passed
            self.strings.pop(name, None)
            self.lines[name] = lines
        else:
            self.strings.pop(name, None)

    def flatten(self, tokens: List[Tuple[str, str]]) -> Tuple[str, Set[str]]:
        """The statement with string literals as "value", known names substituted, `+`, `%`,
        .format() and os.path.join of strings done; an unknown part is `{name}`."""
        items: List[Tuple[str, str]] = []
        used: Set[str] = set()
        i = 0
        while i < len(tokens):
            kind, text = tokens[i]
            if kind == "NAME" and i + 2 < len(tokens) and tokens[i + 1][1] == "." and text == "self":
                text = f"self.{tokens[i + 2][1]}"
                i += 2
            if kind == "STRING":
                items.append(("s", self.literal(text, used)))
            elif kind == "NAME" and text in self.strings and not (items and items[-1][1] == "."):
                items.append(("s", self.strings[text]))
                used.add(text)
            elif kind == "NAME" and text in self.raws and not (items and items[-1][1] == "."):
                items.append(("o", self.raws[text]))
                used.add(text)
            else:
                items.append(("n" if kind == "NAME" else "o", text))
            i += 1
        items = _combine(items)
        out = ""
        for kind, text in items:
            word = f'"{text}"' if kind == "s" else text
            if out and kind in "sn" and (out[-1].isalnum() or out[-1] in "_\""):
                out += " "
            out += word
        return out, used

    def literal(self, source: str, used: Set[str]) -> str:
        prefix = re.match(r"[A-Za-z]*", source).group(0)  # type: ignore[union-attr]
        body = source[len(prefix):]
        quote = body[:3] if body[:3] in ('"""', "'''") else body[:1]
        inner = body[len(quote):-len(quote)] if len(body) >= 2 * len(quote) else body
        if "f" in prefix.lower():
            def field_value(match: re.Match[str]) -> str:
                name = re.split(r"[!:]", match.group(1))[0].strip()
                if name in self.strings:
                    used.add(name)
                    return self.strings[name]
                return "{" + name + "}"

            inner = re.sub(r"(?<!\{)\{([^{}]*)\}(?!\})", field_value, inner)
        return inner.replace('"', "'")

    def accesses(self, statement: _Statement, statements: List[_Statement], index: int,
                 connections: Dict[str, int]) -> None:
        text = statement.text
        lines = set(range(statement.start, statement.end + 1))
        for used in statement.used:
            lines |= self.lines.get(used, set())
        connection = re.search(r"(?<![\w.])([A-Za-z_][\w.]*)\s*=\s*[\w.]*HTTPS?Connection\s*\(\s*\"(" + _HOSTS + r")",
                                text, re.I)
        if connection:
            connections[connection.group(1)] = statement.start
            return
        for name, _ in list(connections.items()):
            request = re.search(re.escape(name) + r"\s*\.\s*request\s*\(\s*\"(\w+)\"\s*,\s*\"([^\"]*)\"", text)
            if request:
                self.read.covered |= lines | {connections[name]}
                self.read.add(Access(statement.start, self.kind(text, statements, index, request.group(2),
                                                                request.group(1)), "http.client",
                                     latest_path(request.group(2))))
        if re.match(r"^(?:self\.)?[A-Za-z_]\w*\s*(?::[^=]+)?=(?!=)\s*\"[^\"]*\"\s*$", text):
            return  # a name given a URL: the access is where it is used
        for url in URL.finditer(text):
            path = latest_path(url.group("path"))
            shell = _TOOL.search(text)
            if shell:
                command = " ".join(re.findall(r'"([^"]*)"', text))  # the command, or the argument list
                inner = ShellReader(command).run()
                for access in inner.accesses:
                    self.read.add(_replace(access, line=statement.start, variable=None))
                if inner.accesses:
                    self.read.covered |= lines
                break
            tool = _PY_TOOLS.search(text)
            local = self.local_function(text, statements)
            if not tool and local is None:
                _setting(self.read, statement.start, text, lines)
                break
            if not tool and local is not None:
                kind = IMDSV2 if TOKEN_HEADER.search(local) else IMDSV1 if _PY_TOOLS.search(local) else UNKNOWN
                name = "python"
            else:
                kind = self.kind(text, statements, index, url.group("path") or "", "")
                name = "requests" if re.search(r"requests|session|\.get\(|\.put\(", text, re.I) else \
                    "http.client" if re.search(r"HTTPConnection|httplib|http\.client", text) else "urllib"
            note = ""
            if kind == UNKNOWN:
                note = "the headers come from a name the scanner cannot see into" if local is None else \
                    "passed to a function that fetches nothing the scanner can see"
            self.read.covered |= lines
            key, region = _reading(path, text[url.end():], r"^[^\[]*\)\s*\[\s*\"(\w+)\"\s*\]" if "json" in text
                                   else r"(?!)")
            access = Access(statement.start, kind, name, path, key=key if kind == IMDSV1 else None,
                            region_from_az=region and kind == IMDSV1, note=note)
            for at_call in self.per_call(access, index, statements) or [access]:
                self.read.add(at_call)

    def per_call(self, access: Access, index: int, statements: List[_Statement]) -> List[Access]:
        """An access whose path is a parameter of its function (`BASE + path` in `def md(path)`),
        once per call of that function with a string there, reported on the calling line."""
        owner = self.enclosing[index]
        if owner is None or not access.path:
            return []
        define = re.match(r"(?:async\s+)?def\s+(\w+)\s*\(([^)]*)\)", statements[owner].text)
        if not define:
            return []
        params = [re.split(r"[:=]", p)[0].strip(" *") for p in define.group(2).split(",")]
        params = [p for p in params if p and p not in ("self", "cls")]
        holes = [p for p in params if "{" + p + "}" in access.path]
        if len(holes) != 1:
            return []
        position = params.index(holes[0])
        found = []
        for statement in statements:
            # name(...), self.name(...) or Obj().name(...), never requests.get(...)
            for call in re.finditer(r"(?:(?<![\w.])|(?<=self\.)|(?<=\)\.))" + define.group(1) + r"\(([^()]*)\)",
                                    statement.text):
                args = [a.strip() for a in call.group(1).split(",")]
                if position < len(args) and re.fullmatch(r'"[^"{}]*"', args[position]):
                    path = access.path.replace("{" + holes[0] + "}", args[position][1:-1])
                    found.append(_replace(access, line=statement.start, path=path))
                    self.read.covered |= set(range(statement.start, statement.end + 1))
        return found

    def local_function(self, text: str, statements: List[_Statement]) -> Optional[str]:
        """The body of a function defined in this file that the statement calls, if any."""
        for call in re.finditer(r"(?:(?<![\w.])|(?<=self\.))([A-Za-z_]\w*)\s*\(", text):
            if call.group(1) in self.functions:
                return self.functions[call.group(1)]
        return None

    def kind(self, text: str, statements: List[_Statement], index: int, url_path: str, method: str) -> str:
        if TOKEN_HEADER.search(text):
            return IMDSV2
        if "api/token" in url_path and (re.search(r"\.put\s*\(|\"PUT\"|method\s*=\s*\"PUT\"", text, re.I)
                                        or TTL_HEADER.search(text) or method.upper() == "PUT"):
            return IMDSV2
        if _PY_HEADER_INDIRECT.search(text) and self.scope_has_token(index):
            return IMDSV2
        if any(re.search(r"(?<![\w.])" + re.escape(client) + r"\.", text) for client in self.clients):
            return IMDSV2  # a session whose headers carry the token
        if re.search(r"headers\s*=\s*\{?(?:self\.)?[A-Za-z_]", text) and not re.search(r"headers\s*=\s*\{\s*\"",
                                                                                        text):
            return UNKNOWN
        return IMDSV1

    def scope_has_token(self, index: int) -> bool:
        """Whether the enclosing function (or the whole file, at module level) sends the token."""
        owner = self.enclosing[index]
        key = -1 if owner is None else owner
        if key not in self.token_in_scope:
            text = self.module_text if owner is None else self.scope_texts[owner]
            self.token_in_scope[key] = bool(TOKEN_HEADER.search(text))
        return self.token_in_scope[key]


def _setting(read: Read, line: int, text: str, lines: Set[int]) -> None:
    """An address in a proxy or endpoint setting: listed as a reference, not an access."""
    setting = _NOT_ACCESS.search(text)
    if setting:
        read.covered |= lines
        read.add(Access(line, REFERENCE, setting.group(0).strip(" =\"'[]"), None,
                        note="the IMDS address in a proxy or endpoint setting: not an access"))


def _reading(path: Optional[str], after: str, key_pattern: str) -> Tuple[Optional[str], bool]:
    """What a Python or PowerShell statement reads of the fetched value: (key, region_from_az)."""
    if not path:
        return None, False
    if path.endswith("placement/availability-zone") and is_az_trim(after[:_WINDOW]):
        return None, True
    if _JSON_PATHS.search(path):
        key = re.search(key_pattern, after[:_WINDOW])
        if key and key.group(1) in _DOCUMENT_KEYS:
            return key.group(1), False
    return None, False


def _slice(lines: List[str], start: Tuple[int, int], end: Tuple[int, int]) -> str:
    if start[0] == end[0]:
        return lines[start[0] - 1][start[1]:end[1]]
    return lines[start[0] - 1][start[1]:] + "".join(lines[start[0]:end[0] - 1]) + lines[end[0] - 1][:end[1]]


def _combine(items: List[Tuple[str, str]]) -> List[Tuple[str, str]]:
    """Join string pieces: "a" "b", "a" + x, "%s/x" % y, "{}/x".format(y), join("a", "b")."""
    changed = True
    while changed:
        changed = False
        out: List[Tuple[str, str]] = []
        i = 0
        while i < len(items):
            kind, text = items[i]
            nxt = items[i + 1] if i + 1 < len(items) else ("", "")
            if kind == "s" and nxt[0] == "s":
                out.append(("s", text + nxt[1]))
                i += 2
                changed = True
                continue
            if kind == "s" and nxt == ("o", "+") and i + 3 < len(items) and items[i + 2][0] == "n" \
                    and items[i + 3][1] in ("(", ".", "["):
                end = _call_end(items, i + 2)
                out.append(("s", text + "{" + items[i + 2][1] + "()}"))
                i = end
                changed = True
                continue
            if kind in "sn" and nxt == ("o", "+") and i + 2 < len(items) and items[i + 2][0] in "sn" \
                    and "s" in (kind, items[i + 2][0]) and not (out and out[-1][1] == "."):
                left = text if kind == "s" else "{" + text + "}"
                right = items[i + 2][1] if items[i + 2][0] == "s" else "{" + items[i + 2][1] + "}"
                if not (items[i + 2][0] == "n" and i + 3 < len(items) and items[i + 3][1] in ("(", ".", "[")):
                    out.append(("s", left + right))
                    i += 3
                    changed = True
                    continue
            if kind == "s" and nxt == ("o", "%") and i + 2 < len(items):
                args, skip = _format_args(items, i + 2)
                out.append(("s", re.sub(r"%(?:\(\w+\))?[-#0 +]*\d*(?:\.\d+)?[sdirfx]", _filler(args), text)))
                i += 2 + skip
                changed = True
                continue
            if kind == "s" and nxt == ("o", ".") and i + 3 < len(items) and items[i + 2] == ("n", "format") \
                    and items[i + 3] == ("o", "("):
                args, skip = _format_args(items, i + 3)
                out.append(("s", re.sub(r"\{[^{}]*\}", _filler(args), text)))
                i += 3 + skip
                changed = True
                continue
            if kind == "n" and text in ("join", "urljoin") and nxt == ("o", "(") and i + 4 < len(items) \
                    and items[i + 2][0] == "s" and items[i + 3] == ("o", ",") and items[i + 4][0] == "s" \
                    and (i + 5 >= len(items) or items[i + 5] == ("o", ")")):
                while out and (out[-1][1] == "." or (out[-1][0] == "n" and out[-1][1] in ("os", "path", "posixpath",
                                                                                             "parse", "urllib",
                                                                                             "urlparse"))):
                    out.pop()
                out.append(("s", items[i + 2][1].rstrip("/") + "/" + items[i + 4][1].lstrip("/")))
                i += 6
                changed = True
                continue
            out.append((kind, text))
            i += 1
        items = out
    return items


def _filler(args: List[str]) -> Callable[[re.Match[str]], str]:
    """A re.sub replacement giving the arguments in turn, then `{?}`."""
    values = iter(args)
    return lambda _match: next(values, "{?}")


def _call_end(items: List[Tuple[str, str]], at: int) -> int:
    """The index after a dotted name, its calls and subscripts starting at items[at]."""
    i, depth = at + 1, 0
    while i < len(items):
        text = items[i][1]
        if depth == 0:
            if text == ".":
                i += 2 if i + 1 < len(items) and items[i + 1][0] == "n" else 1
                continue
            if text not in ("(", "["):
                break
        if text in ("(", "["):
            depth += 1
        elif text in (")", "]"):
            depth -= 1
        i += 1
    return i


def _format_args(items: List[Tuple[str, str]], at: int) -> Tuple[List[str], int]:
    """The values of `%` or .format() arguments at items[at]: a single item or a parenthesised
    list. Returns them and how many items they span."""
    def value(item: Tuple[str, str]) -> str:
        return item[1] if item[0] == "s" else "{" + item[1] + "}"

    if items[at] != ("o", "("):
        return [value(items[at])], 1
    depth, i = 0, at
    args: List[List[Tuple[str, str]]] = []
    current: List[Tuple[str, str]] = []
    while i < len(items):
        item = items[i]
        if item[1] in ("(", "[", "{"):
            depth += 1
            if depth == 1:
                i += 1
                continue
        elif item[1] in (")", "]", "}"):
            depth -= 1
            if depth == 0:
                if current:
                    args.append(current)
                break
        elif item == ("o", ",") and depth == 1:
            args.append(current)
            current = []
            i += 1
            continue
        current.append(item)
        i += 1
    values = []
    for arg in args:
        if len(arg) >= 3 and arg[1] == ("o", "="):
            arg = arg[2:]
        values.append(value(arg[0]) if len(arg) == 1 else "{?}")
    return values, i - at + 1


class PowerShellReader:
    """PowerShell: variables, strings that expand them, and the web cmdlets and classes."""

    def __init__(self, text: str, first_line: int = 1) -> None:
        self.text = text
        self.first_line = first_line
        self.read = Read()
        self.values: Dict[str, str] = {}
        self.raws: Dict[str, str] = {}
        self.lines: Dict[str, Set[int]] = {}

    def statements(self) -> Iterator[Tuple[int, int, str]]:
        """(first line, last line, code) per statement: backtick continuations and open
        hashtables or parentheses joined, comments removed."""
        physical = self.text.splitlines()
        index, in_block = 0, False
        while index < len(physical):
            line = physical[index]
            number = self.first_line + index
            if in_block or line.lstrip().startswith("<#"):
                self.read.quiet.add(number)
                in_block = "#>" not in line
                index += 1
                continue
            code = _ps_code(line)
            while index + 1 < len(physical) and (code.rstrip().endswith("`") or _open_hash(code)):
                index += 1
                code = code.rstrip().rstrip("`") + " " + _ps_code(physical[index]).strip()
            yield number, self.first_line + index, code
            index += 1

    def expand(self, text: str) -> Tuple[str, Set[str]]:
        used: Set[str] = set()

        def replace(match: re.Match[str]) -> str:
            name = (match.group(1) or match.group(2)).lower()
            if name in self.values:
                used.add(name)
                return self.values[name]
            if name in self.raws:
                used.add(name)
                return self.raws[name]
            return match.group(0)

        text = re.sub(r"\$\(\s*\$(\w+)\s*\)|\$\{?(?:script:|global:|local:)?(\w+)\}?", lambda m: replace(m)
                      if m.group(1) else replace(m), text)
        text = re.sub(r"[\"']?\s*\+\s*[\"']", "", text)
        return text, used

    def run(self) -> Read:
        statements = list(self.statements())
        whole = "\n".join(code for _, _, code in statements)
        token_anywhere = bool(TOKEN_HEADER.search(whole))
        clients = set(re.findall(r"\$(\w+)\.Headers(?:\.Add\(|\[)\s*['\"]x-aws-ec2-metadata-token['\"]", whole, re.I))
        for number, last, code in statements:
            if not code.strip():
                continue
            assign = re.match(r"^\s*\$(?:script:|global:)?(\w+)\s*=\s*(.+)$", code)
            flat, used = self.expand(code)
            lines = set(range(number, last + 1)).union(*(self.lines.get(u, set()) for u in used))
            if assign:
                value, _ = self.expand(assign.group(2).strip())
                name = assign.group(1).lower()
                string = re.fullmatch(r"[\"']([^\"']*)[\"']", value.strip())
                if string and not _PS_TOOLS.search(value):
                    self.values[name] = string.group(1)
                    self.lines[name] = lines if ADDRESS.search(value) or used else set()
                    continue
                if TOKEN_HEADER.search(value) and not URL.search(value):
                    self.raws[name] = value
                    continue
                self.values.pop(name, None)
            if ADDRESS.search(flat) and not _PS_TOOLS.search(flat):
                _setting(self.read, number, flat, lines)
            for url in URL.finditer(flat):
                tool = _PS_TOOLS.search(flat)
                if not tool:
                    continue
                path = latest_path(url.group("path"))
                if TOKEN_HEADER.search(flat) or (path == "api/token" and (
                        re.search(r"-Method\s+['\"]?PUT|Method\s*=\s*['\"]PUT|\bPUT\b", flat, re.I)
                        or TTL_HEADER.search(flat))):
                    kind = IMDSV2
                elif token_anywhere and (re.search(r"-Headers\s+\$", flat, re.I) or any(
                        re.search(r"\$" + re.escape(client) + r"\b", code, re.I) for client in clients)):
                    kind = IMDSV2
                elif re.search(r"-Headers\s+\$", flat, re.I):
                    kind = UNKNOWN
                else:
                    kind = IMDSV1
                variable = assign.group(1) if assign else None
                self.read.covered |= lines
                key, region = _reading(path, flat[url.end():], r"^[^)]*\)\.(\w+)")
                self.read.add(Access(number, kind, tool.group(0).replace("]::", "."), path, variable,
                                     key if kind == IMDSV1 else None, region and kind == IMDSV1,
                                     note="the headers come from a variable the scanner cannot see into"
                                     if kind == UNKNOWN else ""))
        return self.read


def _ps_code(line: str) -> str:
    if line.lstrip().startswith("#"):
        return ""
    return re.split(r"(?<=\s)#(?!>)", line, maxsplit=1)[0]


def _open_hash(code: str) -> bool:
    return ("@{" in code and code.count("{") > code.count("}")) or code.count("(") > code.count(")")


def read_language(language: str, text: str, first_line: int = 1) -> Read:
    """Findings and attributed lines of one text in a language the scanner reads."""
    if language == "python":
        return PythonReader(text, first_line).run()
    if language == "powershell":
        return PowerShellReader(text, first_line).run()
    return ShellReader(text, first_line).run()
