"""Model benchmarks: compile time, forward latency, parameter counts, compiled memory, FLOPs and efficiency.

    python benchmarks/models.py                                  # full DANv1/DANv2 x4, LR 64 and 128, batch 1 and 8
    python benchmarks/models.py --sizes 24 --batches 1 --runs 3 --tiny   # a quick CPU smoke run
    python benchmarks/models.py --profile /tmp/prof --out bench_models.json

Latency is the median of `--runs` timed calls after `--warmup` calls (each waits with
`block_until_ready`); compile time is measured separately on `jit(...).lower(...).compile()`.
Memory comes from the compiled executables' `memory_analysis()`: the forward pass, and a
training step (gradient of an L1 loss) with and without `remat`. Parameter values are random
(NumPy) since timings do not depend on them; the PCA matrix is a random orthonormal one.
To add a model, add a builder to `MODELS`.

Efficiency: the forward pass and the training step (the gradient of the L1 loss above, without
the optimizer update) report their FLOPs from XLA's cost analysis
of the compiled executable (`jit(...).lower(...).compile().cost_analysis()`), the achieved
GFLOP/s (FLOPs / median latency; the training step is timed like the forward pass), and that
rate as a fraction of this machine's float32 matmul peak, measured first in the same run (median
of 2048 x 2048 products, `--peak-size`). XLA counts a while-loop body once, so programs that still
contain loops (iterated models with a rolled scan, the GPU/TPU default) get a lower bound, marked
with `*`; on CPU the iterated models are unrolled and the count is complete. This training step is
a proxy for memory and speed (L1 of the last output, every iteration differentiated); the work
section below counts the step jaxsr really trains.

Work per training step (section `work` of `--sections`, on by default; `--sections work` skips the
timing runs). For each model, built from its paper config (`WORK_CONFIGS`: paper widths; `--tiny`: the
config's `tiny` variant, with its own scale, widths and T) for programs compiled for ONE CPU device,
with every scan iteration unrolled (`scan_unroll=0`: XLA's cost analysis counts a rolled loop body
once), at LR `--work-size`² and batch `--work-batch`, XLA's cost analysis gives:

  forward  the loss value alone: `jaxsr.train.make_loss_fn` (the model's training forward,
           `ModelSpec.forward`, and its loss, exactly as the trainer calls them), compiled without grad
  step     `jax.value_and_grad` of that same function: the training step's forward and backward
           (the degradation and the Adam update are left out: they are not the loss's work). For
           DAN, `ModelSpec.forward` runs the iterations before the first weighted one
           (`dan.first_weighted_iteration`: the last by default) behind a stop-gradient (`train_from`)

and the work the loss NEEDS is counted analytically as

  needed = forward + 2 · forward · n_diff / T

T iterations, of which the last n_diff are differentiated because a loss term reaches them (DAN:
T - first weighted iteration; KXNet and DSSR weight every iteration and USRNet's loss reaches every
one through its unfolded data steps: n_diff = T; KENet: T = 1). Convention: a backward pass costs two
forward passes of the iterations it runs through, one for the input gradients and one for the weight
gradients, each as many FLOPs as the forward convolution or matmul. The forward FLOPs of the
differentiated iterations are taken as forward · n_diff / T: DAN's iterations are the same network
run T times on the same-sized tensors, so each costs forward / T (the loss's own few FLOPs are spread
with them); for every other model n_diff = T and the term is the whole forward. `step / needed` near
1 means the step does no wasted work; the bar is 1.1. For models that skip iterations (DAN) the step
with every iteration differentiated (`ModelSpec.forward` without a config: train_from = 0, how DAN
trained before) is compiled too and reported as `full_step` beside it. The programs are traced with
the `jaxsr.cpu.native` kernels suspended (even where this process registered it), so XLA's
count sees every FLOP; any custom call left in them is listed in the output.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import common  # noqa: E402

from jaxsr import aot, config_lib, cpu, experiment, platform, train  # noqa: E402
from jaxsr.cpu import native, process  # noqa: E402 - the allocator settings one by one, `registered()`
from jaxsr.models import dan, dssr, kenet, kxnet, usrnet  # noqa: E402
from jaxsr.ops import degrade  # noqa: E402

CONFIGS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "configs")


@dataclasses.dataclass
class Bench:
    module: Any                       # flax module; called as module.apply(variables, lr)
    official_params: int | None       # the published / official-code count, printed beside ours
    reference: str                    # where that number comes from
    output_key: str = "sr"            # output whose last iteration feeds the training loss


def _random_pca(kernel_size: int, code_length: int = 10) -> np.ndarray:
    q, _ = np.linalg.qr(np.random.default_rng(0).standard_normal((kernel_size ** 2, code_length)))
    return q.astype(np.float32)


def build_danv1(scale: int, tiny: bool, remat: bool) -> Bench:
    extra = dict(restorer_features=16, restorer_blocks=2, estimator_blocks=1) if tiny else {}
    module = dan.DANv1(scale=scale, pca_matrix=_random_pca(21), remat=remat, **extra)
    return Bench(module, None if tiny or scale != 4 else 4_329_511, "official DANv1 code, x4")


def build_danv2(scale: int, tiny: bool, remat: bool) -> Bench:
    extra = dict(restorer_features=16, restorer_blocks=1, restorer_groups=2, estimator_blocks=1) if tiny else {}
    module = dan.DANv2(scale=scale, pca_matrix=_random_pca(21), remat=remat, **extra)
    return Bench(module, None if tiny or scale != 4 else 4_707_708, "official DANv2 code, x4")


def build_kxnet(scale: int, tiny: bool, remat: bool) -> Bench:
    extra = dict(num_stages=3, aux_x_features=8, aux_k_features=8, prox_blocks=1) if tiny else {}
    module = kxnet.KXNet(scale=scale, kernel_size={2: 11, 3: 15, 4: 21}.get(scale, 21), remat=remat, **extra)
    return Bench(module, None if tiny or scale != 4 else 27_571_214, "official KXNet code, x4 (19 stages, 21x21)")


def build_dssr(scale: int, tiny: bool, remat: bool) -> Bench:
    extra = dict(features=16, structure_blocks=2, refine_blocks=1) if tiny else {}
    module = dssr.DSSR(scale=scale, remat=remat, **extra)
    return Bench(module, None if tiny or scale != 4 else 8_902_278, "official DSSR code (train_setting.yml), x4")


def build_usrnet(scale: int, tiny: bool, remat: bool) -> Bench:
    # Called on the LR alone it restores with a Dirac kernel; the FFT cost does not depend on the kernel.
    extra = usrnet.OFFICIAL_VARIANTS["usrnet_tiny"] if tiny else {}
    return Bench(usrnet.USRNet(scale=scale, remat=remat, **extra), 590_332 if tiny else usrnet.OFFICIAL_NUM_PARAMS,
                 "official USRNet code (README: 17.02M, tiny 0.59M)")


def build_kenet(scale: int, tiny: bool, remat: bool) -> Bench:
    size = 11 if scale == 2 else 21
    module = kenet.KENet(kernel_size=size, **(dict(features=16, fc_features=64) if tiny else {}))
    return Bench(module, None if tiny else (4_389_561 if size == 11 else 4_717_561),
                 "KENet paper §2.2 (no official code)", output_key="kernel")


MODELS: dict[str, Callable[[int, bool, bool], Bench]] = {
    "danv1": build_danv1, "danv2": build_danv2, "kxnet": build_kxnet, "dssr": build_dssr,
    "usrnet": build_usrnet, "kenet": build_kenet}


def random_params(module, lr_shape) -> Any:
    """Parameters of the right shapes without running `init` (its RNG compiles slowly on CPU)."""
    shapes = jax.eval_shape(lambda x: module.init(jax.random.key(0), x), jax.ShapeDtypeStruct(lr_shape, jnp.float32))
    rng = np.random.default_rng(0)

    def fill(leaf):
        fan_in = int(np.prod(leaf.shape[:-1])) if len(leaf.shape) > 1 else 100
        return jnp.asarray(rng.uniform(-1, 1, leaf.shape) / np.sqrt(fan_in), jnp.float32)

    return jax.tree.map(fill, shapes)


def memory(compiled) -> dict[str, int] | None:
    stats = compiled.memory_analysis()
    if stats is None:
        return None
    fields = ("argument_size_in_bytes", "output_size_in_bytes", "temp_size_in_bytes",
              "alias_size_in_bytes", "generated_code_size_in_bytes")
    out = {f: int(getattr(stats, f)) for f in fields if hasattr(stats, f)}
    # live at once: arguments + outputs + scratch, minus buffers shared between them
    out["peak_estimate_bytes"] = (out.get("argument_size_in_bytes", 0) + out.get("output_size_in_bytes", 0)
                                  + out.get("temp_size_in_bytes", 0) - out.get("alias_size_in_bytes", 0))
    return out


def compile_timed(fn, *args):
    t0 = time.perf_counter()
    lowered = platform.jit(fn).lower(*args)  # compiled as jaxsr compiles it
    t1 = time.perf_counter()
    compiled = lowered.compile()
    t2 = time.perf_counter()
    return compiled, t1 - t0, t2 - t1


def train_step_fn(module, key: str):
    """Gradient of L1(last output, 0): enough to size a training step's memory."""
    def step(variables, lr):
        def loss(p):
            return jnp.mean(jnp.abs(module.apply({"params": p}, lr)[key][-1]))
        return jax.grad(loss)(variables["params"])
    return step


