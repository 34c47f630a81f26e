"""Timing helpers shared by the benchmark scripts: machine report, warm-up, medians, profiles."""
from __future__ import annotations

import contextlib
import json
import os
import platform
import re
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np


def machine() -> dict:
    return {
        "platform": platform.platform(), "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(), "python": platform.python_version(), "jax": jax.__version__,
        "backend": jax.default_backend(), "devices": [str(d) for d in jax.devices()],
    }


def print_machine() -> dict:
    m = machine()
    print(f"# {m['platform']} | {m['cpu_count']} CPUs | JAX {m['jax']} backend={m['backend']} devices={m['devices']}")
    return m


def block(x):
    return jax.block_until_ready(x)


def time_compile(jitted, *args) -> tuple[float, object]:
    """Seconds to lower + compile `jitted` for `args`, and the compiled executable."""
    t = time.perf_counter()
    compiled = jitted.lower(*args).compile()
    return time.perf_counter() - t, compiled


def median_seconds(fn, *, warmup: int = 2, repeats: int = 10) -> float:
    """Median wall time of fn() (which must block on its result) after `warmup` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


@contextlib.contextmanager
def maybe_profile(directory: str | None):
    """An XLA/TensorBoard trace of the block when `directory` is given (view with TensorBoard or Perfetto)."""
    if not directory:
        yield
        return
    with jax.profiler.trace(directory):
        yield
    print(f"# XLA profile written to {directory}")


def write_json(path: str | None, payload: dict) -> None:
    if path:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "w") as f:
            json.dump(payload, f, indent=2)
        print(f"# results written to {path}")


def matmul_peak(n: int = 2048, repeats: int = 10) -> dict:
    """This machine's float32 matmul rate: median time of a jitted (n x n) @ (n x n) after warm-up.

    2 n^3 flops per product; the practical ceiling for dense work here, against which models'
    achieved GFLOP/s are read.
    """
    rng = np.random.default_rng(0)
    a, b = (jnp.asarray(rng.standard_normal((n, n)), jnp.float32) for _ in range(2))
    matmul = jax.jit(lambda a, b: a @ b)
    seconds = median_seconds(lambda: block(matmul(a, b)), warmup=2, repeats=repeats)
    return {"n": n, "seconds": seconds, "gflops_per_s": 2 * n ** 3 / seconds / 1e9}


def compiled_flops(compiled) -> tuple[float | None, bool]:
    """(flops, has_loops) from XLA's cost analysis of a compiled executable.

    XLA counts the body of a while loop once, whatever its trip count, so when the program still
    has loops (has_loops) the figure is a lower bound. The native kernels' FLOPs, which
    XLA does not count, are added (`native_conv_flops`).
    """
    try:
        analysis = compiled.cost_analysis()
    except Exception:  # noqa: BLE001 - some backends do not implement it
        return None, False
    if isinstance(analysis, (list, tuple)):
        analysis = analysis[0] if analysis else None
    flops = (analysis or {}).get("flops")
    text = compiled.as_text()
    has_loops = " while(" in text
    if flops is None or flops < 0:
        return None, has_loops
    return float(flops) + native_conv_flops(text), has_loops


_NATIVE_CALL = re.compile(r"=\s*f32\[([\d,]+)\][^\n]*?custom_call_target=\"(jaxsr_conv_kernel_grad|jaxsr_conv_forward)\""
                          r"[^\n]*?operand_layout_constraints=\{f32\[([\d,]+)\](?:\{[\d,]*\})?, f32\[([\d,]+)\]"
                          r"[^\n]*?pad_left = (\d+)[^\n]*?pad_top = (\d+)")


def _valid_taps(size: int, out: int, k: int, pad: int) -> int:
    """Sum over the k taps of the output positions whose input position lies inside the image."""
    return sum(max(0, min(out, size + pad - a) - max(0, pad - a)) for a in range(k))


def native_conv_flops(hlo_text: str) -> float:
    """FLOPs of the program's `jaxsr.cpu.native` calls (kernel gradients and forward convolutions),
    which XLA's cost analysis does not see (custom calls): 2·C·O per (output pixel, tap) that reads
    inside the image, as XLA counts a padded convolution."""
    total = 0.0
    for dims, target, first, second, pad_left, pad_top in _NATIVE_CALL.findall(hlo_text):
        out = [int(d) for d in dims.split(",")]
        n, h, w, c = (int(d) for d in first.split(","))  # the input, NHWC
        if target == "jaxsr_conv_kernel_grad":
            kh, kw, _, o = out
            _, ho, wo, _ = (int(d) for d in second.split(","))
        else:  # operands: input, packed kernel (O/64, kh, kw, C, 64)
            _, kh, kw, _, _ = (int(d) for d in second.split(","))
            _, ho, wo, o = out
        taps = _valid_taps(h, ho, kh, int(pad_top)) * _valid_taps(w, wo, kw, int(pad_left))
        total += 2.0 * n * c * o * taps
    return total
