"""No import circles in alignkit: every module's ``import alignkit…`` / ``from alignkit… import``
lines, read with :mod:`ast` (nothing is imported), make a graph that must have no cycle.

Top-level imports are the ones that can fail at import time; imports inside functions are
counted too, because a lazy import that closes a circle only hides it (the two modules still
need each other). Imports under ``if TYPE_CHECKING:`` never run and are left out.
"""

from __future__ import annotations

import ast
import pkgutil
from pathlib import Path

import alignkit

ROOT = Path(alignkit.__file__).parent


def module_files() -> dict[str, Path]:
    """Every module of the package, by dotted name (packages by their ``__init__.py``)."""
    out = {"alignkit": ROOT / "__init__.py"}
    for info in pkgutil.walk_packages([str(ROOT)], prefix="alignkit."):
        rel = Path(*info.name.split(".")[1:])
        out[info.name] = ROOT / rel / "__init__.py" if info.ispkg else ROOT / rel.with_suffix(".py")
    return out


def _is_type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
        isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING")


def imported_modules(name: str, path: Path, modules: set[str], *, top_level_only: bool = False) -> set[str]:
    """The alignkit modules ``name`` imports: ``from a.b import c`` counts as ``a.b.c`` when
    that is a module, else ``a.b``; relative imports are resolved against ``name``."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    def visit(node: ast.AST, depth: int) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                continue
            inner = isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if inner and top_level_only:
                continue
            if isinstance(child, ast.Import):
                found.update(a.name for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    parts = package.split(".")
                    parts = parts[: len(parts) - (child.level - 1)]
                    base = ".".join(parts + ([base] if base else []))
                for a in child.names:
                    sub = f"{base}.{a.name}"
                    found.add(sub if sub in modules else base)
            visit(child, depth + inner)

    visit(tree, 0)
    # import a.b.c runs a and a.b too, but a package's __init__ importing its children is not a
    # circle through the child: keep only the named module itself.
    return {m for m in found if m in modules and m != name}


def import_graph(*, top_level_only: bool = False) -> dict[str, set[str]]:
    files = module_files()
    names = set(files)
    return {n: imported_modules(n, p, names, top_level_only=top_level_only) for n, p in files.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as ``[a, b, …, a]``, or None (iterative DFS, three colours)."""
    colour: dict[str, int] = dict.fromkeys(graph, 0)
    for start in sorted(graph):
        if colour[start]:
            continue
        stack = [(start, iter(sorted(graph[start])))]
        path = [start]
        colour[start] = 1
        while stack:
            node, children = stack[-1]
            for child in children:
                if colour.get(child, 2) == 1:
                    return path[path.index(child):] + [child]
                if colour.get(child, 2) == 0:
                    colour[child] = 1
                    path.append(child)
                    stack.append((child, iter(sorted(graph[child]))))
                    break
            else:
                colour[node] = 2
                path.pop()
                stack.pop()
    return None


def test_the_walk_sees_the_package():
    graph = import_graph()
    assert {"alignkit.losses.dpo", "alignkit.feedback.store", "alignkit.humans.annotators",
            "alignkit.recipes.dpo", "alignkit.cli"} <= set(graph)
    assert "alignkit.models.feature_reward" in graph["alignkit.models.reward"]
    assert "alignkit.losses.dpo" in graph["alignkit.recipes.dpo"]


def test_find_cycle_names_the_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None
    assert find_cycle({"a": {"a"}}) == ["a", "a"]


def test_relative_and_function_level_imports_are_edges(tmp_path):
    pkg = tmp_path / "p"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    src = (
        "from . import b\n"
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from p import c\n"
        "def f():\n    import p.d\n"
    )
    (pkg / "a.py").write_text(src)
    mods = {"p", "p.a", "p.b", "p.c", "p.d"}
    assert imported_modules("p.a", pkg / "a.py", mods) == {"p.b", "p.d"}
    assert imported_modules("p.a", pkg / "a.py", mods, top_level_only=True) == {"p.b"}


def test_no_import_cycle_among_top_level_imports():
    cycle = find_cycle(import_graph(top_level_only=True))
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_no_import_cycle_counting_imports_inside_functions():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle (through an import inside a function): " + " -> ".join(cycle)
