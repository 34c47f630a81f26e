"""One prepared check of a single accelerator: the paper DANv1 training step and evaluation predict.

    python benchmarks/accelerator.py --out bench/accelerator.json          # configs/dan.py:setting1_x4
    python benchmarks/accelerator.py --tiny --steps 3 --out /tmp/acc.json   # configs/dan.py:tiny, for a CPU

On the first device of whatever backend JAX starts (a GPU or TPU chip; the CPU when there is none)
it measures

* the training step of `configs/dan.py:setting1_x4` (DANv1, x4, LR patch 64) at the per-chip batch
  of the paper run (8: 64 over 8 chips), built by `jaxsr.train.build_program` exactly as
  `python -m jaxsr.main` trains it (degradation, forward, backward and Adam in one jitted step,
  state donated): compile time cold and warm, the median step time of `--steps` (>= 20) timed
  steps after `--warmup` steps, each waited for, patches/s, and MFU;
* the evaluation predict function (`ModelSpec.jit_predict`, what `--mode=eval` runs) on one LR
  image of `--eval-size`² (256; the SR is 1024²): compile time cold and warm and the median time
  of `--predict-runs` calls.

Cold and warm compiles run in two fresh processes of this script, one after the other, sharing
one persistent compilation cache in a new, empty folder (`jaxsr.cache.enable_compilation_cache`,
as training turns it on): the first fills it ("cold"), the second is a real restart that compiles
the same programs again ("warm") and counts its cache hits. Each also reports the time from its
process start to the end of its first training step. The timed steps and calls run in the cold
process; the warm one checks that its first step from the cached executable gives the cold one's
loss, then counts the FLOPs.

MFU = counted FLOPs per step / median step time / the chip's peak. The FLOPs are the README's
"work" figure (`jaxsr.aot.count_flops_cpu`: the same training program compiled for one CPU device
at this batch with every loop unrolled, XLA's count), so they do not depend on the chip. Peaks
come from `PEAK_FLOPS` (dense figures from the vendors' datasheets; the sparsity figures halved);
a device kind not listed there gets MFU n/a, the CPU always does. The config computes in float32
(`model.dtype`): XLA runs float32 convolutions as TF32 on NVIDIA tensor cores and as bf16 passes on
TPUs at JAX's default precision, so MFU is given against each listed peak (bf16, and tf32 / fp32
where published) rather than one. `--flops-per-step` skips the count with a known figure.

On a CPU the figures describe that CPU, and the output says so: the paper configs refuse to train
there (`train.require_accelerator`); this benchmark builds the program without that check. On one
H100 the whole run (two processes, the FLOP count on the host's CPU) is meant to take under 8
minutes; `--child-timeout` (240 s) bounds each of the two processes.

Output: the machine (CPU model, JAX and backend, device kind), a table, and with `--out FILE` one
JSON object: `machine`, `settings`, `cold`, `warm` (each process's raw figures) and `summary`
(the figures above, with `notes`).

Running it on a machine that has JAX but not jaxsr's other dependencies (e.g. a lent GPU box with
no network): jaxsr itself needs no install, the script puts this repository on `sys.path`. Run the
script there once; it stops before starting JAX and names the missing distributions (typically
grain, ml-collections, tensorboardX). On a machine with network access and the same Python
version and CPU architecture, build wheels of exactly those into a folder, carry the folder over
and install from it without an index:

    # here (same Python minor version; for another one add
    #   --only-binary=:all: --python-version 3.12 --platform manylinux2014_x86_64)
    pip download -d wheels grain ml-collections tensorboardX
    pip wheel --no-deps -w wheels .            # only if jaxsr should be installed there too
    # there
    pip install --no-index --find-links wheels grain ml-collections tensorboardX
    python benchmarks/accelerator.py --out accelerator.json

`pip download` fetches their dependencies too (array-record, etils, protobuf, ...; 23 MB in all for
Python 3.11 on x86-64); where the JAX, jaxlib and NumPy installed there satisfy the requirements,
pip leaves them alone.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

PROCESS_START = time.time()
HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)
CONFIG = os.path.join(REPO, "configs", "dan.py")

# Python modules the benchmark imports (through jaxsr) -> the distribution that installs them.
REQUIRED = {"jax": "jax", "numpy": "numpy", "flax": "flax", "optax": "optax", "orbax.checkpoint": "orbax-checkpoint",
            "grain": "grain", "ml_collections": "ml-collections", "tensorboardX": "tensorboardX",
            "absl": "absl-py", "imageio": "imageio", "PIL": "pillow"}

T = 1e12
# Dense peak FLOP/s per chip (one JAX device), by device kind: (substrings of the lower-case
# `device_kind`, all of which must match, checked in order; name; {dtype: peak}; source).
# NVIDIA publishes tensor-core figures with 2:4 sparsity; the dense figure is half of it.
PEAK_FLOPS = [
    (("h100", "pcie"), "H100 PCIe", {"bf16": 756.5 * T, "tf32": 378 * T, "fp32": 51 * T},
     "NVIDIA H100 Tensor Core GPU datasheet (BF16 1513 / TF32 756 TFLOPS with sparsity, FP32 51)"),
    (("h100", "nvl"), "H100 NVL", {"bf16": 835.5 * T, "tf32": 417.5 * T, "fp32": 60 * T},
     "NVIDIA H100 Tensor Core GPU datasheet (BF16 1671 / TF32 835 TFLOPS with sparsity, FP32 60)"),
    (("h100",), "H100 SXM", {"bf16": 989.5 * T, "tf32": 494.5 * T, "fp32": 67 * T},
     "NVIDIA H100 Tensor Core GPU datasheet (BF16 1979 / TF32 989 TFLOPS with sparsity, FP32 67)"),
    (("h200", "nvl"), "H200 NVL", {"bf16": 835.5 * T, "tf32": 417.5 * T, "fp32": 60 * T},
     "NVIDIA H200 Tensor Core GPU datasheet (BF16 1671 / TF32 835 TFLOPS with sparsity, FP32 60)"),
    (("h200",), "H200 SXM", {"bf16": 989.5 * T, "tf32": 494.5 * T, "fp32": 67 * T},
     "NVIDIA H200 Tensor Core GPU datasheet (BF16 1979 / TF32 989 TFLOPS with sparsity, FP32 67)"),
    (("a100",), "A100", {"bf16": 312 * T, "tf32": 156 * T, "fp32": 19.5 * T},
     "NVIDIA A100 Tensor Core GPU datasheet (BF16 312 / TF32 156 TFLOPS dense, FP32 19.5)"),
    (("tpu v4",), "TPU v4", {"bf16": 275 * T}, "cloud.google.com/tpu/docs/v4 (275 bf16 TFLOPS per chip)"),
    (("tpu v5 lite",), "TPU v5e", {"bf16": 197 * T}, "cloud.google.com/tpu/docs/v5e (197 bf16 TFLOPS per chip)"),
    (("tpu v5e",), "TPU v5e", {"bf16": 197 * T}, "cloud.google.com/tpu/docs/v5e (197 bf16 TFLOPS per chip)"),
    (("tpu v5",), "TPU v5p", {"bf16": 459 * T}, "cloud.google.com/tpu/docs/v5p (459 bf16 TFLOPS per chip)"),
    (("tpu v6",), "TPU v6e", {"bf16": 918 * T}, "cloud.google.com/tpu/docs/v6e (918 bf16 TFLOPS per chip)"),
]

CACHE_EVENTS = {"/jax/compilation_cache/cache_hits": "hits", "/jax/compilation_cache/cache_misses": "misses"}


def peak_for(device_kind: str | None, device_platform: str | None):
    """(name, {dtype: peak FLOP/s}, source) of a known accelerator, or None (MFU n/a)."""
    if not device_kind or device_platform == "cpu":
        return None
    kind = device_kind.lower()
    for needles, name, peaks, source in PEAK_FLOPS:
        if all(n in kind for n in needles):
            return name, peaks, source
    return None


def cpu_model() -> str:
    """The host CPU's model name (Linux /proc/cpuinfo), else what `platform` knows."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def missing_distributions() -> list[str]:
    """Distributions whose modules this benchmark needs and this Python cannot find (no import:
    found before JAX or anything heavy starts)."""
    missing = []
    for module, dist in REQUIRED.items():
        try:
            found = importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:  # the parent package of a dotted name is absent
            found = False
        if not found and dist not in missing:
            missing.append(dist)
    return missing


