"""Deviceless AOT compile checks (jaxsr.aot): target names, TPU compiles of small variants on this
CPU-only machine (libtpu compiles without chips), the fit verdict, the over-budget exit status
and advice, and the GPU path where the CUDA plugin is installed."""
from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest

from jaxsr import aot, config_lib, experiment

ROOT = pathlib.Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"

HAVE_LIBTPU = aot.libtpu_installed()
HAVE_CUDA_PLUGIN = aot.cuda_plugin_installed()
needs_libtpu = pytest.mark.skipif(
    not HAVE_LIBTPU, reason="libtpu is not installed (pip install -e '.[tpu]'): TPU AOT compiles need it, no TPU needed")
needs_cuda_plugin = pytest.mark.skipif(
    not HAVE_CUDA_PLUGIN, reason="the CUDA plugin is not installed (pip install 'jax[cuda12]'): GPU AOT compiles "
                                 "need it, no GPU needed")


def _config(name: str):
    return config_lib.load(str(CONFIGS / name))


def _check_program(report: dict, name: str) -> dict:
    """The invariants every compiled program must satisfy."""
    p = report["programs"][name]
    assert "error" not in p, p.get("error")
    calls = p["custom_calls"]
    # jaxsr's native kernel (jaxsr_*) is among the CPU-only calls
    assert not aot.cpu_only_calls(calls), f"CPU-only custom calls in a {report['target']} program: {calls}"
    mem = p["memory"]
    for key in ("argument", "output", "total"):
        assert mem[key] > 0, (key, mem)
    assert mem["temp"] >= 0 and mem["alias"] >= 0
    assert mem["total"] >= mem["argument"] + mem["temp"]
    assert p["compile_s"] > 0
    assert p["host_peak_rss"] > 2**20  # a compiling process holds more than a MiB
    assert p["fits"] is (mem["total"] <= report["memory_bytes"])
    return p


# ----------------------------------------------------------------------------- target names (no compiler needed)

def test_target_names():
    v5e = aot.parse_target("v5e-8")
    assert (v5e.platform, v5e.num_devices, v5e.topology) == ("tpu", 8, "v5e:2x4")
    assert v5e.memory_bytes == int(15.75 * aot.GIB) and v5e.accelerator_type == "v5litepod-8"
    v4 = aot.parse_target("v4-8")  # 8 TensorCores = 4 chips, one megacore device each
    assert (v4.num_devices, v4.topology, dict(v4.topology_kwargs)["chip_config_name"]) == (4, "v4:2x2x1", "megacore")
    assert v4.memory_bytes == 32 * aot.GIB
    assert aot.parse_target("v5p-8").num_devices == 4
    assert aot.parse_target("v4-32").topology == "v4:2x2x4"
    assert aot.parse_target("v5p-128").topology == "v5p:4x4x4"
    assert aot.parse_target("v5e-32").topology == "v5e:4x8"
    assert aot.parse_target("v6e-16").topology == "v6e:4x4"
    one = aot.parse_target("v5e-1")
    assert one.topology == "v5e:1x1" and dict(one.topology_kwargs)["chips_per_host_bounds"] == (1, 1, 1)
    h100 = aot.parse_target("h100-8")
    assert (h100.platform, h100.num_devices, h100.topology) == ("gpu", 8, "1x1x8")
    assert h100.memory_bytes == int(84942979072 * aot.GPU_DEFAULT_MEM_FRACTION)
    for name in ("a100-40g-2", "a100-80g-1", "h200-4"):
        assert aot.parse_target(name).memory_bytes > 0
    assert aot.parse_target("v5e-8", memory_gib=1).memory_bytes == aot.GIB
    for bad in ("v5e", "v3-8", "v4-7", "v5e-6", "h100"):
        with pytest.raises(ValueError):
            aot.parse_target(bad)


def test_shipped_gpu_descriptions_name_their_source():
    for file in aot.GPU_FAMILIES.values():
        text = (pathlib.Path(aot.TARGETS_DIR) / file).read_text()
        assert "github.com/openxla/xla" in text.splitlines()[0] and "Apache" in text
        assert aot.gpu_memory_size(str(pathlib.Path(aot.TARGETS_DIR) / file)) > 30 * aot.GIB


