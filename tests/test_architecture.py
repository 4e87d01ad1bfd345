"""docs/ARCHITECTURE.md cannot drift from the code: every import inside cc_imds (at the top, inside a
function or under TYPE_CHECKING) goes from one part to a part its table allows, every module is in a
part the page names, the parts form no cycle, and nothing imports the package's __init__ (the
cloud-init handle). The checker itself is tried on made-up modules, so it cannot pass by seeing nothing."""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, FrozenSet, Iterator, List, Mapping, Optional, Sequence, Set, Tuple, Union

import pytest

from tests.conftest import PACKAGE, REPO

DOC = REPO / "docs" / "ARCHITECTURE.md"
DOC_NAME = "docs/ARCHITECTURE.md"
TOP = "cc_imds"
HANDLE = "__init__.py"
PARTS_HEADER = ("part", "modules", "may import")
KERNEL_HEADER = ("kernel module", "may import")
NOTHING = {"", "—", "-"}


def tables(text: str) -> Dict[Tuple[str, ...], List[List[str]]]:
    """Every Markdown table of the page, by its header row; cells without their backticks."""
    found: Dict[Tuple[str, ...], List[List[str]]] = {}
    rows: List[List[str]] = []
    for line in [*text.splitlines(), ""]:
        if line.startswith("|"):
            rows.append([cell.strip().replace("`", "") for cell in line.strip().strip("|").split("|")])
            continue
        if len(rows) >= 2:
            found[tuple(rows[0])] = rows[2:]  # rows[1] is the |---| line
        rows = []
    return found


def names(cell: str) -> List[str]:
    return [] if cell in NOTHING else [name.strip() for name in cell.split(",")]


@dataclass(frozen=True)
class Layout:
    locations: Mapping[str, Tuple[str, ...]]  # part -> files and folders ("errors.py", "imds/")
    allowed: Mapping[str, FrozenSet[str]]  # part -> the other parts it may import
    kernel: Mapping[str, FrozenSet[str]]  # kernel module -> the kernel modules it may import

    def part_of(self, relative: str) -> Optional[str]:
        """The part a file of the package (path relative to it) is in, or None."""
        owners = [part for part, where in self.locations.items()
                  for location in where
                  if relative == location or (location.endswith("/") and relative.startswith(location))]
        assert len(owners) <= 1, f"{TOP}/{relative} is in more than one part of {DOC_NAME}: {owners}"
        return owners[0] if owners else None


def read_layout(text: str) -> Layout:
    found = tables(text)
    for header in (PARTS_HEADER, KERNEL_HEADER):
        assert header in found, f"{DOC_NAME} has no table headed | {' | '.join(header)} |"
    locations: Dict[str, Tuple[str, ...]] = {}
    allowed: Dict[str, FrozenSet[str]] = {}
    for part, modules, may_import in found[PARTS_HEADER]:
        assert part not in locations, f"{DOC_NAME}: part {part} has two rows"
        locations[part] = tuple(names(modules))
        allowed[part] = frozenset(names(may_import))
    kernel = {module: frozenset(names(may_import)) for module, may_import in found[KERNEL_HEADER]}
    return Layout(locations, allowed, kernel)


LAYOUT = read_layout(DOC.read_text(encoding="utf-8"))


def package_files(package: Path = PACKAGE) -> List[str]:
    return sorted(path.relative_to(package).as_posix() for path in package.rglob("*.py"))


def module_name(relative: str) -> Tuple[str, bool]:
    """("cc_imds.imds.client", False) for imds/client.py; ("cc_imds.imds", True) for imds/__init__.py."""
    parts = [TOP, *relative[: -len(".py")].split("/")]
    if parts[-1] == "__init__":
        return ".".join(parts[:-1]), True
    return ".".join(parts), False


MODULES = {module_name(relative)[0]: relative for relative in package_files()}


@dataclass(frozen=True)
class Import:
    line: int
    text: str  # the statement as written, on one line
    target: Optional[str]  # the cc_imds module it loads; None when it cannot be resolved
    problem: str = ""


