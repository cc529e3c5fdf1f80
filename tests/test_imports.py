"""The package's file-level import graph: no circle between files, and the layers import downwards only.

Every ``import`` / ``from ... import`` of a ``lczerolens`` module counts, at module level **and inside functions**:
an import moved into a function still makes the two files depend on each other, it only hides the circle from
Python's loader. Imports under ``if TYPE_CHECKING:`` do not count (they never run). An edge goes to the module
named (``from lczerolens.lenses import base`` -> ``lczerolens.lenses.base``); the ``__init__`` of a parent package,
which Python runs first, is not an edge of its own (otherwise every package would be a circle with its modules).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _modules(root: Path, package: str) -> dict[str, Path]:
    out = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(name: str, path: Path, modules: dict[str, Path], package: str) -> set[str]:
    """The package's modules that the file ``path`` (module ``name``) imports anywhere."""
    is_package = path.name == "__init__.py"
    found: set[str] = set()

    def target(module: str) -> str | None:
        # The deepest known module that `module` names (`lczerolens.board.LczeroBoard` -> `lczerolens.board`).
        parts = module.split(".")
        while parts and ".".join(parts) not in modules:
            parts.pop()
        return ".".join(parts) if parts else None

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                for other in child.orelse:
                    visit_one(other)
                continue
            visit_one(child)

    def visit_one(node: ast.AST) -> None:
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == package and (hit := target(alias.name)):
                    found.add(hit)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            if module.split(".")[0] == package:
                for alias in node.names:
                    if hit := target(f"{module}.{alias.name}"):
                        found.add(hit)
        visit(node)

    visit(ast.parse(path.read_text(encoding="utf-8"), filename=str(path)))
    found.discard(name)
    return found


def import_graph(root: Path, package: str) -> dict[str, set[str]]:
    """``{module: modules of the package it imports}`` for every ``.py`` file of ``package`` under ``root``."""
    modules = _modules(root, package)
    return {name: _imports(name, path, modules, package) for name, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle (``[a, b, ..., a]``), or None when the graph is acyclic."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def walk(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := walk(nxt)):
                return cycle
        state[node] = 2
        path.pop()
        return None

    for start in sorted(graph):
        if start not in state and (cycle := walk(start)):
            return cycle
    return None


def test_no_file_imports_in_a_circle() -> None:
    graph = import_graph(ROOT, "lczerolens")
    assert len(graph) > 40 and graph["lczerolens.lenses.gradient"]  # the parser sees the package
    cycle = find_cycle(graph)
    assert cycle is None, "import circle: " + " -> ".join(cycle or [])


def test_no_lens_imports_the_metrics() -> None:
    # A lens knows no benchmark: the faithfulness metrics use the lenses, never the other way round.
    graph = import_graph(ROOT, "lczerolens")
    offenders = sorted(
        m for m, deps in graph.items() if m.startswith("lczerolens.lenses") and "lczerolens.metrics" in deps
    )
    assert offenders == []


def test_the_native_builders_share_the_format_resolution() -> None:
    graph = import_graph(ROOT, "lczerolens")
    assert "lczerolens.model.netformat" in graph["lczerolens.model.attention"]
    assert "lczerolens.model.netformat" in graph["lczerolens.model.native"]
    assert "lczerolens.model.native" not in graph["lczerolens.model.attention"]


@pytest.mark.parametrize("inside_function", [False, True])
def test_the_check_finds_a_circle(tmp_path: Path, inside_function: bool) -> None:
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("from . import b\n")
    (pkg / "a.py").write_text("from pkg.sub.b import thing\n")
    body = "def f():\n    from ..a import x\n" if inside_function else "from pkg import a\n"
    (pkg / "sub" / "b.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import pkg.c\n" + body)
    (pkg / "c.py").write_text("import pkg.a\n")
    graph = import_graph(tmp_path, "pkg")
    assert graph["pkg.sub.b"] == {"pkg.a"}  # the TYPE_CHECKING import is no edge
    assert find_cycle(graph) == ["pkg.a", "pkg.sub.b", "pkg.a"]
    (pkg / "sub" / "b.py").write_text("import pkg.c.nothing_here\n")  # b -> c -> a -> b is a circle too
    assert find_cycle(import_graph(tmp_path, "pkg")) == ["pkg.a", "pkg.sub.b", "pkg.c", "pkg.a"]
    (pkg / "c.py").write_text("")
    assert find_cycle(import_graph(tmp_path, "pkg")) is None


def test_command_line_help_does_not_import_torch():
    """``lczerolens --help`` (and each sub-command's parser) is built without torch: it answers in a fraction of a
    second instead of the second torch takes to import."""
    code = (
        "import sys, contextlib, io\n"
        "import lczerolens.cli as cli\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    try:\n"
        "        cli.main(['--help'])\n"
        "    except SystemExit:\n"
        "        pass\n"
        "    cli.build_parser()\n"
        "print('torch' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert done.stdout.strip() == "False", done.stdout + done.stderr
