"""The stairs go one way: from the commands down to the stages and from the stages down to
the trace format, never up, and no two modules import each other (directly or round a loop).

The graph is read from the source (ast), not by importing it: every import counts, including
those inside functions and under TYPE_CHECKING, which an import-time check would miss.
"""
from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Top to bottom: a package may import its own modules and those of packages on lower floors.
FLOORS = (
    ("chargeplay", "lab"),  # the commands
    ("analyze",),
    ("collect", "replay"),
    ("traces",),  # the trace format
    ("common",),  # helpers every stage needs
)
FLOOR = {package: height for height, packages in enumerate(reversed(FLOORS)) for package in packages}


@dataclass(frozen=True)
class Import:
    importer: str  # module name
    imported: str
    where: str  # file:line

    def __str__(self) -> str:
        return f"{self.where} {self.importer} imports {self.imported}"


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_module(name: str) -> bool:
    path = ROOT.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def imports_in(source: str, importer: str, file: str) -> Iterator[Import]:
    """The project modules `source` imports, wherever the import statement stands."""
    package = importer if file.endswith("__init__.py") else importer.rpartition(".")[0]
    for node in ast.walk(ast.parse(source, file)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            # `from a import b` imports the module a.b if there is one, else a name of a
            names = [f"{base}.{alias.name}" if is_module(f"{base}.{alias.name}") else base for alias in node.names]
        else:
            continue
        for name in names:
            if name.split(".")[0] in FLOOR and name != importer:
                yield Import(importer, name, f"{file}:{node.lineno}")


def project_imports() -> list[Import]:
    found = []
    for package in FLOOR:
        for path in sorted((ROOT / package).rglob("*.py")):
            found += imports_in(path.read_text(), module_name(path), str(path.relative_to(ROOT)))
    return found


def find_cycle(edges: list[Import]) -> list[Import] | None:
    """One loop of imports, as its edges, or None."""
    out: dict[str, list[Import]] = {}
    for edge in edges:
        out.setdefault(edge.importer, []).append(edge)
    done: set[str] = set()
    path: list[Import] = []  # the imports followed from the module the search started at
    on_path: dict[str, int] = {}  # module -> its place in `path`

    def visit(module: str) -> list[Import] | None:
        on_path[module] = len(path)
        for edge in out.get(module, []):
            if edge.imported in on_path:
                return [*path[on_path[edge.imported]:], edge]
            if edge.imported not in done:
                path.append(edge)
                cycle = visit(edge.imported)
                if cycle:
                    return cycle
                path.pop()
        del on_path[module]
        done.add(module)
        return None

    for module in list(out):
        if module not in done:
            cycle = visit(module)
            if cycle:
                return cycle
    return None


def test_the_scanner_sees_imports_inside_functions_and_relative_ones() -> None:
    source = "import os\nfrom traces import reader\n\ndef f():\n    from . import cgroup\n    import replay.ops as ops\n"
    found = list(imports_in(source, "collect.ebpf", "collect/ebpf.py"))
    assert [(i.imported, i.where) for i in found] == [
        ("traces.reader", "collect/ebpf.py:2"), ("collect.cgroup", "collect/ebpf.py:5"), ("replay.ops", "collect/ebpf.py:6")]


def test_imports_only_go_down() -> None:
    edges = project_imports()
    assert len(edges) > 100  # the scan found the project
    upward = [edge for edge in edges
              if (to := edge.imported.split(".")[0]) != (frm := edge.importer.split(".")[0]) and FLOOR[to] >= FLOOR[frm]]
    allowed = {package: sorted(p for p in FLOOR if FLOOR[p] < FLOOR[package]) for package in FLOOR}
    assert not upward, "imports that climb or go sideways:\n" + "\n".join(
        f"{edge}: {edge.importer.split('.')[0]} may import only {', '.join(allowed[edge.importer.split('.')[0]]) or 'itself'}"
        for edge in upward)


def test_no_import_cycle() -> None:
    cycle = find_cycle(project_imports())
    assert cycle is None, "import cycle:\n" + "\n".join(map(str, cycle))


# Run inside a lab guest by its bare system python3, which has none of the project's dependencies.
GUEST_SIDE = ("lab.facts",)


def test_what_a_lab_guest_runs_needs_only_the_standard_library() -> None:
    out: dict[str, set[str]] = {}
    for edge in project_imports():
        out.setdefault(edge.importer, set()).add(edge.imported)
    reached, todo = set(), list(GUEST_SIDE)
    while todo:
        module = todo.pop()
        if module not in reached:
            reached.add(module)
            todo += out.get(module, ())
    third_party = []
    for module in sorted(reached):
        path = ROOT.joinpath(*module.split("."))
        path = path.with_suffix(".py") if path.with_suffix(".py").is_file() else path / "__init__.py"
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([alias.name for alias in node.names] if isinstance(node, ast.Import)
                     else [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 else [])
            third_party += [f"{module} imports {name}" for name in names
                            if name.split(".")[0] not in {*sys.stdlib_module_names, *FLOOR, "__future__"}]
    assert "collect.cgroup" in reached and third_party == []