def test_custom_call_scan():
    text = ('%0 = stablehlo.custom_call @jaxsr_conv_kernel_grad(%a) : ...\n'
            'x = f32[2] custom-call(y), custom_call_target="Sharding"')
    names = aot.custom_call_targets(text)
    assert names == ["Sharding", "jaxsr_conv_kernel_grad"]
    assert aot.cpu_only_calls(names) == ["jaxsr_conv_kernel_grad"]


def test_eval_lr_size(tmp_path):
    cfg = _config("dan.py:setting1_x4")
    cfg.eval.dirs = (str(tmp_path / "missing"),)
    from jaxsr.aot.evalsize import count_programs, programs_line
    (h, w), why = aot.eval_lr_size(cfg)
    assert (h, w) == (128, 128) and "ceil(512/4)" in why
    from PIL import Image
    assert "the number of eval programs is unknown" in programs_line(count_programs(cfg))
    Image.new("RGB", (330, 200)).save(tmp_path / "wide.png")  # w x h
    cfg.eval.dirs = (str(tmp_path),)
    (h, w), why = aot.eval_lr_size(cfg)
    assert (h, w) == (50, 82) and "wide.png" in why  # exact by default: the LR at its own size
    programs = programs_line(count_programs(cfg))
    assert "compiles 1 predict program(s)" in programs
    from jaxsr.aot.report import _program_header
    header = _program_header({"batch": {}, "num_devices": 1}, "predict",
                             {"lr_shape": [1, h, w, 3], "lr_choice": why, "eval_programs": programs})
    assert header.splitlines()[1] == "  a configured evaluation compiles 1 predict program(s): 1 image(s) in 1 set(s), " \
                                     "1 distinct LR size(s); exact: each image alone at its own size"
    cfg.eval.bucket = 16  # the opt-in padding (once the default, which this test pinned)
    (h, w), why = aot.eval_lr_size(cfg)
    assert (h, w) == (64, 96) and "padded to a multiple of eval.bucket=16" in why


def test_count_eval_programs(tmp_path):
    """Programs = distinct (batch, LR size) over all sets: exact sizes by default, merged by the
    opt-in bucket; batches of eight Gaussian8 kernels with eval.max_batch=8."""
    from PIL import Image
    from jaxsr.aot.evalsize import count_programs
    for folder, sizes in (("one", [(200, 330), (201, 331), (96, 96)]), ("two", [(200, 330), (120, 64)])):
        (tmp_path / folder).mkdir()
        for i, (h, w) in enumerate(sizes):
            Image.new("RGB", (w, h)).save(tmp_path / folder / f"{i}.png")
    cfg = _config("dan.py:setting1_x4")
    cfg.eval.dirs = (str(tmp_path / "one"), str(tmp_path / "two"))
    # LR at x4: 50x82 (three images over both sets), 24x24, 30x16
    assert count_programs(cfg) == {"programs": 3, "lr_sizes": 3, "images": 5, "sets": 2, "bucket": 1, "max_batch": 1}
    cfg.eval.bucket = 32  # 64x96, 32x32, 32x32
    assert count_programs(cfg)["programs"] == 2
    cfg.eval.update(bucket=1, max_batch=8, protocol="setting2")  # one LR per image: batch 2 and batch 1 of 50x82
    assert count_programs(cfg)["programs"] == 4


# ----------------------------------------------------------------------------- TPU compiles (libtpu, no chips)

@needs_libtpu
def test_tpu_topologies():
    assert len(aot.target_devices(aot.parse_target("v5e-1"))) == 1
    v4 = aot.target_devices(aot.parse_target("v4-8"))
    assert len(v4) == 4 and all(d.num_cores == 2 for d in v4)  # megacore: what users of a v4-8 see
    assert len(aot.target_devices(aot.parse_target("v5e-32"))) == 32  # a multi-host slice, one program


