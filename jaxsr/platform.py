"""Which platform a program is compiled for, and how jaxsr compiles for it; platform-neutral.

  platform_of(devices)      "cpu", "gpu" or "tpu" (the one place a device's platform is read)
  compiler_options(p)       the options jaxsr compiles with for p: the CPU's from `jaxsr.cpu`,
                            none for GPUs and TPUs
  compile_lowered(l, p)     `l.compile()`, again without Triton GEMMs after XLA:GPU's tiling failure
  jit(fun, **kw)            `jax.jit` with those options and that fallback (also `jaxsr.jit`),
                            tracing only the platform's branches of `jaxsr.cpu`'s choices
  eval_shape(fun)           `jax.eval_shape`, tracing the cheapest branch of those choices
  libtpu_installed(), cuda_plugin_installed(), tpu_attached(), gpu_attached(), accelerator_likely()
                            what this machine can compile for and run on (`jaxsr.hardware`, here too)
  skip_absent_tpu()         a quiet CPU start where libtpu is installed but no TPU is attached

The training step, evaluation, prediction and `jaxsr.aot` all compile through `jit` /
`compile_lowered`, so a program checked ahead of time is compiled the way training compiles it.
"""
from __future__ import annotations

import functools
import logging
import os
from typing import Any, Callable

import jax

from jaxsr import cpu
from jaxsr.hardware import (  # noqa: F401 - part of this module's interface
    accelerator_likely, cuda_plugin_installed, gpu_attached, libtpu_installed, tpu_attached)

PLATFORMS = ("cpu", "gpu", "tpu")


def platform_of(devices) -> str:
    """"cpu", "gpu" or "tpu": the platform of the devices a program is compiled for (a `Mesh`, a
    sharding, a sequence of devices, or one device). CUDA and ROCm devices are both "gpu"."""
    devices = getattr(devices, "devices", devices)  # a Mesh
    if hasattr(devices, "device_set"):  # a sharding
        devices = sorted(devices.device_set, key=lambda d: d.id)
    first = devices.flat[0] if hasattr(devices, "flat") else (
        next(iter(devices)) if isinstance(devices, (list, tuple, set, frozenset)) else devices)
    platform = first.platform.lower()
    return "gpu" if platform in ("cuda", "rocm", "gpu") else platform


def default_platform() -> str:
    """The platform of this process's default devices (starts the backend)."""
    return platform_of(jax.devices())


def compiler_options(platform: str) -> dict[str, Any]:
    """What jaxsr compiles with for `platform`: the CPU's tuning options (`jaxsr.cpu`), none elsewhere."""
    if platform not in PLATFORMS:
        raise ValueError(f"platform must be one of {PLATFORMS}, got {platform!r}")
    return cpu.compiler_options() if platform == "cpu" else {}


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


def compile_lowered(lowered, platform: str):
    """(compiled, fallback options or None): `lowered.compile()`, and on a GPU once more with
    `GPU_FALLBACK_OPTIONS` after the Triton tiling failure."""
    try:
        return lowered.compile(), None
    except Exception as err:  # noqa: BLE001 - re-raised unless it is the GPU tiling failure
        fallback = gpu_fallback_options(err) if platform == "gpu" else None
        if fallback is None:
            raise
        logging.getLogger(__name__).warning("XLA:GPU could not tile a fused matmul; compiling with %s", fallback)
        return lowered.compile(compiler_options=fallback), fallback


def _tracing() -> bool:
    """Whether a trace (a caller's jit, grad or vmap) is under way. JAX has no public query for
    it; its private one is read here, in the one place that needs it."""
    from jax._src import core as jax_core
    return not jax_core.trace_state_clean()


