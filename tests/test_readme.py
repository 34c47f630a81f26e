"""The README stays short and its commands and inference example stay true.

The inference example (the first ```python block after the heading "Super-resolve an array from
Python") runs as written in a temporary folder holding `configs/` (a link), a tiny DAN checkpoint in
`runs/dan_cpu` and `photo_lr.png`, with one documented substitution: the variant "cpu" becomes
"tiny" so that it loads the tiny checkpoint. The custom training step (the block after "Your own training
step") runs with the same substitution, and its FLOPs are checked against the trainer's step.
"""
import importlib.util
import os
import re
from pathlib import Path

import jax
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
HEADING = "### Super-resolve an array from Python"


def python_block_after(text: str, heading: str) -> str:
    start = text.index(heading)
    match = re.search(r"```python\n(.*?)```", text[start:], re.S)
    assert match, f"no python block after {heading!r}"
    return match.group(1)


def named_things(text: str):
    modules = set(re.findall(r"python3? -m (jaxsr(?:\.\w+)*)", text))
    configs = set(re.findall(r"configs/(\w+)\.py:(\w+)", text))
    benches = set(re.findall(r"benchmarks/(\w+)\.py", text))
    return modules, configs, benches


def check_names(text: str) -> list[str]:
    from jaxsr import config_lib
    problems = []
    modules, configs, benches = named_things(text)
    for m in sorted(modules):
        if importlib.util.find_spec(m) is None:
            problems.append(f"module {m}")
    for file, variant in sorted(configs):
        path = ROOT / "configs" / f"{file}.py"
        if not path.is_file() or variant not in config_lib.load_module(path).VARIANTS:
            problems.append(f"configs/{file}.py:{variant}")
    for b in sorted(benches):
        if not (ROOT / "benchmarks" / f"{b}.py").is_file():
            problems.append(f"benchmarks/{b}.py")
    return problems


def test_readme_is_short():
    assert len(README.read_text().splitlines()) <= 250


@pytest.mark.parametrize("path", [README, *DOCS], ids=lambda p: p.name)
def test_named_modules_configs_and_benchmarks_exist(path):
    assert check_names(path.read_text()) == []


def test_name_check_can_fail():
    bad = ("python -m jaxsr.no_such_module configs/dan.py:no_such_variant configs/nofile.py:tiny "
           "benchmarks/no_such_bench.py")
    assert len(check_names(bad)) == 4


def write_tiny_checkpoint(workdir: str):
    """A tiny DAN checkpoint with random parameters (no training, no init compile)."""
    from jaxsr import checkpoints, config_lib, experiment, train
    exp = experiment.resolve(config_lib.load(str(ROOT / "configs/dan.py"), "tiny"))
    cfg = exp.cfg
    abstract = jax.eval_shape(train.build_program(exp).init_state)
    rng = np.random.default_rng(0)
    state = jax.tree.map(lambda a: (0.05 * rng.standard_normal(a.shape)).astype(a.dtype)
                         if np.issubdtype(a.dtype, np.floating) else np.zeros(a.shape, a.dtype), abstract)
    ckpt = checkpoints.Checkpointer(os.path.join(workdir, "checkpoints"), async_save=False)
    ckpt.save(0, state, {}, checkpoints.fingerprint(cfg, state.params), force=True)
    ckpt.close()


def test_readme_inference_example_runs(tmp_path, monkeypatch):
    code = python_block_after(README.read_text(), HEADING)
    assert code.count('"cpu"') == 1 and "predict.build(" in code
    code = code.replace('"cpu"', '"tiny"')
    (tmp_path / "configs").symlink_to(ROOT / "configs")
    write_tiny_checkpoint(str(tmp_path / "runs" / "dan_cpu"))
    from jaxsr import io as jio
    jio.write_image(tmp_path / "photo_lr.png", np.random.default_rng(1).random((24, 24, 3)).astype(np.float32))
    monkeypatch.chdir(tmp_path)
    scope = {}
    exec(compile(code, "README.md", "exec"), scope)
    sr, kernel = np.asarray(scope["sr"]), np.asarray(scope["kernel"])
    assert sr.shape == (1, 48, 48, 3) and np.isfinite(sr).all()
    assert kernel.ndim == 3 and np.isfinite(kernel).all()
    assert (tmp_path / "photo_sr.png").is_file()


STEP_HEADING = "### Your own training step"


def _flops(jitted, *args) -> float:
    """XLA's cost analysis of the program `jitted` lowers to for CPU, traced without the native
    kernels (XLA does not count custom calls). The lowered module, not the compiled one: the
    skipped backward pass is absent from it already, and counting it needs no compile."""
    from jaxsr import cpu
    with cpu.native_suspended():  # also drops a trace made earlier with the native kernels on
        lowered = jitted.lower(*args)
    assert 'custom_call_target="jaxsr_' not in lowered.as_text(dialect="hlo")
    analysis = lowered.cost_analysis()
    return float((analysis[0] if isinstance(analysis, (list, tuple)) else analysis)["flops"])


def test_readme_training_step_runs_and_costs_what_the_trainer_does(tmp_path, monkeypatch):
    """The README's custom step trains, and its FLOPs are the trainer's step's (`train.build_program`,
    same batch): the DAN forward it differentiates skips the unweighted iteration. The same step
    on a plain `model.apply` (every iteration differentiated) costs clearly more, so this can fail."""
    code = python_block_after(README.read_text(), STEP_HEADING)
    assert code.count('"cpu"') == 1 and "spec.forward(" in code and "jax.value_and_grad(" in code
    (tmp_path / "configs").symlink_to(ROOT / "configs")
    monkeypatch.chdir(tmp_path)
    scope = {}
    exec(compile(code.replace('"cpu"', '"tiny"'), "README.md", "exec"), scope)
    assert np.isfinite(float(scope["loss"]))
    from jaxsr import experiment, train
    exp, model, hr, params = scope["exp"], scope["model"], scope["hr"], scope["params"]
    # the loss weights the last of 2 iterations; unrolled (as on any CPU), XLA counts each one
    assert model.num_iters == 2 and exp.cfg.loss.iter_weights is None and model.scan_unroll == 0
    cfg = exp.cfg.copy_and_resolve_references()
    cfg.data.patch_size = hr.shape[1] // cfg.scale  # the trainer's step on the README's batch
    program = train.build_program(experiment.resolve(cfg), jax.devices("cpu")[:1], batch=hr.shape[0], model=model)
    assert program.hr_batch.shape == hr.shape
    trainer = _flops(program.jitted, program.abstract_state, program.hr_batch)
    state = (params, scope["tx"].init(params), jax.random.key(0), hr)
    assert _flops(scope["train_step"], *state) == pytest.approx(trainer, rel=0.03)
    plain = code.replace('spec.forward(model, {"params": params}, batch, cfg)',
                         'model.apply({"params": params}, batch["lr"])')
    assert plain != code
    exec(compile(plain[:plain.index("hr = ")].replace('"cpu"', '"tiny"'), "README.md", "exec"), scope)
    assert _flops(scope["train_step"], *state) > 1.3 * trainer  # the T=2 model's 1.5x, diluted by the rest