def _statement(source: str, node: ast.stmt) -> str:
    return " ".join((ast.get_source_segment(source, node) or "").split())


def package_imports(relative: str, source: str, modules: Mapping[str, str] = MODULES, *,
                    on_import_only: bool = False) -> Iterator[Import]:
    """Every import of a cc_imds module in `source` (the file `relative`), wherever it stands; or,
    `on_import_only`, those that run when the module is imported."""
    name, is_package = module_name(relative)
    here = name.split(".") if is_package else name.split(".")[:-1]
    tree = ast.parse(source, filename=f"{TOP}/{relative}")
    nodes = top_level_statements(tree.body) if on_import_only else ast.walk(tree)
    for node in nodes:
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == TOP or alias.name.startswith(TOP + "."):
                    yield Import(node.lineno, _statement(source, node), alias.name)
        elif isinstance(node, ast.ImportFrom):
            text = _statement(source, node)
            if node.level:
                if node.level - 1 >= len(here):
                    yield Import(node.lineno, text, None, "a relative import beyond the package")
                    continue
                base = ".".join(here[: len(here) - (node.level - 1)] + ([node.module] if node.module else []))
            elif node.module and (node.module == TOP or node.module.startswith(TOP + ".")):
                base = node.module
            else:
                continue
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                yield Import(node.lineno, text, submodule if submodule in modules else base)


def top_level_statements(body: Sequence[ast.stmt]) -> Iterator[ast.stmt]:
    """What runs when a module is imported: class bodies, but not function bodies, nor `if TYPE_CHECKING:`."""
    for node in body:
        yield node
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            yield from top_level_statements(node.orelse)
            continue
        for field in ("body", "handlers", "orelse", "finalbody"):
            for inner in getattr(node, field, None) or []:
                if isinstance(inner, ast.ExceptHandler):
                    yield from top_level_statements(inner.body)
                elif isinstance(inner, ast.stmt):
                    yield from top_level_statements([inner])


def violations(relative: str, source: str, layout: Layout = LAYOUT, modules: Mapping[str, str] = MODULES) -> List[str]:
    """What `source`, as the file `relative` of the package, imports against the page's tables."""
    where = f"{TOP}/{relative}"
    part = layout.part_of(relative)
    if part is None:
        return [f"{where}: in no part of {DOC_NAME}: give its file or folder a row in the parts table"]
    found: List[str] = []
    seen: Set[Tuple[int, Optional[str]]] = set()
    for imported in package_imports(relative, source, modules):
        if (imported.line, imported.target) in seen:  # `from x import (a, b)`: one statement, one verdict
            continue
        seen.add((imported.line, imported.target))
        said = f"{where}:{imported.line}: `{imported.text}`"
        target_file = modules.get(imported.target or "")
        if imported.target is None or target_file is None:
            found.append(f"{said}: {imported.problem or f'{imported.target} is no module of the package'}")
            continue
        if target_file == HANDLE:
            found.append(f"{said} imports the package's __init__ (the cloud-init handle): nothing inside may")
            continue
        target_part = layout.part_of(target_file)
        if target_part is None:
            continue  # reported for that file itself
        if part == target_part == "kernel":
            own, other = Path(relative).stem, Path(target_file).stem
            if own != other and other not in layout.kernel.get(own, frozenset()):
                found.append(f"{said} imports kernel {other}: {DOC_NAME} lets kernel {own} import "
                             f"{', '.join(sorted(layout.kernel.get(own, ()))) or 'nothing'}")
        elif part != target_part and target_part not in layout.allowed[part]:
            found.append(f"{said} imports {imported.target} ({part} -> {target_part}): {DOC_NAME} lets {part} "
                         f"import {', '.join(sorted(layout.allowed[part])) or 'nothing'}")
    return found