def bench_one(name: str, args, size: int, batch: int) -> dict:
    bench = MODELS[name](args.scale, args.tiny, False)
    module = bench.module
    if args.num_iters and hasattr(module, "num_iters"):
        module = module.clone(num_iters=args.num_iters)
    lr_shape = (batch, size, size, 3)
    variables = random_params(module, lr_shape)
    lr = jnp.asarray(np.random.default_rng(1).random(lr_shape), jnp.float32)
    n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(variables["params"]))

    forward, lower_s, compile_s = compile_timed(lambda v, x: module.apply(v, x), variables, lr)
    with common.maybe_profile(args.profile and os.path.join(args.profile, f"{name}_lr{size}_b{batch}")):
        latency = common.median_seconds(lambda: common.block(forward(variables, lr)),
                                        warmup=args.warmup, repeats=args.runs)
    fwd_flops, fwd_loops = common.compiled_flops(forward)
    record = {
        "model": name, "scale": args.scale, "lr_size": size, "batch": batch, "num_iters": getattr(module, "num_iters", getattr(module, "num_stages", 1)),
        "tiny": args.tiny, "params": n_params, "official_params": bench.official_params,
        "official_reference": bench.reference, "lower_s": lower_s, "compile_s": compile_s,
        "latency_median_s": latency, "latency_runs": args.runs, "forward_memory": memory(forward),
        **efficiency("forward", fwd_flops, fwd_loops, latency, args.peak),
    }
    if not args.skip_train_memory:
        for remat in ((False, True) if hasattr(module, "remat") else (False,)):
            step, _, step_compile_s = compile_timed(train_step_fn(module.clone(remat=remat) if remat else module, bench.output_key),
                                                    variables, lr)
            tag = "remat" if remat else "plain"
            record[f"train_memory_{tag}"] = memory(step)
            record[f"train_compile_s_{tag}"] = step_compile_s
            if not remat and not args.skip_train_time:
                step_s = common.median_seconds(lambda: common.block(step(variables, lr)),
                                               warmup=args.warmup, repeats=args.runs)
                record["train_latency_median_s"] = step_s
                record.update(efficiency("train", *common.compiled_flops(step), step_s, args.peak))
    return record


