"""Throughput of the full `jaxsr.ops.degrade` pipeline vs the official PyTorch pipeline and a NumPy/SciPy one.

    python benchmarks/degrade.py [--batch 16] [--size 256] [--repeats 10] [--blur fused fft conv]
                                 [--torch-resize matmul|loop] [--profile DIR] [--out FILE.json]

Per configuration (x4; setting 1 / setting 2; bicubic / s-fold), three pipelines do the same work
on a batch of HR images: sample one kernel per image, blur, downsample.

- jaxsr: `degrade` jitted (compile time reported separately), one row per blur implementation
  (`auto` picks `fused` on CPU, `conv` on GPU/TPU).
- PyTorch: what the official DAN training code runs on every batch: Gaussian kernels built per
  batch (here in torch), the blur as one grouped `F.conv2d` (groups = batch x channels) after
  reflect padding, then a PyTorch port of MATLAB's antialiased bicubic `imresize` (a = -0.5,
  symmetric borders) or s-fold sampling. `--torch-resize loop` resizes one output row/column at a
  time as the official port does; the default applies the same weights as two matrix products,
  which is faster on CPU, so the comparison is against the faster of the two. torch uses all cores.
  A second PyTorch column runs the same pipeline with `torch.set_flush_denormal(True)`, as XLA:CPU
  computes (the official code does not set it; see `flushing_denormals`).
- NumPy/SciPy: NumPy kernels, `scipy.ndimage.correlate` with mirrored borders, MATLAB weights in NumPy.

Rounds are interleaved (each round runs every pipeline once, in rotating order) so machine noise hits
all of them; the table shows medians after warm-up. Before timing, the PyTorch pipeline is checked
against `jaxsr.ops.degrade.apply_degradation` on the same kernels.
"""
from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time

import jax
import numpy as np
from scipy import ndimage

# Before torch loads: its OpenMP threads otherwise spin-wait after each parallel region and take
# the cores from XLA's threads in the next (interleaved) call; benchmarks/vs_torch.py does the same.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import common  # noqa: E402

import jaxsr.ops.degrade as D  # noqa: E402
from jaxsr import platform  # noqa: E402
from jaxsr.cpu import process  # noqa: E402 - the allocator settings one by one
from jaxsr.ops.imresize import _matlab_matrix  # noqa: E402  (the same MATLAB weights, as NumPy)

# --------------------------------------------------------------------------- NumPy / SciPy


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


# --------------------------------------------------------------------------- PyTorch (official pipeline)


def torch_pipeline(threads: int, resize: str):
    """Returns (degrade(gen, hr_nchw, spec) -> lr_nchw, degrade_with(hr_nchw, kernels, spec) -> lr_nchw)."""
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(threads)

    def kernels(gen, n: int, spec: D.DegradationSpec):
        size = spec.kernel_size
        lo, hi = spec.sigma_range
        sx = torch.rand(n, generator=gen) * (hi - lo) + lo
        if spec.kernel_type == "iso":
            sy, th = sx, torch.zeros(n)
        else:
            sy = torch.rand(n, generator=gen) * (hi - lo) + lo
            th = torch.rand(n, generator=gen) * (spec.theta_range[1] - spec.theta_range[0]) + spec.theta_range[0]
        r = torch.arange(size, dtype=torch.float32) - size // 2
        yy, xx = r[:, None], r[None, :]
        cos, sin = torch.cos(th)[:, None, None], torch.sin(th)[:, None, None]
        u, v = cos * xx + sin * yy, -sin * xx + cos * yy
        k = torch.exp(-0.5 * ((u / sx[:, None, None]) ** 2 + (v / sy[:, None, None]) ** 2))
        if spec.kernel_noise:
            k = k * (1 + (torch.rand(k.shape, generator=gen) * 2 - 1) * spec.kernel_noise)
        return k / k.sum(dim=(1, 2), keepdim=True)

    def blur(x, k):  # reflect padding + one grouped convolution, one filter per image and channel
        n, c, h, w = x.shape
        size = k.shape[-1]
        p = size // 2
        xp = F.pad(x, (p, p, p, p), mode="reflect").reshape(1, n * c, h + 2 * p, w + 2 * p)
        weight = k[:, None].expand(n, c, size, size).reshape(n * c, 1, size, size)
        return F.conv2d(xp, weight, groups=n * c).reshape(n, c, h, w)

    cache = {}

    def contributions(in_len: int, out_len: int, scale: float):
        """MATLAB imresize weights for the antialiased cubic (a = -0.5) and the mirrored source indices."""
        key = (in_len, out_len, scale)
        if key not in cache:
            width = 4.0 / scale if scale < 1 else 4.0
            centre = torch.arange(1, out_len + 1, dtype=torch.float64) / scale + 0.5 * (1 - 1 / scale)
            taps = torch.floor(centre - width / 2)[:, None] + torch.arange(math.ceil(width) + 2, dtype=torch.float64)
            d = (centre[:, None] - taps) * (scale if scale < 1 else 1.0)
            ad = d.abs()
            cubic = torch.where(ad <= 1, (1.5 * ad - 2.5) * ad * ad + 1,
                                torch.where(ad < 2, ((-0.5 * ad + 2.5) * ad - 4) * ad + 2, torch.zeros_like(ad)))
            weights = cubic / cubic.sum(dim=1, keepdim=True)
            folded = torch.remainder(taps.long() - 1, 2 * in_len)  # symmetric: -1 -> 0, n -> n-1
            index = torch.where(folded < in_len, folded, 2 * in_len - 1 - folded)
            dense = torch.zeros(out_len, in_len, dtype=torch.float64).scatter_add_(1, index, weights)
            cache[key] = (weights.float(), index, dense.float())
        return cache[key]

    def imresize(x, s: int):
        n, c, h, w = x.shape
        oh, ow = math.ceil(h / s), math.ceil(w / s)
        wh, ih, mh = contributions(h, oh, 1.0 / s)
        ww, iw, mw = contributions(w, ow, 1.0 / s)
        if resize == "matmul":
            return torch.matmul(torch.matmul(mh, x), mw.T)
        # one output row, then one output column, at a time (the structure of the official port)
        rows = torch.empty(n, c, oh, w)
        for i in range(oh):
            rows[:, :, i] = torch.einsum("nckw,k->ncw", x[:, :, ih[i]], wh[i])
        out = torch.empty(n, c, oh, ow)
        for j in range(ow):
            out[..., j] = torch.einsum("nchk,k->nch", rows[..., iw[j]], ww[j])
        return out

    def degrade_with(x, k, spec):
        b = blur(x, k)
        return b[:, :, ::spec.scale, ::spec.scale] if spec.downsampler == "sfold" else imresize(b, spec.scale)

    @torch.no_grad()
    def degrade(gen, x, spec):
        return degrade_with(x, kernels(gen, x.shape[0], spec), spec)

    return degrade, torch.no_grad()(degrade_with)


