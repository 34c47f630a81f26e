"""Compile time of KXNet's data-term operators for an accelerator, with their VJPs against autodiff's.

    python benchmarks/compile_ops.py [--target v5e-1] [--batch 3] [--rounds 2] [--out FILE.json]

For each paper scale and kernel size (setting 2: x2/x3/x4 with kernels 11/15/21; setting 1: 21 at
every scale), LR 64² and `--batch` images per device (as KXNet's paper batch of 12 gives on v5e-8),
compiles the gradient of a scalar of each operator for the target
without its hardware (`jaxsr.aot`'s compile-only devices), two ways:

- ops: `jaxsr.ops.unfolding.kernel_gradient` and `blur_down` as KXNet calls them on accelerators
  (method "conv": their own VJPs, each the other operators of the data term);
- autodiff: the same forward convolutions differentiated by JAX (the kernel gradient's
  undecorated convolution; the blur at full resolution then the s-fold slice, as before), whose
  gradients include convolutions with an image-sized window.

Compile seconds are medians of `--rounds` interleaved rounds after one warm-up compile (libtpu's
start-up); TPU cost analysis FLOPs and temporaries are printed beside them. Compile time is what
a user waits before the first training step; this script says nothing about run time.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")  # the TPU compiler is used compile-only

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import common  # noqa: E402

from jaxsr import aot  # noqa: E402
from jaxsr.ops import degrade, unfolding  # noqa: E402

CASES = ("2:11", "3:15", "4:21", "2:21", "3:21")  # scale:kernel of KXNet's setting 2 (11/15/21), then setting 1 (21)


def autodiff_kernel_gradient(x, r, size, scale):
    pad = size // 2
    xp = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode="reflect")
    return unfolding._kernel_gradient.fun(xp, r, size, scale)  # .fun: the convolution without its custom VJP / (x.shape[-1] * r.shape[1] * r.shape[2])


def autodiff_blur_down(x, k, scale):
    return degrade.downsample_sfold(degrade.blur(x, k, method="conv"), scale)


def programs(size: int, scale: int) -> dict:
    """operator -> {"ops": f, "autodiff": f}, each f a scalar function of the operator's two operands."""
    def loss(f):
        return lambda a, b: jnp.sum(jnp.sin(f(a, b)))
    return {
        "kernel_gradient": {"ops": loss(lambda x, r: unfolding.kernel_gradient(x, r, size, scale, "conv")),
                            "autodiff": loss(lambda x, r: autodiff_kernel_gradient(x, r, size, scale))},
        "blur_down": {"ops": loss(lambda x, k: unfolding.blur_down(x, k, scale, "conv")),
                      "autodiff": loss(lambda x, k: autodiff_blur_down(x, k, scale))},
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--target", default="v5e-1", help="a jaxsr.aot target; one device is used")
    p.add_argument("--batch", type=int, default=3, help="images per device")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--cases", default=",".join(CASES), help="comma-separated SCALE:KERNEL pairs")
    p.add_argument("--out", default=None, help="write the results as JSON")
    args = p.parse_args()

    info = common.print_machine()
    target = aot.parse_target(args.target)
    device = aot.target_devices(target)[0]
    print(f"# compiling for {target.name} ({device.device_kind}), compile-only, one device")
    sharding = jax.sharding.SingleDeviceSharding(device)

    def spec(shape):
        return jax.ShapeDtypeStruct(shape, jnp.float32, sharding=sharding)

    jax.jit(lambda a: a + 1).lower(spec((8,))).compile()  # the compiler's start-up, outside the timings
    rows = []
    for scale, size in (tuple(int(v) for v in case.split(":")) for case in args.cases.split(",")):
        n, lr = args.batch, 64
        x, r, k = spec((n, lr * scale, lr * scale, 3)), spec((n, lr, lr, 3)), spec((n, size, size))
        operands = {"kernel_gradient": (x, r), "blur_down": (x, k)}
        for name, forms in programs(size, scale).items():
            seconds = {form: [] for form in forms}
            compiled = {}
            for _ in range(args.rounds):
                for form, fn in forms.items():  # interleaved: noise hits both forms
                    t = time.perf_counter()
                    compiled[form] = jax.jit(jax.grad(fn, argnums=(0, 1))).lower(*operands[name]).compile()
                    seconds[form].append(time.perf_counter() - t)
            row = {"op": name, "scale": scale, "kernel": size, "batch": n}
            for form in forms:
                flops, _ = aot.xla_flops(compiled[form])
                row[form] = {"compile_s": statistics.median(seconds[form]), "all_s": seconds[form], "flops": flops,
                             "temp_bytes": aot.memory_figures(compiled[form]).get("temp")}
            row["host_peak_rss"] = aot.host_peak_rss()  # the process's peak so far: grows where a compile needs more
            rows.append(row)
            a, o = row["autodiff"], row["ops"]
            print(f"x{scale} k{size} {name:16s} grad compile: autodiff {a['compile_s']:6.1f} s, ops {o['compile_s']:6.1f} s "
                  f"({a['compile_s'] / o['compile_s']:.1f}x); FLOPs {a['flops'] or 0:.3g} -> {o['flops'] or 0:.3g}; "
                  f"host peak RSS so far {(row['host_peak_rss'] or 0) / 2**30:.1f} GiB",
                  flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"machine": info, "target": target.name, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