# ----------------------------------------------------------------------------- work per training step
# model -> (config file, paper variant at scale {s}); `--tiny` takes the file's "tiny" variant instead
WORK_CONFIGS: dict[str, tuple[str, str]] = {
    "danv1": ("dan.py", "setting1_x{s}"), "danv2": ("danv2.py", "setting1_x{s}"),
    "kxnet": ("kxnet.py", "setting1_x{s}"), "dssr": ("dssr.py", "setting1_x{s}"),
    "usrnet": ("usrnet.py", "kxnet2_x{s}"), "kenet": ("kenet.py", "x{s}")}


def work_experiment(name: str, scale: int = 4, tiny: bool = False) -> experiment.Experiment:
    """The resolved training config of `name`: its paper variant at `scale`, or its tiny one (a
    shipped PCA matrix for every variant used here: nothing is fitted)."""
    path, variant = WORK_CONFIGS[name]
    return experiment.resolve(config_lib.load(os.path.join(CONFIGS, path), "tiny" if tiny else variant.format(s=scale)))


def iterations(model) -> int:
    """T: the model's iteration (or stage) count; 1 for a model that does not iterate (KENet)."""
    return int(getattr(model, "num_iters", getattr(model, "num_stages", 1)))


def first_trained_iteration(spec, model, cfg) -> int:
    """The first iteration the training forward differentiates: DAN's first weighted one (its
    `ModelSpec.forward` passes it as `train_from`); 0 for every other model."""
    return dan.first_weighted_iteration(cfg, model.num_iters) if spec.forward is dan.forward else 0