@needs_libtpu
def test_dan_tiny_train_step_and_predict_compile_for_v5e_4():
    report = aot.check(_config("dan.py:tiny"), "v5e-4", count_flops=False, check_remat=False, eval_lr=(16, 16))
    step = _check_program(report, "train_step")
    assert report["settings"]["scan_unroll"] == 1  # the TPU's rolled loop, not the CPU's unrolled one
    assert step["fits"] and report["fits"] and aot.exit_code(report) == 0
    assert step["xla_flops"] is None or step["xla_flops"] > 0
    pred = _check_program(report, "predict")
    assert pred["lr_shape"] == [4, 16, 16, 3]
    text = aot.format_report(report)
    assert "-> fits" in text and "verdict: fits on v5e-4" in text and "temporaries" in text and "host memory" in text


@needs_libtpu
def test_usrnet_tiny_compiles_for_v4_8():
    """v4: megacore devices; USRNet: a non-blind predict (kernel and noise level per image).
    (Where jaxsr's native CPU kernel builds, a gradient plan that picked it regardless of the
    target would put jaxsr_conv_kernel_grad into this TPU program.)"""
    report = aot.check(_config("usrnet.py:tiny"), "v4-8", count_flops=False, check_remat=False, eval_lr=(16, 16))
    assert report["num_devices"] == 4
    _check_program(report, "train_step")
    _check_program(report, "predict")
    assert report["fits"]


def test_unrolled_cpu_flop_count_covers_every_iteration():
    """XLA counts a rolled loop's body once; the unrolled CPU compile counts every iteration."""
    cfg = _config("dan.py:tiny")
    cfg.model.num_iters = 3
    exp = experiment.resolve(cfg)
    unrolled = aot.count_flops_cpu(exp, 4)
    rolled = aot.count_flops_cpu(exp, 4, scan_unroll=1)
    assert unrolled["per_device_batch"] == 1 and unrolled["flops"] and rolled["flops"]
    assert unrolled["flops"] > 1.15 * rolled["flops"]


@needs_libtpu
def test_over_budget_exits_nonzero_with_advice():
    """A 1 MiB budget: the step does not fit; status 1, the remedies, and the remat re-check."""
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    proc = subprocess.run(
        [sys.executable, "-m", "jaxsr.aot", f"--config={CONFIGS / 'dan.py'}:tiny", "--target=v5e-1",
         "--memory_gib=0.001", "--predict=False", "--count_flops=False"],
        capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)
    out = proc.stdout
    assert proc.returncode == 1, proc.stdout + proc.stderr[-3000:]
    assert "does not fit" in out and "What would help" in out
    assert "--config.model.remat=True" in out and "--config.model.dtype=bfloat16" in out
    assert "more devices" in out and "--target=v5e-2" in out and "batch_size=2" in out
    assert "checked: with model.remat=True the step does not fit" in out
    assert "verdict: does not fit on v5e-1" in out


@needs_libtpu
def test_compiler_refusal_is_reported_as_does_not_fit():
    """A batch far beyond a v5e chip's HBM: XLA:TPU refuses to compile (RESOURCE_EXHAUSTED); the
    check reports it as 'does not fit' instead of crashing."""
    cfg = _config("dan.py:tiny")
    cfg.data.batch_size = 1 << 22  # one activation alone is 19 GB (at 1 << 17 XLA may rematerialize its way to a fit)
    report = aot.check(cfg, "v5e-1", count_flops=False, check_remat=False, predict=False)
    step = report["programs"]["train_step"]
    assert step["fits"] is False and not report["fits"] and aot.exit_code(report) == 1
    if step.get("oom"):  # the compiler's own figures, e.g. "HLO temporaries (28.99G) exceeds available HBM (15.75G)"
        assert "RESOURCE_EXHAUSTED" in step["error"] and step["memory"]["from_error"]
    assert step["memory"]["total"] > report["memory_bytes"]
    assert "does not fit" in aot.format_report(report)


def test_unavailable_target_is_reported(monkeypatch):
    if HAVE_CUDA_PLUGIN:
        pytest.skip("the CUDA plugin is installed here")
    with pytest.raises(aot.TargetUnavailable, match="CUDA plugin"):
        aot.target_devices(aot.parse_target("h100-1"))


# ----------------------------------------------------------------------------- GPU (CUDA plugin, no GPU)

