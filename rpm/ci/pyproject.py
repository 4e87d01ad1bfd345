"""CI only: stand-ins for the helper scripts behind pyproject-rpm-macros and python-rpm-macros,
which Debian's rpmbuild lacks. macros.debian calls them; Amazon Linux 2023 runs the real ones.

They do, for a pure-Python wheel like cc-imds, what the real ones do:
  record        %pyproject_install's RECORD step: the wheel's RECORD as buildroot paths, saved
                as JSON ({"<dist-info>/RECORD": [paths]}) for %pyproject_save_files
  save-files    %pyproject_save_files: the %files lines for the named top-level modules (their
                directories as %dir, each .py with its bytecode glob, the dist-info, License-File
                entries as %license) and the importable module names for %pyproject_check_import
  check-import  %py3_check_import -f: import every listed module (minus -e globs, or only the
                top-level ones with -t) with the current directory off sys.path
Anything they do not cover (`+auto`, extension modules, paths needing quoting) fails loudly.
"""

from __future__ import annotations

import argparse
import csv
import fnmatch
import importlib
import json
import os
import posixpath
import site
import sys
from email.parser import Parser
from pathlib import Path
from typing import Dict, List, Set, Tuple


def record(args: argparse.Namespace) -> None:
    real = Path(args.record)
    in_root = "/" + str(real.relative_to(args.buildroot))
    sitedir = posixpath.dirname(posixpath.dirname(in_root))
    with open(real, newline="", encoding="utf-8") as handle:
        rows = [row[0] for row in csv.reader(handle) if row]
    paths = [posixpath.normpath(posixpath.join(sitedir, row)) for row in rows]
    Path(args.output).write_text(json.dumps({in_root: paths}), encoding="utf-8")


def _module_names(relative: str) -> Set[str]:
    """`pkg/sub/mod.py` -> {pkg, pkg.sub, pkg.sub.mod}; private and invalid names import nothing."""
    if not relative.endswith(".py"):
        return set()
    parts = relative[: -len(".py")].split("/")
    if parts[-1] == "__init__":
        parts.pop()
    if not parts or not all(p.isidentifier() and not p.startswith("_") for p in parts):
        return set()
    return {".".join(parts[: i + 1]) for i in range(len(parts))}


def _files_and_modules(buildroot: str, sitelib: str, python_version: str, record_file: str,
                       globs: List[str]) -> Tuple[List[str], List[str]]:
    (record_path, paths), = json.loads(Path(record_file).read_text(encoding="utf-8")).items()
    distinfo = posixpath.dirname(record_path)
    metadata = Parser().parsestr(Path(buildroot + distinfo, "METADATA").read_text(encoding="utf-8"))
    license_files = set(metadata.get_all("License-File") or [])
    tag = "cpython-" + "".join(python_version.split(".")[:2])
    lines: Set[str] = {f"%dir {distinfo}"}
    by_module: Dict[str, Set[str]] = {}
    names: Set[str] = set()
    for path in paths:
        if any(c in path for c in " \t\n%\"[]"):
            raise SystemExit(f"pyproject.py save-files: {path!r} needs quoting, which this stand-in does not do")
        if path.endswith(".pyc"):
            continue  # bytecode is listed as a glob next to its source
        if path.startswith(distinfo + "/"):
            name = path[len(distinfo) + 1:]
            if name in ("RECORD", "REQUESTED"):
                continue  # removed by %pyproject_install
            licensed = name in license_files or (name.startswith("licenses/") and name[9:] in license_files)
            lines.add(f"%license {path}" if licensed else path)
            continue
        if not path.startswith(sitelib + "/"):
            continue  # scripts and data outside site-packages are only taken with +auto
        relative = path[len(sitelib) + 1:]
        if relative.endswith(".so"):
            raise SystemExit(f"pyproject.py save-files: {path}: extension modules are not covered")
        names |= _module_names(relative)
        top, _, inner = relative.partition("/")
        entries = by_module.setdefault(top[: -len(".py")] if not inner and top.endswith(".py") else top, set())
        entries.add(path)
        if path.endswith(".py"):
            stem = posixpath.basename(path)[: -len(".py")]
            entries.add(f"{posixpath.dirname(path)}/__pycache__/{stem}.{tag}{{,.opt-?}}.pyc")
        if inner:
            parent = posixpath.dirname(path)
            while parent != sitelib:
                entries.add(f"%dir {parent}")
                parent = posixpath.dirname(parent)
            if path.endswith(".py"):
                entries.add(f"%dir {posixpath.dirname(path)}/__pycache__")
    for glob in globs:
        matched = [name for name in by_module if fnmatch.fnmatchcase(name, glob)]
        if not matched:
            raise SystemExit(f"pyproject.py save-files: glob {glob!r} did not match any module")
        for name in matched:
            lines |= by_module[name]
    modules = sorted(n for n in names if any(fnmatch.fnmatchcase(n.split(".")[0], g) for g in globs))
    return sorted(lines), modules


def save_files(args: argparse.Namespace) -> None:
    for glob in args.globs:
        if glob.startswith("+") or "." in glob or "/" in glob:
            raise SystemExit(f"pyproject.py save-files: {glob!r} is not supported by this stand-in")
    lines, modules = _files_and_modules(args.buildroot, args.sitelib, args.python_version, args.pyproject_record,
                                        args.globs)
    Path(args.output_files).write_text("\n".join(lines) + "\n", encoding="utf-8")
    Path(args.output_modules).write_text("\n".join(modules) + "\n", encoding="utf-8")


def check_import(args: argparse.Namespace) -> None:
    modules = [m for f in args.filename for m in Path(f).read_text(encoding="utf-8").split()]
    modules = [m for m in modules if not any(fnmatch.fnmatchcase(m, g) for g in args.exclude)]
    if args.top_level:
        modules = [m for m in modules if "." not in m]
    if not modules:
        raise SystemExit("pyproject.py check-import: no modules to check were left")
    cwd = Path.cwd().resolve()
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() not in (cwd, Path(__file__).parent.resolve())]
    for path in os.environ.get("_PYTHONSITE", "").split(":"):
        if path in sys.path:
            site.addsitedir(path)
    for module in modules:
        print("Check import:", module, file=sys.stderr)
        importlib.import_module(module)


def main() -> None:
    parser = argparse.ArgumentParser(prog="pyproject.py")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("record")
    p.add_argument("--buildroot", required=True)
    p.add_argument("--record", required=True)
    p.add_argument("--output", required=True)
    p.set_defaults(func=record)
    p = sub.add_parser("save-files")
    for name in ("--output-files", "--output-modules", "--buildroot", "--sitelib", "--sitearch", "--python-version",
                 "--pyproject-record", "--prefix"):
        p.add_argument(name, required=True)
    p.add_argument("globs", nargs="+")
    p.set_defaults(func=save_files)
    p = sub.add_parser("check-import")
    p.add_argument("-f", "--filename", action="append", default=[])
    p.add_argument("-e", "--exclude", action="append", default=[])
    p.add_argument("-t", "--top-level", action="store_true")
    p.set_defaults(func=check_import)
    args = parser.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
