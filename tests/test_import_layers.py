"""The layers of the package, read from its source (every import statement, at module level or
inside a function): no module under mdistiller/distillers imports mdistiller/engine, losses and
frequency import neither models nor distillers nor the engine, and mdistiller has no import circle."""

import ast
import os
from typing import Dict, List, Set

from conftest import REPO_ROOT

PACKAGE = "mdistiller"


def module_name(path: str) -> str:
    relative = os.path.relpath(path, REPO_ROOT)[:-len(".py")].split(os.sep)
    return ".".join(relative[:-1] if relative[-1] == "__init__" else relative)


def package_modules() -> Dict[str, str]:
    """Every module of the package: dotted name -> file."""
    modules = {}
    for directory, _, files in os.walk(os.path.join(REPO_ROOT, PACKAGE)):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(directory, name)
                modules[module_name(path)] = path
    return modules


def imported_modules(path: str, name: str, modules: Dict[str, str]) -> Set[str]:
    """The package's modules that `path` (module `name`) imports: `import a.b`, `from a.b import c`
    (module a.b.c when c is a module, else a.b) and relative imports, anywhere in the file."""
    is_package = path.endswith("__init__.py")
    found = set()
    for node in ast.walk(ast.parse(open(path).read(), path)):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = name.split(".")
                anchor = parts if is_package else parts[:-1]
                anchor = anchor[:len(anchor) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
        else:
            continue
        found.update(t for t in targets if t in modules and t != name)
    return found


def import_graph() -> Dict[str, Set[str]]:
    modules = package_modules()
    return {name: imported_modules(path, name, modules) for name, path in modules.items()}


def find_cycle(graph: Dict[str, Set[str]]) -> List[str]:
    """One import circle as a list of modules (first == last), or [] when there is none."""
    state: Dict[str, int] = {}  # 1: on the current path, 2: done
    path: List[str] = []

    def visit(node: str) -> List[str]:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        path.pop()
        state[node] = 2
        return []

    for start in sorted(graph):
        if start not in state:
            cycle = visit(start)
            if cycle:
                return cycle
    return []


def test_the_graph_sees_function_level_and_relative_imports():
    graph = import_graph()
    assert "mdistiller.engine.trainer" in graph["mdistiller.engine.run"]
    assert "mdistiller.models.cifar.resnet" in graph["mdistiller.models.cifar"]  # from . import resnet
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) == []


def test_distillers_never_import_the_engine():
    graph = import_graph()
    offending = {name: sorted(t for t in targets if t.startswith("mdistiller.engine"))
                 for name, targets in graph.items() if name.startswith("mdistiller.distillers")}
    assert {name: t for name, t in offending.items() if t} == {}


def test_losses_and_frequency_know_nothing_of_models_distillers_or_engine():
    graph = import_graph()
    higher = ("mdistiller.models", "mdistiller.distillers", "mdistiller.engine", "mdistiller.dataset")
    offending = {name: sorted(t for t in targets if t.startswith(higher)) for name, targets in graph.items()
                 if name.startswith(("mdistiller.losses", "mdistiller.frequency"))}
    assert {name: t for name, t in offending.items() if t} == {}


def test_no_import_circle_in_mdistiller():
    assert find_cycle(import_graph()) == []


def test_scikit_learn_is_imported_inside_functions_only():
    """The digits data and the stratified subsets need scikit-learn; importing it with the package
    would add ~0.6 s of CPU to every tool's start (measured with `/usr/bin/time` on the 2-core EPYC)."""
    top_level = []
    for name, path in package_modules().items():
        for node in ast.parse(open(path).read(), path).body:
            names = [alias.name for alias in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            top_level += [(name, target) for target in names if target.split(".")[0] == "sklearn"]
    assert top_level == []
