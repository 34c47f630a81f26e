"""The import graph of `jaxsr/` points one way.

Every `import` in the package (module-level or inside a function: a lazy import is still a
dependency) is read with `ast`, without importing anything. The graph must have no cycle, and
the low layers must not reach up:

    ops  <  torch_import  <  models  <  data, config_lib, checkpoints, ...  <  train  <  predict  <  cli, main

`python -m pytest tests/test_architecture.py` shows any violation with the file and line.
"""
from __future__ import annotations

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "jaxsr"

# module prefix -> modules it must never import (directly or lazily)
FORBIDDEN = {
    # compile options: the bottom layer, used by ops, models and the loop alike
    "jaxsr.xla_options": ("jaxsr.ops", "jaxsr.models", "jaxsr.torch_import", "jaxsr.train", "jaxsr.predict",
                          "jaxsr.cli", "jaxsr.main", "jaxsr.config_lib", "jaxsr.data", "jaxsr.evaluate"),
    # the CPU's native kernels: below models, beside the compile options
    "jaxsr.cpu_kernels": ("jaxsr.xla_options", "jaxsr.ops", "jaxsr.models", "jaxsr.torch_import", "jaxsr.train",
                          "jaxsr.predict", "jaxsr.cli", "jaxsr.main", "jaxsr.config_lib", "jaxsr.data",
                          "jaxsr.evaluate"),
    "jaxsr.ops": ("jaxsr.models", "jaxsr.torch_import", "jaxsr.train", "jaxsr.predict", "jaxsr.cli",
                  "jaxsr.main", "jaxsr.convert", "jaxsr.evaluate", "jaxsr.infer", "jaxsr.config_lib",
                  "jaxsr.data", "jaxsr.validation"),
    "jaxsr.torch_import": ("jaxsr.models", "jaxsr.train", "jaxsr.predict", "jaxsr.cli", "jaxsr.convert"),
    "jaxsr.models": ("jaxsr.train", "jaxsr.predict", "jaxsr.cli", "jaxsr.main", "jaxsr.convert",
                     "jaxsr.evaluate", "jaxsr.infer", "jaxsr.config_lib", "jaxsr.data", "jaxsr.validation",
                     "jaxsr.checkpoints"),
    "jaxsr.config_lib": ("jaxsr.models", "jaxsr.train", "jaxsr.predict", "jaxsr.cli"),
    "jaxsr.data": ("jaxsr.models", "jaxsr.train", "jaxsr.predict", "jaxsr.cli"),
    "jaxsr.train": ("jaxsr.predict", "jaxsr.cli", "jaxsr.main", "jaxsr.convert", "jaxsr.evaluate", "jaxsr.infer"),
    "jaxsr.predict": ("jaxsr.cli", "jaxsr.main", "jaxsr.convert"),
    # reading published test files: below evaluate, knows no model or config
    "jaxsr.paired": ("jaxsr.models", "jaxsr.train", "jaxsr.predict", "jaxsr.cli", "jaxsr.evaluate",
                     "jaxsr.config_lib"),
}


def module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: pathlib.Path) -> list[tuple[str, int]]:
    """(imported jaxsr module, line) for every import statement in the file."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative import
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            found.append((target, node.lineno))
            # `from jaxsr import train` imports the module jaxsr.train
            found += [(f"{target}.{alias.name}", node.lineno) for alias in node.names]
    return [(mod, line) for mod, line in found if mod == "jaxsr" or mod.startswith("jaxsr.")]


def graph() -> dict[str, dict[str, int]]:
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    edges: dict[str, dict[str, int]] = {m: {} for m in modules}
    for name, path in modules.items():
        for target, line in imports_of(path):
            # resolve `jaxsr.ops.degrade.blur`-like names to the longest existing module
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != name and not name.startswith(target + "."):  # a package's own __init__
                edges[name].setdefault(target, line)
    return edges


def find_cycle(edges: dict[str, dict[str, int]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node):
        state[node] = 1
        stack.append(node)
        for nxt in edges[node]:
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def test_the_graph_is_read():
    edges = graph()
    assert "jaxsr.models.dan" in edges and "jaxsr.ops.degrade" in edges["jaxsr.train"]
    assert "jaxsr.torch_import" in edges["jaxsr.models.dssr"]


def test_no_import_cycle():
    cycle = find_cycle(graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_no_upward_import(layer):
    bad = []
    for name, targets in graph().items():
        if name == layer or name.startswith(layer + "."):
            for target, line in targets.items():
                if any(target == f or target.startswith(f + ".") for f in FORBIDDEN[layer]):
                    bad.append(f"{name.replace('.', '/')}.py:{line} imports {target}")
    assert not bad, "upward imports:\n" + "\n".join(bad)


def test_the_checker_sees_lazy_and_relative_imports(tmp_path):
    """The parser itself: a function-level import and a relative one are both found."""
    pkg = tmp_path / "jaxsr" / "models"
    pkg.mkdir(parents=True)
    f = pkg / "bad.py"
    f.write_text("def f():\n    from jaxsr import train\n    from ..cli import main\n")
    global PACKAGE
    saved, PACKAGE = PACKAGE, tmp_path / "jaxsr"
    try:
        found = {mod for mod, _ in imports_of(f)}
    finally:
        PACKAGE = saved
    assert {"jaxsr.train", "jaxsr.cli", "jaxsr.cli.main"} <= found
