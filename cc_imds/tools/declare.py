"""The declaration commands: `validate` checks declarations, `plan` shows what `apply` would
write (secrets redacted), `apply` resolves and writes as the cloud-init module does.

Each imports what it uses when it runs: `validate` needs neither the pipeline nor, without
templates, Jinja2 (tests/test_imports.py).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, List

from ..declaration.build import SourceDocument, build_declaration, documents_from_dir, documents_from_file
from ..errors import DeclarationError

if TYPE_CHECKING:
    import argparse

    from ..pipeline import RunOptions


def _documents(args: argparse.Namespace) -> List[SourceDocument]:
    """Drop-ins, then FILE. args.conf_dir is the one directory the parser's options name (or None)."""
    from ..pipeline import gather  # not for validate

    docs = documents_from_file(Path(args.file)) if args.file else []
    merged = gather(conf_dir=args.conf_dir, documents=docs)
    if not merged:
        raise DeclarationError([f"no declaration: give a FILE, or put *.yaml files in {args.conf_dir}"])
    return merged


def _options(args: argparse.Namespace) -> RunOptions:
    from ..files.lock import default_lock_path
    from ..pipeline import RunOptions

    lock = getattr(args, "lock", None) or default_lock_path()  # plan takes no --lock
    return RunOptions(endpoint=args.endpoint, root=getattr(args, "root", None) or "/", lock_path=lock)


def validate_command(args: argparse.Namespace) -> int:
    """Every problem of every FILE (a declaration, or a drop-in directory) on stderr; exit 1 if any."""
    problems: List[str] = []
    for name in args.file:
        path = Path(name)
        try:
            docs = documents_from_dir(path) if path.is_dir() else documents_from_file(path)
            build_declaration(docs)
        except DeclarationError as exc:
            problems.extend(exc.problems)
    for line in problems:
        print(line, file=sys.stderr)
    if not problems:
        print(f"{len(args.file)} declaration(s) valid")
    return 1 if problems else 0


def plan_command(args: argparse.Namespace) -> int:
    """What apply would write, file by file, sensitive values redacted; nothing is written."""
    from ..imds.tree import load_tree
    from ..pipeline import preview

    tree = load_tree(args.metadata) if args.metadata else None
    outputs = preview(_documents(args), _options(args), tree)
    for output in outputs:
        owner = output.owner or "(running user)"
        flag = ", sensitive values redacted" if output.sensitive else ""
        print(f"--- {output.path}  mode {output.mode:04o}  owner {owner}  from {output.origin}{flag}")
        text = output.content.decode("utf-8")
        sys.stdout.write(text if text.endswith("\n") or not text else text + "\n(no newline at end of file)\n")
    return 0


def apply_command(args: argparse.Namespace) -> int:
    """Resolve and write, as the cloud-init module does; one line per output."""
    from ..pipeline import apply

    changes = apply(_documents(args), _options(args))
    for change in changes:
        really = f" -> {change.real_path}" if change.real_path else ""
        print(f"{change.action:9} {change.path}{really} ({change.mode:04o})")
    return 0