def work_count(name: str, scale: int = 4, size: int = 32, batch: int = 2, tiny: bool = False,
               full_step: bool = True) -> dict:
    """FLOPs (XLA CPU cost analysis, loops unrolled) of the loss value ("forward") and of the
    training step's value and gradient ("step") of model `name`, the analytic FLOPs the loss needs
    ("needed"), their ratio, and for a model that skips iterations its step with every iteration
    differentiated ("full_step"). See the module docstring for the conventions."""
    exp = work_experiment(name, scale, tiny)
    cfg, spec, model = exp.cfg, exp.model_spec, exp.model("cpu")
    if "scan_unroll" in type(model).__dataclass_fields__:
        model = model.clone(scan_unroll=0)  # whatever the config says: every iteration counted
    s = int(cfg.scale)
    key = jax.ShapeDtypeStruct((2,), jnp.uint32)
    hr = jax.ShapeDtypeStruct((batch, size * s, size * s, 3), jnp.float32)
    dspec = exp.degradation

    def make_batch(key, hr):
        lr, kernel, noise_sigma = degrade.degrade(key, hr, dspec)
        return {"hr": hr, "lr": lr, "kernel": kernel, "noise_sigma": noise_sigma}

    batch_shapes = jax.eval_shape(make_batch, key, hr)
    params = jax.eval_shape(lambda k, lr: spec.init(model, k, lr)["params"],
                            key, batch_shapes["lr"])

    def count(loss_fn, grad: bool) -> tuple[float, list[str], float]:
        fn = jax.value_and_grad(loss_fn, has_aux=True) if grad else loss_fn
        t = time.perf_counter()
        with cpu.native_suspended():  # XLA's own count sees every FLOP, whatever this process loaded
            compiled = platform.jit(fn).lower(params, batch_shapes).compile()
        seconds = time.perf_counter() - t
        flops, has_loops = common.compiled_flops(compiled)
        if has_loops:
            raise RuntimeError(f"{name}: the program still has a while loop; its FLOPs would be a lower bound")
        return flops, aot.custom_call_targets(compiled.as_text()), seconds

    loss_fn = train.make_loss_fn(cfg, spec, model)
    forward, calls_fwd, compile_fwd = count(loss_fn, grad=False)
    step, calls_step, compile_step = count(loss_fn, grad=True)
    T = iterations(model)
    first = first_trained_iteration(spec, model, cfg)
    n_diff = T - first
    needed = forward + 2.0 * forward * n_diff / T
    record = {
        "model": name, "config": f"{WORK_CONFIGS[name][0]}:{'tiny' if tiny else WORK_CONFIGS[name][1].format(s=scale)}",
        "scale": s, "lr_size": size, "batch": batch, "tiny": tiny, "iterations": T,
        "first_trained_iteration": first, "differentiated_iterations": n_diff,
        "native_kernel_registered": native.registered(),
        "forward_flops": forward, "step_flops": step, "needed_flops": needed, "step_over_needed": step / needed,
        "needed_rule": "forward + 2 * forward * differentiated_iterations / iterations",
        "compile_s": {"forward": compile_fwd, "step": compile_step},
        "custom_calls": sorted(set(calls_fwd) | set(calls_step)),
        "full_step_flops": None, "full_step_over_needed": None,
    }
    if full_step and first > 0:
        # ModelSpec.forward without a config differentiates every iteration (train_from = 0)
        full_spec = dataclasses.replace(spec, forward=lambda m, v, b, c: spec.forward(m, v, b, None))
        full, calls_full, compile_full = count(train.make_loss_fn(cfg, full_spec, model), grad=True)
        record.update(full_step_flops=full, full_step_over_needed=full / needed,
                      custom_calls=sorted(set(record["custom_calls"]) | set(calls_full)))
        record["compile_s"]["full_step"] = compile_full
    return record


