"""The import graph of `jaxsr/` points one way, `jaxsr/cpu` has one door, and no room is too big.

Every `import` in the package (module-level or inside a function: a lazy import is still a
dependency) is read with `ast`, without importing anything. The graph must have no cycle, and
every module imports only from its own layer or those below it (`LAYERS`, bottom to top; the
same list as `jaxsr/__init__.py`'s docstring):

    cache, files, progress, hardware  <  cpu  <  platform  <  ops  <  torch_import, losses  <  models
      <  io, sharding, checkpoints, ...  <  data, config_lib  <  paired, experiment  <  predict
      <  evaluate, infer  <  validation  <  train  <  aot  <  cli, convert  <  main

The CPU tuning stays behind its door: everything that exists only to make XLA:CPU fast lives in
`jaxsr/cpu/`, and every module of `jaxsr/` outside it imports the package (`from jaxsr import
cpu`) and uses only the names in its `__all__`, never a submodule (`jaxsr.cpu.hook`,
`jaxsr.cpu.native`, ...). The rule is for `jaxsr/` only: benchmarks and tests that measure or
test the CPU internals themselves (`native.load`, `process.*`, `conv.plan`) import the submodules.
No model or op asks the host for its default backend while tracing: a platform choice is made at
lowering (`cpu.on_cpu`) or passed in explicitly (`models.create(cfg, platform)`). In models and
ops, the CPU branch of every platform choice (`cpu.on_cpu`) is a `jaxsr.cpu` formulation, and the
only FFTs they compute themselves are USRNet's closed-form data step (any other FFT formulation is
CPU tuning).

Rooms of one job: no module of `jaxsr/` over MAX_MODULE_LINES lines, no function over
MAX_FUNCTION_LINES, and at most one `def check_config` (one check of a config).

Each checker has a test that shows it can fail, on a synthetic file or tree.
`python -m pytest tests/test_architecture.py` shows any violation with the file and line.
"""
from __future__ import annotations

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "jaxsr"

# Bottom to top: a module imports only from its own layer (without a cycle) or the layers below.
# A name covers the module and everything under it (`jaxsr.models` is the package and its files).
LAYERS: tuple[tuple[str, ...], ...] = (
    ("jaxsr.cache", "jaxsr.files", "jaxsr.progress", "jaxsr.assets", "jaxsr.hardware"),  # leaves
    ("jaxsr.cpu",),               # XLA:CPU tuning behind one door
    ("jaxsr.platform", "jaxsr"),  # platform detection, compile options, jit; the package's `jaxsr.jit`
    ("jaxsr.ops",),               # pure array functions
    ("jaxsr.torch_import", "jaxsr.losses"),
    ("jaxsr.models",),
    ("jaxsr.io", "jaxsr.sharding", "jaxsr.checkpoints", "jaxsr.metric_writer", "jaxsr.preemption", "jaxsr.chart"),
    ("jaxsr.data", "jaxsr.config_lib"),
    ("jaxsr.paired", "jaxsr.experiment"),  # published test files; a config resolved once
    ("jaxsr.predict",),
    ("jaxsr.evaluate", "jaxsr.infer"),
    ("jaxsr.validation",),
    ("jaxsr.train",),
    ("jaxsr.aot",),
    ("jaxsr.cli", "jaxsr.convert"),
    ("jaxsr.main",),
)
MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 80


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


def layer_of(module: str, layers=LAYERS) -> int | None:
    """The index in `layers` of the longest name that is `module` or a package above it."""
    best = None
    for i, names in enumerate(layers):
        for name in names:
            if (module == name or module.startswith(name + ".")) and (best is None or len(name) > best[1]):
                best = (i, len(name))
    return None if best is None else best[0]


def layer_problems(edges: dict[str, dict[str, int]], layers=LAYERS) -> list[str]:
    """Modules in no layer, and imports of a module from a higher layer."""
    problems = [f"{name} is in no layer of LAYERS" for name in sorted(edges) if layer_of(name, layers) is None]
    for name, targets in sorted(edges.items()):
        here = layer_of(name, layers)
        for target, line in targets.items():
            there = layer_of(target, layers)
            if here is not None and there is not None and there > here:
                problems.append(f"{name.replace('.', '/')}.py:{line} imports {target} from a higher layer")
    return problems


def test_every_import_points_down_the_layers():
    problems = layer_problems(graph())
    assert not problems, "upward imports or unplaced modules:\n" + "\n".join(problems)


