"""`cc-imds scan --suggest`: scripts that copy a role's keys from IMDS into a file.

A script that reads meta-data/iam/security-credentials/ and writes the keys into a file
(a shared credentials file for an agent, a `credential_process` document) does by hand,
once, what a `credentials:` output does and keeps doing before the keys expire. This finds
such files in the script's text and suggests that output instead: its path, its format
(`credentials-file` when the script writes `aws_access_key_id`, `process` when it writes a JSON
document with `"Version"`), and the role when the script names one.

It reads the text only to find where keys go; the IMDS accesses are the scanner's findings.
"""

from __future__ import annotations

import re
from typing import Any, Dict, List, Optional, Sequence, Tuple

CREDENTIALS_DIR = "meta-data/iam/security-credentials/"
_ROLE = re.compile(r"^[A-Za-z0-9_+=,.@-]{1,64}$")
_PATH = r"""["']?(/[A-Za-z0-9_./@+-]+)["']?"""
# Where a shell line sends what it writes: `> FILE`, `>> FILE`, `tee [-a] FILE`, `cat > FILE <<EOF`;
# where Python opens one for writing: open("FILE", "w").
_SHELL_TARGET = re.compile(rf"(?:>>?|\btee\s+(?:-a\s+)?)\s*{_PATH}")
_PYTHON_TARGET = re.compile(r"""\bopen\(\s*["'](/[A-Za-z0-9_./@+-]+)["']\s*,\s*["'][wa]""")
_HEREDOC = re.compile(r"<<-?\s*['\"]?(\w+)['\"]?")
_SHARED_KEYS = re.compile(r"aws_(?:access_key_id|secret_access_key|session_token)")
_PROCESS_KEYS = re.compile(r"[\"']?Version[\"']?\s*:\s*1\b")
# A service the script restarts (or reloads) after it wrote the keys: the output's on_change.
_RESTART = re.compile(r"\bsystemctl\s+(?:--\S+\s+)*(restart|try-restart|reload|reload-or-restart|try-reload-or-restart)"
                      r"\s+([A-Za-z0-9@_.:-]+)")
_KEY_WORDS = re.compile(r"AccessKeyId|SecretAccessKey|SessionToken|\bToken\b|aws_access_key_id|aws_secret_access_key")


def _normalised(path: str) -> bool:
    return not any(part in ("", ".", "..") for part in path.split("/")[1:])


def _writes(text: str) -> List[Tuple[int, str, str]]:
    """(line, path, what is written there) for every file the script writes."""
    lines = text.splitlines()
    found: List[Tuple[int, str, str]] = []
    index = 0
    while index < len(lines):
        number, line = index + 1, lines[index]
        targets = _SHELL_TARGET.findall(line) + _PYTHON_TARGET.findall(line)
        body = line
        heredoc = _HEREDOC.search(line)
        if heredoc:  # what a heredoc writes is the lines up to its delimiter
            end = next((i for i in range(index + 1, len(lines)) if lines[i].strip() == heredoc.group(1)), len(lines))
            body = "\n".join(lines[index:end])
            index = end
        elif targets and "open(" in line:  # Python: what the block under `with open(...)` writes
            body = "\n".join(lines[index:index + 12])
        found.extend((number, target, body) for target in targets
                     if not target.startswith("/dev/") and _normalised(target))
        index += 1
    return found


def _restart_after(text: str, line: int) -> List[str]:
    """The `systemctl` restart or reload the script runs after `line`, as an on_change argv
    (the try- form: a stopped service is left stopped); empty if none."""
    for later in text.splitlines()[line:]:
        found = _RESTART.search(later)
        if found:
            verb, unit = found.groups()
            unit = unit if "." in unit else unit + ".service"
            return ["systemctl", "try-reload-or-restart" if "reload" in verb else "try-restart", unit]
    return []


def credential_outputs(findings: Sequence[Any], text: Optional[str]) -> Tuple[List[Dict[str, Any]], List[str]]:
    """`credentials:` outputs for the files a script writes keys into, and notes for its reader."""
    reads = [f for f in findings if f.path and f.path.startswith(CREDENTIALS_DIR)]
    if not reads or text is None:
        return [], []
    named = {f.path[len(CREDENTIALS_DIR):].rstrip("/") for f in reads} - {""}
    roles = sorted(r for r in named if _ROLE.match(r))
    role = roles[0] if len(roles) == 1 and len(named) == 1 else None
    first = min(f.line for f in reads)
    outputs: List[Dict[str, Any]] = []
    notes: List[str] = []
    for line, path, body in _writes(text):
        if line < first or not _KEY_WORDS.search(body):
            continue
        if _SHARED_KEYS.search(body):
            fmt = "credentials-file"
        elif _PROCESS_KEYS.search(body):
            fmt = "process"
        else:
            notes.append(f"line {line}: the role's keys go into {path} in a form cc-imds does not write; a "
                         "`credentials:` output (format credentials-file or process) may replace it")
            continue
        if any(o["path"] == path for o in outputs):
            continue
        output: Dict[str, Any] = {"path": path, "format": fmt}
        if role:
            output["role"] = role
        restart = _restart_after(text, line)
        if restart:
            output["on_change"] = restart
        outputs.append(output)
        then = ("runs the same restart after each rewrite" if restart else
                "add an on_change that restarts its reader")
        notes.append(f"line {line}: the script copies the role's keys into {path} once; the `credentials:` output "
                     f"below writes them (mode 0600) and `cc-imds watch` rewrites it before they expire: {then} "
                     "(docs/credentials.md)")
    return outputs, notes


def drop_role_documents(values: Dict[str, Any], env_vars: Dict[str, str]) -> List[str]:
    """Take a role's credential documents out of a suggestion that writes them through a
    `credentials:` output: keys in an environment file would be one more copy to keep fresh
    and readable. The listing of roles (not a secret) stays. Returns notes for the reader."""
    notes = []
    for name, spec in list(values.items()):
        path = spec if isinstance(spec, str) else spec["path"]
        if path.startswith(CREDENTIALS_DIR) and path.rstrip("/") != CREDENTIALS_DIR.rstrip("/"):
            del values[name]
            for variable in [v for v, n in env_vars.items() if n == name]:
                del env_vars[variable]
                notes.append(f"{variable}: the role's keys are left out of the environment file: the "
                             "`credentials:` output below holds them")
    return notes
