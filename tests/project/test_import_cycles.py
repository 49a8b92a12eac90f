"""No import cycle among core's modules: every import in every module of core/ (at the top, inside functions, under
TYPE_CHECKING alike) is an edge of one graph, built from the source with the standard library's `ast`, and the
graph has no circle. A circle is listed module by module."""

from __future__ import annotations

import ast
import shutil
from collections import deque
from pathlib import Path

import pytest
from conftest import ROOT


def module_graph(root: Path) -> dict[str, set[str]]:
    """core's modules, each with the core modules it imports (`from core.x import y`: core.x.y if y is a module)."""
    paths = {}
    for path in sorted((root / "core").rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        paths[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path

    def known(name: str) -> str | None:  # the deepest module of core that `name` names
        while name and name not in paths:
            name = name.rpartition(".")[0]
        return name or None

    graph = {}
    for module, path in paths.items():
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        imported = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                imported.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parent = package.split(".")[:len(package.split(".")) - node.level + 1]
                    base = ".".join(parent + ([node.module] if node.module else []))
                imported.update(f"{base}.{a.name}" if f"{base}.{a.name}" in paths else base for a in node.names)
        graph[module] = {target for name in imported if (target := known(name)) and target != module}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One shortest circle through each group of modules that reach each other (a strongly connected component)."""
    found, seen = [], set()
    for start in sorted(graph):
        if start in seen:
            continue
        reachable = reach(graph, start)
        component = {m for m in reachable if start in reach(graph, m)} | {start}
        seen |= component
        if start in reachable:
            found.append(shortest_circle(graph, start, component))
    return found


def reach(graph: dict[str, set[str]], start: str) -> set[str]:
    stack, out = list(graph[start]), set()
    while stack:
        module = stack.pop()
        if module not in out:
            out.add(module)
            stack.extend(graph[module])
    return out


def shortest_circle(graph: dict[str, set[str]], start: str, within: set[str]) -> list[str]:
    came_from, queue = {start: None}, deque([start])
    while queue:
        module = queue.popleft()
        for target in sorted(graph[module] & within):
            if target == start:
                path = [module]
                while came_from[path[-1]] is not None:
                    path.append(came_from[path[-1]])
                return [*reversed(path), start]
            if target not in came_from:
                came_from[target] = module
                queue.append(target)
    raise AssertionError(f"{start} is in a cycle but no path returns to it")


def assert_no_cycle(root: Path) -> None:
    found = cycles(module_graph(root))
    assert not found, "import cycles among core's modules:\n" + "\n".join(" -> ".join(c) for c in found)


def test_core_has_no_import_cycle():
    assert_no_cycle(ROOT)


def test_an_import_that_closes_a_circle_is_listed(tmp_path):
    shutil.copytree(ROOT / "core", tmp_path / "core", ignore=shutil.ignore_patterns("__pycache__"))
    run = tmp_path / "core" / "train" / "run.py"  # what the step imports to name a Run: the step importing it back
    run.write_text(run.read_text() + "\n\ndef later():\n    from core.train import step  # noqa\n")
    with pytest.raises(AssertionError, match="import cycles") as failure:
        assert_no_cycle(tmp_path)
    assert "core.train.run -> core.train.step -> core.train.run" in str(failure.value)