def test_the_layer_checker_can_fail():
    layers = (("jaxsr.cache",), ("jaxsr.cpu",), ("jaxsr.ops",))
    edges = {"jaxsr.cache": {}, "jaxsr.cpu.hook": {"jaxsr.cache": 3, "jaxsr.ops.degrade": 7},
             "jaxsr.ops.degrade": {"jaxsr.cpu": 2}, "jaxsr.newcomer": {}}
    assert layer_problems(edges, layers) == ["jaxsr.newcomer is in no layer of LAYERS",
                                             "jaxsr/cpu/hook.py:7 imports jaxsr.ops.degrade from a higher layer"]


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


# ----------------------------------------------------------------------------- the door into jaxsr/cpu

def door_names(package: pathlib.Path = None) -> set[str]:
    """The names `jaxsr/cpu/__init__.py` lists in `__all__` (read without importing it)."""
    init = (package or PACKAGE) / "cpu" / "__init__.py"
    for node in ast.parse(init.read_text(), str(init)).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "__all__" for t in node.targets):
            return set(ast.literal_eval(node.value))
    raise AssertionError(f"{init} has no __all__")


def door_problems(path: pathlib.Path, door: set[str]) -> list[str]:
    """Uses of jaxsr.cpu in a module outside it other than the door's names: an import of a
    submodule or of a name not in `__all__`, and `cpu.NAME` (or `jaxsr.cpu.NAME`) on the package
    for a NAME not in `__all__` (a submodule reached as an attribute, or a private name)."""
    tree = ast.parse(path.read_text(), str(path))
    problems = []
    aliases = set()  # local names bound to the package jaxsr.cpu
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and not node.level and node.module:
            if node.module == "jaxsr":
                aliases |= {a.asname or a.name for a in node.names if a.name == "cpu"}
            elif node.module == "jaxsr.cpu":
                problems += [f"{node.lineno}: from jaxsr.cpu import {a.name}" for a in node.names if a.name not in door]
            elif node.module.startswith("jaxsr.cpu."):
                problems.append(f"{node.lineno}: from {node.module} import ...")
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("jaxsr.cpu."):
                    problems.append(f"{node.lineno}: import {a.name}")
                elif a.name == "jaxsr.cpu" and a.asname:
                    aliases.add(a.asname)
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute):
            continue
        on_package = (isinstance(node.value, ast.Name) and node.value.id in aliases) or (
            isinstance(node.value, ast.Attribute) and node.value.attr == "cpu"
            and isinstance(node.value.value, ast.Name) and node.value.value.id == "jaxsr")
        if on_package and node.attr not in door:
            problems.append(f"{node.lineno}: cpu.{node.attr} is not in jaxsr.cpu.__all__")
    return sorted(problems, key=lambda problem: int(problem.split(":")[0]))


def test_outside_jaxsr_cpu_only_the_door_is_used():
    door = door_names()
    bad = [f"{p.relative_to(PACKAGE.parent)}:{problem}" for p in sorted(PACKAGE.rglob("*.py"))
           if (PACKAGE / "cpu") not in p.parents for problem in door_problems(p, door)]
    assert not bad, "jaxsr.cpu reached around its door (export the name from jaxsr/cpu/__init__.py):\n" + "\n".join(bad)


def test_the_door_checker_can_fail(tmp_path):
    cpu = tmp_path / "jaxsr" / "cpu"
    cpu.mkdir(parents=True)
    (cpu / "__init__.py").write_text('from jaxsr.cpu.hook import conv2d, on_cpu\n__all__ = ["conv2d", "on_cpu"]\n')
    f = tmp_path / "jaxsr" / "m.py"
    f.write_text("from jaxsr import cpu\n"                       # 1: the door
                 "from jaxsr.cpu import conv2d\n"                # 2: a door name
                 "from jaxsr.cpu import hook\n"                  # 3: a submodule
                 "import jaxsr.cpu.native\n"                     # 4: a submodule
                 "from jaxsr.cpu.conv import plan\n"             # 5: a submodule's name
                 "y = cpu.conv2d(x) + cpu.on_cpu(x)\n"           # 6: fine
                 "z = cpu.native.load()\n"                       # 7: a submodule as an attribute
                 "import jaxsr.cpu as tuning\n"                  # 8: the package, aliased
                 "w = tuning._conv2d(x) + jaxsr.cpu.hook\n")     # 9: a private name; a submodule
    door = door_names(tmp_path / "jaxsr")
    assert door == {"conv2d", "on_cpu"}
    assert [int(p.split(":")[0]) for p in door_problems(f, door)] == [3, 4, 5, 7, 9, 9]


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
                                                   "unfolding", "cpu_conv", "cpu", "process", "platform")):
                            bad.append(f"{p.relative_to(PACKAGE.parent)}:{node.lineno} sets {t.value.id}.{t.attr}")
    assert not bad, "module switches set from outside:\n" + "\n".join(bad)



