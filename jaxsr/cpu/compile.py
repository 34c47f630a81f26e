"""XLA:CPU compile options, and `jit`: `jax.jit` plus the options of the platform it runs on.

On the CPU, XLA (JAX >= 0.10) hands convolutions and matmuls to YNNPACK by default. For the
convolutions of these models XLA's own (Eigen) kernels are faster on x86: 1.2-1.9x for a whole
model's forward pass on the 2-core machine of `benchmarks/vs_torch.py` (docs/benchmarks.md),
with outputs equal within float rounding. So jaxsr compiles CPU programs with YNN fusions off.

The options go to each compiled function (`jax.jit(..., compiler_options=...)`), never through
XLA_FLAGS, so a program that imports jaxsr keeps its own settings. GPU and TPU programs get no
options. An XLA that does not know an option runs without it.
"""
from __future__ import annotations

import functools
import logging
from typing import Any, Callable

import jax
import jax.numpy as jnp

# Empty list = no YNNPACK fusions: convolutions and dots go to XLA's Eigen kernels.
CPU_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": ""}


@functools.cache
def _cpu_options_supported() -> tuple[tuple[str, str], ...]:
    """The CPU_OPTIONS this XLA accepts (an unknown name fails at compile time)."""
    kept = []
    cpu = jax.devices("cpu")[0]
    for name, value in CPU_OPTIONS.items():
        try:
            jax.jit(lambda x: x + 1, compiler_options={name: value}).lower(
                jax.device_put(jnp.zeros((), jnp.float32), cpu)).compile()
        except Exception:  # noqa: BLE001 - any refusal means "not supported by this XLA"
            continue
        kept.append((name, value))
    return tuple(kept)


def compiler_options(platform: str) -> dict[str, str]:
    """The options jaxsr compiles with for `platform` ("cpu", "gpu", "tpu"): CPU_OPTIONS (those
    this XLA knows) on the CPU, none elsewhere."""
    return dict(_cpu_options_supported()) if platform == "cpu" else {}


# XLA:GPU fuses some small float32 matmuls with a transpose of an operand (the bicubic resizes'
# matrices against a 3-channel image, in the backward pass) into a Triton GEMM and then may fail
# to tile it: "Couldn't find output tile sizes that satisfy hlo". Seen in deviceless compiles for
# H100 (`jaxsr.aot`), where no autotuning can run. Such a program is compiled again with Triton
# GEMMs off (cuBLAS takes the matmuls); every other program keeps XLA's defaults.
GPU_TILING_ERROR = "Couldn't find output tile sizes"
GPU_FALLBACK_OPTIONS = {"xla_gpu_enable_triton_gemm": False}


def gpu_fallback_options(error: BaseException | str) -> dict[str, Any] | None:
    """The options to compile again with after `error`, or None if it is not the Triton tiling failure."""
    return dict(GPU_FALLBACK_OPTIONS) if GPU_TILING_ERROR in str(error) else None


def _tracing() -> bool:
    from jax._src import core as jax_core  # no public "is a trace under way" yet
    return not jax_core.trace_state_clean()


class _Jit:
    """`jax.jit(fun, **kwargs)` with `compiler_options(platform)`. The platform is that of the
    `in_shardings` when given, else of the default device, read at the first call (never at
    import: multi-host runs call `jax.distributed.initialize` first)."""

    def __init__(self, fun: Callable, kwargs: dict[str, Any]):
        functools.update_wrapper(self, fun)
        self._fun, self._kwargs, self._jitted = fun, kwargs, None
        self._gpu_fallback = False
        self._nested = jax.jit(fun, **kwargs)

    def _platform(self) -> str:
        devices = jax.devices()
        for s in jax.tree.leaves(self._kwargs.get("in_shardings")):
            if hasattr(s, "device_set"):
                devices = list(s.device_set)
                break
        platform = devices[0].platform.lower()
        return "gpu" if platform in ("cuda", "rocm") else platform

    @property
    def jitted(self):
        if self._jitted is None:
            options = compiler_options(self._platform())
            self._jitted = jax.jit(self._fun, compiler_options=options or None, **self._kwargs)
        return self._jitted

    def __call__(self, *args, **kwargs):
        # Inside another trace (a caller's jit, grad or vmap) JAX refuses compile options; the
        # caller's jit compiles the whole program, so the plain nested jit is used.
        if _tracing():
            return self._nested(*args, **kwargs)
        try:
            return self.jitted(*args, **kwargs)
        except Exception as err:  # noqa: BLE001 - re-raised unless it is the GPU tiling failure
            fallback = None if self._gpu_fallback or self._platform() != "gpu" else gpu_fallback_options(err)
            if fallback is None:
                raise
            self._gpu_fallback = True
            logging.getLogger(__name__).warning("%s: XLA:GPU could not tile a fused matmul; compiling with %s",
                                                getattr(self, "__name__", "function"), fallback)
            self._jitted = jax.jit(self._fun, compiler_options=fallback, **self._kwargs)
            return self._jitted(*args, **kwargs)

    def lower(self, *args, **kwargs):
        return self.jitted.lower(*args, **kwargs)


def jit(fun: Callable | None = None, **kwargs) -> Callable:
    """`jax.jit` (also as `@jit(static_argnames=...)`) that compiles with the options of the
    platform the function runs on: the way to compile a jaxsr model or op on the CPU at full
    speed (plain `jax.jit` works everywhere; on the CPU it lets YNNPACK take the convolutions).
    Also `jaxsr.jit`."""
    if fun is None:
        return lambda f: _Jit(f, kwargs)
    return _Jit(fun, kwargs)