def _gflop(flops: float) -> str:
    g = flops / 1e9
    return f"{g:.2f}" if g >= 1 else f"{g:.3g}"


def work_summary(rec: dict) -> str:
    g = lambda key: _gflop(rec[key])
    text = (f"work {rec['model']} ({rec['config']}) x{rec['scale']} lr{rec['lr_size']} b{rec['batch']} "
            f"T={rec['iterations']}, differentiated {rec['differentiated_iterations']}: "
            f"forward {g('forward_flops')} | step {g('step_flops')} | needed {g('needed_flops')} GFLOP"
            f" | step/needed {rec['step_over_needed']:.3f}")
    if rec["full_step_flops"]:
        text += (f" | full backward (train_from=0) {g('full_step_flops')} GFLOP = "
                 f"{rec['full_step_over_needed']:.3f}x needed")
    if rec["custom_calls"]:
        text += f" | custom calls not counted: {', '.join(rec['custom_calls'])}"
    return text


def work_table(records: list[dict]) -> str:
    """The markdown table of docs/benchmarks.md."""
    rows = ["| model | T (differentiated) | forward GFLOP | step GFLOP | needed GFLOP | step / needed "
            "| full-backward step GFLOP (/ needed) |", "|---|---|---:|---:|---:|---:|---|"]
    for r in records:
        full = (f"{_gflop(r['full_step_flops'])} ({r['full_step_over_needed']:.2f}x)"
                if r["full_step_flops"] else "= step")
        rows.append(f"| {r['model']} | {r['iterations']} ({r['differentiated_iterations']}) "
                    f"| {_gflop(r['forward_flops'])} | {_gflop(r['step_flops'])} | {_gflop(r['needed_flops'])} "
                    f"| {r['step_over_needed']:.3f} | {full} |")
    return "\n".join(rows)


def efficiency(prefix: str, flops: float | None, has_loops: bool, seconds: float, peak: dict | None) -> dict:
    """FLOPs (XLA cost analysis), achieved GFLOP/s and the fraction of the measured matmul peak."""
    rate = flops / seconds / 1e9 if flops else None
    return {f"{prefix}_flops": flops, f"{prefix}_flops_lower_bound": has_loops,
            f"{prefix}_gflops_per_s": rate,
            f"{prefix}_peak_fraction": rate / peak["gflops_per_s"] if rate and peak else None}