# ----------------------------------------------------------------------------- the CPU formulations

# The FFTs models and ops may compute themselves: USRNet's closed-form data step is FFTs on every
# platform. Any other FFT formulation exists for XLA:CPU and lives in jaxsr/cpu/ (reached as `cpu.*`).
FFT_ALLOWED = {"jaxsr/ops/unfolding.py": {"p2o", "data_precompute", "data_step"}}


def _fft_lines(path: pathlib.Path, allowed=frozenset()) -> list[int]:
    """Lines that name an FFT (any identifier containing "fft": `jnp.fft.*`, `jax.lax.fft`, an import,
    a def), outside the functions in `allowed`; `cpu.<name>` (a jaxsr.cpu formulation) is not one."""
    lines = set()

    def visit(node, inside):
        inside = inside or (isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name in allowed)
        if isinstance(node, ast.Name):
            names = [node.id]
        elif isinstance(node, ast.Attribute):
            names = [] if isinstance(node.value, ast.Name) and node.value.id == "cpu" else [node.attr]
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
                     "cpu.*; a general FFT algorithm goes into FFT_ALLOWED):\n" + "\n".join(bad))


def test_the_fft_checker_can_fail(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("import jax.numpy as jnp\nfrom jaxsr import cpu\n"
                 "def blur(x):\n    return jnp.fft.rfft2(x)\n"            # 3-4: an FFT formulation
                 "def step(x):\n    return jnp.real(jnp.fft.ifft2(x))\n"  # 5-6: allowed below
                 "from numpy import fft as spectral\n"                      # 7: an import
                 "def _correlate_fft(x):\n    return cpu.correlate_fft(x)\n")  # 8: a def; 9: cpu's is fine
    assert _fft_lines(f, {"step"}) == [4, 7, 8]


def _is_cpu_formulation(node) -> bool:
    """`cpu.NAME`, or a lambda whose body only calls `cpu.NAME` with names, constants and
    attributes of names as arguments (no computation of its own)."""
    def cpu_attr(n):
        return isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name) and n.value.id == "cpu"

    def plain(n):
        while isinstance(n, (ast.Attribute, ast.Starred)):
            n = n.value
        return isinstance(n, (ast.Name, ast.Constant))

    if cpu_attr(node):
        return True
    if isinstance(node, ast.Lambda) and isinstance(node.body, ast.Call) and cpu_attr(node.body.func):
        return all(plain(a) for a in node.body.args) and all(plain(k.value) for k in node.body.keywords)
    return False


def _platform_choice_problems(path: pathlib.Path) -> list[str]:
    """Platform choices in a model or op that do not take their CPU branch from jaxsr.cpu: an
    `on_cpu` whose `cpu` is not a jaxsr.cpu formulation, `on_cpu` used other than called, or
    `platform_dependent` called around the door."""
    tree = ast.parse(path.read_text(), str(path))
    called = {id(node.func) for node in ast.walk(tree) if isinstance(node, ast.Call)}
    problems = []
    for node in ast.walk(tree):
        name = node.id if isinstance(node, ast.Name) else node.attr if isinstance(node, ast.Attribute) else None
        if name == "platform_dependent":
            problems.append(f"{node.lineno}: platform_dependent (use cpu.on_cpu)")
        elif name == "on_cpu" and id(node) not in called:
            problems.append(f"{node.lineno}: on_cpu used other than called")
        if isinstance(node, ast.Call) and (getattr(node.func, "attr", None) == "on_cpu" or getattr(node.func, "id", None) == "on_cpu"):
            cpu = next((k.value for k in node.keywords if k.arg == "cpu"), None)
            if not _is_cpu_formulation(cpu):
                problems.append(f"{node.lineno}: on_cpu's cpu branch is not cpu.<formulation>")
    return problems