def median(values):
    return statistics.median(values) if values else None


# ----------------------------------------------------------------------------- one process

def measure(args) -> dict:
    """One process's figures: compile the training step and the predict function (through the
    persistent cache set in this process's environment), run the first step, and in the cold
    process time steps and predict calls; in the warm one count the step's FLOPs."""
    import jax
    import numpy as np
    from jax import monitoring

    events = {"hits": 0, "misses": 0}

    def on_event(event, **_):
        if event in CACHE_EVENTS:
            events[CACHE_EVENTS[event]] += 1

    monitoring.register_event_listener(on_event)
    from jaxsr import aot, cache, config_lib, experiment, platform as jaxsr_platform, train

    result: dict = {"role": args.child, "process_start_to_imports_s": time.time() - PROCESS_START}
    jaxsr_platform.skip_absent_tpu()  # libtpu installed without a TPU: the CPU, without its start-up errors
    result["compilation_cache_dir"] = cache.enable_compilation_cache(args.cache_dir)
    path, variant = args.config.rsplit(":", 1)
    cfg = config_lib.load(path, variant)
    cfg.data.batch_size = args.batch
    exp = experiment.resolve(cfg, num_devices=1)
    result["resolve_s"] = time.time() - PROCESS_START - result["process_start_to_imports_s"]
    t0 = time.perf_counter()
    device = jax.devices()[0]
    result["backend_start_s"] = time.perf_counter() - t0
    result["device"] = {"platform": device.platform, "device_kind": device.device_kind, "count": jax.device_count(),
                        "backend_version": getattr(getattr(device, "client", None), "platform_version", None)}

    program = train.build_program(exp, [device], batch=args.batch)
    target = program.platform

    def compile_timed(lower, label):
        before = dict(events)
        t0 = time.perf_counter()
        lowered = lower()
        t1 = time.perf_counter()
        compiled, fallback = jaxsr_platform.compile_lowered(lowered, target)
        t2 = time.perf_counter()
        result[f"{label}_lower_s"], result[f"{label}_compile_s"] = t1 - t0, t2 - t1
        result[f"{label}_cache"] = {k: events[k] - before[k] for k in events}
        if fallback:
            result[f"{label}_compile_options"] = fallback
        return compiled

    step = compile_timed(program.lower, "train")
    result["train_memory"] = aot.memory_figures(step)
    flops, why = aot.xla_flops(step)
    result["train_xla_flops_device"] = flops  # the device compiler's own count: a rolled loop's body once
    result["train_xla_flops_device_note"] = why or "XLA counts a rolled loop's body once"

    t0 = time.perf_counter()
    state = jax.device_put(program.init_state(), program.state_sharding)
    result["init_state_s"] = time.perf_counter() - t0
    rng = np.random.default_rng(0)
    hr = jax.device_put(rng.integers(0, 256, program.hr_batch.shape, dtype=np.uint8), program.batch_sharding)
    t0 = time.perf_counter()
    state, metrics = step(state, hr)
    jax.block_until_ready((state, metrics))
    result["first_step_s"] = time.perf_counter() - t0
    result["first_step_loss"] = float(metrics["loss"])
    result["process_start_to_first_step_s"] = time.time() - args.spawned_at

    predict_fn = exp.model_spec.jit_predict(program.model)
    lr = jax.device_put(rng.random((1, args.eval_size, args.eval_size, 3), dtype=np.float32), device)
    predict = compile_timed(lambda: predict_fn.lower(state.params, lr, None, None), "predict")
    result["predict_memory"] = aot.memory_figures(predict)

    if args.child == "cold":
        for _ in range(args.warmup):
            state, metrics = step(state, hr)
        jax.block_until_ready((state, metrics))
        times = []
        for _ in range(args.steps):
            t0 = time.perf_counter()
            state, metrics = step(state, hr)
            jax.block_until_ready((state, metrics))
            times.append(time.perf_counter() - t0)
        result["step_times_s"] = times
        # The same steps dispatched back to back and waited for once, as the training loop runs them.
        t0 = time.perf_counter()
        for _ in range(args.steps):
            state, metrics = step(state, hr)
        jax.block_until_ready((state, metrics))
        result["step_pipelined_mean_s"] = (time.perf_counter() - t0) / args.steps
        result["last_loss"] = float(metrics["loss"])
        jax.block_until_ready(predict(state.params, lr, None, None))
        calls = []
        for _ in range(args.predict_runs):
            t0 = time.perf_counter()
            jax.block_until_ready(predict(state.params, lr, None, None))
            calls.append(time.perf_counter() - t0)
        result["predict_times_s"] = calls
        stats = device.memory_stats() if hasattr(device, "memory_stats") else None
        if stats and "peak_bytes_in_use" in stats:
            result["device_peak_bytes_in_use"] = int(stats["peak_bytes_in_use"])
    elif args.flops_per_step is None:
        result["flop_count"] = count_flops(exp, aot)
    return result


