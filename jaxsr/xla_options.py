"""Compile options for jaxsr's own jitted functions, chosen per backend.

On the CPU, XLA (JAX >= 0.10) hands convolutions and matmuls to YNNPACK by default. For the
convolutions of these models, XLA's own (Eigen) kernels are much faster on x86: 1.2-1.9x for a
whole model's forward pass on the 2-core machine of benchmarks/vs_torch.py (see the README's
benchmark section), with outputs equal within float rounding. So jaxsr compiles its functions
with YNN fusions switched off on the CPU.

The options are passed per compiled function (`jax.jit(..., compiler_options=...)`), never
through XLA_FLAGS, so a program that imports jaxsr as a library keeps its own settings. GPU and
TPU get no options. A JAX whose XLA does not know an option simply runs without it.
"""
from __future__ import annotations

import ctypes
import functools
import os
import sys
from typing import Any, Callable

import jax
import jax.numpy as jnp

# Empty list = no YNNPACK fusions: convolutions and dots go to XLA's Eigen kernels.
CPU_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": ""}
# Set to False (before anything is compiled) to compile with XLA's defaults, e.g. to compare.
ENABLED = True


@functools.cache
def _cpu_options_supported() -> tuple[tuple[str, str], ...]:
    """The CPU_OPTIONS this XLA accepts (an unknown name fails at compile time)."""
    kept = []
    for name, value in CPU_OPTIONS.items():
        try:
            jax.jit(lambda x: x + 1, compiler_options={name: value}).lower(jnp.zeros((), jnp.float32)).compile()
        except Exception:  # noqa: BLE001 - any refusal means "not supported by this XLA"
            continue
        kept.append((name, value))
    return tuple(kept)


def compiler_options(backend: str | None = None) -> dict[str, str]:
    """The options jaxsr compiles with on `backend` (default: JAX's default backend)."""
    if not ENABLED or (backend or jax.default_backend()) != "cpu":
        return {}
    return dict(_cpu_options_supported())


# glibc mallopt parameters
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
HEAP_KEEP_BYTES = 1 << 30


def keep_large_buffers_in_heap() -> bool:
    """Make glibc serve large host buffers from its heap instead of fresh mmap'ed pages.

    XLA:CPU allocates every temporary and output with malloc. glibc maps blocks over 32 MiB
    (one 256x256x128 float32 feature map) with mmap and unmaps them on free, so each step pays
    page faults on every large buffer: a 32 MiB pixel shuffle took ~21 ms that way and ~5 ms
    from the heap on the benchmark machine. Raising the mmap and trim thresholds to 1 GiB keeps
    freed blocks for reuse (the process keeps up to that much freed memory).

    Process-wide, so only `python -m jaxsr.main` calls it (on the CPU backend) and the
    benchmarks; a library user may call it too. Returns whether both settings took effect
    (False off glibc Linux).
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    mmap_set = bool(mallopt(_M_MMAP_THRESHOLD, HEAP_KEEP_BYTES))
    trim_set = bool(mallopt(_M_TRIM_THRESHOLD, HEAP_KEEP_BYTES))
    return mmap_set and trim_set


HUGE_PAGES_TUNABLE = "glibc.malloc.hugetlb=1"
# Set to "0" to keep a process from restarting itself with HUGE_PAGES_TUNABLE.
HUGE_PAGES_ENV = "JAXSR_HUGE_PAGES"
_THP_SETTING = "/sys/kernel/mm/transparent_hugepage/enabled"


def huge_pages_wanted() -> bool:
    """Whether `restart_with_huge_pages` would restart this process: glibc Linux, transparent
    huge pages not switched off, the tunable not yet set, and no opt-out."""
    if not sys.platform.startswith("linux") or os.environ.get(HUGE_PAGES_ENV) == "0":
        return False
    if "glibc.malloc.hugetlb" in os.environ.get("GLIBC_TUNABLES", ""):
        return False
    try:
        with open(_THP_SETTING) as f:
            if "[never]" in f.read():
                return False
        return bool(os.confstr("CS_GNU_LIBC_VERSION"))
    except (OSError, ValueError):
        return False


def restart_with_huge_pages() -> None:
    """Re-run this process (same PID and command line, `os.execve`) with glibc's malloc asking
    for transparent huge pages (GLIBC_TUNABLES=glibc.malloc.hugetlb=1), if `huge_pages_wanted()`.

    XLA:CPU allocates each step's temporaries (gigabytes for HR-size training) afresh; on 4 KiB
    pages every step pays a page fault per page: 343k faults and ~1 s of kernel time per
    USRNet training step (T = 2) on the benchmark machine, 1.5k and 0.2 s with huge pages, for
    a step 18% faster. glibc reads the tunable only at process start, hence the restart. Call it
    first thing, before any thread or device starts; `python -m jaxsr.main` and the benchmarks
    do. Set JAXSR_HUGE_PAGES=0 to opt out.
    """
    if not huge_pages_wanted():
        return
    env = dict(os.environ)
    env["GLIBC_TUNABLES"] = ":".join(t for t in (env.get("GLIBC_TUNABLES"), HUGE_PAGES_TUNABLE) if t)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, list(sys.orig_argv), env)


def _tracing(args, kwargs) -> bool:
    """Whether a JAX trace is under way (or, failing that check, any argument is a tracer)."""
    try:
        from jax._src import core as jax_core
        return not jax_core.trace_state_clean()
    except (ImportError, AttributeError):
        return any(isinstance(x, jax.core.Tracer) for x in jax.tree.leaves((args, kwargs)))


class _Jit:
    """`jax.jit(fun, **kwargs)` with `compiler_options()`, built on first use: the backend is
    only known once JAX has started, which must not happen at import time (multi-host runs
    call `jax.distributed.initialize` first)."""

    def __init__(self, fun: Callable, kwargs: dict[str, Any]):
        functools.update_wrapper(self, fun)
        self._fun, self._kwargs, self._jitted = fun, kwargs, None
        self._nested = jax.jit(fun, **kwargs)

    @property
    def jitted(self):
        if self._jitted is None:
            self._jitted = jax.jit(self._fun, compiler_options=compiler_options() or None, **self._kwargs)
        return self._jitted

    def __call__(self, *args, **kwargs):
        # Inside another trace (a caller's jit, grad or vmap) JAX refuses compile options: the
        # caller's own jit compiles the whole program, so the plain nested jit is used.
        if _tracing(args, kwargs):
            return self._nested(*args, **kwargs)
        return self.jitted(*args, **kwargs)

    def lower(self, *args, **kwargs):
        return self.jitted.lower(*args, **kwargs)


def jit(fun: Callable | None = None, **kwargs) -> Callable:
    """Drop-in for `jax.jit` (also as `@jit(static_argnames=...)`) that adds the backend's
    compile options."""
    if fun is None:
        return lambda f: _Jit(f, kwargs)
    return _Jit(fun, kwargs)
