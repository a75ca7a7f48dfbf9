"""The import graph: floors import downward only, no cycles, and no module imports an entry point.

Floors, top to bottom: pipeline/ (entry modules, then the library they share), models/ (the
declarative family specs), transforms/ (tensor math, I/O, Beam DoFns, the error type). An entry
point is a module with a `__main__` block (`python -m pipeline.X`): it may import anything below
it, and nothing imports it.
"""
from __future__ import annotations

import ast
import os

from tests.goldens import REPO

FLOORS = {"pipeline": 3, "models": 2, "transforms": 1}


def modules() -> dict[str, str]:
  found = {}
  for package in FLOORS:
    for name in sorted(os.listdir(os.path.join(REPO, package))):
      if name.endswith(".py"):
        found[package if name == "__init__.py" else f"{package}.{name[:-3]}"] = os.path.join(REPO, package, name)
  return found


def import_graph() -> tuple[dict[str, set[str]], set[str]]:
  """{module: modules it imports (anywhere in its body)}, and the entry points."""
  mods = modules()
  graph: dict[str, set[str]] = {m: set() for m in mods}
  entries = set()
  for module, path in mods.items():
    with open(path, encoding="utf-8") as f:
      tree = ast.parse(f.read())
    for node in ast.walk(tree):
      names = []
      if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
      elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
        names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
      elif (isinstance(node, ast.Compare) and isinstance(node.left, ast.Name) and node.left.id == "__name__"
            and any(isinstance(c, ast.Constant) and c.value == "__main__" for c in node.comparators)):
        entries.add(module)
      graph[module].update(n for n in names if n in mods and n != module)
  return graph, entries


def floor(module: str) -> int:
  return FLOORS[module.split(".")[0]]


def test_floors_import_downward_only():
  graph, _ = import_graph()
  upward = sorted(f"{m} -> {d}" for m, deps in graph.items() for d in deps if floor(d) > floor(m))
  assert not upward


def test_no_module_imports_an_entry_point():
  graph, entries = import_graph()
  assert "pipeline.to_maxtext" in entries and "pipeline.plan" in entries
  offending = sorted(f"{m} -> {d}" for m, deps in graph.items() for d in deps if d in entries)
  assert not offending


def test_no_import_cycles():
  graph, _ = import_graph()
  state: dict[str, int] = {}
  cycles = []

  def visit(module, path):
    state[module] = 1
    for dep in sorted(graph[module]):
      if state.get(dep) == 1:
        cycles.append(path[path.index(dep):] + [dep])
      elif dep not in state:
        visit(dep, path + [dep])
    state[module] = 2

  for module in sorted(graph):
    if module not in state:
      visit(module, [module])
  assert not cycles
