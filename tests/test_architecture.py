"""The import graph of `jaxsr/` points one way.

Every `import` in the package (module-level or inside a function: a lazy import is still a
dependency) is read with `ast`, without importing anything. The graph must have no cycle, and
the low layers must not reach up:

    cache  <  cpu  <  ops  <  torch_import  <  models  <  data, config_lib, ...  <  train  <  predict  <  cli, main

and the CPU tuning stays behind its boundary: everything that exists only to make XLA:CPU fast
lives in `jaxsr/cpu/`, models and ops reach it only through `jaxsr.cpu.hook` (whose functions
choose per the platform a program is compiled for), and no model or op asks the host for its
default backend while tracing: a platform choice is made at lowering (the hook) or passed in
explicitly (`models.create(cfg, platform)`). In models and ops, the CPU branch of every platform
choice (`hook.on_cpu`) is a `jaxsr.cpu` formulation, and the only FFTs they compute themselves are
USRNet's closed-form data step (any other FFT formulation is CPU tuning).

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



# ----------------------------------------------------------------------------- the CPU formulations

# The FFTs models and ops may compute themselves: USRNet's closed-form data step is FFTs on every
# platform. Any other FFT formulation exists for XLA:CPU and lives in jaxsr/cpu/ (reached as `hook.*`).
FFT_ALLOWED = {"jaxsr/ops/unfolding.py": {"p2o", "data_precompute", "data_step"}}


def _fft_lines(path: pathlib.Path, allowed=frozenset()) -> list[int]:
    """Lines that name an FFT (any identifier containing "fft": `jnp.fft.*`, `jax.lax.fft`, an import,
    a def), outside the functions in `allowed`; `hook.<name>` (a jaxsr.cpu formulation) is not one."""
    lines = set()

    def visit(node, inside):
        inside = inside or (isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name in allowed)
        if isinstance(node, ast.Name):
            names = [node.id]
        elif isinstance(node, ast.Attribute):
            names = [] if isinstance(node.value, ast.Name) and node.value.id == "hook" else [node.attr]
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names = [node.name]
        elif isinstance(node, ast.alias):
            names = [node.name, node.asname or ""]
        elif isinstance(node, ast.ImportFrom):
            names = [node.module or ""]
        elif isinstance(node, ast.arg):
            names = [node.arg]
        else:
            names = []
        if not inside and any("fft" in n.lower() for n in names):
            lines.add(node.lineno)
        for child in ast.iter_child_nodes(node):
            visit(child, inside)

    visit(ast.parse(path.read_text(), str(path)), False)
    return sorted(lines)


def test_no_fft_formulation_in_models_or_ops():
    bad = []
    for folder in ("models", "ops"):
        for p in sorted((PACKAGE / folder).rglob("*.py")):
            rel = p.relative_to(PACKAGE.parent).as_posix()
            bad += [f"{rel}:{line}" for line in _fft_lines(p, FFT_ALLOWED.get(rel, frozenset()))]
    assert not bad, ("an FFT formulation in models/ops (CPU tuning belongs in jaxsr/cpu/, reached as "
                     "hook.*; a general FFT algorithm goes into FFT_ALLOWED):\n" + "\n".join(bad))


def test_the_fft_checker_can_fail(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("import jax.numpy as jnp\nfrom jaxsr.cpu import hook\n"
                 "def blur(x):\n    return jnp.fft.rfft2(x)\n"            # 3-4: an FFT formulation
                 "def step(x):\n    return jnp.real(jnp.fft.ifft2(x))\n"  # 5-6: allowed below
                 "from numpy import fft as spectral\n"                      # 7: an import
                 "def _correlate_fft(x):\n    return hook.correlate_fft(x)\n")  # 8: a def; 9: hook's is fine
    assert _fft_lines(f, {"step"}) == [4, 7, 8]


def _is_hook_formulation(node) -> bool:
    """`hook.NAME`, or a lambda whose body only calls `hook.NAME` with names, constants and
    attributes of names as arguments (no computation of its own)."""
    def hook_attr(n):
        return isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name) and n.value.id == "hook"

    def plain(n):
        while isinstance(n, (ast.Attribute, ast.Starred)):
            n = n.value
        return isinstance(n, (ast.Name, ast.Constant))

    if hook_attr(node):
        return True
    if isinstance(node, ast.Lambda) and isinstance(node.body, ast.Call) and hook_attr(node.body.func):
        return all(plain(a) for a in node.body.args) and all(plain(k.value) for k in node.body.keywords)
    return False


def _platform_choice_problems(path: pathlib.Path) -> list[str]:
    """Platform choices in a model or op that do not take their CPU branch from jaxsr.cpu: an
    `on_cpu` whose `cpu` is not a hook formulation, `on_cpu` used other than called, or
    `platform_dependent` called around the hook."""
    tree = ast.parse(path.read_text(), str(path))
    called = {id(node.func) for node in ast.walk(tree) if isinstance(node, ast.Call)}
    problems = []
    for node in ast.walk(tree):
        name = node.id if isinstance(node, ast.Name) else node.attr if isinstance(node, ast.Attribute) else None
        if name == "platform_dependent":
            problems.append(f"{node.lineno}: platform_dependent (use hook.on_cpu)")
        elif name == "on_cpu" and id(node) not in called:
            problems.append(f"{node.lineno}: on_cpu used other than called")
        if isinstance(node, ast.Call) and (getattr(node.func, "attr", None) == "on_cpu" or getattr(node.func, "id", None) == "on_cpu"):
            cpu = next((k.value for k in node.keywords if k.arg == "cpu"), None)
            if not _is_hook_formulation(cpu):
                problems.append(f"{node.lineno}: on_cpu's cpu branch is not hook.<formulation>")
    return problems


def test_the_cpu_branch_of_every_platform_choice_is_a_jaxsr_cpu_formulation():
    bad = [f"{p.relative_to(PACKAGE.parent)}:{problem}" for folder in ("models", "ops")
           for p in sorted((PACKAGE / folder).rglob("*.py")) for problem in _platform_choice_problems(p)]
    assert not bad, "a CPU formulation outside jaxsr/cpu/:\n" + "\n".join(bad)


def test_the_platform_choice_checker_can_fail(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("import jax\nfrom jaxsr.cpu import hook\n"
                 "a = hook.on_cpu(x, cpu=hook.correlate_fft, default=f)\n"                      # 3: fine
                 "b = hook.on_cpu(x, cpu=lambda x, k: hook.blur_downsample(x, k, spec.scale, m), default=f)\n"  # 4: fine
                 "c = hook.on_cpu(x, cpu=_my_fft, default=f)\n"                                 # 5: an ops function
                 "d = hook.on_cpu(x, cpu=lambda x: hook.correlate_fft(_pad(x)), default=f)\n"   # 6: computes first
                 "e = hook.on_cpu(x, default=f, cpu=lambda x: _my_fft(x))\n"                   # 7: an ops function
                 "choose = hook.on_cpu\n"                                                       # 8: an alias
                 "g = jax.lax.platform_dependent(x, cpu=hook.correlate_fft, default=f)\n")     # 9: around the hook
    assert sorted(int(p.split(":")[0]) for p in _platform_choice_problems(f)) == [5, 6, 7, 8, 9]
