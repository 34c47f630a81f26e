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
with `*`; on CPU the iterated models are unrolled and the count is complete.
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

from jaxsr.cpu import compile as cpu_compile, process  # noqa: E402
from jaxsr.models import dan, dssr, kenet, kxnet, usrnet  # noqa: E402


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
    lowered = cpu_compile.jit(fn).lower(*args)  # compiled as jaxsr compiles it
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
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)
    if __name__ == "__main__":  # the process settings jaxsr.main uses on the CPU
        process.restart_with_malloc_tuning()
        process.keep_large_buffers_in_heap()

    info = common.print_machine()
    args.peak = common.matmul_peak(args.peak_size) if args.peak_size else None
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
    for name in names:
        for size in sizes:
            for batch in batches:
                rec = bench_one(name, args, size, batch)
                records.append(rec)
                print(summary(rec, args), flush=True)
    common.write_json(args.out, {"machine": info, "matmul_peak": args.peak,
                                 "args": {k: v for k, v in vars(args).items() if k != "peak"},
                                 "results": records})


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