def cycle(graph: Mapping[str, Union[FrozenSet[str], Set[str]]]) -> Optional[List[str]]:
    """A cycle of `graph` (node -> nodes it points to) as the path around it, or None."""
    done: Set[str] = set()

    def visit(node: str, path: List[str]) -> Optional[List[str]]:
        if node in path:
            return [*path[path.index(node):], node]
        if node in done:
            return None
        for following in sorted(graph.get(node, ())):
            if following != node:
                found = visit(following, [*path, node])
                if found:
                    return found
        done.add(node)
        return None

    for start in sorted(graph):
        found = visit(start, [])
        if found:
            return found
    return None


# -- the page ---------------------------------------------------------------------------------------

def test_every_part_the_page_names_exists() -> None:
    for part, where in LAYOUT.locations.items():
        assert where, f"{DOC_NAME}: part {part} names no file or folder"
        for location in where:
            path = PACKAGE / location
            exists = path.is_dir() if location.endswith("/") else path.is_file()
            assert exists, f"{DOC_NAME}: part {part} names {TOP}/{location}, which does not exist"
        unknown = LAYOUT.allowed[part] - set(LAYOUT.locations)
        assert not unknown, f"{DOC_NAME}: part {part} may import {sorted(unknown)}, which are no parts"
        assert part not in LAYOUT.allowed[part], f"{DOC_NAME}: part {part} lists itself"
    kernel_files = {Path(location).stem for location in LAYOUT.locations["kernel"]}
    assert set(LAYOUT.kernel) == kernel_files, f"{DOC_NAME}: the kernel's two tables name different modules"
    for module, may_import in LAYOUT.kernel.items():
        assert may_import <= kernel_files, f"{DOC_NAME}: kernel {module} may import {sorted(may_import - kernel_files)}"
    assert LAYOUT.part_of(HANDLE) == "handle", f"{DOC_NAME}: {HANDLE} is the part `handle`"
    assert all("handle" not in may_import for may_import in LAYOUT.allowed.values()), "nothing may import the handle"


def test_the_parts_form_no_cycle() -> None:
    parts, kernel = cycle(LAYOUT.allowed), cycle(LAYOUT.kernel)
    assert parts is None, f"{DOC_NAME}: the parts import each other: {' -> '.join(parts)}"
    assert kernel is None, f"{DOC_NAME}: kernel modules import each other: {' -> '.join(kernel)}"


# -- the code ---------------------------------------------------------------------------------------

def test_every_module_is_in_a_part() -> None:
    homeless = [relative for relative in package_files() if LAYOUT.part_of(relative) is None]
    assert homeless == [], f"modules in no part of {DOC_NAME} (a new file or folder needs a row): {homeless}"


def test_every_import_goes_where_the_page_allows() -> None:
    found: List[str] = []
    edges: Set[Tuple[Optional[str], Optional[str]]] = set()
    for relative in package_files():
        source = (PACKAGE / relative).read_text(encoding="utf-8")
        found.extend(violations(relative, source))
        edges |= {(LAYOUT.part_of(relative), LAYOUT.part_of(MODULES.get(i.target or "", "")))
                  for i in package_imports(relative, source)}
    assert found == [], "imports that " + DOC_NAME + " does not allow:\n" + "\n".join(found)
    # The scan saw the package's imports: the boot path's own, inside functions included.
    assert {("pipeline", "outputs"), ("handle", "pipeline"), ("cli", "tools"), ("declaration", "formats")} <= edges


def test_the_handle_imports_only_the_kernel_when_cloud_init_imports_it() -> None:
    source = (PACKAGE / HANDLE).read_text(encoding="utf-8")
    loaded = list(package_imports(HANDLE, source, on_import_only=True))
    assert loaded, "the handle's top level imports the kernel's logger and version: the check saw them"
    beyond = [f"{TOP}/{HANDLE}:{i.line}: `{i.text}`" for i in loaded
              if LAYOUT.part_of(MODULES.get(i.target or "", "")) != "kernel"]
    assert beyond == [], "cloud-init imports cc_imds at every stage; import these inside handle:\n" + "\n".join(beyond)
    inside = [i for i in package_imports(HANDLE, source) if i not in loaded]
    assert any(i.target == f"{TOP}.pipeline" for i in inside), "handle imports the pipeline when it runs"


