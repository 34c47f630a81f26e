"""Everything that exists only to make XLA:CPU fast, behind one door: this package's names.

A maintainer who cares only about GPUs and TPUs can ignore this folder: no GPU or TPU program
contains anything from it (unless its caller names a CPU formulation: `method="fft"`,
`blur_method="fused"`), and nothing here changes a result beyond float rounding. Code outside
the folder imports `jaxsr.cpu` and uses only the names below; no module outside imports a
submodule (tests/test_architecture.py checks).

For models and ops (each computes one thing, in XLA's plain formulation for GPU/TPU programs and
in this package's formulation for CPU programs, chosen for the platform the program is compiled
for; `hook` says how, and what their CPU branches do while tracing):
  on_cpu, conv2d, add_bias, and the degradation's CPU formulations (blur_downsample,
  correlate_fft, kernel_gradient_fft, separable_blur_downsample, separable_factors,
  sfold_blur_fft, transposed_blur_fft)
For the platform-neutral layer above (`jaxsr.platform`, `jaxsr.models`, `jaxsr.aot`):
  tracing_for(platform)     trace only that platform's branches of the choices (`jaxsr.platform.jit`)
  compiler_options()        the CPU compile options (YNNPACK fusions off)
  scan_unroll(platform)     the iteration loop's unroll for programs compiled for `platform`
  ONLY_CALL_PREFIXES        custom-call names only a CPU program can run
  native_suspended()        trace without the native kernels (so XLA counts every FLOP)
For entry points:
  setup()                   process settings and the native kernels, once at start-up
  restart_with_malloc_tuning(accelerator)
                            the allocator restart alone, for the first lines of an entry point
                            (this package imports JAX only when a name below needs it)

Inside: `hook` (the platform choices), `conv` (matmul-shaped convolution gradients), `degrade`
(FFT and kept-pixel formulations of the degradation), `native` (C++ AVX-512 kernels as XLA FFI
custom calls, built once per machine), `compile` (the CPU compile options), `process`
(allocator and dispatch settings).
"""
from __future__ import annotations

import importlib

from jaxsr.cpu import process  # imports no JAX: `restart_with_malloc_tuning` runs before JAX loads

# The door: what code outside this package may use (tests/test_architecture.py reads this list).
__all__ = [
    "on_cpu", "tracing_for", "conv2d", "add_bias", "blur_downsample", "correlate_fft", "kernel_gradient_fft",
    "separable_blur_downsample", "separable_factors", "sfold_blur_fft", "transposed_blur_fft",
    "compiler_options", "scan_unroll", "ONLY_CALL_PREFIXES", "native_suspended", "setup",
    "restart_with_malloc_tuning",
]
restart_with_malloc_tuning = process.restart_with_malloc_tuning

# The rest of the door imports JAX: a name of `__all__` not defined here is loaded on first use from
# `hook` (or from the submodule named below), so `from jaxsr import cpu` stays light for
# `python -m jaxsr.main`'s first lines.
_NOT_FROM_HOOK = {"compiler_options": ("compile", "compiler_options"), "native_suspended": ("native", "suspended")}


def __getattr__(name: str):
    if name not in __all__:
        raise AttributeError(f"module 'jaxsr.cpu' has no attribute {name!r}")
    module, attr = _NOT_FROM_HOOK.get(name, ("hook", name))
    value = getattr(importlib.import_module(f"jaxsr.cpu.{module}"), attr)
    globals()[name] = value  # looked up once
    return value

# Custom calls that only a CPU program can run: jaxsr's native kernels and jaxlib's CPU libraries.
ONLY_CALL_PREFIXES = ("jaxsr_", "lapack_", "ducc_", "cpu_")


def scan_unroll(platform: str) -> int:
    """`scan_unroll` for config value -1 ("auto") in a program compiled for `platform`: every
    iteration unrolled for the CPU (XLA:CPU runs a loop body several times slower than the same
    ops unrolled: a DANv1 `cpu` config gradient 0.47 vs 0.09 s), a rolled loop on GPU/TPU (one
    body to compile)."""
    return 0 if platform == "cpu" else 1


def setup(restart: bool = True, native_kernel: bool = True, accelerator: bool = False) -> dict[str, bool]:
    """Prepare this process for fast XLA:CPU work: allocator and dispatch settings
    (`process.setup`; with `restart` it may re-execute the process, so call it first thing) and,
    with `native_kernel`, the native convolution kernels (built once per machine, then registered;
    CPU programs traced after this call use it). `accelerator`: the caller expects JAX to run on a
    GPU/TPU (`jaxsr.hardware.accelerator_likely()`); then only what is harmless there is set
    (`process.setup`) and no native kernel is built. Returns what took effect."""
    from jaxsr.cpu import native
    done = process.setup(restart=restart, accelerator=accelerator)
    done["native_kernel"] = native.load(build_missing=True) if native_kernel and not accelerator else False
    return done