def _mib(record: dict | None, key: str = "peak_estimate_bytes") -> str:
    return "-" if not record else f"{record[key] / 2 ** 20:.1f}"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma list from {sorted(MODELS)}")
    parser.add_argument("--scale", type=int, default=4)
    parser.add_argument("--sizes", default="64,128", help="LR sizes (square), comma list")
    parser.add_argument("--batches", default="1,8", help="batch sizes, comma list")
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--num-iters", type=int, default=None, help="T at apply time (default: the model's)")
    parser.add_argument("--tiny", action="store_true", help="reduced widths/blocks, for smoke runs")
    parser.add_argument("--skip-train-memory", action="store_true",
                        help="skip compiling the training step (slow for full-size models on CPU)")
    parser.add_argument("--skip-train-time", action="store_true",
                        help="compile the training step for its memory and FLOPs but do not time it")
    parser.add_argument("--peak-size", type=int, default=2048,
                        help="square float32 matmul size for the machine's peak (0 = skip)")
    parser.add_argument("--profile", default=None,
                        help="write a jax.profiler trace of each configuration's timed runs under this folder")
    parser.add_argument("--sections", default="timing,work",
                        help="comma list: timing (compile, latency, memory, FLOP rates over --sizes/--batches), "
                             "work (FLOPs of the training step against what the loss needs)")
    parser.add_argument("--work-size", type=int, default=32, help="LR size (square) of the work section")
    parser.add_argument("--work-batch", type=int, default=2, help="batch of the work section")
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)
    sections = {x for x in args.sections.split(",") if x}
    if not sections or sections - {"timing", "work"}:
        parser.error(f"--sections must name timing and/or work, got {args.sections!r}")
    if __name__ == "__main__":  # the process settings jaxsr.main uses on the CPU
        process.restart_with_malloc_tuning()
        process.keep_large_buffers_in_heap()

    info = common.print_machine()
    args.peak = common.matmul_peak(args.peak_size) if args.peak_size and "timing" in sections else None
    if args.peak:
        print(f"# float32 matmul peak: {args.peak['gflops_per_s']:.1f} GFLOP/s "
              f"(median of {args.peak['n']}x{args.peak['n']} products)", flush=True)
    names = [m for m in args.models.split(",") if m]
    unknown = sorted(set(names) - set(MODELS))
    if unknown:
        parser.error(f"unknown models {unknown}; known: {sorted(MODELS)}")
    sizes = [int(s) for s in args.sizes.split(",")]
    batches = [int(b) for b in args.batches.split(",")]

    records = []
    for name in names if "timing" in sections else ():
        for size in sizes:
            for batch in batches:
                rec = bench_one(name, args, size, batch)
                records.append(rec)
                print(summary(rec, args), flush=True)
    work = []
    if "work" in sections:
        print(f"# work per training step: XLA CPU cost analysis, one device, loops unrolled; "
              f"needed = forward + 2 * forward * n_diff / T", flush=True)
        for name in names:
            rec = work_count(name, args.scale, args.work_size, args.work_batch, args.tiny)
            work.append(rec)
            print(work_summary(rec), flush=True)
        print(work_table(work), flush=True)
    common.write_json(args.out, {"machine": info, "matmul_peak": args.peak,
                                 "args": {k: v for k, v in vars(args).items() if k != "peak"},
                                 "results": records, "work": work})


def _rate(rec: dict, prefix: str) -> str:
    flops, rate, frac = rec.get(f"{prefix}_flops"), rec.get(f"{prefix}_gflops_per_s"), rec.get(f"{prefix}_peak_fraction")
    if not flops:
        return ""
    star = "*" if rec.get(f"{prefix}_flops_lower_bound") else ""
    text = f" | {prefix} {flops / 1e9:.2f}{star} GFLOP"
    if rate:
        text += f", {rate:.1f} GFLOP/s" + (f" ({100 * frac:.0f}% of matmul peak)" if frac else "")
    return text


def summary(rec: dict, args) -> str:
    official = rec["official_params"]
    text = (f"{rec['model']} x{rec['scale']} lr{rec['lr_size']} b{rec['batch']} T={rec['num_iters']}: "
            f"params {rec['params']:,}" + (f" (official {official:,})" if official else "")
            + f" | compile {rec['compile_s']:.2f}s | latency median {rec['latency_median_s'] * 1e3:.2f} ms"
            f" | fwd mem {_mib(rec['forward_memory'])} MiB")
    if not args.skip_train_memory:
        text += f" | train-step mem {_mib(rec['train_memory_plain'])} MiB"
        if "train_memory_remat" in rec:  # models without a remat field (KENet) have one number
            text += f", with remat {_mib(rec['train_memory_remat'])} MiB"
    text += _rate(rec, "forward")
    if "train_latency_median_s" in rec:
        text += f" | train step median {rec['train_latency_median_s'] * 1e3:.2f} ms" + _rate(rec, "train")
    elif rec.get("train_flops"):
        text += _rate(rec, "train")
    return text


if __name__ == "__main__":
    main()
