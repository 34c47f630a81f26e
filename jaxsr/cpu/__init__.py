"""Everything that exists only to make XLA:CPU fast, behind one boundary.

A maintainer who cares only about GPUs and TPUs can ignore this folder: no GPU or TPU program
contains anything from it (unless its caller names a CPU formulation: `method="fft"`,
`blur_method="fused"`), and nothing here changes a result beyond float rounding.

  hook      the one module models and ops import: each function computes one thing, in XLA's
            plain formulation for GPU/TPU programs and in this package's formulation for CPU
            programs (`jax.lax.platform_dependent`: chosen for the platform the program is
            compiled for, never from the host's default backend)
  conv      matmul-shaped convolution gradients, narrow-output convs, the bias gradient
  degrade   the degradation's blur, blur + downsample and KXNet's data-term gradients without
            XLA:CPU's slow depthwise/dilated convolutions (FFTs, kept pixels only, separable
            kernels); their plain formulations are `jaxsr.ops.degrade` / `jaxsr.ops.unfolding`
  native    a native (C++, AVX-512) kernel gradient as an XLA FFI custom call, built once per
            machine into the jaxsr cache directory, outside tracing
  compile   the CPU compile options and `jit` (also `jaxsr.jit`): jax.jit plus those options
  process   process-wide allocator and dispatch settings, for entry points only

For a library user the fast path is `jaxsr.jit` instead of `jax.jit` (the compile options), and,
optionally, `jaxsr.cpu.setup()` once at start-up (allocator settings and the native kernel).
"""
from __future__ import annotations

from jaxsr.cpu.compile import compiler_options, jit  # noqa: F401


def setup(restart: bool = True, native_kernel: bool = True) -> dict[str, bool]:
    """Prepare this process for fast XLA:CPU work: allocator and dispatch settings
    (`process.setup`; with `restart` it may re-execute the process, so call it first thing) and,
    with `native_kernel`, the native convolution kernels (built once per machine, then registered;
    CPU programs traced after this call use it). Returns what took effect."""
    from jaxsr.cpu import native, process
    done = process.setup(restart=restart)
    wanted = native_kernel and not process.accelerator_plugin_installed()
    done["native_kernel"] = native.load(build_missing=True) if wanted else False
    return done
