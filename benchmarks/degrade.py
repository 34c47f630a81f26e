"""Throughput of the full `jaxsr.ops.degrade` pipeline vs a NumPy/SciPy host implementation.

    python benchmarks/degrade.py [--batch 16] [--size 256] [--repeats 10] [--profile DIR] [--out FILE.json]

Per configuration (x4; setting 1 / setting 2; bicubic / s-fold; grouped-conv / FFT blur): compile time, then the median of
`--repeats` runs after warm-up, as images/second. The host baseline does the same work the
official PyTorch repositories do on the CPU every batch: NumPy kernel sampling, SciPy
correlation with mirrored borders, and the MATLAB bicubic weights applied with NumPy.
"""
from __future__ import annotations

import argparse
import os
import sys

import jax
import numpy as np
from scipy import ndimage

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

import jaxsr.ops.degrade as D  # noqa: E402
from jaxsr.ops.imresize import _matlab_matrix  # noqa: E402  (the same MATLAB weights, as NumPy)


def host_kernels(rng: np.random.Generator, n: int, spec: D.DegradationSpec) -> np.ndarray:
    size = spec.kernel_size
    r = np.arange(size) - size // 2
    yy, xx = np.meshgrid(r, r, indexing="ij")
    out = np.empty((n, size, size), np.float32)
    for i in range(n):
        sx = rng.uniform(*spec.sigma_range)
        sy, th = (sx, 0.0) if spec.kernel_type == "iso" else (rng.uniform(*spec.sigma_range), rng.uniform(*spec.theta_range))
        u, v = np.cos(th) * xx + np.sin(th) * yy, -np.sin(th) * xx + np.cos(th) * yy
        k = np.exp(-0.5 * ((u / sx) ** 2 + (v / sy) ** 2))
        if spec.kernel_noise:
            k = k * (1 + rng.uniform(-spec.kernel_noise, spec.kernel_noise, k.shape))
        out[i] = k / k.sum()
    return out


def host_degrade(rng: np.random.Generator, hr: np.ndarray, spec: D.DegradationSpec) -> np.ndarray:
    n, h, w, c = hr.shape
    kernels = host_kernels(rng, n, spec)
    blurred = np.empty_like(hr)
    for i in range(n):
        for ch in range(c):
            blurred[i, :, :, ch] = ndimage.correlate(hr[i, :, :, ch], kernels[i], mode="mirror")
    s = spec.scale
    if spec.downsampler == "sfold":
        return blurred[:, ::s, ::s]
    mh = _matlab_matrix(h, h // s, 1.0 / s, True).astype(np.float32)
    mw = _matlab_matrix(w, w // s, 1.0 / s, True).astype(np.float32)
    return np.einsum("oh,nhwc->nowc", mh, np.einsum("pw,nhwc->nhpc", mw, blurred))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--host-repeats", type=int, default=3)
    p.add_argument("--blur", nargs="+", default=["conv", "fft"], choices=D.BLUR_METHODS,
                   help="blur implementations to time (auto = conv on GPU/TPU, fft on CPU)")
    p.add_argument("--profile", default=None, help="write an XLA trace of the jitted runs here")
    p.add_argument("--out", default=None, help="JSON results file")
    args = p.parse_args(argv)

    info = common.print_machine()
    hr_np = np.random.default_rng(0).random((args.batch, args.size, args.size, 3), dtype=np.float32)
    hr = jax.device_put(hr_np)
    configs = []
    for name, base in (("setting1", D.setting1(4)), ("setting2", D.setting2(4))):
        for down in ("bicubic", "sfold"):
            for blur in args.blur:
                spec = D.DegradationSpec(**{**base.__dict__, "downsampler": down, "blur_method": blur})
                configs.append((f"{name}/{down}/{blur}", spec))

    rows = []
    print(f"# batch {args.batch} x {args.size}x{args.size}x3 HR, x4; medians of {args.repeats} runs after warm-up")
    print("| pipeline | compile (s) | jax img/s | numpy+scipy img/s | speed-up |")
    print("|---|---:|---:|---:|---:|")
    with common.maybe_profile(args.profile):
        for label, spec in configs:
            jitted = jax.jit(D._degrade, static_argnames=("spec",))
            key = jax.random.key(0)
            compile_s, _ = common.time_compile(jitted, key, hr, spec)
            t_jax = common.median_seconds(lambda: common.block(jitted(key, hr, spec)), repeats=args.repeats)
            rng = np.random.default_rng(0)
            t_host = common.median_seconds(lambda: host_degrade(rng, hr_np, spec), warmup=1, repeats=args.host_repeats)
            row = dict(pipeline=label, compile_s=compile_s, jax_images_per_s=args.batch / t_jax,
                       host_images_per_s=args.batch / t_host, speedup=t_host / t_jax)
            rows.append(row)
            print(f"| {label} | {compile_s:.2f} | {row['jax_images_per_s']:.1f} | {row['host_images_per_s']:.1f} | "
                  f"{row['speedup']:.1f}x |")
    common.write_json(args.out, {"machine": info, "args": vars(args), "results": rows})


if __name__ == "__main__":
    main()