class _Jit:
    """`jax.jit(fun, **kwargs)` compiled with `compiler_options(platform)` and traced for that
    platform only (`jaxsr.cpu.tracing_for`). The platform is that of
    the `in_shardings` when given, else of the arguments' shardings (abstract arguments for an
    ahead-of-time lowering carry the target's), else of the default device, read at each call or
    lowering (never at import: multi-host runs call `jax.distributed.initialize` first)."""

    def __init__(self, fun: Callable, kwargs: dict[str, Any]):
        functools.update_wrapper(self, fun)
        self._fun, self._kwargs = fun, kwargs
        self._jitted: dict[str, Any] = {}     # platform -> jax.jit with its options
        self._fallback: dict | None = None    # the GPU options after a tiling failure
        self._nested = jax.jit(fun, **kwargs)

    def platform(self, args=()) -> str:
        for s in jax.tree.leaves(self._kwargs.get("in_shardings")):
            if hasattr(s, "device_set"):
                return platform_of(s)
        for leaf in jax.tree.leaves(args):
            s = getattr(leaf, "sharding", None)
            if hasattr(s, "device_set"):
                return platform_of(s)
        return default_platform()

    def jitted(self, platform: str):
        if platform not in self._jitted:
            options = (self._fallback if platform == "gpu" else None) or compiler_options(platform)
            fun = self._fun

            @functools.wraps(fun)
            def traced_for_platform(*args, **kwargs):  # traces only `platform`'s branches (`jaxsr.cpu.hook`)
                with cpu.tracing_for(platform):
                    return fun(*args, **kwargs)

            self._jitted[platform] = jax.jit(traced_for_platform, compiler_options=options or None, **self._kwargs)
        return self._jitted[platform]

    def __call__(self, *args, **kwargs):
        # Inside another trace JAX refuses compile options; the caller's jit compiles the whole
        # program, so the plain nested jit is used.
        if _tracing():
            return self._nested(*args, **kwargs)
        platform = self.platform((args, kwargs))
        try:
            return self.jitted(platform)(*args, **kwargs)
        except Exception as err:  # noqa: BLE001 - re-raised unless it is the GPU tiling failure
            fallback = None if self._fallback or platform != "gpu" else gpu_fallback_options(err)
            if fallback is None:
                raise
            logging.getLogger(__name__).warning("%s: XLA:GPU could not tile a fused matmul; compiling with %s",
                                                getattr(self, "__name__", "function"), fallback)
            self._fallback = fallback
            self._jitted.pop("gpu", None)
            return self.jitted(platform)(*args, **kwargs)

    def lower(self, *args, **kwargs):
        return self.jitted(self.platform((args, kwargs))).lower(*args, **kwargs)


def eval_shape(fun: Callable):
    """`jax.eval_shape(fun)` (no arguments), tracing the plain branch of each of `jaxsr.cpu`'s
    choices: the shapes are the same on every platform, and that branch traces fastest."""
    with cpu.tracing_for("shapes"):
        return jax.eval_shape(fun)


def jit(fun: Callable | None = None, **kwargs) -> Callable:
    """`jax.jit` (also as `@jit(static_argnames=...)`) that compiles with the options of the
    platform the function runs on: the way to compile a jaxsr model or op on the CPU at full
    speed (plain `jax.jit` works everywhere; on the CPU it lets YNNPACK take the convolutions).
    Also `jaxsr.jit`."""
    if fun is None:
        return lambda f: _Jit(f, kwargs)
    return _Jit(fun, kwargs)


def skip_absent_tpu() -> str | None:
    """Keep JAX from starting libtpu where it is installed (the `tpu` extra, for ahead-of-time
    compiles) but no TPU is attached and no GPU shows either: libtpu would print its
    initialisation errors (TPU_WORKER_HOSTNAMES, metadata server) before JAX falls back to the
    CPU. Sets JAX's platforms to "cpu" then, before any backend starts; returns what it set, or
    None where it changed nothing (JAX_PLATFORMS given, a TPU or GPU attached, no libtpu)."""
    if os.environ.get("JAX_PLATFORMS") or not libtpu_installed() or tpu_attached() or gpu_attached():
        return None
    jax.config.update("jax_platforms", "cpu")
    return "cpu"
