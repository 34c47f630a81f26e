"""Does `jaxsr.cpu.native`'s forward convolution pay? A/B against XLA:CPU's convolution.

    python benchmarks/native_conv.py                                  # per convolution: USRNet's 3x3 widths
    python benchmarks/native_conv.py --models usrnet,danv1 --parts train,forward --rounds 7

* per convolution (`--convs`): a 3x3 stride-1 convolution, batch 2, at the paper widths of
  USRNet's ResUNet (64 channels on 128², 128 on 64², 256 on 32², 512 on 16²), as
  `native.conv_forward` (kernel packing included) and as `lax.conv_general_dilated` compiled with
  jaxsr's CPU options; GFLOP/s and the largest difference relative to the output's largest value.
* per model (`--models`): the benchmarks/vs_torch.py cases (paper widths, x4; train step LR 32²
  batch 2, forward LR 64² batch 1), each compiled twice in one process: with the native forward
  kernel (what jaxsr runs) and without it (traced inside `jaxsr.cpu.native.forward_suspended()`:
  XLA's convolutions for the forward passes and input gradients; the native kernel gradient in both).

Both sides run as `python -m jaxsr.main` runs jaxsr (`jaxsr.cpu.setup()`). Calls alternate A, B,
A, B ... after warm-up; medians are reported; compile times are separate. ratio = XLA time /
native time (> 1: the native kernel is faster). Needs the `bench` extra (PyTorch builds the
reference weights of the model cases).
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import statistics
import sys
import time

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import common  # noqa: E402

import jaxsr  # noqa: E402
from jaxsr.cpu import conv as cpu_conv, native  # noqa: E402

CONV_SHAPES = ((64, 128), (128, 64), (256, 32), (512, 16))  # (channels, map side)
PADDING = ((1, 1), (1, 1))


def interleaved(fns: dict, rounds: int, warmup: int = 2) -> dict[str, list[float]]:
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    return times


def bench_convs(rounds: int) -> list[dict]:
    rows = []
    for channels, side in CONV_SHAPES:
        x = jax.random.normal(jax.random.key(0), (2, side, side, channels))
        w = jax.random.normal(jax.random.key(1), (3, 3, channels, channels)) / np.sqrt(9 * channels)
        native_fn = jaxsr.jit(lambda x, w: native.conv_forward(x, w, PADDING))
        xla_fn = jaxsr.jit(lambda x, w: cpu_conv.plain_conv(x, w, (1, 1), PADDING))
        want = np.asarray(xla_fn(x, w))
        diff = float(np.abs(np.asarray(native_fn(x, w)) - want).max() / np.abs(want).max())
        times = interleaved({"native": lambda: common.block(native_fn(x, w)), "xla": lambda: common.block(xla_fn(x, w))},
                            rounds)
        gflop = 2 * 2 * side * side * channels * channels * 9 / 1e9
        row = {"channels": channels, "side": side, "max_rel_diff": diff,
               **{f"{k}_ms": statistics.median(v) * 1e3 for k, v in times.items()}}
        row["ratio"] = row["xla_ms"] / row["native_ms"]
        rows.append(row)
        print(f"3x3, {channels} ch on {side}²: native {row['native_ms']:.2f} ms ({gflop / row['native_ms'] * 1e3:.0f} GFLOP/s)"
              f" | XLA {row['xla_ms']:.2f} ms ({gflop / row['xla_ms'] * 1e3:.0f} GFLOP/s) | ratio {row['ratio']:.3f}"
              f" | max rel. diff {diff:.1e}", flush=True)
    return rows


def bench_model(name: str, part: str, rounds: int) -> dict:
    import vs_torch  # the PyTorch-weighted cases; imports torch
    vs_torch.JIT = jaxsr.jit
    case = vs_torch.BUILDERS[name](False)
    runs, compile_s, outputs = {}, {}, {}
    for label, flag in (("native", True), ("xla", False)):
        # the choice is made while tracing (here: compiling); each side traces a function of its own
        with contextlib.nullcontext() if flag else native.forward_suspended():
            if part == "train":
                lr, hr = vs_torch.images(2, 32, seed=2)
                compile_s[label], runs[label] = vs_torch.jax_train_step(case, lr, hr)
            else:
                lr, _ = vs_torch.images(1, 64, seed=1)
                out = case.jax_out
                side = dataclasses.replace(case, jax_out=lambda *a, out=out: out(*a))
                compile_s[label], runs[label] = vs_torch.jax_forward(side, lr)
        if part != "train":
            outputs[label] = np.asarray(runs[label]())
    times = interleaved(runs, rounds)
    row = {"model": name, "part": part, **{f"{k}_s": statistics.median(v) for k, v in times.items()},
           **{f"{k}_compile_s": v for k, v in compile_s.items()}, "rounds": times}
    row["ratio"] = row["xla_s"] / row["native_s"]
    if outputs:
        row["max_rel_diff"] = float(np.abs(outputs["native"] - outputs["xla"]).max() / np.abs(outputs["xla"]).max())
    extra = f" | outputs max rel. diff {row['max_rel_diff']:.1e}" if outputs else ""
    print(f"{name} {part}: native {row['native_s'] * 1e3:.0f} ms | XLA {row['xla_s'] * 1e3:.0f} ms | ratio "
          f"{row['ratio']:.3f} | compile native {compile_s['native']:.1f} s, XLA {compile_s['xla']:.1f} s{extra}", flush=True)
    return row


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--convs", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--models", default="", help="comma-separated vs_torch cases: danv1,danv2,kxnet,dssr,usrnet")
    p.add_argument("--parts", default="train,forward")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--out", default=None, help="write the rows as JSON")
    args = p.parse_args(argv)
    jaxsr.cpu.setup()  # restarts the process once with jaxsr's allocator settings; loads the native kernels
    info = common.print_machine()
    if not native.registered():
        sys.exit("jaxsr.cpu.native is not available on this machine (no C++ compiler, AVX-512 or x86-64)")
    rows = bench_convs(args.rounds) if args.convs else []
    for name in filter(None, args.models.split(",")):
        for part in filter(None, args.parts.split(",")):
            rows.append(bench_model(name, part, args.rounds))
    common.write_json(args.out, {"machine": info, "rows": rows})


if __name__ == "__main__":
    main()