# --------------------------------------------------------------------------- timing


def flushing_denormals(fn):
    """fn() with PyTorch flushing denormal floats to zero, as XLA:CPU always does. The official
    pipeline runs without it; its small-sigma Gaussians have far taps near 1e-38 whose products
    with pixel values are denormal, and on some CPUs (this Intel Xeon) each operation on one costs ~100 cycles: the
    grouped-conv blur then runs up to 10x slower. Both columns are reported."""
    import torch
    torch.set_flush_denormal(True)
    try:
        return fn()
    finally:
        torch.set_flush_denormal(False)


def interleaved(fns: dict, rounds: int, warmup: int = 1) -> dict:
    """Median seconds per call of each fn, running one call of every fn per round in rotating order."""
    names = list(fns)
    for _ in range(warmup):
        for name in names:
            fns[name]()
    times = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            t = time.perf_counter()
            fns[name]()
            times[name].append(time.perf_counter() - t)
    return {name: statistics.median(ts) for name, ts in times.items()}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--repeats", type=int, default=10, help="interleaved timed rounds (jaxsr and PyTorch)")
    p.add_argument("--host-repeats", type=int, default=3, help="NumPy/SciPy runs (slow), spread over the rounds")
    p.add_argument("--blur", nargs="+", default=["fused", "fft", "conv"], choices=D.SPEC_BLUR_METHODS,
                   help="jaxsr blur implementations to time (auto = fused on CPU, conv on GPU/TPU)")
    p.add_argument("--torch-resize", default="matmul", choices=("matmul", "loop"))
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="PyTorch intra-op threads")
    p.add_argument("--no-torch", action="store_true")
    p.add_argument("--malloc-defaults", action="store_true",
                   help="leave glibc alone: no heap tunables, no huge pages (jaxsr.main sets both on the CPU; "
                        "all pipelines share them)")
    p.add_argument("--no-host", action="store_true", help="skip the NumPy/SciPy pipeline")
    p.add_argument("--profile", default=None, help="write an XLA trace of the jitted runs here")
    p.add_argument("--out", default=None, help="JSON results file")
    args = p.parse_args(argv)
    if not args.malloc_defaults and __name__ == "__main__":
        process.restart_with_malloc_tuning()  # as jaxsr.main does; all pipelines share it

    heap = False if args.malloc_defaults else process.keep_large_buffers_in_heap()
    info = common.print_machine()
    print(f"# jaxsr compile options: {platform.compiler_options('cpu') or 'XLA defaults'}; large buffers from the heap "
          f"(all pipelines): {heap}; GLIBC_TUNABLES={os.environ.get('GLIBC_TUNABLES')}")
    hr_np = np.random.default_rng(0).random((args.batch, args.size, args.size, 3), dtype=np.float32)
    hr = jax.device_put(hr_np)
    if not args.no_torch:
        import torch
        t_degrade, t_degrade_with = torch_pipeline(args.threads, args.torch_resize)
        hr_t = torch.from_numpy(np.ascontiguousarray(hr_np.transpose(0, 3, 1, 2)))
        gen = torch.Generator().manual_seed(0)
        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
        print(f"# PyTorch {torch.__version__}, {torch.get_num_threads()} threads, imresize port: {args.torch_resize}")
    presets = (("setting1", D.setting1(4)), ("setting2", D.setting2(4)))

    rows = []
    print(f"# batch {args.batch} x {args.size}x{args.size}x3 HR, x4; medians of {args.repeats} interleaved rounds "
          f"after warm-up (NumPy/SciPy: {args.host_repeats} runs)")
    print("| pipeline | compile (s) | jaxsr img/s | PyTorch img/s | PyTorch, denormals flushed, img/s | NumPy+SciPy img/s "
          "| vs PyTorch | vs PyTorch, flushed | vs NumPy+SciPy |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    with common.maybe_profile(args.profile):
        for name, base in presets:
            for down in ("bicubic", "sfold"):
                specs = {blur: D.DegradationSpec(**{**base.__dict__, "downsampler": down, "blur_method": blur})
                         for blur in args.blur}
                key = jax.random.key(0)
                fns, compile_s = {}, {}
                for blur, spec in specs.items():
                    jitted = platform.jit(D._degrade.__wrapped__, static_argnames=("spec",))
                    compile_s[blur], _ = common.time_compile(jitted, key, hr, spec)
                    fns[blur] = (lambda j=jitted, s=spec: common.block(j(key, hr, s)))
                any_spec = next(iter(specs.values()))
                if not args.no_torch:
                    # Same kernels through both: the PyTorch pipeline must give jaxsr's result.
                    kern = D.sample_kernels(jax.random.key(1), args.batch, any_spec)
                    ref = np.asarray(D.apply_degradation(hr, kern, any_spec)).transpose(0, 3, 1, 2)
                    got = t_degrade_with(hr_t, torch.from_numpy(np.asarray(kern)), any_spec).numpy()
                    err = float(np.abs(got - ref).max())
                    if err > 1e-4:
                        raise AssertionError(f"PyTorch pipeline differs from jaxsr by {err:.2e} ({name}/{down})")
                    fns["torch"] = lambda s=any_spec: t_degrade(gen, hr_t, s)
                    fns["torch_ftz"] = lambda s=any_spec: flushing_denormals(lambda: t_degrade(gen, hr_t, s))
                times = interleaved(fns, args.repeats)
                t_host = None
                if not args.no_host:
                    rng = np.random.default_rng(0)
                    t_host = common.median_seconds(lambda s=any_spec: host_degrade(rng, hr_np, s), warmup=1,
                                                   repeats=args.host_repeats)
                for blur in specs:
                    t_jax, t_torch, t_ftz = times[blur], times.get("torch"), times.get("torch_ftz")
                    row = dict(pipeline=f"{name}/{down}/{blur}", compile_s=compile_s[blur],
                               jax_images_per_s=args.batch / t_jax,
                               torch_images_per_s=t_torch and args.batch / t_torch,
                               torch_ftz_images_per_s=t_ftz and args.batch / t_ftz,
                               host_images_per_s=t_host and args.batch / t_host,
                               speedup_vs_torch=t_torch and t_torch / t_jax,
                               speedup_vs_torch_ftz=t_ftz and t_ftz / t_jax, speedup_vs_host=t_host and t_host / t_jax)
                    rows.append(row)

                    def fmt(v, spec="{:.1f}"):
                        return "-" if v is None else spec.format(v)
                    print(f"| {row['pipeline']} | {compile_s[blur]:.2f} | {row['jax_images_per_s']:.1f} | "
                          f"{fmt(row['torch_images_per_s'])} | {fmt(row['torch_ftz_images_per_s'])} | "
                          f"{fmt(row['host_images_per_s'])} | {fmt(row['speedup_vs_torch'], '{:.2f}x')} | "
                          f"{fmt(row['speedup_vs_torch_ftz'], '{:.2f}x')} | {fmt(row['speedup_vs_host'], '{:.1f}x')} |",
                          flush=True)
    common.write_json(args.out, {"machine": info, "args": vars(args), "results": rows})
    auto = "fused" if jax.default_backend() == "cpu" else "conv"
    best = [r["speedup_vs_torch"] for r in rows if r["pipeline"].endswith("/" + auto) and r["speedup_vs_torch"]]
    flushed = [r["speedup_vs_torch_ftz"] for r in rows if r["pipeline"].endswith("/" + auto) and r["speedup_vs_torch_ftz"]]
    if flushed:
        print(f"min speed-up of degrade (blur_method auto = {auto}) vs PyTorch with denormals flushed: {min(flushed):.2f}x")
    if best:
        print(f"min speed-up of degrade (blur_method auto = {auto}) vs PyTorch: {min(best):.2f}x")


if __name__ == "__main__":
    main()