def test_what_runs_at_import_is_told_from_what_runs_later() -> None:
    source = ("import cc_imds.errors\nTYPE_CHECKING = False\nif TYPE_CHECKING:\n    import cc_imds.values\n"
              "else:\n    import cc_imds.logs\ntry:\n    import cc_imds.deadline\nexcept ImportError:\n"
              "    import cc_imds.streams\nclass Later:\n    import cc_imds.version\n"
              "    def run(self):\n        import cc_imds.pipeline\n")
    at_import = [i.target for i in package_imports("made_up.py", source, on_import_only=True)]
    assert at_import == ["cc_imds.errors", "cc_imds.logs", "cc_imds.deadline", "cc_imds.streams", "cc_imds.version"]


# -- the checker ------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("relative", "source", "line", "expected"),
    [
        ("imds/made_up.py", "from ..pipeline import apply\n", 1, "(imds -> pipeline)"),
        ("imds/made_up.py", "import os\n\n\ndef later():\n    from ..outputs import render\n", 5,
         "(imds -> outputs)"),
        ("outputs/made_up.py", "TYPE_CHECKING = False\nif TYPE_CHECKING:\n    from ..imds.client import ImdsClient\n",
         3, "(outputs -> imds)"),
        ("tools/made_up.py", "import cc_imds.testing.emulator\n", 1, "(tools -> testing)"),
        ("testing/made_up.py", "from cc_imds.pipeline import (\n    apply,\n    preview,\n)\n", 1,
         "`from cc_imds.pipeline import ( apply, preview, )` imports cc_imds.pipeline (testing -> pipeline)"),
        ("values.py", "from .outputs import write\n", 1, "imports cc_imds.outputs.write (values -> outputs)"),
        ("watch/made_up.py", "from .. import LOG\n", 1, "imports the package's __init__"),
        ("cli.py", "from cc_imds import handle\n", 1, "imports the package's __init__"),
        ("errors.py", "from .logs import get_logger\n", 1, "imports kernel logs"),
        ("imds/made_up.py", "from .nowhere import thing\n", 1, "cc_imds.imds.nowhere is no module"),
        ("imds/made_up.py", "from ... import thing\n", 1, "beyond the package"),
    ],
)
def test_the_checker_names_file_line_and_forbidden_import(relative: str, source: str, line: int, expected: str) -> None:
    found = violations(relative, source)
    assert len(found) == 1, found
    assert found[0].startswith(f"{TOP}/{relative}:{line}: `")
    assert expected in found[0]


def test_the_checker_lets_allowed_imports_through() -> None:
    source = ("from . import retry\nfrom ..errors import ImdsError\nimport cc_imds.deadline\n"
              "def later():\n    from ..jsontext import parse\n")
    assert violations("imds/made_up.py", source) == []
    assert violations("cli.py", "from .testing.emulator import Emulator\nfrom .tools import get\n") == []
    assert violations("untrusted.py", "from .errors import CcImdsError\n") == []


def test_the_checker_refuses_a_module_in_no_part() -> None:
    found = violations("newpart/made_up.py", "from ..errors import CcImdsError\n")
    assert found == [f"{TOP}/newpart/made_up.py: in no part of {DOC_NAME}: "
                     "give its file or folder a row in the parts table"]


def test_the_page_parser_and_cycle_finder_on_made_up_tables() -> None:
    page = ("Text.\n\n| part | modules | may import |\n|---|---|---|\n| low | `low.py` | — |\n"
            "| high | `high/`, `x.py` | low |\n\nMore.\n\n| kernel module | may import |\n|---|---|\n| low | — |\n")
    layout = read_layout(page)
    assert layout.allowed == {"low": frozenset(), "high": frozenset({"low"})}
    found = (layout.part_of("high/a/b.py"), layout.part_of("x.py"), layout.part_of("highway.py"))
    assert found == ("high", "high", None)
    assert cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert cycle({"a": {"b", "a"}, "b": set()}) is None