def count_flops(exp, aot) -> dict:
    """The step's FLOPs on this host's CPU, every loop unrolled (`jaxsr.aot.count_flops_cpu`)."""
    t0 = time.perf_counter()
    try:
        counted = aot.count_flops_cpu(exp, 1)
    except Exception as e:  # noqa: BLE001 - e.g. JAX_PLATFORMS without "cpu": reported, MFU n/a
        counted = {"flops": None, "note": f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"}
    counted["seconds"] = time.perf_counter() - t0
    return counted


def child_main(args) -> None:
    result = measure(args)
    with open(args.result, "w") as f:
        json.dump(result, f, indent=2)


# ----------------------------------------------------------------------------- the two processes

def run_child(role: str, args, cache_dir: str, workdir: str) -> dict:
    """This script again as a fresh process in `role` ("cold" / "warm"), with the shared cache."""
    result_path = os.path.join(workdir, f"{role}.json")
    argv = [sys.executable, os.path.abspath(__file__), "--child", role, "--result", result_path,
            "--config", args.config, "--batch", str(args.batch), "--eval-size", str(args.eval_size),
            "--steps", str(args.steps), "--warmup", str(args.warmup), "--predict-runs", str(args.predict_runs),
            "--cache-dir", cache_dir, "--spawned-at", repr(time.time())]
    if args.flops_per_step is not None:
        argv += ["--flops-per-step", repr(args.flops_per_step)]
    # The child turns the cache on (jaxsr.cache.enable_compilation_cache); the environment says the
    # same to anything that compiles before that, and keeps every program, however quick to compile.
    env = dict(os.environ, JAXSR_COMPILATION_CACHE=cache_dir, JAX_COMPILATION_CACHE_DIR=cache_dir,
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
    print(f"# {role} process: compiling with the persistent cache {cache_dir} "
          f"({len(os.listdir(cache_dir))} entries)", flush=True)
    t0 = time.perf_counter()
    try:
        done = subprocess.run(argv, env=env, timeout=args.child_timeout)
    except subprocess.TimeoutExpired:
        return {"role": role, "error": f"timed out after {args.child_timeout} s"}
    wall = time.perf_counter() - t0
    if done.returncode != 0 or not os.path.exists(result_path):
        return {"role": role, "error": f"exit status {done.returncode}", "wall_s": wall}
    with open(result_path) as f:
        result = json.load(f)
    result["wall_s"] = wall
    return result


def summarize(cold: dict, warm: dict, args) -> dict:
    device = cold.get("device") or warm.get("device") or {}
    on_cpu = device.get("platform") == "cpu"
    step_s = median(cold.get("step_times_s"))
    predict_s = median(cold.get("predict_times_s"))
    if args.flops_per_step is not None:
        flops, flops_source = args.flops_per_step, "--flops-per-step"
    else:
        counted = warm.get("flop_count") or {}
        flops, flops_source = counted.get("flops"), counted.get("note") or "jaxsr.aot.count_flops_cpu (loops unrolled)"
    known = peak_for(device.get("device_kind"), device.get("platform"))
    mfu, notes = None, []
    if known and flops and step_s:
        mfu = {dtype: flops / step_s / peak for dtype, peak in known[1].items()}
    elif not known and device:
        notes.append("MFU n/a: " + ("a CPU has no entry in the peak table" if on_cpu
                                    else f"device kind {device.get('device_kind')!r} is not in the peak table"))
    if on_cpu:
        notes.append("ran on the CPU backend: these figures describe this CPU, not an accelerator (the paper "
                     "configs refuse to train on a CPU, train.require_accelerator; this benchmark skips that check)")
    same = rel_diff = None
    if cold.get("first_step_loss") is not None and warm.get("first_step_loss") is not None:
        same = cold["first_step_loss"] == warm["first_step_loss"]
        rel_diff = abs(cold["first_step_loss"] - warm["first_step_loss"]) / max(abs(cold["first_step_loss"]), 1e-30)
        if not same:
            notes.append(f"the warm process's first loss differs from the cold one's by {rel_diff:.1e} (relative; "
                         "GPU reductions need not be bitwise reproducible)")
    for part in (cold, warm):
        if part.get("error"):
            notes.append(f"{part['role']} process: {part['error']}")
    return {
        "on_cpu": on_cpu,
        "device_kind": device.get("device_kind"),
        "config": args.config,
        "batch": args.batch,
        "train_compile_s": {"cold": cold.get("train_compile_s"), "warm": warm.get("train_compile_s")},
        "train_lower_s": {"cold": cold.get("train_lower_s"), "warm": warm.get("train_lower_s")},
        "predict_compile_s": {"cold": cold.get("predict_compile_s"), "warm": warm.get("predict_compile_s")},
        "warm_cache_hits": {"train": (warm.get("train_cache") or {}).get("hits"),
                            "predict": (warm.get("predict_cache") or {}).get("hits")},
        "init_state_s": {"cold": cold.get("init_state_s"), "warm": warm.get("init_state_s")},
        "process_start_to_first_step_s": {"cold": cold.get("process_start_to_first_step_s"),
                                          "warm": warm.get("process_start_to_first_step_s")},
        "warm_first_loss_equals_cold": same,
        "warm_first_loss_rel_diff": rel_diff,
        "train_step_memory_bytes": (cold.get("train_memory") or {}).get("total"),
        "device_peak_bytes_in_use": cold.get("device_peak_bytes_in_use"),
        "step_s_median": step_s,
        "step_s_pipelined_mean": cold.get("step_pipelined_mean_s"),
        "timed_steps": len(cold.get("step_times_s") or []),
        "patches_per_s": args.batch / step_s if step_s else None,
        "flops_per_step": flops,
        "flops_source": flops_source,
        "achieved_flops_per_s": flops / step_s if flops and step_s else None,
        "peak": None if not known else {"name": known[0], "flops_per_s": known[1], "source": known[2]},
        "mfu": mfu,
        "predict_lr_size": args.eval_size,
        "predict_s_median": predict_s,
        "predict_images_per_s": 1 / predict_s if predict_s else None,
        "notes": notes,
    }


def machine(cold: dict) -> dict:
    import jax  # the parent starts no backend: only versions
    return {"platform": platform.platform(), "cpu_model": cpu_model(), "cpu_count": os.cpu_count(),
            "python": platform.python_version(), "jax": jax.__version__, "device": cold.get("device")}


def fmt(value, spec=".2f", unit="", scale=1.0):
    return "n/a" if value is None else f"{value * scale:{spec}}{unit}"


def cold_warm(pair: dict, spec=".1f", unit=" s") -> str:
    return f"{fmt(pair['cold'], spec)} / {fmt(pair['warm'], spec)}{unit}"


def print_summary(m: dict, s: dict) -> None:
    device = m.get("device") or {}
    print(f"# {m['platform']} | CPU {m['cpu_model']} ({m['cpu_count']} cores) | Python {m['python']} | "
          f"JAX {m['jax']} | backend {device.get('platform')} ({device.get('backend_version')}) | "
          f"device {device.get('device_kind')} x{device.get('count')}")
    print(f"# {s['config']}, batch {s['batch']} on one device; predict on one {s['predict_lr_size']}² LR image")
    gib = 1 / 2 ** 30
    rows = [
        ("train step compile, cold / warm",
         f"{cold_warm(s['train_compile_s'])} (warm cache hits {s['warm_cache_hits']['train']})"),
        ("predict compile, cold / warm",
         f"{cold_warm(s['predict_compile_s'])} (warm cache hits {s['warm_cache_hits']['predict']})"),
        ("initial state (compile and run), cold / warm", cold_warm(s["init_state_s"])),
        ("process start to first step, cold / warm", cold_warm(s["process_start_to_first_step_s"])),
        (f"step time, median of {s['timed_steps']}", f"{fmt(s['step_s_median'], '.2f', ' ms', 1e3)} (back to back: "
                                                     f"{fmt(s['step_s_pipelined_mean'], '.2f', ' ms', 1e3)})"),
        ("patches/s", fmt(s["patches_per_s"], ".1f")),
        ("step memory (compiled) / device peak in use, GiB",
         f"{fmt(s['train_step_memory_bytes'], '.3f', scale=gib)} / {fmt(s['device_peak_bytes_in_use'], '.3f', scale=gib)}"),
        ("FLOPs per step (work, loops unrolled)", fmt(s["flops_per_step"], ".3e")),
        ("achieved TFLOP/s", fmt(s["achieved_flops_per_s"], scale=1 / T)),
        ("MFU", "n/a" if not s["mfu"] else ", ".join(f"{100 * v:.1f}% of {k} peak" for k, v in s["mfu"].items())),
        ("predict, median", fmt(s["predict_s_median"], ".1f", " ms", 1e3)),
    ]
    print("\n| figure | value |\n|---|---|")
    for name, value in rows:
        print(f"| {name} | {value} |")
    if s["peak"]:
        print(f"# peak of {s['peak']['name']}: {s['peak']['source']}")
    for note in s["notes"]:
        print(f"# note: {note}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny", action="store_true", help="configs/dan.py:tiny, a 32² predict, 5 steps (a CPU test)")
    p.add_argument("--config", default=None, help="CONFIG_FILE:VARIANT (default configs/dan.py:setting1_x4)")
    p.add_argument("--batch", type=int, default=8, help="the training batch on the one device (default 8)")
    p.add_argument("--eval-size", type=int, default=None, help="LR side of the predict input (256; --tiny 32)")
    p.add_argument("--steps", type=int, default=None, help="timed steps (default 20; --tiny 5)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 3; --tiny 1)")
    p.add_argument("--predict-runs", type=int, default=None, help="timed predict calls (default 10; --tiny 3)")
    p.add_argument("--flops-per-step", type=float, default=None, help="skip the FLOP count and use this figure")
    p.add_argument("--cache-dir", default=None, help="an EMPTY folder for the compilation cache (default: a new one)")
    p.add_argument("--child-timeout", type=float, default=240,
                   help="seconds each of the two processes may take (default 240: 8 minutes in all at most)")
    p.add_argument("--out", default=None, help="write the JSON here")
    p.add_argument("--child", choices=("cold", "warm"), default=None, help=argparse.SUPPRESS)
    p.add_argument("--result", default=None, help=argparse.SUPPRESS)
    p.add_argument("--spawned-at", type=float, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.config = args.config or (f"{CONFIG}:tiny" if args.tiny else f"{CONFIG}:setting1_x4")
    args.eval_size = args.eval_size or (32 if args.tiny else 256)
    args.steps = args.steps or (5 if args.tiny else 20)
    args.warmup = args.warmup if args.warmup is not None else (1 if args.tiny else 3)
    args.predict_runs = args.predict_runs or (3 if args.tiny else 10)
    if args.child:
        args.spawned_at = args.spawned_at or PROCESS_START
        child_main(args)
        return 0

    missing = missing_distributions()
    if missing:
        names = " ".join(missing)
        print(f"benchmarks/accelerator.py needs {names}, which this Python ({sys.executable}) cannot import.\n"
              f"On a machine with network access and the same Python version:  pip download -d wheels {names}\n"
              f"then here:  pip install --no-index --find-links wheels {names}\n"
              f"(see this script's docstring)", file=sys.stderr)
        return 3
    if args.cache_dir:
        os.makedirs(args.cache_dir, exist_ok=True)
        if os.listdir(args.cache_dir):
            p.error(f"--cache-dir {args.cache_dir} is not empty: the cold compile needs an empty cache")
    with tempfile.TemporaryDirectory(prefix="jaxsr_accelerator_") as workdir:
        cache_dir = args.cache_dir or os.path.join(workdir, "compilation_cache")
        os.makedirs(cache_dir, exist_ok=True)
        t0 = time.perf_counter()
        cold = run_child("cold", args, cache_dir, workdir)
        # Without the cold process's programs a second one would only compile cold again.
        warm = run_child("warm", args, cache_dir, workdir) if not cold.get("error") else {
            "role": "warm", "error": "not run: the cold process failed"}
        cache_entries = len(os.listdir(cache_dir))
    summary = summarize(cold, warm, args)
    summary["wall_s"] = time.perf_counter() - t0
    summary["cache_entries"] = cache_entries
    m = machine(cold)
    print_summary(m, summary)
    print(f"# total {summary['wall_s']:.0f} s")
    settings = {k: getattr(args, k) for k in ("config", "batch", "eval_size", "steps", "warmup", "predict_runs",
                                               "flops_per_step", "tiny")}
    payload = {"machine": m, "settings": settings, "cold": cold, "warm": warm, "summary": summary}
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(payload, f, indent=2)
        print(f"# results written to {args.out}")
    return 0 if not (cold.get("error") or warm.get("error")) else 1


if __name__ == "__main__":
    sys.exit(main())