@needs_cuda_plugin
def test_dan_tiny_compiles_for_h100():
    report = aot.check(_config("dan.py:tiny"), "h100-2", count_flops=False, check_remat=False, eval_lr=(16, 16))
    assert report["platform"] == "gpu" and report["num_devices"] == 2
    _check_program(report, "train_step")
    _check_program(report, "predict")
    assert report["fits"]


@needs_cuda_plugin
def test_kxnet_tiny_compiles_for_h100_with_its_batch_split():
    """KXNet's bicubic resizes in the backward pass once failed XLA:GPU's Triton GEMM tiling
    ("Couldn't find output tile sizes"); its batch of 3 over 2 GPUs is split 1 way, each shard on
    both."""
    cfg = _config("kxnet.py:tiny")
    cfg.data.batch_size = 3
    report = aot.check(cfg, "h100-2", count_flops=False, check_remat=False, predict=False)
    assert report["batch"]["data_shards"] == 1 and report["batch"]["per_device"] == 3
    _check_program(report, "train_step")
    assert "each shard computed on 2 devices" in aot.format_report(report)


def test_fit_table_rows(tmp_path):
    """benchmarks/aot.py's per-variant table: memory per target, FLOPs from the one unrolled count,
    and a batch that does not split over a target's devices said as such (KXNet's 12 on 8 chips)."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("jaxsr_bench_aot", pathlib.Path(__file__).parents[1] / "benchmarks" / "aot.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    fits = {"variant": "dan.py:setting1_x4", "target": "v5e-8", "exit": 0, "report": {
        "num_devices": 8, "batch": {"global": 64}, "memory_bytes": 15.75 * 2**30,
        "programs": {"train_step": {"fits": True, "compile_s": 301.4, "memory": {"total": 3.0 * 2**30},
                                    "cpu_flops": {"flops": 1.85e12}}}}}
    split = {"variant": "kxnet.py:setting1_x4", "target": "v5e-8", "exit": 2,
             "error": "error: config key data.batch_size (12) must be divisible by the number of devices (8)\n"}
    shared = {"variant": "kxnet.py:setting1_x2", "target": "v5e-8", "exit": 0, "report": {
        "num_devices": 8, "batch": {"global": 12, "per_device": 3, "data_shards": 4}, "memory_bytes": 15.75 * 2**30,
        "programs": {"train_step": {"fits": True, "compile_s": 90.0, "memory": {"total": 1.5 * 2**30},
                                    "cpu_flops": {"flops": 1e12}}}}}
    results = {"dan.py:setting1_x4@v5e-8": fits, "kxnet.py:setting1_x4@v5e-8": split,
               "kxnet.py:setting1_x2@v5e-8": shared}
    path = tmp_path / "table.md"
    bench.write_variant_table(results, ["v5e-8", "h100-8"], str(path))
    lines = path.read_text().splitlines()
    assert lines[2] == "| `dan.py:setting1_x4` | 64 | 3.00 | not run | 14.8 | 301 / - |"
    assert lines[3] == "| `kxnet.py:setting1_x2` | 12 | 1.50 (4×2 mesh) | not run | 4.0 | 90 / - |"  # FLOPs: one shard's count x 4 shards, not x 8 devices
    assert "batch 12 does not split over 8 devices" in lines[4]
    assert bench.not_checked({"exit": 2, "error": "no libtpu"}) == "target unavailable here"
    assert "out of host memory" in bench.not_checked({"exit": -9, "error": ""})
    redone = {"variant": "dan.py:setting1_x4", "target": "v5e-8", "report": {"programs": {"train_step": {}}}}
    bench.keep_flops(fits, redone)  # a --redo row keeps the count its first run made
    assert redone["report"]["programs"]["train_step"]["cpu_flops"] == {"flops": 1.85e12}
    # a rerun of some rows for some targets keeps the table's other columns
    assert bench.table_targets(results, ["v4-8"]) == ["v4-8", "v5e-8"]
    assert bench.table_targets({**results, "x@h100-8": {"target": "h100-8"}}, ["v5e-8"]) == ["v5e-8", "h100-8"]
