"""The import graph of `jaxsr/` points one way.

Every `import` in the package (module-level or inside a function: a lazy import is still a
dependency) is read with `ast`, without importing anything. The graph must have no cycle, and
the low layers must not reach up:

    cache  <  cpu  <  ops  <  torch_import  <  models  <  data, config_lib, ...  <  train  <  predict  <  cli, main

and the CPU tuning stays behind its boundary: everything that exists only to make XLA:CPU fast
lives in `jaxsr/cpu/`, models and ops reach it only through `jaxsr.cpu.hook` (whose functions
choose per the platform a program is compiled for), and no model or op asks the host for its
default backend while tracing: a platform choice is made at lowering (the hook) or passed in
explicitly (`models.create(cfg, platform)`).

`python -m pytest tests/test_architecture.py` shows any violation with the file and line.
"""
from __future__ import annotations

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "jaxsr"

# module prefix -> modules it must never import (directly or lazily)
FORBIDDEN = {
    "jaxsr.cache": ("jaxsr.cpu", "jaxsr.ops", "jaxsr.models", "jaxsr.torch_import", "jaxsr.train", "jaxsr.predict",
                    "jaxsr.cli", "jaxsr.main", "jaxsr.config_lib", "jaxsr.data", "jaxsr.evaluate"),
    # the CPU tuning: below ops, knows nothing of them
    "jaxsr.cpu": ("jaxsr.ops", "jaxsr.models", "jaxsr.torch_import", "jaxsr.train", "jaxsr.predict",
                  "jaxsr.cli", "jaxsr.main", "jaxsr.config_lib", "jaxsr.data", "jaxsr.evaluate", "jaxsr.infer",
                  "jaxsr.validation", "jaxsr.checkpoints", "jaxsr.losses"),
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


def test_models_and_ops_reach_the_cpu_tuning_only_through_the_hook():
    bad = []
    for folder in ("models", "ops"):
        for path in sorted((PACKAGE / folder).rglob("*.py")):
            found = imports_of(path)
            hook_lines = {line for mod, line in found if mod == "jaxsr.cpu.hook"}
            for mod, line in found:
                # `from jaxsr.cpu import hook` names the package on the hook's line
                if mod.startswith("jaxsr.cpu") and mod != "jaxsr.cpu.hook" and not (mod == "jaxsr.cpu" and line in hook_lines):
                    bad.append(f"{path.relative_to(PACKAGE.parent)}:{line} imports {mod}")
    assert not bad, "CPU tuning reached around the hook:\n" + "\n".join(bad)


def _calls_default_backend(path: pathlib.Path) -> list[int]:
    tree = ast.parse(path.read_text(), str(path))
    return [node.lineno for node in ast.walk(tree)
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "default_backend"]


def test_no_model_or_op_asks_the_host_for_its_backend():
    """A program traced on a CPU host for a TPU must get the TPU's choices: models and ops never
    read `jax.default_backend()`."""
    bad = [f"{p.relative_to(PACKAGE.parent)}:{line}" for folder in ("models", "ops", "cpu")
           for p in sorted((PACKAGE / folder).rglob("*.py")) for line in _calls_default_backend(p)]
    assert not bad, "jax.default_backend() in models/ops/cpu:\n" + "\n".join(bad)


def test_the_backend_checker_can_fail(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("import jax\nif jax.default_backend() == 'cpu':\n    pass\n")
    assert _calls_default_backend(f) == [2]


def test_no_module_switch_in_models_ops_or_the_cpu_formulations():
    """No module-level variable of models/ops/cpu is assigned from outside its module (a global
    switch read at trace time would change programs behind the jit cache's back): every
    `module.NAME = ...` assignment in the package and its benchmarks is listed here."""
    bad = []
    roots = [PACKAGE, PACKAGE.parent / "benchmarks"]
    for root in roots:
        for p in sorted(root.rglob("*.py")):
            for node in ast.walk(ast.parse(p.read_text(), str(p))):
                if isinstance(node, (ast.Assign, ast.AugAssign)):
                    targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                    for t in targets:
                        if (isinstance(t, ast.Attribute) and isinstance(t.value, ast.Name)
                                and t.value.id in ("layers", "hook", "conv", "native", "compile", "degrade",
                                                   "unfolding", "cpu_conv", "cpu")):
                            bad.append(f"{p.relative_to(PACKAGE.parent)}:{node.lineno} sets {t.value.id}.{t.attr}")
    assert not bad, "module switches set from outside:\n" + "\n".join(bad)