def test_the_cpu_branch_of_every_platform_choice_is_a_jaxsr_cpu_formulation():
    bad = [f"{p.relative_to(PACKAGE.parent)}:{problem}" for folder in ("models", "ops")
           for p in sorted((PACKAGE / folder).rglob("*.py")) for problem in _platform_choice_problems(p)]
    assert not bad, "a CPU formulation outside jaxsr/cpu/:\n" + "\n".join(bad)


def test_the_platform_choice_checker_can_fail(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("import jax\nfrom jaxsr import cpu\n"
                 "a = cpu.on_cpu(x, cpu=cpu.correlate_fft, default=f)\n"                      # 3: fine
                 "b = cpu.on_cpu(x, cpu=lambda x, k: cpu.blur_downsample(x, k, spec.scale, m), default=f)\n"  # 4: fine
                 "c = cpu.on_cpu(x, cpu=_my_fft, default=f)\n"                                 # 5: an ops function
                 "d = cpu.on_cpu(x, cpu=lambda x: cpu.correlate_fft(_pad(x)), default=f)\n"   # 6: computes first
                 "e = cpu.on_cpu(x, default=f, cpu=lambda x: _my_fft(x))\n"                   # 7: an ops function
                 "choose = cpu.on_cpu\n"                                                       # 8: an alias
                 "g = jax.lax.platform_dependent(x, cpu=cpu.correlate_fft, default=f)\n")     # 9: around the door
    assert sorted(int(p.split(":")[0]) for p in _platform_choice_problems(f)) == [5, 6, 7, 8, 9]


# ----------------------------------------------------------------------------- rooms of one job

def size_problems(root: pathlib.Path, max_module: int = MAX_MODULE_LINES,
                  max_function: int = MAX_FUNCTION_LINES) -> list[str]:
    """Modules under `root` over `max_module` lines and functions (methods and nested ones
    included; from `def` to their last line) over `max_function`."""
    problems = []
    for p in sorted(root.rglob("*.py")):
        text = p.read_text()
        rel = p.relative_to(root.parent)
        lines = len(text.splitlines())
        if lines > max_module:
            problems.append(f"{rel}: {lines} lines (at most {max_module})")
        for node in ast.walk(ast.parse(text, str(p))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > max_function:
                    problems.append(f"{rel}:{node.lineno} {node.name}: {length} lines (at most {max_function})")
    return problems


def test_no_module_or_function_too_long():
    problems = size_problems(PACKAGE)
    assert not problems, "split these into rooms of one job:\n" + "\n".join(problems)


def test_the_size_checker_can_fail(tmp_path):
    pkg = tmp_path / "jaxsr"
    pkg.mkdir()
    (pkg / "long.py").write_text("x = 1\n" * (MAX_MODULE_LINES + 1))
    body = "".join(f"y{i} = {i}\n" for i in range(MAX_FUNCTION_LINES - 1))  # a def and these: the limit
    indent = lambda text, n: "".join(" " * n + line for line in text.splitlines(keepends=True))
    (pkg / "fn.py").write_text(f"def fits():\n{indent(body, 4)}\n\nclass C:\n    def too_long(self):\n"
                               f"{indent(body, 8)}        pass\n")
    assert size_problems(pkg) == [f"jaxsr/fn.py:{MAX_FUNCTION_LINES + 4} too_long: {MAX_FUNCTION_LINES + 1} lines "
                                  f"(at most {MAX_FUNCTION_LINES})",
                                  f"jaxsr/long.py: {MAX_MODULE_LINES + 1} lines (at most {MAX_MODULE_LINES})"]


def check_config_definitions(root: pathlib.Path) -> list[str]:
    """Every `def check_config` under `root` (module level, method or nested)."""
    return [f"{p.relative_to(root.parent)}:{node.lineno}" for p in sorted(root.rglob("*.py"))
            for node in ast.walk(ast.parse(p.read_text(), str(p)))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == "check_config"]


def test_at_most_one_check_config():
    found = check_config_definitions(PACKAGE)
    assert len(found) <= 1, "one check of a config (jaxsr.experiment.resolve), not several:\n" + "\n".join(found)


def test_the_check_config_checker_can_fail(tmp_path):
    pkg = tmp_path / "jaxsr"
    pkg.mkdir()
    (pkg / "train.py").write_text("def check_config(cfg):\n    pass\n")
    (pkg / "predict.py").write_text("class P:\n    def check_config(self):\n        pass\n")
    assert check_config_definitions(pkg) == ["jaxsr/predict.py:2", "jaxsr/train.py:1"]
